#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The control plane end to end in-process: a local directory source, the
//! index, the gRPC discovery server and the admin server on 127.0.0.1, driven
//! by the generated discovery client acting as sidecars.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use lanemesh_api::proto::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use lanemesh_api::resource::{ALL_TYPE_URLS, DiscoveryResource};
use lanemesh_control_plane::run::ControlPlane;
use lanemesh_control_plane::source::local::LocalSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{Sidecar, WAIT, names, summary, versions};

const SERVICE: &str = <proto::Service as DiscoveryResource>::TYPE_URL;
const LANE_GROUP: &str = <proto::LaneGroup as DiscoveryResource>::TYPE_URL;
const INBOUND: &str = <proto::InboundPolicy as DiscoveryResource>::TYPE_URL;
const OUTBOUND: &str = <proto::OutboundPolicy as DiscoveryResource>::TYPE_URL;

const APPS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: front, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: front}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: back, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: back}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Pod
metadata: {name: front-1, namespace: shop, labels: {app: front, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: back-1, namespace: shop, labels: {app: back, msePilotAutoEnable: "on"}}
spec: {containers: [{name: app, ports: [{name: web, containerPort: 9090}]}]}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: back-2
  namespace: shop
  labels: {app: back, msePilotAutoEnable: "on", alicloud.service.tag: gray}
spec: {containers: [{name: app, ports: [{name: web, containerPort: 9091}]}]}
status: {podIP: 10.0.0.3, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Service
metadata: {name: unrelated, namespace: elsewhere}
spec:
  clusterIP: 10.96.1.1
  selector: {app: unrelated}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: unrelated-1, namespace: elsewhere, labels: {app: unrelated, msePilotAutoEnable: "on"}}
status: {podIP: 10.0.1.1, conditions: [{type: Ready, status: "True"}]}
"#;

const LANES: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec:
  apps: [front, back]
  entryApps: [front]
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec:
  group: flow
  tag: gray
  match:
    conditions: [{source: Header, name: canary, operator: Equal, value: gray}]
---
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: theirs, namespace: elsewhere}
spec:
  apps: [unrelated]
  entryApps: [unrelated]
"#;

fn limits(threshold: u32) -> String {
    format!(
        r#"
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: front-limit, namespace: shop}}
spec:
  app: front
  rules:
  - name: all
    qps: {{threshold: {threshold}}}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: unrelated-limit, namespace: elsewhere}}
spec:
  app: unrelated
  rules:
  - name: all
    qps: {{threshold: 1}}
"#
    )
}

const BREAKERS: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: back-breakers, namespace: shop}
spec:
  app: back
  rules:
  - {name: errors, strategy: ErrorRatio, threshold: 0.5}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: unrelated-breakers, namespace: elsewhere}
spec:
  app: unrelated
  rules:
  - {name: errors, strategy: ErrorRatio, threshold: 0.5}
"#;

struct Plane {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    plane: ControlPlane,
}

