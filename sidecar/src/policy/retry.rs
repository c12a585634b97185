//! Retries: which failed attempts are tried again, the backoff between attempts, and the retry
//! budget that keeps a failing upstream from seeing a retry storm (Linkerd's budget: over the
//! last `ttl`, retries may be at most `ratio * requests + min_per_second * ttl`).
//!
//! Pure: the caller says what an attempt ended with and when; nothing here sleeps.

use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use rand::Rng;

use super::error::PolicyError;
use super::window::BucketWindow;
use super::{lock, nanos};

/// Most retries a rule may ask for (the CRD's bound).
pub const MAX_ATTEMPTS: u32 = 10;

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The connection to the endpoint could not be established.
    ConnectFailure,
    /// The connection broke before a response head.
    Reset,
    /// No response head within the per-try timeout.
    Timeout,
    /// A response head with this status (for gRPC: one without a gRPC status in it).
    Http(u16),
    /// A trailers-only gRPC response with this status.
    Grpc(u32),
}

/// What a route retries, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt, 1..=[`MAX_ATTEMPTS`].
    pub attempts: u32,
    /// Each attempt's limit; `None` = only the request's timeout.
    pub per_try_timeout: Option<Duration>,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    /// Inclusive HTTP status ranges.
    pub http: Vec<(u16, u16)>,
    pub grpc: Vec<u32>,
    /// Also retry methods that are not idempotent.
    pub non_idempotent: bool,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl RetryConfig {
    /// Refuses what the control plane would: no attempts, more than [`MAX_ATTEMPTS`], a zero
    /// per-try timeout or base interval, a maximum below the base.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.attempts == 0 {
            return Err(PolicyError::TooSmall {
                field: "attempts",
                min: 1,
                value: 0,
            });
        }
        if self.attempts > MAX_ATTEMPTS {
            return Err(PolicyError::TooLarge {
                field: "attempts",
                max: u64::from(MAX_ATTEMPTS),
                value: u64::from(self.attempts),
            });
        }
        if self.per_try_timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::ZeroDuration {
                field: "perTryTimeout",
            });
        }
        if self.backoff_base.is_zero() {
            return Err(PolicyError::ZeroDuration {
                field: "backoff.baseInterval",
            });
        }
        if self.backoff_max < self.backoff_base {
            return Err(PolicyError::TooSmall {
                field: "backoff.maxInterval",
                min: u64::try_from(self.backoff_base.as_millis()).unwrap_or(u64::MAX),
                value: u64::try_from(self.backoff_max.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }

    /// Whether requests of `method` may be sent twice: the idempotent methods of RFC 9110
    /// §9.2.2, or any when the rule says so.
    pub fn retries_method(&self, method: &Method) -> bool {
        self.non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }

    /// Whether an attempt that ended so is worth another.
    pub fn retries_result(&self, result: AttemptResult) -> bool {
        match result {
            AttemptResult::ConnectFailure => self.on_connect_failure,
            AttemptResult::Reset => self.on_reset,
            AttemptResult::Timeout => self.on_timeout,
            AttemptResult::Http(status) => self
                .http
                .iter()
                .any(|&(from, to)| (from..=to).contains(&status)),
            AttemptResult::Grpc(code) => self.grpc.contains(&code),
        }
    }

    /// The wait before retry number `retry` (1 = the first retry): "full jitter", uniform in
    /// `[0, min(max, base * 2^(retry-1))]`, so retries of many clients spread out.
    pub fn backoff<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        ceiling.mul_f64(rng.random::<f64>())
    }
}

/// What the budget allows, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries per request over `ttl`.
    pub ratio: f64,
    /// Retries per second always allowed.
    pub min_per_second: u32,
    pub ttl: Duration,
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        super::error::check_threshold("retryBudget.ratio", self.ratio)?;
        if self.ttl.is_zero() {
            return Err(PolicyError::ZeroDuration {
                field: "retryBudget.ttl",
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    retries: u64,
}

/// The retry budget of one destination app, shared by every request to it. A mutex guards the
/// window for a few instructions per request, never across an await.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    window: Mutex<BucketWindow<Counts>>,
}

/// Buckets per ttl: the window slides in tenths.
const BUCKETS: usize = 10;

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Result<Self, PolicyError> {
        config.validate()?;
        Ok(Self {
            config,
            window: Mutex::new(BucketWindow::new(config.ttl, BUCKETS)),
        })
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Counts a request (its first attempt).
    pub fn deposit(&self, now: Duration) {
        lock(&self.window).current(nanos(now)).requests += 1;
    }

    /// Takes one retry from the budget; `false` (nothing taken) when it is spent.
    pub fn try_withdraw(&self, now: Duration) -> bool {
        let now = nanos(now);
        let mut window = lock(&self.window);
        let (requests, retries) = window
            .iter(now)
            .fold((0u64, 0u64), |(q, r), c| (q + c.requests, r + c.retries));
        let reserve = f64::from(self.config.min_per_second) * self.config.ttl.as_secs_f64();
        let allowed = self.config.ratio * requests as f64 + reserve;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        window.current(now).retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn config() -> RetryConfig {
        RetryConfig {
            attempts: 2,
            per_try_timeout: None,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            http: vec![(503, 503)],
            grpc: vec![14],
            non_idempotent: false,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }

    #[test]
    fn what_is_retried() {
        let c = config();
        assert!(c.retries_result(AttemptResult::ConnectFailure));
        assert!(c.retries_result(AttemptResult::Reset));
        assert!(!c.retries_result(AttemptResult::Timeout));
        assert!(c.retries_result(AttemptResult::Http(503)));
        assert!(!c.retries_result(AttemptResult::Http(500)));
        assert!(!c.retries_result(AttemptResult::Http(200)));
        assert!(c.retries_result(AttemptResult::Grpc(14)));
        assert!(!c.retries_result(AttemptResult::Grpc(13)));
        assert!(c.retries_method(&Method::GET) && c.retries_method(&Method::PUT));
        assert!(!c.retries_method(&Method::POST) && !c.retries_method(&Method::PATCH));
        let any = RetryConfig {
            non_idempotent: true,
            ..config()
        };
        assert!(any.retries_method(&Method::POST));
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling() {
        let c = config();
        let mut rng = StdRng::seed_from_u64(1);
        for (retry, ceiling_ms) in [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (40, 250)] {
            let waits: Vec<Duration> = (0..200).map(|_| c.backoff(retry, &mut rng)).collect();
            let ceiling = Duration::from_millis(ceiling_ms);
            assert!(waits.iter().all(|w| *w <= ceiling), "retry {retry}");
            // Full jitter: the waits spread over the range, not all at the ceiling.
            let mean = waits.iter().sum::<Duration>() / 200;
            assert!(
                mean > ceiling.mul_f64(0.35) && mean < ceiling.mul_f64(0.65),
                "retry {retry}: mean {mean:?} of ceiling {ceiling:?}"
            );
        }
    }

    #[test]
    fn invalid_configs_are_refused_with_their_field() {
        let zero = RetryConfig {
            attempts: 0,
            ..config()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("attempts")
        );
        let many = RetryConfig {
            attempts: 11,
            ..config()
        };
        assert!(
            many.validate()
                .unwrap_err()
                .to_string()
                .contains("attempts")
        );
        let inverted = RetryConfig {
            backoff_max: Duration::from_millis(1),
            ..config()
        };
        assert!(
            inverted
                .validate()
                .unwrap_err()
                .to_string()
                .contains("backoff.maxInterval")
        );
        assert!(config().validate().is_ok());
    }

    #[test]
    fn the_budget_allows_the_ratio_plus_the_reserve_and_recovers_after_ttl() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_second: 1,
            ttl: Duration::from_secs(10),
        })
        .unwrap();
        let mut now = Duration::from_secs(100);
        // 100 requests over 1 s: 0.2 * 100 + 1/s * 10 s = 30 retries.
        for _ in 0..100 {
            budget.deposit(now);
            now += Duration::from_millis(10);
        }
        let granted = (0..100).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 30);
        // Once the window has passed, only the reserve is left (no requests counted).
        now += Duration::from_secs(11);
        let granted = (0..100).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn a_zero_reserve_and_no_requests_allow_no_retry() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.5,
            min_per_second: 0,
            ttl: Duration::from_secs(1),
        })
        .unwrap();
        assert!(!budget.try_withdraw(Duration::from_secs(5)));
        budget.deposit(Duration::from_secs(5));
        budget.deposit(Duration::from_secs(5));
        assert!(budget.try_withdraw(Duration::from_secs(5)));
        assert!(!budget.try_withdraw(Duration::from_secs(5)));
    }
}
