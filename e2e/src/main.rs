//! `lanemesh-demo`: the README's main job.
//!
//! Today it loads a directory of lanemesh YAML (default `examples/`), checks
//! it exactly as the control plane does, and prints what sidecars would be
//! sent. The full local demo (cluster, sidecars and demo apps in Go, Java and
//! Python) is still to come. Exit status 1 when any object is refused.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use lanemesh_api::convert::{self, Invalid};
use lanemesh_api::manifest::Manifest;
use lanemesh_api::proto;

#[derive(Debug, Parser)]
#[command(version, about = "lanemesh local demo")]
struct Args {
    /// A directory (searched recursively) or file of lanemesh YAML.
    #[arg(default_value = "examples")]
    path: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut manifest = Manifest::default();
    let mut files = Vec::new();
    collect_yaml(&args.path, &mut files)
        .with_context(|| format!("reading {}", args.path.display()))?;
    files.sort();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        manifest
            .add_yaml(&text)
            .with_context(|| format!("parsing {}", file.display()))?;
    }
    let converted = convert::manifest(&manifest, &|_, _| 1);

    let mut out = String::new();
    out.push_str(&format!(
        "lanemesh {}: {} files, {} lanemesh objects, {} other Kubernetes objects\n",
        env!("CARGO_PKG_VERSION"),
        files.len(),
        manifest.lane_groups.len()
            + manifest.lanes.len()
            + manifest.rate_limits.len()
            + manifest.circuit_breakers.len()
            + manifest.overloads.len(),
        manifest.others.len(),
    ));
    for group in &converted.lane_groups.resources {
        out.push_str(&describe_group(group));
    }
    for policy in &converted.inbound.resources {
        out.push_str(&describe_inbound(policy));
    }
    for policy in &converted.outbound.resources {
        let rules: Vec<&str> = policy.breakers.iter().map(|b| b.name.as_str()).collect();
        out.push_str(&format!(
            "OutboundPolicy {}: breakers [{}]\n",
            policy.name,
            rules.join(", ")
        ));
    }
    let refused: Vec<&Invalid> = converted.rejected().collect();
    for invalid in &refused {
        out.push_str(&format!("REFUSED {invalid}\n"));
    }
    out.push_str(
        "serve it: lanemesh-pilot --source local --dir <dir>  |  one sidecar without a control plane: \
         lanemesh-proxy run --config-file <file> --app-name <app>\n",
    );
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
    if !refused.is_empty() {
        anyhow::bail!("{} object(s) refused", refused.len());
    }
    Ok(())
}

fn collect_yaml(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

fn describe_group(group: &proto::LaneGroup) -> String {
    let mode = proto::RoutingMode::try_from(group.routing_mode).map_or("?", |m| m.as_str_name());
    let mut text = format!(
        "LaneGroup {} ({mode}): apps [{}], tag header {}\n",
        group.name,
        group.apps.join(", "),
        group.tag_header
    );
    for lane in &group.lanes {
        let conditions = lane.r#match.as_ref().map_or(0, |m| m.conditions.len());
        text.push_str(&format!(
            "  lane {} tag={} enabled={} conditions={} weight={}\n",
            lane.name, lane.tag, lane.enabled, conditions, lane.weight
        ));
    }
    text
}

fn describe_inbound(policy: &proto::InboundPolicy) -> String {
    let mut text = format!("InboundPolicy {}\n", policy.name);
    for rule in &policy.rules {
        let qps = rule
            .qps
            .as_ref()
            .map_or("-".to_owned(), |q| format!("{} qps", q.threshold));
        let status = rule.fallback.as_ref().map_or(0, |f| f.status);
        text.push_str(&format!(
            "  rule {}: {qps}, fallback {status}, dryRun={}\n",
            rule.name, rule.dry_run
        ));
    }
    if let Some(o) = &policy.overload {
        let mode = proto::OverloadMode::try_from(o.mode).map_or("?", |m| m.as_str_name());
        text.push_str(&format!(
            "  overload {}: {mode} above {} CPU\n",
            o.name, o.cpu_threshold
        ));
    }
    text
}
