//! Property tests: conversion of arbitrary specs (random durations,
//! regexes, names, numbers) returns resources or refusals, never panics,
//! and what it serves stays within `crate::limits`.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::tests::base_manifest;
use super::*;
use crate::crd::circuit_breaker::BreakerStrategy;
use crate::crd::common::{ConditionSource, Fallback, MatchCondition, Operator, PathMatch};
use crate::crd::lane_group::RoutingMode;
use crate::crd::rate_limit::{HotParamOverride, QpsBehavior, Scope};
use crate::limits;

/// Durations: mostly near the Go syntax (so the arithmetic paths run), some
/// anything at all.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?([0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|µs|ms|s|m|h|d|)){1,4}",
        "[0-9]{15,40}h",
        any::<String>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._/-]{0,20}",
        any::<String>(),
        // Regex-looking input: repetition, classes, groups, escapes.
        "[()\\[\\]{}*+?|^$\\\\a-c0-9,.]{0,40}",
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        0.0..2.0f64,
        Just(limits::MAX_THRESHOLD),
        Just(f64::MAX),
        Just(-0.0),
    ]
}

fn operator() -> impl Strategy<Value = Operator> {
    prop_oneof![
        Just(Operator::Equal),
        Just(Operator::NotEqual),
        Just(Operator::In),
        Just(Operator::NotIn),
        Just(Operator::Prefix),
        Just(Operator::Regex),
        Just(Operator::Percentage),
    ]
}

fn behavior() -> impl Strategy<Value = QpsBehavior> {
    prop_oneof![
        Just(QpsBehavior::Reject),
        Just(QpsBehavior::WarmUp),
        Just(QpsBehavior::Queue),
    ]
}

fn strategy() -> impl Strategy<Value = BreakerStrategy> {
    prop_oneof![
        Just(BreakerStrategy::SlowRequestRatio),
        Just(BreakerStrategy::ErrorRatio),
        Just(BreakerStrategy::ErrorCount),
    ]
}

/// Every field a user controls, drawn at random.
#[derive(Debug, Clone)]
struct Hostile {
    durations: Vec<String>,
    texts: Vec<String>,
    numbers: Vec<f64>,
    counts: Vec<u32>,
    status: u16,
    operator: Operator,
    behavior: QpsBehavior,
    strategy: BreakerStrategy,
    percentage_mode: bool,
    cluster_scope: bool,
    replicas: u32,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (
        prop::collection::vec(duration(), 9),
        prop::collection::vec(text(), 12),
        prop::collection::vec(number(), 6),
        prop::collection::vec(any::<u32>(), 7),
        any::<u16>(),
        (operator(), behavior(), strategy()),
        (any::<bool>(), any::<bool>(), any::<u32>()),
    )
        .prop_map(
            |(durations, texts, numbers, counts, status, (operator, behavior, strategy), flags)| {
                Hostile {
                    durations,
                    texts,
                    numbers,
                    counts,
                    status,
                    operator,
                    behavior,
                    strategy,
                    percentage_mode: flags.0,
                    cluster_scope: flags.1,
                    replicas: flags.2,
                }
            },
        )
}

/// The valid base objects with every user-controlled field replaced.
fn apply(h: &Hostile) -> Manifest {
    let mut m = base_manifest();
    let (d, t, n, c) = (&h.durations, &h.texts, &h.numbers, &h.counts);

    let group = &mut m.lane_groups[0].spec;
    group.apps.push(t[0].clone());
    group.tag_header = t[1].clone();
    group.propagation.trace_headers.push(t[2].clone());
    group.propagation.trace_ttl = Some(d[0].clone());
    group.propagation.trace_table_size = Some(c[0]);
    if h.percentage_mode {
        group.routing_mode = RoutingMode::Percentage;
    }

    let lane = &mut m.lanes[0].spec;
    lane.tag = t[3].clone();
    lane.weight = Some(c[1]);
    let mut second = m.lanes[0].clone();
    second.metadata.name = Some("z".to_owned());
    second.spec.weight = Some(c[2]);
    m.lanes.push(second);
    let condition = MatchCondition {
        source: ConditionSource::Header,
        name: t[4].clone(),
        operator: h.operator,
        value: Some(t[5].clone()),
        values: Some(vec![t[6].clone()]),
    };
    if let Some(route) = m.lanes[0].spec.route_match.as_mut() {
        route.conditions.push(condition);
    }

    let rule = &mut m.rate_limits[0].spec.rules[0];
    rule.name = t[7].clone();
    if let Some(q) = rule.qps.as_mut() {
        q.threshold = n[0];
        q.behavior = h.behavior;
        q.warm_up_period = Some(d[1].clone());
        q.max_queue_time = Some(d[2].clone());
    }
    if h.cluster_scope {
        rule.scope = Scope::Cluster;
    }
    rule.concurrency = Some(crate::crd::rate_limit::ConcurrencyLimit { max: c[3] });
    rule.route_match.paths.push(PathMatch {
        regex: Some(t[8].clone()),
        ..PathMatch::default()
    });
    rule.fallback = Some(Fallback {
        status: Some(h.status),
        headers: BTreeMap::from([(t[9].clone(), t[10].clone())]),
        ..Fallback::default()
    });
    let hot = &mut rule.hot_params[0];
    hot.threshold = n[1];
    hot.burst = c[4];
    hot.window = d[3].clone();
    hot.max_tracked_values = Some(c[5]);
    hot.overrides.push(HotParamOverride {
        value: t[11].clone(),
        threshold: n[2],
    });

    let breakers = &mut m.circuit_breakers[0].spec;
    breakers.timeout = Some(d[4].clone());
    let b = &mut breakers.rules[0];
    b.strategy = h.strategy;
    b.threshold = n[3];
    b.slow_request_duration = Some(d[5].clone());
    b.window = d[6].clone();
    b.open_duration = d[7].clone();
    b.min_requests = c[6];
    b.half_open_probes = c[6].rotate_left(7);

    m.overloads[0].spec.cpu_threshold = n[4];
    m
}

