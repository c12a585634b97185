//! `CircuitBreakerPolicy`: breakers every caller applies towards an app.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DURATION_MAX_LENGTH, DURATION_PATTERN, Fallback, MAX_COUNT, MAX_THRESHOLD, PolicyStatus,
    RouteMatch,
};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "lanemesh.io",
    version = "v1alpha1",
    kind = "CircuitBreakerPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "cbp",
    category = "lanemesh",
    printcolumn = r#"{"name":"App","type":"string","jsonPath":".spec.app"}"#,
    printcolumn = r#"{"name":"DryRun","type":"boolean","jsonPath":".spec.dryRun"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerPolicySpec {
    /// The destination app; enforced at every caller's outbound side.
    #[schemars(length(min = 1, max = 253))]
    pub app: String,
    /// Per-request timeout towards the app; a timed-out request counts as an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub timeout: Option<String>,
    /// Count what the breakers would have rejected (`lanemesh_dry_run_rejections_total`),
    /// reject nothing: to try thresholds on live traffic before enforcing them.
    #[serde(default)]
    pub dry_run: bool,
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<CircuitBreakerRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.strategy == 'ErrorCount' ? self.threshold >= 1.0 : (self.threshold > 0.0 && self.threshold <= 1.0)")
    .message("threshold is a ratio in (0, 1] for SlowRequestRatio and ErrorRatio, and a count >= 1 for ErrorCount"))]
#[x_kube(validation = Rule::new("self.strategy == 'SlowRequestRatio' ? has(self.slowRequestDuration) : !has(self.slowRequestDuration)")
    .message("slowRequestDuration is required with strategy SlowRequestRatio and allowed only there"))]
pub struct CircuitBreakerRule {
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    #[serde(default, rename = "match")]
    pub route_match: RouteMatch,
    pub strategy: BreakerStrategy,
    #[schemars(range(min = 0.0, max = MAX_THRESHOLD))]
    pub threshold: f64,
    /// SlowRequestRatio: a request taking at least this long is slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub slow_request_duration: Option<String>,
    /// The sliding window statistics are kept over.
    #[serde(default = "default_window")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub window: String,
    /// No decision before this many requests in the window.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 0, max = MAX_COUNT))]
    pub min_requests: u32,
    #[serde(default = "default_open_duration")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub open_duration: String,
    /// Requests let through when the open period ends.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_probes: u32,
    /// Defaults to `503` with a short text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// What counts as an error; defaults to 5xx and gRPC UNAVAILABLE,
    /// INTERNAL, UNKNOWN, DEADLINE_EXCEEDED. Connect failures, resets and
    /// timeouts always count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorCodes>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BreakerStrategy {
    SlowRequestRatio,
    ErrorRatio,
    ErrorCount,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCodes {
    /// `5xx`, `404` or a range `500-504`.
    #[serde(default)]
    #[schemars(inner(pattern(r"^([1-5]xx|[1-5][0-9]{2}(-[1-5][0-9]{2})?)$")))]
    pub http_statuses: Vec<String>,
    #[serde(default)]
    pub grpc_codes: Vec<GrpcCode>,
}

/// gRPC status codes by their canonical names (as in the gRPC spec), so
/// they read the same as in every gRPC library's docs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GrpcCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl GrpcCode {
    /// The code's number on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Cancelled => 1,
            Self::Unknown => 2,
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Aborted => 10,
            Self::OutOfRange => 11,
            Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::DataLoss => 15,
            Self::Unauthenticated => 16,
        }
    }
}

fn default_window() -> String {
    "10s".to_owned()
}

fn default_open_duration() -> String {
    "10s".to_owned()
}

fn default_min_requests() -> u32 {
    5
}

fn one() -> u32 {
    1
}
