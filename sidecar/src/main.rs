//! `lanemesh-proxy`: the sidecar binary.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lanemesh_sidecar::admin::logging::{self, LogControl};
use lanemesh_sidecar::admin::wait::{self, WaitArgs};
use lanemesh_sidecar::app::App;
use lanemesh_sidecar::config::{GatewayConfig, RunConfig};
use lanemesh_sidecar::init::InitArgs;
use lanemesh_sidecar::proxy::{SoOriginalDst, shutdown};

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
    /// Run the data plane as a standalone ingress: listeners on --port, routes from HTTPRoutes
    /// and Ingresses of the lanemesh class, the lane decided at this first hop.
    Gateway(Box<GatewayConfig>),
    /// Install (or with --uninstall remove) the iptables capture rules; run as root in the pod's network namespace.
    Init(InitArgs),
    /// Wait until the proxy is ready (the postStart hook of a non-native sidecar); exit 1 on timeout.
    Wait(WaitArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Run(config)) => Mode::Sidecar(*config),
        Some(Command::Gateway(config)) => Mode::Gateway(*config),
        None => Mode::Sidecar(cli.run),
        Some(Command::Init(init)) => return run_init(&init),
        Some(Command::Wait(args)) => return Ok(wait::wait(&args)?),
    };
    let filter = std::env::var("LANEMESH_LOG").unwrap_or_else(|_| "info".to_owned());
    let logging = logging::init(&filter).context("LANEMESH_LOG")?;
    match &config {
        Mode::Sidecar(run) => run.proxy().validate()?,
        Mode::Gateway(gateway) => gateway.proxy().validate()?,
    }
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

/// What `lanemesh-proxy` runs as.
enum Mode {
    Sidecar(RunConfig),
    Gateway(GatewayConfig),
}

async fn run(config: Mode, logging: LogControl) -> anyhow::Result<()> {
    let app = match config {
        Mode::Sidecar(run) => run.app(Some(logging)),
        Mode::Gateway(gateway) => gateway.app(Some(logging)),
    }
    .context("discovery settings")?;
    let app = App::build(app, Arc::new(SoOriginalDst)).await?;
    let handle = app.shutdown_handle();
    tokio::spawn(async move {
        if let Err(error) = shutdown::trigger_on_signals(handle.clone()).await {
            tracing::error!(%error, "cannot install signal handlers; shutting down");
            handle.trigger();
        }
    });
    let report = app.run().await;
    tracing::info!(abandoned = report.abandoned, "lanemesh-proxy stopped");
    Ok(())
}
