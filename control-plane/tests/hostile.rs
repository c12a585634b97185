#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile clients and faults: the control plane's limits hold, a dead task
//! is reported, and well-behaved sidecars are still served.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use lanemesh_api::proto::{self, DeltaDiscoveryRequest, ErrorDetail, ResourceError};
use lanemesh_api::resource::DiscoveryResource;
use lanemesh_control_plane::admin::{AdminOptions, DebugEndpoints};
use lanemesh_control_plane::discovery::DiscoveryLimits;
use lanemesh_control_plane::run::{ControlPlane, Options};
use lanemesh_control_plane::source::SourceEvent;
use lanemesh_control_plane::source::local::parse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::{Sidecar, WAIT, names};

const SERVICE: &str = <proto::Service as DiscoveryResource>::TYPE_URL;

const APPS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: front}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: back, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: back}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: front-1, namespace: shop, labels: {app: front, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: back-1, namespace: shop, labels: {app: back, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
"#;

/// `APPS` plus one Service of 300 endpoints with long pod names (~100 KB a
/// push), so a sidecar that never reads fills its HTTP/2 window quickly.
fn with_big_service(round: usize) -> String {
    let mut yaml = format!(
        "{APPS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: shop}}\nspec: {{selector: {{app: big}}, ports: [{{name: http, port: 80}}]}}\n"
    );
    for i in 0..300 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}-{i}, namespace: shop, labels: {{app: big, alicloud.service.tag: t{round}}}}}\nstatus: {{podIP: 10.1.{}.{}, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
            "p".repeat(200),
            i / 250,
            i % 250
        ));
    }
    yaml
}

struct Plane {
    grpc: SocketAddr,
    admin: SocketAddr,
    /// Feeds the source: each YAML replaces the whole state.
    objects: mpsc::Sender<String>,
    plane: ControlPlane,
}

impl Plane {
    async fn start(options: Options) -> Self {
        Self::start_on("127.0.0.1:0", options).await
    }

    async fn start_on(admin_addr: &str, options: Options) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind(admin_addr).await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let admin_port = admin.local_addr().unwrap().port();
        let (objects, mut yaml) = mpsc::channel::<String>(4);
        let plane = ControlPlane::start_with(
            move |tx| async move {
                while let Some(yaml) = yaml.recv().await {
                    let event = SourceEvent::Replace(parse(&yaml).unwrap());
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                // The test dropped its sender: stay alive like a real source.
                tx.closed().await;
            },
            grpc,
            admin,
            options,
        );
        objects.send(APPS.to_owned()).await.unwrap();
        let mut worlds = plane.worlds.clone();
        tokio::time::timeout(WAIT, worlds.wait_for(|w| w.ready))
            .await
            .unwrap()
            .unwrap();
        Self {
            grpc: grpc_addr,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            objects,
            plane,
        }
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        support::cluster::metric_sum(&self.plane.metrics.render(), line_prefix)
    }
}

