//! Sentinel-compatible QPS limiting (DESIGN §4 "QPS limit").
//!
//! # Reject (Sentinel `DefaultController`)
//! Admitted requests are counted in a sliding window of [`QPS_WINDOW`] split into [`QPS_BUCKETS`]
//! buckets. A request is admitted while `count + 1 <= threshold`, i.e. rejected when
//! `count + 1 > threshold`; a threshold of 0 (or below 1) admits nothing. Rejected requests are not
//! counted, so a client hammering a limit does not keep itself locked out.
//!
//! # WarmUp (Sentinel `WarmUpController`, cold factor 3)
//! A token bucket whose *fill level measures coldness*: a full bucket means a cold system. With
//! `count` the threshold, `P` the warm-up period in seconds and `c = 3`:
//!
//! ```text
//! warningToken = trunc(P * count) / (c - 1)              (integer division)
//! maxToken     = warningToken + trunc(2 * P * count / (1 + c))
//! slope        = (c - 1) / count / (maxToken - warningToken)
//! ```
//!
//! The admission test compares the sliding-window count (`passQps`) against:
//! - `count` while `storedTokens < warningToken` (warm: full rate);
//! - otherwise `warningQps = nextUp(1 / ((storedTokens - warningToken) * slope + 1 / count))`,
//!   which is `count / c` when the bucket is full and rises linearly in the token *interval* to
//!   `count` at the warning line.
//!
//! Tokens are synchronised at most once per aligned second (`syncToken`): with `prev` the number
//! of requests admitted in the previous aligned second, the bucket gains `elapsed * count` tokens
//! if `storedTokens < warningToken`, or if `storedTokens > warningToken` and
//! `prev < trunc(count) / c` (the system is idling, so it cools down again); it is capped at
//! `maxToken`, then `prev` tokens are taken out (floored at 0). A new limiter starts cold (full),
//! as Sentinel's does (its first sync sees decades elapsed since the epoch).
//!
//! Deviations from Sentinel, both for degenerate parameters only:
//! - If `maxToken == warningToken` (tiny `count * P`), Sentinel's slope is infinite and the formula
//!   yields NaN, rejecting everything forever; here the limiter simply runs at `count`.
//! - For `count < 3` the cold rate `count / 3` is below one request per window, so Sentinel never
//!   admits anything, tokens never drain and the limiter stays cold forever; here the cold rate is
//!   floored at one request per window so warm-up progresses.
//!
//! # Queue (Sentinel `RateLimiterController` / `ThrottlingController`)
//! Admissions are spaced `1 s / threshold` apart. A request arriving after the previous slot
//! passes at once; otherwise it takes the next slot and is told to wait until then
//! ([`Decision::Delay`]; the caller sleeps). A request that would wait longer than
//! `max_queue_time` is rejected; `max_queue_time == 0` therefore never delays anything. Idle time
//! earns no burst credit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::{PolicyError, check_positive, check_threshold};
use super::window::BucketWindow;
use super::{Decision, Enforcement, Gate, Gated, RejectReason, lock, nanos};

/// Length of the sliding window the threshold applies to.
pub const QPS_WINDOW: Duration = Duration::from_secs(1);
/// Buckets in the sliding window (DESIGN: at least 10).
pub const QPS_BUCKETS: usize = 10;
/// Sentinel's default cold factor: warm-up starts at `threshold / 3`.
pub const COLD_FACTOR: u32 = 3;
/// Default `maxQueueTime` for [`QpsBehavior::Queue`] (DESIGN §4).
pub const DEFAULT_MAX_QUEUE_TIME: Duration = lanemesh_api::defaults::MAX_QUEUE_TIME;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What happens to traffic above the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpsBehavior {
    /// Reject at once.
    Reject,
    /// Start at a third of the threshold and reach it after `period`.
    WarmUp {
        /// Time to go from cold to the full threshold under sustained load (`warmUpPeriod`).
        period: Duration,
    },
    /// Space requests uniformly, delaying them by at most `max_queue_time`.
    Queue {
        /// Longest acceptable delay; zero means never delay (`maxQueueTime`).
        max_queue_time: Duration,
    },
}

