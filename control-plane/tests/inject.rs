#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The injection webhook registered with a real kube-apiserver (`lanemesh_e2e::cluster`): what
//! `kubectl create` of a Pod comes back as.
//!
//! The webhook runs in the test process on 127.0.0.1 with a certificate of a throwaway CA; the
//! MutatingWebhookConfiguration calls it by `url` with that CA as its bundle.
//!
//! Needs the binaries from `e2e/cluster/build.sh`; set `LANEMESH_SKIP_CLUSTER=1` to skip.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lanemesh_control_plane::inject::webhook;
use lanemesh_control_plane::inject::{InjectConfig, SidecarMode};
use lanemesh_control_plane::metrics::Metrics;
use lanemesh_e2e::cluster::{self, ServingPki, TestCluster};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn webhook_configuration(port: u16, ca_pem: &str) -> String {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: lanemesh-sidecar-injector}}
webhooks:
- name: sidecar-injector.lanemesh.io
  clientConfig:
    url: https://127.0.0.1:{port}/inject
    caBundle: {bundle}
  rules:
  - operations: [CREATE]
    apiGroups: [""]
    apiVersions: [v1]
    resources: [pods]
  objectSelector:
    matchLabels: {{msePilotAutoEnable: "on"}}
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
  timeoutSeconds: 10
"#
    )
}

fn pod(name: &str, labels: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {labels}
  annotations: {annotations}
spec:
  containers: [{{name: app, image: example.invalid/a:1}}]
"#
    )
}

