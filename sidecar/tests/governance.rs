#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Governance end to end on loopback (DESIGN §4): rate limits, concurrency, hot parameters and
//! overload protection on a pod's inbound side; circuit breakers and timeouts on its outbound
//! side; fallbacks, `x-lanemesh-blocked`, gRPC statuses, metrics and live updates.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanemesh_api::proto;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::snapshot::Snapshot;
use support::pod::{STEP, Sidecar};
use tokio::net::TcpListener;
use tokio::time::timeout;

const C_CLUSTER: &str = "10.96.0.30:80";

// ---------------------------------------------------------------- upstream

/// A test app: `/slow` waits `slow_ms`, `/flaky` answers 500 to every other request, `/grpc-fail`
/// is a gRPC call failing UNAVAILABLE in its trailers, `/grpc-ok` one succeeding; anything else
/// answers 200 `ok <path>`. Counts the requests it sees. HTTP/1.1 and HTTP/2.
#[derive(Default)]
struct Upstream {
    hits: AtomicU64,
    slow_ms: AtomicU64,
    flaky: AtomicU64,
}

type Body = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

impl Upstream {
    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let this = Arc::clone(&this);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let this = Arc::clone(&this);
                        async move { Ok::<_, Infallible>(this.answer(req.uri().path()).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    async fn answer(&self, path: &str) -> Response<Body> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(body))));
            *r.status_mut() = status;
            r
        };
        match path {
            "/slow" => {
                let ms = self.slow_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("slow {ms}"))
            }
            "/flaky" => {
                if self.flaky.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    text(StatusCode::INTERNAL_SERVER_ERROR, "failed".into())
                } else {
                    text(StatusCode::OK, "ok".into())
                }
            }
            "/grpc-fail" | "/grpc-ok" => {
                let code = if path == "/grpc-fail" { "14" } else { "0" };
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", code.parse().unwrap());
                let frames = vec![
                    Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                    Ok(Frame::trailers(trailers)),
                ];
                let mut r = Response::new(http_body_util::Either::Right(StreamBody::new(
                    futures::stream::iter(frames),
                )));
                r.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                r
            }
            other => text(StatusCode::OK, format!("ok {other}")),
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- resources

fn exact(path: &str) -> Option<proto::RouteMatch> {
    Some(proto::RouteMatch {
        paths: vec![proto::PathMatch {
            kind: Some(proto::path_match::Kind::Exact(path.into())),
        }],
        methods: vec![],
    })
}

fn prefix(path: &str) -> Option<proto::RouteMatch> {
    Some(proto::RouteMatch {
        paths: vec![proto::PathMatch {
            kind: Some(proto::path_match::Kind::Prefix(path.into())),
        }],
        methods: vec![],
    })
}

fn dur(ms: u64) -> Option<prost_types::Duration> {
    Some(Duration::from_millis(ms).try_into().unwrap())
}

fn inbound(
    rules: Vec<proto::RateLimitRule>,
    overload: Option<proto::OverloadProtection>,
) -> proto::InboundPolicy {
    proto::InboundPolicy {
        name: "demo/a".into(),
        namespace: "demo".into(),
        app: "a".into(),
        rules,
        overload,
    }
}

fn outbound(
    breakers: Vec<proto::CircuitBreakerRule>,
    timeout: Option<prost_types::Duration>,
) -> proto::OutboundPolicy {
    proto::OutboundPolicy {
        name: "demo/c".into(),
        namespace: "demo".into(),
        app: "c".into(),
        breakers,
        timeout,
        ..Default::default()
    }
}

/// A snapshot for pod `a`, with Service `c` whose one endpoint is `c_addr`.
fn snapshot(
    c_addr: Option<SocketAddr>,
    extra_service: bool,
    inbound: Option<proto::InboundPolicy>,
    outbound: Option<proto::OutboundPolicy>,
) -> Snapshot {
    let mut services: Vec<proto::Service> = c_addr
        .map(|addr| support::service("c", C_CLUSTER, &[(addr, "", true)]))
        .into_iter()
        .collect();
    if extra_service {
        let unrelated: SocketAddr = "127.0.1.250:9".parse().unwrap();
        services.push(support::service(
            "z",
            "10.96.0.99:80",
            &[(unrelated, "", true)],
        ));
    }
    Snapshot::from_resources(
        PodIdentity::app("demo", "a"),
        services,
        [],
        inbound,
        outbound,
    )
    .unwrap()
}

