//! `lanemesh-scale-bench`: the control plane under a cluster-sized load
//! (`make bench-control-plane`).
//!
//! Generates a local-source directory (default 5,000 governed pods in 50
//! apps), starts the real `lanemesh-pilot` on it, opens simulated sidecar
//! streams (default 2,000) that ACK every response, and once all are synced
//! rewrites the Lanes file a few times, measuring per stream the time from
//! the write to its ACK of the new LaneGroup. Prints a markdown table and
//! exits 1 when a target (p99 < 1 s, peak RSS < 500 MB) or an ACK is missed.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use lanemesh_e2e::process::{self, ChildGuard};
use lanemesh_e2e::scale::Measured;
use lanemesh_e2e::scale::fixture::Fixture;
use lanemesh_e2e::scale::sidecar::{self, Event, Report};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(version, about = "lanemesh control-plane scale benchmark")]
struct Args {
    /// The pilot binary; default: `lanemesh-pilot` next to this executable
    /// (build it with `cargo build --release -p lanemesh-control-plane`).
    #[arg(long)]
    pilot: Option<PathBuf>,
    /// Simulated sidecar streams, each a distinct pod.
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    #[arg(long, default_value_t = 5)]
    namespaces: usize,
    #[arg(long, default_value_t = 10)]
    apps_per_namespace: usize,
    #[arg(long, default_value_t = 100)]
    pods_per_app: usize,
    /// Every n-th pod of an app carries `alicloud.service.tag: gray`.
    #[arg(long, default_value_t = 10)]
    gray_every: usize,
    /// HTTP/2 connections the streams share; default one per stream, as
    /// real sidecars connect. The server allows 200 streams per connection.
    #[arg(long)]
    connections: Option<usize>,
    /// Lanes file rewrites to measure.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// Pause between changes, so each is measured alone.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// How long every stream may take to sync.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    sync_timeout: Duration,
    /// How long one change may take to reach every stream.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    change_timeout: Duration,
    /// Keep the generated directory and the pilot log here instead of a
    /// temporary directory.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
}

const CONCURRENT_CONNECTS: usize = 64;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(measured) => {
            let table = measured.markdown();
            let _ = std::io::stdout().lock().write_all(table.as_bytes());
            if measured.verdict().pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            tracing::error!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Measured> {
    let fixture = Fixture {
        namespaces: args.namespaces,
        apps_per_namespace: args.apps_per_namespace,
        pods_per_app: args.pods_per_app,
        gray_every: args.gray_every,
    };
    anyhow::ensure!(
        args.streams > 0 && args.streams <= fixture.pods(),
        "--streams must be between 1 and the number of pods ({})",
        fixture.pods()
    );
    let connections = args
        .connections
        .unwrap_or(args.streams)
        .clamp(1, args.streams);
    // Each side holds one socket per connection: the benchmark here and the
    // pilot, which inherits this limit.
    let needed = u64::try_from(connections).unwrap_or(u64::MAX) + 256;
    if let Some(limit) = process::open_files_limit()
        && limit < needed
    {
        bail!(
            "the open files limit is {limit}, {needed} are needed: raise it with `ulimit -n {needed}`"
        );
    }
    let pilot_bin = match args.pilot.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the executable has no directory")?
            .join("lanemesh-pilot"),
    };
    anyhow::ensure!(
        pilot_bin.is_file(),
        "{} not found: build it with `cargo build --release -p lanemesh-control-plane --bin lanemesh-pilot` or pass --pilot",
        pilot_bin.display()
    );

    let temp = tempfile::Builder::new()
        .prefix("lanemesh-scale-")
        .tempdir()?;
    let root = args
        .keep_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let outcome = run_in(&args, fixture, connections, &pilot_bin, &root).await;
    if outcome.is_err() && args.keep_dir.is_none() {
        // The pilot log explains most failures: keep it.
        let kept = temp.keep();
        tracing::info!(dir = %kept.display(), "kept the directory and the pilot log");
    }
    outcome
}

/// Generates the directory under `root`, runs the pilot on it and measures.
async fn run_in(
    args: &Args,
    fixture: Fixture,
    connections: usize,
    pilot_bin: &std::path::Path,
    root: &std::path::Path,
) -> anyhow::Result<Measured> {
    let source = root.join("source");
    std::fs::create_dir_all(&source)?;
    let started = Instant::now();
    {
        let (fixture, source) = (fixture, source.clone());
        tokio::task::spawn_blocking(move || fixture.write(&source, "round-0")).await??;
    }
    tracing::info!(
        pods = fixture.pods(),
        apps = fixture.apps(),
        dir = %source.display(),
        took = ?started.elapsed(),
        "fixture written"
    );

    let grpc = process::free_addr()?;
    let admin = process::free_addr()?;
    let mut command = Command::new(pilot_bin);
    command
        .args(["--source", "local", "--dir"])
        .arg(&source)
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--admin-addr", &admin.to_string()]);
    let log = root.join("pilot.log");
    let started = Instant::now();
    let mut pilot = ChildGuard::spawn("lanemesh-pilot", command, &log)?;
    let pid = pilot.pid().context("the pilot has no pid")?.to_string();
    let mut pilot = tokio::task::spawn_blocking(move || {
        pilot
            .wait_ready(admin, "/readyz", Duration::from_secs(120))
            .map(|()| pilot)
    })
    .await??;
    tracing::info!(took = ?started.elapsed(), %grpc, "pilot ready");

    let ticks = process::clock_ticks();
    let loaded = process::usage(&pid, ticks)?;
    let result = measure(args, fixture, connections, grpc, &source, &pid, ticks).await;
    // Read the peak before stopping: the numbers die with the process.
    let end = process::usage(&pid, ticks);
    let stopped = tokio::task::spawn_blocking(move || {
        let clean = pilot.terminate(Duration::from_secs(10));
        (clean, pilot)
    })
    .await;
    let (mut measured, cpu_before) =
        result.with_context(|| format!("pilot log: {}", log.display()))?;
    let end = end?;
    measured.peak_rss = end.peak_rss;
    measured.rss_loaded = loaded.rss;
    measured.rss_end = end.rss;
    measured.cpu_total = end.cpu_seconds;
    measured.cpu_changes = end.cpu_seconds - cpu_before;
    measured.cpu_bench = process::usage("self", ticks)?.cpu_seconds;
    if let Ok((clean, _)) = stopped
        && !clean
    {
        tracing::warn!("the pilot did not stop cleanly on SIGTERM within 10 s");
    }
    if args.keep_dir.is_some() {
        tracing::info!(dir = %root.display(), "kept the directory and the pilot log");
    }
    Ok(measured)
}