impl Plane {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        write(&path, "apps.yaml", APPS);
        write(&path, "lanes.yaml", LANES);
        write(&path, "limits.yaml", &limits(100));
        write(&path, "breakers.yaml", BREAKERS);
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let source = LocalSource::new(&path).with_interval(Duration::from_millis(50));
        let plane = ControlPlane::start(
            move |tx| async move {
                source.run(tx).await.unwrap();
            },
            grpc,
            admin,
            Duration::from_millis(50),
        );
        Self {
            _dir: dir,
            dir: path,
            grpc: grpc_addr,
            admin: admin_addr,
            plane,
        }
    }

    fn write(&self, file: &str, text: &str) {
        write(&self.dir, file, text);
    }

    async fn connect(&self, pod: &str, namespace: &str) -> Sidecar {
        Sidecar::connect(self.grpc, pod, namespace, &HashMap::new()).await
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write-then-rename, as editors and ConfigMap updates do, so the poller
    // never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

fn qps(r: &DeltaDiscoveryResponse) -> f64 {
    let any = r.resources[0].resource.as_ref().unwrap();
    let p = proto::InboundPolicy::from_any(any).unwrap();
    p.rules[0].qps.as_ref().unwrap().threshold
}

#[tokio::test]
async fn a_node_receives_only_what_concerns_it() {
    let plane = Plane::start().await;
    let mut front = plane.connect("front-1", "shop").await;
    let initial = front.initial().await;

    assert_eq!(names(&initial[SERVICE]), ["shop/back", "shop/front"]);
    assert_eq!(names(&initial[LANE_GROUP]), ["shop/flow"]);
    assert_eq!(names(&initial[INBOUND]), ["shop/front"]);
    // front reaches back and itself (its namespace's services); only back
    // has breakers.
    assert_eq!(names(&initial[OUTBOUND]), ["shop/back"]);

    let back = initial[SERVICE]
        .resources
        .iter()
        .find(|r| r.name == "shop/back")
        .unwrap();
    let back = proto::Service::from_any(back.resource.as_ref().unwrap()).unwrap();
    assert_eq!(back.app, "back");
    let eps: Vec<(&str, &str, bool, Option<&u32>)> = back
        .endpoints
        .iter()
        .map(|e| {
            (
                e.pod_name.as_str(),
                e.lane_tag.as_str(),
                e.ready,
                e.ports.get("http"),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("back-1", "", true, Some(&9090)),
            ("back-2", "gray", false, Some(&9091))
        ]
    );

    // Everything ACKed and nothing changed: nothing more is sent.
    front.expect_silence(Duration::from_millis(400)).await;

    // The other namespace's sidecar sees its own world only.
    let mut other = plane.connect("unrelated-1", "elsewhere").await;
    let theirs = other.initial().await;
    assert_eq!(names(&theirs[SERVICE]), ["elsewhere/unrelated"]);
    assert_eq!(names(&theirs[LANE_GROUP]), ["elsewhere/theirs"]);
    assert_eq!(names(&theirs[INBOUND]), ["elsewhere/unrelated"]);
    assert_eq!(names(&theirs[OUTBOUND]), ["elsewhere/unrelated"]);

    // A graceful stop ends open streams cleanly, so sidecars reconnect
    // elsewhere instead of waiting on a dead server.
    tokio::time::timeout(WAIT, plane.plane.stop(Duration::from_secs(2)))
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, front.rx.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn a_file_change_is_pushed_within_a_second_and_removals_are_sent() {
    let plane = Plane::start().await;
    let mut front = plane.connect("front-1", "shop").await;
    let initial = front.initial().await;
    assert_eq!(qps(&initial[INBOUND]), 100.0);

    let started = Instant::now();
    plane.write("limits.yaml", &limits(7));
    let update = front.recv_type(INBOUND).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(names(&update), ["shop/front"]);
    assert_eq!(qps(&update), 7.0);
    assert_ne!(
        update.resources[0].version,
        initial[INBOUND].resources[0].version
    );
    front.ack(&update).await;

    std::fs::remove_file(plane.dir.join("breakers.yaml")).unwrap();
    let removal = front.recv_type(OUTBOUND).await;
    assert!(removal.resources.is_empty(), "{}", summary(&removal));
    assert_eq!(removal.removed_resources, ["shop/back"]);
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_nacked_version_is_not_resent_until_it_changes() {
    let plane = Plane::start().await;
    let mut front = plane.connect("front-1", "shop").await;
    let mut got = HashMap::new();
    while got.len() < ALL_TYPE_URLS.len() {
        let r = front.recv().await;
        if r.type_url == INBOUND {
            front.nack(&r, "shop/front").await;
        } else {
            front.ack(&r).await;
        }
        got.insert(r.type_url.clone(), r);
    }

    // An unrelated change rebuilds everything; the NACKed policy stays put.
    plane.write("apps.yaml", &APPS.replace("10.96.0.10", "10.96.0.20"));
    let services = front.recv().await;
    assert_eq!(services.type_url, SERVICE, "{}", summary(&services));
    assert_eq!(names(&services), ["shop/front"]);
    front.ack(&services).await;
    front.expect_silence(Duration::from_millis(500)).await;

    // Changing the policy itself produces a new version, which is sent.
    plane.write("limits.yaml", &limits(9));
    let update = front.recv().await;
    assert_eq!(update.type_url, INBOUND, "{}", summary(&update));
    assert_eq!(qps(&update), 9.0);
    let nacks = plane.plane.discovery.nacks();
    let nack = &nacks[&(INBOUND.to_owned(), "shop/front".to_owned())];
    assert_eq!(nack.node, "shop/front-1");
    assert_eq!(nack.version, got[INBOUND].resources[0].version);
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn reconnecting_with_versions_gets_only_differences_and_removals() {
    let plane = Plane::start().await;
    let mut first = plane.connect("front-1", "shop").await;
    let held = versions(&first.initial().await);
    drop(first);

    std::fs::remove_file(plane.dir.join("breakers.yaml")).unwrap();
    plane.write("limits.yaml", &limits(3));
    // Let the change be indexed before reconnecting.
    let deadline = Instant::now() + WAIT;
    let mut worlds = plane.plane.worlds.clone();
    while worlds
        .borrow_and_update()
        .outbound
        .contains_key("shop/back")
    {
        tokio::time::timeout_at(deadline.into(), worlds.changed())
            .await
            .unwrap()
            .unwrap();
    }

    let mut held = held;
    // Something the sidecar holds that no longer exists at all.
    held.get_mut(SERVICE)
        .unwrap()
        .insert("shop/gone".into(), "0123".into());
    let mut again = Sidecar::connect(plane.grpc, "front-1", "shop", &held).await;
    let mut by_type = HashMap::new();
    while by_type.len() < ALL_TYPE_URLS.len() {
        let r = again.recv().await;
        again.ack(&r).await;
        by_type.insert(r.type_url.clone(), r);
    }
    assert!(by_type[SERVICE].resources.is_empty());
    assert_eq!(by_type[SERVICE].removed_resources, ["shop/gone"]);
    assert!(by_type[LANE_GROUP].resources.is_empty());
    assert!(by_type[LANE_GROUP].removed_resources.is_empty());
    assert_eq!(names(&by_type[INBOUND]), ["shop/front"]);
    assert_eq!(qps(&by_type[INBOUND]), 3.0);
    assert!(by_type[OUTBOUND].resources.is_empty());
    assert_eq!(by_type[OUTBOUND].removed_resources, ["shop/back"]);
    again.expect_silence(Duration::from_millis(300)).await;
    plane.plane.stop(Duration::from_secs(2)).await;
}

/// Many endpoints with long pod names make each Service push big (~100 KB), so a sidecar that never reads
/// fills its HTTP/2 window and its stream's buffer quickly.
fn big_service(tag_of_first: &str) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: shop}\nspec: {selector: {app: big}, ports: [{name: http, port: 80}]}\n",
    );
    for i in 0..300 {
        let tag = if i == 0 {
            tag_of_first
        } else {
            "base-lane-tag-x"
        };
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}-{i}, namespace: shop, labels: {{app: big, alicloud.service.tag: {tag}}}}}\nstatus: {{podIP: 10.1.{}.{}, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
            "p".repeat(200),
            i / 250,
            i % 250
        ));
    }
    yaml
}