/// Pod `a` (number `n`) running `upstream` as its own app, with `inbound` rules.
async fn pod_with_inbound(n: u8, policy: proto::InboundPolicy) -> (Sidecar, Arc<Upstream>) {
    let (sidecar, app_listener) = Sidecar::start(n, "a", None).await;
    let upstream = Arc::new(Upstream::default());
    upstream.serve(app_listener);
    sidecar
        .install(snapshot(None, false, Some(policy), None))
        .await;
    (sidecar, upstream)
}

/// Pod `a` (number `n`) calling app `c` (served by the returned upstream without a sidecar).
async fn pod_calling_c(
    n: u8,
    policy: proto::OutboundPolicy,
) -> (Sidecar, Arc<Upstream>, SocketAddr) {
    let (sidecar, _app_listener) = Sidecar::start(n, "a", None).await;
    let listener = TcpListener::bind(format!("127.0.1.{}:0", n + 100))
        .await
        .unwrap();
    let c_addr = listener.local_addr().unwrap();
    let upstream = Arc::new(Upstream::default());
    upstream.serve(listener);
    sidecar
        .install(snapshot(Some(c_addr), false, None, Some(policy)))
        .await;
    (sidecar, upstream, c_addr)
}

fn metrics(sidecar: &Sidecar) -> String {
    sidecar.router.metrics().encode()
}

