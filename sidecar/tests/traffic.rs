#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TrafficPolicy end to end on loopback: each policy is written as users write the CRD,
//! converted by the control plane's own conversion and installed in a pod's sidecar. Retries
//! (flaky, dead and refusing upstreams, POST, per-try timeouts, gRPC over HTTP/2), the retry
//! budget, request timeouts, the seed's resilience example, and the warm-up of new endpoints.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanemesh_api::proto;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::snapshot::Snapshot;
use support::pod::{AppClient, STEP, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

const C_CLUSTER: &str = "10.96.0.31:80";

// ---------------------------------------------------------------- upstream

/// A test app for app `c`. Per path, counting every request it sees:
/// - `/flaky`: 503 for 3 of every 10 requests (the 1st, 4th and 7th of each ten), else 200;
/// - `/down`: always 503;
/// - `/slow-first`: every other request takes 2 s, the others answer at once;
/// - `/slow`: 2 s; `/pause/<ms>`: that many milliseconds;
/// - `/grpc-flaky`: a trailers-only gRPC UNAVAILABLE every other call, else OK;
/// - anything else: 200.
///
/// The body is `<method> <path> <request body>`, so a retried request shows what it carried.
#[derive(Default)]
struct Upstream {
    hits: Mutex<HashMap<String, u64>>,
    all: AtomicU64,
}

impl Upstream {
    async fn start(ip: &str) -> (Arc<Self>, SocketAddr) {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = Arc::new(Self::default());
        let served = Arc::clone(&this);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let this = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let this = Arc::clone(&this);
                        async move { Ok::<_, Infallible>(this.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (this, addr)
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let n = {
            let mut hits = self.hits.lock().unwrap();
            let n = hits.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        self.all.fetch_add(1, Ordering::SeqCst);
        let text = format!("{} {path} {}", parts.method, String::from_utf8_lossy(&body));
        let reply = |status: StatusCode| {
            let mut r = Response::new(Full::new(Bytes::from(text.clone())));
            *r.status_mut() = status;
            r
        };
        match path.as_str() {
            "/flaky" if matches!(n % 10, 1 | 4 | 7) => reply(StatusCode::SERVICE_UNAVAILABLE),
            "/down" => reply(StatusCode::SERVICE_UNAVAILABLE),
            "/slow-first" if n % 2 == 1 => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                reply(StatusCode::OK)
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                reply(StatusCode::OK)
            }
            p if p.starts_with("/pause/") => {
                let ms = p["/pause/".len()..].parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply(StatusCode::OK)
            }
            "/grpc-flaky" => {
                let mut r = Response::new(Full::new(Bytes::new()));
                let code = if n % 2 == 1 { "14" } else { "0" };
                r.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                r.headers_mut().insert("grpc-status", code.parse().unwrap());
                r.headers_mut()
                    .insert("x-request-bytes", body.len().to_string().parse().unwrap());
                r
            }
            _ => reply(StatusCode::OK),
        }
    }

    fn hits(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn all(&self) -> u64 {
        self.all.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- fixtures

/// The OutboundPolicy towards `c` that `yaml` (TrafficPolicies, CircuitBreakerPolicies for app
/// `c` in namespace `demo`) converts to, by the control plane's conversion.
fn policy(yaml: &str) -> proto::OutboundPolicy {
    let manifest = lanemesh_api::manifest::Manifest::from_yaml(yaml).unwrap();
    let converted = lanemesh_api::convert::manifest(&manifest, &|_, _| 1);
    assert!(
        converted.outbound.rejected.is_empty(),
        "{:?}",
        converted.outbound.rejected
    );
    converted.outbound.resources.into_iter().next().unwrap()
}

fn traffic(spec: &str) -> proto::OutboundPolicy {
    policy(&format!(
        "apiVersion: lanemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: c-traffic, namespace: demo}}\nspec: {spec}\n"
    ))
}

/// Pod `a` (number `n`) calling app `c`, whose endpoints are `endpoints` (address, ready since).
async fn pod_calling_c(
    n: u8,
    endpoints: &[(SocketAddr, Option<SystemTime>)],
    policy: proto::OutboundPolicy,
) -> Sidecar {
    let (sidecar, _app_listener) = Sidecar::start(n, "a", None).await;
    let plain: Vec<(SocketAddr, &str, bool)> =
        endpoints.iter().map(|(a, _)| (*a, "", true)).collect();
    let mut service = support::service("c", C_CLUSTER, &plain);
    for (endpoint, (_, since)) in service.endpoints.iter_mut().zip(endpoints) {
        endpoint.ready_since = since.map(prost_types::Timestamp::from);
    }
    let snapshot = Snapshot::from_resources(
        PodIdentity::app("demo", "a"),
        [service],
        [],
        None,
        Some(policy),
    )
    .unwrap();
    sidecar.install(snapshot).await;
    sidecar
}

/// `method path` with `body` to `c` through the pod's outbound listener, over HTTP/1.1.
async fn call(
    client: &AppClient,
    method: Method,
    path: &str,
    body: &'static str,
) -> (StatusCode, HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "c.demo")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    support::pod::exchange(client.connect(C_CLUSTER).await, req).await
}

async fn get(client: &AppClient, path: &str) -> StatusCode {
    call(client, Method::GET, path, "").await.0
}

fn metric(sidecar: &Sidecar, series: &str) -> u64 {
    let text = sidecar.router.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("{series} not exported:\n{text}"))
}

fn retries(sidecar: &Sidecar, result: &str) -> u64 {
    metric(
        sidecar,
        &format!(r#"lanemesh_retries_total{{app="c",result="{result}"}}"#),
    )
}

// ---------------------------------------------------------------- retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_503s_become_successes_with_retries() {
    let (upstream, addr) = Upstream::start("127.0.3.61").await;
    let pod = pod_calling_c(
        61,
        &[(addr, None)],
        traffic("{app: c, retries: {attempts: 2}}"),
    )
    .await;
    let client = pod.client();
    let mut ok = 0;
    for _ in 0..100 {
        ok += usize::from(get(&client, "/flaky").await == StatusCode::OK);
    }
    assert_eq!(ok, 100, "every request succeeded");
    let hits = upstream.hits("/flaky");
    // 3 failures in every 10 attempts, each followed by a success: 100 requests take about
    // 100 / 0.7 attempts.
    assert!(
        (135..=150).contains(&hits),
        "about 43 retries for 100 requests, got {hits} attempts"
    );
    assert_eq!(retries(&pod, "retried"), hits - 100);
    assert_eq!(
        metric(&pod, r#"lanemesh_retry_policy_attempts_total{app="c"}"#),
        hits
    );
    // Without the policy, the same upstream fails 3 in 10.
    let plain = pod_calling_c(62, &[(addr, None)], traffic("{app: c, timeout: 5s}")).await;
    let client = plain.client();
    let mut failed = 0;
    for _ in 0..20 {
        failed += usize::from(get(&client, "/flaky").await == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        (4..=8).contains(&failed),
        "{failed} of 20 failed without retries"
    );
    pod.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_sees_at_most_the_budget_in_retries() {
    let (upstream, addr) = Upstream::start("127.0.3.63").await;
    // 3 retries per request would be 300; the budget allows 10 % of 100 requests plus
    // 1 per second over 10 s.
    let spec = "{app: c, retries: {attempts: 3, backoff: {baseInterval: 1ms}}, retryBudget: {ratio: 0.1, minRetriesPerSecond: 1, ttl: 10s}}";
    let pod = pod_calling_c(63, &[(addr, None)], traffic(spec)).await;
    let client = pod.client();
    for _ in 0..100 {
        assert_eq!(get(&client, "/down").await, StatusCode::SERVICE_UNAVAILABLE);
    }
    let hits = upstream.hits("/down");
    let retried = hits - 100;
    assert!(retried <= 20, "{retried} retries exceed the budget of 20");
    assert!(retried >= 10, "the reserve alone allows 10, got {retried}");
    assert_eq!(retries(&pod, "retried"), retried);
    assert!(retries(&pod, "budget_exhausted") >= 80);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_the_route_says_so_and_carries_its_body_again() {
    let (upstream, addr) = Upstream::start("127.0.3.64").await;
    let spec = r#"{app: c, retries: {attempts: 2},
      rules: [{name: orders, match: {paths: [{prefix: /orders}]}, retries: {attempts: 2, retryNonIdempotent: true}}]}"#;
    let pod = pod_calling_c(64, &[(addr, None)], traffic(spec)).await;
    let client = pod.client();
    let mut failed = 0;
    for _ in 0..10 {
        failed += usize::from(
            call(&client, Method::POST, "/flaky", "payment").await.0
                == StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    assert_eq!(failed, 3, "POST is not retried by default");
    assert_eq!(upstream.hits("/flaky"), 10);
    // /orders/flaky is not a special path of the upstream: make it fail by sending to /flaky's
    // counter through a route that allows POST retries instead.
    let spec = r#"{app: c, rules: [{name: flaky, match: {paths: [{exact: /flaky}]}, retries: {attempts: 2, retryNonIdempotent: true}}]}"#;
    let retrying = pod_calling_c(65, &[(addr, None)], traffic(spec)).await;
    let client = retrying.client();
    for _ in 0..10 {
        let (status, _, body) = call(&client, Method::POST, "/flaky", "order-42").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body, "POST /flaky order-42",
            "the retry carried the body again"
        );
    }
    assert!(upstream.hits("/flaky") > 20, "some POSTs were retried");
    pod.stop().await;
    retrying.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_100_continue_is_not_held_by_the_retry_policy() {
    let (upstream, addr) = Upstream::start("127.0.3.65").await;
    // PUT is idempotent: retried by default, so the proxy would like its body in hand.
    let pod = pod_calling_c(
        67,
        &[(addr, None)],
        traffic("{app: c, retries: {attempts: 2}}"),
    )
    .await;
    let mut stream = pod.client().connect(C_CLUSTER).await;
    stream
        .write_all(b"PUT /doc HTTP/1.1\r\nHost: c.demo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    // The upstream's 100 comes through before the body is sent.
    let mut interim = vec![0u8; 25];
    timeout(STEP, stream.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(b"hello").await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("PUT /doc hello") {
        let n = timeout(STEP, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).contains("200 OK"));
    assert_eq!(upstream.hits("/doc"), 1);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let (upstream, live) = Upstream::start("127.0.3.66").await;
    let refusing = {
        let l = std::net::TcpListener::bind("127.0.3.67:0").unwrap();
        l.local_addr().unwrap()
    };
    let pod = pod_calling_c(
        66,
        &[(live, None), (refusing, None)],
        traffic("{app: c, retries: {attempts: 2, backoff: {baseInterval: 1ms}}}"),
    )
    .await;
    let client = pod.client();
    // The live endpoint answers in 50 ms, slower than the 30 ms the balancer assumes of an
    // endpoint it has not measured: the refusing one is picked within the first requests.
    for _ in 0..10 {
        assert_eq!(get(&client, "/pause/50").await, StatusCode::OK);
    }
    assert_eq!(upstream.hits("/pause/50"), 10);
    assert!(
        retries(&pod, "retried") >= 1,
        "the refusing endpoint was tried"
    );
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_attempt_is_retried_after_its_per_try_timeout_and_the_request_timeout_bounds_all() {
    let (upstream, addr) = Upstream::start("127.0.3.68").await;
    let spec = "{app: c, timeout: 700ms, retries: {attempts: 3, perTryTimeout: 200ms, retryOn: [per-try-timeout], backoff: {baseInterval: 1ms}}}";
    let pod = pod_calling_c(68, &[(addr, None)], traffic(spec)).await;
    let client = pod.client();
    let started = Instant::now();
    assert_eq!(get(&client, "/slow-first").await, StatusCode::OK);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(650),
        "answered by the second attempt, took {took:?}"
    );
    assert_eq!(upstream.hits("/slow-first"), 2);
    // Always slow: attempts of 200 ms until the 700 ms request timeout, then 504.
    let started = Instant::now();
    let (status, headers, _) = call(&client, Method::GET, "/slow", "").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-lanemesh-error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_millis(1_500),
        "the request timeout bounds every attempt, took {took:?}"
    );
    assert!((3..=4).contains(&upstream.hits("/slow")));
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_over_http2_with_its_message() {
    let (upstream, addr) = Upstream::start("127.0.3.69").await;
    let pod = pod_calling_c(
        69,
        &[(addr, None)],
        traffic("{app: c, retries: {attempts: 1}}"),
    )
    .await;
    let client = pod.client();
    let stream = client.connect(C_CLUSTER).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A unary call's message: 5-byte gRPC frame header and 3 bytes.
    let message = Bytes::from_static(&[0, 0, 0, 0, 3, b'a', b'b', b'c']);
    for _ in 0..6 {
        let req = Request::post("http://c.demo/grpc-flaky")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
            .unwrap();
        let resp = timeout(STEP, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            resp.headers()["grpc-status"],
            "0",
            "UNAVAILABLE was retried"
        );
        assert_eq!(
            resp.headers()["x-request-bytes"],
            "8",
            "the retry carried the message again"
        );
    }
    assert_eq!(upstream.hits("/grpc-flaky"), 12);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_resilience_example_times_out_retries_once_and_breaks_at_half_errors() {
    // examples/resilience.yaml as users apply it, moved to this test's app.
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/resilience.yaml"
    ))
    .unwrap()
    .replace("spring-cloud-b", "c")
    .replace("canary-demo", "demo");
    let policy = policy(&yaml);
    let (upstream, addr) = Upstream::start("127.0.3.70").await;
    let pod = pod_calling_c(70, &[(addr, None)], policy).await;
    let client = pod.client();
    // timeout=1s: a 2 s answer is cut at 1 s (each attempt at its 500 ms per-try timeout).
    let started = Instant::now();
    assert_eq!(get(&client, "/slow").await, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_millis(1_500));
    // maxRetries=1: a failing request is tried twice.
    let before = upstream.all();
    assert_eq!(get(&client, "/down").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.all() - before, 2);
    // 50 % errors over at least 10 requests open the breaker: callers get its 503 and c
    // sees nothing more.
    let mut blocked = None;
    for i in 0..20 {
        let (status, headers, _) = call(&client, Method::GET, "/down", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        if headers.get("x-lanemesh-blocked").is_some() {
            blocked = Some(i);
            break;
        }
    }
    assert!(blocked.is_some(), "the breaker opened");
    let before = upstream.all();
    let (_, headers, _) = call(&client, Method::GET, "/", "").await;
    assert_eq!(headers["x-lanemesh-blocked"], "circuit_breaking");
    assert_eq!(upstream.all(), before, "an open breaker sends nothing");
    pod.stop().await;
}

// ---------------------------------------------------------------- warm-up

/// The share of `n` requests (10 at a time, each answered in 20 ms) the endpoint at index 4
/// gets. Concurrency spreads a cold balancer over every endpoint (outstanding requests raise an
/// endpoint's cost), so a share measures weights rather than which endpoint was measured first.
async fn new_endpoint_share(client: &AppClient, upstreams: &[Arc<Upstream>], n: u64) -> f64 {
    let before = upstreams[4].all();
    let workers = (0..10).map(|_| {
        let client = client.clone();
        async move {
            for _ in 0..n / 10 {
                assert_eq!(get(&client, "/pause/20").await, StatusCode::OK);
            }
        }
    });
    futures::future::join_all(workers).await;
    (upstreams[4].all() - before) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_warms_up_and_an_old_one_does_not_warm_again() {
    let mut upstreams = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..5 {
        let (u, a) = Upstream::start(&format!("127.0.3.{}", 71 + i)).await;
        upstreams.push(u);
        addrs.push(a);
    }
    let spec = "{app: c, warmup: {duration: 60s, minWeightPercent: 10}}";
    // Four endpoints ready for an hour, and the fifth ready since `age` ago.
    let with_new = |age: Duration| -> Vec<(SocketAddr, Option<SystemTime>)> {
        let long_ago = SystemTime::now() - Duration::from_secs(3_600);
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    *a,
                    Some(if i == 4 {
                        SystemTime::now() - age
                    } else {
                        long_ago
                    }),
                )
            })
            .collect()
    };
    // Just ready: it weighs 10 % of a warm endpoint, 0.1 / 4.1 = 2.4 % of the requests.
    let pod = pod_calling_c(71, &with_new(Duration::ZERO), traffic(spec)).await;
    let just_ready = new_endpoint_share(&pod.client(), &upstreams, 200).await;
    // Half-way (30 s of 60 s, linear): 0.5 / 4.5 = 11 %.
    let half = pod_calling_c(72, &with_new(Duration::from_secs(30)), traffic(spec)).await;
    let half_way = new_endpoint_share(&half.client(), &upstreams, 200).await;
    // Ready for longer than the warm-up, as a sidecar that restarts learns from the control
    // plane: a full share at once (a fifth, give or take the balancer's latency comparison).
    let warm = pod_calling_c(73, &with_new(Duration::from_secs(600)), traffic(spec)).await;
    let warmed = new_endpoint_share(&warm.client(), &upstreams, 200).await;
    // Binomial bounds of about 4 standard deviations over 200 requests.
    assert!(just_ready < 0.07, "share just ready: {just_ready:.3}");
    assert!(
        (0.04..=0.19).contains(&half_way),
        "share half-way: {half_way:.3}"
    );
    assert!(warmed > 0.12, "share once warm: {warmed:.3}");
    for pod in [pod, half, warm] {
        pod.stop().await;
    }
}
