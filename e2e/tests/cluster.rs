//! API server tier: the harness itself, and the CRDs in `charts/lanemesh/crds` served and
//! validated by a real kube-apiserver (DESIGN §3: a bad object is refused by `kubectl apply`).
//!
//! Needs the binaries from `e2e/cluster/build.sh`; set `LANEMESH_SKIP_CLUSTER=1` to skip.

// clippy's allow-expect-in-tests covers `#[test]` fns only, not this file's helpers.
#![allow(
    clippy::expect_used,
    reason = "test code: a failed expectation is a test failure"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use lanemesh_e2e::cluster::{self, TestCluster};
use serde::Deserialize;

/// Hard bound per test, startup included, so a wedged API server fails the run instead of
/// hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh/crds")
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound");
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed\n{}", text(out));
}

/// Asserts that kubectl was refused and that the API server's message names every `needle`
/// (the field path and the rule's message), so the user can tell what to fix.
fn assert_refused(out: &Output, what: &str, needles: &[&str]) {
    assert!(!out.status.success(), "{what} was accepted\n{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{what}: refused as expected: {}", stderr.trim());
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{what}: refusal does not mention {needle:?}\n{}",
            text(out)
        );
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn start() -> TestCluster {
    match TestCluster::start().await {
        Ok(cluster) => cluster,
        Err(e) => panic!("cannot start the test cluster: {e:#}"),
    }
}

#[tokio::test]
async fn harness_serves_client_and_kubectl_and_cleans_up_after_a_panic() {
    if cluster::skip_requested("harness_serves_client_and_kubectl_and_cleans_up_after_a_panic") {
        return;
    }
    // The cluster lives on its own thread and runtime so the test can observe what a panicking
    // test leaves behind.
    let (pids, dir) = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            bounded(async {
                let cluster = start().await;
                let pids = cluster.process_ids();
                let dir = cluster.dir().to_owned();
                assert_eq!(pids.len(), 2, "etcd and kube-apiserver");

                // The kube client has cluster-admin rights (RBAC is on).
                let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some("harness".into());
                cms.create(&PostParams::default(), &cm)
                    .await
                    .expect("create a ConfigMap");

                // kubectl sees the same cluster through the generated kubeconfig.
                let out = cluster
                    .kubectl(["get", "configmap", "harness", "-o", "name"])
                    .await
                    .expect("kubectl runs");
                assert_ok(&out, "kubectl get");
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "configmap/harness"
                );
                let out = cluster
                    .kubectl(["auth", "can-i", "*", "*", "--all-namespaces"])
                    .await
                    .expect("kubectl runs");
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");

                // Nothing is left behind even though this thread panics with the cluster alive.
                std::panic::panic_any((pids, dir));
            })
            .await;
        });
    })
    .join()
    .expect_err("the cluster thread panics on purpose")
    .downcast::<(Vec<u32>, PathBuf)>()
    .map(|b| *b)
    .unwrap_or_else(|other| std::panic::resume_unwind(other));

    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} outlived its TestCluster");
    }
    assert!(!dir.exists(), "{} outlived its TestCluster", dir.display());
}

