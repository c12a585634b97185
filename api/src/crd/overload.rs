//! `OverloadProtectionPolicy`: CPU-driven adaptive load shedding for an app.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Fallback, PolicyStatus};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "lanemesh.io",
    version = "v1alpha1",
    kind = "OverloadProtectionPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "opp",
    category = "lanemesh",
    printcolumn = r#"{"name":"App","type":"string","jsonPath":".spec.app"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"CPU","type":"number","jsonPath":".spec.cpuThreshold"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OverloadProtectionPolicySpec {
    #[schemars(length(min = 1, max = 253))]
    pub app: String,
    #[serde(default)]
    pub mode: OverloadMode,
    /// CPU usage, as a share of the container's limit, above which load is shed.
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("cpuThreshold is a ratio in (0, 1]"))]
    pub cpu_threshold: f64,
    #[serde(default)]
    pub strategy: OverloadStrategy,
    /// Defaults to `503` with a short text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// Not `On`/`Off`: YAML 1.1, which the API server and kubectl read, turns
/// an unquoted `On` into `true` and the object would be refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OverloadMode {
    /// Shed load.
    #[default]
    Enabled,
    /// Count what would be shed, shed nothing.
    DryRun,
    Disabled,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OverloadStrategy {
    /// Shed when in-flight requests exceed max completed QPS x min RT.
    #[default]
    #[serde(rename = "BBR")]
    Bbr,
}
