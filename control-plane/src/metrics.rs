//! Prometheus metrics of the control plane, served on the admin port.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels `type` (the resource type's short name, e.g. `Service`).
pub type TypeFamily = Family<Vec<(&'static str, String)>, Counter>;

/// Every metric handle, plus the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open discovery streams.
    pub connected: Gauge,
    /// Responses sent, by type.
    pub pushes: TypeFamily,
    /// From the index build that caused a push to the push being queued.
    pub push_latency: Histogram,
    /// NACKed responses, by type.
    pub nacks: TypeFamily,
    /// NACKed resources ignored: not sent on that stream (or at another
    /// version), or beyond the stream's bound.
    pub nacks_ignored: TypeFamily,
    /// Objects refused by the latest build.
    pub rejected_objects: Gauge,
    /// Status writes, by `kind` and `result` (`ok` | `error`).
    pub status_writes: Family<Vec<(&'static str, String)>, Counter>,
    /// 1 while this replica holds the status Lease.
    pub leader: Gauge,
    /// Admission reviews answered by the injection webhook, by `outcome` (`injected`,
    /// `skipped`, `refused`, `invalid`, `no object`, `error`).
    pub injections: Family<Vec<(&'static str, String)>, Counter>,
    /// Discovery streams refused by authentication, by `reason`.
    pub streams_refused: Family<Vec<(&'static str, String)>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lanemesh_pilot");
        let connected = Gauge::default();
        let pushes = TypeFamily::default();
        // 1 ms .. ~8 s.
        let push_latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let nacks = TypeFamily::default();
        let nacks_ignored = TypeFamily::default();
        let rejected_objects = Gauge::default();
        let status_writes = Family::<Vec<(&'static str, String)>, Counter>::default();
        let leader = Gauge::default();
        let injections = Family::<Vec<(&'static str, String)>, Counter>::default();
        let streams_refused = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "connected_proxies",
            "Open discovery streams",
            connected.clone(),
        );
        registry.register("pushes", "Discovery responses sent", pushes.clone());
        registry.register(
            "push_latency_seconds",
            "From a configuration change being indexed to its push being queued",
            push_latency.clone(),
        );
        registry.register(
            "nacks",
            "Discovery responses NACKed by sidecars",
            nacks.clone(),
        );
        registry.register(
            "nacks_ignored",
            "NACKed resources ignored: not sent on that stream at that version, or over the per-stream bound",
            nacks_ignored.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects refused by the latest build (their last good version is served)",
            rejected_objects.clone(),
        );
        registry.register(
            "status_writes",
            "CRD status writes by this replica, by kind and result",
            status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and writes CRD status",
            leader.clone(),
        );
        registry.register(
            "injections",
            "Pod admission reviews answered by the injection webhook, by outcome",
            injections.clone(),
        );
        registry.register(
            "streams_refused",
            "Discovery streams refused because their token did not prove the claimed pod, by reason",
            streams_refused.clone(),
        );
        Self {
            registry,
            connected,
            pushes,
            push_latency,
            nacks,
            nacks_ignored,
            rejected_objects,
            status_writes,
            leader,
            injections,
            streams_refused,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The label set for one resource type.
pub fn type_label(type_url: &str) -> Vec<(&'static str, String)> {
    let short = type_url.rsplit('.').next().unwrap_or(type_url);
    vec![("type", short.to_owned())]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_pilot_metric_the_grafana_dashboard_queries_is_exported() {
        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../charts/lanemesh/dashboards/lanemesh.json"
        ))
        .unwrap();
        let metrics = Metrics::default();
        // A family is exported once it has a series.
        metrics
            .nacks
            .get_or_create(&type_label("lanemesh.v1.Service"))
            .inc();
        let exposition = metrics.render();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    let Some(name) = word.strip_prefix("lanemesh_pilot_") else {
                        continue;
                    };
                    let family = name.strip_suffix("_total").unwrap_or(name);
                    queried += 1;
                    assert!(
                        exposition.contains(&format!("# TYPE lanemesh_pilot_{family} ")),
                        "the dashboard queries {word}, which the pilot does not export:\n{exposition}"
                    );
                }
            }
        }
        assert!(queried >= 3, "{queried}");
    }
}
