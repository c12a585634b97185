//! A local Kubernetes that runs pods: [`LocalCluster`] is a [`TestCluster`] (etcd and
//! kube-apiserver) plus kube-controller-manager, kube-scheduler, kube-proxy in iptables mode,
//! CoreDNS and `lanemesh-node`, a virtual-kubelet node that runs each pod as processes in a
//! network namespace on a bridge (`e2e/cluster/node/`). Root only: it creates namespaces, a
//! bridge and iptables rules on this machine.
//!
//! Addresses: pods get `10.244.0.0/24` behind the bridge `lm0` (`10.244.0.1`, the node's IP);
//! Services `10.96.0.0/16`; the API server listens on every address and advertises the bridge
//! IP, so pods reach it as the `kubernetes` Service through kube-proxy; cluster DNS is the
//! `kube-dns` Service `10.96.0.10`, served by CoreDNS on the bridge IP.
//!
//! kube-proxy's chains are global to the host, so one local cluster runs at a time: the
//! cluster holds an exclusive lock on [`LOCK_FILE`] for its lifetime and others wait for it.
//! Teardown (also after a panic) stops the node with SIGTERM (it stops every pod and removes
//! their namespaces and the bridge), kills the other components, removes kube-proxy's rules
//! with `kube-proxy --cleanup`, and then removes anything the node left behind.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process::{Started, Supervisor};
use super::{ApiOptions, Binaries, TestCluster, expect_success, logs_of};

/// Held (exclusive `flock`) while a local cluster runs.
pub const LOCK_FILE: &str = "/run/lock/lanemesh-local-cluster.lock";
/// The pod network and the node's address on it (the bridge's).
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The bridge the node creates.
pub const BRIDGE: &str = "lm0";
/// The `kube-dns` Service's cluster IP, in every pod's resolv.conf.
pub const DNS_IP: &str = "10.96.0.10";
pub const NODE_NAME: &str = "lanemesh-node";
/// Prefix of the network namespaces the node creates.
const NETNS_PREFIX: &str = "lm-";
/// How long the node gets to stop its pods on teardown.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// An image of the node's image table: what a container of that image runs.
#[derive(Debug, Clone)]
pub struct Image {
    /// Image reference without tag, e.g. `lanemesh/proxy`.
    pub name: String,
    /// The executable and its leading arguments (a container's `command` replaces it).
    pub entrypoint: Vec<String>,
    /// Default arguments (a container's `args` replace them).
    pub cmd: Vec<String>,
}

impl Image {
    pub fn new(name: &str, entrypoint: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: Vec::new(),
        }
    }
}

/// A running local cluster; dropping it tears everything down.
pub struct LocalCluster {
    // Field order is drop order; `Drop` stops the node before these go.
    api: TestCluster,
    processes: Supervisor,
    node: Started,
    kube_proxy: PathBuf,
    /// World-readable (pods run as other users): the node's state (volumes, logs) and the
    /// images' executables. Secrets of the API server stay in its private directory.
    shared: tempfile::TempDir,
    _lock: File,
}

impl LocalCluster {
    /// Starts every component with the binaries from [`Binaries::locate`] and `images` in the
    /// node's image table, and waits until the node is Ready and cluster DNS answers.
    pub async fn start(images: &[Image]) -> Result<Self> {
        let binaries = Binaries::locate()?;
        let lock = tokio::task::spawn_blocking(|| -> Result<File> {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(LOCK_FILE)
                .with_context(|| format!("opening {LOCK_FILE}"))?;
            file.lock()
                .with_context(|| format!("locking {LOCK_FILE}"))?;
            Ok(file)
        })
        .await??;
        remove_leftovers(&binaries.kube_proxy);

        let api = TestCluster::start_with_options(
            binaries.clone(),
            &ApiOptions {
                advertise: Some(NODE_IP),
                service_accounts: true,
            },
        )
        .await?;
        let dir = api.dir().to_owned();
        let kubeconfig = api.kubeconfig_path().to_owned();
        let mut processes = Supervisor::new()?;
        let kc = format!("--kubeconfig={}", kubeconfig.display());

        let shared = tempfile::Builder::new()
            .prefix("lanemesh-node-")
            .tempdir()
            .context("creating the node's directory")?;
        set_mode(shared.path(), 0o755)?;
        let images = install_images(shared.path(), images)?;
        let images_file = shared.path().join("images.yaml");
        std::fs::write(&images_file, image_table(&images))
            .with_context(|| format!("writing {}", images_file.display()))?;
        let node = processes.spawn(
            "lanemesh-node",
            &binaries.node,
            [
                kc.clone(),
                format!("--node-name={NODE_NAME}"),
                format!("--pod-cidr={POD_CIDR}"),
                format!("--bridge={BRIDGE}"),
                format!("--images={}", images_file.display()),
                format!("--state-dir={}", shared.path().join("state").display()),
                format!("--cluster-dns={DNS_IP}"),
                "--cluster-domain=cluster.local".to_owned(),
            ],
            &dir.join("lanemesh-node.log"),
        )?;
        let mut cluster = Self {
            api,
            processes,
            node,
            kube_proxy: binaries.kube_proxy.clone(),
            shared,
            _lock: lock,
        };
        cluster.start_components(&binaries, &kc).await?;
        Ok(cluster)
    }

