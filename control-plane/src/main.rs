//! `lanemesh-pilot`: the control plane binary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures::future::BoxFuture;
use lanemesh_control_plane::auth::{AllowAll, Authenticator, TokenReviewer};
use lanemesh_control_plane::console::LaneWriter;
use lanemesh_control_plane::discovery::{DiscoveryLimits, DiscoveryTls};
use lanemesh_control_plane::inject::{self, InjectConfig, SidecarMode};
use lanemesh_control_plane::run::{ControlPlane, Options};
use lanemesh_control_plane::source::kubernetes::KubernetesSource;
use lanemesh_control_plane::source::local::LocalSource;
use lanemesh_control_plane::{admin, discovery, status};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SourceKind {
    /// A directory of YAML (lanemesh CRDs, Services, Pods, EndpointSlices).
    Local,
    /// Watch the cluster (in-cluster config or KUBECONFIG).
    Kubernetes,
}

/// lanemesh control plane: streams lanes and policies to sidecars.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where objects come from.
    #[arg(long, value_enum, default_value = "local", env = "LANEMESH_SOURCE")]
    source: SourceKind,
    /// The directory the `local` source reads (re-read on change).
    #[arg(long, env = "LANEMESH_DIR", required_if_eq("source", "local"))]
    dir: Option<PathBuf>,
    /// How often the `local` source checks the directory for changes (most of the time from
    /// a file edit to the sidecars).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration, env = "LANEMESH_POLL_INTERVAL")]
    poll_interval: Duration,
    /// gRPC discovery address.
    #[arg(long, default_value = discovery::DEFAULT_ADDR, env = "LANEMESH_GRPC_ADDR")]
    grpc_addr: String,
    /// PEM certificate (chain) the discovery server presents; with --grpc-tls-key, discovery
    /// is served over TLS (required with --source kubernetes).
    #[arg(long, env = "LANEMESH_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of the discovery server.
    #[arg(long, env = "LANEMESH_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// Admin address: /healthz, /readyz, /metrics, /debug/snapshot.
    #[arg(long, default_value = admin::DEFAULT_ADDR, env = "LANEMESH_ADMIN_ADDR")]
    admin_addr: String,
    /// Where /debug/* (every node's snapshot) is served: `loopback` = only when
    /// --admin-addr is a loopback address; `on` = to anyone reaching the port.
    #[arg(
        long,
        value_enum,
        default_value = "loopback",
        env = "LANEMESH_DEBUG_ENDPOINTS"
    )]
    debug_endpoints: admin::DebugEndpoints,
    /// Serve the web console on this address (e.g. `0.0.0.0:15080`); unset: no console.
    #[arg(long)]
    console_addr: Option<String>,
    /// Let the console switch lanes on and off (Kubernetes: a patch of the Lane through the API
    /// server; local: the Lane's file in --dir is rewritten). Off: the console is read-only.
    #[arg(long)]
    console_writes: bool,
    /// Scrape the `/metrics` of every served pod's sidecar this often, for the traffic view
    /// (`/debug/traffic`, `lanemeshctl lanes`, the console); 0 = never, or every 5 s when the
    /// console is on.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    scrape_interval: Duration,
    /// Time an admin client has to send its request head.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    admin_header_timeout: Duration,
    /// HTTP/2 streams one discovery connection may open at once.
    #[arg(long, default_value_t = 16)]
    max_streams_per_connection: u32,
    /// HTTP/2 PING interval on discovery connections.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grpc_keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grpc_keepalive_timeout: Duration,
    /// TCP keepalive idle time (and probe interval) on discovery connections.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    tcp_keepalive: Duration,
    /// A discovery stream whose first request does not arrive within this is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    first_request_timeout: Duration,
    /// A discovery stream whose sidecar does not read a response within this is closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    send_timeout: Duration,
    /// Quiet time after a change before snapshots are rebuilt.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
    /// How long SIGTERM waits for streams and servers to end.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Write CRD status (`--source kubernetes` only; the Lease holder writes).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "LANEMESH_WRITE_STATUS")]
    write_status: bool,
    /// The coordination.k8s.io Lease that elects the status writer.
    #[arg(long, default_value = status::DEFAULT_LEASE_NAME, env = "LANEMESH_LEASE_NAME")]
    lease_name: String,
    /// The Lease's namespace (the pilot's own namespace in a cluster).
    #[arg(long, default_value = "default", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// This replica's holder identity; defaults to the pod name, else
    /// `<hostname>-<pid>`.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Sidecar injection webhook address (HTTPS; served when --webhook-cert is given).
    #[arg(long, default_value = inject::webhook::DEFAULT_ADDR, env = "LANEMESH_WEBHOOK_ADDR")]
    webhook_addr: String,
    /// PEM certificate (chain) of the webhook.
    #[arg(long, env = "LANEMESH_WEBHOOK_CERT", requires = "webhook_key")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook.
    #[arg(long, env = "LANEMESH_WEBHOOK_KEY", requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// The image of the injected init and proxy containers.
    #[arg(
        long,
        env = "LANEMESH_PROXY_IMAGE",
        default_value = "lanemesh/proxy:latest"
    )]
    proxy_image: String,
    /// Pull policy of the injected containers.
    #[arg(
        long,
        env = "LANEMESH_PROXY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    proxy_image_pull_policy: String,
    /// How the proxy is injected: `auto` = native sidecar when the API server is 1.29 or
    /// newer, else a first container held by a postStart hook.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "LANEMESH_SIDECAR_MODE"
    )]
    sidecar_mode: SidecarModeArg,
    /// The discovery address injected sidecars connect to.
    #[arg(
        long,
        env = "LANEMESH_INJECT_DISCOVERY_ADDR",
        default_value = "lanemesh-pilot.lanemesh-system.svc:15010"
    )]
    inject_discovery_addr: String,
    /// PEM of the CA injected sidecars verify the discovery server with.
    #[arg(long, env = "LANEMESH_INJECT_DISCOVERY_CA")]
    inject_discovery_ca: Option<PathBuf>,
    /// The proxy container's default CPU and memory requests and limits (annotations override).
    #[arg(long, default_value = "100m")]
    proxy_cpu: String,
    #[arg(long, default_value = "64Mi")]
    proxy_memory: String,
    #[arg(long, default_value = "2")]
    proxy_cpu_limit: String,
    #[arg(long, default_value = "1Gi")]
    proxy_memory_limit: String,
    /// Lossless offline: app containers without a preStop get a preStop sleep this long
    /// (0 = none; ignored on API servers before 1.30, which have no sleep action).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(0..=300))]
    inject_app_drain_seconds: i64,
    /// OTLP/gRPC endpoint injected sidecars export request spans to (e.g.
    /// `http://otel-collector.observability:4317`); empty: no spans.
    #[arg(long, default_value = "")]
    inject_trace_endpoint: String,
    /// Share of the traces starting at a sidecar that are recorded, 0 to 1 (requests arriving
    /// with a `traceparent` follow its sampled flag).
    #[arg(long, default_value_t = 0.01, value_parser = parse_ratio)]
    inject_trace_sampling: f64,
    /// OpenTelemetry context propagation injected into the app containers of governed pods
    /// that neither they nor their Namespace choose (`lanemesh.io/inject-context`).
    #[arg(
        long,
        value_enum,
        default_value = "none",
        env = "LANEMESH_INJECT_CONTEXT"
    )]
    inject_context: inject::Language,
    /// The image copying the OpenTelemetry Java agent into the directory it is given.
    #[arg(long, default_value = "lanemesh/context-java:latest")]
    context_java_image: String,
    /// The image copying OpenTelemetry's Python auto-instrumentation into the directory it is
    /// given.
    #[arg(long, default_value = "lanemesh/context-python:latest")]
    context_python_image: String,
    /// OTLP/HTTP endpoint instrumented apps export their spans to (e.g.
    /// `http://otel-collector.observability:4318`); empty: they export nothing.
    #[arg(long, default_value = "")]
    inject_context_trace_endpoint: String,
    /// How long a Lease stays valid without renewal (whole seconds).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The holder renews this long before expiry (whole seconds, < duration).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_grace: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SidecarModeArg {
    Auto,
    Native,
    Classic,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "lanemesh-pilot".to_owned());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let grpc = TcpListener::bind(&args.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC discovery on {}", args.grpc_addr))?;
    let admin = TcpListener::bind(&args.admin_addr)
        .await
        .with_context(|| format!("binding admin on {}", args.admin_addr))?;
    let lease = status::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        duration: args.lease_duration,
        grace: args.lease_grace,
    };
    let console = match &args.console_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the console on {addr}"))?,
        ),
        None => None,
    };
    let mut console_writer = None;
    let mut status_client = None;
    let mut kube_client = None;
    let mut server_version = None;
    let mut authenticator: Option<Arc<dyn Authenticator>> = None;
    let source: Box<dyn FnOnce(_) -> _> = match args.source {
        SourceKind::Local => {
            let dir = args.dir.context("--dir is required with --source local")?;
            anyhow::ensure!(dir.is_dir(), "--dir {} is not a directory", dir.display());
            anyhow::ensure!(
                !args.poll_interval.is_zero(),
                "--poll-interval must be greater than zero"
            );
            if args.console_writes {
                console_writer = Some(LaneWriter::Directory(dir.clone()));
            }
            let source = LocalSource::new(dir).with_interval(args.poll_interval);
            Box::new(move |tx| -> BoxFuture<'static, ()> {
                Box::pin(async move {
                    if let Err(e) = source.run(tx).await {
                        tracing::error!(error = %e, "local source stopped");
                    }
                })
            })
        }
        SourceKind::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
            if args.write_status {
                lease
                    .validate()
                    .context("invalid --lease-duration / --lease-grace")?;
                status_client = Some(client.clone());
            }
            server_version = Some(
                client
                    .apiserver_version()
                    .await
                    .context("reading the API server's version")?,
            );
            authenticator = Some(Arc::new(TokenReviewer::new(client.clone())));
            kube_client = Some(client.clone());
            if args.console_writes {
                console_writer = Some(LaneWriter::Kubernetes(client.clone()));
            }
            let source = KubernetesSource::new(client);
            Box::new(move |tx| -> BoxFuture<'static, ()> { Box::pin(source.run(tx)) })
        }
    };
    for (flag, d) in [
        ("--admin-header-timeout", args.admin_header_timeout),
        ("--grpc-keepalive-interval", args.grpc_keepalive_interval),
        ("--grpc-keepalive-timeout", args.grpc_keepalive_timeout),
        ("--tcp-keepalive", args.tcp_keepalive),
        ("--first-request-timeout", args.first_request_timeout),
        ("--send-timeout", args.send_timeout),
    ] {
        anyhow::ensure!(!d.is_zero(), "{flag} must be greater than zero");
    }
    anyhow::ensure!(
        args.max_streams_per_connection > 0,
        "--max-streams-per-connection must be at least 1"
    );
    let discovery_tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            Some(DiscoveryTls {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            })
        }
        _ => None,
    };
    // Plaintext discovery would hand every pod's token to anyone on the path.
    anyhow::ensure!(
        discovery_tls.is_some() || !matches!(args.source, SourceKind::Kubernetes),
        "--source kubernetes serves discovery over TLS only: set --grpc-tls-cert and --grpc-tls-key"
    );
    let options = Options {
        debounce: args.debounce,
        discovery: DiscoveryLimits {
            max_concurrent_streams: args.max_streams_per_connection,
            keepalive_interval: args.grpc_keepalive_interval,
            keepalive_timeout: args.grpc_keepalive_timeout,
            tcp_keepalive: args.tcp_keepalive,
            first_request_timeout: args.first_request_timeout,
            send_timeout: args.send_timeout,
            ..DiscoveryLimits::default()
        },
        admin: admin::AdminOptions {
            header_read_timeout: args.admin_header_timeout,
            debug_endpoints: args.debug_endpoints,
        },
        // Kubernetes: every stream proves its pod with a TokenReview. Local: claims are
        // believed (no API server to ask).
        authenticator: authenticator.unwrap_or_else(|| Arc::new(AllowAll)),
        discovery_tls,
    };
    let webhook = match (&args.webhook_cert, &args.webhook_key) {
        (Some(cert), Some(key)) => {
            let tls =
                inject::webhook::tls_config(cert, key).context("--webhook-cert/--webhook-key")?;
            let listener = TcpListener::bind(&args.webhook_addr)
                .await
                .with_context(|| {
                    format!("binding the injection webhook on {}", args.webhook_addr)
                })?;
            let sidecar_mode = match (args.sidecar_mode, &server_version) {
                (SidecarModeArg::Native, _) => SidecarMode::Native,
                (SidecarModeArg::Classic, _) => SidecarMode::Classic,
                (SidecarModeArg::Auto, Some(v)) => SidecarMode::for_server(&v.major, &v.minor),
                // Outside Kubernetes there is no server to ask; 1.29+ is what is supported.
                (SidecarModeArg::Auto, None) => SidecarMode::Native,
            };
            let discovery_ca = match &args.inject_discovery_ca {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("--inject-discovery-ca {}", path.display()))?,
                None => String::new(),
            };
            for (flag, value) in [
                ("--proxy-cpu", &args.proxy_cpu),
                ("--proxy-memory", &args.proxy_memory),
                ("--proxy-cpu-limit", &args.proxy_cpu_limit),
                ("--proxy-memory-limit", &args.proxy_memory_limit),
            ] {
                anyhow::ensure!(
                    inject::annotations::Quantity::parse(value).is_some(),
                    "{flag} {value:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 128Mi)"
                );
            }
            let config = InjectConfig {
                proxy_image: args.proxy_image.clone(),
                image_pull_policy: args.proxy_image_pull_policy.clone(),
                discovery_addr: args.inject_discovery_addr.clone(),
                discovery_ca,
                sidecar_mode,
                cpu: args.proxy_cpu.clone(),
                memory: args.proxy_memory.clone(),
                cpu_limit: args.proxy_cpu_limit.clone(),
                memory_limit: args.proxy_memory_limit.clone(),
                app_drain_seconds: match &server_version {
                    Some(v) if !inject::sleep_action_supported(&v.major, &v.minor) => 0,
                    _ => args.inject_app_drain_seconds,
                },
                trace_endpoint: args.inject_trace_endpoint.clone(),
                trace_sampling: args.inject_trace_sampling,
                context: inject::ContextConfig {
                    default: args.inject_context,
                    java_image: args.context_java_image.clone(),
                    python_image: args.context_python_image.clone(),
                    trace_endpoint: args.inject_context_trace_endpoint.clone(),
                },
                ..InjectConfig::default()
            };
            tracing::info!(addr = %args.webhook_addr, ?sidecar_mode, image = %config.proxy_image, "serving the injection webhook");
            Some((listener, tls, config))
        }
        _ => None,
    };
    let mut plane = ControlPlane::start_with(source, grpc, admin, options);
    if let Some((listener, tls, config)) = webhook {
        plane.start_webhook(listener, tls, config, kube_client);
    }
    let scrape = match (args.scrape_interval.is_zero(), console.is_some()) {
        (false, _) => Some(args.scrape_interval),
        (true, true) => Some(Duration::from_secs(5)),
        (true, false) => None,
    };
    if let Some(interval) = scrape {
        tracing::info!(
            ?interval,
            "scraping the sidecars' metrics for the traffic view"
        );
        plane.start_scraper(lanemesh_control_plane::traffic::scrape::ScrapeOptions {
            interval,
            ..Default::default()
        });
    }
    if let Some(listener) = console {
        plane.start_console(listener, console_writer);
    }
    if let Some(client) = status_client {
        tracing::info!(lease = %format!("{}/{}", lease.namespace, lease.name), identity = %lease.identity, "writing CRD status while holding the lease");
        plane.start_status_writer(client, lease);
    }
    // A dead task (index, source, servers, status writer) ends the process
    // with an error, so Kubernetes restarts it rather than keep a replica
    // that serves stale configuration.
    let failure = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            None
        }
        failure = plane.failed() => Some(failure),
    };
    tracing::info!("stopping");
    plane.stop(args.grace).await;
    match failure {
        Some(failure) => anyhow::bail!("{failure}"),
        None => Ok(()),
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}

/// A ratio from 0 to 1.
fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a ratio from 0 to 1")),
    }
}
