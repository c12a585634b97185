//! At most one status write per object per interval (pure).
//!
//! What drives status writes (NACKs from any client that connects, object
//! churn) is not under the control plane's control; this keeps a flapping
//! input from turning into a stream of writes to the API server. A write
//! that has to wait is not lost: the writer retries at the instant given.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Default spacing of writes to one object.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct PerObjectLimit<K> {
    min_interval: Duration,
    last: HashMap<K, Instant>,
}

impl<K: Hash + Eq> PerObjectLimit<K> {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last: HashMap::new(),
        }
    }

    /// `Ok` and records the write when `key` may be written at `now`; else
    /// the instant from which it may.
    pub fn admit(&mut self, key: K, now: Instant) -> Result<(), Instant> {
        if let Some(last) = self.last.get(&key) {
            let next = *last + self.min_interval;
            if now < next {
                return Err(next);
            }
        }
        self.last.insert(key, now);
        Ok(())
    }

    /// Forgets objects that no longer exist, so the map stays bounded by the
    /// live objects.
    pub fn retain(&mut self, live: impl Fn(&K) -> bool) {
        self.last.retain(|k, _| live(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_write_within_the_interval_waits_and_others_do_not() {
        let start = Instant::now();
        let mut limit = PerObjectLimit::new(Duration::from_secs(1));
        assert_eq!(limit.admit("a", start), Ok(()));
        let soon = start + Duration::from_millis(300);
        assert_eq!(limit.admit("a", soon), Err(start + Duration::from_secs(1)));
        // Another object is not held back by the first.
        assert_eq!(limit.admit("b", soon), Ok(()));
        assert_eq!(limit.admit("a", start + Duration::from_secs(1)), Ok(()));
        assert!(
            limit
                .admit("a", start + Duration::from_millis(1500))
                .is_err()
        );
        limit.retain(|k| *k != "a");
        assert_eq!(
            limit.admit("a", start + Duration::from_millis(1500)),
            Ok(())
        );
    }
}
