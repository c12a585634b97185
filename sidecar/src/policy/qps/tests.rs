//! QPS limiter semantics, DESIGN §4 "QPS limit".

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn limiter(threshold: f64, behavior: QpsBehavior) -> QpsLimiter {
    QpsLimiter::new(threshold, behavior).unwrap()
}

const REJECT: Decision = Decision::Reject(RejectReason::Flow);

#[test]
fn threshold_one_admits_first_rejects_second_until_window_slides() {
    // DESIGN §4: reject when `count + 1 > threshold` over the trailing 1 s window.
    let l = limiter(1.0, QpsBehavior::Reject);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(1)), REJECT);
    assert_eq!(l.try_acquire(ms(500)), REJECT);
    assert_eq!(l.try_acquire(ms(999)), REJECT);
    // The first request's bucket [0, 100) ms leaves the window at 1000 ms.
    assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(1_001)), REJECT);
}

#[test]
fn window_slides_by_buckets_not_fixed_seconds() {
    // DESIGN §4: a sliding window of >= 10 buckets, not a fixed one-second counter.
    let l = limiter(5.0, QpsBehavior::Reject);
    for _ in 0..3 {
        assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    }
    assert_eq!(l.try_acquire(ms(600)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(600)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(900)), REJECT);
    // At 1000 ms the three from t=0 slide out; the two from 600 ms remain.
    for _ in 0..3 {
        assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    }
    assert_eq!(l.try_acquire(ms(1_000)), REJECT);
}

#[test]
fn rejected_requests_are_not_counted() {
    // DESIGN §4 counts *admitted* requests: hammering a limit must not extend the lock-out.
    let l = limiter(2.0, QpsBehavior::Reject);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    for t in (0..1_000).step_by(7) {
        assert_eq!(l.try_acquire(ms(t)), REJECT);
    }
    assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(1_000)), REJECT);
}

#[test]
fn fractional_and_zero_thresholds() {
    // DESIGN §4: `count + 1 > threshold` with a real-valued threshold; 0 rejects everything.
    let l = limiter(2.5, QpsBehavior::Reject);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(0)), REJECT);

    for behavior in [
        QpsBehavior::Reject,
        QpsBehavior::WarmUp { period: ms(10_000) },
        QpsBehavior::Queue {
            max_queue_time: ms(500),
        },
    ] {
        let l = limiter(0.0, behavior);
        assert_eq!(l.try_acquire(ms(0)), REJECT, "{behavior:?}");
        assert_eq!(l.try_acquire(ms(5_000)), REJECT, "{behavior:?}");
    }
}

#[test]
fn concurrent_callers_never_overshoot() {
    // DESIGN §4: the threshold is a hard bound on admissions per window, also under contention.
    let l = Arc::new(limiter(100.0, QpsBehavior::Reject));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                (0..50)
                    .filter(|_| l.try_acquire(ms(10)) == Decision::Admit)
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 100);
}

/// Offers one request every 10 ms for `secs` seconds; returns admissions per second.
fn admitted_per_second(l: &QpsLimiter, from_sec: u64, secs: u64) -> Vec<u64> {
    (from_sec..from_sec + secs)
        .map(|sec| {
            (0..100)
                .filter(|i| l.try_acquire(ms(sec * 1_000 + i * 10)).is_admitted())
                .count() as u64
        })
        .collect()
}

#[test]
fn warm_up_starts_at_a_third_and_reaches_threshold() {
    // DESIGN §4 WarmUp: Sentinel's token formula, cold factor 3. Worked by hand for
    // count = 10, warmUpPeriod = 10 s:
    //   warningToken = trunc(10 * 10) / 2          = 50
    //   maxToken     = 50 + trunc(2*10*10 / 4)     = 100
    //   slope        = 2 / 10 / (100 - 50)         = 0.004
    // The bucket starts full (100 tokens): warningQps = 1 / (50 * 0.004 + 0.1) = 3.33, so 3
    // requests pass in the first second. Each second the sync removes the previous second's
    // admissions; no tokens are added while stored > warningToken and prev >= trunc(10)/3 = 3:
    //   tokens  100   97   94   91   88   85   81   77   73   68   63   57   50
    //   qps    3.33 3.47 3.62 3.79 3.97 4.17 4.46 4.81 5.21 5.81 6.58 7.81 10.0
    // At 50 tokens (the warning line) the full threshold applies; the next sync finds
    // 50 == warningToken (no refill) and drops to 40, below the line, where a refill of 10/s
    // against 10 admitted per second holds it: the limiter stays warm.
    let l = limiter(10.0, QpsBehavior::WarmUp { period: ms(10_000) });
    let expected = [
        3, 3, 3, 3, 3, 4, 4, 4, 5, 5, 6, 7, 10, 10, 10, 10, 10, 10, 10, 10,
    ];
    assert_eq!(admitted_per_second(&l, 0, 20), expected);
}

