//! Circuit breakers (DESIGN §4 "Circuit breaker"), one per caller pod, destination app and rule.
//!
//! ```text
//!            total >= minRequests && ratio >= threshold          openDuration elapsed
//!   Closed ------------------------------------------------> Open -------------------> HalfOpen
//!     ^        (ErrorCount: errors >= threshold)               ^   (on the next request)   |
//!     |                                                        |  any probe fails, or the  |
//!     |                                                        +--- probes do not all -----+
//!     |                                                           report within openDuration
//!     +-------------- all `halfOpenProbes` probes succeed (statistics reset) -------------+
//! ```
//!
//! - A *failure* is, for [`BreakerStrategy::SlowRequestRatio`], a request whose duration is
//!   `>= slowRequestDuration` (errors do not count); for the error strategies, an error as
//!   classified by the caller (5xx, connect failure, reset, timeout, gRPC status ...).
//! - Closed: outcomes go into a sliding window of `window` in [`BREAKER_BUCKETS`] buckets; the
//!   trip condition is evaluated after every recorded outcome.
//! - Open: every request is rejected until `openDuration` has elapsed; the next request then
//!   moves the breaker to HalfOpen (lazily: [`CircuitBreaker::state`] reports Open until a request
//!   arrives) and becomes the first probe.
//! - HalfOpen: exactly `halfOpenProbes` requests are admitted as probes, the rest rejected. A
//!   failed probe reopens at once for a fresh `openDuration`; when all probes succeed the breaker
//!   closes with empty statistics. A probe whose outcome never arrives (ticket dropped) would hold
//!   the breaker half-open forever, so probes still outstanding `openDuration` after entering
//!   HalfOpen count as failed, like a timeout.
//! - Each state change bumps a generation; a [`BreakerTicket`] remembers the generation it was
//!   issued in, so outcomes of requests admitted before a transition (e.g. slow requests
//!   completing after the breaker opened, or after it closed again) are ignored rather than
//!   counted against the wrong period or mistaken for probes.
//!
//! State lives behind a `std::sync::Mutex` because a transition must update the phase, the
//! generation and the window together; the critical section is a bucket rotation and a sum over
//! [`BREAKER_BUCKETS`] buckets. The state for the gauge and the transition counters are mirrored in
//! atomics so metrics never take the lock.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use super::error::{PolicyError, check_min, check_positive, check_ratio};
use super::window::BucketWindow;
use super::{Enforcement, Gate, Gated, RejectReason, Rejected, lock, nanos};

/// Buckets in the statistics window.
pub const BREAKER_BUCKETS: usize = 10;

/// When the breaker trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BreakerStrategy {
    /// Ratio of requests lasting at least `slow_request_duration`.
    SlowRequestRatio {
        /// Ratio in (0, 1] at which the breaker opens.
        threshold: f64,
        /// Duration from which a request counts as slow (`slowRequestDuration`); positive.
        slow_request_duration: Duration,
    },
    /// Ratio of failed requests.
    ErrorRatio {
        /// Ratio in (0, 1] at which the breaker opens.
        threshold: f64,
    },
    /// Number of failed requests.
    ErrorCount {
        /// Errors within the window at which the breaker opens; at least 1.
        threshold: u64,
    },
}

/// Parameters of one breaker rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Trip condition.
    pub strategy: BreakerStrategy,
    /// Statistics window; positive.
    pub window: Duration,
    /// Requests needed within the window before the breaker may trip (0 behaves as 1).
    pub min_requests: u64,
    /// How long the breaker stays open; positive.
    pub open_duration: Duration,
    /// Probes admitted in HalfOpen; at least 1.
    pub half_open_probes: u32,
}

