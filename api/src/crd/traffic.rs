//! `TrafficPolicy`: how every caller talks to an app: timeouts, retries with a budget, and the
//! warm-up of new instances (Envoy's `timeout`/`retry_policy`/`slow_start_config`, Linkerd's
//! retry budget, MSE's pre-warm), per destination app and route.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::circuit_breaker::GrpcCode;
use super::common::{DURATION_MAX_LENGTH, DURATION_PATTERN, PolicyStatus, RouteMatch};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "lanemesh.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "tp",
    category = "lanemesh",
    printcolumn = r#"{"name":"App","type":"string","jsonPath":".spec.app"}"#,
    printcolumn = r#"{"name":"Timeout","type":"string","jsonPath":".spec.timeout"}"#,
    printcolumn = r#"{"name":"Retries","type":"integer","jsonPath":".spec.retries.attempts"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The destination app; applied at every caller's outbound side (and at the gateway). One
    /// TrafficPolicy per app: of several, the first by name wins and the others are refused.
    #[schemars(length(min = 1, max = 253))]
    pub app: String,
    /// Whole-request timeout, retries included, until the response head, for requests no rule
    /// matches; unset = none. A timed-out request gets a 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub timeout: Option<String>,
    /// Retries for requests no rule matches; unset = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Per-route settings; the first rule whose match holds governs a request, and a field it
    /// leaves unset is taken from the policy's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<TrafficRule>,
    /// Bounds all retries towards the app (defaults: ratio 0.2, 10 per second, over 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Ramps a new instance's share of traffic from a small fraction to full; unset = full at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRule {
    #[schemars(pattern(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: String,
    #[serde(default, rename = "match")]
    pub route_match: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first attempt (`maxRetries`); 0 turns retries off for a rule.
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    /// Timeout of each attempt; unset = only the request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub per_try_timeout: Option<String>,
    /// What is retried. Unset together with `httpStatuses`: Istio's default, `connect-failure`,
    /// `reset`, `cancelled`, `unavailable` and HTTP 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Further HTTP statuses to retry: `503`, `5xx` or a range `500-504`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(inner(pattern(r"^([1-5]xx|[1-5][0-9]{2}(-[1-5][0-9]{2})?)$")))]
    pub http_statuses: Option<Vec<String>>,
    /// Further gRPC codes to retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub grpc_codes: Vec<GrpcCode>,
    /// Also retry methods that are not idempotent (POST, PATCH); only safe when the app
    /// deduplicates. Default false: GET, HEAD, OPTIONS, TRACE, PUT and DELETE are retried.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Exponential backoff with full jitter (defaults 25 ms and 250 ms, as Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// Envoy's and Istio's names for what to retry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection could not be established.
    ConnectFailure,
    /// The connection broke before a response head.
    Reset,
    /// An attempt hit `perTryTimeout`.
    PerTryTimeout,
    /// Any 5xx status, connect failures and resets (Envoy's `5xx`).
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503, 504, connect failures and resets (Envoy's `gateway-error`).
    GatewayError,
    /// gRPC CANCELLED.
    Cancelled,
    /// gRPC DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC INTERNAL.
    Internal,
    /// gRPC RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC UNAVAILABLE.
    Unavailable,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub base_interval: Option<String>,
    /// Defaults to 10 x `baseInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub max_interval: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed per request over `ttl` (0.2 = at most 20 % more load on a failing app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub ratio: Option<f64>,
    /// Retries per second always allowed, so low traffic still retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub min_retries_per_second: Option<u32>,
    /// How long requests and retries count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub ttl: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Warmup {
    /// How long a new instance ramps up (MSE's default 120 s).
    #[schemars(pattern(DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    pub duration: String,
    /// Curve shape: 1 = linear; larger = faster at the start (Envoy's `aggression`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.1, max = 100.0))]
    pub aggression: Option<f64>,
    /// Share of its full weight a brand-new instance gets, in percent (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub min_weight_percent: Option<u32>,
}