/// A QPS limit on one rule; shared by all connections.
#[derive(Debug)]
pub struct QpsLimiter {
    threshold: f64,
    behavior: QpsBehavior,
    engine: Engine,
    gate: Gate,
}

#[derive(Debug)]
enum Engine {
    /// `Reject` and `WarmUp`: the window and token state change together, so they share a mutex
    /// held for the rotate-sum-increment of ten buckets. That makes the check-then-count step
    /// atomic, so concurrent requests can never overshoot the threshold (Sentinel tolerates
    /// overshoot; a threshold of 1 should mean 1).
    Window(Mutex<WindowState>),
    /// `Queue`: a single timestamp, updated lock-free.
    Throttle(Throttle),
}

impl QpsLimiter {
    /// What [`QpsLimiter::new`] refuses; the one check of these fields, also used when a rule
    /// is compiled.
    pub fn validate(threshold: f64, behavior: QpsBehavior) -> Result<(), PolicyError> {
        check_threshold("threshold", threshold)?;
        if let QpsBehavior::WarmUp { period } = behavior {
            check_positive("warmUpPeriod", period)?;
        }
        Ok(())
    }
}

impl Gated for QpsLimiter {
    fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }
}

impl QpsLimiter {
    /// Validates the parameters: `threshold` must be finite and `>= 0` (0 rejects everything) and a
    /// warm-up period must be positive.
    pub fn new(threshold: f64, behavior: QpsBehavior) -> Result<Self, PolicyError> {
        Self::validate(threshold, behavior)?;
        let engine = match behavior {
            QpsBehavior::Reject => Engine::Window(Mutex::new(WindowState::new(None))),
            QpsBehavior::WarmUp { period } => {
                let warm_up = WarmUp::new(threshold, period);
                Engine::Window(Mutex::new(WindowState::new(Some(warm_up))))
            }
            QpsBehavior::Queue { max_queue_time } => {
                Engine::Throttle(Throttle::new(threshold, max_queue_time))
            }
        };
        Ok(Self {
            threshold,
            behavior,
            engine,
            gate: Gate::new(Enforcement::Enforce),
        })
    }

    /// Decides on one request arriving at `now`, and counts it if admitted.
    pub fn try_acquire(&self, now: Duration) -> Decision {
        self.try_acquire_refundable(now).0
    }

    /// Like [`try_acquire`](Self::try_acquire), and returns what [`refund`](Self::refund) needs
    /// to take the admission back when a later check refuses the request: Sentinel counts a pass
    /// only once every check of the chain has passed, so a request stopped by a hot-parameter
    /// limit must not use up the rule's QPS.
    pub fn try_acquire_refundable(&self, now: Duration) -> (Decision, QpsPass) {
        let now = nanos(now);
        let verdict = if self.threshold <= 0.0 {
            Verdict::Reject
        } else {
            match &self.engine {
                Engine::Window(state) => lock(state).acquire(self.threshold, now),
                Engine::Throttle(throttle) => throttle.acquire(now),
            }
        };
        let pass = QpsPass {
            at: now,
            slot: match verdict {
                Verdict::Admit => Some(now),
                Verdict::Delay(wait) => Some(now.saturating_add(wait)),
                Verdict::Reject => None,
            },
        };
        let decision = match verdict {
            Verdict::Admit => Decision::Admit,
            Verdict::Delay(wait) => match self.gate.enforcement() {
                Enforcement::Enforce => Decision::Delay(Duration::from_nanos(wait)),
                Enforcement::DryRun => Decision::Admit,
            },
            Verdict::Reject if self.gate.should_reject(RejectReason::Flow) => {
                Decision::Reject(RejectReason::Flow)
            }
            Verdict::Reject => Decision::Admit,
        };
        (decision, pass)
    }

