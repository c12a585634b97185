//! CRD spec -> discovery resource, with every check the API server cannot make.
//!
//! Both planes use this: the control plane to build what it streams, and the
//! sidecar (`--config-file`) and the local source to load the same YAML
//! without Kubernetes. Conversion never panics on user input; each refused
//! object comes back as an [`Invalid`] naming its fields, while the valid
//! objects around it still convert.
//!
//! # Layout
//! - `error`: [`Invalid`], [`FieldError`], [`Violation`].
//! - `duration`: Go duration syntax with overflow checks ([`parse_duration`]).
//! - `lane`: LaneGroups and their Lanes -> `proto::LaneGroup`.
//! - `rate_limit`: RateLimitPolicies and OverloadProtectionPolicies -> `proto::InboundPolicy`.
//! - `breaker`: CircuitBreakerPolicies -> `proto::OutboundPolicy`, with `traffic`:
//!   TrafficPolicies -> its routes (timeouts, retries), retry budget and warm-up.
//! - `service`: Services, EndpointSlices and Pods -> `proto::Service`.
//! - `gateway`: HTTPRoutes and Ingresses of lanemesh's class -> `proto::GatewayRoute`.

mod breaker;
mod duration;
mod error;
mod gateway;
mod lane;
mod rate_limit;
mod service;
mod traffic;

pub use breaker::outbound_policies;
pub use duration::{DurationError, parse_duration};
pub use error::{FieldError, Invalid, ObjectRef, Violation};
pub use gateway::{
    DEFAULT_CLASS as DEFAULT_GATEWAY_CLASS, LANE_WEIGHTS, TRUST_LANE_TAGS, gateway_routes,
    lanemesh_parents,
};
pub use lane::lane_groups;
pub use rate_limit::inbound_policies;
pub use service::{SERVICE_NAME_LABEL, service, services};

use kube::core::ObjectMeta;

use crate::crd::common::{
    ConditionSource, Fallback, LaneMatch, Logic, MatchCondition, Operator, PathMatch, RouteMatch,
};
use crate::manifest::Manifest;
use crate::{limits, proto};
use error::{Errors, Field};

/// What a conversion produced: the servable resources, and the objects that
/// were left out with their reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct Built<T> {
    pub resources: Vec<T>,
    pub rejected: Vec<Invalid>,
}

impl<T> Default for Built<T> {
    fn default() -> Self {
        Self {
            resources: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

/// Everything a set of objects converts to, one [`Built`] per resource type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    pub services: Built<proto::Service>,
    pub lane_groups: Built<proto::LaneGroup>,
    pub inbound: Built<proto::InboundPolicy>,
    pub outbound: Built<proto::OutboundPolicy>,
    pub gateway_routes: Built<proto::GatewayRoute>,
}

impl Converted {
    /// Every refused object, of every type.
    pub fn rejected(&self) -> impl Iterator<Item = &Invalid> {
        (self.services.rejected.iter())
            .chain(&self.lane_groups.rejected)
            .chain(&self.inbound.rejected)
            .chain(&self.outbound.rejected)
            .chain(&self.gateway_routes.rejected)
    }
}

/// Converts every object of `m`. `ready_replicas(namespace, app)` divides
/// Cluster-scoped QPS thresholds (see [`inbound_policies`]); the routes of the default gateway
/// class are converted.
pub fn manifest(m: &Manifest, ready_replicas: &dyn Fn(&str, &str) -> u32) -> Converted {
    Converted {
        gateway_routes: gateway_routes(
            &m.http_routes,
            &m.ingresses,
            &m.gateways,
            DEFAULT_GATEWAY_CLASS,
        ),
        services: services(&m.services, &m.endpoint_slices, &m.pods),
        lane_groups: lane_groups(&m.lane_groups, &m.lanes),
        inbound: inbound_policies(&m.rate_limits, &m.overloads, ready_replicas),
        outbound: outbound_policies(&m.circuit_breakers, &m.traffic_policies),
    }
}

/// Objects without a namespace (local YAML) live in `default`, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

fn object_ref(kind: &'static str, meta: &ObjectMeta, errors: &mut Errors) -> ObjectRef {
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(&Field::root("metadata.name"), Violation::Required);
    }
    ObjectRef {
        kind,
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name,
    }
}

fn non_empty(field: &Field, value: &str, errors: &mut Errors) {
    if value.trim().is_empty() {
        errors.push(field, Violation::Empty);
    }
}

/// A threshold: finite, >= 0 and at most [`limits::MAX_THRESHOLD`].
fn threshold(field: &Field, value: f64, errors: &mut Errors) -> f64 {
    if !value.is_finite() {
        errors.push(field, Violation::NotFinite { value });
    } else if value < 0.0 {
        errors.push(field, Violation::TooSmall { min: 0.0, value });
    } else if value > limits::MAX_THRESHOLD {
        let max = limits::MAX_THRESHOLD;
        errors.push(field, Violation::TooLarge { max, value });
    }
    value
}

/// A count users give (concurrency, burst, ...): at most [`limits::MAX_COUNT`].
fn count(field: &Field, value: u32, errors: &mut Errors) -> u32 {
    if value > limits::MAX_COUNT {
        let (max, value) = (f64::from(limits::MAX_COUNT), f64::from(value));
        errors.push(field, Violation::TooLarge { max, value });
    }
    value
}

/// A user's value as echoed in an error message: long enough to recognise,
/// short enough for a status condition (the local source has no length limits).
fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &value[..at]),
        None => value.to_owned(),
    }
}

