//! The proxy's Prometheus metrics (DESIGN §5, port `15020`): one registry,
//! created once and shared through an `Arc`, recorded from the hot path and
//! encoded as OpenMetrics text on scrape.
//!
//! # Cardinality
//! Every label is drawn from a small, bounded set:
//! - `direction`: 2 values; `status`: 6 (`1xx`..`5xx`, `error`).
//! - `app`: the governed apps this pod talks to (its own app inbound, its
//!   destinations outbound) — tens, not requests or pods.
//! - `lane`: lane tags of the pod's lane groups, `""` for base.
//! - `rule`: propagation rules (6), entry decision reasons (5), rejection
//!   reasons (5) times the configured rule names of this pod's policies.
//!
//! So `lanemesh_requests_total` holds at most `2 x apps x (lanes + 1) x 6`
//! series. Never put a path, a header value, a pod IP or a hot-parameter value in
//! a label.
//!
//! # Hot path
//! Label sets hold `Arc<str>`, so a caller that keeps its [`RequestLabels`]
//! (one per route or connection) records without allocating: a lookup is a
//! hash and a read lock that is released before the call returns; a new
//! series takes the write lock once.

use std::fmt::{self, Write as _};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`ProxyMetrics::encode`]'s output; Prometheus
/// negotiates and parses it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request duration buckets: 0.5 ms doubling 16 times, up to ~16 s.
const DURATION_BUCKET_START: f64 = 0.0005;
const DURATION_BUCKET_COUNT: u16 = 16;

/// A label value from a small closed set a domain module defines (a lane decision's reason, a
/// propagation rule, a rejection reason): metrics name no domain type, the domains' enums
/// implement this next to their definition.
pub trait LabelValue: Copy + 'static {
    /// Every value, so a family can export each series at 0 before its first count.
    const ALL: &'static [Self];

    /// The label value.
    fn label(self) -> &'static str;
}

/// A state exported both as a gauge and as the `to` label of a transition counter (a circuit
/// breaker's state).
pub trait StateValue: LabelValue {
    /// The gauge value; larger lets less traffic through.
    fn gauge(self) -> i64;
}

/// Which side of the pod a request or connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Captured on `15006`, towards the local app.
    Inbound,
    /// Captured on `15001`, from the local app.
    Outbound,
    /// Entering the mesh at a gateway listener.
    Gateway,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Gateway => "gateway",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A response's status class, or `error` when no response came (connect
/// failure, reset, timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// No HTTP status: the upstream could not be reached or broke off.
    Error,
}

impl StatusClass {
    /// The class of an HTTP status code; codes outside 100..=599 are
    /// counted as `error` (no valid response).
    pub const fn from_code(code: u16) -> Self {
        match code {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::Error,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
            Self::Error => "error",
        }
    }
}

impl From<http::StatusCode> for StatusClass {
    fn from(status: http::StatusCode) -> Self {
        Self::from_code(status.as_u16())
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of `lanemesh_gateway_requests_total`: MSE's console figures are one PromQL expression
/// each (README "Gateway metrics"): Total QPS by app, Exception QPS (`status=~"5xx|error"`), and
/// GrayQPS (`lane!=""`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GatewayLabels {
    /// `namespace/Kind/name` of the route that matched; empty when none did.
    pub route: Arc<str>,
    /// The backend's app; empty when the request went nowhere.
    pub app: Arc<str>,
    /// The lane decided; empty for base.
    pub lane: Arc<str>,
    pub status: StatusClass,
}

/// Labels of `lanemesh_requests_total`. Keep one per route (or connection)
/// and change `status` per request: clones are reference-count bumps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// Destination app outbound, the local app inbound.
    pub app: Arc<str>,
    /// Lane tag; empty for base.
    pub lane: Arc<str>,
    pub status: StatusClass,
}

impl RequestLabels {
    pub fn new(
        direction: Direction,
        app: impl Into<Arc<str>>,
        lane: impl Into<Arc<str>>,
        status: StatusClass,
    ) -> Self {
        Self {
            direction,
            app: app.into(),
            lane: lane.into(),
            status,
        }
    }
}

