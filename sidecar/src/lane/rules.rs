//! Runtime lane configuration, converted from `proto::LaneGroup` at the edge.
//!
//! The control plane has already validated every group (`lanemesh_api::convert`); the checks here
//! are the ones the data plane cannot do without (a regex must compile, a header name must be
//! valid, an enum value must be known) plus the invariants the decision relies on (tags unique
//! within a group, weights summing to at most 100). A refused group surfaces as a NACK naming it.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use lanemesh_api::proto;
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

/// A `proto::LaneGroup` the sidecar refuses. Messages name the group (and lane) so the NACK points
/// at the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LaneConfigError {
    /// The group has no name.
    #[error("lane group: name must not be empty")]
    EmptyName,
    /// A header name (tag header, trace header, header condition) that HTTP does not allow.
    #[error("lane group {group}: invalid header name {name:?} in {field}")]
    InvalidHeaderName {
        /// The group's resource name.
        group: String,
        /// Where the name appeared.
        field: &'static str,
        /// The refused name.
        name: String,
    },
    /// An enum number this sidecar does not know (a newer control plane).
    #[error("lane group {group}: unknown {field} value {value}")]
    UnknownEnum {
        /// The group's resource name.
        group: String,
        /// The field.
        field: &'static str,
        /// The refused number.
        value: i32,
    },
    /// A condition source that lane matches do not support (ClientIP, Host).
    #[error(
        "lane group {group}, lane {lane}: condition source {source_name} is not allowed in lane matches"
    )]
    UnsupportedSource {
        /// The group's resource name.
        group: String,
        /// The lane's name.
        lane: String,
        /// The refused source.
        source_name: &'static str,
    },
    /// A condition without a key name.
    #[error("lane group {group}, lane {lane}: a condition has an empty name")]
    EmptyConditionName {
        /// The group's resource name.
        group: String,
        /// The lane's name.
        lane: String,
    },
    /// A regex that does not compile.
    #[error("lane group {group}, lane {lane}: invalid regex {pattern:?}: {reason}")]
    InvalidRegex {
        /// The group's resource name.
        group: String,
        /// The lane's name.
        lane: String,
        /// The pattern as written.
        pattern: String,
        /// The compiler's message.
        reason: String,
    },
    /// A percentage or weight above 100.
    #[error("lane group {group}, lane {lane}: {field} must be 0..=100, got {value}")]
    OutOfRange {
        /// The group's resource name.
        group: String,
        /// The lane's name.
        lane: String,
        /// The field.
        field: &'static str,
        /// The refused value.
        value: u32,
    },
    /// The weights of a Percentage group's enabled lanes exceed 100.
    #[error("lane group {group}: lane weights sum to {sum}, more than 100")]
    WeightSumExceeded {
        /// The group's resource name.
        group: String,
        /// The sum.
        sum: u32,
    },
    /// A lane with an empty tag.
    #[error("lane group {group}, lane {lane}: empty tag")]
    EmptyTag {
        /// The group's resource name.
        group: String,
        /// The lane's name.
        lane: String,
    },
    /// Two lanes of one group with the same tag.
    #[error("lane group {group}: tag {tag:?} is used by more than one lane")]
    DuplicateTag {
        /// The group's resource name.
        group: String,
        /// The repeated tag.
        tag: String,
    },
}

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

impl TryFrom<&proto::LaneGroup> for LaneGroupConfig {
    type Error = LaneConfigError;

    fn try_from(g: &proto::LaneGroup) -> Result<Self, Self::Error> {
        if g.name.trim().is_empty() {
            return Err(LaneConfigError::EmptyName);
        }
        let group = || g.name.clone();
        let routing_mode = match proto::RoutingMode::try_from(g.routing_mode) {
            Ok(proto::RoutingMode::Content) => RoutingMode::Content,
            Ok(proto::RoutingMode::Percentage) => RoutingMode::Percentage,
            Err(_) => {
                return Err(LaneConfigError::UnknownEnum {
                    group: group(),
                    field: "routingMode",
                    value: g.routing_mode,
                });
            }
        };
        let tag_header = if g.tag_header.is_empty() {
            HeaderName::from_static(DEFAULT_TAG_HEADER)
        } else {
            header_name(&g.name, "tagHeader", &g.tag_header)?
        };
        let propagation = match &g.propagation {
            None => PropagationConfig::default(),
            Some(p) => propagation(&g.name, p)?,
        };
        let mut lanes = g
            .lanes
            .iter()
            .map(|l| lane(&g.name, l))
            .collect::<Result<Vec<_>, _>>()?;
        lanes.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, l) in lanes.iter().enumerate() {
            if lanes[..i].iter().any(|o| o.tag == l.tag) {
                return Err(LaneConfigError::DuplicateTag {
                    group: group(),
                    tag: l.tag.to_string(),
                });
            }
        }
        let sum: u32 = lanes
            .iter()
            .filter(|l| l.enabled)
            .map(|l| u32::from(l.weight))
            .sum();
        if routing_mode == RoutingMode::Percentage && sum > 100 {
            return Err(LaneConfigError::WeightSumExceeded {
                group: group(),
                sum,
            });
        }
        Ok(Self {
            name: g.name.clone(),
            apps: g.apps.clone(),
            entry_apps: g.entry_apps.clone(),
            routing_mode,
            tag_header,
            propagation,
            lanes,
        })
    }
}

