#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `lanemeshctl lane enable|disable` against the real API server (`e2e/cluster` binaries).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lanemesh_e2e::cluster::{self, TestCluster};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec: {apps: [a, b], entryApps: [a], routingMode: Content}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec:
  group: flow
  tag: gray
  enabled: true
  match: {logic: All, conditions: [{source: Header, name: canary, operator: Equal, value: gray}]}
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

#[tokio::test]
async fn lane_disable_and_enable_patch_the_lane_and_name_what_is_missing() {
    if cluster::skip_requested("lane_disable_and_enable_patch_the_lane_and_name_what_is_missing") {
        return;
    }
    tokio::time::timeout(Duration::from_secs(300), async {
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
        let kc = cluster.kubeconfig_path().to_owned();
        let enabled = || async {
            let out = cluster
                .kubectl([
                    "get",
                    "lane",
                    "gray",
                    "-n",
                    "shop",
                    "-o",
                    "jsonpath={.spec.enabled}",
                ])
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };

        let kc2 = kc.clone();
        let run = move |args: &'static [&'static str]| {
            let kc = kc2.clone();
            tokio::task::spawn_blocking(move || lanemeshctl(&kc, args))
        };
        let (code, out, err) = run(&["lane", "disable", "gray", "-n", "shop"])
            .await
            .unwrap();
        assert_eq!(
            (code, out.as_str()),
            (0, "lane shop/gray disabled (group flow)\n"),
            "{err}"
        );
        assert_eq!(enabled().await, "false");
        let (code, out, err) = run(&["lane", "enable", "gray", "-n", "shop"])
            .await
            .unwrap();
        assert_eq!(
            (code, out.as_str()),
            (0, "lane shop/gray enabled (group flow)\n"),
            "{err}"
        );
        assert_eq!(enabled().await, "true");

        let (code, _, err) = run(&["lane", "disable", "blue", "-n", "shop"])
            .await
            .unwrap();
        assert_eq!(code, 2);
        assert!(err.contains("lane shop/blue not found"), "{err}");

        // `lanemeshctl lanes`: the group, its lane, and what the control plane wrote in the
        // lane's status (written here as the pilot's status writer would).
        let status = r#"{"status":{"matchedPods":{"a":2,"b":0},"conditions":[{"type":"Accepted","status":"True","reason":"Accepted","message":"ok","lastTransitionTime":"2026-12-07T10:00:00Z"}]}}"#;
        let out = cluster
            .kubectl([
                "patch", "lane", "gray", "-n", "shop", "--subresource=status", "--type=merge",
                "-p", status,
            ])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (code, out, err) = run(&["lanes", "-n", "shop"]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            ["shop", "flow", "Content", "gray", "gray", "true", "-", "True", "a=2,b=0", "-", "-"],
            "{out}: no QPS from the API server alone"
        );
        let (code, out, err) = run(&["lanes", "-o", "json"]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(rows[0]["lane"], "gray", "{out}");
        assert_eq!(rows[0]["apps"], serde_json::json!(["a*", "b"]), "{out}");
        assert_eq!(rows[0]["matchedPods"]["a"], 2, "{out}");
        let (code, out, _) = run(&["lanes", "-n", "elsewhere"]).await.unwrap();
        assert_eq!((code, out.as_str()), (0, "no lane groups\n"));

        // No cluster behind the kubeconfig: a clear error, not a hang or a panic.
        drop(cluster);
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            lanemeshctl(&kc, &["lane", "enable", "gray", "-n", "shop"])
        })
        .await
        .unwrap();
        assert_eq!(code, 2);
        assert!(err.contains("lanemeshctl:"), "{err}");
    })
    .await
    .expect("test timed out");
}