fn within_limits(d: Option<&prost_types::Duration>) -> bool {
    d.is_none_or(|d| {
        d.seconds >= 0
            && u64::try_from(d.seconds).is_ok_and(|s| s <= limits::MAX_DURATION.as_secs())
            && d.nanos >= 0
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn conversion_of_arbitrary_specs_never_panics_and_serves_only_bounded_values(h in hostile()) {
        let m = apply(&h);
        let replicas = h.replicas;
        let c = manifest(&m, &|_, _| replicas);
        for g in &c.lane_groups.resources {
            let p = g.propagation.as_ref();
            prop_assert!(within_limits(p.and_then(|p| p.trace_ttl.as_ref())));
            prop_assert!(g.lanes.iter().map(|l| l.weight).sum::<u32>() <= 100 || g.routing_mode == proto::RoutingMode::Content as i32);
        }
        for p in &c.inbound.resources {
            for r in &p.rules {
                if let Some(q) = &r.qps {
                    prop_assert!(q.threshold.is_finite() && q.threshold <= limits::MAX_THRESHOLD);
                    prop_assert!(within_limits(q.warm_up_period.as_ref()));
                    prop_assert!(within_limits(q.max_queue_time.as_ref()));
                }
                for hp in &r.hot_params {
                    prop_assert!(hp.burst <= limits::MAX_COUNT);
                    prop_assert!(within_limits(hp.window.as_ref()));
                }
                prop_assert!(r.concurrency.as_ref().is_none_or(|c| c.max <= limits::MAX_COUNT));
            }
        }
        for p in &c.outbound.resources {
            prop_assert!(within_limits(p.timeout.as_ref()));
            for b in &p.breakers {
                prop_assert!(within_limits(b.window.as_ref()));
                prop_assert!(within_limits(b.open_duration.as_ref()));
                prop_assert!(within_limits(b.slow_request_duration.as_ref()));
                prop_assert!(b.min_requests <= limits::MAX_COUNT);
            }
        }
        // Every refusal names its object and at least one field.
        for invalid in c.rejected() {
            prop_assert!(!invalid.errors.is_empty());
            prop_assert!(invalid.message().len() < 64 * 1024);
        }
    }

    #[test]
    fn any_duration_string_parses_or_is_refused_without_panicking(text in duration()) {
        match parse_duration(&text) {
            Ok(d) => prop_assert!(d <= limits::MAX_DURATION),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn integers_of_any_size_in_yaml_are_refused_or_bounded(
        max in any::<i128>(),
        burst in any::<i64>(),
    ) {
        let yaml = format!(
            "apiVersion: lanemesh.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p}}\n\
             spec: {{app: a, rules: [{{name: r, concurrency: {{max: {max}}}, \
             hotParams: [{{source: Host, threshold: 1, burst: {burst}}}]}}]}}\n"
        );
        match Manifest::from_yaml(&yaml) {
            Ok(m) => {
                let c = manifest(&m, &|_, _| 1);
                let fits = u32::try_from(max).is_ok_and(|v| v <= limits::MAX_COUNT)
                    && u32::try_from(burst).is_ok_and(|v| v <= limits::MAX_COUNT);
                prop_assert_eq!(c.inbound.rejected.is_empty(), fits);
            }
            // Beyond i64 YAML itself may refuse the number; either way the
            // document is refused with a message, before conversion.
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
