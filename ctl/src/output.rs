//! Problems as the operator reads them: an aligned table (default), JSON or YAML.

use crate::check::Problem;
use crate::view::Status;

/// An output format of `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("encoding YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// `problems` in `format`; the table says so when there are none.
pub fn render(problems: &[Problem], format: Format) -> Result<String, OutputError> {
    render_items(problems, format, "no problems found", PROBLEM_HEADER, |p| {
        [
            p.file.clone(),
            p.object.clone(),
            p.field.clone(),
            p.message.clone(),
        ]
    })
}

const PROBLEM_HEADER: [&str; 4] = ["FILE", "OBJECT", "FIELD", "PROBLEM"];

/// `items` in `format`: JSON or YAML of the items, or a table of `cells` under `header`
/// (`none` when there are no items).
pub fn render_items<T: serde::Serialize, const N: usize>(
    items: &[T],
    format: Format,
    none: &str,
    header: [&str; N],
    cells: impl Fn(&T) -> [String; N],
) -> Result<String, OutputError> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(items)? + "\n",
        Format::Yaml => serde_yaml::to_string(items)?,
        Format::Table if items.is_empty() => format!("{none}\n"),
        Format::Table => table(header, &items.iter().map(cells).collect::<Vec<_>>()),
    })
}

/// One value in `format`: JSON, YAML, or the text `table` makes of it.
pub fn render_one<T: serde::Serialize>(
    value: &T,
    format: Format,
    table: impl FnOnce(&T) -> String,
) -> Result<String, OutputError> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_yaml::to_string(value)?,
        Format::Table => table(value),
    })
}

/// `lanemeshctl status` as text: the pilot, its sidecars (per type: resources held, responses
/// not yet answered, resources refused), the objects it refused.
pub fn status_table(status: &Status) -> String {
    let mut out = format!("pilot {}: {}\n\n", status.pilot, status.ready);
    if status.sidecars.is_empty() {
        out.push_str("no sidecar connected\n");
    } else {
        let rows: Vec<[String; 5]> = status
            .sidecars
            .iter()
            .map(|s| {
                let pending: usize = s.types.values().map(|t| t.pending).sum();
                let nacked: usize = s.types.values().map(|t| t.nacked).sum();
                let held = s
                    .types
                    .iter()
                    .map(|(kind, t)| format!("{kind}={}", t.resources))
                    .collect::<Vec<_>>()
                    .join(",");
                let state = match (pending, nacked) {
                    (0, 0) => "ACKed".to_owned(),
                    (0, n) => format!("NACKed {n}"),
                    (p, 0) => format!("pending {p}"),
                    (p, n) => format!("pending {p}, NACKed {n}"),
                };
                let kind = if s.gateway { "gateway" } else { "sidecar" };
                [
                    s.node.clone(),
                    format!("{} ({kind})", s.app),
                    s.connected.clone(),
                    state,
                    held,
                ]
            })
            .collect();
        out.push_str(&table(
            ["NODE", "APP", "CONNECTED", "STATE", "HOLDS"],
            &rows,
        ));
    }
    out.push('\n');
    out.push_str(&refused_table(&status.refused));
    out
}

/// `lanemeshctl status` (API server) as text: the pilot replicas with the leader, the governed
/// pods, the refused objects.
pub fn cluster_status_table(status: &crate::view::ClusterStatus) -> String {
    let mut out = if status.pilots.is_empty() {
        format!(
            "no lanemesh-pilot pod in namespace {} (is lanemesh installed there? see -n)\n",
            status.namespace
        )
    } else {
        let rows: Vec<[String; 5]> = status
            .pilots
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    if p.ready { "ready" } else { "not ready" }.to_owned(),
                    if p.leader { "leader" } else { "-" }.to_owned(),
                    if p.ip.is_empty() {
                        "-".to_owned()
                    } else {
                        p.ip.clone()
                    },
                    if p.node.is_empty() {
                        "-".to_owned()
                    } else {
                        p.node.clone()
                    },
                ]
            })
            .collect();
        table(["PILOT", "READY", "LEASE", "IP", "NODE"], &rows)
    };
    if status.leader.is_some() && !status.pilots.iter().any(|p| p.leader) {
        out.push_str(&format!(
            "status lease held by {}, not a pilot pod listed here\n",
            status.leader.as_deref().unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "\n{} governed pods, {} ready (sidecar ACK state: lanemeshctl status --pilot <admin addr>)\n\n",
        status.governed_pods, status.governed_ready
    ));
    out.push_str(&refused_table(&status.refused));
    out
}

/// The refused objects and why, or a line saying there are none.
fn refused_table(refused: &[crate::view::Refused]) -> String {
    if refused.is_empty() {
        return "no refused objects\n".to_owned();
    }
    let rows: Vec<[String; 2]> = refused
        .iter()
        .map(|r| [r.object.clone(), r.message.clone()])
        .collect();
    table(["REFUSED OBJECT", "WHY"], &rows)
}

/// `lanemeshctl proxy-config` as text: each resource the pilot serves the pod, with its
/// version.
pub fn snapshot_table(snapshot: &serde_json::Value) -> String {
    let mut rows = Vec::new();
    if let Some(kinds) = snapshot.as_object() {
        for (kind, items) in kinds {
            for item in items.as_array().into_iter().flatten() {
                rows.push([
                    kind.clone(),
                    item["name"].as_str().unwrap_or_default().to_owned(),
                    item["version"].as_str().unwrap_or_default().to_owned(),
                ]);
            }
        }
    }
    if rows.is_empty() {
        return "nothing served\n".to_owned();
    }
    table(["KIND", "NAME", "VERSION"], &rows)
}

/// Columns aligned to their widest cell; the last column is not padded.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[&str; N]> = rows
        .iter()
        .map(|r| r.each_ref().map(String::as_str))
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i + 1 == row.len() {
                    (*cell).to_owned()
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(field: &str) -> Problem {
        Problem {
            file: "p.yaml".into(),
            object: "RateLimitPolicy default/limits".into(),
            field: field.into(),
            message: "must be >= 0, got -1".into(),
        }
    }

    #[test]
    fn table_aligns_columns_and_says_when_all_is_well() {
        let text = render(
            &[problem("spec.rules[0].qps.threshold"), problem("x")],
            Format::Table,
        )
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let at = |l: &str| l.find("must be").or_else(|| l.find("PROBLEM")).unwrap();
        assert!(lines.iter().all(|l| at(l) == at(lines[0])), "{text}");
        assert_eq!(render(&[], Format::Table).unwrap(), "no problems found\n");
    }

    #[test]
    fn json_and_yaml_carry_every_field() {
        let p = [problem("spec.x")];
        let json: serde_json::Value =
            serde_json::from_str(&render(&p, Format::Json).unwrap()).unwrap();
        assert_eq!(json[0]["field"], "spec.x");
        assert_eq!(json[0]["file"], "p.yaml");
        let yaml: serde_json::Value =
            serde_yaml::from_str(&render(&p, Format::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(render(&[], Format::Json).unwrap().trim(), "[]");
    }
}
