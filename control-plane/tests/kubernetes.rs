#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `kubernetes` source against a real kube-apiserver (`lanemesh_e2e::cluster`): objects
//! applied with kubectl reach the index, and so the discovery snapshots; deletions too.
//!
//! Needs the binaries from `e2e/cluster/build.sh`; set `LANEMESH_SKIP_CLUSTER=1` to skip.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod support;

use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;
use lanemesh_control_plane::index;
use lanemesh_control_plane::snapshot::{self, World};
use lanemesh_control_plane::source::kubernetes::KubernetesSource;
use lanemesh_e2e::cluster::{self, TestCluster};
use tokio::sync::{mpsc, watch};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(20);

// No endpoint controller runs beside the test API server, so the
// EndpointSlice is written by hand, as that controller would.
const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: shop}
spec:
  selector: {app: b}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: b-gray-1
  namespace: shop
  labels: {app: b, msePilotAutoEnable: "on", alicloud.service.tag: gray}
spec:
  containers: [{name: app, image: example.invalid/b:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: not-governed, namespace: shop, labels: {app: b}}
spec:
  containers: [{name: app, image: example.invalid/b:1}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: b-1
  namespace: shop
  labels: {kubernetes.io/service-name: b}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: b-gray-1, namespace: shop}
- addresses: [10.0.0.6]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: not-governed, namespace: shop}
---
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec:
  apps: [b]
  entryApps: [b]
"#;

async fn wait_for(
    worlds: &mut watch::Receiver<Arc<World>>,
    what: &str,
    f: impl Fn(&World) -> bool,
) {
    tokio::time::timeout(WAIT, worlds.wait_for(|w| f(w)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_objects_reach_the_index_and_deletions_leave_it() {
    if cluster::skip_requested("cluster_objects_reach_the_index_and_deletions_leave_it") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = TestCluster::start().await.unwrap();
        cluster
            .install_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh/crds"))
            .await
            .unwrap();
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], OBJECTS)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let (tx, rx) = mpsc::channel(64);
        let (worlds_tx, mut worlds) = watch::channel(Arc::new(World::default()));
        let source = tokio::spawn(KubernetesSource::new(cluster.client()).run(tx));
        let index = tokio::spawn(index::run(rx, worlds_tx, index::DEFAULT_DEBOUNCE));

        wait_for(&mut worlds, "the first full load", |w| {
            w.ready && w.services.contains_key("shop/b") && w.lane_groups.contains_key("shop/flow")
        })
        .await;
        let world = Arc::clone(&worlds.borrow());
        let svc = proto::Service::from_any(&world.services["shop/b"].any).unwrap();
        assert_eq!(svc.app, "b");
        assert_eq!(
            svc.cluster_ips.len(),
            1,
            "the API server allocated a ClusterIP"
        );
        let eps: Vec<(&str, &str, &str, bool, Option<&u32>)> = svc
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.ip.as_str(),
                    e.pod_name.as_str(),
                    e.lane_tag.as_str(),
                    e.ready,
                    e.ports.get("http"),
                )
            })
            .collect();
        // The ungoverned pod is not watched (label selector), so its endpoint has no tag.
        assert_eq!(
            eps,
            [
                ("10.0.0.5", "b-gray-1", "gray", true, Some(&8080)),
                ("10.0.0.6", "not-governed", "", false, Some(&8080)),
            ]
        );
        assert!(
            world
                .pods
                .contains_key(&("shop".to_owned(), "b-gray-1".to_owned()))
        );
        assert!(
            !world
                .pods
                .contains_key(&("shop".to_owned(), "not-governed".to_owned()))
        );

        let out = cluster
            .kubectl([
                "delete",
                "-n",
                "shop",
                "lanegroup/flow",
                "endpointslice/b-1",
            ])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(&mut worlds, "the deletions", |w| {
            !w.lane_groups.contains_key("shop/flow")
                && w.services.get("shop/b").is_some_and(|s| {
                    // Without slices the governed pod has no IP yet: no endpoints.
                    proto::Service::from_any(&s.any)
                        .unwrap()
                        .endpoints
                        .is_empty()
                })
        })
        .await;
        source.abort();
        index.abort();
    })
    .await
    .expect("test exceeded its time bound");
}

