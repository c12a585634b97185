//! Outbound breakers, DESIGN §4: per app and rule, outcomes classified, state across swaps.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use lanemesh_api::proto;

use super::*;
use crate::govern::rules::OutboundRules;
use crate::policy::{RejectReason, SampledCpu};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ctx() -> GovernContext {
    GovernContext {
        metrics: Arc::new(ProxyMetrics::new()),
        cpu: Arc::new(SampledCpu::new(0.0)),
        trusted_proxy_hops: 0,
    }
}

fn dur(ms: u64) -> Option<prost_types::Duration> {
    Some(Duration::from_millis(ms).try_into().unwrap())
}

fn error_count_rule(name: &str, threshold: f64) -> proto::CircuitBreakerRule {
    proto::CircuitBreakerRule {
        name: name.into(),
        strategy: proto::BreakerStrategy::ErrorCount as i32,
        threshold,
        window: dur(10_000),
        min_requests: 1,
        open_duration: dur(1_000),
        half_open_probes: 1,
        ..Default::default()
    }
}

fn policy(app: &str, breakers: Vec<proto::CircuitBreakerRule>) -> Arc<OutboundRules> {
    Arc::new(
        OutboundRules::try_from(&proto::OutboundPolicy {
            name: format!("shop/{app}"),
            namespace: "shop".into(),
            app: app.into(),
            breakers,
            timeout: dur(2_000),
            ..Default::default()
        })
        .unwrap(),
    )
}

fn call(g: &OutboundGovernor, app: &str, now: Duration) -> Result<OutboundAdmission, Blocked> {
    g.check(app, &Method::GET, "/", now)
}

#[test]
fn errors_open_the_breaker_and_callers_get_its_fallback() {
    let ctx = ctx();
    let g = OutboundGovernor::build(
        [&policy("c", vec![error_count_rule("cb/errors", 2.0)])],
        None,
        &ctx,
    );
    assert_eq!(g.timeout("c"), Some(ms(2_000)));
    for i in 0..2 {
        let mut a = call(&g, "c", ms(i)).unwrap();
        assert!(!a.is_empty());
        a.record(CallResult::Http(503), ms(i + 5));
    }
    assert_eq!(g.breakers("c")[0].state(), BreakerState::Open);
    let blocked = call(&g, "c", ms(10)).unwrap_err();
    assert_eq!(blocked.reason, RejectReason::CircuitBreaking);
    assert_eq!(blocked.response.status, 503);
    assert_eq!(
        blocked.response.headers["x-lanemesh-blocked"],
        "circuit_breaking"
    );
    assert_eq!(blocked.response.grpc_status, Some(14));
    // Another app is unaffected.
    assert!(call(&g, "d", ms(10)).unwrap().is_empty());
    let text = ctx.metrics.encode();
    assert!(
        text.contains(r#"lanemesh_breaker_state{app="c",rule="cb/errors"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"lanemesh_breaker_transitions_total{app="c",rule="cb/errors",to="open"} 1"#
        ),
        "{text}"
    );
}

