//! What `lanemeshctl lanes` and `lanemeshctl status` show, as data (pure): lane rows from lane
//! groups and lanes, and the pilot's status.

use std::collections::BTreeMap;

use lanemesh_api::crd::lane_group::RoutingMode;
use lanemesh_api::crd::{Lane, LaneGroup};
use serde::{Deserialize, Serialize};

/// One lane of a group, or a group without lanes (every request stays in base).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaneRow {
    pub namespace: String,
    pub group: String,
    /// `Content` or `Percentage`.
    pub mode: String,
    /// The group's apps, entry apps marked `*`.
    pub apps: Vec<String>,
    /// Empty for a group without lanes.
    pub lane: String,
    pub tag: String,
    pub enabled: bool,
    /// Percentage mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The `Accepted` condition the control plane wrote (`True`, `False`), or `Unknown`.
    pub accepted: String,
    /// Ready pods carrying the lane's tag, per app of the group, as the control plane counted
    /// them (`status.matchedPods`).
    pub matched_pods: BTreeMap<String, u32>,
    /// Requests per second that entered this lane: served in it by the group's entry apps (by
    /// all its apps when it names none), when the pilot scrapes the sidecars' metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    /// Of those, 5xx answers and requests that got none, per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_qps: Option<f64>,
}

/// The latest rates of one app's lanes (`""` = base): `(total, errors)` per second.
pub type LaneRates = BTreeMap<String, BTreeMap<String, (f64, f64)>>;

/// Fills each lane row's QPS from `rates` (app -> lane tag -> rates): the requests in the
/// lane's tag at the group's entry apps (every app when none is an entry), so a request that
/// crosses three apps of the lane counts once.
pub fn add_rates(rows: &mut [LaneRow], rates: &LaneRates) {
    for row in rows.iter_mut().filter(|r| !r.tag.is_empty()) {
        let (mut total, mut errors) = (0.0, 0.0);
        let entries: Vec<&str> = row
            .apps
            .iter()
            .filter_map(|a| a.strip_suffix('*'))
            .collect();
        let apps: Vec<&str> = if entries.is_empty() {
            row.apps.iter().map(String::as_str).collect()
        } else {
            entries
        };
        for app in apps {
            if let Some((t, e)) = rates.get(app).and_then(|lanes| lanes.get(&row.tag)) {
                total += t;
                errors += e;
            }
        }
        row.qps = Some(total);
        row.error_qps = Some(errors);
    }
}

/// The rows of `groups` and their `lanes`, by namespace, group and lane name; a Lane whose
/// group does not exist is listed with that group's name and mode `-`.
pub fn lane_rows(groups: &[LaneGroup], lanes: &[Lane]) -> Vec<LaneRow> {
    let ns = |m: &kube::core::ObjectMeta| m.namespace.clone().unwrap_or_default();
    let name = |m: &kube::core::ObjectMeta| m.name.clone().unwrap_or_default();
    let mut rows = Vec::new();
    for g in groups {
        let (namespace, group) = (ns(&g.metadata), name(&g.metadata));
        let mode = match g.spec.routing_mode {
            RoutingMode::Content => "Content",
            RoutingMode::Percentage => "Percentage",
        };
        let apps: Vec<String> = g
            .spec
            .apps
            .iter()
            .map(|a| {
                if g.spec.entry_apps.contains(a) {
                    format!("{a}*")
                } else {
                    a.clone()
                }
            })
            .collect();
        let of_group: Vec<&Lane> = lanes
            .iter()
            .filter(|l| ns(&l.metadata) == namespace && l.spec.group == group)
            .collect();
        if of_group.is_empty() {
            rows.push(LaneRow {
                namespace: namespace.clone(),
                group: group.clone(),
                mode: mode.to_owned(),
                apps: apps.clone(),
                lane: String::new(),
                tag: String::new(),
                enabled: false,
                weight: None,
                accepted: accepted(g.status.as_ref().map(|s| s.conditions.as_slice())),
                matched_pods: BTreeMap::new(),
                qps: None,
                error_qps: None,
            });
        }
        for l in of_group {
            rows.push(lane_row(l, &namespace, mode, &apps, g.spec.routing_mode));
        }
    }
    for l in lanes {
        let has_group = groups
            .iter()
            .any(|g| ns(&g.metadata) == ns(&l.metadata) && name(&g.metadata) == l.spec.group);
        if !has_group {
            rows.push(lane_row(
                l,
                &ns(&l.metadata),
                "-",
                &[],
                RoutingMode::Content,
            ));
        }
    }
    rows.sort_by(|a, b| (&a.namespace, &a.group, &a.lane).cmp(&(&b.namespace, &b.group, &b.lane)));
    rows
}

fn lane_row(
    l: &Lane,
    namespace: &str,
    mode: &str,
    apps: &[String],
    routing: RoutingMode,
) -> LaneRow {
    LaneRow {
        namespace: namespace.to_owned(),
        group: l.spec.group.clone(),
        mode: mode.to_owned(),
        apps: apps.to_vec(),
        lane: l.metadata.name.clone().unwrap_or_default(),
        tag: l.spec.tag.clone(),
        enabled: l.spec.enabled,
        weight: match routing {
            RoutingMode::Percentage => Some(l.spec.weight.unwrap_or(0)),
            RoutingMode::Content => None,
        },
        accepted: accepted(l.status.as_ref().map(|s| s.conditions.as_slice())),
        matched_pods: l
            .status
            .as_ref()
            .map(|s| s.matched_pods.clone())
            .unwrap_or_default(),
        qps: None,
        error_qps: None,
    }
}

fn accepted(
    conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
) -> String {
    conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Accepted")
        .map_or_else(|| "Unknown".to_owned(), |c| c.status.clone())
}