/// Labels of `lanemesh_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DurationLabels {
    pub direction: Direction,
    pub app: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabels {
    rule: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Labels of the governance counters: why, and which configured rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectionLabels {
    pub reason: &'static str,
    /// The policy rule's name as configured (e.g. the QPS rule or breaker name).
    pub rule: Arc<str>,
}

impl RejectionLabels {
    pub fn new(reason: impl LabelValue, rule: impl Into<Arc<str>>) -> Self {
        Self {
            reason: reason.label(),
            rule: rule.into(),
        }
    }
}

/// Labels of the breaker metrics: one breaker per destination app and rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BreakerLabels {
    pub app: Arc<str>,
    pub rule: Arc<str>,
}

impl BreakerLabels {
    pub fn new(app: impl Into<Arc<str>>, rule: impl Into<Arc<str>>) -> Self {
        Self {
            app: app.into(),
            rule: rule.into(),
        }
    }
}

/// Labels of `lanemesh_retries_total`: per destination app, what became of a failed attempt
/// its retry policy would retry (`retried`, `budget_exhausted`, `attempts_exhausted`,
/// `not_replayable`, `breaker_open`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    pub app: Arc<str>,
    pub result: &'static str,
}

/// What became of ended request spans (`lanemesh_trace_spans_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanResult {
    /// Accepted by the OTLP receiver.
    Exported,
    /// The export queue was full.
    Dropped,
    /// The export call failed (receiver unreachable, refused, timed out).
    ExportFailed,
}

impl SpanResult {
    const ALL: [Self; 3] = [Self::Exported, Self::Dropped, Self::ExportFailed];

    fn as_str(self) -> &'static str {
        match self {
            Self::Exported => "exported",
            Self::Dropped => "dropped",
            Self::ExportFailed => "export_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SpanLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppLabels {
    app: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    app: Arc<str>,
    rule: Arc<str>,
    to: &'static str,
}

type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        DURATION_BUCKET_START,
        2.0,
        DURATION_BUCKET_COUNT,
    ))
}

