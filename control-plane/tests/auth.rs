#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Discovery streams authenticated by TokenReview against a real kube-apiserver: a stream
//! presenting a token bound to the pod it claims is served; one claiming another pod or
//! namespace, with a token of another audience, of a deleted pod, garbage or none is refused
//! with PERMISSION_DENIED and never receives a resource.
//!
//! Needs the binaries from `e2e/cluster/build.sh`; set `LANEMESH_SKIP_CLUSTER=1` to skip.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lanemesh_api::resource::ALL_TYPE_URLS;
use lanemesh_control_plane::auth::TokenReviewer;
use lanemesh_control_plane::run::{ControlPlane, Options};
use lanemesh_control_plane::source::kubernetes::KubernetesSource;
use lanemesh_e2e::cluster::{self, TestCluster};
use support::Sidecar;
use support::cluster::cluster_with;
use tokio::net::TcpListener;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata:
  name: a-1
  namespace: shop
  labels: {app: a, msePilotAutoEnable: "on"}
spec:
  serviceAccountName: default
  containers: [{name: app, image: example.invalid/a:1}]
---
apiVersion: v1
kind: Pod
metadata:
  name: a-2
  namespace: shop
  labels: {app: a, msePilotAutoEnable: "on"}
spec:
  serviceAccountName: default
  containers: [{name: app, image: example.invalid/a:1}]
"#;

/// A token for `default` in `shop` bound to pod `pod`, valid for `audience`.
async fn token(cluster: &TestCluster, pod: &str, audience: &str) -> String {
    let uid = cluster
        .kubectl([
            "get",
            "pod",
            pod,
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await
        .unwrap();
    let uid = String::from_utf8(uid.stdout).unwrap();
    let out = cluster
        .kubectl([
            "create",
            "token",
            "default",
            "-n",
            "shop",
            "--audience",
            audience,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod,
            "--bound-object-uid",
            uid.trim(),
            "--duration",
            "10m",
        ])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_served_only_for_the_pod_their_token_is_bound_to() {
    if cluster::skip_requested("streams_are_served_only_for_the_pod_their_token_is_bound_to") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = cluster_with(OBJECTS).await;
        let client = cluster.client();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let source = KubernetesSource::new(client.clone());
        let plane = ControlPlane::start_with(
            move |tx| source.run(tx),
            grpc,
            admin,
            Options {
                authenticator: Arc::new(TokenReviewer::new(client.clone())),
                ..Options::default()
            },
        );

        let good = token(&cluster, "a-1", "lanemesh").await;
        let mut served = Sidecar::try_connect(addr, "a-1", "shop", &good, &Default::default())
            .await
            .unwrap();
        let initial = served.initial().await;
        assert_eq!(initial.len(), ALL_TYPE_URLS.len(), "every type answered");
        // Cached: the same token opens a second stream.
        Sidecar::try_connect(addr, "a-1", "shop", &good, &Default::default())
            .await
            .unwrap();

        let other_audience = token(&cluster, "a-1", "not-lanemesh").await;
        let of_a2 = token(&cluster, "a-2", "lanemesh").await;
        let cases: [(&str, &str, &str, &str); 6] = [
            ("another pod", "a-2", "shop", &good),
            ("another namespace", "a-1", "other", &good),
            ("another audience", "a-1", "shop", &other_audience),
            ("no token", "a-1", "shop", ""),
            ("garbage", "a-1", "shop", "not-a-token"),
            ("a-2's token claiming a-1", "a-1", "shop", &of_a2),
        ];
        for (what, pod, namespace, token) in cases {
            let refused = Sidecar::try_connect(addr, pod, namespace, token, &Default::default())
                .await
                .err()
                .unwrap_or_else(|| panic!("{what}: served"));
            assert_eq!(
                refused.code(),
                tonic::Code::PermissionDenied,
                "{what}: {refused}"
            );
        }

        // A token whose pod is gone does not open a stream. A fresh one: the API server caches
        // a successful review for 10 s, so a token reviewed before the deletion would still pass.
        let of_a2 = token(&cluster, "a-2", "lanemesh").await;
        let out = cluster
            .kubectl(["delete", "pod", "a-2", "-n", "shop", "--wait=true"])
            .await
            .unwrap();
        assert!(out.status.success());
        let refused = Sidecar::try_connect(addr, "a-2", "shop", &of_a2, &Default::default())
            .await
            .err()
            .expect("a deleted pod's token opened a stream");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

        let text = plane.metrics.render();
        let refused: f64 =
            support::cluster::metric_sum(&text, "lanemesh_pilot_streams_refused_total");
        assert!(refused >= 7.0, "{text}");
        assert!(
            text.contains("lanemesh_pilot_streams_refused_total{reason=\"wrong_identity\"}"),
            "{text}"
        );
        plane.stop(Duration::from_secs(5)).await;
    })
    .await
    .expect("test timed out");
}
