//! The admin, health and metrics listeners over real sockets on 127.0.0.1
//! (DESIGN §5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanemesh_api::proto;
use lanemesh_sidecar::admin::{self, AdminState};
use lanemesh_sidecar::discovery::DiscoveryState;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::metrics::{Direction, ProxyMetrics, RequestLabels, StatusClass};
use lanemesh_sidecar::snapshot::{ResourceKind, Snapshot, SnapshotBuilder, SnapshotStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const STEP: Duration = Duration::from_secs(5);

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection, read to the end.
async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    tokio::time::timeout(STEP, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.lines();
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
    .expect("no response in time")
}

/// Binds port 0 and serves with `serve`; returns the address, the shutdown
/// sender and the server task.
async fn start<F, Fut>(serve: F) -> (SocketAddr, watch::Sender<bool>, JoinHandle<()>)
where
    F: FnOnce(TcpListener, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, rx));
    (addr, tx, task)
}

async fn stops(task: JoinHandle<()>) {
    tokio::time::timeout(STEP, task)
        .await
        .expect("server did not stop in time")
        .unwrap();
}

fn local() -> PodIdentity {
    PodIdentity::app("demo", "orders")
}

fn service(name: &str, cluster_ip: &str, pod_ip: &str) -> proto::Service {
    let pod = SocketAddr::new(pod_ip.parse().unwrap(), 8080);
    support::service(name, &format!("{cluster_ip}:80"), &[(pod, "", true)])
}

fn lane_group(name: &str) -> proto::LaneGroup {
    proto::LaneGroup {
        name: format!("demo/{name}"),
        namespace: "demo".into(),
        apps: vec!["orders".into(), "stock".into()],
        entry_apps: vec!["orders".into()],
        tag_header: "x-mse-tag".into(),
        lanes: vec![support::lane("gray", proto::Operator::Equal, "yes")],
        ..Default::default()
    }
}

/// A drain trigger that never fires.
fn not_draining() -> watch::Receiver<bool> {
    watch::channel(false).1
}

#[tokio::test]
async fn readiness_fails_at_once_when_the_drain_starts() {
    let store = Arc::new(SnapshotStore::new(local()));
    let mut builder = SnapshotBuilder::new(local());
    builder.mark_all_received();
    store.store(builder.build());
    let (drain, draining) = watch::channel(false);
    let served = Arc::clone(&store);
    let (addr, shutdown, task) =
        start(move |listener, rx| admin::serve_health(listener, served, draining, rx)).await;
    assert_eq!(request(addr, "GET", "/healthz/ready").await.status, 200);
    drain.send_replace(true);
    let reply = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(
        (reply.status, reply.body.trim()),
        (503, "not ready: draining")
    );
    shutdown.send_replace(true);
    task.await.unwrap();
}

#[tokio::test]
async fn readiness_waits_for_every_resource_type() {
    let store = Arc::new(SnapshotStore::new(local()));
    let served = Arc::clone(&store);
    let (addr, shutdown, task) =
        start(move |listener, rx| admin::serve_health(listener, served, not_draining(), rx)).await;

    let reply = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(reply.status, 503);
    for kind in ["Service", "LaneGroup", "InboundPolicy", "OutboundPolicy"] {
        assert!(reply.body.contains(kind), "{kind} missing: {}", reply.body);
    }

    // Services alone: still not ready, and Service is no longer listed.
    let mut builder = SnapshotBuilder::new(local());
    builder
        .insert("1", service("stock", "10.96.0.10", "10.1.0.5"))
        .unwrap();
    builder.mark_received(ResourceKind::Service);
    store.store(builder.build());
    let reply = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(reply.status, 503);
    assert!(!reply.body.contains("Service,"), "{}", reply.body);
    assert!(reply.body.contains("OutboundPolicy"), "{}", reply.body);

    let complete = Snapshot::from_resources(
        local(),
        [service("stock", "10.96.0.10", "10.1.0.5")],
        [],
        [],
        [],
    )
    .unwrap();
    store.store(complete);
    let reply = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    shutdown.send(true).unwrap();
    stops(task).await;
}

