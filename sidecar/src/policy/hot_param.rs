//! Hot-parameter limits (DESIGN §4 "Hot params"): one token bucket per distinct value of a request
//! attribute (a user id header, the client IP, ...).
//!
//! Each value gets `threshold` tokens per `window` plus `burst` extra capacity, following
//! Sentinel's `ParamFlowChecker` (default behaviour):
//! - a value seen for the first time starts with a full bucket of `threshold + burst` tokens;
//! - a request takes one token, or is rejected if none is left;
//! - tokens are added only once at least a full `window` has passed since the last refill, then
//!   `elapsed * threshold / window` of them at once (integer arithmetic), capped at
//!   `threshold + burst`. (Sentinel refills when strictly more than the window has passed at
//!   millisecond resolution; at nanosecond resolution "at least" is the natural reading.)
//! - a per-value override replaces `threshold` for that value; `burst` still applies. A threshold
//!   of 0 (rule-wide or per value) blocks the value(s) outright.
//!
//! Values live in an LRU of bounded size ([`DEFAULT_HOT_PARAM_CAPACITY`] unless configured); the
//! least recently seen value is forgotten when a new one arrives at capacity, and starts with a
//! full bucket if it returns. The capacity should therefore exceed the number of values active
//! within one window, or a client cycling through many values could reset its own bucket.
//!
//! Values are tracked by a keyed 64-bit hash (SipHash with a random key per limiter), never as
//! text: a rule's memory is bounded by its capacity whatever the values' length (a header value
//! may be 64 KiB), nothing is allocated per request, and a caller cannot aim collisions at
//! another value without knowing the key.
//!
//! The LRU is reordered on every lookup, so it sits behind a `std::sync::Mutex`; the critical
//! section is one hash lookup, a list relink and a few integer operations.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;

use super::error::{PolicyError, check_min, check_positive};
use super::{Decision, Enforcement, Gate, Gated, RejectReason, lock, nanos};

/// Values tracked per rule unless configured otherwise (DESIGN §4).
pub const DEFAULT_HOT_PARAM_CAPACITY: usize =
    lanemesh_api::defaults::HOT_PARAM_TRACKED_VALUES as usize;

/// Parameters of one hot-parameter rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotParamConfig {
    /// Tokens per `window` for each value.
    pub threshold: u64,
    /// Extra bucket capacity above `threshold`.
    pub burst: u64,
    /// Refill period; must be positive.
    pub window: Duration,
    /// Per-value thresholds replacing `threshold`.
    pub overrides: HashMap<String, u64>,
    /// Most values tracked at once; must be at least 1.
    pub capacity: usize,
}

impl HotParamConfig {
    /// `threshold` per `window`, no burst, no overrides, default capacity.
    pub fn new(threshold: u64, window: Duration) -> Self {
        Self {
            threshold,
            burst: 0,
            window,
            overrides: HashMap::new(),
            capacity: DEFAULT_HOT_PARAM_CAPACITY,
        }
    }
}

/// A hot-parameter limit on one rule and attribute; shared by all connections.
#[derive(Debug)]
pub struct HotParamLimiter {
    threshold: u64,
    burst: u64,
    window_ns: u64,
    overrides: HashMap<String, u64>,
    /// Keys the value hashes; random per limiter.
    hasher: RandomState,
    buckets: Mutex<LruCache<u64, Bucket>>,
    gate: Gate,
}

impl HotParamConfig {
    /// What [`HotParamLimiter::new`] refuses; the one check of these fields, also used when a
    /// rule is compiled.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_positive("window", self.window)?;
        check_min(
            "maxTrackedValues",
            u64::try_from(self.capacity).unwrap_or(u64::MAX),
            1,
        )?;
        Ok(())
    }
}

impl Gated for HotParamLimiter {
    fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }
}