/// A RateLimitPolicy the Rust types cannot hold (`concurrency.max` beyond
/// u32), as an API server stores it under a CRD without `maximum` (CRDs
/// from before the bound: the API server ignores `format: uint32`).
const UNDECODABLE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: huge, namespace: shop}
spec:
  app: a
  rules: [{name: r, concurrency: {max: 4294967296}}]
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: good, namespace: shop}
spec:
  app: b
  rules: [{name: r, concurrency: {max: 4}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_object_is_skipped_without_stalling_its_kind() {
    if cluster::skip_requested("an_undecodable_object_is_skipped_without_stalling_its_kind") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = TestCluster::start().await.unwrap();
        // The generated CRDs, less every `maximum`.
        let crds = tempfile::tempdir().unwrap();
        let generated = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh/crds");
        for entry in std::fs::read_dir(&generated).unwrap() {
            let path = entry.unwrap().path();
            let yaml = std::fs::read_to_string(&path).unwrap();
            let unbounded: Vec<&str> = yaml
                .lines()
                .filter(|l| !l.trim_start().starts_with("maximum:"))
                .collect();
            std::fs::write(
                crds.path().join(path.file_name().unwrap()),
                unbounded.join("\n") + "\n",
            )
            .unwrap();
        }
        cluster.install_crds(crds.path()).await.unwrap();
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], UNDECODABLE)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let stored = cluster
            .kubectl([
                "get",
                "-n",
                "shop",
                "ratelimitpolicy/huge",
                "-o",
                "jsonpath={.spec.rules[0].concurrency.max}",
            ])
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stored.stdout),
            "4294967296",
            "{}",
            String::from_utf8_lossy(&stored.stderr)
        );

        // What a typed watcher sees: the whole list fails to decode.
        let typed = kube::Api::<lanemesh_api::crd::RateLimitPolicy>::all(cluster.client())
            .list(&Default::default())
            .await;
        assert!(typed.is_err(), "{typed:?}");

        let (tx, rx) = mpsc::channel(64);
        let (worlds_tx, mut worlds) = watch::channel(Arc::new(World::default()));
        let source = tokio::spawn(KubernetesSource::new(cluster.client()).run(tx));
        let index = tokio::spawn(index::run(rx, worlds_tx, index::DEFAULT_DEBOUNCE));
        // Before: the list failed to decode and was retried forever, so the
        // source never became ready and `good` never arrived.
        wait_for(
            &mut worlds,
            "the first full load without the bad object",
            |w| w.ready && w.inbound.contains_key("shop/b") && !w.inbound.contains_key("shop/a"),
        )
        .await;

        // Later changes of the kind still arrive.
        let later = UNDECODABLE
            .replace("name: good", "name: later")
            .replace("app: b", "app: c");
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &later)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(&mut worlds, "a later policy", |w| {
            w.inbound.contains_key("shop/c")
        })
        .await;

        // A good object changed into an undecodable one keeps its last
        // decodable version, and the kind keeps flowing.
        let broken = UNDECODABLE.replace("max: 4}", "max: 4294967297}");
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &broken)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = UNDECODABLE
            .replace("name: good", "name: after")
            .replace("app: b", "app: d");
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &after)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(&mut worlds, "a policy after the broken change", |w| {
            w.inbound.contains_key("shop/d") && w.inbound.contains_key("shop/b")
        })
        .await;
        source.abort();
        index.abort();
    })
    .await
    .expect("test exceeded its time bound");
}

