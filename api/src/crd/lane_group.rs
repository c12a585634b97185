//! `LaneGroup`: a set of apps released together.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{HEADER_NAME_PATTERN, PolicyStatus};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "lanemesh.io",
    version = "v1alpha1",
    kind = "LaneGroup",
    namespaced,
    status = "PolicyStatus",
    shortname = "lg",
    category = "lanemesh",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.routingMode"}"#,
    printcolumn = r#"{"name":"Apps","type":"string","jsonPath":".spec.apps"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.entryApps) || self.entryApps.all(a, a in self.apps)")
    .message("every entry app must also be listed in apps"))]
pub struct LaneGroupSpec {
    /// The apps (`msePilotCreateAppName`) released together.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub apps: Vec<String>,
    /// Where lane rules are evaluated (besides a gateway): the apps that
    /// receive traffic from outside the group.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub entry_apps: Vec<String>,
    /// Fixed at creation: switching a live group between content and
    /// percentage routing would silently re-route in-flight users.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("routingMode is immutable; create a new LaneGroup to change it"))]
    pub routing_mode: RoutingMode,
    /// The header that carries the lane tag.
    #[serde(default = "default_tag_header")]
    #[schemars(pattern(HEADER_NAME_PATTERN), length(max = 256))]
    pub tag_header: String,
    #[serde(default)]
    pub propagation: Propagation,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RoutingMode {
    /// Lanes are chosen by their match conditions.
    #[default]
    Content,
    /// Lanes get a random share of requests by weight.
    Percentage,
}

/// How a sidecar links an app's outbound requests to the inbound request
/// that caused them (DESIGN §4, "Carrying the lane across a hop").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Propagation {
    #[serde(default = "default_trace_headers")]
    #[schemars(
        inner(pattern(HEADER_NAME_PATTERN), length(max = 256)),
        length(max = 16)
    )]
    pub trace_headers: Vec<String>,
    /// Use the lane of the in-flight inbound requests when they all share one.
    #[serde(default = "yes")]
    pub inflight: bool,
    /// Use the pod's own tag when nothing else decides.
    #[serde(default = "yes")]
    pub color_by_node: bool,
    /// Bound of the trace-id table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub trace_table_size: Option<u32>,
    /// How long a trace id stays linked to its lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(super::common::DURATION_PATTERN), length(max = super::common::DURATION_MAX_LENGTH))]
    pub trace_ttl: Option<String>,
}

impl Default for Propagation {
    fn default() -> Self {
        Self {
            trace_headers: default_trace_headers(),
            inflight: true,
            color_by_node: true,
            trace_table_size: None,
            trace_ttl: None,
        }
    }
}

fn default_tag_header() -> String {
    crate::defaults::TAG_HEADER.to_owned()
}

fn default_trace_headers() -> Vec<String> {
    crate::defaults::TRACE_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect()
}

fn yes() -> bool {
    true
}
