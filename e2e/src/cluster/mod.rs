//! A throwaway Kubernetes control plane for tests: real `etcd` and `kube-apiserver` processes on
//! loopback, with no controller-manager, scheduler or kubelet.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use lanemesh_e2e::cluster::TestCluster;
//! let cluster = TestCluster::start().await?;
//! let out = cluster.kubectl(["get", "namespaces"]).await?;
//! assert!(out.status.success());
//! let client = cluster.client(); // a kube::Client with cluster-admin rights
//! # drop(client); Ok(()) }
//! ```
//!
//! The binaries come from `e2e/cluster/build.sh` (see [`Binaries`]). Everything else (certificates,
//! tokens, etcd data, logs) lives in a temporary directory that is removed, together with the
//! processes, when the [`TestCluster`] is dropped — also when the test panics.
//!
//! Because nothing but the API server runs, objects are stored and validated (OpenAPI schema, CEL,
//! admission) but never acted on: no pods start, no service accounts or tokens are created.

mod binaries;
pub mod local;
pub mod mesh;
mod pki;
mod process;

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tempfile::TempDir;

pub use binaries::Binaries;
pub use local::{Image, LocalCluster, is_root, leftovers};
pub use mesh::{LocalMesh, local_mesh_test};
pub use pki::ServingPki;
use process::{Started, Supervisor};

/// How the API server is run.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// Listen on every address and advertise this one (the `kubernetes` Service's endpoint, and
    /// a name in the serving certificate): what pods in network namespaces reach. Default:
    /// loopback only, no `kubernetes` endpoint.
    pub advertise: Option<Ipv4Addr>,
    /// Enforce the ServiceAccount admission plugin (pods get a service account and its token
    /// volume); only with a controller-manager that creates the `default` accounts.
    pub service_accounts: bool,
}

/// Set to `1` to skip tests that need a [`TestCluster`] (see [`skip_requested`]).
pub const SKIP_ENV: &str = "LANEMESH_SKIP_CLUSTER";
/// Set to `1` to keep the cluster's temporary directory (logs, certificates) after the test.
pub const KEEP_DIR_ENV: &str = "LANEMESH_KEEP_CLUSTER_DIR";

/// Service CIDR given to the API server; its first address is the `kubernetes` Service.
const SERVICE_CIDR: &str = "10.96.0.0/16";
const FIRST_SERVICE_IP: &str = "10.96.0.1";

const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous: startup takes ~3 s on an idle 2-core machine, but parallel tests and builds
/// competing for the cores stretch it a lot.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts when a picked port was grabbed by someone else before the process bound it.
const START_ATTEMPTS: usize = 3;
const DIR_PREFIX: &str = "lanemesh-cluster-";
/// Holds the pid of the test process that owns a cluster directory; see [`sweep_stale_dirs`].
const OWNER_FILE: &str = "owner.pid";

/// Whether the API server tier should be skipped: only when [`SKIP_ENV`]`=1`. Prints why, so a
/// skipped test is visible in the output instead of passing silently.
pub fn skip_requested(test: &str) -> bool {
    let skip = std::env::var(SKIP_ENV).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: {SKIP_ENV}=1 (needs a local kube-apiserver)");
    }
    skip
}

/// A running etcd + kube-apiserver pair; dropping it stops both and deletes their data.
pub struct TestCluster {
    // Field order is drop order: processes die before their directory is removed.
    processes: Supervisor,
    client: Client,
    binaries: Binaries,
    server: String,
    kubeconfig: PathBuf,
    kubectl_cache: PathBuf,
    dir: Option<TempDir>,
}

impl TestCluster {
    /// Starts a cluster with the binaries from [`Binaries::locate`] and waits until it serves
    /// requests (`/readyz` ok and the `default` namespace exists).
    pub async fn start() -> Result<Self> {
        Self::start_with(Binaries::locate()?).await
    }

    /// Like [`TestCluster::start`] with explicit binaries.
    pub async fn start_with(binaries: Binaries) -> Result<Self> {
        Self::start_with_options(binaries, &ApiOptions::default()).await
    }