fn header_name(
    group: &str,
    field: &'static str,
    name: &str,
) -> Result<HeaderName, LaneConfigError> {
    // `from_bytes` lower-cases, which is how HTTP/2 carries names and how HeaderMap stores them.
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| LaneConfigError::InvalidHeaderName {
        group: group.to_owned(),
        field,
        name: name.to_owned(),
    })
}

fn propagation(group: &str, p: &proto::Propagation) -> Result<PropagationConfig, LaneConfigError> {
    let trace_headers = p
        .trace_headers
        .iter()
        .map(|h| header_name(group, "propagation.traceHeaders", h).map(TraceHeader::new))
        .collect::<Result<Vec<_>, _>>()?;
    let trace_table_size = match p.trace_table_size {
        0 => DEFAULT_TRACE_TABLE_SIZE,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let trace_ttl = p
        .trace_ttl
        .as_ref()
        .map(|d| {
            let secs = u64::try_from(d.seconds).unwrap_or(0);
            let nanos = u32::try_from(d.nanos).unwrap_or(0);
            Duration::new(secs, nanos)
        })
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TRACE_TTL);
    Ok(PropagationConfig {
        trace_headers,
        inflight: p.inflight,
        color_by_node: p.color_by_node,
        trace_table_size,
        trace_ttl,
    })
}

fn lane(group: &str, l: &proto::Lane) -> Result<LaneRule, LaneConfigError> {
    if l.tag.is_empty() {
        return Err(LaneConfigError::EmptyTag {
            group: group.to_owned(),
            lane: l.name.clone(),
        });
    }
    let weight = u8::try_from(l.weight)
        .ok()
        .filter(|w| *w <= 100)
        .ok_or_else(|| LaneConfigError::OutOfRange {
            group: group.to_owned(),
            lane: l.name.clone(),
            field: "weight",
            value: l.weight,
        })?;
    let lane_match = l
        .r#match
        .as_ref()
        .map(|m| lane_match(group, &l.name, m))
        .transpose()?;
    Ok(LaneRule {
        name: l.name.clone(),
        tag: Arc::from(l.tag.as_str()),
        enabled: l.enabled,
        lane_match,
        weight,
    })
}

fn lane_match(group: &str, lane: &str, m: &proto::Match) -> Result<LaneMatch, LaneConfigError> {
    let logic = match proto::Logic::try_from(m.logic) {
        Ok(proto::Logic::All) => Logic::All,
        Ok(proto::Logic::Any) => Logic::Any,
        Err(_) => {
            return Err(LaneConfigError::UnknownEnum {
                group: group.to_owned(),
                field: "match.logic",
                value: m.logic,
            });
        }
    };
    let conditions = m
        .conditions
        .iter()
        .map(|c| condition(group, lane, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LaneMatch { logic, conditions })
}

fn condition(group: &str, lane: &str, c: &proto::Condition) -> Result<Condition, LaneConfigError> {
    let unknown = |field, value| LaneConfigError::UnknownEnum {
        group: group.to_owned(),
        field,
        value,
    };
    if c.name.is_empty() {
        return Err(LaneConfigError::EmptyConditionName {
            group: group.to_owned(),
            lane: lane.to_owned(),
        });
    }
    let unsupported = |source_name| LaneConfigError::UnsupportedSource {
        group: group.to_owned(),
        lane: lane.to_owned(),
        source_name,
    };
    let source = match proto::Source::try_from(c.source) {
        Ok(proto::Source::Header) => {
            Source::Header(header_name(group, "match.conditions.name", &c.name)?)
        }
        Ok(proto::Source::Query) => Source::Query(c.name.clone()),
        Ok(proto::Source::Cookie) => Source::Cookie(c.name.clone()),
        Ok(proto::Source::ClientIp) => return Err(unsupported("ClientIP")),
        Ok(proto::Source::Host) => return Err(unsupported("Host")),
        Err(_) => return Err(unknown("match.conditions.source", c.source)),
    };
    let operator = match proto::Operator::try_from(c.operator) {
        Ok(proto::Operator::Equal) => Operator::Equal(c.value.clone()),
        Ok(proto::Operator::NotEqual) => Operator::NotEqual(c.value.clone()),
        Ok(proto::Operator::In) => Operator::In(c.values.clone()),
        Ok(proto::Operator::NotIn) => Operator::NotIn(c.values.clone()),
        Ok(proto::Operator::Prefix) => Operator::Prefix(c.value.clone()),
        Ok(proto::Operator::Regex) => {
            let re = crate::field::anchored(&c.value).map_err(|reason| {
                LaneConfigError::InvalidRegex {
                    group: group.to_owned(),
                    lane: lane.to_owned(),
                    pattern: c.value.clone(),
                    reason,
                }
            })?;
            Operator::Regex(re)
        }
        Ok(proto::Operator::Percentage) => {
            let percent = u8::try_from(c.percent)
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| LaneConfigError::OutOfRange {
                    group: group.to_owned(),
                    lane: lane.to_owned(),
                    field: "match.conditions.value",
                    value: c.percent,
                })?;
            Operator::Percentage(percent)
        }
        Err(_) => return Err(unknown("match.conditions.operator", c.operator)),
    };
    Ok(Condition { source, operator })
}

#[cfg(test)]
pub(crate) mod tests;