fn fast_options() -> Options {
    Options {
        debounce: Duration::from_millis(10),
        ..Options::default()
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap();
    (status, body)
}

#[tokio::test]
async fn a_task_that_dies_fails_readyz_and_is_reported_to_the_process() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let plane = ControlPlane::start(
        move |tx| async move {
            tx.send(SourceEvent::Replace(parse(APPS).unwrap()))
                .await
                .unwrap();
            let _ = crash_rx.await;
            panic!("simulated source bug");
        },
        grpc,
        admin,
        Duration::from_millis(10),
    );
    let mut worlds = plane.worlds.clone();
    tokio::time::timeout(WAIT, worlds.wait_for(|w| w.ready))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 200);
    assert!(plane.health.failure().is_none());

    crash_tx.send(()).unwrap();
    let failure = tokio::time::timeout(WAIT, plane.failed()).await.unwrap();
    assert!(
        failure.contains("source task panicked: simulated source bug"),
        "{failure}"
    );
    let (status, body) = http_get(admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("source task panicked"), "{body}");
    assert_eq!(http_get(admin_addr, "/healthz").await.0, 503);

    // Tasks that end because the plane stops are not failures.
    plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn stopping_is_not_reported_as_a_failure() {
    let plane = Plane::start(fast_options()).await;
    let health = plane.plane.health.clone();
    plane.plane.stop(Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(health.failure(), None);
}

#[tokio::test]
async fn debug_endpoints_are_off_on_an_address_other_pods_reach() {
    // Bound to every address (as in a pod), asked over loopback.
    let plane = Plane::start_on("0.0.0.0:0", fast_options()).await;
    for path in ["/debug/snapshot?node=shop/front-1", "/debug/rejected"] {
        let (status, body) = http_get(plane.admin, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("--debug-endpoints"), "{body}");
    }
    assert_eq!(http_get(plane.admin, "/metrics").await.0, 200);
    assert_eq!(http_get(plane.admin, "/readyz").await.0, 200);
    plane.plane.stop(Duration::from_secs(2)).await;

    let on = Options {
        admin: AdminOptions {
            debug_endpoints: DebugEndpoints::On,
            ..AdminOptions::default()
        },
        ..fast_options()
    };
    let plane = Plane::start_on("0.0.0.0:0", on).await;
    let (status, body) = http_get(plane.admin, "/debug/snapshot?node=shop/front-1").await;
    assert_eq!(status, 200, "{body}");
    plane.plane.stop(Duration::from_secs(2)).await;

    // The loopback default serves them on a loopback listener.
    let plane = Plane::start(fast_options()).await;
    assert_eq!(http_get(plane.admin, "/debug/rejected").await.0, 200);
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn an_admin_client_that_never_finishes_its_request_head_is_disconnected() {
    let options = Options {
        admin: AdminOptions {
            header_read_timeout: Duration::from_millis(300),
            ..AdminOptions::default()
        },
        ..fast_options()
    };
    let plane = Plane::start(options).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(plane.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    for mut s in slow {
        let mut buf = Vec::new();
        // The server closes (EOF, maybe after a 408) instead of waiting forever.
        let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "connection still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // A prompt client is still served.
    assert_eq!(http_get(plane.admin, "/healthz").await.0, 200);
    plane.plane.stop(Duration::from_secs(2)).await;
}

fn nack_request(
    type_url: &str,
    nonce: &str,
    errors: Vec<(&str, &str, String)>,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        error_detail: Some(ErrorDetail {
            message: "refused".into(),
            resource_errors: errors
                .into_iter()
                .map(|(name, version, message)| ResourceError {
                    name: name.into(),
                    version: version.into(),
                    message,
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// Waits until `check` holds (the stream task handles requests
/// asynchronously).
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_can_nack_only_what_it_was_sent_and_its_nacks_end_with_its_stream() {
    let options = Options {
        discovery: DiscoveryLimits {
            max_nacks_per_stream: 1,
            max_nack_message: 100,
            ..DiscoveryLimits::default()
        },
        ..fast_options()
    };
    let plane = Plane::start(options).await;
    let mut front = Sidecar::connect(plane.grpc, "front-1", "shop", &HashMap::new()).await;
    let services = front.recv_type(SERVICE).await;
    assert_eq!(names(&services), ["shop/back", "shop/front"]);
    let version = |name: &str| {
        let r = services.resources.iter().find(|r| r.name == name).unwrap();
        r.version.clone()
    };
    let (back, front_v) = (version("shop/back"), version("shop/front"));

    // Resources never sent, a wrong version and a nonce never used: ignored.
    let forged = vec![
        ("elsewhere/secret", "1", "blame it".to_owned()),
        ("shop/back", "0000", "wrong version".to_owned()),
    ];
    front
        .tx
        .send(nack_request(SERVICE, &services.nonce, forged))
        .await
        .unwrap();
    eventually("forged NACKs counted as ignored", || {
        plane.metric("lanemesh_pilot_nacks_ignored_total{type=\"Service\"}") == 2.0
    })
    .await;
    assert!(plane.plane.discovery.nacks().is_empty());
    let unknown_nonce = vec![("shop/back", back.as_str(), "x".to_owned())];
    front
        .tx
        .send(nack_request(SERVICE, "999", unknown_nonce))
        .await
        .unwrap();
    eventually("a NACK for an unknown nonce is ignored", || {
        plane.metric("lanemesh_pilot_nacks_ignored_total{type=\"Service\"}") == 3.0
    })
    .await;
    assert!(plane.plane.discovery.nacks().is_empty());

    // A fresh response to answer: the first one's nonce was consumed.
    plane
        .objects
        .send(APPS.replace("10.96.0", "10.97.0"))
        .await
        .unwrap();
    let services = front.recv_type(SERVICE).await;
    let version = |name: &str| {
        let r = services.resources.iter().find(|r| r.name == name).unwrap();
        r.version.clone()
    };
    assert_ne!(version("shop/front"), front_v);
    // Two real refusals, but this stream may hold one; messages are cut.
    let real = vec![
        ("shop/back", "", "x".repeat(10_000)),
        ("shop/front", "", "y".to_owned()),
    ];
    front
        .tx
        .send(nack_request(SERVICE, &services.nonce, real))
        .await
        .unwrap();
    eventually("one NACK recorded", || {
        plane.plane.discovery.nacks().len() == 1
    })
    .await;
    let nacks = plane.plane.discovery.nacks();
    let nack = &nacks[&(SERVICE.to_owned(), "shop/back".to_owned())];
    assert_eq!(nack.version, version("shop/back"));
    assert_eq!(nack.node, "shop/front-1");
    assert!(nack.message.len() <= 103, "{}", nack.message.len());
    assert_eq!(
        plane.metric("lanemesh_pilot_nacks_ignored_total{type=\"Service\"}"),
        4.0
    );

    // The stream ends: its NACKs go with it.
    let mut updates = plane.plane.discovery.nack_updates();
    updates.borrow_and_update();
    drop(front);
    tokio::time::timeout(WAIT, updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(plane.plane.discovery.nacks().is_empty());
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn streams_that_never_send_a_first_request_are_closed_and_bounded_per_connection() {
    let first = Duration::from_millis(600);
    let options = Options {
        discovery: DiscoveryLimits {
            first_request_timeout: first,
            max_concurrent_streams: 3,
            ..DiscoveryLimits::default()
        },
        ..fast_options()
    };
    let plane = Plane::start(options).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", plane.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let mut silent = Vec::new();
    // Five streams on one connection whose request side stays open and empty.
    for _ in 0..5 {
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
        silent.push(tokio::spawn(async move {
            let _keep_open = tx;
            let outcome = client
                .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            (outcome.map(|_| ()).unwrap_err(), started.elapsed())
        }));
    }
    // Meanwhile a well-behaved sidecar on its own connection is served.
    let mut good = Sidecar::connect(plane.grpc, "back-1", "shop", &HashMap::new()).await;
    good.initial().await;
    assert!(
        started.elapsed() < first,
        "served only after {:?}",
        started.elapsed()
    );

    let (mut timed_out, mut refused) = (Vec::new(), 0);
    for task in silent {
        let (status, at) = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        match status.code() {
            tonic::Code::DeadlineExceeded => {
                assert!(status.message().contains("first request"), "{status}");
                timed_out.push(at);
            }
            // Opened before the client saw the server's SETTINGS: refused
            // by the server (REFUSED_STREAM) instead of queued by the client.
            tonic::Code::Unavailable if format!("{status:?}").contains("REFUSED_STREAM") => {
                refused += 1;
            }
            _ => panic!("unexpected {status:?}"),
        }
    }
    timed_out.sort();
    // At most three run at once: the first wave closes after one timeout;
    // the others were refused, or had to wait for a free slot.
    let first_wave = timed_out.iter().filter(|at| **at < first * 3 / 2).count();
    assert_eq!(first_wave, 3, "{timed_out:?}, {refused} refused");
    assert_eq!(timed_out.len() + refused, 5);
    for at in &timed_out[3..] {
        assert!(
            *at >= first * 2 - Duration::from_millis(50),
            "{timed_out:?}"
        );
    }
    assert!(
        timed_out
            .iter()
            .all(|at| *at < first * 2 + Duration::from_secs(2))
    );
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sidecars_that_never_read_are_dropped_after_the_send_timeout() {
    let send = Duration::from_millis(800);
    let options = Options {
        discovery: DiscoveryLimits {
            send_timeout: send,
            ..DiscoveryLimits::default()
        },
        ..fast_options()
    };
    let plane = Plane::start(options).await;
    // Subscribe, then never read again.
    let mut stuck = Vec::new();
    for pod in ["front-1", "front-2", "front-3"] {
        stuck.push(Sidecar::connect(plane.grpc, pod, "shop", &HashMap::new()).await);
    }
    let mut live = Sidecar::connect(plane.grpc, "back-1", "shop", &HashMap::new()).await;
    live.initial().await;
    eventually("four streams connected", || {
        plane.metric("lanemesh_pilot_connected_proxies") == 4.0
    })
    .await;

    let started = Instant::now();
    let mut dropped_after = None;
    for round in 0..40 {
        plane.objects.send(with_big_service(round)).await.unwrap();
        let r = live.recv_type(SERVICE).await;
        assert!(names(&r).contains(&"shop/big"), "round {round}");
        live.ack(&r).await;
        if plane.metric("lanemesh_pilot_connected_proxies") == 1.0 {
            dropped_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped_after = dropped_after.expect("the stuck streams were never dropped");
    assert!(
        dropped_after < send + Duration::from_secs(4),
        "{dropped_after:?}"
    );
    // The live one is still served after the others went.
    plane.objects.send(with_big_service(99)).await.unwrap();
    let r = live.recv_type(SERVICE).await;
    assert!(names(&r).contains(&"shop/big"));
    drop(stuck);
    plane.plane.stop(Duration::from_secs(2)).await;
}
