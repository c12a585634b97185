//! OpenTelemetry request spans: every request the proxy routes (inbound, outbound, at a
//! gateway) becomes one span, exported over OTLP/gRPC when `--trace-endpoint` is set.
//!
//! A span continues the request's W3C `traceparent` and hands its own span id on in that header,
//! so an app that forwards the header keeps one trace across every sidecar it passes. Sampling
//! follows the parent's decision; a trace that starts here is sampled at `--trace-sampling`.
//! The request path only builds the span and queues it when it ends: [`export`] ships the queue
//! from the proxy's control thread, and a full queue drops spans (counted in
//! `lanemesh_trace_spans_total{result="dropped"}`) rather than waiting.
//!
//! The OpenTelemetry SDK is used directly rather than through `tracing-opentelemetry`: request
//! spans take their parent from request headers, not from the task's current span, and must
//! not pass through the log subscriber's filters.
//!
//! # Layout
//! - [`span`]: [`RequestTracer`] (starts a request's span from its headers) and [`RequestSpan`]
//!   (what the router learned about the request, written when it ends).
//! - [`export`]: the bounded queue between the SDK and the OTLP exporter.

pub mod export;
pub mod span;

use std::time::Duration;

use clap::Args;

pub use export::{ExportTask, Pipeline, PipelineError};
pub use span::{Link, RequestSpan, RequestTracer};

/// `--trace-sampling`: Istio's default share of traces.
pub const DEFAULT_SAMPLING: f64 = 0.01;
/// `--trace-queue`: the OpenTelemetry SDK's default batch queue.
pub const DEFAULT_QUEUE: usize = 2048;

/// Flags of the span export (`LANEMESH_TRACE_*`).
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// OTLP/gRPC endpoint spans are exported to (e.g. `http://otel-collector.observability:4317`);
    /// unset: no spans.
    #[arg(long, env = "LANEMESH_TRACE_ENDPOINT")]
    pub trace_endpoint: Option<String>,

    /// Share of the traces that start at this proxy that are recorded, 0 to 1. Requests that
    /// arrive with a `traceparent` follow its sampled flag.
    #[arg(long, env = "LANEMESH_TRACE_SAMPLING", default_value_t = DEFAULT_SAMPLING)]
    pub trace_sampling: f64,

    /// Ended spans waiting for export at most; more are dropped.
    #[arg(long, env = "LANEMESH_TRACE_QUEUE", default_value_t = DEFAULT_QUEUE)]
    pub trace_queue: usize,

    /// The `service.name` of the spans; default: the pod's app (`--app-name`), else
    /// `lanemesh-proxy` or `lanemesh-gateway`.
    #[arg(long, env = "LANEMESH_TRACE_SERVICE_NAME")]
    pub trace_service_name: Option<String>,
}

/// Validated span export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC endpoint (`http://` or `https://`).
    pub endpoint: String,
    /// Sampling ratio of traces starting here.
    pub sampling: f64,
    /// Queue bound.
    pub queue: usize,
    /// `service.name`; `None`: derived from the pod.
    pub service_name: Option<String>,
    /// How long an export call may take.
    pub export_timeout: Duration,
    /// How long spans wait to be exported together.
    pub batch_delay: Duration,
}

/// A trace flag that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceConfigError {
    /// `--trace-endpoint`.
    #[error("--trace-endpoint {0:?}: expected an http:// or https:// URL of an OTLP/gRPC receiver")]
    Endpoint(String),
    /// `--trace-sampling`.
    #[error("--trace-sampling {0}: expected a ratio from 0 to 1")]
    Sampling(f64),
    /// `--trace-queue`.
    #[error("--trace-queue must be at least 1")]
    Queue,
}

impl TraceArgs {
    /// The settings, `None` when no endpoint is set (spans off).
    pub fn settings(&self) -> Result<Option<TraceSettings>, TraceConfigError> {
        let Some(endpoint) = self.trace_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| TraceConfigError::Endpoint(endpoint.to_owned()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(TraceConfigError::Endpoint(endpoint.to_owned()));
        }
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            return Err(TraceConfigError::Sampling(self.trace_sampling));
        }
        if self.trace_queue == 0 {
            return Err(TraceConfigError::Queue);
        }
        Ok(Some(TraceSettings {
            endpoint: endpoint.to_owned(),
            sampling: self.trace_sampling,
            queue: self.trace_queue,
            service_name: self.trace_service_name.clone().filter(|s| !s.is_empty()),
            export_timeout: Duration::from_secs(5),
            batch_delay: Duration::from_millis(500),
        }))
    }
}

