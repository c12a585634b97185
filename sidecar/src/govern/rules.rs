//! The runtime form of `InboundPolicy` and `OutboundPolicy`: immutable rule specifications,
//! compiled once per resource off the hot path, when a snapshot takes them in.
//!
//! The `TryFrom` conversions here are the one place where a policy resource is checked: every
//! field, with the limiters' and breakers' own validation for their parameters, refused with a
//! [`FieldError`] naming the field.
//!
//! A specification holds no state; the governors pair each one with its limiters. Specifications
//! compare by value, which is how a governor rebuilt for a new snapshot decides whether a rule
//! changed (fresh state) or not (its state carries over).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use lanemesh_api::proto;

use crate::field::{
    FieldError, Problem, anchored_regex, count, duration, known, non_empty, policy,
};
use crate::policy::error::check_threshold;
use crate::policy::{
    BreakerConfig, BreakerStrategy, HotParamConfig, OverloadConfig, OverloadMode, QpsBehavior,
    QpsLimiter, RejectReason,
};
use crate::proxy::{LocalResponse, grpc};

/// Response header naming why governance refused a request (DESIGN §4).
pub const BLOCKED_HEADER: &str = "x-lanemesh-blocked";

/// Sentinel's default warm-up period, for a WarmUp rule that names none.
const DEFAULT_WARM_UP: Duration = Duration::from_secs(10);
/// Hot-parameter window when a rule names none (per second, like Sentinel's `durationInSec`).
const DEFAULT_HOT_WINDOW: Duration = Duration::from_secs(1);

/// Which requests a rule governs: any of `paths` (empty = all) and any of `methods` (empty =
/// all).
#[derive(Debug, Clone, Default)]
pub struct RouteMatcher {
    paths: Vec<PathRule>,
    methods: Vec<Method>,
}

#[derive(Debug, Clone)]
enum PathRule {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

impl PartialEq for PathRule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) | (Self::Prefix(a), Self::Prefix(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl PartialEq for RouteMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.paths == other.paths && self.methods == other.methods
    }
}

impl RouteMatcher {
    /// Whether a request with `method` and `path` (no query) is governed by the rule.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty()
                || self.paths.iter().any(|rule| match rule {
                    PathRule::Exact(p) => p == path,
                    PathRule::Prefix(p) => path.starts_with(p.as_str()),
                    PathRule::Regex(r) => r.is_match(path),
                }))
    }

    fn from_proto(field: &str, m: Option<&proto::RouteMatch>) -> Result<Self, FieldError> {
        use proto::path_match::Kind;
        let Some(m) = m else {
            return Ok(Self::default());
        };
        let mut paths = Vec::with_capacity(m.paths.len());
        for (i, p) in m.paths.iter().enumerate() {
            let field = format!("{field}.paths[{i}]");
            paths.push(match &p.kind {
                Some(Kind::Exact(path) | Kind::Prefix(path)) if !path.starts_with('/') => {
                    return Err(FieldError::out_of_range(
                        field,
                        "a path must start with /",
                        format!("{path:?}"),
                    ));
                }
                Some(Kind::Exact(path)) => PathRule::Exact(path.clone()),
                Some(Kind::Prefix(path)) => PathRule::Prefix(path.clone()),
                Some(Kind::Regex(pattern)) => {
                    PathRule::Regex(anchored_regex(&format!("{field}.regex"), pattern)?)
                }
                None => return Err(FieldError::new(field, Problem::Empty)),
            });
        }
        let mut methods = Vec::with_capacity(m.methods.len());
        for (i, method) in m.methods.iter().enumerate() {
            methods.push(
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    FieldError::out_of_range(
                        format!("{field}.methods[{i}]"),
                        "must be an HTTP method",
                        format!("{method:?}"),
                    )
                })?,
            );
        }
        Ok(Self { paths, methods })
    }
}

/// What a refused request gets: the configured status, content type, body, headers or redirect,
/// or a plain-text default naming the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    rule: Arc<str>,
    status: StatusCode,
    headers: HeaderMap,
    /// `None` = the default text, which names the reason.
    body: Option<Bytes>,
}

