//! `lanemesh-pilot`: the control plane binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures::future::BoxFuture;
use lanemesh_control_plane::run::ControlPlane;
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
    let mut plane = ControlPlane::start(source, grpc, admin, args.debounce);
    if let Some(client) = status_client {
        tracing::info!(lease = %format!("{}/{}", lease.namespace, lease.name), identity = %lease.identity, "writing CRD status while holding the lease");
        plane.start_status_writer(client, lease);
    }
    shutdown_signal().await?;
    tracing::info!("stopping");
    plane.stop(args.grace).await;
    Ok(())
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
