//! Circuit-breaker semantics, DESIGN §4 "Circuit breaker".

use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const OK: Outcome = Outcome {
    duration: Duration::from_millis(10),
    is_error: false,
};
const ERR: Outcome = Outcome {
    duration: Duration::from_millis(10),
    is_error: true,
};

fn took(d: Duration) -> Outcome {
    Outcome {
        duration: d,
        is_error: false,
    }
}

/// The DESIGN §3 example: SlowRequestRatio 0.5, 200 ms, window 20 s, minRequests 10,
/// openDuration 10 s, one probe.
fn slow_config() -> BreakerConfig {
    BreakerConfig {
        strategy: BreakerStrategy::SlowRequestRatio {
            threshold: 0.5,
            slow_request_duration: ms(200),
        },
        window: secs(20),
        min_requests: 10,
        open_duration: secs(10),
        half_open_probes: 1,
    }
}

fn breaker(config: BreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new(config).unwrap()
}

/// Admits one request at `now` and records `outcome` at the same instant.
fn call(b: &CircuitBreaker, outcome: Outcome, now: Duration) -> Option<Transition> {
    let ticket = b.try_acquire(now).expect("breaker should admit");
    b.record(ticket, outcome, now)
}

fn rejected(b: &CircuitBreaker, now: Duration) -> bool {
    matches!(
        b.try_acquire(now),
        Err(Rejected(RejectReason::CircuitBreaking))
    )
}

const OPENED: Option<Transition> = Some(Transition {
    from: BreakerState::Closed,
    to: BreakerState::Open,
});

#[test]
fn slow_ratio_opens_at_the_threshold_boundary() {
    // DESIGN §4: ratio `>= threshold`; slow = duration >= slowRequestDuration.
    let b = breaker(slow_config());
    for _ in 0..5 {
        assert_eq!(call(&b, took(ms(199)), ms(0)), None);
    }
    for _ in 0..4 {
        assert_eq!(call(&b, took(ms(200)), ms(0)), None);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // 5 slow of 10 = 0.5 >= 0.5.
    assert_eq!(call(&b, took(ms(200)), ms(0)), OPENED);
    assert_eq!(b.state(), BreakerState::Open);
    assert!(rejected(&b, ms(1)));
}

#[test]
fn slow_ratio_below_threshold_stays_closed() {
    // DESIGN §4: 4 slow of 10 = 0.4 < 0.5.
    let b = breaker(slow_config());
    for _ in 0..6 {
        call(&b, took(ms(5)), ms(0));
    }
    for _ in 0..4 {
        call(&b, took(secs(3)), ms(0));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // Errors are not slow requests for this strategy.
    for _ in 0..10 {
        call(&b, ERR, ms(1));
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn min_requests_gates_tripping() {
    // DESIGN §4: trip only when `total >= minRequests`.
    let b = breaker(slow_config());
    for _ in 0..9 {
        assert_eq!(call(&b, took(secs(1)), ms(0)), None);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // The tenth request, although fast, brings total to minRequests with ratio 0.9.
    assert_eq!(call(&b, took(ms(1)), ms(0)), OPENED);
}

#[test]
fn error_ratio_strategy() {
    // DESIGN §4 ErrorRatio: errors / total >= threshold.
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorRatio { threshold: 0.3 },
        ..slow_config()
    });
    for _ in 0..7 {
        call(&b, OK, ms(0));
    }
    // Slowness is irrelevant to this strategy.
    call(&b, took(secs(5)), ms(0));
    assert_eq!(call(&b, ERR, ms(0)), None); // 1/9
    assert_eq!(call(&b, ERR, ms(0)), None); // 2/10 = 0.2
    assert_eq!(call(&b, ERR, ms(0)), None); // 3/11 = 0.27
    assert_eq!(call(&b, ERR, ms(0)), OPENED); // 4/12 = 0.33 >= 0.3
}

#[test]
fn error_ratio_exact_boundary() {
    // DESIGN §4: `>=` — 3 errors of 10 at threshold 0.3 opens; 0.7 likewise at 7 of 10.
    for (threshold, errors) in [(0.3, 3), (0.7, 7)] {
        let b = breaker(BreakerConfig {
            strategy: BreakerStrategy::ErrorRatio { threshold },
            ..slow_config()
        });
        for _ in 0..(10 - errors) {
            call(&b, OK, ms(0));
        }
        for _ in 0..errors - 1 {
            assert_eq!(call(&b, ERR, ms(0)), None);
        }
        assert_eq!(call(&b, ERR, ms(0)), OPENED, "threshold {threshold}");
    }
}

#[test]
fn error_count_strategy_with_min_requests() {
    // DESIGN §4 ErrorCount: errors >= threshold, once total >= minRequests.
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorCount { threshold: 3 },
        min_requests: 5,
        ..slow_config()
    });
    for _ in 0..3 {
        assert_eq!(call(&b, ERR, ms(0)), None);
    }
    assert_eq!(call(&b, OK, ms(0)), None); // total 4 < 5
    assert_eq!(call(&b, OK, ms(0)), OPENED); // total 5, errors 3
}

#[test]
fn statistics_slide_out_of_the_window() {
    // DESIGN §4: counted "within `window`" (here 10 s in 1 s buckets).
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorCount { threshold: 3 },
        window: secs(10),
        min_requests: 1,
        ..slow_config()
    });
    call(&b, ERR, ms(0));
    call(&b, ERR, ms(500));
    // 10.5 s: the bucket [0, 1) s has left the window; only this error counts.
    assert_eq!(call(&b, ERR, ms(10_500)), None);
    assert_eq!(call(&b, ERR, ms(10_600)), None);
    assert_eq!(call(&b, ERR, ms(10_700)), OPENED);
}

