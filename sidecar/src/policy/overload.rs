//! Adaptive overload protection (DESIGN §4 "Overload protection"), after Sentinel's system rule
//! BBR check and Kratos' BBR limiter.
//!
//! The pod is treated as a pipe: its capacity is the highest completion rate seen recently and its
//! propagation delay the lowest latency seen recently, so it can hold
//! `maxCompletedQps * minRt` requests without queueing (Little's law). When CPU usage is above
//! `cpuThreshold`, a request is rejected if the requests already in flight exceed that product:
//!
//! ```text
//! reject  <=>  cpu > cpuThreshold  &&  inflight > 1  &&  inflight > maxCompletedQps * minRt
//! ```
//!
//! - `inflight` counts admitted, unfinished requests, excluding the one being decided (Sentinel's
//!   `curThreadNum`, Kratos' `inFlight`). The `inflight > 1` guard, present in both, keeps at
//!   least two requests flowing so the statistics keep refreshing even when the estimate is tiny.
//! - Statistics are kept in a sliding `window` (default 10 s) of `buckets` buckets (default 100,
//!   i.e. 100 ms each), like Kratos: `maxCompletedQps` is the largest per-bucket completion count
//!   divided by the bucket length, `minRt` the smallest per-bucket mean latency. The bucket still
//!   filling is excluded (its counts are partial), which also makes the estimate constant within a
//!   bucket, so it is computed once per bucket and cached.
//! - With no completed request in the window there is no estimate and nothing is rejected.
//! - The CPU reading is whatever the [`CpuSource`] reports (DESIGN: cgroup v2 `cpu.stat` against
//!   `cpu.max` sampled every 100 ms); smoothing, if any, belongs to the sampler. Kratos' one-second
//!   hysteresis after the CPU falls back below the threshold is not implemented: DESIGN ties
//!   rejection to the CPU being above the threshold.
//! - Modes: `Off` does nothing (no statistics either); `DryRun` evaluates and counts would-be
//!   rejections but admits; `On` rejects with [`RejectReason::System`]. In dry run the admitted
//!   requests are measured like any other: the statistics describe the application's real load.
//!
//! The check reads two atomics and, only when the CPU is above the threshold, takes the statistics
//! mutex to fetch the cached estimate. The check and the in-flight increment are not one atomic
//! step, so simultaneous arrivals may overshoot the estimate by a few requests; it is an adaptive
//! estimate, not a quota, and Sentinel and Kratos accept the same.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{PolicyError, check_min, check_positive, check_ratio};
use super::window::BucketWindow;
use super::{Enforcement, Gate, Gated, RejectReason, Rejected, lock, nanos};

/// Default statistics window (Kratos' default).
pub const DEFAULT_BBR_WINDOW: Duration = Duration::from_secs(10);
/// Default number of buckets in the window (Kratos' default).
pub const DEFAULT_BBR_BUCKETS: usize = 100;

/// Source of the CPU usage the protector compares with `cpuThreshold`.
pub trait CpuSource: Send + Sync + fmt::Debug {
    /// Recent CPU usage as a fraction of what the container may use (1.0 = fully used).
    fn usage(&self) -> f64;
}

/// A CPU reading stored by a sampler task (or set by a test), read lock-free.
#[derive(Debug, Default)]
pub struct SampledCpu {
    bits: AtomicU64,
}

impl SampledCpu {
    /// A source reporting `usage` until [`set`](Self::set) is called.
    pub fn new(usage: f64) -> Self {
        Self {
            bits: AtomicU64::new(usage.to_bits()),
        }
    }

    /// Stores a new reading.
    pub fn set(&self, usage: f64) {
        self.bits.store(usage.to_bits(), Ordering::Release);
    }
}

impl CpuSource for SampledCpu {
    fn usage(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Acquire))
    }
}

/// Whether overload protection acts (DESIGN §3 `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverloadMode {
    /// Disabled.
    #[default]
    Off,
    /// Evaluate and count, never reject.
    DryRun,
    /// Reject.
    On,
}

/// Parameters of overload protection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverloadConfig {
    /// Off, dry run or on.
    pub mode: OverloadMode,
    /// CPU usage in (0, 1] above which the BBR check applies.
    pub cpu_threshold: f64,
    /// Statistics window; positive.
    pub window: Duration,
    /// Buckets in the window; at least 2 (the current one is never used).
    pub buckets: usize,
}

impl OverloadConfig {
    /// `mode` and `cpu_threshold` with the default window.
    pub fn new(mode: OverloadMode, cpu_threshold: f64) -> Self {
        Self {
            mode,
            cpu_threshold,
            window: DEFAULT_BBR_WINDOW,
            buckets: DEFAULT_BBR_BUCKETS,
        }
    }
}

/// Overload protection for the pod's inbound traffic; shared by all connections.
#[derive(Debug)]
pub struct OverloadProtector {
    mode: OverloadMode,
    cpu_threshold: f64,
    cpu: Arc<dyn CpuSource>,
    shared: Arc<Shared>,
    gate: Gate,
}

/// What permits need after the protector is gone (e.g. across a configuration swap).
#[derive(Debug)]
struct Shared {
    inflight: AtomicU64,
    stats: Mutex<Stats>,
}

