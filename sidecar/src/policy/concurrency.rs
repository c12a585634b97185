//! In-flight request limit (DESIGN §4 "Concurrency"): reject when `inflight + 1 > max`.
//!
//! Admission is a compare-and-swap loop on one atomic counter, so the bound is exact under
//! contention (a `fetch_add`-then-undo scheme would briefly over-count and spuriously reject
//! others). The returned [`ConcurrencyPermit`] gives the slot back when dropped, whichever way the
//! request ends (response sent, client gone, task cancelled).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Enforcement, Gate, Gated, RejectReason, Rejected};

/// A concurrency limit on one rule; shared by all connections.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    max: u32,
    inflight: Arc<AtomicU32>,
    gate: Gate,
}

impl Gated for ConcurrencyLimiter {
    fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }
}

impl ConcurrencyLimiter {
    /// A limiter admitting at most `max` requests at once (`0` admits nothing).
    pub fn new(max: u32) -> Self {
        Self {
            max,
            inflight: Arc::new(AtomicU32::new(0)),
            gate: Gate::new(Enforcement::Enforce),
        }
    }

    /// Takes a slot, or refuses with [`RejectReason::Concurrency`]. In dry run a would-be
    /// rejection yields a permit that holds no slot.
    pub fn try_acquire(&self) -> Result<ConcurrencyPermit, Rejected> {
        let max = self.max;
        let taken = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(1).filter(|&next| next <= max)
            });
        match taken {
            Ok(_) => Ok(ConcurrencyPermit {
                slot: Some(Arc::clone(&self.inflight)),
            }),
            Err(_) if self.gate.should_reject(RejectReason::Concurrency) => {
                Err(Rejected(RejectReason::Concurrency))
            }
            Err(_) => Ok(ConcurrencyPermit { slot: None }),
        }
    }

    /// Requests currently holding a slot (for a gauge).
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// The configured maximum.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Requests admitted in dry run that enforcement would have rejected.
    pub fn dry_run_rejections(&self) -> u64 {
        self.gate.would_have_rejected()
    }
}

/// A held concurrency slot; dropping it frees the slot. Owns its counter, so it may outlive the
/// limiter (e.g. across a configuration swap) and be moved into a response-body wrapper.
#[derive(Debug)]
#[must_use = "dropping the permit frees the slot immediately"]
pub struct ConcurrencyPermit {
    /// `None` for a dry-run admission that enforcement would have refused.
    slot: Option<Arc<AtomicU32>>,
}

impl ConcurrencyPermit {
    /// Whether this permit occupies a slot (false only for dry-run over-admissions).
    pub fn holds_slot(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn max_five_of_twenty_attempts() {
        // DESIGN §4: reject when `inflight + 1 > max`.
        let l = ConcurrencyLimiter::new(5);
        let results: Vec<_> = (0..20).map(|_| l.try_acquire()).collect();
        let permits = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(permits, 5);
        assert!(results[..5].iter().all(Result::is_ok));
        assert!(
            results[5..]
                .iter()
                .all(|r| matches!(r, Err(Rejected(RejectReason::Concurrency))))
        );
        assert_eq!(l.inflight(), 5);
    }

    #[test]
    fn dropping_a_permit_frees_a_slot() {
        // DESIGN §4 Concurrency: the slot is held exactly while the request is in flight.
        let l = ConcurrencyLimiter::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err());
        drop(a);
        assert_eq!(l.inflight(), 1);
        let _c = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err());
    }

    #[test]
    fn zero_max_admits_nothing() {
        let l = ConcurrencyLimiter::new(0);
        assert_eq!(
            l.try_acquire().unwrap_err(),
            Rejected(RejectReason::Concurrency)
        );
        assert_eq!(l.inflight(), 0);
    }

    #[test]
    fn exact_under_contention() {
        // DESIGN §4: the bound holds with many connections racing for the last slots.
        let l = Arc::new(ConcurrencyLimiter::new(5));
        let barrier = Arc::new(Barrier::new(20));
        let holders: Vec<_> = (0..20)
            .map(|_| {
                let (l, barrier) = (Arc::clone(&l), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let permit = l.try_acquire();
                    // Hold the permit until every thread has tried.
                    barrier.wait();
                    permit.is_ok()
                })
            })
            .collect();
        let granted = holders
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(granted, 5);
        assert_eq!(l.inflight(), 0);
    }

    #[test]
    fn permit_outlives_limiter() {
        let l = ConcurrencyLimiter::new(1);
        let permit = l.try_acquire().unwrap();
        drop(l);
        assert!(permit.holds_slot());
        drop(permit);
    }

    #[test]
    fn dry_run_admits_without_taking_a_slot() {
        // DESIGN §3 dryRun: count would-be rejections; the slot count evolves as if enforced.
        let l = ConcurrencyLimiter::new(1).with_enforcement(Enforcement::DryRun);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert!(a.holds_slot());
        assert!(!b.holds_slot());
        assert_eq!(l.dry_run_rejections(), 1);
        assert_eq!(l.inflight(), 1);
        drop(b);
        assert_eq!(l.inflight(), 1);
        drop(a);
        assert_eq!(l.inflight(), 0);
        let _c = l.try_acquire().unwrap();
        assert_eq!(l.dry_run_rejections(), 1);
        assert_eq!(l.max(), 1);
    }
}