#[test]
fn open_rejects_until_open_duration_elapses() {
    // DESIGN §4: Open rejects until `openDuration` elapses, then HalfOpen.
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorCount { threshold: 1 },
        min_requests: 1,
        ..slow_config()
    });
    assert_eq!(call(&b, ERR, secs(100)), OPENED);
    assert!(rejected(&b, secs(100)));
    assert!(rejected(&b, ms(109_999)));
    assert_eq!(b.state(), BreakerState::Open);
    let probe = b.try_acquire(secs(110)).unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        b.record(probe, OK, secs(110)),
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed
        })
    );
    assert_eq!(b.state(), BreakerState::Closed);
}

fn open_breaker(probes: u32) -> CircuitBreaker {
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorCount { threshold: 3 },
        window: secs(60),
        min_requests: 1,
        open_duration: secs(1),
        half_open_probes: probes,
    });
    for _ in 0..3 {
        call(&b, ERR, ms(0));
    }
    assert_eq!(b.state(), BreakerState::Open);
    b
}

#[test]
fn half_open_admits_exactly_the_configured_probes() {
    // DESIGN §4: HalfOpen admits exactly `halfOpenProbes`, rejects the rest.
    let b = open_breaker(3);
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire(secs(1)).unwrap()).collect();
    assert!(probes.iter().all(BreakerTicket::is_probe));
    assert!(rejected(&b, secs(1)));
    assert!(rejected(&b, ms(1_500)));
    let mut transitions = probes.into_iter().map(|p| b.record(p, OK, ms(1_100)));
    assert_eq!(transitions.next(), Some(None));
    assert_eq!(transitions.next(), Some(None));
    assert_eq!(
        transitions.next(),
        Some(Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed
        }))
    );
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn half_open_probes_are_exact_under_contention() {
    let b = Arc::new(open_breaker(2));
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (b, barrier) = (Arc::clone(&b), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                b.try_acquire(secs(2)).is_ok()
            })
        })
        .collect();
    let admitted = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(admitted, 2);
}

#[test]
fn failed_probe_reopens_for_a_new_open_duration() {
    // DESIGN §4: any probe failure -> Open again (new `openDuration`).
    let b = open_breaker(3);
    let p1 = b.try_acquire(secs(1)).unwrap();
    let p2 = b.try_acquire(secs(1)).unwrap();
    let p3 = b.try_acquire(secs(1)).unwrap();
    assert_eq!(b.record(p1, OK, ms(1_200)), None);
    assert_eq!(
        b.record(p2, ERR, ms(1_300)),
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Open
        })
    );
    // The outstanding probe belongs to the previous half-open period and changes nothing.
    assert_eq!(b.record(p3, OK, ms(1_400)), None);
    assert_eq!(b.state(), BreakerState::Open);
    // The new open period runs from the failure: 1.3 s + 1 s.
    assert!(rejected(&b, ms(2_299)));
    assert!(b.try_acquire(ms(2_300)).unwrap().is_probe());
}

#[test]
fn statistics_reset_on_close() {
    // DESIGN §4: all probes succeed -> Closed with statistics reset. The three errors that opened
    // the breaker are still inside the 60 s window; were they kept, one more error would reopen.
    let b = open_breaker(1);
    let probe = b.try_acquire(secs(1)).unwrap();
    b.record(probe, OK, secs(1));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(call(&b, ERR, secs(2)), None);
    assert_eq!(call(&b, ERR, secs(2)), None);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(call(&b, ERR, secs(2)), OPENED);
}

