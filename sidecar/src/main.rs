//! `lanemesh-proxy`: the sidecar binary.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lanemesh_sidecar::config::ProxyConfig;
use lanemesh_sidecar::discovery::{self, ConfigSource, DiscoveryClient};
use lanemesh_sidecar::init::InitArgs;
use lanemesh_sidecar::mesh::{LocalPod, MeshRouter, run_builder};
use lanemesh_sidecar::proxy::{Proxy, SoOriginalDst, shutdown};
use lanemesh_sidecar::snapshot::SnapshotStore;
use tracing_subscriber::EnvFilter;

/// lanemesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "lanemesh-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of `run` (also accepted without the subcommand).
    #[command(flatten)]
    run: ProxyConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the data plane (the default).
    Run(Box<ProxyConfig>),
    /// Install (or with --uninstall remove) the iptables capture rules; run as root in the pod's network namespace.
    Init(InitArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Run(config)) => *config,
        None => cli.run,
        Some(Command::Init(init)) => return run_init(&init),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LANEMESH_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(config))
}

fn run_init(init: &InitArgs) -> anyhow::Result<()> {
    if init.dry_run {
        std::io::Write::write_all(&mut std::io::stdout(), init.render().as_bytes())?;
        return Ok(());
    }
    init.apply().context("lanemesh-proxy init")
}

async fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let args = &config.discovery;
    let source = match args.source() {
        Ok(source) => Some(source),
        Err(discovery::ConfigError::NoSource) => {
            tracing::warn!(
                "neither --discovery-addr nor --config-file given; passing all traffic through"
            );
            None
        }
        Err(error) => return Err(error).context("discovery settings"),
    };
    let local = args.node().context("discovery settings")?.local_app();
    let store = Arc::new(SnapshotStore::new(local));
    let router = Arc::new(MeshRouter::new(LocalPod {
        app: args.app_name.clone(),
        lane_tag: Some(args.lane_tag.clone()).filter(|t| !t.is_empty()),
    }));
    // Until the first complete snapshot the router passes everything through.
    let builder = tokio::spawn(run_builder(Arc::clone(&store), Arc::clone(&router)));

    let proxy = Proxy::bind(config.clone(), router, Arc::new(SoOriginalDst)).await?;
    let handle = proxy.shutdown_handle();
    let discovery = match source {
        Some(ConfigSource::File { path, .. }) => {
            let generation = discovery::file::load_into(&path, &store)
                .with_context(|| format!("loading {}", path.display()))?;
            tracing::info!(path = %path.display(), generation, "configuration loaded");
            None
        }
        Some(ConfigSource::ControlPlane(client)) => {
            tracing::info!(addr = %client.addr, "connecting to the control plane");
            let mut signal = handle.signal();
            let client = DiscoveryClient::new(client, Arc::clone(&store));
            Some(tokio::spawn(async move {
                client.run(async move { signal.triggered().await }).await;
            }))
        }
        None => None,
    };
    tokio::spawn({
        let handle = handle.clone();
        async move {
            if let Err(error) = shutdown::trigger_on_signals(handle.clone()).await {
                tracing::error!(%error, "cannot install signal handlers; shutting down");
                handle.trigger();
            }
        }
    });
    let report = proxy.run().await;
    if let Some(discovery) = discovery
        && let Err(error) = discovery.await
    {
        tracing::warn!(%error, "discovery client task failed");
    }
    builder.abort();
    tracing::info!(abandoned = report.abandoned, "lanemesh-proxy stopped");
    Ok(())
}