/// The breaker's state, for a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Admitting and measuring.
    Closed,
    /// Rejecting everything.
    Open,
    /// Admitting a fixed number of probes.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name, for labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Gauge encoding (the Resilience4j convention): closed 0, open 1, half-open 2.
    pub const fn gauge_value(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    const fn from_gauge(value: u8) -> Self {
        match value {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

impl crate::metrics::LabelValue for BreakerState {
    const ALL: &'static [Self] = &[Self::Closed, Self::HalfOpen, Self::Open];

    fn label(self) -> &'static str {
        self.as_str()
    }
}

/// `lanemesh_breaker_state`: ordered by how much traffic the breaker holds back.
impl crate::metrics::StateValue for BreakerState {
    fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change, returned by [`CircuitBreaker::record`] for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

/// Transitions since creation, by target state (for counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransitionCounts {
    /// Transitions into Open (from Closed or HalfOpen).
    pub opened: u64,
    /// Transitions into HalfOpen.
    pub half_opened: u64,
    /// Transitions into Closed.
    pub closed: u64,
}

/// How an admitted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Time from admission to completion.
    pub duration: Duration,
    /// Whether the caller classifies the result as an error.
    pub is_error: bool,
}

/// Proof of admission; hand it back to [`CircuitBreaker::record`] with the outcome.
#[derive(Debug)]
#[must_use = "record the outcome, or a half-open breaker waits for it until openDuration passes"]
pub struct BreakerTicket {
    kind: TicketKind,
}

impl BreakerTicket {
    /// Whether this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, TicketKind::Probe { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketKind {
    Closed {
        generation: u64,
    },
    Probe {
        generation: u64,
    },
    /// Admitted in dry run although the breaker would have rejected it.
    Unaccounted,
}

/// A circuit breaker; shared by all connections of the caller pod.
#[derive(Debug)]
pub struct CircuitBreaker {
    strategy: BreakerStrategy,
    min_requests: u64,
    open_duration_ns: u64,
    half_open_probes: u32,
    machine: Mutex<Machine>,
    state: AtomicU8,
    opened: AtomicU64,
    half_opened: AtomicU64,
    closed: AtomicU64,
    gate: Gate,
}

#[derive(Debug)]
struct Machine {
    phase: Phase,
    generation: u64,
    stats: BucketWindow<Counts>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        until: u64,
    },
    HalfOpen {
        since: u64,
        issued: u32,
        succeeded: u32,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    total: u64,
    failures: u64,
}

impl BreakerConfig {
    /// What [`CircuitBreaker::new`] refuses; the one check of these fields, also used when a
    /// rule is compiled (so a resource is refused with the same message it would fail with).
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self.strategy {
            BreakerStrategy::SlowRequestRatio {
                threshold,
                slow_request_duration,
            } => {
                check_ratio("threshold", threshold)?;
                check_positive("slowRequestDuration", slow_request_duration)?;
            }
            BreakerStrategy::ErrorRatio { threshold } => {
                check_ratio("threshold", threshold)?;
            }
            BreakerStrategy::ErrorCount { threshold } => {
                check_min("threshold", threshold, 1)?;
            }
        }
        check_positive("window", self.window)?;
        check_positive("openDuration", self.open_duration)?;
        check_min("halfOpenProbes", u64::from(self.half_open_probes), 1)?;
        Ok(())
    }
}

impl Gated for CircuitBreaker {
    fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }
}

impl CircuitBreaker {
    /// Validates the configuration (ratios in (0, 1], an error count of at least 1, positive
    /// durations, at least one probe) and starts Closed.
    pub fn new(config: BreakerConfig) -> Result<Self, PolicyError> {
        config.validate()?;
        let (window, open_duration) = (config.window, config.open_duration);
        Ok(Self {
            strategy: config.strategy,
            min_requests: config.min_requests.max(1),
            open_duration_ns: nanos(open_duration),
            half_open_probes: config.half_open_probes,
            machine: Mutex::new(Machine {
                phase: Phase::Closed,
                generation: 0,
                stats: BucketWindow::new(window, BREAKER_BUCKETS),
            }),
            state: AtomicU8::new(BreakerState::Closed.gauge_value()),
            opened: AtomicU64::new(0),
            half_opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            gate: Gate::new(Enforcement::Enforce),
        })
    }

    /// Admits a request (returning the ticket to record its outcome with) or rejects it with
    /// [`RejectReason::CircuitBreaking`].
    pub fn try_acquire(&self, now: Duration) -> Result<BreakerTicket, Rejected> {
        let now = nanos(now);
        let kind = {
            let mut m = lock(&self.machine);
            match m.phase {
                Phase::Closed => Some(TicketKind::Closed {
                    generation: m.generation,
                }),
                Phase::Open { until } if now >= until => {
                    m.phase = Phase::HalfOpen {
                        since: now,
                        issued: 1,
                        succeeded: 0,
                    };
                    self.enter(&mut m, BreakerState::HalfOpen);
                    Some(TicketKind::Probe {
                        generation: m.generation,
                    })
                }
                Phase::Open { .. } => None,
                Phase::HalfOpen {
                    since,
                    issued,
                    succeeded,
                } => {
                    if issued < self.half_open_probes {
                        m.phase = Phase::HalfOpen {
                            since,
                            issued: issued + 1,
                            succeeded,
                        };
                        Some(TicketKind::Probe {
                            generation: m.generation,
                        })
                    } else {
                        if now.saturating_sub(since) >= self.open_duration_ns {
                            // The missing probes are treated as failed (see module docs).
                            self.open(&mut m, now);
                        }
                        None
                    }
                }
            }
        };
        match kind {
            Some(kind) => Ok(BreakerTicket { kind }),
            None if self.gate.should_reject(RejectReason::CircuitBreaking) => {
                Err(Rejected(RejectReason::CircuitBreaking))
            }
            None => Ok(BreakerTicket {
                kind: TicketKind::Unaccounted,
            }),
        }
    }