#[test]
fn outcomes_from_before_a_transition_are_ignored() {
    // A request admitted while Closed that completes after the breaker opened (and closed again)
    // must neither count in the fresh statistics nor pass for a probe.
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorCount { threshold: 2 },
        window: secs(60),
        min_requests: 1,
        open_duration: secs(1),
        half_open_probes: 1,
    });
    let late = b.try_acquire(ms(0)).unwrap();
    let late2 = b.try_acquire(ms(0)).unwrap();
    call(&b, ERR, ms(0));
    assert_eq!(call(&b, ERR, ms(0)), OPENED);
    let probe = b.try_acquire(secs(1)).unwrap();
    // A late failure during HalfOpen is not the probe's result.
    assert_eq!(b.record(late, ERR, secs(1)), None);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.record(probe, OK, secs(1));
    assert_eq!(b.state(), BreakerState::Closed);
    // Nor does a late failure count after the reset.
    assert_eq!(b.record(late2, ERR, secs(2)), None);
    assert_eq!(call(&b, ERR, secs(2)), None);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn unreported_probes_count_as_failed_after_open_duration() {
    let b = open_breaker(1);
    let lost = b.try_acquire(secs(1)).unwrap();
    assert!(rejected(&b, ms(1_999)));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    // openDuration after entering HalfOpen the missing probe is deemed failed: Open again.
    assert!(rejected(&b, secs(2)));
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.record(lost, OK, secs(2)), None);
    assert!(rejected(&b, ms(2_999)));
    assert!(b.try_acquire(secs(3)).unwrap().is_probe());
}

#[test]
fn gauge_and_transition_counters() {
    // DESIGN §4/§5: state exposed as a gauge, transitions as counters.
    let b = open_breaker(1);
    assert_eq!(b.state().gauge_value(), 1);
    assert_eq!(
        b.transitions(),
        TransitionCounts {
            opened: 1,
            half_opened: 0,
            closed: 0
        }
    );
    let probe = b.try_acquire(secs(1)).unwrap();
    assert_eq!(b.state().gauge_value(), 2);
    assert_eq!(b.state().as_str(), "half_open");
    b.record(probe, ERR, secs(1));
    let probe = b.try_acquire(secs(2)).unwrap();
    b.record(probe, OK, secs(2));
    assert_eq!(b.state().gauge_value(), 0);
    assert_eq!(
        b.transitions(),
        TransitionCounts {
            opened: 2,
            half_opened: 2,
            closed: 1
        }
    );
}

#[test]
fn dry_run_admits_but_records_nothing_for_would_be_rejections() {
    let b = breaker(BreakerConfig {
        strategy: BreakerStrategy::ErrorCount { threshold: 1 },
        min_requests: 1,
        open_duration: secs(1),
        ..slow_config()
    })
    .with_enforcement(Enforcement::DryRun);
    assert_eq!(call(&b, ERR, ms(0)), OPENED);
    // Open, but in dry run: admitted, counted, and the outcome does not feed the breaker.
    let t = b.try_acquire(ms(10)).unwrap();
    assert!(!t.is_probe());
    assert_eq!(b.record(t, ERR, ms(10)), None);
    assert_eq!(b.dry_run_rejections(), 1);
    // The real probe after openDuration closes it.
    let probe = b.try_acquire(secs(1)).unwrap();
    assert!(probe.is_probe());
    b.record(probe, OK, secs(1));
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn invalid_parameters_are_refused() {
    let with = |strategy| BreakerConfig {
        strategy,
        ..slow_config()
    };
    assert_eq!(
        CircuitBreaker::new(with(BreakerStrategy::ErrorRatio { threshold: 0.0 }))
            .unwrap_err()
            .to_string(),
        "threshold must be a ratio in (0, 1], got 0"
    );
    assert!(
        CircuitBreaker::new(with(BreakerStrategy::ErrorRatio {
            threshold: f64::NAN
        }))
        .is_err()
    );
    assert!(
        CircuitBreaker::new(with(BreakerStrategy::SlowRequestRatio {
            threshold: 1.01,
            slow_request_duration: ms(1)
        }))
        .is_err()
    );
    assert_eq!(
        CircuitBreaker::new(with(BreakerStrategy::SlowRequestRatio {
            threshold: 0.5,
            slow_request_duration: Duration::ZERO
        }))
        .unwrap_err(),
        PolicyError::ZeroDuration {
            field: "slowRequestDuration"
        }
    );
    assert!(CircuitBreaker::new(with(BreakerStrategy::ErrorCount { threshold: 0 })).is_err());
    assert_eq!(
        CircuitBreaker::new(BreakerConfig {
            window: Duration::ZERO,
            ..slow_config()
        })
        .unwrap_err()
        .to_string(),
        "window must be a positive duration, got 0s"
    );
    assert!(
        CircuitBreaker::new(BreakerConfig {
            open_duration: Duration::ZERO,
            ..slow_config()
        })
        .is_err()
    );
    assert_eq!(
        CircuitBreaker::new(BreakerConfig {
            half_open_probes: 0,
            ..slow_config()
        })
        .unwrap_err()
        .to_string(),
        "halfOpenProbes must be at least 1, got 0"
    );
}

#[test]
fn a_released_probe_goes_to_the_next_request() {
    // A probe whose request never reached the upstream must not hold the half-open slot.
    let b = open_breaker(1);
    let probe = b.try_acquire(secs(1)).unwrap();
    assert!(probe.is_probe());
    assert!(rejected(&b, secs(1)));
    b.release(probe);
    let next = b.try_acquire(secs(1)).unwrap();
    assert!(next.is_probe());
    assert_eq!(
        b.record(next, OK, ms(1_100)),
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed
        })
    );
}
