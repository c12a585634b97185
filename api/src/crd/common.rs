//! Shapes shared by several CRDs: request matching, fallbacks, status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Go `time.ParseDuration` syntax without sign: `500ms`, `1s`, `1m30s`.
/// The API server refuses anything else; conversion parses it again so that
/// objects from the local directory source get the same check.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// `maxLength` of duration strings; conversion also refuses values above
/// [`crate::limits::MAX_DURATION`], which the pattern cannot express.
pub const DURATION_MAX_LENGTH: u32 = crate::limits::DURATION_MAX_LENGTH;

/// `maximum` of thresholds and counts (see [`crate::limits`]).
pub const MAX_THRESHOLD: f64 = crate::limits::MAX_THRESHOLD;
pub const MAX_COUNT: u32 = crate::limits::MAX_COUNT;

/// What a Kubernetes label value may be (a lane tag is a pod label value),
/// minus the empty string.
pub const LABEL_VALUE_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";

/// An HTTP header field name (RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

/// Where a lane condition reads its key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionSource {
    Header,
    Query,
    Cookie,
}

/// Where a hot parameter reads its value. `ClientIP` is the first
/// `X-Forwarded-For` entry, else the peer address; `Host` is the authority.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ParamSource {
    Header,
    Query,
    Cookie,
    #[serde(rename = "ClientIP")]
    ClientIp,
    Host,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Operator {
    Equal,
    NotEqual,
    In,
    NotIn,
    Prefix,
    Regex,
    /// `fnv1a64(value) % 100 < n`, with `n` in `value`: a stable share of keys.
    Percentage,
}

/// One test on a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0 && !has(self.value)) : (has(self.value) && !has(self.values))"
).message("operators In and NotIn take a non-empty `values` list; every other operator takes a single `value`"))]
#[x_kube(validation = Rule::new(
    "self.operator != 'Percentage' || (has(self.value) && self.value.matches('^[0-9]{1,3}$') && int(self.value) <= 100)"
).message("operator Percentage takes an integer `value` from 0 to 100"))]
pub struct MatchCondition {
    pub source: ConditionSource,
    /// Header, query parameter or cookie name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    pub operator: Operator,
    // Bounded so the API server's CEL cost estimate of the rules above stays
    // within budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    pub values: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Logic {
    /// Every condition holds.
    #[default]
    All,
    /// At least one condition holds.
    Any,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaneMatch {
    #[serde(default)]
    pub logic: Logic,
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub conditions: Vec<MatchCondition>,
}

/// Which requests a rule governs. Empty lists match everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Any of these paths.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub paths: Vec<PathMatch>,
    /// Any of these methods.
    #[serde(default)]
    pub methods: Vec<HttpMethod>,
}

/// Exactly one of `exact`, `prefix` or `regex`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) == 1"
).message("a path match takes exactly one of exact, prefix or regex"))]
pub struct PathMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/"))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/"))]
    pub prefix: Option<String>,
    /// A regular expression over the whole path (RE2 syntax, anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub regex: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// The response a rejected request gets instead of reaching the app.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.redirect) && has(self.status) && self.status != 302)")
    .message("redirect answers 302; leave status unset or set it to 302"))]
pub struct Fallback {
    /// Defaults to 429 for limits and 503 for breakers and overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Answer `302 Found` with this `Location` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub redirect: Option<String>,
}

/// The status every lanemesh object reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the control plane validated and serves this object.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
