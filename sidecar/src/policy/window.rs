//! A bucketed sliding window (Sentinel's `LeapArray`), single-threaded; owners guard it with a
//! mutex.
//!
//! Time is cut into buckets of `bucket_ns`; bucket `i` of the ring holds the statistics of the
//! most recent time slot whose index is `i` modulo the ring size. Each bucket remembers the start
//! of its slot, so a bucket left over from an earlier lap is recognised as stale (and reset on
//! reuse) without a background task. The window at `now` is the current bucket plus the
//! `len - 1` before it: it spans between `(len - 1) * bucket` and `len * bucket` of history,
//! sliding one bucket at a time.

use std::time::Duration;

/// Marks a bucket that has never been used (no slot starts at `u64::MAX`).
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct BucketWindow<B> {
    bucket_ns: u64,
    starts: Box<[u64]>,
    buckets: Box<[B]>,
}

impl<B: Default + Copy> BucketWindow<B> {
    /// A window of `window` split into `len` buckets (`len >= 1`; a window shorter than `len`
    /// nanoseconds gets one-nanosecond buckets).
    pub(crate) fn new(window: Duration, len: usize) -> Self {
        let len = len.max(1);
        let len_u64 = u64::try_from(len).unwrap_or(u64::MAX);
        let bucket_ns = (super::nanos(window) / len_u64).max(1);
        Self {
            bucket_ns,
            starts: vec![EMPTY; len].into_boxed_slice(),
            buckets: vec![B::default(); len].into_boxed_slice(),
        }
    }

    /// Length of one bucket.
    pub(crate) fn bucket_len(&self) -> Duration {
        Duration::from_nanos(self.bucket_ns)
    }

    fn slot(&self, now_ns: u64) -> (usize, u64) {
        let slot = now_ns / self.bucket_ns;
        // The ring length came from a `usize`, so the remainder fits in one.
        let index = usize::try_from(slot % self.ring_len()).unwrap_or(0);
        (index, slot * self.bucket_ns)
    }

    fn ring_len(&self) -> u64 {
        u64::try_from(self.buckets.len()).unwrap_or(u64::MAX)
    }

    /// The bucket `now` falls into, reset first if it still holds an earlier lap.
    pub(crate) fn current(&mut self, now_ns: u64) -> &mut B {
        let (index, start) = self.slot(now_ns);
        if self.starts[index] != start {
            self.starts[index] = start;
            self.buckets[index] = B::default();
        }
        &mut self.buckets[index]
    }

    /// The bucket of the slot `at` falls into, if the ring still holds that slot (it may since
    /// have been reused by a later lap, or never been written).
    pub(crate) fn bucket_at(&mut self, at_ns: u64) -> Option<&mut B> {
        let (index, start) = self.slot(at_ns);
        (self.starts[index] == start).then(|| &mut self.buckets[index])
    }

    /// Start of the slot `now` falls into; changes exactly when a new bucket begins.
    pub(crate) fn current_start(&self, now_ns: u64) -> u64 {
        self.slot(now_ns).1
    }

    /// Buckets inside the window at `now`, the current one included.
    pub(crate) fn iter(&self, now_ns: u64) -> impl Iterator<Item = &B> {
        self.iter_filtered(now_ns, true)
    }

    /// Buckets inside the window at `now` except the current, still-filling one.
    pub(crate) fn iter_completed(&self, now_ns: u64) -> impl Iterator<Item = &B> {
        self.iter_filtered(now_ns, false)
    }

    fn iter_filtered(&self, now_ns: u64, include_current: bool) -> impl Iterator<Item = &B> {
        let current = self.slot(now_ns).1;
        let span = self.bucket_ns.saturating_mul(self.ring_len());
        self.starts
            .iter()
            .zip(self.buckets.iter())
            .filter(move |(start, _)| {
                let start = **start;
                // A start after the current slot only exists if the clock went backwards; such a
                // bucket is not trusted, and is reset when its index comes round again.
                start != EMPTY
                    && start <= current
                    && current - start < span
                    && (include_current || start != current)
            })
            .map(|(_, bucket)| bucket)
    }

    /// Forgets every bucket.
    pub(crate) fn clear(&mut self) {
        self.starts.fill(EMPTY);
        self.buckets.fill(B::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn sum(w: &BucketWindow<u64>, now: u64) -> u64 {
        w.iter(now).sum()
    }

    #[test]
    fn window_slides_one_bucket_at_a_time() {
        let mut w = BucketWindow::<u64>::new(Duration::from_secs(1), 10);
        assert_eq!(w.bucket_len(), Duration::from_millis(100));
        *w.current(0) += 1;
        *w.current(450 * MS) += 2;
        assert_eq!(sum(&w, 999 * MS), 3);
        // At 1000 ms the bucket of [0, 100) ms has left the window.
        assert_eq!(sum(&w, 1_000 * MS), 2);
        assert_eq!(sum(&w, 1_399 * MS), 2);
        assert_eq!(sum(&w, 1_400 * MS), 0);
    }

    #[test]
    fn reused_bucket_is_reset() {
        let mut w = BucketWindow::<u64>::new(Duration::from_secs(1), 10);
        *w.current(50 * MS) += 5;
        // Same ring index one lap later.
        *w.current(1_050 * MS) += 1;
        assert_eq!(sum(&w, 1_050 * MS), 1);
    }

    #[test]
    fn completed_excludes_current_bucket() {
        let mut w = BucketWindow::<u64>::new(Duration::from_secs(1), 10);
        *w.current(10 * MS) += 1;
        *w.current(120 * MS) += 7;
        let completed: u64 = w.iter_completed(150 * MS).sum();
        assert_eq!(completed, 1);
        assert_eq!(w.current_start(150 * MS), 100 * MS);
    }

    #[test]
    fn clear_forgets_everything() {
        let mut w = BucketWindow::<u64>::new(Duration::from_secs(1), 10);
        *w.current(0) += 4;
        w.clear();
        assert_eq!(sum(&w, 10 * MS), 0);
    }
}