    /// Like [`TestCluster::start_with`], with the API server configured by `options`.
    pub async fn start_with_options(binaries: Binaries, options: &ApiOptions) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::try_start(binaries.clone(), options).await {
                Ok(cluster) => return Ok(cluster),
                Err(Start::PortTaken(e)) if attempt < START_ATTEMPTS => {
                    tracing::warn!("test cluster: port taken, retrying: {e:#}");
                    attempt += 1;
                }
                Err(Start::PortTaken(e) | Start::Failed(e)) => return Err(e),
            }
        }
    }

    async fn try_start(binaries: Binaries, options: &ApiOptions) -> Result<Self, Start> {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("creating the cluster directory")?;
        let root = dir.path().to_owned();
        std::fs::write(root.join(OWNER_FILE), std::process::id().to_string())?;
        let advertised: Vec<String> = options.advertise.iter().map(|ip| ip.to_string()).collect();
        let pki = pki::write(&root, FIRST_SERVICE_IP, &advertised)?;
        let [etcd_client, etcd_peer, apiserver_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = root.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki.ca_cert, &pki.admin_token)?;

        let mut processes = Supervisor::new()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_data = root.join("etcd-data");
        let etcd_args: Vec<String> = vec![
            "--name=lanemesh-test".into(),
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=lanemesh-test={peer_url}"),
            // Durability is pointless for data deleted after the test, and fsync dominates
            // API server write latency on CI disks.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let etcd = processes.spawn("etcd", &binaries.etcd, &etcd_args, &root.join("etcd.log"))?;
        wait_for_tcp(&processes, &etcd, etcd_client, ETCD_READY_TIMEOUT).await?;

        let mut apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={apiserver_port}"),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            // Lets tests add x509 client identities signed by the same CA later.
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", pki.token_file.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_signing_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // Injected pods carry a privileged iptables init container.
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        match options.advertise {
            // Pods reach it as the `kubernetes` Service, whose endpoint is this address.
            Some(ip) => apiserver_args.extend([
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={ip}"),
            ]),
            None => apiserver_args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // The endpoint reconciler would publish the advertise address as the
                // `kubernetes` Service's endpoint, and Endpoints refuse loopback addresses (an
                // error every 10 s).
                "--endpoint-reconciler-type=none".into(),
            ]),
        }
        if !options.service_accounts {
            // The ServiceAccount plugin rejects pods until the controller-manager has created
            // each namespace's `default` service account.
            apiserver_args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        let apiserver = processes.spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &apiserver_args,
            &root.join("kube-apiserver.log"),
        )?;

        let client = client_from_kubeconfig(&kubeconfig).await?;
        wait_until_serving(&processes, &apiserver, &client).await?;

        let kubectl_cache = root.join("kubectl-cache");
        let dir = Some(dir);
        tracing::info!(%server, dir = %root.display(), "test cluster ready");
        Ok(Self {
            processes,
            client,
            binaries,
            server,
            kubeconfig,
            kubectl_cache,
            dir,
        })
    }

    /// A client authenticated as a member of `system:masters` (bypasses RBAC).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A kubeconfig for the admin identity, usable by `kubectl --kubeconfig` and by
    /// [`kube::Config::from_custom_kubeconfig`]. Default namespace: `default`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig (written into the cluster's directory as `kubeconfig-<name>`) that
    /// authenticates with `token`, e.g. a ServiceAccount's from `kubectl create token`, so a
    /// binary runs with exactly that account's RBAC.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir().join(format!("kubeconfig-{name}"));
        write_kubeconfig(&path, &self.server, &self.dir().join("ca.crt"), token)?;
        Ok(path)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The cluster's temporary directory: certificates, kubeconfig, etcd data and the
    /// `etcd.log` / `kube-apiserver.log` files.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), TempDir::path)
    }

    /// The binaries this cluster runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Process ids of etcd and kube-apiserver, for tests that check the teardown.
    pub fn process_ids(&self) -> Vec<u32> {
        self.processes.started().iter().map(|s| s.pid).collect()
    }

    /// Runs the cached `kubectl` against this cluster and returns its output, whatever the exit
    /// status. Errors only when kubectl cannot be run or exceeds a 2-minute deadline.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_kubectl(args, None).await
    }

    /// Like [`TestCluster::kubectl`], feeding `stdin` (typically YAML for `-f -`).
    pub async fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_kubectl(args, Some(stdin)).await
    }

    /// Applies every manifest in `path` (a file or directory of CustomResourceDefinitions) and
    /// waits until all of them are `Established`, so their resources can be used at once.
    pub async fn install_crds(&self, path: &Path) -> Result<()> {
        // kubectl does not follow a symlinked directory.
        let path =
            std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        let path = path.as_os_str();
        // Server-side apply: client-side apply stores the whole object in an annotation, which
        // large CRD schemas overflow (256 KiB limit).
        expect_success(
            &self
                .kubectl([
                    OsStr::new("apply"),
                    "--server-side".as_ref(),
                    "-f".as_ref(),
                    path,
                ])
                .await?,
            "kubectl apply of the CRDs",
        )?;
        expect_success(
            &self
                .kubectl([
                    OsStr::new("wait"),
                    "--for=condition=Established".as_ref(),
                    "--timeout=60s".as_ref(),
                    "-f".as_ref(),
                    path,
                ])
                .await?,
            "waiting for the CRDs to be Established",
        )?;
        Ok(())
    }

    async fn run_kubectl<I, S>(&self, args: I, stdin: Option<&str>) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use tokio::io::AsyncWriteExt;

        let mut command = tokio::process::Command::new(&self.binaries.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            // Per-cluster discovery cache: the default (~/.kube/cache) would be shared between
            // clusters that reuse a port and could serve stale CRD discovery.
            .arg("--cache-dir")
            .arg(&self.kubectl_cache)
            .args(args)
            // Keep the developer's ~/.kube/kuberc aliases and defaults out of the tests.
            .env("KUBERC", "off")
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("running {}", self.binaries.kubectl.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
            // Dropping the pipe sends EOF.
        }
        tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output())
            .await
            .context("kubectl did not finish within 2 minutes")?
            .context("waiting for kubectl")
    }

    fn log_tails(&self, lines: usize) -> String {
        logs_of(self.processes.started(), lines)
    }
}