    async fn start_components(&mut self, binaries: &Binaries, kc: &str) -> Result<()> {
        let dir = self.api.dir().to_owned();
        self.processes.spawn(
            "kube-controller-manager",
            &binaries.kube_controller_manager,
            [
                kc.to_owned(),
                format!(
                    "--service-account-private-key-file={}",
                    dir.join("sa.key").display()
                ),
                format!("--root-ca-file={}", dir.join("ca.crt").display()),
                "--leader-elect=false".to_owned(),
                // The node sets its own pod CIDR.
                "--allocate-node-cidrs=false".to_owned(),
                "--secure-port=0".to_owned(),
                "--use-service-account-credentials=false".to_owned(),
            ],
            &dir.join("kube-controller-manager.log"),
        )?;
        self.processes.spawn(
            "kube-scheduler",
            &binaries.kube_scheduler,
            [
                kc.to_owned(),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
            ],
            &dir.join("kube-scheduler.log"),
        )?;
        // It refuses port 0.
        let [healthz, metrics] = super::free_ports()?;
        self.processes.spawn(
            "kube-proxy",
            &binaries.kube_proxy,
            [
                kc.to_owned(),
                "--proxy-mode=iptables".to_owned(),
                format!("--hostname-override={NODE_NAME}"),
                format!("--cluster-cidr={POD_CIDR}"),
                // No conntrack sysctl tuning on a shared machine.
                "--conntrack-max-per-core=0".to_owned(),
                format!("--healthz-bind-address=127.0.0.1:{healthz}"),
                format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            ],
            &dir.join("kube-proxy.log"),
        )?;

        // Cluster DNS: CoreDNS on the node's address, published as the kube-dns Service.
        self.wait_for("the node's bridge address", || {
            std::process::Command::new("ip")
                .args(["-4", "addr", "show", "dev", BRIDGE])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&NODE_IP.to_string()))
        })
        .await?;
        let corefile = dir.join("Corefile");
        std::fs::write(
            &corefile,
            format!(
                ".:53 {{\n    bind {NODE_IP}\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }}\n    cache 5\n}}\n",
                self.api.kubeconfig_path().display()
            ),
        )?;
        self.processes.spawn(
            "coredns",
            &binaries.coredns,
            [format!("-conf={}", corefile.display())],
            &dir.join("coredns.log"),
        )?;
        let dns = format!(
            "apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_IP}
  ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-coredns
  namespace: kube-system
  labels: {{kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: lanemesh-e2e}}
addressType: IPv4
endpoints: [{{addresses: [\"{NODE_IP}\"], conditions: {{ready: true}}}}]
ports: [{{name: dns, port: 53, protocol: UDP}}, {{name: dns-tcp, port: 53, protocol: TCP}}]
"
        );
        expect_success(
            &self.api.kubectl_stdin(["apply", "-f", "-"], &dns).await?,
            "creating the kube-dns Service",
        )?;

        let api = &self.api;
        let node_ready = async || {
            api.kubectl([
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .await
            .is_ok_and(|o| o.stdout == b"True")
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !node_ready().await {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not Ready within {READY_TIMEOUT:?}\n{}",
                    self.log_tails(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The default service account exists once the controller-manager runs.
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self
            .api
            .kubectl(["get", "serviceaccount", "default", "-n", "default"])
            .await
            .is_ok_and(|o| o.status.success())
        {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "no default ServiceAccount within {READY_TIMEOUT:?}\n{}",
                    self.log_tails(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.check_alive()
    }

    async fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !check() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("no {what} within {READY_TIMEOUT:?}\n{}", self.log_tails(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn check_alive(&self) -> Result<()> {
        let exited = self.processes.exited()?;
        if let Some((name, status)) = exited.first() {
            bail!("{name} exited ({status})\n{}", self.log_tails(40));
        }
        Ok(())
    }

    /// The last `lines` lines of every component's log.
    pub fn log_tails(&self, lines: usize) -> String {
        format!(
            "{}\n{}",
            self.api.log_tails(lines),
            logs_of(self.processes.started(), lines)
        )
    }

    /// The API server and its helpers (kubectl, kubeconfig, client).
    pub fn api(&self) -> &TestCluster {
        &self.api
    }

    /// Runs `kubectl` against the cluster; see [`TestCluster::kubectl`].
    pub async fn kubectl<I, S>(&self, args: I) -> Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.api.kubectl(args).await
    }

    /// Runs a command inside the network namespace of pod `namespace/name` (as root, the host's
    /// filesystem): how a test plays a client inside the cluster.
    pub async fn exec_in_pod(
        &self,
        namespace: &str,
        name: &str,
        command: &[&str],
    ) -> Result<std::process::Output> {
        let netns = self.pod_netns(namespace, name).await?;
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(command)
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .context("command in pod did not finish within 60 s")?
            .context("running ip netns exec")
    }

    /// The node's directory: its state (pods' volumes and logs) and the images' executables.
    pub fn node_dir(&self) -> &Path {
        self.shared.path()
    }

    /// The network namespace the node made for a pod: `lm-` and the first 12 hex digits of its
    /// UID.
    pub async fn pod_netns(&self, namespace: &str, name: &str) -> Result<String> {
        let out = self
            .kubectl([
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .await?;
        expect_success(&out, "reading the pod's UID")?;
        let uid = String::from_utf8_lossy(&out.stdout).replace('-', "");
        let netns = format!("{NETNS_PREFIX}{}", uid.get(..12).unwrap_or(&uid));
        if !Path::new("/run/netns").join(&netns).exists() {
            bail!("pod {namespace}/{name} has no network namespace {netns}");
        }
        Ok(netns)
    }
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("api", &self.api)
            .field("node_dir", &self.shared.path())
            .field("processes", &self.processes.started())
            .finish_non_exhaustive()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "local cluster torn down after a panic; last log lines:\n{}",
                self.log_tails(30)
            );
        }
        // The node first, gracefully, while the API server still answers: it stops every pod.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.node.pid.to_string()])
            .status();
        let deadline = Instant::now() + NODE_STOP_TIMEOUT;
        while Instant::now() < deadline {
            let gone = self
                .processes
                .exited()
                .map(|e| e.iter().any(|(name, _)| name == "lanemesh-node"))
                .unwrap_or(true);
            if gone {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.processes.shutdown();
        remove_leftovers(&self.kube_proxy);
    }
}

/// Removes what a crashed run could have left: kube-proxy's chains, the node's namespaces and
/// bridge. Best effort; [`leftovers`] reports what remains.
fn remove_leftovers(kube_proxy: &Path) {
    let _ = std::process::Command::new(kube_proxy)
        .arg("--cleanup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    for netns in lanemesh_netns() {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &netns])
            .status();
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", BRIDGE])
            .status();
    }
}

fn lanemesh_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// What a local cluster left on this machine: its network namespaces, bridge and kube-proxy
/// chains. Empty after a clean teardown (tests assert it).
pub fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = lanemesh_netns()
        .into_iter()
        .map(|n| format!("network namespace {n}"))
        .collect();
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        found.push(format!("bridge {BRIDGE}"));
    }
    if let Ok(out) = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
    {
        let rules = String::from_utf8_lossy(&out.stdout);
        if rules.lines().any(|l| l.starts_with(":KUBE-SERVICES")) {
            found.push("iptables chain KUBE-SERVICES".to_owned());
        }
    }
    found
}

/// Copies each image's executable (an absolute path, e.g. a binary in the Cargo target under
/// `/root`) into `dir/images/<name>/` so a container running as any user can run it.
fn install_images(dir: &Path, images: &[Image]) -> Result<Vec<Image>> {
    images
        .iter()
        .map(|image| {
            let mut image = image.clone();
            if let Some(program) = image.entrypoint.first_mut()
                && Path::new(program.as_str()).is_absolute()
            {
                let source = PathBuf::from(program.as_str());
                let target_dir = dir.join("images").join(image.name.replace('/', "_"));
                std::fs::create_dir_all(&target_dir)?;
                set_mode(&dir.join("images"), 0o755)?;
                set_mode(&target_dir, 0o755)?;
                let file_name = source
                    .file_name()
                    .with_context(|| format!("image {}: no file name in {program}", image.name))?;
                let target = target_dir.join(file_name);
                std::fs::copy(&source, &target).with_context(|| {
                    format!("image {}: copying {}", image.name, source.display())
                })?;
                set_mode(&target, 0o755)?;
                *program = target.display().to_string();
            }
            Ok(image)
        })
        .collect()
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Whether this process runs as root, which the local cluster needs.
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The node's image table (YAML).
fn image_table(images: &[Image]) -> String {
    let list = |items: &[String]| {
        let quoted: Vec<String> = items
            .iter()
            .map(|s| serde_json::Value::String(s.clone()).to_string())
            .collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut yaml = String::from("images:\n");
    for image in images {
        yaml.push_str(&format!(
            "  {}: {{entrypoint: {}, cmd: {}}}\n",
            serde_json::Value::String(image.name.clone()),
            list(&image.entrypoint),
            list(&image.cmd)
        ));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_table_is_yaml_with_quoted_strings() {
        let table = image_table(&[
            Image::new("lanemesh/proxy", &["/bin/lanemesh-proxy"]),
            Image {
                cmd: vec!["-m".into(), "http.server".into()],
                ..Image::new("python", &["python3"])
            },
        ]);
        assert_eq!(
            table,
            "images:\n  \"lanemesh/proxy\": {entrypoint: [\"/bin/lanemesh-proxy\"], cmd: []}\n  \"python\": {entrypoint: [\"python3\"], cmd: [\"-m\", \"http.server\"]}\n"
        );
    }
}
