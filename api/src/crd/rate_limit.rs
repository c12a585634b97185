//! `RateLimitPolicy`: inbound QPS, concurrency and hot-parameter limits of an app.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DURATION_MAX_LENGTH, DURATION_PATTERN, Fallback, MAX_COUNT, MAX_THRESHOLD, ParamSource,
    PolicyStatus, RouteMatch,
};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "lanemesh.io",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "rlp",
    category = "lanemesh",
    printcolumn = r#"{"name":"App","type":"string","jsonPath":".spec.app"}"#,
    printcolumn = r#"{"name":"DryRun","type":"boolean","jsonPath":".spec.dryRun"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// The app (`msePilotCreateAppName`) whose inbound traffic is limited.
    #[schemars(length(min = 1, max = 253))]
    pub app: String,
    /// Count what would be rejected, reject nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<RateLimitRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.qps) || has(self.concurrency) || (has(self.hotParams) && size(self.hotParams) > 0)")
    .message("a rule limits something: set qps, concurrency or hotParams"))]
pub struct RateLimitRule {
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Which requests the rule governs; absent = all.
    #[serde(default, rename = "match")]
    pub route_match: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qps: Option<QpsLimit>,
    /// `Cluster` divides the QPS threshold over the app's ready replicas.
    #[serde(default)]
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub hot_params: Vec<HotParam>,
    /// Defaults to `429` with a short text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.behavior == 'WarmUp' ? has(self.warmUpPeriod) : !has(self.warmUpPeriod)")
    .message("warmUpPeriod is required with behavior WarmUp and allowed only there"))]
#[x_kube(validation = Rule::new("self.behavior == 'Queue' || !has(self.maxQueueTime)")
    .message("maxQueueTime is allowed only with behavior Queue"))]
pub struct QpsLimit {
    /// Admitted requests per second; 0 rejects everything.
    #[schemars(range(min = 0.0, max = MAX_THRESHOLD))]
    pub threshold: f64,
    #[serde(default)]
    pub behavior: QpsBehavior,
    /// WarmUp: time to go from threshold/3 to threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub warm_up_period: Option<String>,
    /// Queue: the longest a request may wait; 0 = never wait. Default 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub max_queue_time: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum QpsBehavior {
    /// Reject what exceeds the threshold.
    #[default]
    Reject,
    /// Start at a third of the threshold and ramp up over `warmUpPeriod`.
    WarmUp,
    /// Space requests evenly, waiting up to `maxQueueTime`.
    Queue,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Scope {
    #[default]
    PerPod,
    Cluster,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyLimit {
    /// In-flight requests admitted at once; 0 rejects everything.
    #[schemars(range(min = 0, max = MAX_COUNT))]
    pub max: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.source in ['ClientIP', 'Host'] ? !has(self.name) : has(self.name)")
    .message("Header, Query and Cookie hot params need a name; ClientIP and Host take none"))]
pub struct HotParam {
    pub source: ParamSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
    /// Requests per window for one value.
    #[schemars(range(min = 0.0, max = MAX_THRESHOLD))]
    pub threshold: f64,
    /// Extra requests a quiet value may burst by.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_COUNT))]
    pub burst: u32,
    #[serde(default = "default_window")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub window: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub overrides: Vec<HotParamOverride>,
    /// Values tracked at once (least recently seen are forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::limits::MAX_TRACKED_VALUES))]
    pub max_tracked_values: Option<u32>,
}

fn default_window() -> String {
    "1s".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HotParamOverride {
    pub value: String,
    #[schemars(range(min = 0.0, max = MAX_THRESHOLD))]
    pub threshold: f64,
}