impl std::fmt::Debug for TestCluster {
    // kube::Client is not Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("server", &self.server)
            .field("dir", &self.dir())
            .field("processes", &self.processes.started())
            .finish_non_exhaustive()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test cluster at {} torn down after a panic; last log lines:\n{}",
                self.server,
                self.log_tails(30)
            );
        }
        self.processes.shutdown();
        if std::env::var(KEEP_DIR_ENV).is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            // Not stale: the developer asked to keep it.
            let _ = std::fs::remove_file(dir.path().join(OWNER_FILE));
            eprintln!("test cluster directory kept: {}", dir.keep().display());
        }
    }
}

/// Removes the directories of clusters whose test process died without running `Drop` (SIGKILL,
/// abort): their processes are gone (parent-death signal) but etcd data would pile up in /tmp.
/// Directories without an owner file are being created right now, or were kept on purpose.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let path = entry.path();
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Why a start attempt failed; only a lost port race is worth retrying.
enum Start {
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Start {
    fn from(e: anyhow::Error) -> Self {
        if format!("{e:#}").contains("address already in use") {
            Start::PortTaken(e)
        } else {
            Start::Failed(e)
        }
    }
}

impl From<std::io::Error> for Start {
    fn from(e: std::io::Error) -> Self {
        Start::Failed(e.into())
    }
}

fn expect_success(out: &Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Ports the OS considers free now. Another process may take one before etcd or the API server
/// binds it; [`Start::PortTaken`] covers that race.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    // Held together so the OS cannot hand out the same port twice.
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free loopback ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, token: &str) -> Result<()> {
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: lanemesh-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: lanemesh-admin
  user:
    token: {token}
contexts:
- name: lanemesh-test
  context:
    cluster: lanemesh-test
    user: lanemesh-admin
    namespace: default
current-context: lanemesh-test
",
        ca = ca.display()
    );
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the generated kubeconfig")?;
    Client::try_from(config).context("building the kube client")
}

fn logs_of(started: &[Started], lines: usize) -> String {
    started
        .iter()
        .map(|s| {
            format!(
                "----- {} (pid {}, {}) -----\n{}",
                s.name,
                s.pid,
                s.log.display(),
                process::tail(&s.log, lines)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails with the logs when any child has exited.
fn check_alive(processes: &Supervisor) -> Result<()> {
    let exited = processes.exited()?;
    if let Some((name, status)) = exited.first() {
        bail!(
            "{name} exited during startup ({status})\n{}",
            logs_of(processes.started(), 40)
        );
    }
    Ok(())
}

async fn wait_for_tcp(
    processes: &Supervisor,
    etcd: &Started,
    port: u16,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        check_alive(processes)?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {addr} within {timeout:?}\n{}",
                etcd.name,
                logs_of(processes.started(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_serving(
    processes: &Supervisor,
    apiserver: &Started,
    client: &Client,
) -> Result<()> {
    let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
    loop {
        check_alive(processes)?;
        let Err(last_error) = ready_once(client).await else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!(
                "{} not ready within {APISERVER_READY_TIMEOUT:?}; last probe: {last_error:#}\n{}",
                apiserver.name,
                logs_of(processes.started(), 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `/readyz` alone is not enough: the `default` namespace is created by a bootstrap controller
/// after readiness, and creating objects in it fails until then.
async fn ready_once(client: &Client) -> Result<()> {
    let probe = async {
        let readyz = client
            .request_text(http::Request::get("/readyz").body(Vec::new())?)
            .await?;
        if readyz.trim() != "ok" {
            bail!("/readyz: {readyz}");
        }
        Api::<Namespace>::all(client.clone())
            .get("default")
            .await
            .context("namespace default")?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .context("probe timed out")?
}
