//! `lanemesh-proxy`: the sidecar binary.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lanemesh_sidecar::admin::{self, AdminState, logging::LogControl};
use lanemesh_sidecar::config::RunConfig;
use lanemesh_sidecar::discovery::{self, ConfigSource, DiscoveryClient};
use lanemesh_sidecar::init::InitArgs;
use lanemesh_sidecar::mesh::{LocalPod, MeshRouter, run_builder};
use lanemesh_sidecar::metrics::{ProxyMetrics, ScrapeSource};
use lanemesh_sidecar::proxy::{Proxy, SoOriginalDst, shutdown};
use lanemesh_sidecar::snapshot::SnapshotStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// lanemesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "lanemesh-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of `run` (also accepted without the subcommand).
    #[command(flatten)]
    run: RunConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the data plane (the default).
    Run(Box<RunConfig>),
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
    let filter = std::env::var("LANEMESH_LOG").unwrap_or_else(|_| "info".to_owned());
    let logging = admin::logging::init(&filter).context("LANEMESH_LOG")?;
    config.proxy().validate()?;
    // This runtime runs discovery, admin, health and metrics; the data plane runs on its own
    // worker threads (`Proxy::run`), so one thread is plenty here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(config, logging))
}

fn run_init(init: &InitArgs) -> anyhow::Result<()> {
    if init.dry_run {
        std::io::Write::write_all(&mut std::io::stdout(), init.render().as_bytes())?;
        return Ok(());
    }
    init.apply().context("lanemesh-proxy init")
}

async fn run(config: RunConfig, logging: LogControl) -> anyhow::Result<()> {
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
    let metrics = Arc::new(ProxyMetrics::new());
    metrics.attach(Arc::clone(&store) as Arc<dyn ScrapeSource>);
    let router = Arc::new(
        MeshRouter::new(LocalPod {
            app: args.app_name.clone(),
            lane_tag: Some(args.lane_tag.clone()).filter(|t| !t.is_empty()),
        })
        .with_metrics(Arc::clone(&metrics))
        .with_trusted_proxy_hops(config.trusted_proxy_hops),
    );
    let node = args.node().context("discovery settings")?;
    tokio::spawn(lanemesh_sidecar::govern::cpu::run_sampler(
        Arc::clone(router.cpu()),
        config.cgroup_dir.clone(),
    ));
    // Until the first complete snapshot the router passes everything through.
    let builder = tokio::spawn(run_builder(Arc::clone(&store), Arc::clone(&router)));

    let proxy = Proxy::bind(config.proxy(), router, Arc::new(SoOriginalDst)).await?;
    let handle = proxy.shutdown_handle();

    // Admin, health and metrics: `POST /shutdown` and the proxy's own
    // shutdown share one signal.
    let (admin_tx, admin_rx) = watch::channel(false);
    let mut admin_state = AdminState::new(Arc::clone(&store), admin_tx.clone())
        .with_node(node)
        .with_logging(logging);
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
            metrics.attach(client.state() as Arc<dyn ScrapeSource>);
            admin_state = admin_state.with_discovery(client.state());
            Some(tokio::spawn(async move {
                client.run(async move { signal.triggered().await }).await;
            }))
        }
        None => None,
    };
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let admin_listener = bind(config.admin_addr).await?;
    let health_listener = bind(config.health_addr).await?;
    let metrics_listener = bind(config.metrics_addr).await?;
    tokio::spawn(admin::serve_admin(
        admin_listener,
        admin_state,
        admin_rx.clone(),
    ));
    tokio::spawn(admin::serve_health(
        health_listener,
        Arc::clone(&store),
        handle.watch(),
        admin_rx.clone(),
    ));
    tokio::spawn(admin::serve_metrics(
        metrics_listener,
        Arc::clone(&metrics),
        admin_rx.clone(),
    ));
    tokio::spawn({
        let handle = handle.clone();
        let mut requested = admin_rx;
        async move {
            // Fires on `POST /shutdown`, and harmlessly once the proxy has stopped.
            admin::shutdown_requested(&mut requested).await;
            handle.trigger();
        }
    });
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
    let _ = admin_tx.send(true);
    if let Some(discovery) = discovery
        && let Err(error) = discovery.await
    {
        tracing::warn!(%error, "discovery client task failed");
    }
    builder.abort();
    tracing::info!(abandoned = report.abandoned, "lanemesh-proxy stopped");
    Ok(())
}