impl TraceSettings {
    /// Settings for `endpoint` that record every trace (tests, demos).
    pub fn always(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            sampling: 1.0,
            queue: DEFAULT_QUEUE,
            service_name: None,
            export_timeout: Duration::from_secs(5),
            batch_delay: Duration::from_millis(100),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};

    use crate::metrics::{ProxyMetrics, SpanResult};
    use crate::proxy::Direction;

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Starts one inbound span per `traceparent` (`None`: the request has none) with
    /// sampling `ratio`, ends them, and returns the `traceparent` each request went on with and
    /// the spans exported.
    async fn run(ratio: f64, incoming: &[Option<&str>]) -> (Vec<String>, Vec<SpanData>) {
        let kept = Kept::default();
        let metrics = Arc::new(ProxyMetrics::new());
        let settings = TraceSettings {
            sampling: ratio,
            ..TraceSettings::always("http://unused:4317")
        };
        let (tracer, export) =
            Pipeline::with_exporter(&settings, vec![], Arc::clone(&metrics), kept.clone());
        let mut sent = Vec::new();
        for traceparent in incoming {
            let mut req = http::Request::get("/x");
            if let Some(value) = traceparent {
                req = req.header("traceparent", *value);
            }
            let (mut parts, ()) = req.body(()).unwrap().into_parts();
            drop(
                tracer
                    .start(Direction::Inbound, span::Link::Inbound, &mut parts)
                    .0,
            );
            sent.push(parts.headers["traceparent"].to_str().unwrap().to_owned());
        }
        export.finish(std::time::Duration::from_secs(5)).await;
        let spans = kept.0.lock().unwrap().clone();
        assert_eq!(metrics.span_count(SpanResult::Exported), spans.len() as u64);
        (sent, spans)
    }

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[tokio::test]
    async fn the_callers_sampling_decision_is_followed_and_handed_on() {
        // Ratio 0: nothing starts a recorded trace here, but a sampled caller's trace is.
        let (sent, spans) = run(0.0, &[None, Some(SAMPLED)]).await;
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].parent_span_id.to_string(),
            "00f067aa0ba902b7",
            "child of the caller's span"
        );
        let new_trace: Vec<&str> = sent[0].split('-').collect();
        assert_eq!(
            (new_trace.len(), new_trace[3]),
            (4, "00"),
            "unsampled: {}",
            sent[0]
        );
        assert_eq!(
            sent[1],
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                spans[0].span_context.span_id()
            )
        );
        // Ratio 1: an unsampled caller still is not recorded; the trace id goes on.
        let (sent, spans) = run(1.0, &[Some(UNSAMPLED), None]).await;
        assert_eq!(spans.len(), 1, "only the trace that starts here");
        assert!(sent[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent[0].ends_with("-00"));
        assert_ne!(sent[0], UNSAMPLED, "the span id is this hop's");
        assert!(sent[1].ends_with("-01"));
    }

    fn args(endpoint: Option<&str>, sampling: f64, queue: usize) -> TraceArgs {
        TraceArgs {
            trace_endpoint: endpoint.map(str::to_owned),
            trace_sampling: sampling,
            trace_queue: queue,
            trace_service_name: None,
        }
    }

    #[test]
    fn spans_are_off_without_an_endpoint_and_bad_flags_are_refused() {
        assert_eq!(args(None, 0.5, 10).settings().unwrap(), None);
        assert_eq!(args(Some(""), 0.5, 10).settings().unwrap(), None);
        let on = args(Some("http://collector:4317"), 0.5, 10)
            .settings()
            .unwrap()
            .unwrap();
        assert_eq!(
            (on.endpoint.as_str(), on.sampling, on.queue),
            ("http://collector:4317", 0.5, 10)
        );
        assert_eq!(
            args(Some("collector:4317"), 0.5, 10).settings(),
            Err(TraceConfigError::Endpoint("collector:4317".into()))
        );
        assert_eq!(
            args(Some("http://c:4317"), 1.5, 10).settings(),
            Err(TraceConfigError::Sampling(1.5))
        );
        assert!(
            args(Some("http://c:4317"), f64::NAN, 10)
                .settings()
                .is_err()
        );
        assert_eq!(
            args(Some("http://c:4317"), 1.0, 0).settings(),
            Err(TraceConfigError::Queue)
        );
    }
}
