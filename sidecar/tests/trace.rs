#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Request spans end to end: sidecars on loopback export to a real OTLP/gRPC receiver (the
//! collector's published service). A request through two sidecars arrives as one trace of
//! parent/child spans carrying app, lane, the deciding lane rule, endpoint and fallback; a
//! rejected request names the rule and reason that rejected it; a
//! receiver that hangs costs requests nothing (spans beyond the queue are dropped and counted).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lanemesh_api::proto;
use lanemesh_e2e::otlp::{OtlpReceiver, ReceivedSpan};
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::metrics::SpanResult;
use lanemesh_sidecar::snapshot::Snapshot;
use lanemesh_sidecar::trace::TraceSettings;
use support::pod::{AppClient, STEP, Sidecar};
use tokio::net::TcpListener;

const B_CLUSTER: &str = "10.96.0.72:80";
const C_CLUSTER: &str = "10.96.0.73:80";
/// The trace the calling app started: its trace id and its own span id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map_or_else(String::new, |v| v.to_str().unwrap().to_owned())
}

/// An app answering `traceparent=<what it received>`; with `next`, it first calls that
/// destination through its sidecar and appends the answer, forwarding `traceparent` when
/// `forward` (as OpenTelemetry-instrumented apps do) and nothing otherwise. `/slow` answers
/// after a second and calls nobody.
fn app(listener: TcpListener, next: Option<(AppClient, &'static str)>, forward: bool) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let next = next.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let next = next.clone();
                    async move {
                        let seen = header(req.headers(), "traceparent");
                        let mut body = format!("traceparent={seen}");
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        } else if let Some((client, dst)) = next {
                            let headers: &[(&str, &str)] = if forward {
                                &[("traceparent", seen.as_str())]
                            } else {
                                &[]
                            };
                            let (status, _, answer) = client.get(dst, headers).await;
                            body.push_str(&format!(" next=[{status}:{answer}]"));
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// App `c` without a sidecar on 127.0.1.n.
async fn bare_c(n: u8) -> SocketAddr {
    let listener = TcpListener::bind(format!("127.0.1.{n}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    app(listener, None, false);
    addr
}

/// Apps a, b, c; entry app a; lane gray (requests with `canary: gray`); trace ids from
/// `traceparent`.
fn lane_group() -> proto::LaneGroup {
    proto::LaneGroup {
        name: "demo/flow".into(),
        namespace: "demo".into(),
        apps: ["a", "b", "c"].map(String::from).to_vec(),
        entry_apps: vec!["a".into()],
        tag_header: "x-mse-tag".into(),
        propagation: Some(proto::Propagation {
            trace_headers: vec!["traceparent".into()],
            ..Default::default()
        }),
        lanes: vec![support::lane("gray", proto::Operator::Equal, "gray")],
        ..Default::default()
    }
}

fn snapshot(app: &str, services: Vec<proto::Service>) -> Snapshot {
    Snapshot::from_resources(
        PodIdentity::app("demo", app),
        services,
        [lane_group()],
        [],
        [],
    )
    .unwrap()
}

fn traced(endpoint: String) -> impl FnOnce(&mut lanemesh_sidecar::app::AppConfig) {
    move |config| config.tracing = Some(TraceSettings::always(endpoint))
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, kind: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} span of {service}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_sidecars_is_one_trace_of_parent_and_child_spans() {
    let receiver = OtlpReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (a, _) = Sidecar::start_with(71, "a", None, traced(receiver.endpoint())).await;
    let (b, b_app) = Sidecar::start_with(72, "b", None, traced(receiver.endpoint())).await;
    let c = bare_c(73).await;
    app(b_app, Some((b.client(), C_CLUSTER)), true);
    // C has no gray pod: gray requests fall back to its base pod.
    let services = vec![
        support::service("b", B_CLUSTER, &[(b.pod, "", true)]),
        support::service("c", C_CLUSTER, &[(c, "", true)]),
    ];
    a.install(snapshot("a", services.clone())).await;
    b.install(snapshot("b", services)).await;

    let root = format!("00-{TRACE_ID}-{APP_SPAN}-01");
    let (status, _, body) = a
        .client()
        .get(B_CLUSTER, &[("x-mse-tag", "gray"), ("traceparent", &root)])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let spans = receiver.wait_for(STEP, |spans| spans.len() >= 3).await;
    assert_eq!(
        spans.len(),
        3,
        "A outbound, B inbound, B outbound: {spans:#?}"
    );
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE_ID),
        "one trace: {spans:#?}"
    );
    let a_out = one(&spans, "a", "client");
    let b_in = one(&spans, "b", "server");
    let b_out = one(&spans, "b", "client");
    // Parent and child: app A's span -> A outbound -> B inbound -> B outbound -> app C.
    assert_eq!(a_out.parent_span_id, APP_SPAN);
    assert_eq!(b_in.parent_span_id, a_out.span_id);
    assert_eq!(b_out.parent_span_id, b_in.span_id);
    assert_eq!(
        body,
        format!(
            "traceparent=00-{TRACE_ID}-{}-01 next=[200 OK:traceparent=00-{TRACE_ID}-{}-01]",
            b_in.span_id, b_out.span_id
        ),
        "each app sees the span of the sidecar that delivered its request as parent"
    );

    assert_eq!(a_out.name, "outbound b");
    assert_eq!(a_out.attr("lanemesh.app"), "b");
    assert_eq!(a_out.attr("lanemesh.lane"), "gray");
    assert_eq!(a_out.attr("lanemesh.lane.rule"), "tag_header");
    assert_eq!(a_out.attr("network.peer.address"), b.pod.ip().to_string());
    assert_eq!(a_out.attr("network.peer.port"), b.pod.port().to_string());
    assert_eq!(a_out.attr("http.response.status_code"), "200");
    assert_eq!(a_out.attr("http.request.method"), "GET");
    assert_eq!(a_out.resource.get("k8s.pod.name").unwrap(), "a-71");

    assert_eq!(b_in.name, "inbound b");
    assert_eq!(b_in.attr("lanemesh.lane"), "gray");
    assert_eq!(b_in.attr("lanemesh.lane.rule"), "carried");

    // B's app forwarded only traceparent: the trace id linked the call to the gray request.
    assert_eq!(b_out.name, "outbound c");
    assert_eq!(b_out.attr("lanemesh.lane"), "gray");
    assert_eq!(b_out.attr("lanemesh.lane.rule"), "trace_id");
    assert_eq!(b_out.attr("lanemesh.lane.fallback"), "true");
    assert_eq!(b_out.attr("network.peer.address"), c.ip().to_string());
    assert!(spans.iter().all(|s| s.status == "unset"), "{spans:#?}");
    // Counted when the receiver's answer is back.
    let exported = |sidecar: &Sidecar| sidecar.router.metrics().span_count(SpanResult::Exported);
    tokio::time::timeout(STEP, async {
        while exported(&a) < 1 || exported(&b) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .ok();
    assert_eq!((exported(&a), exported(&b)), (1, 2));

    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_starts_at_the_sidecar_when_the_app_sends_none_and_failures_are_errors() {
    let receiver = OtlpReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (a, _) = Sidecar::start_with(74, "a", None, traced(receiver.endpoint())).await;
    // B's only endpoint refuses connections.
    let closed = TcpListener::bind("127.0.0.75:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let services = vec![support::service("b", B_CLUSTER, &[(dead, "", true)])];
    a.install(snapshot("a", services)).await;

    let (status, _, _) = a.client().get(B_CLUSTER, &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let spans = receiver.wait_for(STEP, |spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.parent_span_id, "", "a root span");
    assert_eq!(span.trace_id.len(), 32);
    assert_eq!(span.status, "error");
    assert_eq!(span.attr("error.type"), "connect_failure");
    assert_eq!(span.attr("lanemesh.lane"), "base");
    assert_eq!(span.attr("lanemesh.lane.rule"), "base");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_costs_requests_nothing_spans_beyond_the_queue_are_dropped() {
    // Accepts connections and never answers: every export waits for its timeout.
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hanging.local_addr().unwrap());
    let (exporting, export_started) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        let mut exporting = Some(exporting);
        while let Ok((stream, _)) = hanging.accept().await {
            open.push(stream);
            if let Some(tx) = exporting.take() {
                let _ = tx.send(());
            }
        }
    });
    let (a, a_app) = Sidecar::start_with(76, "a", None, move |config| {
        config.tracing = Some(TraceSettings {
            queue: 4,
            export_timeout: Duration::from_secs(30),
            ..TraceSettings::always(endpoint)
        });
    })
    .await;
    drop(a_app);
    let (b, b_app) = Sidecar::start(77, "b", None).await;
    app(b_app, None, false);
    let services = vec![support::service("b", B_CLUSTER, &[(b.pod, "", true)])];
    a.install(snapshot("a", services.clone())).await;
    b.install(snapshot("b", services)).await;

    // The first span starts an export that hangs; the next four wait in the queue.
    let (status, _, _) = a.client().get(B_CLUSTER, &[]).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::timeout(STEP, export_started)
        .await
        .expect("the exporter connects to the receiver")
        .unwrap();
    for _ in 0..50 {
        let (status, _, _) = a.client().get(B_CLUSTER, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let metrics = a.router.metrics();
    let dropped = tokio::time::timeout(STEP, async {
        loop {
            let dropped = metrics.span_count(SpanResult::Dropped);
            if dropped >= 46 {
                return dropped;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| metrics.span_count(SpanResult::Dropped));
    assert_eq!(dropped, 46, "50 spans, 4 queued");
    assert_eq!(metrics.span_count(SpanResult::Exported), 0);
    assert!(
        metrics
            .encode()
            .contains(r#"lanemesh_trace_spans_total{result="dropped"} 46"#)
    );
    a.stop().await;
    b.stop().await;
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_forwards_nothing_still_gets_one_trace_while_one_request_is_in_flight() {
    let receiver = OtlpReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (b, b_app) = Sidecar::start_with(78, "b", None, traced(receiver.endpoint())).await;
    let c = bare_c(79).await;
    app(b_app, Some((b.client(), C_CLUSTER)), false);
    let services = vec![
        support::service("b", B_CLUSTER, &[(b.pod, "", true)]),
        support::service("c", C_CLUSTER, &[(c, "", true)]),
    ];
    b.install(snapshot("b", services)).await;

    let root = format!("00-{TRACE_ID}-{APP_SPAN}-01");
    let (status, _, body) = b.inbound_get("/", &[("traceparent", &root)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let spans = receiver.wait_for(STEP, |spans| spans.len() >= 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let b_in = one(&spans, "b", "server");
    let b_out = one(&spans, "b", "client");
    assert_eq!(b_out.trace_id, TRACE_ID);
    assert_eq!(b_out.parent_span_id, b_in.span_id);
    assert_eq!(b_out.attr("lanemesh.trace.parent"), "inflight");
    assert_eq!(
        b_out.attr("lanemesh.lane.rule"),
        "base",
        "the lane group does not infer lanes from requests in flight: tracing does not either"
    );
    assert!(
        body.ends_with(&format!(
            "next=[200 OK:traceparent=00-{TRACE_ID}-{}-01]",
            b_out.span_id
        )),
        "C is called within the trace: {body}"
    );

    // Another request in flight (a slow one): nothing says which request the app's call
    // belongs to, so the call starts a trace of its own.
    let slow = tokio::spawn({
        let pod = b.pod;
        async move {
            let stream = tokio::net::TcpStream::connect(pod).await.unwrap();
            support::pod::send_to(stream, "b", "/slow", &[]).await.0
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body) = b.inbound_get("/", &[("traceparent", &root)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let spans = receiver.wait_for(STEP, |spans| spans.len() >= 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let call = spans[2..].iter().find(|s| s.kind == "client").unwrap();
    assert_ne!(call.trace_id, TRACE_ID, "{call:#?}");
    assert_eq!(call.parent_span_id, "");
    assert_eq!(call.attr("lanemesh.trace.parent"), "");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_governance_rejects_is_a_span_naming_the_rule_and_reason() {
    let receiver = OtlpReceiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (a, a_app) = Sidecar::start_with(80, "a", None, traced(receiver.endpoint())).await;
    app(a_app, None, false);
    let rule = proto::RateLimitRule {
        name: "limits/once".into(),
        r#match: Some(proto::RouteMatch {
            paths: vec![proto::PathMatch {
                kind: Some(proto::path_match::Kind::Exact("/limited".into())),
            }],
            methods: vec![],
        }),
        qps: Some(proto::QpsLimit {
            threshold: 1.0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let policy = proto::InboundPolicy {
        name: "demo/a".into(),
        namespace: "demo".into(),
        app: "a".into(),
        rules: vec![rule],
        overload: None,
    };
    a.install(
        Snapshot::from_resources(
            PodIdentity::app("demo", "a"),
            vec![],
            [lane_group()],
            Some(policy),
            None::<proto::OutboundPolicy>,
        )
        .unwrap(),
    )
    .await;
    let (first, _, _) = a.inbound_get("/limited", &[]).await;
    let (second, _, _) = a.inbound_get("/limited", &[]).await;
    assert_eq!(
        (first, second),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
    let spans = receiver.wait_for(STEP, |spans| spans.len() >= 2).await;
    let limited = spans
        .iter()
        .find(|s| s.attr("http.response.status_code") == "429")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(limited.kind, "server");
    assert_eq!(limited.attr("lanemesh.governance.blocked"), "flow");
    assert_eq!(limited.attr("lanemesh.governance.rule"), "limits/once");
    assert_eq!(limited.attr("lanemesh.local_response"), "true");
    let passed = spans
        .iter()
        .find(|s| s.attr("http.response.status_code") == "200")
        .unwrap();
    assert_eq!(passed.attr("lanemesh.governance.blocked"), "");
    a.stop().await;
}
