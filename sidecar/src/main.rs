//! `lanemesh-proxy`: the sidecar binary.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lanemesh_sidecar::config::ProxyConfig;
use lanemesh_sidecar::init::InitArgs;
use lanemesh_sidecar::proxy::{PassthroughRouter, Proxy, SoOriginalDst, shutdown};
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
    if let Some(path) = &config.config_file {
        tracing::info!(path = %path.display(), "config file given; not interpreted by the proxy core");
    }
    // Until the discovery client and lane router land, everything passes through.
    let proxy = Proxy::bind(config, Arc::new(PassthroughRouter), Arc::new(SoOriginalDst)).await?;
    let handle = proxy.shutdown_handle();
    tokio::spawn(async move {
        if let Err(error) = shutdown::trigger_on_signals(handle.clone()).await {
            tracing::error!(%error, "cannot install signal handlers; shutting down");
            handle.trigger();
        }
    });
    let report = proxy.run().await;
    tracing::info!(abandoned = report.abandoned, "lanemesh-proxy stopped");
    Ok(())
}