#[derive(Debug)]
struct Stats {
    window: BucketWindow<Completions>,
    /// The estimate for the bucket starting at `.0`.
    cached: Option<(u64, Option<f64>)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Completions {
    count: u64,
    rt_sum_ns: u64,
}

impl OverloadConfig {
    /// What [`OverloadProtector::new`] refuses; the one check of these fields, also used when
    /// a rule is compiled.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_ratio("cpuThreshold", self.cpu_threshold)?;
        check_positive("window", self.window)?;
        check_min(
            "buckets",
            u64::try_from(self.buckets).unwrap_or(u64::MAX),
            2,
        )?;
        Ok(())
    }
}

impl Gated for OverloadProtector {
    fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }
}

impl OverloadProtector {
    /// Validates the configuration (`cpuThreshold` in (0, 1], positive window, at least two
    /// buckets).
    pub fn new(config: OverloadConfig, cpu: Arc<dyn CpuSource>) -> Result<Self, PolicyError> {
        config.validate()?;
        let (cpu_threshold, window) = (config.cpu_threshold, config.window);
        let enforcement = match config.mode {
            OverloadMode::DryRun => Enforcement::DryRun,
            OverloadMode::Off | OverloadMode::On => Enforcement::Enforce,
        };
        Ok(Self {
            mode: config.mode,
            cpu_threshold,
            cpu,
            shared: Arc::new(Shared {
                inflight: AtomicU64::new(0),
                stats: Mutex::new(Stats {
                    window: BucketWindow::new(window, config.buckets),
                    cached: None,
                }),
            }),
            gate: Gate::new(enforcement),
        })
    }

    /// Admits an inbound request (the permit tracks it until finished or dropped) or rejects it
    /// with [`RejectReason::System`].
    pub fn try_acquire(&self, now: Duration) -> Result<OverloadPermit, Rejected> {
        if self.mode == OverloadMode::Off {
            return Ok(OverloadPermit {
                shared: None,
                started: 0,
            });
        }
        let now = nanos(now);
        if self.overloaded(now) && self.gate.should_reject(RejectReason::System) {
            return Err(Rejected(RejectReason::System));
        }
        self.shared.inflight.fetch_add(1, Ordering::AcqRel);
        Ok(OverloadPermit {
            shared: Some(Arc::clone(&self.shared)),
            started: now,
        })
    }

    fn overloaded(&self, now: u64) -> bool {
        // A NaN reading compares false: no evidence of overload.
        let above = self.cpu.usage() > self.cpu_threshold;
        if !above {
            return false;
        }
        let inflight = self.shared.inflight.load(Ordering::Acquire);
        if inflight <= 1 {
            return false;
        }
        self.shared
            .max_inflight(now)
            .is_some_and(|max| inflight as f64 > max)
    }

    /// Requests admitted and not yet finished (for a gauge).
    pub fn inflight(&self) -> u64 {
        self.shared.inflight.load(Ordering::Acquire)
    }

    /// The current estimate `maxCompletedQps * minRt`, if there are statistics (for a gauge).
    pub fn max_inflight(&self, now: Duration) -> Option<f64> {
        self.shared.max_inflight(nanos(now))
    }

    /// The configured mode.
    pub fn mode(&self) -> OverloadMode {
        self.mode
    }

    /// Requests admitted in dry run that `On` would have rejected.
    pub fn dry_run_rejections(&self) -> u64 {
        self.gate.would_have_rejected()
    }
}

impl Shared {
    fn max_inflight(&self, now: u64) -> Option<f64> {
        let mut stats = lock(&self.stats);
        let bucket_start = stats.window.current_start(now);
        if let Some((start, estimate)) = stats.cached
            && start == bucket_start
        {
            return estimate;
        }
        let estimate = stats.estimate(now);
        stats.cached = Some((bucket_start, estimate));
        estimate
    }

    fn record(&self, started: u64, now: u64) {
        let mut stats = lock(&self.stats);
        let completions = stats.window.current(now);
        completions.count += 1;
        completions.rt_sum_ns = completions
            .rt_sum_ns
            .saturating_add(now.saturating_sub(started));
    }
}

impl Stats {
    fn estimate(&self, now: u64) -> Option<f64> {
        let (max_count, min_rt_ns) = self
            .window
            .iter_completed(now)
            .filter(|c| c.count > 0)
            .fold(None, |acc: Option<(u64, f64)>, c| {
                let mean_rt = c.rt_sum_ns as f64 / c.count as f64;
                Some(match acc {
                    None => (c.count, mean_rt),
                    Some((max, min)) => (max.max(c.count), min.min(mean_rt)),
                })
            })?;
        let bucket_ns = self.window.bucket_len().as_nanos() as f64;
        // maxCompletedQps * minRt = (max_count / bucket) * min_rt; the units cancel.
        Some(max_count as f64 * min_rt_ns / bucket_ns)
    }
}

/// An admitted inbound request; [`finish`](Self::finish) it when the response is complete so its
/// latency and completion feed the estimate. Dropping it unfinished (client gone) only releases
/// the in-flight slot.
#[derive(Debug)]
#[must_use = "dropping the permit ends the request's in-flight accounting"]
pub struct OverloadPermit {
    /// `None` when protection is off.
    shared: Option<Arc<Shared>>,
    started: u64,
}

impl OverloadPermit {
    /// Records a completed request at `now`.
    pub fn finish(self, now: Duration) {
        if let Some(shared) = &self.shared {
            shared.record(self.started, nanos(now));
        }
        // Dropping `self` releases the in-flight slot.
    }
}

impl Drop for OverloadPermit {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests;
