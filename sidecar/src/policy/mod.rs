//! Traffic-governance policies as pure state machines: QPS limits, concurrency limits, hot-parameter
//! limits, circuit breakers and overload protection (DESIGN §4).
//!
//! Nothing here performs I/O, spawns tasks, sleeps or reads the wall clock. Every time-dependent
//! call takes `now: Duration`, read by the caller from one [`Clock`] (the data plane uses
//! [`MonotonicClock`], tests use [`ManualClock`] and step time explicitly). A limiter must always be
//! fed from the same clock: mixing origins would look like time jumping.
//!
//! Protobuf and Kubernetes types never reach this module; the data plane converts its snapshot into
//! these types at its edge, where the constructors' [`PolicyError`]s surface invalid parameters.
//!
//! # Shared semantics
//! - A limiter answers with a [`Decision`] or, when it hands out an RAII guard, with
//!   `Result<Guard, Rejected>`. Every rejection carries a [`RejectReason`] whose
//!   [`as_str`](RejectReason::as_str) is the metric label and the `x-lanemesh-blocked` header value.
//! - Dry run ([`Enforcement::DryRun`]): the limiter's state evolves exactly as if it enforced (a
//!   would-be rejection consumes no quota, takes no slot, is not recorded by a breaker), but the
//!   request is admitted and the would-be rejection is counted. Operators thereby see the number of
//!   rejections the rule would cause if switched on, not an inflated figure fed by traffic the
//!   rule would have stopped. A would-be queueing delay is not applied either (dry run must not
//!   change traffic) and is not a rejection. Overload protection is the exception: its inputs
//!   (in-flight requests, completion rate, latency) measure the application, so requests it
//!   admits in dry run are measured like any other.
//! - Thread safety: every limiter is `Send + Sync` and shared by all connections. Counters are
//!   atomics; where a sliding window must be rotated and read-modified-written as one step, a
//!   `std::sync::Mutex` is held for a handful of instructions and never across an await.
//!
//! # Modules
//! - [`clock`]: the time source abstraction.
//! - [`qps`]: Sentinel-compatible QPS limiting (reject, warm-up, queue).
//! - [`concurrency`]: in-flight request limit with RAII permits.
//! - [`hot_param`]: per-value token buckets over a bounded LRU.
//! - [`breaker`]: slow-ratio, error-ratio and error-count circuit breakers.
//! - [`overload`]: BBR-style adaptive overload protection driven by CPU usage.
//! - [`retry`]: what is retried, backoff with jitter, and the retry budget.

pub mod breaker;
pub mod clock;
pub mod concurrency;
pub mod error;
pub mod hot_param;
pub mod overload;
pub mod qps;
pub mod retry;
mod window;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use breaker::{
    BreakerConfig, BreakerState, BreakerStrategy, BreakerTicket, CircuitBreaker, Outcome,
    Transition, TransitionCounts,
};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use concurrency::{ConcurrencyLimiter, ConcurrencyPermit};
pub use error::PolicyError;
pub use hot_param::{DEFAULT_HOT_PARAM_CAPACITY, HotParamConfig, HotParamLimiter};
pub use overload::{
    CpuSource, OverloadConfig, OverloadMode, OverloadPermit, OverloadProtector, SampledCpu,
};
pub use qps::{QpsBehavior, QpsLimiter, QpsPass};
pub use retry::{AttemptResult, BudgetConfig, RetryBudget, RetryConfig};

/// Why a request was refused; the label of the rejection metric and the value of the
/// `x-lanemesh-blocked` response header (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// QPS limit ([`QpsLimiter`]).
    Flow,
    /// Concurrency limit ([`ConcurrencyLimiter`]).
    Concurrency,
    /// Hot-parameter limit ([`HotParamLimiter`]).
    HotParam,
    /// Open or saturated half-open circuit breaker ([`CircuitBreaker`]).
    CircuitBreaking,
    /// Overload protection ([`OverloadProtector`]).
    System,
}

impl RejectReason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [Self; 5] = [
        Self::Flow,
        Self::Concurrency,
        Self::HotParam,
        Self::CircuitBreaking,
        Self::System,
    ];

    /// The stable wire form used in metrics and in the `x-lanemesh-blocked` header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Concurrency => "concurrency",
            Self::HotParam => "hot_param",
            Self::CircuitBreaking => "circuit_breaking",
            Self::System => "system",
        }
    }
}

