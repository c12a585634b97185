//! Overload protection semantics, DESIGN §4 "Overload protection".

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn protector(mode: OverloadMode, cpu: &Arc<SampledCpu>) -> OverloadProtector {
    let cpu: Arc<dyn CpuSource> = cpu.clone();
    OverloadProtector::new(OverloadConfig::new(mode, 0.8), cpu).unwrap()
}

/// Completes `n` requests admitted at `start` after `rt`.
fn complete(p: &OverloadProtector, n: usize, start: Duration, rt: Duration) {
    let permits: Vec<_> = (0..n).map(|_| p.try_acquire(start).unwrap()).collect();
    for permit in permits {
        permit.finish(start + rt);
    }
}

/// 10 completions of 50 ms in the bucket [0, 100) ms: maxCompletedQps = 10 / 0.1 s = 100/s,
/// minRt = 0.05 s, so the pipe holds 100 * 0.05 = 5 requests.
fn primed(mode: OverloadMode, cpu: &Arc<SampledCpu>) -> OverloadProtector {
    let p = protector(mode, cpu);
    cpu.set(0.1);
    let permits: Vec<_> = (0..10).map(|_| p.try_acquire(ms(0)).unwrap()).collect();
    for permit in permits {
        permit.finish(ms(50));
    }
    assert_eq!(p.inflight(), 0);
    p
}

/// Acquires until the first rejection (at most 100); returns the permits held.
fn fill(p: &OverloadProtector, now: Duration) -> Vec<OverloadPermit> {
    let mut held = Vec::new();
    while let Ok(permit) = p.try_acquire(now) {
        held.push(permit);
        assert!(held.len() <= 100, "never rejected");
    }
    held
}

#[test]
fn rejects_when_inflight_exceeds_estimate_above_cpu_threshold() {
    // DESIGN §4: above cpuThreshold, reject when inflight > maxCompletedQps * minRt (= 5 here).
    let cpu = Arc::new(SampledCpu::new(0.0));
    let p = primed(OverloadMode::On, &cpu);
    let now = ms(150);
    assert_eq!(p.max_inflight(now), Some(5.0));
    cpu.set(0.9);
    let held = fill(&p, now);
    // Admitted while inflight (before admission) was 0..=5; rejected at inflight 6 > 5.
    assert_eq!(held.len(), 6);
    assert_eq!(
        p.try_acquire(now).unwrap_err(),
        Rejected(RejectReason::System)
    );
    // A finished request frees room for one more.
    let mut held = held;
    drop(held.pop());
    assert!(p.try_acquire(now).is_ok());
}

#[test]
fn cpu_at_or_below_threshold_never_rejects() {
    // DESIGN §4: the check applies only *above* cpuThreshold.
    let cpu = Arc::new(SampledCpu::new(0.0));
    let p = primed(OverloadMode::On, &cpu);
    cpu.set(0.8);
    let held: Vec<_> = (0..50).map(|_| p.try_acquire(ms(150)).unwrap()).collect();
    assert_eq!(p.inflight(), 50);
    cpu.set(0.81);
    assert!(p.try_acquire(ms(150)).is_err());
    cpu.set(f64::NAN);
    assert!(p.try_acquire(ms(150)).is_ok());
    drop(held);
}

#[test]
fn estimate_uses_max_rate_and_min_latency_across_buckets() {
    // DESIGN §4: maxCompletedQps and minRt are taken over the recent window independently.
    let cpu = Arc::new(SampledCpu::new(0.1));
    let p = protector(OverloadMode::On, &cpu);
    // Bucket [0, 100) ms: 20 completions of 20 ms (the highest rate: 200/s).
    // Bucket [100, 200) ms: 4 completions of 10 ms (the lowest latency: 0.01 s).
    complete(&p, 20, ms(0), ms(20));
    complete(&p, 4, ms(100), ms(10));
    // 200/s * 0.01 s = 2, although no single bucket has both.
    let estimate = p.max_inflight(ms(250)).unwrap();
    assert!((estimate - 2.0).abs() < 1e-9, "{estimate}");
}