#[tokio::test]
async fn crds_are_established_and_refuse_invalid_objects() {
    if cluster::skip_requested("crds_are_established_and_refuse_invalid_objects") {
        return;
    }
    bounded(async {
        let crds = crd_dir();
        assert!(
            crds.is_dir()
                && std::fs::read_dir(&crds)
                    .expect("read the CRD directory")
                    .next()
                    .is_some(),
            "no CRDs in {}: generate them first (crdgen)",
            crds.display()
        );
        let cluster = start().await;
        // kubectl needs a reachable API server even for a client-side dry run.
        let crd_arg = crds.display().to_string();
        let out = cluster
            .kubectl(["apply", "--dry-run=client", "-f", crd_arg.as_str()])
            .await
            .expect("kubectl runs");
        assert_ok(&out, "kubectl apply --dry-run=client of the CRDs");
        cluster.install_crds(&crds).await.expect("install the CRDs");

        // A valid LaneGroup is stored as written.
        let group = |mode: &str| {
            format!(
                "apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {{name: order-flow, namespace: default}}
spec:
  apps: [spring-cloud-a, spring-cloud-b, spring-cloud-c]
  entryApps: [spring-cloud-a]
  routingMode: {mode}
  tagHeader: x-mse-tag
"
            )
        };
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &group("Content"))
            .await
            .expect("kubectl runs");
        assert_ok(&out, "apply of a valid LaneGroup");
        let out = cluster
            .kubectl([
                "get",
                "lanegroup",
                "order-flow",
                "-o",
                "jsonpath={.spec.routingMode}",
            ])
            .await
            .expect("kubectl runs");
        assert_ok(&out, "get LaneGroup");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Content");

        // CEL transition rule: routingMode is immutable after creation.
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &group("Percentage"))
            .await
            .expect("kubectl runs");
        assert_refused(
            &out,
            "changing spec.routingMode",
            &["spec.routingMode", "immutable"],
        );

        // OpenAPI schema: a QPS threshold cannot be negative.
        let policy = |threshold: &str| {
            format!(
                "apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: greet, namespace: default}}
spec:
  app: spring-cloud-a
  rules:
  - name: greet1a
    match: {{paths: [{{exact: /greet1a}}], methods: [GET]}}
    qps: {{threshold: {threshold}, behavior: Reject}}
"
            )
        };
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &policy("-1"))
            .await
            .expect("kubectl runs");
        assert_refused(
            &out,
            "a negative qps threshold",
            &["spec.rules[0].qps.threshold"],
        );
        let out = cluster
            .kubectl(["get", "ratelimitpolicies", "-o", "name"])
            .await
            .expect("kubectl runs");
        assert_ok(&out, "list RateLimitPolicies");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "",
            "the refused policy must not be stored"
        );
        // Control: the same policy with a valid threshold is accepted, so the refusal above was
        // about the threshold and nothing else.
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], &policy("1"))
            .await
            .expect("kubectl runs");
        assert_ok(&out, "apply of the same policy with threshold 1");

        // CEL rules, as the API server evaluates them (cost budget included).
        let refusals = [
            (
                "a breaker ratio above 1",
                "kind: CircuitBreakerPolicy\nmetadata: {name: cb, namespace: default}\nspec: {app: c, rules: [{name: r, strategy: ErrorRatio, threshold: 1.5}]}",
                "ratio in (0, 1]",
            ),
            (
                "a path match with both exact and prefix",
                "kind: RateLimitPolicy\nmetadata: {name: paths, namespace: default}\nspec: {app: a, rules: [{name: r, match: {paths: [{exact: /a, prefix: /a}]}, qps: {threshold: 1}}]}",
                "exactly one of exact, prefix or regex",
            ),
            (
                "a Percentage condition over 100",
                "kind: Lane\nmetadata: {name: pct, namespace: default}\nspec: {group: order-flow, tag: gray, match: {conditions: [{source: Header, name: u, operator: Percentage, value: '150'}]}}",
                "integer `value` from 0 to 100",
            ),
            (
                "a cpuThreshold of 0",
                "kind: OverloadProtectionPolicy\nmetadata: {name: cpu, namespace: default}\nspec: {app: a, cpuThreshold: 0}",
                "cpuThreshold is a ratio in (0, 1]",
            ),
            (
                "more than 10 retries",
                "kind: TrafficPolicy\nmetadata: {name: tp, namespace: default}\nspec: {app: c, retries: {attempts: 11}}",
                "spec.retries.attempts",
            ),
            (
                "an unknown retryOn",
                "kind: TrafficPolicy\nmetadata: {name: tp, namespace: default}\nspec: {app: c, retries: {attempts: 1, retryOn: [sometimes]}}",
                "spec.retries.retryOn[0]",
            ),
            (
                "an unquoted YAML 1.1 boolean as overload mode",
                "kind: OverloadProtectionPolicy\nmetadata: {name: cpu, namespace: default}\nspec: {app: a, mode: On, cpuThreshold: 0.8}",
                "spec.mode",
            ),
        ];
        for (what, body, needle) in refusals {
            let doc = format!("apiVersion: lanemesh.io/v1alpha1\n{body}\n");
            let out = cluster
                .kubectl_stdin(["apply", "-f", "-"], &doc)
                .await
                .expect("kubectl runs");
            assert_refused(&out, what, &[needle]);
        }
    })
    .await;
}

/// Every manifest under `examples/` (what the README tells users to apply) is accepted as written.
#[tokio::test]
async fn examples_are_accepted_by_the_api_server() {
    if cluster::skip_requested("examples_are_accepted_by_the_api_server") {
        return;
    }
    bounded(async {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let examples = std::fs::canonicalize(&examples)
            .unwrap_or_else(|e| panic!("{}: {e}", examples.display()));
        let cluster = start().await;
        cluster
            .install_crds(&crd_dir())
            .await
            .expect("install the CRDs");
        // examples/gateway/ holds Gateway API objects: their published CRDs (vendored) check
        // them as a cluster with Gateway API would.
        cluster
            .install_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/gateway-api"))
            .await
            .expect("install the Gateway API CRDs");
        // kubectl applies files in path order and refuses an object whose namespace does not
        // exist yet, so create the namespaces the examples use first.
        for ns in namespaces_used(&examples) {
            let out = cluster
                .kubectl(["create", "namespace", &ns])
                .await
                .expect("kubectl runs");
            assert_ok(&out, &format!("create namespace {ns}"));
        }
        let out = cluster
            .kubectl([
                "apply".as_ref(),
                "-R".as_ref(),
                "-f".as_ref(),
                examples.as_os_str(),
            ])
            .await
            .expect("kubectl runs");
        assert_ok(&out, "kubectl apply -R -f examples/");
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    })
    .await;
}

/// `metadata.namespace` of every object in the YAML files under `dir`, except `default`.
fn namespaces_used(dir: &Path) -> BTreeSet<String> {
    let mut namespaces = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(
                std::fs::read_dir(&path)
                    .expect("read dir")
                    .map(|e| e.expect("dir entry").path()),
            );
            continue;
        }
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if let Some(ns) = value
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(serde_yaml::Value::as_str)
                .filter(|ns| *ns != "default")
            {
                namespaces.insert(ns.to_owned());
            }
        }
    }
    namespaces
}