    /// Takes back an admission counted by [`try_acquire_refundable`](Self::try_acquire_refundable).
    /// Best effort: once the admission's bucket has left the window, or a later request has
    /// queued behind it, there is nothing left to take back.
    pub fn refund(&self, pass: QpsPass) {
        let Some(slot) = pass.slot else {
            return;
        };
        match &self.engine {
            Engine::Window(state) => lock(state).refund(pass.at),
            Engine::Throttle(throttle) => throttle.refund(slot),
        }
    }

    /// The configured threshold (requests per second).
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The configured behaviour.
    pub fn behavior(&self) -> QpsBehavior {
        self.behavior
    }

    /// Requests admitted in dry run that enforcement would have rejected.
    pub fn dry_run_rejections(&self) -> u64 {
        self.gate.would_have_rejected()
    }
}

/// An admission as [`QpsLimiter::refund`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass it to QpsLimiter::refund if a later check refuses the request"]
pub struct QpsPass {
    at: u64,
    /// The admitted slot; `None` when nothing was counted (a rejection, dry run or not).
    slot: Option<u64>,
}

/// Internal outcome before dry run is applied; delays in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Admit,
    Delay(u64),
    Reject,
}

#[derive(Debug)]
struct WindowState {
    window: BucketWindow<u64>,
    warm_up: Option<WarmUp>,
}

impl WindowState {
    fn new(warm_up: Option<WarmUp>) -> Self {
        Self {
            window: BucketWindow::new(QPS_WINDOW, QPS_BUCKETS),
            warm_up,
        }
    }

    fn acquire(&mut self, threshold: f64, now: u64) -> Verdict {
        let passed: u64 = self.window.iter(now).sum();
        let limit = match &mut self.warm_up {
            Some(warm_up) => warm_up.limit(now),
            None => threshold,
        };
        // u64 -> f64 is exact below 2^53 requests per window.
        if passed.saturating_add(1) as f64 <= limit {
            *self.window.current(now) += 1;
            if let Some(warm_up) = &mut self.warm_up {
                warm_up.record_pass(now);
            }
            Verdict::Admit
        } else {
            Verdict::Reject
        }
    }

    fn refund(&mut self, at: u64) {
        if let Some(count) = self.window.bucket_at(at) {
            *count = count.saturating_sub(1);
            if let Some(warm_up) = &mut self.warm_up {
                warm_up.unrecord_pass(at);
            }
        }
    }
}

/// Sentinel's warm-up token state; see the module docs for the formulas.
#[derive(Debug)]
struct WarmUp {
    count: f64,
    warning_token: u64,
    max_token: u64,
    slope: f64,
    stored_tokens: u64,
    /// Aligned second of the last sync; `None` before the first request.
    last_filled_sec: Option<u64>,
    /// Admissions per aligned second, for Sentinel's `previousPassQps`.
    pass_sec: u64,
    pass_in_sec: u64,
    pass_in_prev_sec: u64,
}

impl WarmUp {
    fn new(count: f64, period: Duration) -> Self {
        let cold = f64::from(COLD_FACTOR);
        let period = period.as_secs_f64();
        // `as u64` truncates like Java's `(int)` cast (and saturates instead of wrapping).
        let warning_token = ((period * count) as u64) / u64::from(COLD_FACTOR - 1);
        // Saturating: thresholds and periods near the limits of their types must not overflow.
        let max_token = warning_token.saturating_add((2.0 * period * count / (1.0 + cold)) as u64);
        let slope = if max_token > warning_token {
            (cold - 1.0) / count / (max_token - warning_token) as f64
        } else {
            0.0
        };
        Self {
            count,
            warning_token,
            max_token,
            slope,
            stored_tokens: max_token,
            last_filled_sec: None,
            pass_sec: 0,
            pass_in_sec: 0,
            pass_in_prev_sec: 0,
        }
    }

