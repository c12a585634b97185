//! Reconnect delays: exponential with full jitter.
//!
//! Attempt `n` (from 0) waits a uniform random time in `[0, min(max, base * 2^n)]`
//! ("full jitter"): after a control-plane restart, hundreds of sidecars
//! spread their reconnects over the whole window instead of arriving in
//! synchronised waves.

use std::time::Duration;

use rand::Rng;

/// Parameters of the reconnect schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// A connection that lasted at least this long resets the schedule.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(15),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// The state of one reconnect schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub const fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    pub const fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Failed attempts since the last reset.
    pub const fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the delay of the next attempt.
    pub fn ceiling(&self) -> Duration {
        // 2^31 * base overflows nothing in `saturating_mul`, and the cap is
        // reached long before that anyway.
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.config.base.saturating_mul(factor).min(self.config.max)
    }

    /// The next delay, drawn from the thread-local generator.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// The next delay, drawn from `rng`; advances the schedule.
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Back to the first attempt, after a stable connection.
    pub const fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before reconnecting after a stream ended. `connected_for` is
    /// how long the stream was open (`None`: it never opened); a stream that
    /// stayed up for `stable_after` starts the schedule over, so a healthy
    /// control plane's routine restart is retried quickly, while a server
    /// that accepts and immediately drops streams keeps backing off.
    pub fn after_disconnect(&mut self, connected_for: Option<Duration>) -> Duration {
        if connected_for.is_some_and(|d| d >= self.config.stable_after) {
            self.reset();
        }
        self.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn config() -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(100),
            max: Duration::from_secs(15),
            stable_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn ceilings_double_from_base_up_to_max() {
        let mut backoff = Backoff::new(config());
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay_with(&mut rng);
        }
        assert_eq!(
            ceilings,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000, 15000, 15000
            ]
        );
        for _ in 0..100 {
            backoff.next_delay_with(&mut rng);
        }
        assert_eq!(
            backoff.ceiling(),
            Duration::from_secs(15),
            "no overflow past the cap"
        );
    }

    #[test]
    fn delays_stay_within_zero_and_the_ceiling_and_spread_out() {
        let mut rng = StdRng::seed_from_u64(42);
        for attempt in 0..10u32 {
            let mut backoff = Backoff::new(config());
            for _ in 0..attempt {
                backoff.next_delay_with(&mut rng);
            }
            let ceiling = backoff.ceiling();
            let draws: Vec<Duration> = (0..200)
                .map(|_| backoff.clone().next_delay_with(&mut rng))
                .collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter covers the whole range: some draws in the lower and
            // upper quarter (probability of failing ~ 2 * 0.75^200).
            assert!(draws.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn only_a_stable_connection_resets_the_schedule() {
        let mut backoff = Backoff::new(config());
        for _ in 0..4 {
            backoff.after_disconnect(None);
        }
        assert_eq!(backoff.ceiling(), Duration::from_millis(1600));
        // Open for a moment and dropped: keep backing off.
        backoff.after_disconnect(Some(Duration::from_secs(1)));
        assert_eq!(backoff.ceiling(), Duration::from_millis(3200));
        // Up for stable_after: start over (this delay drawn from the base ceiling).
        let delay = backoff.after_disconnect(Some(Duration::from_secs(30)));
        assert!(delay <= Duration::from_millis(100), "{delay:?}");
        assert_eq!(backoff.ceiling(), Duration::from_millis(200));
    }

    #[test]
    fn reset_returns_to_the_base_ceiling() {
        let mut backoff = Backoff::new(config());
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert_eq!(backoff.attempt(), 5);
        assert_eq!(backoff.ceiling(), Duration::from_millis(3200));
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
