//! Runtime lane configuration, converted from `proto::LaneGroup` at the edge
//! (`from_proto.rs`).
//!
//! The control plane has already validated every group (`lanemesh_api::convert`); the checks here
//! are the ones the data plane cannot do without (a regex must compile, a header name must be
//! valid, an enum value must be known) plus the invariants the decision relies on (tags unique
//! within a group, weights summing to at most 100). A refused group surfaces as a NACK naming it.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use regex::Regex;

// Fallbacks for fields a resource leaves unset: the same documented values
// the control plane fills in.
pub use lanemesh_api::defaults::{
    TAG_HEADER as DEFAULT_TAG_HEADER, TRACE_HEADERS as DEFAULT_TRACE_HEADERS,
};
/// Trace table bound used when the resource leaves it at 0.
pub const DEFAULT_TRACE_TABLE_SIZE: usize = lanemesh_api::defaults::TRACE_TABLE_SIZE as usize;
/// Trace table TTL used when the resource has none.
pub const DEFAULT_TRACE_TTL: Duration = lanemesh_api::defaults::TRACE_TTL;

/// How a group assigns requests to lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// By each lane's match conditions.
    Content,
    /// By a random draw against the lanes' weights.
    Percentage,
}

/// How a lane's conditions combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logic {
    /// Every condition holds.
    All,
    /// At least one condition holds.
    Any,
}

/// Where a condition reads its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header (first value).
    Header(HeaderName),
    /// A query parameter (first occurrence, percent-decoded), name compared case-sensitively.
    Query(String),
    /// A cookie (first occurrence), name compared case-sensitively.
    Cookie(String),
}

/// A condition's test on the key's value.
#[derive(Debug, Clone)]
pub enum Operator {
    /// Value equals.
    Equal(String),
    /// Value present and different.
    NotEqual(String),
    /// Value is one of.
    In(Vec<String>),
    /// Value present and none of.
    NotIn(Vec<String>),
    /// Value starts with.
    Prefix(String),
    /// Whole value matches (anchored `^(?:pattern)$`).
    Regex(Regex),
    /// `fnv1a64(value) % 100 < percent`.
    Percentage(u8),
}

/// One condition of a lane's match.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Where the key is read.
    pub source: Source,
    /// The test.
    pub operator: Operator,
}

/// A lane's match: conditions combined by `logic`.
#[derive(Debug, Clone)]
pub struct LaneMatch {
    /// How the conditions combine.
    pub logic: Logic,
    /// The conditions; empty `All` holds for every request, empty `Any` for none.
    pub conditions: Vec<Condition>,
}

/// One lane of a group.
#[derive(Debug, Clone)]
pub struct LaneRule {
    /// The Lane object's name; the stable order of evaluation.
    pub name: String,
    /// The tag requests in this lane carry.
    pub tag: Arc<str>,
    /// Disabled lanes are skipped by the decision and route as base.
    pub enabled: bool,
    /// Content mode: the lane's conditions. Percentage mode: an optional extra filter.
    pub lane_match: Option<LaneMatch>,
    /// Percentage mode: share of requests, 0..=100.
    pub weight: u8,
}

/// How a trace id is cut out of a trace header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceIdFormat {
    /// W3C `traceparent`: `version-traceid-parentid-flags`, the second field.
    TraceParent,
    /// Zipkin single `b3`: `traceid-spanid-...`, the first field.
    B3Single,
    /// Jaeger `uber-trace-id`: `traceid:spanid:parent:flags`, the part before the first `:`.
    Jaeger,
    /// SkyWalking `sw8`: `sample-traceid-segment-...`, the second (base64) field.
    Sw8,
    /// Anything else (`x-b3-traceid`, `x-request-id`, ...): the whole value.
    Whole,
}

impl TraceIdFormat {
    /// The format implied by a (lower-case) header name.
    pub fn for_header(name: &str) -> Self {
        match name {
            "traceparent" => Self::TraceParent,
            "b3" => Self::B3Single,
            "uber-trace-id" => Self::Jaeger,
            "sw8" => Self::Sw8,
            _ => Self::Whole,
        }
    }

    /// The trace id in `value`, or `None` when the value is malformed or names no trace.
    pub fn extract(self, value: &str) -> Option<&str> {
        let value = value.trim();
        let id = match self {
            Self::TraceParent => value.split('-').nth(1)?,
            Self::B3Single => value.split('-').next()?,
            Self::Jaeger => {
                // Some clients send the header URL-encoded (`%3A` for `:`).
                let end = value
                    .find(':')
                    .or_else(|| value.to_ascii_lowercase().find("%3a"))
                    .unwrap_or(value.len());
                &value[..end]
            }
            Self::Sw8 => value.split('-').nth(1)?,
            Self::Whole => value,
        };
        // An all-zero id is the "invalid" trace id of W3C/B3/Jaeger; it would link unrelated requests.
        (!id.is_empty() && !id.bytes().all(|b| b == b'0')).then_some(id)
    }
}

/// A configured trace header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// The header.
    pub name: HeaderName,
    /// How to read its trace id.
    pub format: TraceIdFormat,
}

impl TraceHeader {
    /// A trace header named `name` with the format its name implies.
    pub fn new(name: HeaderName) -> Self {
        let format = TraceIdFormat::for_header(name.as_str());
        Self { name, format }
    }
}

/// A group's propagation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagationConfig {
    /// Headers whose trace id links outbound requests to inbound ones.
    pub trace_headers: Vec<TraceHeader>,
    /// Rule (4): use the lane all in-flight inbound requests share.
    pub inflight: bool,
    /// Rule (5): use the pod's own tag.
    pub color_by_node: bool,
    /// Bound of the trace table.
    pub trace_table_size: usize,
    /// Lifetime of a trace table entry.
    pub trace_ttl: Duration,
}

impl Default for PropagationConfig {
    /// The CRD defaults.
    fn default() -> Self {
        Self {
            trace_headers: DEFAULT_TRACE_HEADERS
                .iter()
                .map(|h| TraceHeader::new(HeaderName::from_static(h)))
                .collect(),
            inflight: true,
            color_by_node: true,
            trace_table_size: DEFAULT_TRACE_TABLE_SIZE,
            trace_ttl: DEFAULT_TRACE_TTL,
        }
    }
}

/// A lane group ready for the decision: lanes sorted by name, regexes compiled.
#[derive(Debug, Clone)]
pub struct LaneGroupConfig {
    /// `namespace/name`.
    pub name: String,
    /// Apps released together.
    pub apps: Vec<String>,
    /// Apps whose inbound evaluates the lane rules.
    pub entry_apps: Vec<String>,
    /// Content or Percentage.
    pub routing_mode: RoutingMode,
    /// The header carrying the tag (lower case).
    pub tag_header: HeaderName,
    /// How the tag crosses a hop.
    pub propagation: PropagationConfig,
    /// Lanes in name order.
    pub lanes: Vec<LaneRule>,
}

impl LaneGroupConfig {
    /// Whether `app` is one of the group's apps.
    pub fn contains_app(&self, app: &str) -> bool {
        self.apps.iter().any(|a| a == app)
    }

    /// Whether `app` evaluates the group's lane rules on its inbound.
    pub fn is_entry_app(&self, app: &str) -> bool {
        self.entry_apps.iter().any(|a| a == app)
    }

    /// Whether the group has an enabled lane tagged `tag`.
    pub fn is_enabled(&self, tag: &str) -> bool {
        self.lanes.iter().any(|l| l.enabled && &*l.tag == tag)
    }
}

mod from_proto;
pub use from_proto::LaneConfigError;

#[cfg(test)]
pub(crate) mod tests;