impl Fallback {
    fn from_proto(
        field: &str,
        rule: &Arc<str>,
        f: Option<&proto::Fallback>,
        default_status: StatusCode,
    ) -> Result<Self, FieldError> {
        let out_of_range = |what: &str, reason: &'static str, value: String| {
            FieldError::out_of_range(format!("{field}.{what}"), reason, value)
        };
        let mut headers = HeaderMap::new();
        let Some(f) = f else {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(Self {
                rule: Arc::clone(rule),
                status: default_status,
                headers,
                body: None,
            });
        };
        let mut status = match f.status {
            0 => default_status,
            s => u16::try_from(s)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| {
                    out_of_range("status", "must be an HTTP status 200..=599", s.to_string())
                })?,
        };
        for (name, value) in &f.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                out_of_range("headers", "must be a header name", format!("{name:?}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                out_of_range("headers", "must be a header value", format!("{value:?}"))
            })?;
            headers.insert(name, value);
        }
        if !f.content_type.is_empty() {
            let value = HeaderValue::from_str(&f.content_type).map_err(|_| {
                out_of_range(
                    "contentType",
                    "must be a header value",
                    f.content_type.clone(),
                )
            })?;
            headers.insert(header::CONTENT_TYPE, value);
        } else if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        if !f.redirect.is_empty() {
            let location = HeaderValue::from_str(&f.redirect).map_err(|_| {
                out_of_range("redirect", "must be a URL", format!("{:?}", f.redirect))
            })?;
            headers.insert(header::LOCATION, location);
            status = StatusCode::FOUND;
        }
        let body = (!f.body.is_empty()).then(|| Bytes::from(f.body.clone()));
        Ok(Self {
            rule: Arc::clone(rule),
            status,
            headers,
            body,
        })
    }

    /// The response for a request refused for `reason`, with the `x-lanemesh-blocked` header,
    /// and the gRPC status a gRPC caller gets instead (DESIGN §4; issue: `RESOURCE_EXHAUSTED` for
    /// limits, `UNAVAILABLE` for an open breaker).
    pub fn response(&self, reason: RejectReason) -> LocalResponse {
        let mut headers = self.headers.clone();
        headers.insert(BLOCKED_HEADER, HeaderValue::from_static(reason.as_str()));
        let body = self.body.clone().unwrap_or_else(|| {
            Bytes::from(format!(
                "lanemesh: request blocked by rule {} ({reason})\n",
                self.rule
            ))
        });
        let grpc_status = match reason {
            RejectReason::CircuitBreaking => grpc::code::UNAVAILABLE,
            RejectReason::Flow
            | RejectReason::Concurrency
            | RejectReason::HotParam
            | RejectReason::System => grpc::code::RESOURCE_EXHAUSTED,
        };
        LocalResponse {
            status: self.status,
            headers,
            body,
            grpc_status: Some(grpc_status),
        }
    }
}

/// Where a hot parameter's value comes from (DESIGN §3 condition sources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSource {
    Header(HeaderName),
    Query(String),
    Cookie(String),
    /// First `X-Forwarded-For` entry, else the peer address.
    ClientIp,
    /// The `Host` header, else the URI authority.
    Host,
}

/// One hot-parameter limit of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HotParamSpec {
    pub source: ParamSource,
    pub config: HotParamConfig,
}

/// A QPS limit of a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QpsSpec {
    pub threshold: f64,
    pub behavior: QpsBehavior,
}

/// One inbound rate-limit rule (a `RateLimitPolicy` rule).
#[derive(Debug, Clone, PartialEq)]
pub struct RateRule {
    /// `policy/rule`, the metric label.
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub qps: Option<QpsSpec>,
    pub concurrency: Option<u32>,
    pub hot_params: Vec<HotParamSpec>,
    pub fallback: Fallback,
    pub dry_run: bool,
}

/// Overload protection of the pod's app.
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadRule {
    pub name: Arc<str>,
    pub config: OverloadConfig,
    pub fallback: Fallback,
}

/// Everything enforced on the pod's inbound side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InboundRules {
    /// In policy order; the first whose match holds governs a request.
    pub rules: Vec<Arc<RateRule>>,
    /// `None` when absent or `Off`.
    pub overload: Option<Arc<OverloadRule>>,
}

/// Which outcomes a breaker counts as errors; connect failures, resets and timeouts always do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorClassifier {
    http: Vec<(u16, u16)>,
    grpc: Vec<u32>,
}

