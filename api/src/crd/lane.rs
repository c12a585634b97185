//! `Lane`: one tagged version of a LaneGroup and the requests that enter it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{LABEL_VALUE_PATTERN, LaneMatch};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "lanemesh.io",
    version = "v1alpha1",
    kind = "Lane",
    namespaced,
    status = "LaneStatus",
    shortname = "ln",
    category = "lanemesh",
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.group"}"#,
    printcolumn = r#"{"name":"Tag","type":"string","jsonPath":".spec.tag"}"#,
    printcolumn = r#"{"name":"Enabled","type":"boolean","jsonPath":".spec.enabled"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".spec.weight"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LaneSpec {
    /// The LaneGroup (same namespace) this lane belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
    /// Pods labelled `alicloud.service.tag: <tag>` serve this lane.
    #[schemars(pattern(LABEL_VALUE_PATTERN))]
    pub tag: String,
    /// A disabled lane routes as base.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Content mode: which requests enter the lane.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub route_match: Option<LaneMatch>,
    /// Percentage mode: the share of requests, 0..100; the sum over a group
    /// must stay <= 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaneStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready governed pods carrying this lane's tag, per app of the group.
    // Bounded like every integer: an out-of-range value written to status
    // would make every client fail to decode the Lane.
    #[serde(default)]
    #[schemars(extend("additionalProperties" = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 4_294_967_295_u32}))]
    pub matched_pods: BTreeMap<String, u32>,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