fn injections(metrics: &Metrics, outcome: &str) -> u64 {
    metrics
        .injections
        .get_or_create(&vec![("outcome", outcome.to_owned())])
        .get()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn create(cluster: &TestCluster, args: &[&str], yaml: &str) -> Result<Value, String> {
    let out = cluster.kubectl_stdin(args, yaml).await.unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `kubectl create --dry-run=server` of `yaml` until the answer has the init container `init`
/// (what reaches the webhook changes asynchronously); the answer.
async fn dry_run_until(cluster: &TestCluster, yaml: &str, init: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probe = create(
            cluster,
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            yaml,
        )
        .await
        .unwrap();
        if names(&probe["spec"]["initContainers"])
            .iter()
            .any(|n| n == init)
        {
            return probe;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {init} after 30 s: {probe}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_of_a_labelled_pod_comes_back_injected() {
    if cluster::skip_requested("kubectl_create_of_a_labelled_pod_comes_back_injected") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = TestCluster::start().await.unwrap();
        let pki = ServingPki::new(&["127.0.0.1".to_owned()], "lanemesh-pilot").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &pki.cert_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();
        let tls = webhook::tls_config(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let metrics = Arc::new(Metrics::default());
        let (_stop, stopped) = watch::channel(false);
        let config = InjectConfig {
            proxy_image: "example.invalid/lanemesh-proxy:test".into(),
            discovery_addr: "lanemesh-pilot.lanemesh-system.svc:15010".into(),
            sidecar_mode: SidecarMode::Native,
            ..InjectConfig::default()
        };
        // The pilot's Namespace reflector, against the real API server.
        let (namespaces, watch) = webhook::watch_namespaces(cluster.client());
        tokio::spawn(watch);
        tokio::spawn(webhook::serve(
            listener,
            tls,
            Arc::new(config),
            Some(namespaces),
            Arc::clone(&metrics),
            stopped,
        ));

        let setup = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{}",
            webhook_configuration(port, &pki.ca_pem)
        );
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &setup)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let governed =
            r#"{msePilotAutoEnable: "on", msePilotCreateAppName: a, alicloud.service.tag: gray}"#;
        // The API server picks the configuration up asynchronously: dry-run until it injects.
        dry_run_until(&cluster, &pod("probe", governed, "{}"), "lanemesh-proxy").await;
        assert!(
            cluster
                .kubectl(["get", "pod", "probe", "-n", "shop"])
                .await
                .unwrap()
                .status
                .code()
                != Some(0),
            "a dry-run pod was created"
        );

        // A labelled pod: created injected.
        let created = create(
            &cluster,
            &["create", "-o", "json", "-f", "-"],
            &pod(
                "a-1",
                governed,
                r#"{traffic.lanemesh.io/exclude-outbound-ports: "3306"}"#,
            ),
        )
        .await
        .unwrap();
        let spec = &created["spec"];
        assert_eq!(
            names(&spec["initContainers"]),
            ["lanemesh-init", "lanemesh-proxy"]
        );
        assert_eq!(names(&spec["containers"]), ["app"]);
        let init = &spec["initContainers"][0];
        assert_eq!(init["image"], "example.invalid/lanemesh-proxy:test");
        assert_eq!(
            init["args"],
            serde_json::json!(["init", "--outbound-exclude-ports=3306"])
        );
        assert_eq!(
            init["securityContext"]["capabilities"],
            serde_json::json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
        );
        assert_eq!(init["securityContext"]["runAsUser"], 0);
        assert_eq!(init["securityContext"]["privileged"], false);
        let proxy = &spec["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15021);
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
        assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            proxy["securityContext"]["capabilities"],
            serde_json::json!({"drop": ["ALL"]})
        );
        let env: Vec<(String, String)> = proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let value = e["value"].as_str().map(str::to_owned).unwrap_or_else(|| {
                    e["valueFrom"]["fieldRef"]["fieldPath"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                });
                (e["name"].as_str().unwrap().to_owned(), value)
            })
            .collect();
        for (name, value) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
            (
                "LANEMESH_DISCOVERY_ADDR",
                "lanemesh-pilot.lanemesh-system.svc:15010",
            ),
        ] {
            assert!(
                env.contains(&(name.to_owned(), value.to_owned())),
                "{name}={value} not in {env:?}"
            );
        }
        // App and lane come from the pilot's Workload, never from a frozen env var.
        assert!(
            !env.iter()
                .any(|(name, _)| name == "LANEMESH_APP" || name == "LANEMESH_LANE_TAG"),
            "{env:?}"
        );
        let token = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "lanemesh-token")
            .unwrap();
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "lanemesh"
        );
        assert_eq!(
            created["metadata"]["annotations"]["sidecar.lanemesh.io/status"],
            "injected"
        );
        let injected_so_far = injections(&metrics, "injected");
        assert!(injected_so_far >= 2, "probe(s) and a-1: {injected_so_far}");

        // An unlabelled pod never reaches the webhook (objectSelector) and is untouched.
        let calls = |m: &Metrics| {
            [
                "injected",
                "skipped",
                "refused",
                "invalid",
                "no object",
                "error",
            ]
            .iter()
            .map(|o| injections(m, o))
            .sum::<u64>()
        };
        let before = calls(&metrics);
        let plain = create(
            &cluster,
            &["create", "-o", "json", "-f", "-"],
            &pod("plain", "{app: plain}", "{}"),
        )
        .await
        .unwrap();
        assert!(plain["spec"]["initContainers"].is_null(), "{plain}");
        assert_eq!(names(&plain["spec"]["containers"]), ["app"]);
        assert_eq!(
            calls(&metrics),
            before,
            "the webhook was called for an unlabelled pod"
        );

        // Re-injection is a no-op: the injected pod, created again under another name.
        let mut again = created.clone();
        again["metadata"] = serde_json::json!({
            "name": "a-2",
            "namespace": "shop",
            "labels": created["metadata"]["labels"],
            "annotations": created["metadata"]["annotations"],
        });
        again.as_object_mut().unwrap().remove("status");
        let recreated = create(
            &cluster,
            &["create", "-o", "json", "-f", "-"],
            &serde_json::to_string(&again).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            recreated["spec"]["initContainers"],
            created["spec"]["initContainers"]
        );
        assert_eq!(recreated["spec"]["volumes"], created["spec"]["volumes"]);
        assert!(injections(&metrics, "skipped") >= 1);

        // A malformed annotation: refused, naming it.
        let refused = create(
            &cluster,
            &["create", "-o", "json", "-f", "-"],
            &pod(
                "bad",
                governed,
                r#"{traffic.lanemesh.io/exclude-inbound-ports: "http"}"#,
            ),
        )
        .await
        .unwrap_err();
        assert!(
            refused.contains("traffic.lanemesh.io/exclude-inbound-ports")
                && refused.contains("comma-separated list of ports"),
            "{refused}"
        );
        assert!(
            cluster
                .kubectl(["get", "pod", "bad", "-n", "shop"])
                .await
                .unwrap()
                .status
                .code()
                != Some(0)
        );

        // The Namespace opts its pods into Python context; a pod saying `none` stays out.
        let out = cluster
            .kubectl([
                "annotate",
                "namespace",
                "shop",
                "lanemesh.io/inject-context=python",
            ])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python = dry_run_until(&cluster, &pod("py", governed, "{}"), "lanemesh-context").await;
        let app_env = python["spec"]["containers"][0]["env"].to_string();
        assert!(
            app_env.contains(r#"{"name":"PYTHONPATH","value":"/lanemesh-context/boot"}"#),
            "{app_env}"
        );
        let opted_out = create(
            &cluster,
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            &pod(
                "py-none",
                governed,
                r#"{lanemesh.io/inject-context: "none"}"#,
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            names(&opted_out["spec"]["initContainers"]),
            ["lanemesh-init", "lanemesh-proxy"]
        );
    })
    .await
    .expect("test timed out");
}
