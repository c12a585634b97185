//! The per-request governance decision (issue target: under 1 µs on the dev machine):
//! route match + QPS + concurrency on the inbound side, route match + circuit breaker (check and
//! record) on the outbound side, and both through the mesh router with lanes and balancing.
//!
//! `cargo bench -p lanemesh-sidecar --bench decision` (or `make bench-policy`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use lanemesh_api::proto;
use lanemesh_sidecar::govern::{
    CallResult, GovernContext, InboundGovernor, InboundRules, OutboundGovernor, OutboundRules,
};
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::mesh::MeshRouter;
use lanemesh_sidecar::metrics::ProxyMetrics;
use lanemesh_sidecar::policy::{Clock, MonotonicClock, SampledCpu};
use lanemesh_sidecar::proxy::{ConnContext, Direction, Router};
use lanemesh_sidecar::snapshot::Snapshot;

fn dur(ms: u64) -> Option<prost_types::Duration> {
    Some(Duration::from_millis(ms).try_into().unwrap())
}

fn path(kind: proto::path_match::Kind) -> Option<proto::RouteMatch> {
    Some(proto::RouteMatch {
        paths: vec![proto::PathMatch { kind: Some(kind) }],
        methods: vec!["GET".into()],
    })
}

/// Three rules; requests to `/api/orders` match the last (a prefix), so the matcher walks all.
fn inbound_policy() -> proto::InboundPolicy {
    use proto::path_match::Kind;
    let rule = |name: &str, m| proto::RateLimitRule {
        name: name.into(),
        r#match: m,
        qps: Some(proto::QpsLimit {
            threshold: 1e9,
            ..Default::default()
        }),
        concurrency: Some(proto::ConcurrencyLimit { max: 1_000_000 }),
        ..Default::default()
    };
    proto::InboundPolicy {
        name: "demo/a".into(),
        namespace: "demo".into(),
        app: "a".into(),
        rules: vec![
            rule("p/exact", path(Kind::Exact("/greet1a".into()))),
            rule("p/regex", path(Kind::Regex("/users/[0-9]+".into()))),
            rule("p/api", path(Kind::Prefix("/api/".into()))),
        ],
        overload: None,
    }
}

fn outbound_policy() -> proto::OutboundPolicy {
    proto::OutboundPolicy {
        name: "demo/c".into(),
        namespace: "demo".into(),
        app: "c".into(),
        breakers: vec![proto::CircuitBreakerRule {
            name: "cb/errors".into(),
            r#match: path(proto::path_match::Kind::Prefix("/api/".into())),
            strategy: proto::BreakerStrategy::ErrorRatio as i32,
            threshold: 0.5,
            window: dur(10_000),
            min_requests: 10,
            open_duration: dur(5_000),
            half_open_probes: 1,
            ..Default::default()
        }],
        timeout: dur(1_000),
        ..Default::default()
    }
}

fn request() -> http::request::Parts {
    Request::get("/api/orders?id=7")
        .header("host", "c.demo")
        .header("x-user-id", "42")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn governors(c: &mut Criterion) {
    let ctx = GovernContext {
        metrics: Arc::new(ProxyMetrics::new()),
        cpu: Arc::new(SampledCpu::new(0.1)),
        trusted_proxy_hops: 0,
    };
    let inbound_rules = InboundRules::try_from(&inbound_policy()).unwrap();
    let inbound = InboundGovernor::build(Some(&inbound_rules), None, &ctx);
    let outbound_rules = Arc::new(OutboundRules::try_from(&outbound_policy()).unwrap());
    let outbound = OutboundGovernor::build([&outbound_rules], None, &ctx);
    let clock = MonotonicClock::new();
    let req = request();
    let peer = "10.0.0.9".parse().unwrap();

    c.bench_function("inbound: route match + concurrency + qps", |b| {
        b.iter(|| {
            let admission = inbound.check(black_box(&req), peer, clock.now()).unwrap();
            drop(black_box(admission));
        });
    });
    c.bench_function("outbound: route match + breaker check + record", |b| {
        b.iter(|| {
            let now = clock.now();
            let mut admission = outbound
                .check("c", &req.method, black_box(req.uri.path()), now)
                .unwrap();
            admission.record(CallResult::Http(200), now);
        });
    });
    c.bench_function("decision: inbound chain + outbound breaker", |b| {
        b.iter(|| {
            let now = clock.now();
            let admission = inbound.check(black_box(&req), peer, now).unwrap();
            let mut breakers = outbound
                .check("c", &req.method, black_box(req.uri.path()), now)
                .unwrap();
            breakers.record(CallResult::Http(200), now);
            drop(black_box(admission));
        });
    });
}

fn mesh_router(c: &mut Criterion) {
    let local = PodIdentity::app("demo", "a");
    let snapshot = Snapshot::from_resources(
        local,
        [
            support::service(
                "a",
                "10.96.0.1:80",
                &[("10.0.0.1:8080".parse().unwrap(), "", true)],
            ),
            support::service(
                "c",
                "10.96.0.3:80",
                &[("10.0.0.3:8080".parse().unwrap(), "", true)],
            ),
        ],
        [],
        [inbound_policy()],
        [outbound_policy()],
    )
    .unwrap();
    let router = MeshRouter::new();
    router.install(&snapshot);
    let peer: SocketAddr = "10.0.0.9:40000".parse().unwrap();
    let app = Some("127.0.0.1".parse().unwrap());
    let inbound = ConnContext::new(
        Direction::Inbound,
        peer,
        "10.0.0.1:8080".parse().unwrap(),
        app,
    );
    let outbound = ConnContext::new(
        Direction::Outbound,
        peer,
        "10.96.0.3:80".parse().unwrap(),
        app,
    );
    let template = request();

    c.bench_function("mesh router: inbound request with rate-limit rules", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |req| drop(black_box(router.route_http(&inbound, req))),
            criterion::BatchSize::SmallInput,
        );
    });
    c.bench_function("mesh router: outbound request with a breaker", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |req| drop(black_box(router.route_http(&outbound, req))),
            criterion::BatchSize::SmallInput,
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = governors, mesh_router
}
criterion_main!(benches);