impl HotParamLimiter {
    /// Validates the configuration: `window` must be positive and `capacity` at least 1.
    pub fn new(config: HotParamConfig) -> Result<Self, PolicyError> {
        config.validate()?;
        let window = config.window;
        let capacity = NonZeroUsize::new(config.capacity).ok_or(PolicyError::TooSmall {
            field: "maxTrackedValues",
            min: 1,
            value: 0,
        })?;
        Ok(Self {
            threshold: config.threshold,
            burst: config.burst,
            window_ns: nanos(window),
            overrides: config.overrides,
            hasher: RandomState::new(),
            buckets: Mutex::new(LruCache::new(capacity)),
            gate: Gate::new(Enforcement::Enforce),
        })
    }

    /// Decides on one request whose attribute has `value`, and takes a token if admitted.
    ///
    /// A request without the attribute is not subject to the rule; the caller skips the call.
    pub fn try_acquire(&self, value: &str, now: Duration) -> Decision {
        let now = nanos(now);
        let key = self.hasher.hash_one(value);
        let admitted = {
            let mut buckets = lock(&self.buckets);
            let bucket = buckets.get_or_insert_mut(key, || {
                let rate = self.overrides.get(value).copied().unwrap_or(self.threshold);
                Bucket::new(rate, self.burst, now)
            });
            bucket.take(self.burst, self.window_ns, now)
        };
        if admitted || !self.gate.should_reject(RejectReason::HotParam) {
            Decision::Admit
        } else {
            Decision::Reject(RejectReason::HotParam)
        }
    }

    /// Values currently tracked (for a gauge).
    pub fn tracked_values(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// Requests admitted in dry run that enforcement would have rejected.
    pub fn dry_run_rejections(&self) -> u64 {
        self.gate.would_have_rejected()
    }
}

#[derive(Debug)]
struct Bucket {
    /// Tokens per window for this value (the override, if any, resolved once on insertion).
    rate: u64,
    tokens: u64,
    last_refill: u64,
}

impl Bucket {
    fn new(rate: u64, burst: u64, now: u64) -> Self {
        Self {
            rate,
            tokens: rate.saturating_add(burst),
            last_refill: now,
        }
    }

