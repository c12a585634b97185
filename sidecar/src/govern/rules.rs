//! The runtime form of `InboundPolicy` and `OutboundPolicy`: immutable rule specifications,
//! compiled once per resource off the hot path, when a snapshot takes them in.
//!
//! The `TryFrom` conversions (`from_proto.rs`) are the one place where a policy resource is checked: every
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
    BreakerConfig, BreakerStrategy, BudgetConfig, HotParamConfig, OverloadConfig, OverloadMode,
    QpsBehavior, QpsLimiter, RejectReason, RetryConfig,
};
use crate::proxy::{LocalResponse, grpc};
use crate::route::WarmupConfig;

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
    /// Count would-be rejections, reject nothing.
    pub dry_run: bool,
}

/// One route of a `TrafficPolicy`: the timeout and retries of the requests it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficRule {
    /// `policy/rule`, or `policy` for the policy's defaults.
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    /// Whole request, retries included, to the response head.
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<RetryConfig>>,
}

/// Everything a caller enforces towards one destination app.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRules {
    /// The destination app.
    pub app: Arc<str>,
    /// Every rule whose match holds is consulted.
    pub breakers: Vec<Arc<BreakerRule>>,
    /// Per-request timeout (to the response head) from a CircuitBreakerPolicy's deprecated
    /// field; a matching traffic rule's timeout wins.
    pub timeout: Option<Duration>,
    /// The TrafficPolicy's routes; the first whose match holds governs a request.
    pub routes: Vec<Arc<TrafficRule>>,
    /// Bounds the retries of every route; set with retrying routes.
    pub budget: Option<BudgetConfig>,
    pub warmup: Option<WarmupConfig>,
}

impl OutboundRules {
    /// The traffic rule governing a request (the path already normalised).
    pub fn traffic(&self, method: &Method, path: &str) -> Option<&Arc<TrafficRule>> {
        self.routes.iter().find(|r| r.matcher.matches(method, path))
    }
}

mod from_proto;

#[cfg(test)]
mod tests;