/// A ratio in (0, 1].
fn ratio(field: &Field, value: f64, errors: &mut Errors) -> f64 {
    if !(value > 0.0 && value <= 1.0) {
        errors.push(field, Violation::NotARatio { value });
    }
    value
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

/// A Go-syntax duration, at most [`crate::limits::MAX_DURATION`]. Parsed
/// with checked arithmetic ([`parse_duration`]): the CRD pattern admits
/// values of any size.
fn duration(field: &Field, value: &str, zero: Zero, errors: &mut Errors) -> prost_types::Duration {
    match parse_duration(value) {
        Ok(d) => {
            if zero == Zero::Refused && d.is_zero() {
                errors.push(
                    field,
                    Violation::ZeroDuration {
                        value: value.to_owned(),
                    },
                );
            }
            proto_duration(d)
        }
        Err(reason) => {
            errors.push(
                field,
                Violation::InvalidDuration {
                    value: shown(value),
                    reason: reason.to_string(),
                },
            );
            prost_types::Duration::default()
        }
    }
}

/// A std duration on the wire. Saturates instead of failing: only the
/// documented defaults come through here, all far below the limit.
fn proto_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

fn optional_duration(
    field: &Field,
    value: Option<&str>,
    zero: Zero,
    errors: &mut Errors,
) -> Option<prost_types::Duration> {
    value.map(|v| duration(field, v, zero, errors))
}

/// Compiled once here so a bad pattern is refused at the edge, not at the
/// first request that reaches it. Patterns are anchored: they match the whole
/// value, as in Envoy's `safe_regex`.
fn regex(field: &Field, pattern: &str, errors: &mut Errors) {
    if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
        errors.push(
            field,
            Violation::InvalidRegex {
                pattern: pattern.to_owned(),
                reason: first_line(&e),
            },
        );
    }
}

fn first_line(e: &regex::Error) -> String {
    // regex errors are multi-line drawings; the last line says what is wrong.
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Lower-cased, since HTTP/2 requires lower-case names and matching must not
/// depend on how the user spelled it.
fn header_name(field: &Field, name: &str, errors: &mut Errors) -> String {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b));
    if !valid {
        errors.push(
            field,
            Violation::InvalidValue {
                what: "header name",
                value: name.to_owned(),
                reason: "only letters, digits and !#$%&'*+.^_`|~- are allowed",
            },
        );
    }
    name.to_ascii_lowercase()
}