#[tokio::test]
async fn a_stuck_sidecar_does_not_delay_another() {
    let plane = Plane::start().await;
    plane.write("big.yaml", &big_service("t0"));
    let mut worlds = plane.plane.worlds.clone();
    tokio::time::timeout(
        WAIT,
        worlds.wait_for(|w| w.services.contains_key("shop/big")),
    )
    .await
    .unwrap()
    .unwrap();

    // Subscribes, then never reads again.
    let _stuck = plane.connect("front-1", "shop").await;
    let mut live = plane.connect("back-1", "shop").await;
    live.initial().await;

    for round in 1..=12 {
        let started = Instant::now();
        plane.write("big.yaml", &big_service(&format!("t{round}")));
        let r = live.recv_type(SERVICE).await;
        assert_eq!(names(&r), ["shop/big"], "round {round}");
        live.ack(&r).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    // Both streams are still open: the stuck one was not dropped to make room.
    let metrics = plane.plane.metrics.render();
    assert!(
        metrics.contains("lanemesh_pilot_connected_proxies 2"),
        "{metrics}"
    );
    plane.plane.stop(Duration::from_secs(2)).await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
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
async fn debug_snapshot_shows_what_the_node_receives() {
    let plane = Plane::start().await;
    let mut worlds = plane.plane.worlds.clone();
    tokio::time::timeout(WAIT, worlds.wait_for(|w| w.ready))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(http_get(plane.admin, "/healthz").await.0, 200);
    assert_eq!(http_get(plane.admin, "/readyz").await.0, 200);

    for query in ["shop/front-1", "front-1", "shop%2Ffront-1"] {
        let (status, body) = http_get(plane.admin, &format!("/debug/snapshot?node={query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["node"], "shop/front-1");
        assert_eq!(json["app"], "front");
        let services: Vec<&str> = json["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(services, ["shop/back", "shop/front"]);
        let back = &json["services"][0];
        assert_eq!(back["endpoints"][1]["laneTag"], "gray");
        assert_eq!(back["endpoints"][1]["ready"], false);
        assert_eq!(json["laneGroups"][0]["lanes"][0]["tag"], "gray");
        assert_eq!(json["inboundPolicies"][0]["rules"][0]["qps"], 100.0);
        assert_eq!(json["outboundPolicies"][0]["name"], "shop/back");
    }
    assert_eq!(
        http_get(plane.admin, "/debug/snapshot?node=shop/nobody")
            .await
            .0,
        404
    );

    let _sidecar = {
        let mut s = plane.connect("front-1", "shop").await;
        s.initial().await;
        s
    };
    let (status, metrics) = http_get(plane.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("lanemesh_pilot_connected_proxies 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lanemesh_pilot_pushes_total{type=\"Service\"} 1"),
        "{metrics}"
    );
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_first_request_without_node_is_refused() {
    let plane = Plane::start().await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", plane.grpc))
        .await
        .unwrap();
    let request = DeltaDiscoveryRequest {
        type_url: SERVICE.into(),
        ..Default::default()
    };
    let status = tokio::time::timeout(
        WAIT,
        client.delta_aggregated_resources(tokio_stream::iter([request])),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status}");
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_refused_policy_keeps_its_last_good_version_and_is_reported() {
    let plane = Plane::start().await;
    let mut front = plane.connect("front-1", "shop").await;
    let initial = front.initial().await;

    plane.write(
        "limits.yaml",
        &limits(100).replace("threshold: 100", "threshold: -5"),
    );
    let mut worlds = plane.plane.worlds.clone();
    tokio::time::timeout(WAIT, worlds.wait_for(|w| !w.rejected.is_empty()))
        .await
        .unwrap()
        .unwrap();
    // The last good policy stays in force: nothing to push.
    front.expect_silence(Duration::from_millis(400)).await;
    let (status, body) = http_get(plane.admin, "/debug/rejected").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("RateLimitPolicy shop/front-limit")
            && body.contains("spec.rules[0].qps.threshold"),
        "{body}"
    );

    // Fixed again: the new version is served.
    plane.write("limits.yaml", &limits(50));
    let update = front.recv_type(INBOUND).await;
    assert_eq!(qps(&update), 50.0);
    assert_ne!(
        update.resources[0].version,
        initial[INBOUND].resources[0].version
    );
    plane.plane.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn nothing_is_served_before_the_first_full_load() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    // A source that loads nothing until released.
    let plane = ControlPlane::start(
        move |tx| async move {
            let _ = release_rx.await;
            let objects = lanemesh_control_plane::source::local::parse(APPS).unwrap();
            let _ = tx
                .send(lanemesh_control_plane::source::SourceEvent::Replace(
                    objects,
                ))
                .await;
            tx.closed().await;
        },
        grpc,
        admin,
        Duration::from_millis(10),
    );
    let (status, body) = http_get(admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let mut sidecar = Sidecar::connect(grpc_addr, "front-1", "shop", &HashMap::new()).await;
    // An empty answer now would make the sidecar drop what it holds.
    sidecar.expect_silence(Duration::from_millis(300)).await;

    release_tx.send(()).unwrap();
    let services = sidecar.recv_type(SERVICE).await;
    assert_eq!(names(&services), ["shop/back", "shop/front"]);
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 200);
    plane.stop(Duration::from_secs(2)).await;
}