/// The table columns of a row.
pub fn lane_cells(r: &LaneRow) -> [String; 11] {
    let matched = if r.matched_pods.is_empty() {
        "-".to_owned()
    } else {
        r.matched_pods
            .iter()
            .map(|(app, n)| format!("{app}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    [
        r.namespace.clone(),
        r.group.clone(),
        r.mode.clone(),
        if r.lane.is_empty() {
            "-".to_owned()
        } else {
            r.lane.clone()
        },
        if r.tag.is_empty() {
            "-".to_owned()
        } else {
            r.tag.clone()
        },
        if r.lane.is_empty() {
            "-".to_owned()
        } else {
            r.enabled.to_string()
        },
        r.weight.map_or_else(|| "-".to_owned(), |w| format!("{w}%")),
        r.accepted.clone(),
        matched,
        r.qps.map_or_else(|| "-".to_owned(), |q| format!("{q:.1}")),
        r.error_qps
            .map_or_else(|| "-".to_owned(), |q| format!("{q:.1}")),
    ]
}

/// The table header matching [`lane_cells`].
pub const LANE_HEADER: [&str; 11] = [
    "NAMESPACE",
    "GROUP",
    "MODE",
    "LANE",
    "TAG",
    "ENABLED",
    "WEIGHT",
    "ACCEPTED",
    "MATCHED PODS",
    "QPS",
    "ERR QPS",
];

/// One connected sidecar, as `/debug/streams` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub node: String,
    pub app: String,
    #[serde(default)]
    pub gateway: bool,
    pub connected: String,
    pub types: BTreeMap<String, TypeState>,
}

/// One resource type of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeState {
    pub resources: usize,
    pub pending: usize,
    pub nacked: usize,
}

/// An object the pilot refused, as `/debug/rejected` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub object: String,
    pub message: String,
}

/// Everything `lanemeshctl status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub pilot: String,
    /// `/readyz` of the pilot: `ready`, or why not.
    pub ready: String,
    pub sidecars: Vec<Stream>,
    pub refused: Vec<Refused>,
}

/// One pilot pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PilotReplica {
    pub name: String,
    pub ready: bool,
    pub ip: String,
    pub node: String,
    /// Holds the status Lease: this replica writes CRD status.
    pub leader: bool,
}

/// `lanemeshctl status` from the API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The pilot's namespace.
    pub namespace: String,
    pub pilots: Vec<PilotReplica>,
    /// The status Lease's holder identity, when held.
    pub leader: Option<String>,
    /// Pods labelled `msePilotAutoEnable: "on"`, and of them the ready ones.
    pub governed_pods: usize,
    pub governed_ready: usize,
    /// Objects whose `Accepted` condition is `False`, with reason and message.
    pub refused: Vec<Refused>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn lanes_come_with_their_group_status_and_orphans_are_kept() {
        let group: LaneGroup = parse(
            "apiVersion: lanemesh.io/v1alpha1\nkind: LaneGroup\nmetadata: {name: flow, namespace: shop}\nspec: {apps: [a, b], entryApps: [a], routingMode: Percentage}",
        );
        let empty: LaneGroup = parse(
            "apiVersion: lanemesh.io/v1alpha1\nkind: LaneGroup\nmetadata: {name: idle, namespace: shop}\nspec: {apps: [c]}",
        );
        let gray: Lane = parse(
            r#"apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec: {group: flow, tag: gray, enabled: true, weight: 30}
status:
  matchedPods: {a: 1, b: 0}
  conditions: [{type: Accepted, status: "True", reason: Accepted, message: ok, lastTransitionTime: "2026-12-07T10:00:00Z"}]
"#,
        );
        let orphan: Lane = parse(
            "apiVersion: lanemesh.io/v1alpha1\nkind: Lane\nmetadata: {name: blue, namespace: shop}\nspec: {group: nowhere, tag: blue}",
        );
        let mut rows = lane_rows(&[group, empty], &[gray, orphan]);
        let row = |cells: [&str; 11]| cells.map(String::from);
        let cells: Vec<[String; 11]> = rows.iter().map(lane_cells).collect();
        assert_eq!(
            cells,
            [
                row([
                    "shop",
                    "flow",
                    "Percentage",
                    "gray",
                    "gray",
                    "true",
                    "30%",
                    "True",
                    "a=1,b=0",
                    "-",
                    "-"
                ]),
                row([
                    "shop", "idle", "Content", "-", "-", "-", "-", "Unknown", "-", "-", "-"
                ]),
                row([
                    "shop", "nowhere", "-", "blue", "blue", "true", "-", "Unknown", "-", "-", "-"
                ]),
            ]
        );
        // The pilot's rates: the entry app a's gray requests; b's (the same requests further
        // down), c's (not in the group) and base do not count.
        let rates: LaneRates = [
            ("a", vec![("gray", (2.0, 0.5)), ("", (10.0, 0.0))]),
            ("b", vec![("gray", (1.25, 0.0))]),
            ("c", vec![("gray", (100.0, 100.0))]),
        ]
        .into_iter()
        .map(|(app, lanes)| {
            (
                app.to_owned(),
                lanes.into_iter().map(|(l, r)| (l.to_owned(), r)).collect(),
            )
        })
        .collect();
        add_rates(&mut rows, &rates);
        assert_eq!((rows[0].qps, rows[0].error_qps), (Some(2.0), Some(0.5)));
        assert_eq!(
            lane_cells(&rows[0])[9..],
            ["2.0".to_owned(), "0.5".to_owned()]
        );
        assert_eq!(rows[1].qps, None, "a group without lanes");
        assert_eq!(rows[2].qps, Some(0.0), "a lane nobody sends to");
        assert_eq!(rows[0].apps, ["a*", "b"]);
    }
}
