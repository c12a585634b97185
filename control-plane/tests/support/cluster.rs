//! The control plane against a real kube-apiserver (`lanemesh_e2e::cluster`):
//! an in-process pilot on the `kubernetes` source, pods made with kube-rs
//! (no kubelet runs, so the test sets their status), and polling helpers.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use lanemesh_api::proto::DeltaDiscoveryResponse;
use lanemesh_control_plane::run::ControlPlane;
use lanemesh_control_plane::source::kubernetes::KubernetesSource;
use lanemesh_control_plane::status::LeaseConfig;
use lanemesh_e2e::cluster::TestCluster;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use super::Versions;

/// How long a cluster-side effect may take to show.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(20);

/// Starts a cluster with the lanemesh CRDs installed and `yaml` applied.
pub async fn cluster_with(yaml: &str) -> TestCluster {
    let cluster = TestCluster::start().await.unwrap();
    cluster
        .install_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh/crds"))
        .await
        .unwrap();
    apply(&cluster, yaml).await;
    cluster
}

/// `kubectl apply -f -`, which must succeed.
pub async fn apply(cluster: &TestCluster, yaml: &str) {
    let out = cluster
        .kubectl_stdin(["apply", "-f", "-"], yaml)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pilot on the `kubernetes` source with real listeners on 127.0.0.1.
pub struct Pilot {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub plane: ControlPlane,
}

impl Pilot {
    /// `grpc`: an address to reuse (a restart), else a free port.
    pub async fn start(
        client: Client,
        lease: Option<LeaseConfig>,
        grpc: Option<SocketAddr>,
    ) -> Self {
        let grpc = TcpListener::bind(grpc.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let source = KubernetesSource::new(client.clone());
        let mut plane = ControlPlane::start(
            move |tx| source.run(tx),
            grpc,
            admin,
            Duration::from_millis(50),
        );
        if let Some(lease) = lease {
            plane.start_status_writer(client, lease);
        }
        Self {
            grpc: grpc_addr,
            admin: admin_addr,
            plane,
        }
    }

    /// The sum of a metric's samples whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_sum(&self.plane.metrics.render(), prefix)
    }

    pub async fn stop(self) {
        self.plane.stop(Duration::from_secs(5)).await;
    }
}

pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A short lease so that takeovers happen within a test.
pub fn short_lease(name: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        identity: identity.to_owned(),
        duration: Duration::from_secs(2),
        grace: Duration::from_secs(1),
    }
}

pub async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    api.get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// Polls `name` until `f` holds; returns the object.
pub async fn wait_object<K>(api: &Api<K>, name: &str, what: &str, f: impl Fn(&K) -> bool) -> K
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
    loop {
        let last = api.get_opt(name).await.unwrap();
        if let Some(o) = &last
            && f(o)
        {
            return o.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `f` holds.
pub async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a governed pod and marks it running and ready, as a kubelet would.
pub async fn ready_pod(
    client: &Client,
    ns: &str,
    name: &str,
    app: &str,
    tag: Option<&str>,
    ip: &str,
) {
    let mut labels = serde_json::json!({"app": app, "msePilotAutoEnable": "on"});
    if let Some(tag) = tag {
        labels["alicloud.service.tag"] = tag.into();
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }))
    .unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &pod).await.unwrap();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

pub async fn delete_pod(client: &Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // Unscheduled pods go at once; grace 0 makes sure of it.
    api.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// What a sidecar holds: per type, name -> (version, resource), updated by
/// each response as the real sidecar does.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Held(pub HashMap<String, HashMap<String, (String, prost_types::Any)>>);

impl Held {
    pub fn apply(&mut self, r: &DeltaDiscoveryResponse) {
        let of_type = self.0.entry(r.type_url.clone()).or_default();
        for name in &r.removed_resources {
            of_type.remove(name);
        }
        for res in &r.resources {
            of_type.insert(
                res.name.clone(),
                (
                    res.version.clone(),
                    res.resource.clone().unwrap_or_default(),
                ),
            );
        }
    }

    pub fn versions(&self) -> Versions {
        self.0
            .iter()
            .map(|(t, m)| {
                (
                    t.clone(),
                    m.iter().map(|(n, (v, _))| (n.clone(), v.clone())).collect(),
                )
            })
            .collect()
    }

    pub fn names(&self, type_url: &str) -> Vec<String> {
        let mut n: Vec<String> = self
            .0
            .get(type_url)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        n.sort();
        n
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&prost_types::Any> {
        self.0.get(type_url)?.get(name).map(|(_, any)| any)
    }
}
