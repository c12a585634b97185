//! The CPU usage overload protection compares with `cpuThreshold` (DESIGN §4): the container's
//! cgroup v2 `cpu.stat` against its `cpu.max` quota, else the host's `/proc/stat`, sampled every
//! 100 ms into a [`SampledCpu`] that limiters read without locking.
//!
//! Parsing and the usage arithmetic are pure functions; only [`run_sampler`] reads files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::policy::SampledCpu;

/// How often the sampler reads the counters (DESIGN §4).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// `usage_usec` from a cgroup v2 `cpu.stat`.
pub fn parse_cgroup_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "usage_usec").then(|| value.trim().parse().ok())?
    })
}

/// CPUs the quota in a cgroup v2 `cpu.max` (`"<quota> <period>"`) allows; `None` for `max`
/// (no limit) or an unreadable line.
pub fn parse_cpu_max(cpu_max: &str) -> Option<f64> {
    let mut parts = cpu_max.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

/// `(busy, total)` jiffies from the aggregate `cpu` line of `/proc/stat` (busy = total minus
/// idle and iowait).
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map_while(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (fields.len() >= 4).then_some((total.saturating_sub(idle), total))
}

/// Turns successive cumulative readings `(busy, capacity)` into a usage ratio in `[0, 1]`.
#[derive(Debug, Default)]
pub struct UsageMeter {
    last: Option<(f64, f64)>,
}

impl UsageMeter {
    /// Usage since the previous reading; `None` for the first one or when no capacity passed.
    pub fn update(&mut self, busy: f64, capacity: f64) -> Option<f64> {
        let previous = self.last.replace((busy, capacity))?;
        let spent = busy - previous.0;
        let available = capacity - previous.1;
        (available > 0.0 && spent >= 0.0).then(|| (spent / available).clamp(0.0, 1.0))
    }
}

/// Where this process's CPU counters live.
#[derive(Debug, Clone)]
enum Counters {
    /// cgroup v2: `cpu.stat` usage in µs over wall time times the allowed CPUs.
    Cgroup { dir: PathBuf, host_cpus: f64 },
    /// The whole host.
    Host { proc_stat: PathBuf },
}

impl Counters {
    fn detect(cgroup_dir: &Path) -> Self {
        if cgroup_dir.join("cpu.stat").is_file() {
            let host_cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
            Self::Cgroup {
                dir: cgroup_dir.to_owned(),
                host_cpus,
            }
        } else {
            Self::Host {
                proc_stat: PathBuf::from("/proc/stat"),
            }
        }
    }

    /// `(busy, capacity)` in one unit, cumulative.
    fn read(&self, started: Instant) -> Option<(f64, f64)> {
        match self {
            Self::Cgroup { dir, host_cpus } => {
                let usage =
                    parse_cgroup_usage_usec(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?)?;
                let cpus = std::fs::read_to_string(dir.join("cpu.max"))
                    .ok()
                    .and_then(|m| parse_cpu_max(&m))
                    .map_or(*host_cpus, |quota| quota.min(*host_cpus));
                let wall_usec = started.elapsed().as_secs_f64() * 1e6;
                Some((usage as f64, wall_usec * cpus))
            }
            Self::Host { proc_stat } => {
                let (busy, total) = parse_proc_stat(&std::fs::read_to_string(proc_stat).ok()?)?;
                Some((busy as f64, total as f64))
            }
        }
    }
}

/// Samples CPU usage into `cpu` every [`SAMPLE_INTERVAL`], for ever (abort the task to stop).
///
/// The reads are of small kernel-generated files, which never block on disk, so they run on the
/// async worker directly rather than paying a `spawn_blocking` hop ten times a second.
pub async fn run_sampler(cpu: Arc<SampledCpu>, cgroup_dir: PathBuf) {
    let counters = Counters::detect(&cgroup_dir);
    tracing::debug!(?counters, "cpu sampler started");
    let started = Instant::now();
    let mut meter = UsageMeter::default();
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some((busy, capacity)) = counters.read(started)
            && let Some(usage) = meter.update(busy, capacity)
        {
            cpu.set(usage);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n";
        assert_eq!(parse_cgroup_usage_usec(stat), Some(123_456));
        assert_eq!(parse_cgroup_usage_usec("user_usec 1\n"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
    }

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
    }

    #[test]
    fn meter_reports_usage_between_readings() {
        let mut meter = UsageMeter::default();
        assert_eq!(
            meter.update(0.0, 0.0),
            None,
            "first reading has no interval"
        );
        assert_eq!(meter.update(50.0, 100.0), Some(0.5));
        assert_eq!(meter.update(50.0, 200.0), Some(0.0));
        assert_eq!(meter.update(300.0, 300.0), Some(1.0), "clamped to 1");
        assert_eq!(meter.update(300.0, 300.0), None, "no time passed");
    }

    #[tokio::test]
    async fn sampler_reads_a_cgroup_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 0\n").unwrap();
        std::fs::write(dir.path().join("cpu.max"), "100000 100000\n").unwrap();
        let cpu = Arc::new(SampledCpu::new(f64::NAN));
        let task = tokio::spawn(run_sampler(Arc::clone(&cpu), dir.path().to_owned()));
        // A busy-looping container: usage grows as fast as wall time on its one allowed CPU.
        let started = Instant::now();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let usec = started.elapsed().as_micros();
            std::fs::write(dir.path().join("cpu.stat"), format!("usage_usec {usec}\n")).unwrap();
        }
        task.abort();
        let usage = crate::policy::CpuSource::usage(&*cpu);
        assert!(usage > 0.5, "a busy cgroup reads as busy, got {usage}");
    }
}