#[test]
fn warm_up_cools_down_after_idling() {
    // DESIGN §4 WarmUp: an idle system refills its tokens and starts cold again.
    let l = limiter(10.0, QpsBehavior::WarmUp { period: ms(10_000) });
    let warm = admitted_per_second(&l, 0, 20);
    assert_eq!(warm[19], 10);
    // 30 s idle: 40 tokens + 30 * 10, capped at maxToken = 100, i.e. cold again.
    assert_eq!(admitted_per_second(&l, 50, 2), [3, 3]);
}

#[test]
fn warm_up_progresses_below_three_qps() {
    // DESIGN §4 WarmUp with count = 2, period 10 s: warningToken = 10, maxToken = 20,
    // slope = 0.1, cold rate 1 / (10 * 0.1 + 0.5) = 0.67 < 1 request per window. Sentinel would
    // never admit anything and never drain; the cold rate is floored at 1 per window, so tokens
    // drain one per second: 20 -> 10 after 10 s, where the full threshold of 2 applies.
    let l = limiter(2.0, QpsBehavior::WarmUp { period: ms(10_000) });
    let expected = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2];
    assert_eq!(admitted_per_second(&l, 0, 14), expected);
}

#[test]
fn warm_up_with_degenerate_token_range_runs_at_threshold() {
    // count = 1, period 1 s: warningToken = trunc(1) / 2 = 0, maxToken = 0 + trunc(0.5) = 0.
    // Sentinel's slope is infinite (NaN rate); with no warm-up range the threshold applies.
    let l = limiter(1.0, QpsBehavior::WarmUp { period: ms(1_000) });
    assert_eq!(admitted_per_second(&l, 0, 3), [1, 1, 1]);
}

#[test]
fn queue_spaces_requests_uniformly() {
    // DESIGN §4 Queue: uniform spacing of 1 s / threshold; waits up to maxQueueTime.
    let l = limiter(
        10.0,
        QpsBehavior::Queue {
            max_queue_time: ms(500),
        },
    );
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    for k in 1..=5 {
        assert_eq!(l.try_acquire(ms(0)), Decision::Delay(ms(100 * k)), "k={k}");
    }
    // The next slot would be 600 ms away: longer than maxQueueTime.
    assert_eq!(l.try_acquire(ms(0)), REJECT);
    // The rejection reserved nothing: 100 ms later the 600 ms slot is 500 ms away.
    assert_eq!(l.try_acquire(ms(100)), Decision::Delay(ms(500)));
    // Arrivals on schedule pass without waiting; idle time earns no burst.
    assert_eq!(l.try_acquire(ms(10_000)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(10_000)), Decision::Delay(ms(100)));
    assert_eq!(l.try_acquire(ms(10_150)), Decision::Delay(ms(50)));
}

#[test]
fn queue_spacing_is_rounded_like_sentinel() {
    // DESIGN §4 Queue: 1 s / 3 = 333.333... ms, rounded to the nanosecond.
    let l = limiter(
        3.0,
        QpsBehavior::Queue {
            max_queue_time: ms(1_000),
        },
    );
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(
        l.try_acquire(ms(0)),
        Decision::Delay(Duration::from_nanos(333_333_333))
    );
    assert_eq!(
        l.try_acquire(ms(0)),
        Decision::Delay(Duration::from_nanos(666_666_666))
    );
    assert_eq!(
        l.try_acquire(ms(0)),
        Decision::Delay(Duration::from_nanos(999_999_999))
    );
    assert_eq!(l.try_acquire(ms(0)), REJECT);
}

#[test]
fn queue_with_zero_max_queue_time_never_waits() {
    // DESIGN §4 Queue: maxQueueTime 0 = never wait.
    let l = limiter(
        10.0,
        QpsBehavior::Queue {
            max_queue_time: Duration::ZERO,
        },
    );
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(0)), REJECT);
    assert_eq!(l.try_acquire(ms(99)), REJECT);
    assert_eq!(l.try_acquire(ms(100)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(150)), REJECT);
    assert_eq!(l.try_acquire(ms(200)), Decision::Admit);
}

