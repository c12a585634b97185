//! `lanemesh-pilot`: the control plane binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures::future::BoxFuture;
use lanemesh_control_plane::discovery::DiscoveryLimits;
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
    /// How long a Lease stays valid without renewal (whole seconds).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The holder renews this long before expiry (whole seconds, < duration).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_grace: Duration,
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
    let mut status_client = None;
    let source: Box<dyn FnOnce(_) -> _> = match args.source {
        SourceKind::Local => {
            let dir = args.dir.context("--dir is required with --source local")?;
            anyhow::ensure!(dir.is_dir(), "--dir {} is not a directory", dir.display());
            anyhow::ensure!(
                !args.poll_interval.is_zero(),
                "--poll-interval must be greater than zero"
            );
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
    };
    let mut plane = ControlPlane::start_with(source, grpc, admin, options);
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