    fn take(&mut self, burst: u64, window_ns: u64, now: u64) -> bool {
        if self.rate == 0 {
            return false;
        }
        let elapsed = now.saturating_sub(self.last_refill);
        if elapsed >= window_ns {
            let max = self.rate.saturating_add(burst);
            let added = u128::from(elapsed) * u128::from(self.rate) / u128::from(window_ns);
            let added = u64::try_from(added).unwrap_or(u64::MAX);
            // `added >= rate >= 1` because at least one window elapsed, so this never underflows.
            self.tokens = self.tokens.saturating_add(added).min(max).saturating_sub(1);
            self.last_refill = now;
            true
        } else if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const REJECT: Decision = Decision::Reject(RejectReason::HotParam);

    fn limiter(config: HotParamConfig) -> HotParamLimiter {
        HotParamLimiter::new(config).unwrap()
    }

    fn admitted(l: &HotParamLimiter, value: &str, at: Duration, attempts: usize) -> usize {
        (0..attempts)
            .filter(|_| l.try_acquire(value, at).is_admitted())
            .count()
    }

    #[test]
    fn values_have_independent_buckets() {
        // DESIGN §4 Hot params: one token bucket per value.
        let l = limiter(HotParamConfig::new(2, ms(1_000)));
        assert_eq!(l.try_acquire("alice", ms(0)), Decision::Admit);
        assert_eq!(l.try_acquire("alice", ms(1)), Decision::Admit);
        assert_eq!(l.try_acquire("alice", ms(2)), REJECT);
        assert_eq!(admitted(&l, "bob", ms(3), 5), 2);
        assert_eq!(l.tracked_values(), 2);
    }

    #[test]
    fn overrides_replace_the_threshold_per_value() {
        // DESIGN §3/§4: `overrides: [{value: vip, threshold: 50}]`.
        let mut config = HotParamConfig::new(2, ms(1_000));
        config.overrides.insert("vip".to_owned(), 5);
        config.overrides.insert("banned".to_owned(), 0);
        let l = limiter(config);
        assert_eq!(admitted(&l, "vip", ms(0), 10), 5);
        assert_eq!(admitted(&l, "regular", ms(0), 10), 2);
        assert_eq!(admitted(&l, "banned", ms(0), 10), 0);
        // An override applies on refill too.
        assert_eq!(admitted(&l, "vip", ms(1_000), 10), 5);
        assert_eq!(admitted(&l, "banned", ms(5_000), 10), 0);
    }

    #[test]
    fn lru_bound_evicts_the_least_recently_seen_value() {
        // DESIGN §4 Hot params: bounded LRU of values.
        let mut config = HotParamConfig::new(1, ms(1_000));
        config.capacity = 3;
        let l = limiter(config);
        for v in ["a", "b", "c"] {
            assert_eq!(l.try_acquire(v, ms(0)), Decision::Admit);
        }
        // Touching `a` (even rejected) makes `b` the least recent.
        assert_eq!(l.try_acquire("a", ms(1)), REJECT);
        assert_eq!(l.try_acquire("d", ms(2)), Decision::Admit);
        assert_eq!(l.tracked_values(), 3);
        // `a` and `c` kept their exhausted buckets ...
        assert_eq!(l.try_acquire("a", ms(3)), REJECT);
        assert_eq!(l.try_acquire("c", ms(4)), REJECT);
        // ... while `b` was forgotten and starts afresh.
        assert_eq!(l.try_acquire("b", ms(5)), Decision::Admit);
        assert_eq!(l.tracked_values(), 3);
        // Inserting `b` evicted `d`, the least recent by then.
        assert_eq!(l.try_acquire("d", ms(6)), Decision::Admit);
    }

    #[test]
    fn tokens_come_back_after_a_full_window() {
        // DESIGN §4 Hot params: `threshold` per `window`.
        let l = limiter(HotParamConfig::new(2, ms(1_000)));
        assert_eq!(admitted(&l, "k", ms(0), 2), 2);
        assert_eq!(l.try_acquire("k", ms(500)), REJECT);
        assert_eq!(l.try_acquire("k", ms(999)), REJECT);
        assert_eq!(admitted(&l, "k", ms(1_000), 5), 2);
        // Longer windows: 3 per 10 s.
        let l = limiter(HotParamConfig::new(3, Duration::from_secs(10)));
        assert_eq!(admitted(&l, "k", ms(0), 5), 3);
        assert_eq!(admitted(&l, "k", ms(9_999), 5), 0);
        assert_eq!(admitted(&l, "k", ms(10_000), 5), 3);
    }

    #[test]
    fn burst_adds_capacity_but_not_rate() {
        // DESIGN §3/§4: `burst` is extra bucket capacity on top of `threshold` per window.
        let mut config = HotParamConfig::new(2, ms(1_000));
        config.burst = 3;
        let l = limiter(config);
        assert_eq!(admitted(&l, "k", ms(0), 10), 5);
        // One window later only `threshold` tokens came back.
        assert_eq!(admitted(&l, "k", ms(1_000), 10), 2);
        // After three idle windows the refill (6) is capped at threshold + burst.
        assert_eq!(admitted(&l, "k", ms(4_000), 10), 5);
    }

    #[test]
    fn refill_is_proportional_to_elapsed_windows() {
        // threshold 2 per second, burst 10: 2.5 s idle refill trunc(2.5 * 2) = 5 tokens.
        let mut config = HotParamConfig::new(2, ms(1_000));
        config.burst = 10;
        let l = limiter(config);
        assert_eq!(admitted(&l, "k", ms(0), 20), 12);
        assert_eq!(admitted(&l, "k", ms(2_500), 20), 5);
    }

    #[test]
    fn dry_run_counts_without_spending() {
        let l = limiter(HotParamConfig::new(1, ms(1_000))).with_enforcement(Enforcement::DryRun);
        assert_eq!(admitted(&l, "k", ms(0), 4), 4);
        assert_eq!(l.dry_run_rejections(), 3);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert_eq!(
            HotParamLimiter::new(HotParamConfig::new(1, Duration::ZERO))
                .unwrap_err()
                .to_string(),
            "window must be a positive duration, got 0s"
        );
        let mut config = HotParamConfig::new(1, ms(1_000));
        config.capacity = 0;
        assert_eq!(
            HotParamLimiter::new(config).unwrap_err().to_string(),
            "maxTrackedValues must be at least 1, got 0"
        );
    }
}
