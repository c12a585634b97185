//! Time sources for the policies.
//!
//! Policies take `now` as a [`Duration`] since an arbitrary, fixed origin rather than an
//! [`Instant`]: a `Duration` can be constructed freely in tests, is plain arithmetic for bucket
//! indexing, and keeps the policies free of any global clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic time source.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Time elapsed since this clock's origin; never decreases.
    fn now(&self) -> Duration;
}

/// The real clock: [`Instant`]-based, so immune to wall-clock adjustments.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is the moment of creation.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Duration) -> Self {
        Self {
            nanos: AtomicU64::new(super::nanos(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = super::nanos(by);
        // `fetch_update` with a closure that always returns `Some` cannot fail; the saturating
        // add keeps the clock monotonic even at the (theoretical) end of time.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Moves the clock to `to`, which must not be earlier than the current reading (the policies
    /// assume monotonic time).
    pub fn set(&self, to: Duration) {
        self.nanos.store(super::nanos(to), Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Duration::from_secs(5));
        assert_eq!(clock.now(), Duration::from_secs(5));
        assert_eq!(clock.now(), Duration::from_secs(5));
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now(), Duration::from_millis(5_250));
        clock.set(Duration::from_secs(9));
        assert_eq!(clock.now(), Duration::from_secs(9));
    }

    #[test]
    fn monotonic_clock_does_not_go_backwards() {
        let clock = MonotonicClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }

    #[test]
    fn clocks_are_usable_as_trait_objects() {
        let clocks: [&dyn Clock; 2] = [&MonotonicClock::new(), &ManualClock::default()];
        assert_eq!(clocks[1].now(), Duration::ZERO);
        assert!(clocks[0].now() < Duration::from_secs(60));
    }
}
