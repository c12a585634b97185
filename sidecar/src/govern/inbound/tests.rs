//! The inbound chain, DESIGN §4: order, first matching rule, refunds, live updates, dry run.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use lanemesh_api::proto;

use super::*;
use crate::govern::rules::InboundRules;
use crate::metrics::ProxyMetrics;
use crate::policy::{RejectReason, SampledCpu};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ctx() -> GovernContext {
    GovernContext {
        metrics: Arc::new(ProxyMetrics::new()),
        cpu: Arc::new(SampledCpu::new(0.1)),
        trusted_proxy_hops: 0,
    }
}

fn exact(path: &str) -> Option<proto::RouteMatch> {
    Some(proto::RouteMatch {
        paths: vec![proto::PathMatch {
            kind: Some(proto::path_match::Kind::Exact(path.into())),
        }],
        methods: vec![],
    })
}

fn qps_rule(name: &str, path: &str, threshold: f64) -> proto::RateLimitRule {
    proto::RateLimitRule {
        name: name.into(),
        r#match: exact(path),
        qps: Some(proto::QpsLimit {
            threshold,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rules(rules: Vec<proto::RateLimitRule>) -> InboundRules {
    InboundRules::try_from(&proto::InboundPolicy {
        name: "shop/a".into(),
        namespace: "shop".into(),
        app: "a".into(),
        rules,
        overload: None,
    })
    .unwrap()
}

fn get(path: &str, user: Option<&str>) -> http::request::Parts {
    let mut b = Request::get(path);
    if let Some(user) = user {
        b = b.header("x-user-id", user);
    }
    b.body(()).unwrap().into_parts().0
}

fn reason(r: Result<InboundAdmission, Blocked>) -> Option<RejectReason> {
    r.err().map(|b| b.reason)
}

#[test]
fn a_limited_path_leaves_other_paths_alone() {
    let g = InboundGovernor::build(
        Some(&rules(vec![qps_rule("p/greet1a", "/greet1a", 1.0)])),
        None,
        &ctx(),
    );
    assert!(g.check(&get("/greet1a", None), PEER, ms(0)).is_ok());
    let blocked = g.check(&get("/greet1a", None), PEER, ms(1)).unwrap_err();
    assert_eq!(blocked.reason, RejectReason::Flow);
    assert_eq!(&*blocked.rule, "p/greet1a");
    assert_eq!(blocked.response.status, 429);
    assert_eq!(blocked.response.headers["x-lanemesh-blocked"], "flow");
    for i in 0..10 {
        assert!(g.check(&get("/greet1b", None), PEER, ms(i)).is_ok());
    }
}

#[test]
fn the_first_matching_rule_governs() {
    let g = InboundGovernor::build(
        Some(&rules(vec![
            qps_rule("p/first", "/x", 1.0),
            qps_rule("p/second", "/x", 100.0),
        ])),
        None,
        &ctx(),
    );
    assert!(g.check(&get("/x", None), PEER, ms(0)).is_ok());
    let blocked = g.check(&get("/x", None), PEER, ms(1)).unwrap_err();
    assert_eq!(&*blocked.rule, "p/first");
}

#[test]
fn another_spelling_of_a_limited_path_is_limited_too() {
    let g = InboundGovernor::build(
        Some(&rules(vec![qps_rule("p/pay", "/api/pay", 1.0)])),
        None,
        &ctx(),
    );
    assert!(g.check(&get("/api/pay", None), PEER, ms(0)).is_ok());
    for spelled in ["/api//pay", "/api/%70ay", "/api/pay;x", "/x/../api/pay"] {
        assert_eq!(
            reason(g.check(&get(spelled, None), PEER, ms(1))),
            Some(RejectReason::Flow),
            "{spelled} slipped past the rule"
        );
    }
}

#[test]
fn a_hot_param_rejection_gives_its_qps_admission_back() {
    // Sentinel counts a pass only after the whole chain passed.
    let mut rule = qps_rule("p/users", "/u", 2.0);
    rule.hot_params = vec![proto::HotParam {
        source: proto::Source::Header as i32,
        name: "x-user-id".into(),
        threshold: 1.0,
        ..Default::default()
    }];
    let g = InboundGovernor::build(Some(&rules(vec![rule])), None, &ctx());
    assert!(g.check(&get("/u", Some("hot")), PEER, ms(0)).is_ok());
    for i in 1..5 {
        assert_eq!(
            reason(g.check(&get("/u", Some("hot")), PEER, ms(i))),
            Some(RejectReason::HotParam)
        );
    }
    // QPS 2: the hot user's refused requests did not use the second admission.
    assert!(g.check(&get("/u", Some("cold")), PEER, ms(10)).is_ok());
    assert_eq!(
        reason(g.check(&get("/u", Some("other")), PEER, ms(11))),
        Some(RejectReason::Flow)
    );
}

fn forwarded(xff: &[&str]) -> http::request::Parts {
    let mut b = Request::get("/ip");
    for value in xff {
        b = b.header("x-forwarded-for", *value);
    }
    b.body(()).unwrap().into_parts().0
}

#[test]
fn the_client_ip_is_the_peer_unless_proxies_in_front_are_trusted() {
    let req = forwarded(&["1.1.1.1, 2.2.2.2", "3.3.3.3"]);
    assert_eq!(forwarded_client(&req, 0), None);
    assert_eq!(forwarded_client(&req, 1), Some("3.3.3.3"));
    assert_eq!(forwarded_client(&req, 2), Some("2.2.2.2"));
    assert_eq!(forwarded_client(&req, 3), Some("1.1.1.1"));
    assert_eq!(forwarded_client(&req, 4), None, "too few entries: the peer");
    assert_eq!(forwarded_client(&forwarded(&[]), 1), None);
}

#[test]
fn a_client_ip_limit_cannot_be_dodged_with_a_made_up_forwarded_for() {
    let mut rule = qps_rule("p/ip", "/ip", 100.0);
    rule.hot_params = vec![proto::HotParam {
        source: proto::Source::ClientIp as i32,
        threshold: 1.0,
        ..Default::default()
    }];
    let g = InboundGovernor::build(Some(&rules(vec![rule.clone()])), None, &ctx());
    assert!(g.check(&forwarded(&["9.9.9.1"]), PEER, ms(0)).is_ok());
    assert_eq!(
        reason(g.check(&forwarded(&["9.9.9.2"]), PEER, ms(1))),
        Some(RejectReason::HotParam),
        "the same peer with another claimed address is the same client"
    );
    // Behind one trusted proxy, the proxy's entry names the client.
    let behind_proxy = GovernContext {
        trusted_proxy_hops: 1,
        ..ctx()
    };
    let g = InboundGovernor::build(Some(&rules(vec![rule])), None, &behind_proxy);
    assert!(g.check(&forwarded(&["9.9.9.1"]), PEER, ms(0)).is_ok());
    assert!(g.check(&forwarded(&["9.9.9.2"]), PEER, ms(1)).is_ok());
    assert_eq!(
        reason(g.check(&forwarded(&["spoof, 9.9.9.2"]), PEER, ms(2))),
        Some(RejectReason::HotParam),
        "entries left of the trusted one are the client's own claim"
    );
}

#[test]
fn concurrency_is_checked_before_qps_and_released_with_the_admission() {
    let mut rule = qps_rule("p/c", "/c", 1.0);
    rule.concurrency = Some(proto::ConcurrencyLimit { max: 1 });
    let g = InboundGovernor::build(Some(&rules(vec![rule])), None, &ctx());
    let held = g.check(&get("/c", None), PEER, ms(0)).unwrap();
    // QPS is also spent, but concurrency comes first in the chain.
    assert_eq!(
        reason(g.check(&get("/c", None), PEER, ms(1))),
        Some(RejectReason::Concurrency)
    );
    drop(held);
    assert_eq!(
        reason(g.check(&get("/c", None), PEER, ms(2))),
        Some(RejectReason::Flow)
    );
}

#[test]
fn state_survives_an_unrelated_change_and_resets_when_its_rule_changes() {
    let ctx = ctx();
    let v1 = rules(vec![qps_rule("p/a", "/a", 1.0), qps_rule("p/b", "/b", 1.0)]);
    let g1 = InboundGovernor::build(Some(&v1), None, &ctx);
    assert!(g1.check(&get("/a", None), PEER, ms(0)).is_ok());
    assert!(g1.check(&get("/b", None), PEER, ms(0)).is_ok());

    // /b's rule changes (threshold 1 -> 2); /a's does not.
    let v2 = rules(vec![qps_rule("p/a", "/a", 1.0), qps_rule("p/b", "/b", 2.0)]);
    let g2 = InboundGovernor::build(Some(&v2), Some(&g1), &ctx);
    assert_eq!(
        reason(g2.check(&get("/a", None), PEER, ms(1))),
        Some(RejectReason::Flow),
        "unchanged rule keeps its window"
    );
    assert!(g2.check(&get("/b", None), PEER, ms(1)).is_ok());
    assert!(
        g2.check(&get("/b", None), PEER, ms(2)).is_ok(),
        "changed rule starts with a fresh window"
    );
    assert_eq!(
        reason(g2.check(&get("/b", None), PEER, ms(3))),
        Some(RejectReason::Flow)
    );
}

#[test]
fn dry_run_admits_and_counts_per_rule() {
    let ctx = ctx();
    let mut rule = qps_rule("p/dry", "/d", 1.0);
    rule.dry_run = true;
    let g = InboundGovernor::build(Some(&rules(vec![rule])), None, &ctx);
    for i in 0..4 {
        assert!(g.check(&get("/d", None), PEER, ms(i)).is_ok());
    }
    let text = ctx.metrics.encode();
    assert!(
        text.contains(r#"lanemesh_dry_run_rejections_total{reason="flow",rule="p/dry"} 3"#),
        "{text}"
    );
}

#[test]
fn overload_runs_first_and_uses_its_own_fallback() {
    let cpu = Arc::new(SampledCpu::new(0.99));
    let ctx = GovernContext {
        metrics: Arc::new(ProxyMetrics::new()),
        cpu: cpu.clone(),
        trusted_proxy_hops: 0,
    };
    let rules = InboundRules::try_from(&proto::InboundPolicy {
        name: "shop/a".into(),
        namespace: "shop".into(),
        app: "a".into(),
        rules: vec![],
        overload: Some(proto::OverloadProtection {
            mode: proto::OverloadMode::On as i32,
            cpu_threshold: 0.8,
            name: "shop/protect".into(),
            ..Default::default()
        }),
    })
    .unwrap();
    let g = InboundGovernor::build(Some(&rules), None, &ctx);
    // Build an estimate: one request per 100 ms bucket completing in 10 ms, so the capacity is
    // about maxCompletedQps * minRt = 10/s * 10 ms = 0.1 in flight.
    for i in 0..20u64 {
        let mut a = g.check(&get("/", None), PEER, ms(i * 100)).unwrap();
        a.finish(ms(i * 100 + 10));
    }
    let now = ms(2_000);
    let _first = g.check(&get("/", None), PEER, now).unwrap();
    let _second = g.check(&get("/", None), PEER, now).unwrap();
    let blocked = g.check(&get("/", None), PEER, now).unwrap_err();
    assert_eq!(blocked.reason, RejectReason::System);
    assert_eq!(&*blocked.rule, "shop/protect");
    assert_eq!(blocked.response.status, 503);
    cpu.set(0.1);
    assert!(
        g.check(&get("/", None), PEER, now).is_ok(),
        "cpu below threshold"
    );
}

#[test]
fn numbers_beyond_the_control_planes_bounds_are_refused() {
    // Whatever sent the resource: a huge table would be allocated up front, and huge thresholds
    // and durations are what the limiters' arithmetic is bounded for.
    let mut rule = qps_rule("p/u", "/u", 1.0);
    rule.hot_params = vec![proto::HotParam {
        source: proto::Source::Header as i32,
        name: "x-user-id".into(),
        threshold: 1.0,
        max_tracked_values: 1_000_000_000,
        ..Default::default()
    }];
    let policy = |rule: proto::RateLimitRule| proto::InboundPolicy {
        name: "shop/a".into(),
        namespace: "shop".into(),
        app: "a".into(),
        rules: vec![rule],
        overload: None,
    };
    let err = InboundRules::try_from(&policy(rule.clone())).unwrap_err();
    assert_eq!(err.field, "rules[0].hotParams[0].maxTrackedValues");
    rule.hot_params.clear();
    rule.qps.as_mut().unwrap().threshold = 1e12;
    let err = InboundRules::try_from(&policy(rule.clone())).unwrap_err();
    assert_eq!(err.field, "rules[0].qps.threshold");
    rule.qps.as_mut().unwrap().threshold = 1.0;
    rule.concurrency = Some(proto::ConcurrencyLimit { max: 2_000_000_000 });
    let err = InboundRules::try_from(&policy(rule)).unwrap_err();
    assert_eq!(err.field, "rules[0].concurrency.max");
}
