//! The documented values of fields a user may leave out.
//!
//! One place for both planes: the control plane fills them in when it
//! converts a CRD, and the sidecar falls back to the same values when a
//! resource (from an older control plane, or a test) leaves a field unset.

use std::time::Duration;

/// The header carrying the lane tag (MSE's, DESIGN §2).
pub const TAG_HEADER: &str = "x-mse-tag";

/// The trace contexts that common agents forward with no code change:
/// W3C, a request id, Zipkin B3, Jaeger and SkyWalking.
pub const TRACE_HEADERS: [&str; 5] = [
    "traceparent",
    "x-request-id",
    "x-b3-traceid",
    "uber-trace-id",
    "sw8",
];

/// Bound of a sidecar's trace-id table.
pub const TRACE_TABLE_SIZE: u32 = 10_000;

/// How long a trace id stays linked to its lane.
pub const TRACE_TTL: Duration = Duration::from_secs(60);

/// `Queue` behaviour: the longest a request may wait.
pub const MAX_QUEUE_TIME: Duration = Duration::from_millis(500);

/// Hot parameters: values tracked at once per parameter.
pub const HOT_PARAM_TRACKED_VALUES: u32 = 10_000;

/// Status of a request rejected by a rate limit.
pub const LIMIT_STATUS: u32 = 429;

/// HTTP statuses a breaker counts as errors when its rule lists none (inclusive range).
pub const BREAKER_HTTP_ERRORS: (u16, u16) = (500, 599);

/// gRPC statuses a breaker counts as errors when its rule lists none: UNKNOWN,
/// DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE (DESIGN §4).
pub const BREAKER_GRPC_ERRORS: [u32; 4] = [2, 4, 13, 14];

/// Status of a request rejected by a breaker or overload protection.
pub const SHED_STATUS: u32 = 503;

/// Retry backoff when a TrafficPolicy names none (Envoy's 25 ms base; max 10 x base).
pub const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Retry budget when a TrafficPolicy names none (Linkerd's): retries may add 20 % to the
/// requests of the last 10 s, plus 10 per second.
pub const RETRY_BUDGET_RATIO: f64 = 0.2;
pub const RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
pub const RETRY_BUDGET_TTL: Duration = Duration::from_secs(10);

/// What is retried when a TrafficPolicy's retries name nothing (Istio's default
/// `connect-failure,refused-stream,unavailable,cancelled,503`): HTTP 503, gRPC CANCELLED and
/// UNAVAILABLE, connect failures and resets.
pub const RETRY_HTTP_STATUS: u16 = 503;
pub const RETRY_GRPC_CODES: [u32; 2] = [1, 14];

/// Warm-up curve when a TrafficPolicy's warmup names none (Envoy's slow start: linear from
/// 10 %).
pub const WARMUP_AGGRESSION: f64 = 1.0;
pub const WARMUP_MIN_WEIGHT_PERCENT: u32 = 10;