    /// Rolls the per-second counters to `sec` and returns the previous second's admissions.
    fn previous_pass(&mut self, sec: u64) -> u64 {
        if sec != self.pass_sec {
            self.pass_in_prev_sec = if sec == self.pass_sec + 1 {
                self.pass_in_sec
            } else {
                0
            };
            self.pass_sec = sec;
            self.pass_in_sec = 0;
        }
        self.pass_in_prev_sec
    }

    fn record_pass(&mut self, now: u64) {
        let sec = now / NANOS_PER_SEC;
        let _ = self.previous_pass(sec);
        self.pass_in_sec += 1;
    }

    fn unrecord_pass(&mut self, at: u64) {
        if self.pass_sec == at / NANOS_PER_SEC {
            self.pass_in_sec = self.pass_in_sec.saturating_sub(1);
        }
    }

    /// Sentinel's `syncToken`: at most once per aligned second.
    fn sync(&mut self, sec: u64, previous: u64) {
        let Some(last) = self.last_filled_sec else {
            // First request: the bucket is already full (cold), nothing was admitted before.
            self.last_filled_sec = Some(sec);
            return;
        };
        if sec <= last {
            return;
        }
        let old = self.stored_tokens;
        // Refill below the warning line, or above it while the system idles; exactly at the line
        // Sentinel adds nothing.
        let idle = previous < (self.count as u64) / u64::from(COLD_FACTOR);
        let cooled = if old < self.warning_token || (old > self.warning_token && idle) {
            old.saturating_add(((sec - last) as f64 * self.count) as u64)
        } else {
            old
        };
        self.stored_tokens = cooled.min(self.max_token).saturating_sub(previous);
        self.last_filled_sec = Some(sec);
    }

    /// The admissible window count at `now` (Sentinel's `canPass` bound).
    fn limit(&mut self, now: u64) -> f64 {
        let sec = now / NANOS_PER_SEC;
        let previous = self.previous_pass(sec);
        self.sync(sec, previous);
        if self.stored_tokens >= self.warning_token && self.max_token > self.warning_token {
            let above = (self.stored_tokens - self.warning_token) as f64;
            let warning_qps = (1.0 / (above * self.slope + 1.0 / self.count)).next_up();
            warning_qps.max(self.count.min(1.0))
        } else {
            self.count
        }
    }
}

/// Marks "nothing admitted yet" in [`Throttle::latest`].
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
struct Throttle {
    cost_ns: u64,
    max_wait_ns: u64,
    /// The slot of the most recently admitted request (possibly in the future).
    latest: AtomicU64,
}

impl Throttle {
    fn new(threshold: f64, max_queue_time: Duration) -> Self {
        // Sentinel rounds the spacing; `as` saturates for thresholds near zero (which are
        // rejected before reaching here anyway).
        let cost_ns = if threshold > 0.0 {
            (NANOS_PER_SEC as f64 / threshold).round() as u64
        } else {
            u64::MAX
        };
        Self {
            cost_ns,
            max_wait_ns: nanos(max_queue_time),
            latest: AtomicU64::new(NEVER),
        }
    }

    fn acquire(&self, now: u64) -> Verdict {
        let mut latest = self.latest.load(Ordering::Acquire);
        loop {
            let expected = if latest == NEVER {
                now
            } else {
                latest.saturating_add(self.cost_ns)
            };
            let (slot, verdict) = if expected <= now {
                (now, Verdict::Admit)
            } else {
                let wait = expected - now;
                if wait > self.max_wait_ns {
                    return Verdict::Reject;
                }
                (expected, Verdict::Delay(wait))
            };
            match self.latest.compare_exchange_weak(
                latest,
                slot,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return verdict,
                Err(actual) => latest = actual,
            }
        }
    }

    /// Gives `slot` back if it is still the latest one handed out.
    fn refund(&self, slot: u64) {
        let previous = slot.checked_sub(self.cost_ns).unwrap_or(NEVER);
        let _ = self
            .latest
            .compare_exchange(slot, previous, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests;