fn route_match(field: &Field, m: &RouteMatch, errors: &mut Errors) -> proto::RouteMatch {
    let paths = m
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| path_match(&field.key("paths").at(i), p, errors));
    let paths = paths.collect();
    let mut methods: Vec<String> = Vec::with_capacity(m.methods.len());
    for (i, method) in m.methods.iter().enumerate() {
        let name = method.as_str();
        if methods.iter().any(|m| m == name) {
            errors.push(
                &field.key("methods").at(i),
                Violation::Duplicate {
                    what: "method",
                    value: name.to_owned(),
                },
            );
        }
        methods.push(name.to_owned());
    }
    proto::RouteMatch { paths, methods }
}

fn path_match(field: &Field, p: &PathMatch, errors: &mut Errors) -> proto::PathMatch {
    use proto::path_match::Kind;
    let kinds: Vec<Kind> = [
        p.exact.clone().map(Kind::Exact),
        p.prefix.clone().map(Kind::Prefix),
        p.regex.clone().map(Kind::Regex),
    ]
    .into_iter()
    .flatten()
    .collect();
    let kind = match kinds.as_slice() {
        [one] => Some(one.clone()),
        [] => {
            errors.push(
                field,
                Violation::Conflict("set one of exact, prefix or regex".to_owned()),
            );
            None
        }
        _ => {
            let msg = "set only one of exact, prefix or regex".to_owned();
            errors.push(field, Violation::Conflict(msg));
            None
        }
    };
    match &kind {
        Some(Kind::Exact(path)) => absolute_path(&field.key("exact"), path, errors),
        Some(Kind::Prefix(path)) => absolute_path(&field.key("prefix"), path, errors),
        Some(Kind::Regex(pattern)) => regex(&field.key("regex"), pattern, errors),
        None => {}
    }
    proto::PathMatch { kind }
}

fn absolute_path(field: &Field, path: &str, errors: &mut Errors) {
    if !path.starts_with('/') {
        errors.push(
            field,
            Violation::InvalidValue {
                what: "path",
                value: path.to_owned(),
                reason: "must start with /",
            },
        );
    }
}

/// The rejection response; `default_status` when the user gave none.
fn fallback(
    field: &Field,
    f: Option<&Fallback>,
    default_status: u32,
    errors: &mut Errors,
) -> proto::Fallback {
    let Some(f) = f else {
        return proto::Fallback {
            status: default_status,
            ..Default::default()
        };
    };
    let status = match (&f.redirect, f.status) {
        (Some(_), Some(s)) if s != 302 => {
            let msg = format!("redirect answers 302; status {s} conflicts with it");
            errors.push(&field.key("status"), Violation::Conflict(msg));
            302
        }
        (Some(_), _) => 302,
        (None, Some(s)) if !(200..=599).contains(&s) => {
            errors.push(
                &field.key("status"),
                Violation::InvalidValue {
                    what: "HTTP status",
                    value: s.to_string(),
                    reason: "must be 200..599",
                },
            );
            u32::from(s)
        }
        (None, Some(s)) => u32::from(s),
        (None, None) => default_status,
    };
    if let Some(url) = &f.redirect {
        non_empty(&field.key("redirect"), url, errors);
    }
    let mut headers = std::collections::BTreeMap::new();
    for (name, value) in &f.headers {
        let field = field.key("headers").key(name);
        let name = header_name(&field, name, errors);
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            errors.push(
                &field,
                Violation::InvalidValue {
                    what: "header value",
                    value: value.clone(),
                    reason: "must not contain CR, LF or NUL",
                },
            );
        }
        headers.insert(name, value.clone());
    }
    proto::Fallback {
        status,
        content_type: f.content_type.clone().unwrap_or_default(),
        body: f.body.clone().unwrap_or_default(),
        headers,
        redirect: f.redirect.clone().unwrap_or_default(),
    }
}

fn lane_match(field: &Field, m: &LaneMatch, errors: &mut Errors) -> proto::Match {
    let conditions = m.conditions.iter().enumerate();
    let conditions = conditions.map(|(i, c)| condition(&field.key("conditions").at(i), c, errors));
    proto::Match {
        logic: match m.logic {
            Logic::All => proto::Logic::All,
            Logic::Any => proto::Logic::Any,
        } as i32,
        conditions: conditions.collect(),
    }
}