impl Default for ErrorClassifier {
    /// The classes `lanemesh_api::defaults` documents (DESIGN §4), as the control plane fills
    /// them in.
    fn default() -> Self {
        let (from, to) = lanemesh_api::defaults::BREAKER_HTTP_ERRORS;
        Self {
            http: vec![(from, to)],
            grpc: lanemesh_api::defaults::BREAKER_GRPC_ERRORS.to_vec(),
        }
    }
}

impl ErrorClassifier {
    pub fn is_http_error(&self, status: u16) -> bool {
        self.http
            .iter()
            .any(|&(from, to)| (from..=to).contains(&status))
    }

    pub fn is_grpc_error(&self, code: u32) -> bool {
        self.grpc.contains(&code)
    }

    fn from_proto(c: Option<&proto::ErrorClassifier>) -> Self {
        let Some(c) = c.filter(|c| !c.http_statuses.is_empty() || !c.grpc_codes.is_empty()) else {
            return Self::default();
        };
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        Self {
            http: c
                .http_statuses
                .iter()
                .map(|r| (clamp(r.from), clamp(r.to)))
                .collect(),
            grpc: c.grpc_codes.clone(),
        }
    }
}

/// One outbound circuit-breaker rule (a `CircuitBreakerPolicy` rule).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerRule {
    /// `policy/rule`, the metric label.
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub config: BreakerConfig,
    pub fallback: Fallback,
    pub errors: ErrorClassifier,
}

/// Everything a caller enforces towards one destination app.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRules {
    /// The destination app.
    pub app: Arc<str>,
    /// Every rule whose match holds is consulted.
    pub breakers: Vec<Arc<BreakerRule>>,
    /// Per-request timeout (to the response head).
    pub timeout: Option<Duration>,
}