#[test]
fn dry_run_admits_and_counts_as_if_enforcing() {
    // DESIGN §3/§4: `dryRun` counts would-be rejections but lets traffic through; the window
    // only counts what enforcement would have admitted.
    let l = limiter(1.0, QpsBehavior::Reject).with_enforcement(Enforcement::DryRun);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(500)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(900)), Decision::Admit);
    assert_eq!(l.dry_run_rejections(), 2);
    // 1000 ms: had it enforced, only t=0 was counted, and it has slid out.
    assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    assert_eq!(l.dry_run_rejections(), 2);
    assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    assert_eq!(l.dry_run_rejections(), 3);
}

#[test]
fn dry_run_queue_neither_delays_nor_rejects() {
    let l = limiter(
        10.0,
        QpsBehavior::Queue {
            max_queue_time: ms(100),
        },
    )
    .with_enforcement(Enforcement::DryRun);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit); // would have waited 100 ms
    assert_eq!(l.dry_run_rejections(), 0);
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit); // would have waited 200 ms > 100 ms
    assert_eq!(l.dry_run_rejections(), 1);
}

#[test]
fn invalid_parameters_are_refused() {
    assert_eq!(
        QpsLimiter::new(f64::NAN, QpsBehavior::Reject)
            .unwrap_err()
            .to_string(),
        "threshold must be a finite number >= 0, got NaN"
    );
    assert!(QpsLimiter::new(-1.0, QpsBehavior::Reject).is_err());
    assert!(QpsLimiter::new(f64::INFINITY, QpsBehavior::Reject).is_err());
    assert_eq!(
        QpsLimiter::new(
            10.0,
            QpsBehavior::WarmUp {
                period: Duration::ZERO
            }
        )
        .unwrap_err(),
        PolicyError::ZeroDuration {
            field: "warmUpPeriod"
        }
    );
    let l = limiter(
        7.0,
        QpsBehavior::Queue {
            max_queue_time: DEFAULT_MAX_QUEUE_TIME,
        },
    );
    assert_eq!(l.threshold(), 7.0);
    assert_eq!(
        l.behavior(),
        QpsBehavior::Queue {
            max_queue_time: ms(500)
        }
    );
}

#[test]
fn a_refunded_admission_frees_its_place_in_the_window() {
    // Sentinel counts a pass only after the whole chain passed: a request a later check refuses
    // gives its QPS admission back.
    let l = limiter(1.0, QpsBehavior::Reject);
    let (first, pass) = l.try_acquire_refundable(ms(0));
    assert_eq!(first, Decision::Admit);
    assert_eq!(l.try_acquire(ms(10)), REJECT);
    l.refund(pass);
    assert_eq!(l.try_acquire(ms(20)), Decision::Admit);
    assert_eq!(l.try_acquire(ms(30)), REJECT);
}

#[test]
fn refunding_a_rejection_or_an_expired_bucket_changes_nothing() {
    let l = limiter(1.0, QpsBehavior::Reject);
    let (_, old) = l.try_acquire_refundable(ms(0));
    let (rejected, nothing) = l.try_acquire_refundable(ms(10));
    assert_eq!(rejected, REJECT);
    l.refund(nothing);
    assert_eq!(l.try_acquire(ms(20)), REJECT);
    // At 1 s the old bucket has slid out and a new admission is counted; refunding the old pass
    // must not take that one back.
    assert_eq!(l.try_acquire(ms(1_000)), Decision::Admit);
    l.refund(old);
    assert_eq!(l.try_acquire(ms(1_010)), REJECT);
}

#[test]
fn a_refunded_queue_slot_is_handed_out_again() {
    let l = limiter(
        1.0,
        QpsBehavior::Queue {
            max_queue_time: ms(1_500),
        },
    );
    assert_eq!(l.try_acquire(ms(0)), Decision::Admit);
    let (queued, pass) = l.try_acquire_refundable(ms(0));
    assert_eq!(queued, Decision::Delay(ms(1_000)));
    l.refund(pass);
    assert_eq!(l.try_acquire(ms(0)), Decision::Delay(ms(1_000)));
}

#[test]
fn extreme_warm_up_parameters_do_not_overflow() {
    // A CRD may carry any threshold and period the schema allows; none may panic the proxy.
    for (threshold, period) in [
        (1e300, Duration::from_secs(u64::MAX / 4)),
        (f64::from(u32::MAX), Duration::from_secs(1 << 40)),
        (1e18, Duration::from_secs(1)),
    ] {
        let l = limiter(threshold, QpsBehavior::WarmUp { period });
        for i in 0..3 {
            let _ = l.try_acquire(Duration::from_secs(i));
        }
    }
}