#[tokio::test]
async fn metrics_expose_a_recorded_request_as_prometheus_text() {
    let metrics = Arc::new(ProxyMetrics::new());
    let labels = RequestLabels::new(
        Direction::Outbound,
        "stock",
        "gray",
        StatusClass::from_code(503),
    );
    metrics.record_request(&labels, Duration::from_millis(12));
    let served = Arc::clone(&metrics);
    let (addr, shutdown, task) =
        start(move |listener, rx| admin::serve_metrics(listener, served, rx)).await;

    let reply = request(addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200);
    let content_type = &reply.headers["content-type"];
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let text = &reply.body;

    // Every sample belongs to a family announced by a `# TYPE` line before it,
    // and has a numeric value; the exposition ends with `# EOF`.
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples: HashMap<String, f64> = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"));
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            types.insert(family.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let family = types
            .keys()
            .filter(|family| name.starts_with(family.as_str()))
            .max_by_key(|family| family.len())
            .unwrap_or_else(|| panic!("sample without # TYPE: {line}"));
        let suffix = &name[family.len()..];
        assert!(
            ["", "_total", "_bucket", "_sum", "_count", "_created"].contains(&suffix),
            "{line}"
        );
        samples.insert(series.to_owned(), value);
    }
    assert_eq!(types["lanemesh_requests"], "counter");
    assert_eq!(types["lanemesh_request_duration_seconds"], "histogram");
    assert_eq!(types["lanemesh_open_connections"], "gauge");
    assert_eq!(
        samples[r#"lanemesh_requests_total{direction="outbound",app="stock",lane="gray",status="5xx"}"#],
        1.0
    );
    // Buckets double from 0.5 ms: 12 ms lands above 8 ms, within 16 ms.
    let bucket = |le: &str| {
        samples[&format!(
            r#"lanemesh_request_duration_seconds_bucket{{le="{le}",direction="outbound",app="stock"}}"#
        )]
    };
    assert_eq!(bucket("0.008"), 0.0);
    assert_eq!(bucket("0.016"), 1.0);
    assert_eq!(
        samples[r#"lanemesh_request_duration_seconds_count{direction="outbound",app="stock"}"#],
        1.0
    );

    shutdown.send(true).unwrap();
    stops(task).await;
}

fn admin_state(store: Arc<SnapshotStore>) -> (AdminState, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    (AdminState::new(store, tx), rx)
}

#[tokio::test]
async fn config_dump_lists_names_versions_and_node() {
    // The flags name the pod; its app and lane come from the control plane's Workload.
    let claimed = PodIdentity {
        pod_name: "orders-0".into(),
        ip: "10.1.0.9".into(),
        ..PodIdentity::app("demo", "")
    };
    let store = Arc::new(SnapshotStore::new(claimed.clone()));
    let mut builder = SnapshotBuilder::new(claimed);
    builder
        .insert(
            "w1",
            proto::Workload {
                name: "demo/orders-0".into(),
                namespace: "demo".into(),
                pod_name: "orders-0".into(),
                app: "orders".into(),
                lane_tag: "gray".into(),
                terminating: false,
            },
        )
        .unwrap();
    builder
        .insert("v7", service("stock", "10.96.0.10", "10.1.0.5"))
        .unwrap();
    builder
        .insert("v3", service("billing", "10.96.0.11", "10.1.0.6"))
        .unwrap();
    builder.insert("g1", lane_group("shop")).unwrap();
    builder.mark_received(ResourceKind::Service);
    builder.mark_received(ResourceKind::LaneGroup);
    store.store(builder.build());
    let (state, _shutdown_rx) = admin_state(Arc::clone(&store));
    let discovery = Arc::new(DiscoveryState::default());
    let state = state.with_discovery(discovery);
    let (addr, shutdown, task) =
        start(move |listener, rx| admin::serve_admin(listener, state, rx)).await;

    let reply = request(addr, "GET", "/config_dump").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(!reply.body.contains("secret-token"));
    let dump: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(dump["ready"], false);
    assert_eq!(dump["generation"], 1);
    assert_eq!(dump["node"]["pod_name"], "orders-0");
    assert_eq!(dump["node"]["ip"], "10.1.0.9");
    assert_eq!(dump["node"]["app"], "orders");
    assert_eq!(dump["node"]["lane_tag"], "gray");
    assert_eq!(dump["node"]["claimed"]["app"], "");
    assert_eq!(dump["node"]["claimed"]["lane_tag"], "");
    assert_eq!(dump["discovery"]["connected"], false);
    assert_eq!(dump["discovery"]["acks"], 0);
    let services = &dump["resources"]["Service"];
    assert_eq!(services["received"], true);
    let listed: HashSet<(String, String)> = services["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        HashSet::from([
            ("demo/stock".to_owned(), "v7".to_owned()),
            ("demo/billing".to_owned(), "v3".to_owned()),
        ])
    );
    assert_eq!(
        dump["resources"]["LaneGroup"]["resources"][0]["name"],
        "demo/shop"
    );
    assert_eq!(dump["resources"]["InboundPolicy"]["received"], false);
    assert_eq!(
        dump["resources"]["OutboundPolicy"]["resources"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    shutdown.send(true).unwrap();
    stops(task).await;
}

#[tokio::test]
async fn logging_filter_changes_at_runtime() {
    let (subscriber, control) = admin::logging::subscriber("info").unwrap();
    // The server runs on this (current-thread) runtime, so the thread-local
    // default shows the effect of a reload.
    let _default = tracing::subscriber::set_default(subscriber);
    let store = Arc::new(SnapshotStore::new(local()));
    let (state, _shutdown_rx) = admin_state(store);
    let state = state.with_logging(control);
    let (addr, shutdown, task) =
        start(move |listener, rx| admin::serve_admin(listener, state, rx)).await;

    let reply = request(addr, "GET", "/logging").await;
    assert_eq!((reply.status, reply.body.trim()), (200, "info"));
    assert!(!tracing::enabled!(tracing::Level::DEBUG));

    let reply = request(addr, "POST", "/logging?level=debug").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = request(addr, "GET", "/logging").await;
    assert_eq!(reply.body.trim(), "debug");
    assert!(tracing::enabled!(tracing::Level::DEBUG));

    let reply = request(
        addr,
        "POST",
        "/logging?filter=warn,lanemesh_sidecar%3Dtrace",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let current = request(addr, "GET", "/logging").await.body;
    assert!(current.contains("lanemesh_sidecar=trace"), "{current}");
    assert!(current.contains("warn"), "{current}");

    // Bad input leaves the filter alone.
    assert_eq!(
        request(addr, "POST", "/logging?level=loud").await.status,
        400
    );
    assert_eq!(
        request(addr, "POST", "/logging?filter=a%3Dnot-a-level")
            .await
            .status,
        400
    );
    assert_eq!(request(addr, "POST", "/logging").await.status, 400);
    assert_eq!(request(addr, "GET", "/logging").await.body, current);

    assert_eq!(
        request(addr, "POST", "/logging?level=off").await.status,
        200
    );
    assert!(!tracing::enabled!(tracing::Level::ERROR));

    shutdown.send(true).unwrap();
    stops(task).await;
}

#[tokio::test]
async fn post_shutdown_fires_the_shutdown_signal() {
    let store = Arc::new(SnapshotStore::new(local()));
    let (state, mut shutdown_rx) = admin_state(store);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server stops on the very signal it sends, as main wires it.
    let task = tokio::spawn(admin::serve_admin(listener, state, shutdown_rx.clone()));

    assert!(!*shutdown_rx.borrow_and_update());
    let reply = request(addr, "POST", "/shutdown").await;
    assert_eq!(reply.status, 200);
    tokio::time::timeout(STEP, shutdown_rx.wait_for(|stop| *stop))
        .await
        .expect("shutdown signal not sent")
        .unwrap();
    stops(task).await;
    // The listener is closed once the server has stopped.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let store = Arc::new(SnapshotStore::new(local()));
    let (state, shutdown_rx) = admin_state(Arc::clone(&store));
    let (admin_addr, admin_stop, admin_task) =
        start(move |listener, rx| admin::serve_admin(listener, state, rx)).await;
    let (health_addr, health_stop, health_task) =
        start(move |listener, rx| admin::serve_health(listener, store, not_draining(), rx)).await;
    let metrics = Arc::new(ProxyMetrics::new());
    let (metrics_addr, metrics_stop, metrics_task) =
        start(move |listener, rx| admin::serve_metrics(listener, metrics, rx)).await;

    for addr in [admin_addr, health_addr, metrics_addr] {
        assert_eq!(request(addr, "GET", "/nope").await.status, 404);
    }
    // The admin routes live on the admin port only.
    assert_eq!(
        request(health_addr, "GET", "/config_dump").await.status,
        404
    );
    assert_eq!(
        request(metrics_addr, "GET", "/healthz/ready").await.status,
        404
    );

    let reply = request(admin_addr, "GET", "/shutdown").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["allow"], "POST");
    assert!(!*shutdown_rx.borrow(), "a GET must not shut down");
    assert_eq!(request(admin_addr, "DELETE", "/logging").await.status, 405);
    assert_eq!(
        request(admin_addr, "POST", "/config_dump").await.status,
        405
    );
    assert_eq!(
        request(health_addr, "POST", "/healthz/ready").await.status,
        405
    );
    assert_eq!(request(metrics_addr, "PUT", "/metrics").await.status, 405);
    // Logging without a LogControl is reported, not silently accepted.
    assert_eq!(request(admin_addr, "GET", "/logging").await.status, 501);

    for stop in [admin_stop, health_stop, metrics_stop] {
        stop.send(true).unwrap();
    }
    for task in [admin_task, health_task, metrics_task] {
        stops(task).await;
    }
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let metrics = Arc::new(ProxyMetrics::new());
    let (addr, shutdown, task) =
        start(move |listener, rx| admin::serve_metrics(listener, metrics, rx)).await;

    // A keep-alive connection, idle when the shutdown comes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 64 * 1024];
    let n = tokio::time::timeout(STEP, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    shutdown.send(true).unwrap();
    stops(task).await;
    // The idle connection was closed rather than left hanging.
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut rest))
        .await
        .expect("idle connection not closed on shutdown")
        .unwrap();
}