/// The gateway's objects: a Service for the backends, and an HTTPRoute the API server accepts but
/// lanemesh refuses (a filter).
const GATEWAY_OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: canary-demo}
---
apiVersion: v1
kind: Service
metadata: {name: spring-cloud-a, namespace: canary-demo}
spec:
  selector: {app: spring-cloud-a}
  ports: [{name: http, port: 20001, targetPort: 20001}]
"#;

const FILTERED_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filtered, namespace: canary-demo}
spec:
  parentRefs: [{name: lanemesh}]
  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-demo, value: demo}]}}]
    backendRefs: [{name: spring-cloud-a, port: 20001}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_routes_and_ingresses_reach_a_gateway_once_their_crds_exist() {
    if cluster::skip_requested(
        "gateway_api_routes_and_ingresses_reach_a_gateway_once_their_crds_exist",
    ) {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = TestCluster::start().await.unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        cluster
            .install_crds(&root.join("charts/lanemesh/crds"))
            .await
            .unwrap();
        support::cluster::apply(&cluster, GATEWAY_OBJECTS).await;

        // Without the Gateway API CRDs the source still syncs: no routes.
        let (tx, rx) = mpsc::channel(64);
        let (worlds_tx, mut worlds) = watch::channel(Arc::new(World::default()));
        let source = tokio::spawn(KubernetesSource::new(cluster.client()).run(tx));
        let index = tokio::spawn(index::run(rx, worlds_tx, index::DEFAULT_DEBOUNCE));
        wait_for(&mut worlds, "the first full load", |w| {
            w.ready && w.services.contains_key("canary-demo/spring-cloud-a")
        })
        .await;
        assert!(worlds.borrow().gateway_routes.is_empty());

        // The CRDs from their published YAML, then the examples, validated by the API server.
        cluster
            .install_crds(&root.join("e2e/vendor/gateway-api"))
            .await
            .unwrap();
        for example in [
            "examples/gateway/httproute.yaml",
            "examples/gateway/ingress.yaml",
        ] {
            let out = cluster
                .kubectl(["apply", "-f", root.join(example).to_str().unwrap()])
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{example}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        support::cluster::apply(&cluster, FILTERED_ROUTE).await;
        // The watch retries with backoff (up to 30 s between attempts).
        tokio::time::timeout(
            Duration::from_secs(90),
            worlds.wait_for(|w| {
                w.gateway_routes.len() == 3
                    && w.rejected.iter().any(|r| r.object.name == "filtered")
            }),
        )
        .await
        .expect("the routes never arrived")
        .unwrap();
        let world = Arc::clone(&worlds.borrow());
        let names: Vec<&str> = world.gateway_routes.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "canary-demo/HTTPRoute/partner",
                "canary-demo/HTTPRoute/shop",
                "canary-demo/Ingress/shop"
            ]
        );
        let refused = world
            .rejected
            .iter()
            .find(|r| r.object.name == "filtered")
            .unwrap();
        assert!(refused.names_field("spec.rules[0].filters"), "{refused}");
        let partner = proto::GatewayRoute::from_any(
            &world.gateway_routes["canary-demo/HTTPRoute/partner"].any,
        )
        .unwrap();
        assert!(partner.trust_lane_tags);
        assert_eq!(partner.rules[0].hostnames, ["partner.example.com"]);

        // What a gateway node is served: the routes and their backends' Service.
        let gateway = snapshot::NodeKey {
            namespace: "lanemesh-system".into(),
            pod_name: "lanemesh-gateway-0".into(),
            app: "lanemesh-gateway".into(),
            lane_tag: String::new(),
            gateway: true,
        };
        let served = snapshot::for_node(&world, &gateway);
        assert_eq!(served.gateway_routes.len(), 3);
        assert!(served.services.contains_key("canary-demo/spring-cloud-a"));
        source.abort();
        index.abort();
    })
    .await
    .expect("test exceeded its time bound");
}