/// Every metric of the proxy. Create once, share as `Arc<ProxyMetrics>`.
#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    gateway_requests: Family<GatewayLabels, Counter>,
    durations: DurationFamily,
    open_connections: Family<DirectionLabels, Gauge>,
    lane_propagations: Family<RuleLabels, Counter>,
    lane_entry_decisions: Family<ReasonLabels, Counter>,
    rejections: Family<RejectionLabels, Counter>,
    dry_run_rejections: Family<RejectionLabels, Counter>,
    breaker_state: Family<BreakerLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    retry_attempts: Family<AppLabels, Counter>,
    trace_spans: Family<SpanLabels, Counter>,
    sources: Arc<ScrapeSources>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lanemesh");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests proxied, by direction, app, lane (empty = base) and status class",
            requests.clone(),
        );
        let gateway_requests = Family::<GatewayLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Requests entering the mesh at the gateway, by route, backend app, lane (empty = base) and status class",
            gateway_requests.clone(),
        );
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request to response end, by direction and app",
            Unit::Seconds,
            durations.clone(),
        );
        let open_connections = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Connections currently open, by direction",
            open_connections.clone(),
        );
        let lane_propagations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "lane_propagations",
            "Outbound lane choices, by the propagation rule that carried the lane",
            lane_propagations.clone(),
        );
        let lane_entry_decisions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "lane_entry_decisions",
            "Lane decisions at an entry app or gateway, by reason",
            lane_entry_decisions.clone(),
        );
        let rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "rejections",
            "Requests rejected by governance, by reason and rule",
            rejections.clone(),
        );
        let dry_run_rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "dry_run_rejections",
            "Requests a dry-run rule would have rejected, by reason and rule",
            dry_run_rejections.clone(),
        );
        let breaker_state = Family::<BreakerLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state by destination app and rule: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes, by destination app, rule and new state",
            breaker_transitions.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Failed attempts a retry policy would retry, by destination app and what became of them: retried, budget_exhausted, attempts_exhausted, not_replayable, breaker_open",
            retries.clone(),
        );
        let retry_attempts = Family::<AppLabels, Counter>::default();
        registry.register(
            "retry_policy_attempts",
            "Upstream attempts of requests a retry policy governs (first attempts and retries), by destination app",
            retry_attempts.clone(),
        );
        let trace_spans = Family::<SpanLabels, Counter>::default();
        registry.register(
            "trace_spans",
            "Request spans ended while tracing is on, by what became of them: exported, dropped (export queue full), export_failed",
            trace_spans.clone(),
        );
        let sources = Arc::new(ScrapeSources::default());
        registry.register_collector(Box::new(Arc::clone(&sources)));

        // Pre-register the fixed label values so dashboards see zeros rather
        // than missing series.
        for direction in [Direction::Inbound, Direction::Outbound] {
            drop(open_connections.get_or_create(&DirectionLabels { direction }));
        }

        Self {
            registry,
            requests,
            gateway_requests,
            durations,
            open_connections,
            lane_propagations,
            lane_entry_decisions,
            rejections,
            dry_run_rejections,
            breaker_state,
            breaker_transitions,
            retries,
            retry_attempts,
            trace_spans,
            sources,
        }
    }

    /// `n` ended spans met `result`.
    pub fn record_spans(&self, result: SpanResult, n: u64) {
        self.trace_spans
            .get_or_create(&SpanLabels {
                result: result.as_str(),
            })
            .inc_by(n);
    }

    /// Exports the span series at 0 (when tracing is on).
    pub fn declare_span_series(&self) {
        for result in SpanResult::ALL {
            drop(self.trace_spans.get_or_create(&SpanLabels {
                result: result.as_str(),
            }));
        }
    }

    /// Spans that met `result` so far.
    pub fn span_count(&self, result: SpanResult) -> u64 {
        self.trace_spans
            .get_or_create(&SpanLabels {
                result: result.as_str(),
            })
            .get()
    }

    /// What became of a failed attempt a retry policy would retry.
    pub fn record_retry(&self, app: &Arc<str>, result: &'static str) {
        self.retries
            .get_or_create(&RetryLabels {
                app: Arc::clone(app),
                result,
            })
            .inc();
    }

    /// One upstream attempt of a request a retry policy governs.
    pub fn record_retry_policy_attempt(&self, app: &Arc<str>) {
        self.retry_attempts
            .get_or_create(&AppLabels {
                app: Arc::clone(app),
            })
            .inc();
    }

    /// Reports `source`'s values on every scrape (the discovery client's counters, the
    /// snapshot's readiness and generation).
    pub fn attach(&self, source: Arc<dyn ScrapeSource>) {
        self.sources
            .sources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
    }

    /// One finished request (or a failed attempt, with [`StatusClass::Error`]).
    pub fn record_request(&self, labels: &RequestLabels, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        // Built from the request labels: two refcount bumps, no allocation.
        let key = DurationLabels {
            direction: labels.direction,
            app: Arc::clone(&labels.app),
        };
        self.durations
            .get_or_create(&key)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one request that entered at the gateway (besides [`ProxyMetrics::record_request`]).
    pub fn record_gateway_request(&self, labels: &GatewayLabels) {
        self.gateway_requests.get_or_create(labels).inc();
    }

    /// Counts an open connection until the guard is dropped.
    pub fn open_connection(&self, direction: Direction) -> ConnectionGuard {
        let gauge = self
            .open_connections
            .get_or_create_owned(&DirectionLabels { direction });
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// Exports every value of `R` (the propagation rules) in `lane_propagations` at 0.
    pub fn declare_propagation_rules<R: LabelValue>(&self) {
        for rule in R::ALL {
            let _ = self
                .lane_propagations
                .get_or_create(&RuleLabels { rule: rule.label() });
        }
    }

    /// An outbound lane choice and the rule that made it.
    pub fn record_propagation(&self, rule: impl LabelValue) {
        self.lane_propagations
            .get_or_create(&RuleLabels { rule: rule.label() })
            .inc();
    }

    /// Outbound lane choices made by `rule` so far.
    pub fn propagation_count(&self, rule: impl LabelValue) -> u64 {
        self.lane_propagations
            .get_or_create(&RuleLabels { rule: rule.label() })
            .get()
    }

    /// Exports every value of `R` (the entry decision reasons) in `lane_entry_decisions` at 0.
    pub fn declare_entry_decisions<R: LabelValue>(&self) {
        for reason in R::ALL {
            let _ = self.lane_entry_decisions.get_or_create(&ReasonLabels {
                reason: reason.label(),
            });
        }
    }

    /// A lane decision at an entry app or gateway.
    pub fn record_entry_decision(&self, reason: impl LabelValue) {
        self.lane_entry_decisions
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Exports a rule's rejection series at 0 before its first rejection, in the family its
    /// mode counts in (`dry_run`: would-be rejections), so a dashboard or an alert sees the
    /// rule as "nothing rejected" rather than as missing.
    pub fn declare_rejections(&self, labels: &RejectionLabels, dry_run: bool) {
        let family = if dry_run {
            &self.dry_run_rejections
        } else {
            &self.rejections
        };
        let _ = family.get_or_create(labels);
    }

    /// A request rejected by governance.
    pub fn record_rejection(&self, labels: &RejectionLabels) {
        self.rejections.get_or_create(labels).inc();
    }

    /// A request a dry-run rule would have rejected (and let through).
    pub fn record_dry_run_rejection(&self, labels: &RejectionLabels) {
        self.dry_run_rejections.get_or_create(labels).inc();
    }

    /// A breaker moved to `to`: sets its state gauge and counts the change.
    pub fn record_breaker_transition(&self, labels: &BreakerLabels, to: impl StateValue) {
        self.breaker_state.get_or_create(labels).set(to.gauge());
        self.breaker_transitions
            .get_or_create(&TransitionLabels {
                app: Arc::clone(&labels.app),
                rule: Arc::clone(&labels.rule),
                to: to.label(),
            })
            .inc();
    }

    /// `n` changes of a breaker into `to` (counted from its transition
    /// counters, which also see the changes made while admitting requests).
    pub fn record_breaker_transitions(&self, labels: &BreakerLabels, to: impl StateValue, n: u64) {
        self.breaker_transitions
            .get_or_create(&TransitionLabels {
                app: Arc::clone(&labels.app),
                rule: Arc::clone(&labels.rule),
                to: to.label(),
            })
            .inc_by(n);
    }

    /// Sets a breaker's state gauge without counting a transition (e.g. a
    /// newly created breaker, closed).
    pub fn set_breaker_state(&self, labels: &BreakerLabels, state: impl StateValue) {
        self.breaker_state.get_or_create(labels).set(state.gauge());
    }

    /// Forgets a breaker whose rule is gone, so its series stops being exported.
    pub fn remove_breaker(&self, labels: &BreakerLabels) {
        self.breaker_state.remove(labels);
    }

    /// The OpenMetrics text exposition of every metric, ending in `# EOF`;
    /// serve it with [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(fmt::Error) = prometheus_client::encoding::text::encode(&mut out, &self.registry)
        {
            // Only the writer can fail, and writing to a String does not.
            tracing::warn!("encoding metrics failed");
        }
        out
    }
}

/// Keeps `lanemesh_open_connections` up while alive.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One value read at scrape time from state another module owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// A gauge: name (without prefix), help, value.
    Gauge(&'static str, &'static str, i64),
    /// A counter: name (without prefix and `_total`), help, value.
    Counter(&'static str, &'static str, u64),
}