fn condition(field: &Field, c: &MatchCondition, errors: &mut Errors) -> proto::Condition {
    let (source, name) = match c.source {
        ConditionSource::Header => (
            proto::Source::Header,
            header_name(&field.key("name"), &c.name, errors),
        ),
        ConditionSource::Query => (proto::Source::Query, c.name.clone()),
        ConditionSource::Cookie => (proto::Source::Cookie, c.name.clone()),
    };
    non_empty(&field.key("name"), &c.name, errors);
    let multi = matches!(c.operator, Operator::In | Operator::NotIn);
    let mut out = proto::Condition {
        source: source as i32,
        name,
        operator: operator(c.operator) as i32,
        ..Default::default()
    };
    match (multi, &c.value, &c.values) {
        (true, None, Some(values)) if !values.is_empty() => out.values = values.clone(),
        (true, _, _) => {
            let msg =
                "operators In and NotIn take a non-empty `values` list and no `value`".to_owned();
            errors.push(&field.key("values"), Violation::Conflict(msg));
        }
        (false, Some(value), None) => out.value = value.clone(),
        (false, _, _) => {
            let msg = format!(
                "operator {:?} takes a single `value` and no `values`",
                c.operator
            );
            errors.push(&field.key("value"), Violation::Conflict(msg));
        }
    }
    match c.operator {
        Operator::Regex => regex(&field.key("value"), &out.value, errors),
        Operator::Percentage => match out.value.parse::<u32>() {
            Ok(n) if n <= 100 => out.percent = n,
            _ => errors.push(
                &field.key("value"),
                Violation::InvalidValue {
                    what: "percentage",
                    value: out.value.clone(),
                    reason: "must be an integer from 0 to 100",
                },
            ),
        },
        _ => {}
    }
    out
}

fn operator(op: Operator) -> proto::Operator {
    match op {
        Operator::Equal => proto::Operator::Equal,
        Operator::NotEqual => proto::Operator::NotEqual,
        Operator::In => proto::Operator::In,
        Operator::NotIn => proto::Operator::NotIn,
        Operator::Prefix => proto::Operator::Prefix,
        Operator::Regex => proto::Operator::Regex,
        Operator::Percentage => proto::Operator::Percentage,
    }
}

/// Names must be unique within their list; refuses every repeat.
fn unique<'a>(
    field: &Field,
    what: &'static str,
    names: impl Iterator<Item = &'a str>,
    errors: &mut Errors,
) {
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            errors.push(
                &field.at(i),
                Violation::Duplicate {
                    what,
                    value: name.to_owned(),
                },
            );
        }
    }
}

/// `5xx`, `404` or `500-504`.
fn status_range(field: &Field, text: &str, errors: &mut Errors) -> Option<proto::StatusRange> {
    let parse = |s: &str| s.parse::<u32>().ok().filter(|n| (100..=599).contains(n));
    let range = if let Some(class) = text.strip_suffix("xx") {
        parse(&format!("{class}00")).map(|from| proto::StatusRange {
            from,
            to: from + 99,
        })
    } else if let Some((from, to)) = text.split_once('-') {
        parse(from)
            .zip(parse(to))
            .filter(|(f, t)| f <= t)
            .map(|(from, to)| proto::StatusRange { from, to })
    } else {
        parse(text).map(|code| proto::StatusRange {
            from: code,
            to: code,
        })
    };
    if range.is_none() {
        errors.push(
            field,
            Violation::InvalidValue {
                what: "HTTP status",
                value: text.to_owned(),
                reason: "use a class like 5xx, a code like 502, or a range like 500-504 within 100..599",
            },
        );
    }
    range
}

/// Sorts by (namespace, name) so that conversions and their versions do not
/// depend on the order a watch delivered objects in.
fn sorted_by_ref<T>(items: &[T], meta: impl Fn(&T) -> &ObjectMeta) -> Vec<&T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by(|a, b| {
        let (a, b) = (meta(a), meta(b));
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    sorted
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