impl crate::metrics::LabelValue for RejectReason {
    const ALL: &'static [Self] = &Self::ALL;

    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal from a limiter that hands out guards (`Result<Guard, Rejected>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request rejected by {0}")]
pub struct Rejected(pub RejectReason);

impl Rejected {
    /// The reason, for metrics and the response header.
    pub const fn reason(self) -> RejectReason {
        self.0
    }
}

/// The answer of a limiter that hands out no guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a decision that is not acted on limits nothing"]
pub enum Decision {
    /// Forward the request now.
    Admit,
    /// Forward the request after sleeping this long; the limiter has already reserved the slot and
    /// never sleeps itself.
    Delay(Duration),
    /// Refuse the request.
    Reject(RejectReason),
}

impl Decision {
    /// Whether the request goes through (possibly after a delay).
    pub const fn is_admitted(self) -> bool {
        !matches!(self, Self::Reject(_))
    }

    /// The rejection reason, if refused.
    pub const fn reject_reason(self) -> Option<RejectReason> {
        match self {
            Self::Reject(reason) => Some(reason),
            Self::Admit | Self::Delay(_) => None,
        }
    }
}

/// Whether a limiter acts on its rejections or only counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// Rejections are returned to the caller.
    #[default]
    Enforce,
    /// Would-be rejections are counted and the request is admitted.
    DryRun,
}

/// Told about every would-be rejection of a dry-run limiter, as it happens; the data plane
/// counts them per rule in its metrics. Must be cheap and must not block: it runs on the
/// request path.
pub trait DryRunObserver: Send + Sync + fmt::Debug {
    /// A request the limiter admitted although enforcement would have rejected it for `reason`.
    fn would_reject(&self, reason: RejectReason);
}

/// Dry run for every limiter: each embeds a [`Gate`] and gets these switches from it.
pub trait Gated: Sized {
    /// The limiter's gate.
    fn gate_mut(&mut self) -> &mut Gate;

    /// Switches dry run on or off (see the module docs).
    #[must_use]
    fn with_enforcement(mut self, enforcement: Enforcement) -> Self {
        self.gate_mut().set_enforcement(enforcement);
        self
    }

    /// Reports each dry-run would-be rejection to `observer` as it happens (for metrics).
    #[must_use]
    fn observe_dry_run(mut self, observer: Arc<dyn DryRunObserver>) -> Self {
        self.gate_mut().observe(observer);
        self
    }
}

/// The dry-run switch and would-be-rejection counter embedded in every limiter.
#[derive(Debug, Default)]
pub struct Gate {
    enforcement: Enforcement,
    would_reject: AtomicU64,
    observer: Option<Arc<dyn DryRunObserver>>,
}

impl Gate {
    pub(crate) const fn new(enforcement: Enforcement) -> Self {
        Self {
            enforcement,
            would_reject: AtomicU64::new(0),
            observer: None,
        }
    }

    pub(crate) fn set_enforcement(&mut self, enforcement: Enforcement) {
        self.enforcement = enforcement;
    }

    pub(crate) fn observe(&mut self, observer: Arc<dyn DryRunObserver>) {
        self.observer = Some(observer);
    }

    /// Called on a rejection path: `true` means really reject; in dry run it counts and says no.
    pub(crate) fn should_reject(&self, reason: RejectReason) -> bool {
        match self.enforcement {
            Enforcement::Enforce => true,
            Enforcement::DryRun => {
                self.would_reject.fetch_add(1, Ordering::Relaxed);
                if let Some(observer) = &self.observer {
                    observer.would_reject(reason);
                }
                false
            }
        }
    }

    pub(crate) const fn enforcement(&self) -> Enforcement {
        self.enforcement
    }

    pub(crate) fn would_have_rejected(&self) -> u64 {
        self.would_reject.load(Ordering::Relaxed)
    }
}

/// Locks a policy mutex, recovering from poisoning.
///
/// The guarded data are counters and timestamps; a panic in another thread mid-update can at worst
/// skew one statistic, which is far better than turning every later request into a panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `Duration` as whole nanoseconds, saturating (u64 nanoseconds cover 584 years of uptime).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reasons_use_the_design_labels() {
        // DESIGN §4: rejections are labelled flow, concurrency, hot_param, circuit_breaking, system.
        let labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "flow",
                "concurrency",
                "hot_param",
                "circuit_breaking",
                "system"
            ]
        );
        assert_eq!(RejectReason::HotParam.to_string(), "hot_param");
        assert_eq!(
            Rejected(RejectReason::CircuitBreaking).to_string(),
            "request rejected by circuit_breaking"
        );
    }

    #[test]
    fn decision_helpers() {
        assert!(Decision::Admit.is_admitted());
        assert!(Decision::Delay(Duration::from_millis(5)).is_admitted());
        let reject = Decision::Reject(RejectReason::Flow);
        assert!(!reject.is_admitted());
        assert_eq!(reject.reject_reason(), Some(RejectReason::Flow));
        assert_eq!(Decision::Admit.reject_reason(), None);
    }

    #[test]
    fn gate_counts_only_in_dry_run() {
        #[derive(Debug, Default)]
        struct Seen(Mutex<Vec<RejectReason>>);
        impl DryRunObserver for Seen {
            fn would_reject(&self, reason: RejectReason) {
                lock(&self.0).push(reason);
            }
        }
        let seen = Arc::new(Seen::default());
        let mut enforce = Gate::new(Enforcement::Enforce);
        enforce.observe(seen.clone());
        assert!(enforce.should_reject(RejectReason::Flow));
        assert_eq!(enforce.would_have_rejected(), 0);
        let mut dry = Gate::new(Enforcement::DryRun);
        dry.observe(seen.clone());
        assert!(!dry.should_reject(RejectReason::Flow));
        assert!(!dry.should_reject(RejectReason::HotParam));
        assert_eq!(dry.would_have_rejected(), 2);
        assert_eq!(*lock(&seen.0), [RejectReason::Flow, RejectReason::HotParam]);
    }

    #[test]
    fn inbound_checks_compose_in_design_order_on_a_manual_clock() {
        // DESIGN §4: inbound order overload, concurrency, qps, hot params; each rejection carries
        // its own reason.
        use std::sync::Arc;
        let clock = ManualClock::new(Duration::from_secs(1));
        let cpu: Arc<dyn overload::CpuSource> = Arc::new(SampledCpu::new(0.1));
        let overload =
            OverloadProtector::new(OverloadConfig::new(OverloadMode::On, 0.8), cpu).unwrap();
        let concurrency = ConcurrencyLimiter::new(2);
        let qps = QpsLimiter::new(3.0, QpsBehavior::Reject).unwrap();
        let hot = HotParamLimiter::new(HotParamConfig::new(1, Duration::from_secs(1))).unwrap();

        let check = |user: &str| -> Result<(OverloadPermit, ConcurrencyPermit), RejectReason> {
            let now = clock.now();
            let o = overload.try_acquire(now).map_err(Rejected::reason)?;
            let c = concurrency.try_acquire().map_err(Rejected::reason)?;
            if let Some(reason) = qps.try_acquire(now).reject_reason() {
                return Err(reason);
            }
            if let Some(reason) = hot.try_acquire(user, now).reject_reason() {
                return Err(reason);
            }
            Ok((o, c))
        };

        let first = check("alice").unwrap();
        assert_eq!(check("alice").err(), Some(RejectReason::HotParam));
        let _second = check("bob").unwrap();
        assert_eq!(check("carol").err(), Some(RejectReason::Concurrency));
        drop(first);
        // The QPS window of 3 is spent: alice, bob, and the second alice, which QPS admitted
        // before hot params refused it (each check counts its own admissions).
        assert_eq!(check("carol").err(), Some(RejectReason::Flow));
        clock.advance(Duration::from_secs(1));
        assert!(check("carol").is_ok());
    }

    #[test]
    fn policies_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<QpsLimiter>();
        assert_send_sync::<ConcurrencyLimiter>();
        assert_send_sync::<ConcurrencyPermit>();
        assert_send_sync::<HotParamLimiter>();
        assert_send_sync::<CircuitBreaker>();
        assert_send_sync::<BreakerTicket>();
        assert_send_sync::<OverloadProtector>();
        assert_send_sync::<OverloadPermit>();
        assert_send_sync::<ManualClock>();
        assert_send_sync::<MonotonicClock>();
    }
}
