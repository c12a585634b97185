//! `lanemeshctl`: see the crate documentation. Exit codes: 0 all valid, 1 problems found,
//! 2 the command itself failed (unreadable file, bad usage).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lanemesh_ctl::check::{self, Source};
use lanemesh_ctl::lanes;
use lanemesh_ctl::output::{self, Format};
use lanemesh_ctl::{pilot, view};

#[derive(Debug, Parser)]
#[command(version, about = "The operator's command line for lanemesh")]
struct Cli {
    /// The kubeconfig for commands that talk to the cluster (default: as kubectl finds it).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate manifests offline with the control plane's own conversion (like `istioctl
    /// analyze`): every object the control plane would refuse, with its field path. Exit code 1
    /// when there is a problem, for CI.
    Check {
        /// A YAML file, a directory (its *.yaml, *.yml and *.json files) or `-` for stdin;
        /// repeatable. All are checked together, so references across files resolve.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The lane groups and their lanes: routing mode, tag, enabled, weight, whether the control
    /// plane accepted each, and the ready pods carrying each lane's tag per app.
    Lanes {
        /// Only this namespace (default: every namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Ask this pilot's admin address instead of the API server: the lanes it holds, their
        /// status as it computes it, and each lane's QPS when it scrapes the sidecars.
        #[arg(long)]
        pilot: Option<std::net::SocketAddr>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Without --pilot, from the API server: the pilot replicas and the leader (the status
    /// Lease's holder), the governed pods, the objects the control plane refused. With --pilot:
    /// that pilot's readiness, its connected sidecars with what each holds per resource type
    /// (resources, responses not yet ACKed, NACKed resources), and the objects it refused.
    Status {
        /// A pilot's admin address (port 15014; `kubectl port-forward` to a pilot pod, whose
        /// debug endpoints answer on loopback).
        #[arg(long)]
        pilot: Option<std::net::SocketAddr>,
        /// The pilot's namespace (without --pilot).
        #[arg(short, long, default_value = "lanemesh-system")]
        namespace: String,
        /// The status Lease's name (the chart's).
        #[arg(long, default_value = "lanemesh-pilot-status")]
        lease: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// What the pilot serves one pod's sidecar (`namespace/pod`, or a pod name), through the
    /// pilot (not by exec).
    ProxyConfig {
        pod: String,
        /// The pilot's admin address (as for `status`).
        #[arg(long)]
        pilot: std::net::SocketAddr,
        /// Output format: a table of resources and versions, or the whole snapshot.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Switch a Lane on or off (its `spec.enabled`); every sidecar follows within a second.
    Lane {
        #[command(subcommand)]
        action: LaneAction,
    },
}

#[derive(Debug, Subcommand)]
enum LaneAction {
    /// Route requests into the lane again.
    Enable(LaneArgs),
    /// Send the lane's requests to base.
    Disable(LaneArgs),
}

#[derive(Debug, clap::Args)]
struct LaneArgs {
    /// The Lane's name.
    name: String,
    /// The Lane's namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lanemeshctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Status {
            pilot: Some(pilot),
            output,
            ..
        } => {
            let status = pilot::status(pilot).await?;
            print(&output::render_one(&status, output, output::status_table)?)
        }
        Command::Status {
            pilot: None,
            namespace,
            lease,
            output,
        } => {
            let client = lanes::client(cli.kubeconfig.as_deref()).await?;
            let status = lanemesh_ctl::cluster::status(client, &namespace, &lease).await?;
            print(&output::render_one(
                &status,
                output,
                output::cluster_status_table,
            )?)
        }
        Command::ProxyConfig { pod, pilot, output } => {
            let snapshot = pilot::proxy_config(pilot, &pod).await?;
            print(&output::render_one(
                &snapshot,
                output,
                output::snapshot_table,
            )?)
        }
        Command::Lanes {
            namespace,
            pilot,
            output,
        } => {
            let rows = match pilot {
                Some(addr) => {
                    let held = pilot::lanes(addr, namespace.as_deref()).await?;
                    let mut rows = view::lane_rows(&held.lane_groups, &held.lanes);
                    if let Some(rates) = pilot::lane_rates(addr).await? {
                        view::add_rates(&mut rows, &rates);
                    }
                    rows
                }
                None => {
                    let client = lanes::client(cli.kubeconfig.as_deref()).await?;
                    let (groups, all) = lanes::list(client, namespace.as_deref()).await?;
                    view::lane_rows(&groups, &all)
                }
            };
            let text = output::render_items(
                &rows,
                output,
                "no lane groups",
                view::LANE_HEADER,
                view::lane_cells,
            )?;
            print(&text)
        }
        Command::Lane { action } => {
            let (args, enabled) = match action {
                LaneAction::Enable(args) => (args, true),
                LaneAction::Disable(args) => (args, false),
            };
            let client = lanes::client(cli.kubeconfig.as_deref()).await?;
            let group = lanes::set_enabled(client, &args.namespace, &args.name, enabled).await?;
            let state = if enabled { "enabled" } else { "disabled" };
            writeln!(
                std::io::stdout(),
                "lane {}/{} {state} (group {group})",
                args.namespace,
                args.name
            )
            .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { files, output } => {
            let mut sources = Vec::new();
            for path in &files {
                read_sources(path, &mut sources)?;
            }
            let problems = check::check(&sources);
            print(&output::render(&problems, output)?)?;
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn print(text: &str) -> Result<ExitCode> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn read_sources(path: &Path, out: &mut Vec<Source>) -> Result<()> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        out.push(Source {
            name: "-".into(),
            text,
        });
        return Ok(());
    }
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        entries.sort();
        for entry in entries {
            read_sources(&entry, out)?;
        }
        return Ok(());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    out.push(Source {
        name: path.display().to_string(),
        text,
    });
    Ok(())
}