#[test]
fn current_bucket_and_expired_buckets_do_not_count() {
    // Kratos-style window: the still-filling bucket is excluded; old buckets slide out.
    let cpu = Arc::new(SampledCpu::new(0.1));
    let p = protector(OverloadMode::On, &cpu);
    complete(&p, 10, ms(0), ms(50));
    assert_eq!(p.max_inflight(ms(99)), None);
    assert_eq!(p.max_inflight(ms(100)), Some(5.0));
    // The 10 s window: the bucket [0, 100) ms is gone at 10 s.
    assert_eq!(p.max_inflight(ms(9_999)), Some(5.0));
    assert_eq!(p.max_inflight(ms(10_000)), None);
}

#[test]
fn without_statistics_nothing_is_rejected() {
    let cpu = Arc::new(SampledCpu::new(1.0));
    let p = protector(OverloadMode::On, &cpu);
    let held: Vec<_> = (0..20).map(|_| p.try_acquire(ms(0)).unwrap()).collect();
    assert_eq!(held.len(), 20);
}

#[test]
fn at_least_two_requests_stay_in_flight() {
    // Sentinel/Kratos guard `inflight > 1`: 1 completion of 1 ms per 100 ms gives an estimate of
    // 10/s * 0.001 s = 0.01, yet two requests are admitted before the third is rejected.
    let cpu = Arc::new(SampledCpu::new(0.1));
    let p = protector(OverloadMode::On, &cpu);
    complete(&p, 1, ms(0), ms(1));
    cpu.set(0.95);
    let held = fill(&p, ms(150));
    assert_eq!(held.len(), 2);
}

#[test]
fn dry_run_counts_but_never_rejects() {
    // DESIGN §3/§4: mode DryRun only counts.
    let cpu = Arc::new(SampledCpu::new(0.0));
    let p = primed(OverloadMode::DryRun, &cpu);
    cpu.set(0.9);
    let held: Vec<_> = (0..10).map(|_| p.try_acquire(ms(150)).unwrap()).collect();
    // inflight 6..=9 before admission exceeded 5: four would-be rejections.
    assert_eq!(p.dry_run_rejections(), 4);
    // Dry-run admissions are real load and are measured.
    assert_eq!(p.inflight(), 10);
    drop(held);
    assert_eq!(p.inflight(), 0);
}

#[test]
fn off_does_nothing() {
    let cpu = Arc::new(SampledCpu::new(1.0));
    let p = protector(OverloadMode::Off, &cpu);
    complete(&p, 10, ms(0), ms(50));
    let held: Vec<_> = (0..50).map(|_| p.try_acquire(ms(150)).unwrap()).collect();
    assert_eq!(p.inflight(), 0);
    assert_eq!(p.max_inflight(ms(150)), None);
    assert_eq!(p.dry_run_rejections(), 0);
    assert_eq!(p.mode(), OverloadMode::Off);
    drop(held);
}

#[test]
fn dropped_permit_releases_without_recording() {
    let cpu = Arc::new(SampledCpu::new(0.1));
    let p = protector(OverloadMode::On, &cpu);
    let permit = p.try_acquire(ms(0)).unwrap();
    assert_eq!(p.inflight(), 1);
    drop(permit);
    assert_eq!(p.inflight(), 0);
    assert_eq!(p.max_inflight(ms(200)), None);
}

#[test]
fn invalid_parameters_are_refused() {
    let cpu: Arc<dyn CpuSource> = Arc::new(SampledCpu::default());
    let err = |config| OverloadProtector::new(config, Arc::clone(&cpu)).unwrap_err();
    assert_eq!(
        err(OverloadConfig::new(OverloadMode::On, 0.0)).to_string(),
        "cpuThreshold must be a ratio in (0, 1], got 0"
    );
    err(OverloadConfig::new(OverloadMode::On, 1.5));
    err(OverloadConfig::new(OverloadMode::On, f64::NAN));
    err(OverloadConfig {
        window: Duration::ZERO,
        ..OverloadConfig::new(OverloadMode::On, 0.8)
    });
    assert_eq!(
        err(OverloadConfig {
            buckets: 1,
            ..OverloadConfig::new(OverloadMode::On, 0.8)
        })
        .to_string(),
        "buckets must be at least 2, got 1"
    );
}
