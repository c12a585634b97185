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
