//! Locating the binaries `e2e/cluster/build.sh` builds: the Kubernetes components, etcd, helm,
//! CoreDNS and `lanemesh-node`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The script that builds the binaries; named in every "not found" error.
pub(crate) const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/build.sh");

/// Absolute paths of the binaries the cluster tier runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `etcd` (from `go.etcd.io/etcd/server/v3`).
    pub etcd: PathBuf,
    /// `kube-apiserver` (from `k8s.io/kubernetes/cmd/kube-apiserver`).
    pub kube_apiserver: PathBuf,
    /// `kubectl` (from `k8s.io/kubernetes/cmd/kubectl`); used instead of any `kubectl` on `PATH`
    /// so the client version always matches the server.
    pub kubectl: PathBuf,
    /// `helm` (from `helm.sh/helm/v4/cmd/helm`), for the chart's tests.
    pub helm: PathBuf,
    /// `kube-controller-manager`, `kube-scheduler` and `kube-proxy` (from `k8s.io/kubernetes/cmd`),
    /// for the [`LocalCluster`](super::LocalCluster).
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kube_proxy: PathBuf,
    /// `coredns` (from `github.com/coredns/coredns`): cluster DNS.
    pub coredns: PathBuf,
    /// `lanemesh-node` (from `e2e/cluster/node`): the virtual-kubelet node that runs pods.
    pub node: PathBuf,
}

impl Binaries {
    /// `helm` with its caches and config in `home` (never the user's).
    pub fn helm_command(&self, home: &Path) -> std::process::Command {
        let mut command = std::process::Command::new(&self.helm);
        command
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        command
    }

    /// The directory `build.sh` writes to: `$LANEMESH_CACHE/bin`, by default
    /// `$HOME/.cache/lanemesh/bin`.
    pub fn default_dir() -> Result<PathBuf> {
        if let Some(cache) = std::env::var_os("LANEMESH_CACHE").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(cache).join("bin"));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(PathBuf::from(home).join(".cache/lanemesh/bin")),
            None => {
                bail!("neither LANEMESH_CACHE nor HOME is set; cannot find the cluster binaries")
            }
        }
    }

    /// Finds the binaries in [`Binaries::default_dir`].
    pub fn locate() -> Result<Self> {
        Self::in_dir(&Self::default_dir()?)
    }

    /// Finds the binaries in `dir`, failing with instructions when any is missing. Building them
    /// here instead is not an option: the first build takes tens of minutes.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kubectl: dir.join("kubectl"),
            helm: dir.join("helm"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kube_scheduler: dir.join("kube-scheduler"),
            kube_proxy: dir.join("kube-proxy"),
            coredns: dir.join("coredns"),
            node: dir.join("lanemesh-node"),
        };
        let missing: Vec<String> = [
            &bins.etcd,
            &bins.kube_apiserver,
            &bins.kubectl,
            &bins.helm,
            &bins.kube_controller_manager,
            &bins.kube_scheduler,
            &bins.kube_proxy,
            &bins.coredns,
            &bins.node,
        ]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
        if !missing.is_empty() {
            bail!(
                "local cluster binaries not found: {}\n\
                 build them once (about 20 min on 2 cores, cached afterwards) with:\n    {BUILD_SCRIPT}\n\
                 or set LANEMESH_SKIP_CLUSTER=1 to skip the API server tests",
                missing.join(", ")
            );
        }
        Ok(bins)
    }
}
