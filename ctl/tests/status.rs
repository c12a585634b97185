#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `lanemeshctl status` without `--pilot`, against the real API server: the pilot replicas with
//! the Lease holder marked leader, the governed pods, and the objects whose `Accepted`
//! condition the control plane set to `False`; an unreachable API server is a clear error.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use lanemesh_e2e::cluster::{self, TestCluster};
use serde_json::json;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: lanemesh-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: lanemesh-pilot-a, namespace: lanemesh-system, labels: {app.kubernetes.io/name: lanemesh-pilot}}
spec: {nodeName: node-1, containers: [{name: pilot, image: lanemesh/pilot}]}
---
apiVersion: v1
kind: Pod
metadata: {name: lanemesh-pilot-b, namespace: lanemesh-system, labels: {app.kubernetes.io/name: lanemesh-pilot}}
spec: {nodeName: node-2, containers: [{name: pilot, image: lanemesh/pilot}]}
---
apiVersion: v1
kind: Pod
metadata: {name: front-1, namespace: shop, labels: {app: front, msePilotAutoEnable: "on"}}
spec: {containers: [{name: app, image: front}]}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: lanemesh-pilot-status, namespace: lanemesh-system}
spec: {holderIdentity: lanemesh-pilot-b-1, leaseDurationSeconds: 15}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: limits, namespace: shop}
spec:
  app: front
  rules: [{name: all, qps: {threshold: 10}}]
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: breaker, namespace: shop}
spec:
  app: front
  rules: [{name: errors, strategy: ErrorRatio, threshold: 0.5, minRequests: 10, window: 10s, openDuration: 5s}]
"#;

fn lanemeshctl(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanemeshctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn accepted(status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"status": {"conditions": [{
        "type": "Accepted", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-12-07T10:00:00Z"
    }]}})
}

#[tokio::test]
async fn status_from_the_api_server_names_replicas_leader_and_refused_objects() {
    if cluster::skip_requested(
        "status_from_the_api_server_names_replicas_leader_and_refused_objects",
    ) {
        return;
    }
    tokio::time::timeout(Duration::from_secs(300), async {
        let cluster = TestCluster::start().await.unwrap();
        cluster
            .install_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh/crds"))
            .await
            .unwrap();
        let out = cluster.kubectl_stdin(["apply", "-f", "-"], OBJECTS).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // What the kubelet and the pilot's status writer would have written.
        let pods: Api<Pod> = Api::namespaced(cluster.client(), "lanemesh-system");
        let ready = json!({"status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status("lanemesh-pilot-b", &PatchParams::default(), &Patch::Merge(&ready))
            .await
            .unwrap();
        for (plural, name, status) in [
            ("ratelimitpolicies", "limits", accepted("False", "NACKed", "a sidecar refused it: qps threshold must be positive")),
            ("circuitbreakerpolicies", "breaker", accepted("True", "Accepted", "ok")),
        ] {
            let out = cluster
                .kubectl([
                    "patch", plural, name, "-n", "shop", "--subresource=status", "--type=merge", "-p",
                    &status.to_string(),
                ])
                .await
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }

        let kc = cluster.kubeconfig_path().to_owned();
        let (code, table, err) = lanemeshctl(&kc, &["status"]);
        assert_eq!(code, 0, "{err}");
        let line = |pod: &str| table.lines().find(|l| l.starts_with(pod)).unwrap_or_default().to_owned();
        let b = line("lanemesh-pilot-b");
        assert!(b.contains("ready") && b.contains("leader") && b.contains("10.0.0.7") && b.contains("node-2"), "{table}");
        let a = line("lanemesh-pilot-a");
        assert!(a.contains("not ready") && !a.contains("leader"), "{table}");
        assert!(table.contains("1 governed pods, 0 ready"), "{table}");
        assert!(
            table.contains("RateLimitPolicy shop/limits")
                && table.contains("NACKed: a sidecar refused it: qps threshold must be positive"),
            "{table}"
        );
        assert!(!table.contains("breaker"), "accepted objects are not listed: {table}");

        let (code, json, err) = lanemeshctl(&kc, &["status", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["leader"], "lanemesh-pilot-b-1");
        assert_eq!(json["pilots"].as_array().unwrap().len(), 2);

        let (code, table, _) = lanemeshctl(&kc, &["status", "-n", "elsewhere"]);
        assert_eq!(code, 0);
        assert!(table.contains("no lanemesh-pilot pod in namespace elsewhere"), "{table}");
        drop(cluster);
        let kept = tempfile::tempdir().unwrap();
        let stale = kept.path().join("kubeconfig");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        std::fs::write(
            &stale,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: gone, cluster: {{server: \"https://{closed}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: c, context: {{cluster: gone, user: u}}}}]\ncurrent-context: c\n"
            ),
        )
        .unwrap();

        // The API server gone: an error that says so.
        let (code, _, err) = lanemeshctl(&stale, &["status"]);
        assert_ne!(code, 0);
        assert!(err.contains("could not be reached"), "{err}");
    })
    .await
    .expect("the test took more than 5 minutes");
}