fn status(code: u32) -> StatusCode {
    u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A threshold as a whole count (fractions round down, as a token bucket holds whole tokens),
/// refused when NaN, infinite or negative.
fn whole(field: &str, threshold: f64) -> Result<u64, FieldError> {
    let threshold = policy(field, check_threshold("threshold", threshold))?;
    Ok(crate::field::threshold(&format!("{field}.threshold"), threshold)? as u64)
}

fn hot_param(field: &str, h: &proto::HotParam) -> Result<HotParamSpec, FieldError> {
    let name = || non_empty(&format!("{field}.name"), &h.name);
    let source = match known::<proto::Source>(&format!("{field}.source"), "source", h.source)? {
        proto::Source::Header => ParamSource::Header(
            HeaderName::from_bytes(name()?.to_ascii_lowercase().as_bytes()).map_err(|_| {
                FieldError::out_of_range(
                    format!("{field}.name"),
                    "must be a header name",
                    format!("{:?}", h.name),
                )
            })?,
        ),
        proto::Source::Query => ParamSource::Query(name()?.to_owned()),
        proto::Source::Cookie => ParamSource::Cookie(name()?.to_owned()),
        proto::Source::ClientIp => ParamSource::ClientIp,
        proto::Source::Host => ParamSource::Host,
    };
    let mut config = HotParamConfig::new(
        whole(field, h.threshold)?,
        duration(&format!("{field}.window"), h.window.as_ref())?.unwrap_or(DEFAULT_HOT_WINDOW),
    );
    config.burst = u64::from(count(&format!("{field}.burst"), h.burst)?);
    config.overrides = h
        .overrides
        .iter()
        .enumerate()
        .map(|(k, o)| {
            Ok((
                o.value.clone(),
                whole(&format!("{field}.overrides[{k}]"), o.threshold)?,
            ))
        })
        .collect::<Result<_, FieldError>>()?;
    if h.max_tracked_values > 0 {
        // The table is sized for it up front: bounded as the control plane bounds it.
        if h.max_tracked_values > lanemesh_api::limits::MAX_TRACKED_VALUES {
            return Err(FieldError::out_of_range(
                format!("{field}.maxTrackedValues"),
                "must be at most 1000000",
                h.max_tracked_values.to_string(),
            ));
        }
        config.capacity = usize::try_from(h.max_tracked_values).unwrap_or(usize::MAX);
    }
    policy(field, config.validate())?;
    Ok(HotParamSpec { source, config })
}

fn qps(field: &str, q: &proto::QpsLimit) -> Result<QpsSpec, FieldError> {
    known::<proto::Scope>(&format!("{field}.scope"), "scope", q.scope)?;
    let behavior = match known(&format!("{field}.behavior"), "behavior", q.behavior)? {
        proto::QpsBehavior::Reject => QpsBehavior::Reject,
        proto::QpsBehavior::WarmUp => QpsBehavior::WarmUp {
            period: duration(&format!("{field}.warmUpPeriod"), q.warm_up_period.as_ref())?
                .unwrap_or(DEFAULT_WARM_UP),
        },
        proto::QpsBehavior::Queue => QpsBehavior::Queue {
            max_queue_time: duration(&format!("{field}.maxQueueTime"), q.max_queue_time.as_ref())?
                .unwrap_or(lanemesh_api::defaults::MAX_QUEUE_TIME),
        },
    };
    crate::field::threshold(&format!("{field}.threshold"), q.threshold)?;
    policy(field, QpsLimiter::validate(q.threshold, behavior))?;
    Ok(QpsSpec {
        threshold: q.threshold,
        behavior,
    })
}

impl TryFrom<&proto::InboundPolicy> for InboundRules {
    type Error = FieldError;

    fn try_from(p: &proto::InboundPolicy) -> Result<Self, FieldError> {
        non_empty("name", &p.name)?;
        non_empty("app", &p.app)?;
        let limit_status = status(lanemesh_api::defaults::LIMIT_STATUS);
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let field = format!("rules[{i}]");
            let name: Arc<str> = Arc::from(r.name.as_str());
            let hot_params = r
                .hot_params
                .iter()
                .enumerate()
                .map(|(j, h)| hot_param(&format!("{field}.hotParams[{j}]"), h))
                .collect::<Result<_, _>>()?;
            rules.push(Arc::new(RateRule {
                matcher: RouteMatcher::from_proto(&format!("{field}.match"), r.r#match.as_ref())?,
                qps: r
                    .qps
                    .as_ref()
                    .map(|q| qps(&format!("{field}.qps"), q))
                    .transpose()?,
                concurrency: r
                    .concurrency
                    .as_ref()
                    .map(|c| count(&format!("{field}.concurrency.max"), c.max))
                    .transpose()?,
                hot_params,
                fallback: Fallback::from_proto(
                    &format!("{field}.fallback"),
                    &name,
                    r.fallback.as_ref(),
                    limit_status,
                )?,
                dry_run: r.dry_run,
                name,
            }));
        }
        let overload = match &p.overload {
            Some(o) => {
                known::<proto::OverloadStrategy>("overload.strategy", "strategy", o.strategy)?;
                let mode = match known("overload.mode", "overload mode", o.mode)? {
                    proto::OverloadMode::Off => None,
                    proto::OverloadMode::DryRun => Some(OverloadMode::DryRun),
                    proto::OverloadMode::On => Some(OverloadMode::On),
                };
                let name: Arc<str> = if o.name.is_empty() {
                    Arc::from(format!("{}/overload", p.app))
                } else {
                    Arc::from(o.name.as_str())
                };
                let config = OverloadConfig::new(mode.unwrap_or_default(), o.cpu_threshold);
                policy("overload", config.validate())?;
                let fallback = Fallback::from_proto(
                    "overload.fallback",
                    &name,
                    o.fallback.as_ref(),
                    status(lanemesh_api::defaults::SHED_STATUS),
                )?;
                mode.map(|mode| {
                    Arc::new(OverloadRule {
                        config: OverloadConfig { mode, ..config },
                        fallback,
                        name,
                    })
                })
            }
            None => None,
        };
        Ok(Self { rules, overload })
    }
}

impl TryFrom<&proto::OutboundPolicy> for OutboundRules {
    type Error = FieldError;

    fn try_from(p: &proto::OutboundPolicy) -> Result<Self, FieldError> {
        non_empty("name", &p.name)?;
        non_empty("app", &p.app)?;
        let mut breakers = Vec::with_capacity(p.breakers.len());
        for (i, b) in p.breakers.iter().enumerate() {
            let field = format!("breakers[{i}]");
            let name: Arc<str> = Arc::from(b.name.as_str());
            let strategy = match known(&format!("{field}.strategy"), "strategy", b.strategy)? {
                proto::BreakerStrategy::SlowRequestRatio => BreakerStrategy::SlowRequestRatio {
                    threshold: b.threshold,
                    slow_request_duration: duration(
                        &format!("{field}.slowRequestDuration"),
                        b.slow_request_duration.as_ref(),
                    )?
                    .unwrap_or_default(),
                },
                proto::BreakerStrategy::ErrorRatio => BreakerStrategy::ErrorRatio {
                    threshold: b.threshold,
                },
                proto::BreakerStrategy::ErrorCount => BreakerStrategy::ErrorCount {
                    threshold: whole(&field, b.threshold)?,
                },
            };
            let config = BreakerConfig {
                strategy,
                window: duration(&format!("{field}.window"), b.window.as_ref())?
                    .unwrap_or_default(),
                min_requests: u64::from(count(&format!("{field}.minRequests"), b.min_requests)?),
                open_duration: duration(
                    &format!("{field}.openDuration"),
                    b.open_duration.as_ref(),
                )?
                .unwrap_or_default(),
                half_open_probes: b.half_open_probes,
            };
            policy(&field, config.validate())?;
            breakers.push(Arc::new(BreakerRule {
                matcher: RouteMatcher::from_proto(&format!("{field}.match"), b.r#match.as_ref())?,
                config,
                fallback: Fallback::from_proto(
                    &format!("{field}.fallback"),
                    &name,
                    b.fallback.as_ref(),
                    status(lanemesh_api::defaults::SHED_STATUS),
                )?,
                errors: ErrorClassifier::from_proto(b.errors.as_ref()),
                name,
            }));
        }
        let timeout = duration("timeout", p.timeout.as_ref())?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(FieldError::out_of_range(
                "timeout",
                "must be a positive duration",
                "0s".to_owned(),
            ));
        }
        Ok(Self {
            app: Arc::from(p.app.as_str()),
            breakers,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route(paths: Vec<proto::path_match::Kind>, methods: &[&str]) -> proto::RouteMatch {
        proto::RouteMatch {
            paths: paths
                .into_iter()
                .map(|kind| proto::PathMatch { kind: Some(kind) })
                .collect(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn route_matcher_exact_prefix_regex_and_methods() {
        use proto::path_match::Kind;
        let m = RouteMatcher::from_proto(
            "m",
            Some(&route(
                vec![
                    Kind::Exact("/greet1a".into()),
                    Kind::Prefix("/api/".into()),
                    Kind::Regex("/users/[0-9]+".into()),
                ],
                &["GET", "post"],
            )),
        )
        .unwrap();
        assert!(m.matches(&Method::GET, "/greet1a"));
        assert!(!m.matches(&Method::GET, "/greet1ab"), "exact is exact");
        assert!(m.matches(&Method::POST, "/api/x"));
        assert!(m.matches(&Method::GET, "/users/42"));
        assert!(!m.matches(&Method::GET, "/users/42/x"), "regex is anchored");
        assert!(!m.matches(&Method::DELETE, "/greet1a"), "method not listed");
        let all = RouteMatcher::from_proto("m", None).unwrap();
        assert!(all.matches(&Method::PUT, "/anything"));
    }

    #[test]
    fn route_matcher_refuses_relative_paths_and_bad_regexes_naming_the_field() {
        use proto::path_match::Kind;
        let relative =
            RouteMatcher::from_proto("m", Some(&route(vec![Kind::Prefix("api".into())], &[])));
        assert!(
            matches!(&relative, Err(FieldError { field, problem: Problem::OutOfRange { .. } }) if field == "m.paths[0]"),
            "{relative:?}"
        );
        let bad = RouteMatcher::from_proto("m", Some(&route(vec![Kind::Regex("(".into())], &[])));
        assert!(
            matches!(&bad, Err(FieldError { field, problem: Problem::InvalidRegex { .. } }) if field == "m.paths[0].regex"),
            "{bad:?}"
        );
    }

    #[test]
    fn fallback_defaults_to_a_text_naming_rule_and_reason() {
        let rule: Arc<str> = Arc::from("limits/greet");
        let f = Fallback::from_proto("f", &rule, None, StatusCode::TOO_MANY_REQUESTS).unwrap();
        let r = f.response(RejectReason::Flow);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers[BLOCKED_HEADER], "flow");
        assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain");
        assert!(
            std::str::from_utf8(&r.body)
                .unwrap()
                .contains("limits/greet")
        );
        assert_eq!(r.grpc_status, Some(grpc::code::RESOURCE_EXHAUSTED));
        assert_eq!(
            f.response(RejectReason::CircuitBreaking).grpc_status,
            Some(grpc::code::UNAVAILABLE)
        );
    }

    #[test]
    fn fallback_custom_body_headers_and_redirect() {
        let rule: Arc<str> = Arc::from("r");
        let custom = proto::Fallback {
            status: 429,
            content_type: "application/json".into(),
            body: "{\"busy\":true}".into(),
            headers: [("retry-after".to_owned(), "1".to_owned())].into(),
            redirect: String::new(),
        };
        let r = Fallback::from_proto("f", &rule, Some(&custom), StatusCode::SERVICE_UNAVAILABLE)
            .unwrap()
            .response(RejectReason::HotParam);
        assert_eq!(r.status, 429);
        assert_eq!(r.body, "{\"busy\":true}");
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.headers[BLOCKED_HEADER], "hot_param");

        let redirect = proto::Fallback {
            redirect: "https://example.com/busy".into(),
            ..Default::default()
        };
        let r = Fallback::from_proto("f", &rule, Some(&redirect), StatusCode::SERVICE_UNAVAILABLE)
            .unwrap()
            .response(RejectReason::Flow);
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(r.headers[header::LOCATION], "https://example.com/busy");
    }

    #[test]
    fn error_classifier_defaults_follow_the_design() {
        let c = ErrorClassifier::from_proto(None);
        assert!(c.is_http_error(500) && c.is_http_error(503) && !c.is_http_error(404));
        for code in [2, 4, 13, 14] {
            assert!(c.is_grpc_error(code));
        }
        assert!(!c.is_grpc_error(0) && !c.is_grpc_error(5));
        let custom = ErrorClassifier::from_proto(Some(&proto::ErrorClassifier {
            http_statuses: vec![proto::StatusRange { from: 404, to: 404 }],
            grpc_codes: vec![5],
        }));
        assert!(custom.is_http_error(404) && !custom.is_http_error(500));
        assert!(custom.is_grpc_error(5));
    }

    #[test]
    fn inbound_rules_convert_qps_hot_params_and_overload() {
        let p = proto::InboundPolicy {
            name: "shop/a".into(),
            namespace: "shop".into(),
            app: "a".into(),
            rules: vec![proto::RateLimitRule {
                name: "limits/greet".into(),
                qps: Some(proto::QpsLimit {
                    threshold: 5.0,
                    behavior: proto::QpsBehavior::Queue as i32,
                    ..Default::default()
                }),
                concurrency: Some(proto::ConcurrencyLimit { max: 3 }),
                hot_params: vec![proto::HotParam {
                    source: proto::Source::Header as i32,
                    name: "X-User-Id".into(),
                    threshold: 2.0,
                    overrides: vec![proto::HotParamOverride {
                        value: "vip".into(),
                        threshold: 50.0,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            overload: Some(proto::OverloadProtection {
                mode: proto::OverloadMode::DryRun as i32,
                cpu_threshold: 0.8,
                ..Default::default()
            }),
        };
        let rules = InboundRules::try_from(&p).unwrap();
        let rule = &rules.rules[0];
        assert_eq!(
            rule.qps.unwrap().behavior,
            QpsBehavior::Queue {
                max_queue_time: Duration::from_millis(500)
            }
        );
        assert_eq!(rule.concurrency, Some(3));
        let hot = &rule.hot_params[0];
        assert_eq!(
            hot.source,
            ParamSource::Header(HeaderName::from_static("x-user-id"))
        );
        assert_eq!(hot.config.window, Duration::from_secs(1));
        assert_eq!(hot.config.overrides["vip"], 50);
        let overload = rules.overload.as_ref().unwrap();
        assert_eq!(overload.config.mode, OverloadMode::DryRun);
        assert_eq!(&*overload.name, "a/overload");

        let mut off = p.clone();
        off.overload.as_mut().unwrap().mode = proto::OverloadMode::Off as i32;
        assert!(InboundRules::try_from(&off).unwrap().overload.is_none());
        assert_eq!(
            InboundRules::try_from(&p).unwrap(),
            rules,
            "compares by value"
        );
    }
}