/// Opens the streams, waits for them to sync, makes the changes. Also
/// returns the pilot's CPU seconds before the first change.
async fn measure(
    args: &Args,
    fixture: Fixture,
    connections: usize,
    grpc: std::net::SocketAddr,
    source: &std::path::Path,
    pid: &str,
    ticks: u64,
) -> anyhow::Result<(Measured, f64)> {
    let pods = fixture.spread(args.streams);
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(Semaphore::new(CONCURRENT_CONNECTS));
    let shared: Vec<Channel> = if connections < pods.len() {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .context("connecting to the pilot")?,
            );
        }
        channels
    } else {
        Vec::new()
    };
    for (id, pod) in pods.iter().cloned().enumerate() {
        let events = events_tx.clone();
        let endpoint = endpoint.clone();
        let channel = shared.get(id % connections.max(1)).cloned();
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let channel = match channel {
                Some(c) => c,
                None => {
                    // Bounded concurrent connects: a burst of thousands of
                    // SYNs would overflow the listen backlog.
                    let permit = permits.acquire_owned().await;
                    let connected = endpoint.connect().await;
                    drop(permit);
                    match connected {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = events.send(Event {
                                stream: id,
                                at: Instant::now(),
                                report: Report::Failed(format!("connect: {e}")),
                            });
                            return;
                        }
                    }
                }
            };
            sidecar::run(id, pod, channel, events).await;
        });
    }
    drop(events_tx);

    let mut markers: HashMap<usize, String> = HashMap::new();
    let mut synced = vec![false; pods.len()];
    let mut remaining = pods.len();
    let deadline = tokio::time::Instant::now() + args.sync_timeout;
    while remaining > 0 {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            bail!(
                "{remaining} of {} streams not synced within {:?}",
                pods.len(),
                args.sync_timeout
            );
        };
        match event.report {
            Report::Synced => {
                if let Some(s) = synced.get_mut(event.stream)
                    && !*s
                {
                    *s = true;
                    remaining -= 1;
                }
            }
            Report::Marker(m) => {
                markers.insert(event.stream, m);
            }
            Report::Failed(e) => bail!("stream {} failed while syncing: {e}", event.stream),
        }
    }
    let sync_all = started.elapsed();
    tracing::info!(streams = pods.len(), took = ?sync_all, "every stream synced");
    let not_initial = markers.values().filter(|m| *m != "round-0").count();
    anyhow::ensure!(
        not_initial == 0 && markers.len() == pods.len(),
        "after syncing, {} of {} streams hold the initial lane marker",
        markers.values().filter(|m| *m == "round-0").count(),
        pods.len()
    );

    let cpu_before = process::usage(pid, ticks)?.cpu_seconds;
    let mut measured = Measured {
        streams: pods.len(),
        pods: fixture.pods(),
        apps: fixture.apps(),
        namespaces: fixture.namespaces,
        connections,
        sync_all,
        ..Measured::default()
    };
    for round in 1..=args.changes {
        tokio::time::sleep(args.settle).await;
        // Anything queued during the pause would be stale for this round.
        while let Ok(event) = events.try_recv() {
            if let Report::Failed(e) = event.report {
                bail!("stream {} failed: {e}", event.stream);
            }
        }
        let marker = format!("round-{round}");
        let written = Instant::now();
        fixture.write_lanes(source, &marker)?;
        let mut latencies = Vec::with_capacity(pods.len());
        let mut done = vec![false; pods.len()];
        let deadline = tokio::time::Instant::now() + args.change_timeout;
        while latencies.len() < pods.len() {
            let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                break;
            };
            match event.report {
                Report::Marker(m) if m == marker => {
                    if let Some(d) = done.get_mut(event.stream)
                        && !*d
                    {
                        *d = true;
                        latencies.push(event.at.saturating_duration_since(written));
                    }
                }
                Report::Failed(e) => tracing::error!(stream = event.stream, "stream failed: {e}"),
                Report::Marker(_) | Report::Synced => {}
            }
        }
        let missed = pods.len() - latencies.len();
        let last = latencies.iter().max().copied().unwrap_or_default();
        tracing::info!(
            round,
            acked = latencies.len(),
            missed,
            ?last,
            "change measured"
        );
        measured.changes.push(latencies);
        measured.missed.push(missed);
    }
    tasks.abort_all();
    Ok((measured, cpu_before))
}
