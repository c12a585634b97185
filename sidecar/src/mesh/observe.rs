//! Request metrics (`lanemesh_requests_total`, `lanemesh_request_duration_seconds`) and, when
//! tracing is on, the request's span, recorded by the router's per-request state, which knows
//! the request's app and lane.
//!
//! Label values come from [`LabelNames`], built with each runtime from the apps and lane tags the
//! snapshot names: a lane tag read from a header that no lane group defines is recorded as base,
//! so a caller cannot grow the series without bound.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::lane::DecisionReason;
use crate::lane::propagate::PropagationRule;
use crate::metrics::{self, GatewayLabels, ProxyMetrics, RequestLabels, StatusClass};
use crate::proxy::{Direction, HttpOutcome};
use crate::trace::RequestSpan;

impl From<Direction> for metrics::Direction {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Inbound => Self::Inbound,
            Direction::Outbound => Self::Outbound,
            Direction::Gateway => Self::Gateway,
        }
    }
}

/// Interned label values of one runtime.
#[derive(Debug)]
pub struct LabelNames {
    names: HashSet<Arc<str>>,
    empty: Arc<str>,
}

impl LabelNames {
    /// The apps and tags that may appear as labels.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            names: values
                .into_iter()
                .filter(|v| !v.is_empty())
                .map(Arc::from)
                .collect(),
            empty: Arc::from(""),
        }
    }

    /// The interned value, or `""` for one the snapshot does not name.
    pub fn get(&self, value: Option<&str>) -> Arc<str> {
        value
            .and_then(|v| self.names.get(v))
            .map_or_else(|| Arc::clone(&self.empty), Arc::clone)
    }
}

/// Exports the lane series (every propagation rule, every entry decision reason) at 0, so a
/// dashboard sees zeros rather than missing series before the first request.
pub fn declare_lane_series(metrics: &ProxyMetrics) {
    metrics.declare_propagation_rules::<PropagationRule>();
    metrics.declare_entry_decisions::<DecisionReason>();
}

/// Records one request when dropped: the proxy core drops the router's state when the response
/// body has been sent, or the exchange failed, or the client went away.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<ProxyMetrics>,
    direction: metrics::Direction,
    app: Arc<str>,
    lane: Arc<str>,
    status: StatusClass,
    started: Instant,
    /// At a gateway: the route that matched, also counted in `lanemesh_gateway_requests_total`.
    route: Option<Arc<str>>,
    /// The request's span, when tracing is on; ended with the recorder.
    span: Option<Box<RequestSpan>>,
}

impl Recorder {
    pub fn new(
        metrics: &Arc<ProxyMetrics>,
        direction: Direction,
        app: Arc<str>,
        lane: Arc<str>,
    ) -> Self {
        Self {
            metrics: Arc::clone(metrics),
            direction: direction.into(),
            app,
            lane,
            // Until the response head arrives: a client that leaves first ends as an error.
            status: StatusClass::Error,
            started: Instant::now(),
            route: None,
            span: None,
        }
    }

    /// Also counts the request as one of gateway route `route`.
    #[must_use]
    pub fn for_route(mut self, route: Arc<str>) -> Self {
        if let Some(span) = &mut self.span {
            span.route(&route);
        }
        self.route = Some(route);
        self
    }

    /// Writes what this recorder learns into `span` too (taken from the slot: a request has
    /// one span and one recorder), starting with the app and lane.
    #[must_use]
    pub fn traced(mut self, span: &mut Option<Box<RequestSpan>>) -> Self {
        self.span = span.take();
        if let Some(span) = &mut self.span {
            let lane = (!self.lane.is_empty()).then_some(&*self.lane);
            span.app_and_lane(&self.app, lane);
        }
        self
    }

    /// The request's span, when traced.
    pub fn span(&mut self) -> Option<&mut RequestSpan> {
        self.span.as_deref_mut()
    }

    /// The app label (destination app outbound).
    pub fn app(&self) -> Arc<str> {
        Arc::clone(&self.app)
    }

    /// Takes the status class from the upstream's answer.
    pub fn outcome(&mut self, outcome: &HttpOutcome) {
        self.status = outcome.result.map_or(StatusClass::Error, StatusClass::from);
        if let Some(span) = &mut self.span {
            span.outcome(outcome);
        }
    }

    /// Records a response the proxy produced itself, at once.
    pub fn local(mut self, status: http::StatusCode) {
        self.status = status.into();
        if let Some(span) = &mut self.span {
            span.local(status);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let labels = RequestLabels {
            direction: self.direction,
            app: Arc::clone(&self.app),
            lane: Arc::clone(&self.lane),
            status: self.status,
        };
        self.metrics.record_request(&labels, self.started.elapsed());
        if let Some(route) = self.route.take() {
            self.metrics.record_gateway_request(&GatewayLabels {
                route,
                app: labels.app,
                lane: labels.lane,
                status: labels.status,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unknown_label_values_collapse_to_empty() {
        let names = LabelNames::new(["b", "gray", ""]);
        assert_eq!(&*names.get(Some("b")), "b");
        assert_eq!(&*names.get(Some("gray")), "gray");
        assert_eq!(&*names.get(Some("attacker-chosen")), "");
        assert_eq!(&*names.get(None), "");
    }

    #[test]
    fn a_recorder_counts_its_request_once_with_the_final_status() {
        let metrics = Arc::new(ProxyMetrics::new());
        let names = LabelNames::new(["b", "gray"]);
        let mut r = Recorder::new(
            &metrics,
            Direction::Outbound,
            names.get(Some("b")),
            names.get(Some("gray")),
        );
        r.outcome(&HttpOutcome {
            target: "10.0.0.1:80".parse().unwrap(),
            result: Ok(http::StatusCode::SERVICE_UNAVAILABLE),
            elapsed: std::time::Duration::from_millis(3),
            grpc: false,
            grpc_status: None,
        });
        drop(r);
        Recorder::new(
            &metrics,
            Direction::Inbound,
            names.get(Some("b")),
            names.get(None),
        )
        .local(http::StatusCode::TOO_MANY_REQUESTS);
        let text = metrics.encode();
        assert!(
            text.contains(r#"lanemesh_requests_total{direction="outbound",app="b",lane="gray",status="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"lanemesh_requests_total{direction="inbound",app="b",lane="",status="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"lanemesh_request_duration_seconds_count{direction="outbound",app="b"} 1"#
            ),
            "{text}"
        );
    }
}