    /// Records how an admitted request ended; returns the state change it caused, if any.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "taking the ticket by value makes recording it twice a compile error"
    )]
    pub fn record(
        &self,
        ticket: BreakerTicket,
        outcome: Outcome,
        now: Duration,
    ) -> Option<Transition> {
        let now = nanos(now);
        let failed = self.is_failure(outcome);
        let mut m = lock(&self.machine);
        match (ticket.kind, m.phase) {
            (TicketKind::Closed { generation }, Phase::Closed) if generation == m.generation => {
                let bucket = m.stats.current(now);
                bucket.total += 1;
                bucket.failures += u64::from(failed);
                if self.tripped(&m.stats, now) {
                    self.open(&mut m, now);
                    return Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                    });
                }
                None
            }
            (
                TicketKind::Probe { generation },
                Phase::HalfOpen {
                    since,
                    issued,
                    succeeded,
                },
            ) if generation == m.generation => {
                if failed {
                    self.open(&mut m, now);
                    return Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Open,
                    });
                }
                let succeeded = succeeded + 1;
                if succeeded >= self.half_open_probes {
                    m.phase = Phase::Closed;
                    m.stats.clear();
                    self.enter(&mut m, BreakerState::Closed);
                    return Some(Transition {
                        from: BreakerState::HalfOpen,
                        to: BreakerState::Closed,
                    });
                }
                m.phase = Phase::HalfOpen {
                    since,
                    issued,
                    succeeded,
                };
                None
            }
            // Dry-run over-admissions, and outcomes from an earlier generation.
            _ => None,
        }
    }

    /// Takes back an admission whose request never reached the upstream (another breaker
    /// refused it, or the caller went away first): a probe's slot is handed to the next request
    /// instead of being counted as failed once `openDuration` passes; a Closed admission was not
    /// counted yet, so there is nothing to undo.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "taking the ticket by value makes using it afterwards a compile error"
    )]
    pub fn release(&self, ticket: BreakerTicket) {
        let TicketKind::Probe { generation } = ticket.kind else {
            return;
        };
        let mut m = lock(&self.machine);
        if let Phase::HalfOpen {
            since,
            issued,
            succeeded,
        } = m.phase
            && generation == m.generation
        {
            m.phase = Phase::HalfOpen {
                since,
                issued: issued.saturating_sub(1),
                succeeded,
            };
        }
    }

    /// The current state (Open turns HalfOpen only when the next request arrives).
    pub fn state(&self) -> BreakerState {
        BreakerState::from_gauge(self.state.load(Ordering::Acquire))
    }

    /// Transitions since creation.
    pub fn transitions(&self) -> TransitionCounts {
        TransitionCounts {
            opened: self.opened.load(Ordering::Relaxed),
            half_opened: self.half_opened.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }

    /// Requests admitted in dry run that enforcement would have rejected.
    pub fn dry_run_rejections(&self) -> u64 {
        self.gate.would_have_rejected()
    }

    fn is_failure(&self, outcome: Outcome) -> bool {
        match self.strategy {
            BreakerStrategy::SlowRequestRatio {
                slow_request_duration,
                ..
            } => outcome.duration >= slow_request_duration,
            BreakerStrategy::ErrorRatio { .. } | BreakerStrategy::ErrorCount { .. } => {
                outcome.is_error
            }
        }
    }

    fn tripped(&self, stats: &BucketWindow<Counts>, now: u64) -> bool {
        let (total, failures) = stats
            .iter(now)
            .fold((0_u64, 0_u64), |(t, f), c| (t + c.total, f + c.failures));
        if total < self.min_requests {
            return false;
        }
        match self.strategy {
            BreakerStrategy::SlowRequestRatio { threshold, .. }
            | BreakerStrategy::ErrorRatio { threshold } => {
                // Division, not `failures >= threshold * total`: both sides are then the
                // correctly rounded value of the same fraction at the boundary (5/10 vs 0.5,
                // 7/10 vs 0.7), whereas 0.7 * 10 rounds to 7.000000000000001.
                failures as f64 / total as f64 >= threshold
            }
            BreakerStrategy::ErrorCount { threshold } => failures >= threshold,
        }
    }

    fn open(&self, m: &mut Machine, now: u64) {
        m.phase = Phase::Open {
            until: now.saturating_add(self.open_duration_ns),
        };
        self.enter(m, BreakerState::Open);
    }

    /// Bookkeeping common to every transition; the caller has set the phase.
    fn enter(&self, m: &mut Machine, to: BreakerState) {
        m.generation += 1;
        self.state.store(to.gauge_value(), Ordering::Release);
        let counter = match to {
            BreakerState::Open => &self.opened,
            BreakerState::HalfOpen => &self.half_opened,
            BreakerState::Closed => &self.closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
