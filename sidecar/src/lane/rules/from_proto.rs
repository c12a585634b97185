//! `proto::LaneGroup` -> [`LaneGroupConfig`]: the one place a lane group is checked.

use std::sync::Arc;

use http::HeaderName;
use lanemesh_api::proto;

use super::*;

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