#[test]
fn a_dry_run_breaker_opens_and_counts_but_never_rejects() {
    // Issue 16 item 5: CircuitBreakerPolicy `dryRun`.
    let ctx = ctx();
    let mut rule = error_count_rule("cb/dry", 2.0);
    rule.dry_run = true;
    let g = OutboundGovernor::build([&policy("c", vec![rule])], None, &ctx);
    for i in 0..2 {
        call(&g, "c", ms(i))
            .unwrap()
            .record(CallResult::Http(503), ms(i + 5));
    }
    assert_eq!(
        g.breakers("c")[0].state(),
        BreakerState::Open,
        "its state shows what enforcing would do"
    );
    for i in 0..3 {
        assert!(
            call(&g, "c", ms(10 + i)).is_ok(),
            "a dry-run breaker admits"
        );
    }
    let text = ctx.metrics.encode();
    assert!(
        text.contains(
            r#"lanemesh_dry_run_rejections_total{reason="circuit_breaking",rule="cb/dry"} 3"#
        ),
        "{text}"
    );
    let enforced = text.lines().find(|l| {
        l.starts_with(r#"lanemesh_rejections_total{reason="circuit_breaking",rule="cb/dry"}"#)
            && !l.ends_with(" 0")
    });
    assert_eq!(enforced, None, "no rejection was enforced");
}

#[test]
fn grpc_and_http_outcomes_are_classified() {
    let g = OutboundGovernor::build(
        [&policy("c", vec![error_count_rule("cb/e", 1.0)])],
        None,
        &ctx(),
    );
    for result in [
        CallResult::Http(200),
        CallResult::Http(404),
        CallResult::Grpc(0),
        CallResult::Grpc(5),
    ] {
        call(&g, "c", ms(0)).unwrap().record(result, ms(1));
    }
    assert_eq!(
        g.breakers("c")[0].state(),
        BreakerState::Closed,
        "none of these is an error"
    );
    call(&g, "c", ms(2))
        .unwrap()
        .record(CallResult::Grpc(14), ms(3));
    assert_eq!(
        g.breakers("c")[0].state(),
        BreakerState::Open,
        "UNAVAILABLE is an error"
    );
}

#[test]
fn half_open_probe_is_released_when_the_request_never_ran() {
    let g = OutboundGovernor::build(
        [&policy("c", vec![error_count_rule("cb/e", 1.0)])],
        None,
        &ctx(),
    );
    call(&g, "c", ms(0))
        .unwrap()
        .record(CallResult::Failed, ms(1));
    let probe = call(&g, "c", ms(1_500)).unwrap();
    assert!(call(&g, "c", ms(1_500)).is_err(), "one probe at a time");
    drop(probe);
    let mut probe = call(&g, "c", ms(1_500)).unwrap();
    probe.record(CallResult::Http(200), ms(1_510));
    assert_eq!(g.breakers("c")[0].state(), BreakerState::Closed);
}

#[test]
fn breaker_state_survives_unrelated_changes_and_resets_with_its_rule() {
    let ctx = ctx();
    let v1 = policy("c", vec![error_count_rule("cb/e", 1.0)]);
    let g1 = OutboundGovernor::build([&v1, &policy("d", vec![])], None, &ctx);
    call(&g1, "c", ms(0))
        .unwrap()
        .record(CallResult::Failed, ms(1));
    assert!(call(&g1, "c", ms(2)).is_err());

    // Another app's policy changes: c's breaker stays open.
    let g2 = OutboundGovernor::build(
        [&v1, &policy("d", vec![error_count_rule("cb/d", 3.0)])],
        Some(&g1),
        &ctx,
    );
    assert!(call(&g2, "c", ms(3)).is_err());

    // c's rule changes: a fresh, closed breaker.
    let g3 = OutboundGovernor::build(
        [&policy("c", vec![error_count_rule("cb/e", 2.0)])],
        Some(&g2),
        &ctx,
    );
    assert!(call(&g3, "c", ms(4)).is_ok());
    let text = ctx.metrics.encode();
    assert!(
        !text.contains(r#"lanemesh_breaker_state{app="d",rule="cb/d"}"#),
        "the removed breaker's gauge is gone: {text}"
    );
}

#[test]
fn only_matching_rules_are_consulted() {
    let mut rule = error_count_rule("cb/slowpath", 1.0);
    rule.r#match = Some(proto::RouteMatch {
        paths: vec![proto::PathMatch {
            kind: Some(proto::path_match::Kind::Prefix("/slow".into())),
        }],
        methods: vec![],
    });
    let g = OutboundGovernor::build([&policy("c", vec![rule])], None, &ctx());
    assert!(
        g.check("c", &Method::GET, "/fast", ms(0))
            .unwrap()
            .is_empty()
    );
    g.check("c", &Method::GET, "/slow/x", ms(0))
        .unwrap()
        .record(CallResult::Failed, ms(1));
    assert!(g.check("c", &Method::GET, "/slow/y", ms(2)).is_err());
    assert!(g.check("c", &Method::GET, "/fast", ms(2)).is_ok());
}