/// State owned elsewhere (the discovery client, the snapshot store) that reports its own
/// values at scrape time; the metrics module knows nothing of what they mean.
pub trait ScrapeSource: fmt::Debug + Send + Sync {
    /// The current values.
    fn samples(&self) -> Vec<Sample>;
}

/// The attached [`ScrapeSource`]s, in attachment order.
#[derive(Debug, Default)]
struct ScrapeSources {
    sources: RwLock<Vec<Arc<dyn ScrapeSource>>>,
}

impl Collector for ScrapeSources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let sources = self
            .sources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for sample in sources.iter().flat_map(|source| source.samples()) {
            match sample {
                Sample::Gauge(name, help, value) => gauge(&mut encoder, name, help, value)?,
                Sample::Counter(name, help, value) => counter(&mut encoder, name, help, value)?,
            }
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    let metric_encoder = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric families the chart's Grafana dashboard queries under `prefix` (suffixes
    /// `_total`, `_bucket`, `_count`, `_sum` removed).
    fn dashboard_families(prefix: &str, skip: &str) -> std::collections::BTreeSet<String> {
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../charts/lanemesh/dashboards/lanemesh.json"
        ))
        .unwrap();
        let name = regex::Regex::new(r"lanemesh_[a-z_]+").unwrap();
        let mut out = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                for m in name.find_iter(expr) {
                    let m = m.as_str();
                    if !m.starts_with(prefix) || (!skip.is_empty() && m.starts_with(skip)) {
                        continue;
                    }
                    let family = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| m.strip_suffix(s))
                        .unwrap_or(m);
                    out.insert(family.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn every_metric_the_grafana_dashboard_queries_is_one_the_proxy_exports() {
        // A family is exported once it has a series: one of each.
        let metrics = ProxyMetrics::new();
        let app: Arc<str> = Arc::from("b");
        metrics.record_request(
            &RequestLabels {
                direction: Direction::Inbound,
                app: Arc::clone(&app),
                lane: Arc::from("gray"),
                status: StatusClass::Success,
            },
            Duration::from_millis(1),
        );
        metrics.record_gateway_request(&GatewayLabels {
            route: Arc::from("r"),
            app: Arc::clone(&app),
            lane: Arc::from(""),
            status: StatusClass::Success,
        });
        metrics.declare_propagation_rules::<Light>();
        metrics.declare_entry_decisions::<Light>();
        let rejection = RejectionLabels::new(Light::Red, "rule");
        metrics.declare_rejections(&rejection, false);
        metrics.declare_rejections(&rejection, true);
        let breaker = BreakerLabels::new("b", "rule");
        metrics.set_breaker_state(&breaker, Light::Red);
        metrics.record_breaker_transition(&breaker, Light::Red);
        metrics.record_retry(&app, "retried");
        metrics.record_retry_policy_attempt(&app);
        metrics.declare_span_series();
        let exposition = metrics.encode();
        let queried = dashboard_families("lanemesh_", "lanemesh_pilot_");
        assert!(queried.len() >= 8, "{queried:?}");
        for family in queried {
            assert!(
                exposition.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {family}, which the proxy does not export:\n{exposition}"
            );
        }
    }

    /// A two-state label type, standing in for a domain's enum.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Light {
        Green,
        Red,
    }

    impl LabelValue for Light {
        const ALL: &'static [Self] = &[Self::Green, Self::Red];

        fn label(self) -> &'static str {
            match self {
                Self::Green => "green",
                Self::Red => "red",
            }
        }
    }

    impl StateValue for Light {
        fn gauge(self) -> i64 {
            match self {
                Self::Green => 0,
                Self::Red => 2,
            }
        }
    }

    #[test]
    fn status_classes_follow_the_first_digit() {
        assert_eq!(StatusClass::from_code(101).as_str(), "1xx");
        assert_eq!(StatusClass::from_code(204).as_str(), "2xx");
        assert_eq!(StatusClass::from_code(302).as_str(), "3xx");
        assert_eq!(StatusClass::from_code(429).as_str(), "4xx");
        assert_eq!(StatusClass::from_code(503).as_str(), "5xx");
        assert_eq!(StatusClass::from_code(0).as_str(), "error");
        assert_eq!(StatusClass::from_code(600).as_str(), "error");
    }

    #[test]
    fn connection_guard_counts_up_and_down() {
        let metrics = ProxyMetrics::new();
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("lanemesh_open_connections{direction=\"inbound\"}"))
                .map(str::to_owned)
        };
        let first = metrics.open_connection(Direction::Inbound);
        let second = metrics.open_connection(Direction::Inbound);
        assert_eq!(
            line(&metrics.encode()).as_deref(),
            Some("lanemesh_open_connections{direction=\"inbound\"} 2")
        );
        drop(first);
        drop(second);
        assert_eq!(
            line(&metrics.encode()).as_deref(),
            Some("lanemesh_open_connections{direction=\"inbound\"} 0")
        );
    }

    #[test]
    fn breaker_transition_sets_the_gauge_and_counts() {
        let metrics = ProxyMetrics::new();
        let labels = BreakerLabels::new("orders", "slow-calls");
        metrics.record_breaker_transition(&labels, Light::Green);
        metrics.record_breaker_transition(&labels, Light::Red);
        metrics.record_breaker_transitions(&labels, Light::Red, 2);
        let text = metrics.encode();
        assert!(
            text.contains("lanemesh_breaker_state{app=\"orders\",rule=\"slow-calls\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "lanemesh_breaker_transitions_total{app=\"orders\",rule=\"slow-calls\",to=\"red\"} 3\n"
            ),
            "{text}"
        );
        metrics.set_breaker_state(&labels, Light::Green);
        assert!(
            metrics
                .encode()
                .contains("lanemesh_breaker_state{app=\"orders\",rule=\"slow-calls\"} 0\n")
        );
        metrics.remove_breaker(&labels);
        assert!(!metrics.encode().contains("lanemesh_breaker_state{"));
    }

    #[test]
    fn declared_values_are_exported_at_zero_and_recorded_by_label() {
        let metrics = ProxyMetrics::new();
        assert!(
            !metrics
                .encode()
                .contains("lanemesh_lane_propagations_total{")
        );
        metrics.declare_propagation_rules::<Light>();
        metrics.declare_entry_decisions::<Light>();
        metrics.record_propagation(Light::Red);
        metrics.record_entry_decision(Light::Green);
        metrics.record_rejection(&RejectionLabels::new(Light::Red, "r1"));
        metrics.record_dry_run_rejection(&RejectionLabels::new(Light::Green, "dry"));
        metrics.declare_rejections(&RejectionLabels::new(Light::Green, "quiet"), false);
        let text = metrics.encode();
        for line in [
            "lanemesh_lane_propagations_total{rule=\"green\"} 0\n",
            "lanemesh_lane_propagations_total{rule=\"red\"} 1\n",
            "lanemesh_lane_entry_decisions_total{reason=\"green\"} 1\n",
            "lanemesh_lane_entry_decisions_total{reason=\"red\"} 0\n",
            "lanemesh_rejections_total{reason=\"red\",rule=\"r1\"} 1\n",
            "lanemesh_rejections_total{reason=\"green\",rule=\"quiet\"} 0\n",
            "lanemesh_dry_run_rejections_total{reason=\"green\",rule=\"dry\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        assert_eq!(metrics.propagation_count(Light::Red), 1);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn attached_sources_are_read_at_scrape_time() {
        #[derive(Debug, Default)]
        struct Source(std::sync::atomic::AtomicU64);
        impl ScrapeSource for Source {
            fn samples(&self) -> Vec<Sample> {
                let n = self.0.load(std::sync::atomic::Ordering::Relaxed);
                vec![
                    Sample::Gauge("thing_up", "1 while up", 1),
                    Sample::Counter("things", "Things seen", n),
                ]
            }
        }
        let metrics = ProxyMetrics::new();
        assert!(!metrics.encode().contains("lanemesh_thing_up"));
        let source = Arc::new(Source::default());
        metrics.attach(Arc::clone(&source) as Arc<dyn ScrapeSource>);
        source.0.store(7, std::sync::atomic::Ordering::Relaxed);
        let text = metrics.encode();
        assert!(text.contains("# TYPE lanemesh_thing_up gauge\n"), "{text}");
        assert!(text.contains("lanemesh_thing_up 1\n"), "{text}");
        assert!(text.contains("# TYPE lanemesh_things counter\n"), "{text}");
        assert!(text.contains("lanemesh_things_total 7\n"), "{text}");
    }
}
