//! lanemesh installed on a [`LocalCluster`] the way a user installs it: `helm install` of
//! `charts/lanemesh`, with the node's image table mapping the chart's and the examples' images to
//! the built binaries and demo apps. Shared by the local-cluster tests and `make cluster-demo`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::local::{Image, LocalCluster};

/// Where `e2e/apps/build.sh` puts the demo apps: `$LANEMESH_CACHE/apps`.
pub fn demo_apps_dir() -> Result<PathBuf> {
    Ok(super::Binaries::default_dir()?
        .parent()
        .context("the binaries directory has no parent")?
        .join("apps"))
}

/// Where `context/build.sh` puts the context payloads: `$LANEMESH_CACHE/context`.
pub fn context_dir() -> Result<PathBuf> {
    Ok(demo_apps_dir()?
        .parent()
        .context("the apps directory has no parent")?
        .join("context"))
}

/// The images the chart and the examples use: `lanemesh/pilot` and `lanemesh/proxy` run the
/// given binaries, `lanemesh/demo-{go,go-otel,java,python}` the demo apps,
/// `lanemesh/context-{java,python}` copy the context payloads, `python` is the host's python3.
pub fn mesh_images(pilot: &Path, proxy: &Path) -> Result<Vec<Image>> {
    let apps = demo_apps_dir()?;
    let mut images = vec![
        Image::new("lanemesh/pilot", &[&pilot.display().to_string()]),
        Image::new("lanemesh/proxy", &[&proxy.display().to_string()]),
    ];
    for lang in ["go", "java", "python"] {
        let path = apps.join(format!("demo-{lang}"));
        if !path.is_file() {
            bail!(
                "{} missing: build the demo apps with e2e/apps/build.sh",
                path.display()
            );
        }
        images.push(Image::new(
            &format!("lanemesh/demo-{lang}"),
            &[&path.display().to_string()],
        ));
    }
    let go_otel = apps.join("demo-go-otel");
    if !go_otel.is_file() {
        bail!(
            "{} missing: build the demo apps with e2e/apps/build.sh",
            go_otel.display()
        );
    }
    images.push(Image::new(
        "lanemesh/demo-go-otel",
        &[&go_otel.display().to_string()],
    ));
    // The context images' contract: copy the payload into the directory given (context/).
    let context = context_dir()?;
    for lang in ["java", "python"] {
        let payload = context.join(lang);
        if !payload.is_dir() {
            bail!(
                "{} missing: build the context payloads with context/build.sh",
                payload.display()
            );
        }
        images.push(Image::new(
            &format!("lanemesh/context-{lang}"),
            &["cp", "-RT", &payload.display().to_string()],
        ));
    }
    images.push(Image::new("python", &["python3"]));
    Ok(images)
}

/// A local cluster with lanemesh installed by its Helm chart; dropping it tears it all down.
#[derive(Debug)]
pub struct LocalMesh {
    // Field order is drop order: the cluster goes first, then helm's scratch home.
    cluster: LocalCluster,
    _helm_home: tempfile::TempDir,
}

impl LocalMesh {
    /// Starts a local cluster with [`mesh_images`] and runs the README's install command
    /// (`helm install lanemesh charts/lanemesh -n lanemesh-system --create-namespace`), waiting
    /// until the pilot is ready.
    pub async fn install(pilot: &Path, proxy: &Path) -> Result<Self> {
        let cluster = LocalCluster::start(&mesh_images(pilot, proxy)?).await?;
        let helm_home = tempfile::tempdir().context("creating helm's home")?;
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh");
        let mut helm = cluster.api().binaries().helm_command(helm_home.path());
        helm.args(["install", "lanemesh"])
            .arg(&chart)
            .args([
                "-n",
                "lanemesh-system",
                "--create-namespace",
                "--wait",
                "--timeout",
                "5m",
            ])
            .arg("--kubeconfig")
            .arg(cluster.api().kubeconfig_path());
        let out = tokio::task::spawn_blocking(move || helm.output())
            .await?
            .context("running helm")?;
        let mesh = Self {
            cluster,
            _helm_home: helm_home,
        };
        if !out.status.success() {
            bail!(
                "helm install: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                mesh.diagnostics("lanemesh-system").await
            );
        }
        Ok(mesh)
    }

