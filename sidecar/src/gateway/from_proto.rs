//! `proto::GatewayRoute` -> [`GatewayRouteConfig`]: the one place a route is checked.

use lanemesh_api::proto;

use super::*;
use crate::field::{self, FieldError, Problem};

/// A route the gateway refuses; the message names the route and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gateway route {route}: {error}")]
pub struct GatewayRouteError {
    /// `namespace/Kind/name`.
    pub route: String,
    /// The refused field.
    pub error: FieldError,
}

impl TryFrom<&proto::GatewayRoute> for GatewayRouteConfig {
    type Error = GatewayRouteError;

    fn try_from(r: &proto::GatewayRoute) -> Result<Self, Self::Error> {
        let refuse = |error| GatewayRouteError {
            route: r.name.clone(),
            error,
        };
        field::non_empty("name", &r.name).map_err(refuse)?;
        let rules = r
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| Rule::from_proto(&format!("rules[{i}]"), rule))
            .collect::<Result<Vec<_>, _>>()
            .map_err(refuse)?;
        if rules.is_empty() {
            return Err(refuse(FieldError::new("rules", Problem::Empty)));
        }
        let lane_weights = if r.lane_weights.is_empty() {
            None
        } else {
            let sum: u64 = r.lane_weights.values().map(|w| u64::from(*w)).sum();
            if sum > 100 {
                return Err(refuse(FieldError::out_of_range(
                    "laneWeights",
                    "must sum to at most 100",
                    sum.to_string(),
                )));
            }
            Some(LaneWeights::new(
                r.lane_weights.iter().map(|(tag, w)| (tag.clone(), *w)),
            ))
        };
        Ok(Self {
            name: Arc::from(r.name.as_str()),
            trust_lane_tags: r.trust_lane_tags,
            lane_weights,
            created: r.created.clone(),
            rules,
        })
    }
}

impl Rule {
    fn from_proto(at: &str, rule: &proto::GatewayRule) -> Result<Self, FieldError> {
        let hosts = rule
            .hostnames
            .iter()
            .map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => Host::Suffix(suffix.to_owned()),
                    _ => Host::Exact(h),
                }
            })
            .collect();
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| RequestMatch::from_proto(&format!("{at}.matches[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut upper = 0u64;
        let mut backends = Vec::with_capacity(rule.backends.len());
        for (i, b) in rule.backends.iter().enumerate() {
            let at = format!("{at}.backends[{i}]");
            field::non_empty(&format!("{at}.service"), &b.service)?;
            let port = match (b.port, b.port_name.as_str()) {
                (0, "") => return Err(FieldError::new(format!("{at}.port"), Problem::Empty)),
                (0, name) => BackendPort::Name(name.to_owned()),
                (n, _) => BackendPort::Number(u16::try_from(n).map_err(|_| {
                    FieldError::out_of_range(
                        format!("{at}.port"),
                        "must be a port number (1-65535)",
                        n.to_string(),
                    )
                })?),
            };
            upper += u64::from(b.weight);
            backends.push((
                upper,
                Backend {
                    service: b.service.clone(),
                    port,
                },
            ));
        }
        if backends.is_empty() {
            return Err(FieldError::new(format!("{at}.backends"), Problem::Empty));
        }
        Ok(Self {
            hosts,
            matches,
            backends,
        })
    }
}

impl RequestMatch {
    fn from_proto(at: &str, m: &proto::HttpRequestMatch) -> Result<Self, FieldError> {
        use proto::path_match::Kind;
        let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
            None => None,
            Some(Kind::Exact(p)) => Some(PathMatch::Exact(p.clone())),
            Some(Kind::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
            Some(Kind::Regex(p)) => Some(PathMatch::Regex(field::anchored_regex(
                &format!("{at}.path.regex"),
                p,
            )?)),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let at = format!("{at}.headers[{i}]");
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    FieldError::out_of_range(
                        format!("{at}.name"),
                        "must be a header name",
                        h.name.clone(),
                    )
                })?;
                Ok((name, value_test(&at, h)?))
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        let query = m
            .query_params
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let at = format!("{at}.queryParams[{i}]");
                field::non_empty(&format!("{at}.name"), &q.name)?;
                Ok((q.name.clone(), value_test(&at, q)?))
            })
            .collect::<Result<Vec<_>, FieldError>>()?;
        let method = if m.method.is_empty() {
            None
        } else {
            Some(Method::from_bytes(m.method.as_bytes()).map_err(|_| {
                FieldError::out_of_range(
                    format!("{at}.method"),
                    "must be an HTTP method",
                    m.method.clone(),
                )
            })?)
        };
        Ok(Self {
            path,
            headers,
            query,
            method,
        })
    }
}

fn value_test(at: &str, m: &proto::ValueMatch) -> Result<ValueTest, FieldError> {
    use proto::value_match::Kind;
    match &m.kind {
        Some(Kind::Exact(v)) => Ok(ValueTest::Exact(v.clone())),
        Some(Kind::Regex(p)) => Ok(ValueTest::Regex(field::anchored_regex(
            &format!("{at}.regex"),
            p,
        )?)),
        None => Err(FieldError::new(format!("{at}.value"), Problem::Empty)),
    }
}