/// The value of the metric line starting with `series` (labels included); `None` when the
/// series is not exported.
fn metric_if_exported(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The value of `series`, which must be exported (a "0" assertion must not pass on a series
/// the proxy never exports).
fn metric(text: &str, series: &str) -> u64 {
    metric_if_exported(text, series).unwrap_or_else(|| panic!("{series} not exported:\n{text}"))
}

// ---------------------------------------------------------------- inbound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greet1a_is_limited_to_one_qps_with_its_custom_fallback_and_greet1b_is_not() {
    let rule = proto::RateLimitRule {
        name: "limits/greet1a".into(),
        r#match: exact("/greet1a"),
        qps: Some(proto::QpsLimit {
            threshold: 1.0,
            ..Default::default()
        }),
        fallback: Some(proto::Fallback {
            status: 429,
            content_type: "text/plain".into(),
            body: "too many requests".into(),
            headers: [("retry-after".to_owned(), "1".to_owned())].into(),
            redirect: String::new(),
        }),
        ..Default::default()
    };
    let (pod, upstream) = pod_with_inbound(41, inbound(vec![rule], None)).await;

    // The rule's series is exported before its first rejection.
    let text = metrics(&pod);
    let rejected = r#"lanemesh_rejections_total{reason="flow",rule="limits/greet1a"}"#;
    assert_eq!(metric(&text, rejected), 0);
    let (status, _, body) = pod.inbound_get("/greet1a", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok /greet1a"));
    for _ in 0..3 {
        let (status, headers, body) = pod.inbound_get("/greet1a", &[]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body, "too many requests");
        assert_eq!(headers["x-lanemesh-blocked"], "flow");
        assert_eq!(headers["retry-after"], "1");
    }
    for _ in 0..5 {
        let (status, _, body) = pod.inbound_get("/greet1b", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok /greet1b"));
    }
    assert_eq!(upstream.hits(), 6, "rejected requests never reach the app");
    let text = metrics(&pod);
    assert_eq!(
        metric(
            &text,
            r#"lanemesh_rejections_total{reason="flow",rule="limits/greet1a"}"#
        ),
        3,
        "{text}"
    );
    // A request is counted when the proxy drops its state, which can be just after the client
    // has read the last byte.
    let requests = |status: &str| {
        format!(
            r#"lanemesh_requests_total{{direction="inbound",app="a",lane="",status="{status}"}}"#
        )
    };
    let counted = timeout(STEP, async {
        loop {
            let text = metrics(&pod);
            let counts = (
                metric_if_exported(&text, &requests("2xx")),
                metric_if_exported(&text, &requests("4xx")),
            );
            if counts == (Some(6), Some(3)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{}", metrics(&pod));
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_user_id_is_limited_while_other_ids_pass() {
    let rule = proto::RateLimitRule {
        name: "limits/users".into(),
        r#match: prefix("/"),
        hot_params: vec![proto::HotParam {
            source: proto::Source::Header as i32,
            name: "x-user-id".into(),
            threshold: 2.0,
            window: dur(60_000),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (pod, _upstream) = pod_with_inbound(42, inbound(vec![rule], None)).await;
    let mut hot = Vec::new();
    for _ in 0..5 {
        let (status, headers, _) = pod.inbound_get("/orders", &[("x-user-id", "hot")]).await;
        hot.push((status, headers.get("x-lanemesh-blocked").cloned()));
    }
    assert_eq!(hot.iter().filter(|(s, _)| *s == StatusCode::OK).count(), 2);
    assert!(
        hot[2..]
            .iter()
            .all(|(s, h)| *s == StatusCode::TOO_MANY_REQUESTS && h.as_ref().unwrap() == "hot_param"),
        "{hot:?}"
    );
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let (status, _, _) = pod.inbound_get("/orders", &[("x-user-id", user)]).await;
        assert_eq!(status, StatusCode::OK, "user {user}");
    }
    let (status, _, _) = pod.inbound_get("/orders", &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a request without the parameter is not limited"
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_of_5_admits_exactly_5_of_20_parallel_slow_requests() {
    let rule = proto::RateLimitRule {
        name: "limits/slow".into(),
        r#match: exact("/slow"),
        concurrency: Some(proto::ConcurrencyLimit { max: 5 }),
        ..Default::default()
    };
    let (pod, upstream) = pod_with_inbound(43, inbound(vec![rule], None)).await;
    upstream.slow_ms.store(800, Ordering::SeqCst);
    let pod = Arc::new(pod);
    let results = join_all((0..20).map(|_| {
        let pod = Arc::clone(&pod);
        async move { pod.inbound_get("/slow", &[]).await }
    }))
    .await;
    let ok = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .count();
    let limited: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok, 5);
    assert_eq!(limited.len(), 15);
    assert!(
        limited
            .iter()
            .all(|(_, h, _)| h["x-lanemesh-blocked"] == "concurrency")
    );
    // The slots come back when the responses are done.
    upstream.slow_ms.store(0, Ordering::SeqCst);
    let (status, _, _) = pod.inbound_get("/slow", &[]).await;
    assert_eq!(status, StatusCode::OK);
    Arc::into_inner(pod).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_protection_in_dry_run_rejects_nothing_and_counts_what_it_would_have() {
    let overload = proto::OverloadProtection {
        mode: proto::OverloadMode::DryRun as i32,
        cpu_threshold: 0.5,
        name: "demo/protect".into(),
        ..Default::default()
    };
    let (pod, upstream) = pod_with_inbound(44, inbound(vec![], Some(overload))).await;
    // The CPU sampler is not running in this test: pretend the container is saturated.
    pod.router.cpu().set(0.99);
    // Build BBR's estimate from fast requests, then send a burst of slow ones: far more in
    // flight than maxCompletedQps * minRt.
    for _ in 0..30 {
        assert_eq!(pod.inbound_get("/fast", &[]).await.0, StatusCode::OK);
    }
    // BBR reads completed buckets only (100 ms each): let the last one complete.
    tokio::time::sleep(Duration::from_millis(150)).await;
    upstream.slow_ms.store(300, Ordering::SeqCst);
    let pod = Arc::new(pod);
    let results = join_all((0..12).map(|_| {
        let pod = Arc::clone(&pod);
        async move { pod.inbound_get("/slow", &[]).await.0 }
    }))
    .await;
    assert!(results.iter().all(|s| *s == StatusCode::OK), "{results:?}");
    let text = metrics(&pod);
    let would = metric(
        &text,
        r#"lanemesh_dry_run_rejections_total{reason="system",rule="demo/protect"}"#,
    );
    assert!(would > 0, "dry run counted nothing: {text}");
    // A dry-run rule counts only would-be rejections: its enforcing series does not exist (a
    // rejection would have created it).
    assert_eq!(
        metric_if_exported(
            &text,
            r#"lanemesh_rejections_total{reason="system",rule="demo/protect"}"#
        ),
        None,
        "{text}"
    );
    Arc::into_inner(pod).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_state_survives_unrelated_changes_and_resets_when_its_rule_changes() {
    let rule = |threshold: f64| proto::RateLimitRule {
        name: "limits/x".into(),
        r#match: exact("/x"),
        qps: Some(proto::QpsLimit {
            threshold,
            ..Default::default()
        }),
        concurrency: Some(proto::ConcurrencyLimit { max: 10 }),
        ..Default::default()
    };
    let (pod, upstream) = pod_with_inbound(45, inbound(vec![rule(1.0)], None)).await;
    upstream.slow_ms.store(600, Ordering::SeqCst);
    assert_eq!(pod.inbound_get("/x", &[]).await.0, StatusCode::OK);
    assert_eq!(
        pod.inbound_get("/x", &[]).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // An in-flight request survives a swap.
    let pod = Arc::new(pod);
    let in_flight = tokio::spawn({
        let pod = Arc::clone(&pod);
        async move { pod.inbound_get("/slow", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Unrelated change (another service appears): the window is kept.
    pod.install(snapshot(
        None,
        true,
        Some(inbound(vec![rule(1.0)], None)),
        None,
    ))
    .await;
    assert_eq!(
        pod.inbound_get("/x", &[]).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The rule itself changes: fresh state under the new threshold.
    pod.install(snapshot(
        None,
        true,
        Some(inbound(vec![rule(2.0)], None)),
        None,
    ))
    .await;
    assert_eq!(pod.inbound_get("/x", &[]).await.0, StatusCode::OK);
    assert_eq!(pod.inbound_get("/x", &[]).await.0, StatusCode::OK);
    assert_eq!(
        pod.inbound_get("/x", &[]).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (status, _, body) = timeout(STEP, in_flight).await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow 600"));
    Arc::into_inner(pod).unwrap().stop().await;
}

// ---------------------------------------------------------------- outbound

fn breaker(
    name: &str,
    strategy: proto::BreakerStrategy,
    threshold: f64,
    min_requests: u32,
) -> proto::CircuitBreakerRule {
    proto::CircuitBreakerRule {
        name: name.into(),
        r#match: prefix("/"),
        strategy: strategy as i32,
        threshold,
        slow_request_duration: dur(100),
        window: dur(30_000),
        min_requests,
        open_duration: dur(500),
        half_open_probes: 1,
        fallback: Some(proto::Fallback {
            status: 503,
            body: "degraded".into(),
            ..Default::default()
        }),
        errors: None,
        dry_run: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_trips_the_slow_ratio_breaker_which_recovers_through_half_open() {
    let rule = breaker("cb/slow", proto::BreakerStrategy::SlowRequestRatio, 0.5, 4);
    let (pod, upstream, _) = pod_calling_c(46, outbound(vec![rule], None)).await;
    let client = pod.client();
    upstream.slow_ms.store(200, Ordering::SeqCst);
    for _ in 0..4 {
        let (status, _, _) = client.get_path(C_CLUSTER, "/slow", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let hits = upstream.hits();
    // Open: callers get the fallback, the upstream sees nothing.
    for _ in 0..3 {
        let (status, headers, body) = client.get_path(C_CLUSTER, "/slow", &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "degraded")
        );
        assert_eq!(headers["x-lanemesh-blocked"], "circuit_breaking");
    }
    assert_eq!(upstream.hits(), hits);
    // After openDuration one probe goes through; it is fast, so the breaker closes.
    upstream.slow_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _, _) = client.get_path(C_CLUSTER, "/slow", &[]).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..3 {
        let (status, _, _) = client.get_path(C_CLUSTER, "/slow", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = metrics(&pod);
    let series = |to: &str| {
        format!(r#"lanemesh_breaker_transitions_total{{app="c",rule="cb/slow",to="{to}"}}"#)
    };
    assert_eq!(metric(&text, &series("open")), 1, "{text}");
    assert_eq!(metric(&text, &series("half_open")), 1, "{text}");
    assert_eq!(metric(&text, &series("closed")), 1, "{text}");
    assert_eq!(
        metric(&text, r#"lanemesh_breaker_state{app="c",rule="cb/slow"}"#),
        0
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failing_half_its_requests_trips_the_error_ratio_breaker() {
    let rule = breaker("cb/errors", proto::BreakerStrategy::ErrorRatio, 0.5, 10);
    let (pod, upstream, _) = pod_calling_c(47, outbound(vec![rule], None)).await;
    let client = pod.client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(client.get_path(C_CLUSTER, "/flaky", &[]).await.0);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
            .count(),
        5
    );
    let hits = upstream.hits();
    let (status, headers, body) = client.get_path(C_CLUSTER, "/flaky", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    );
    assert_eq!(headers["x-lanemesh-blocked"], "circuit_breaking");
    assert_eq!(upstream.hits(), hits);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_circuit_breaker_policy_counts_but_every_request_reaches_the_upstream() {
    // From the CRD as users write it, through the control plane's conversion, to the sidecar.
    let yaml = r#"
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: c-breakers, namespace: demo}
spec:
  app: c
  dryRun: true
  rules:
  - {name: errors, strategy: ErrorRatio, threshold: 0.5, minRequests: 10, openDuration: 10s,
     fallback: {status: 503, body: degraded}}
"#;
    let manifest = lanemesh_api::manifest::Manifest::from_yaml(yaml).unwrap();
    let converted = lanemesh_api::convert::manifest(&manifest, &|_, _| 1);
    let policy = converted.outbound.resources.into_iter().next().unwrap();
    assert!(policy.breakers[0].dry_run);
    let (pod, upstream, _) = pod_calling_c(51, policy).await;
    let client = pod.client();
    for _ in 0..10 {
        client.get_path(C_CLUSTER, "/flaky", &[]).await;
    }
    let hits = upstream.hits();
    for _ in 0..5 {
        let (status, headers, _) = client.get_path(C_CLUSTER, "/flaky", &[]).await;
        assert_ne!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "rejected in dry run"
        );
        assert!(headers.get("x-lanemesh-blocked").is_none());
    }
    assert_eq!(upstream.hits(), hits + 5, "every request reached c");
    let text = metrics(&pod);
    assert_eq!(
        metric(
            &text,
            r#"lanemesh_breaker_state{app="c",rule="c-breakers/errors"}"#
        ),
        2,
        "the breaker opened, as enforcing would have"
    );
    assert_eq!(
        metric(
            &text,
            r#"lanemesh_dry_run_rejections_total{reason="circuit_breaking",rule="c-breakers/errors"}"#
        ),
        5
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_in_trailers_trip_the_breaker_and_grpc_callers_get_unavailable() {
    let rule = breaker("cb/grpc", proto::BreakerStrategy::ErrorCount, 2.0, 1);
    let (pod, upstream, c_addr) = pod_calling_c(48, outbound(vec![rule], None)).await;
    let _ = c_addr;
    let call = |path: &'static str| {
        let client = pod.client();
        async move { grpc_call(&client, path).await }
    };
    for _ in 0..3 {
        let (status, grpc, _) = call("/grpc-ok").await;
        assert_eq!((status, grpc.as_deref()), (StatusCode::OK, Some("0")));
    }
    for _ in 0..2 {
        let (_, grpc, _) = call("/grpc-fail").await;
        assert_eq!(
            grpc.as_deref(),
            Some("14"),
            "the upstream's own status passes through"
        );
    }
    let hits = upstream.hits();
    let (status, grpc, headers) = call("/grpc-ok").await;
    assert_eq!(status, StatusCode::OK, "gRPC errors travel in a 200");
    assert_eq!(
        grpc.as_deref(),
        Some("14"),
        "UNAVAILABLE for an open breaker"
    );
    assert_eq!(headers["x-lanemesh-blocked"], "circuit_breaking");
    assert_eq!(headers["grpc-message"], "degraded");
    assert_eq!(upstream.hits(), hits);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_over_the_limit_get_resource_exhausted() {
    let rule = proto::RateLimitRule {
        name: "limits/grpc".into(),
        r#match: prefix("/"),
        qps: Some(proto::QpsLimit {
            threshold: 1.0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (pod, _upstream) = pod_with_inbound(49, inbound(vec![rule], None)).await;
    let stream = tokio::net::TcpStream::connect(pod.pod).await.unwrap();
    let (status, grpc, _) = grpc_on(stream, "/grpc-ok").await;
    assert_eq!((status, grpc.as_deref()), (StatusCode::OK, Some("0")));
    let stream = tokio::net::TcpStream::connect(pod.pod).await.unwrap();
    let (status, grpc, headers) = grpc_on(stream, "/grpc-ok").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(grpc.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    assert_eq!(headers["x-lanemesh-blocked"], "flow");
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_policy_timeout_gets_504() {
    let (pod, upstream, _) = pod_calling_c(50, outbound(vec![], dur(150))).await;
    upstream.slow_ms.store(1_000, Ordering::SeqCst);
    let client = pod.client();
    let (status, headers, _) = client.get_path(C_CLUSTER, "/slow", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-lanemesh-error"], "upstream_timeout");
    upstream.slow_ms.store(0, Ordering::SeqCst);
    assert_eq!(
        client.get_path(C_CLUSTER, "/slow", &[]).await.0,
        StatusCode::OK
    );
    pod.stop().await;
}

/// One gRPC-shaped HTTP/2 call through the pod's outbound listener to `c`.
async fn grpc_call(
    client: &support::pod::AppClient,
    path: &str,
) -> (StatusCode, Option<String>, HeaderMap) {
    grpc_on(client.connect(C_CLUSTER).await, path).await
}

/// Sends a gRPC-shaped request on `stream`; the HTTP status, the `grpc-status` from headers or
/// trailers, and the response headers.
async fn grpc_on(
    stream: tokio::net::TcpStream,
    path: &str,
) -> (StatusCode, Option<String>, HeaderMap) {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://c.demo{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = timeout(STEP, body.collect()).await.unwrap().unwrap();
    let from_trailers = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    let grpc = parts
        .headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .or(from_trailers);
    (parts.status, grpc, parts.headers)
}