    /// The cluster lanemesh runs on.
    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    /// Runs kubectl and returns its stdout; a failure is an error with stderr.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.cluster.kubectl(&args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}{}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of `yaml`; returns kubectl's report.
    pub async fn apply(&self, yaml: &str) -> Result<String> {
        let out = self
            .cluster
            .api()
            .kubectl_stdin(["apply", "-f", "-"], yaml)
            .await?;
        if !out.status.success() {
            bail!(
                "kubectl apply: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f` of a file of the checkout (relative to its root, e.g.
    /// `examples/canary/apps.yaml`).
    pub async fn apply_file(&self, path: &str) -> Result<String> {
        let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        let yaml = std::fs::read_to_string(&full)
            .with_context(|| format!("reading {}", full.display()))?;
        self.apply(&yaml).await.with_context(|| path.to_owned())
    }

    /// Waits until Deployment `namespace/name` is rolled out; on timeout the error carries the
    /// pods, the pilot's log and the sidecars' logs of the namespace.
    pub async fn rollout(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let out = self
            .cluster
            .kubectl([
                "rollout",
                "status",
                &format!("deployment/{name}"),
                "-n",
                namespace,
                &format!("--timeout={}s", timeout.as_secs()),
            ])
            .await?;
        if !out.status.success() {
            bail!(
                "deployment {namespace}/{name} not rolled out: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics(namespace).await
            );
        }
        Ok(())
    }

    /// Waits until Job `namespace/name` completes; on timeout the error carries the
    /// [`LocalMesh::diagnostics`] of the namespace (the Job's pod log among them).
    pub async fn wait_job(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        let waited = self
            .kubectl([
                "wait",
                "-n",
                namespace,
                "--for=condition=complete",
                &format!("job/{name}"),
                &format!("--timeout={}s", timeout.as_secs()),
            ])
            .await;
        if let Err(e) = waited {
            bail!("{e:#}\n{}", self.diagnostics(namespace).await);
        }
        Ok(())
    }

    /// The names of the pods matching `selector` in `namespace`, Running and not terminating.
    pub async fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<String>> {
        let out = self
            .kubectl(["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])
            .await?;
        let list: serde_json::Value =
            serde_json::from_str(&out).context("decoding the pod list")?;
        let items = list["items"].as_array().context("a pod list has items")?;
        Ok(items
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// What an operator looks at when something does not start: every pod, the pilot's log, the
    /// last lines of each container in `namespace`, and the components' logs.
    pub async fn diagnostics(&self, namespace: &str) -> String {
        let text = |out: Result<std::process::Output>| match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("{e:#}"),
        };
        let mut report = format!(
            "pods:\n{}\npilot:\n{}",
            text(
                self.cluster
                    .kubectl(["get", "pods", "-A", "-o", "wide"])
                    .await
            ),
            text(
                self.cluster
                    .kubectl([
                        "logs",
                        "-n",
                        "lanemesh-system",
                        "deploy/lanemesh-pilot",
                        "--tail=30",
                    ])
                    .await
            ),
        );
        if let Ok(out) = self
            .cluster
            .kubectl([
                "get",
                "pods",
                "-n",
                namespace,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
            ])
            .await
        {
            for pod in String::from_utf8_lossy(&out.stdout).lines() {
                let logs = self
                    .cluster
                    .kubectl([
                        "logs",
                        "-n",
                        namespace,
                        pod,
                        "--all-containers",
                        "--prefix",
                        "--tail=15",
                    ])
                    .await;
                report.push_str(&format!("\n{pod}:\n{}", text(logs)));
            }
        }
        report.push('\n');
        report.push_str(&self.cluster.log_tails(20));
        report
    }
}

/// The frame of a local-cluster test: returns at once when the test is skipped
/// ([`super::skip_requested`]), requires root, builds the lanemesh binaries, installs them with
/// [`LocalMesh::install`], runs `body` on the mesh within `timeout`, and checks that dropping the
/// mesh (which `body` owns) left nothing behind.
pub async fn local_mesh_test<F, Fut>(test: &str, timeout: Duration, body: F)
where
    F: FnOnce(LocalMesh) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if super::skip_requested(test) {
        return;
    }
    assert!(
        super::is_root(),
        "the local cluster tier needs root (network namespaces, iptables); run as root or set {}=1",
        super::SKIP_ENV
    );
    let run = async {
        let bins = tokio::task::spawn_blocking(|| {
            crate::process::lanemesh_binaries(Duration::from_secs(15 * 60))
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|built| built.map_err(anyhow::Error::from));
        let bins = match bins {
            Ok(bins) => bins,
            Err(e) => panic!("building the lanemesh binaries: {e:#}"),
        };
        let mesh = match LocalMesh::install(&bins.pilot, &bins.proxy).await {
            Ok(mesh) => mesh,
            Err(e) => panic!("installing lanemesh on the local cluster: {e:#}"),
        };
        body(mesh).await;
        assert_eq!(
            super::leftovers(),
            Vec::<String>::new(),
            "teardown left things behind"
        );
    };
    if tokio::time::timeout(timeout, run).await.is_err() {
        panic!("{test} timed out after {timeout:?}");
    }
}
