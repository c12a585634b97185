//! One span per routed request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderValue;
use http::header::{HeaderMap, HeaderName};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::proxy::{Direction, HttpOutcome, UpstreamFailure};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Starts request spans; cheap to clone.
#[derive(Debug, Clone)]
pub struct RequestTracer {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    inbound: Arc<InboundSpans>,
}

/// The inbound requests in flight: how many, and the span the latest one was handed to the app
/// with. While exactly one is in flight, an outbound request that carries no trace context is
/// the app's call for it (the same inference as the in-flight lane rule), so its span continues
/// that trace instead of starting a new one.
#[derive(Debug, Default)]
struct InboundSpans {
    /// Held for a few instructions, never across an await.
    state: Mutex<(usize, Option<SpanContext>)>,
}

impl InboundSpans {
    fn enter(&self, context: SpanContext) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        state.1 = Some(context);
    }

    fn leave(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0 {
            state.1 = None;
        }
    }

    /// The span of the one inbound request in flight, if exactly one is.
    fn single(&self) -> Option<SpanContext> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 == 1 { state.1.clone() } else { None }
    }
}

/// How a request's span relates to the inbound requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// An inbound request an app handles (counted while in flight).
    Inbound,
    /// An outbound request: without trace context of its own, it may continue the trace of the
    /// one inbound request in flight.
    Outbound,
    /// Neither (a gateway request, a kubelet probe).
    None,
}

/// `traceparent` and `tracestate` as the W3C propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

impl RequestTracer {
    pub(super) fn new(tracer: SdkTracer) -> Self {
        Self {
            tracer,
            propagator: TraceContextPropagator::new(),
            inbound: Arc::default(),
        }
    }

    /// Starts the span of a request arriving on a `direction` listener, as a child of the
    /// request's `traceparent` (a new trace without one), and writes the span's own context into
    /// the request's `traceparent`, so the next hop's span is its child. A request the sampler
    /// drops still gets a `traceparent` (flag unsampled) so every hop takes the same decision.
    ///
    /// `link`: see [`Link`]; an outbound span continuing an inbound one is marked
    /// `lanemesh.trace.parent=inflight`, and its `traceparent` is returned instead of written:
    /// the caller writes it after the lane decision, which must not see a trace id the app did
    /// not send (lane carrying stays what the lane group configures, tracing on or off).
    pub fn start(
        &self,
        direction: Direction,
        link: Link,
        req: &mut http::request::Parts,
    ) -> (Box<RequestSpan>, Option<HeaderValue>) {
        let mut parent = self.propagator.extract(&Headers(&req.headers));
        let mut inferred = false;
        if link == Link::Outbound
            && !parent.span().span_context().is_valid()
            && let Some(inbound) = self.inbound.single()
        {
            parent = Context::new().with_remote_span_context(inbound);
            inferred = true;
        }
        let kind = match direction {
            Direction::Outbound => SpanKind::Client,
            Direction::Inbound | Direction::Gateway => SpanKind::Server,
        };
        let mut span = self
            .tracer
            .span_builder(direction.as_str())
            .with_kind(kind)
            .start_with_context(&self.tracer, &parent);
        let context = span.span_context().clone();
        let mut deferred = None;
        if context.is_valid() {
            let value = format!(
                "00-{}-{}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            );
            if let Ok(value) = HeaderValue::from_str(&value) {
                if inferred {
                    deferred = Some(value);
                } else {
                    req.headers.insert(TRACEPARENT.clone(), value);
                }
            }
        }
        let inbound = (link == Link::Inbound).then(|| {
            self.inbound.enter(context.clone());
            Arc::clone(&self.inbound)
        });
        if span.is_recording() {
            if inferred {
                span.set_attribute(KeyValue::new("lanemesh.trace.parent", "inflight"));
            }
            span.set_attribute(KeyValue::new("lanemesh.direction", direction.as_str()));
            span.set_attribute(KeyValue::new(
                "http.request.method",
                req.method.as_str().to_owned(),
            ));
            span.set_attribute(KeyValue::new("url.path", req.uri.path().to_owned()));
            let authority = req
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| req.headers.get(http::header::HOST)?.to_str().ok());
            if let Some(authority) = authority {
                span.set_attribute(KeyValue::new("server.address", authority.to_owned()));
            }
        }
        let span = Box::new(RequestSpan {
            span,
            inbound,
            direction,
            status: None,
            failed: false,
            name: None,
        });
        (span, deferred)
    }

    /// Writes a `traceparent` [`RequestTracer::start`] returned into the request.
    pub fn write(req: &mut http::request::Parts, traceparent: HeaderValue) {
        req.headers.insert(TRACEPARENT.clone(), traceparent);
    }
}

/// A request's span: what the router learned about the request is written into it as it
/// happens; dropping it ends it.
#[derive(Debug)]
pub struct RequestSpan {
    span: Span,
    /// Set for an inbound request: it leaves the in-flight count when the span ends.
    inbound: Option<Arc<InboundSpans>>,
    direction: Direction,
    /// The response status, once known.
    status: Option<u16>,
    /// No response from upstream (refused, reset, timed out).
    failed: bool,
    /// The span name once the app is known: `<direction> <app>`.
    name: Option<String>,
}

impl RequestSpan {
    fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Whether the span is recorded (sampled): callers skip work for one that is not.
    pub fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    /// The app the request is for (the destination app outbound and at a gateway) and its lane
    /// (`None`: base).
    pub fn app_and_lane(&mut self, app: &str, lane: Option<&str>) {
        if !self.is_recording() {
            return;
        }
        if !app.is_empty() {
            self.set("lanemesh.app", app.to_owned());
            self.name = Some(format!("{} {app}", self.direction.as_str()));
        }
        self.set("lanemesh.lane", lane.unwrap_or("base").to_owned());
    }

    /// The lane rule that decided: a propagation rule outbound, the entry decision's reason, or
    /// `carried` for an inbound request that arrived with its lane.
    pub fn lane_rule(&mut self, rule: &'static str) {
        self.set("lanemesh.lane.rule", rule);
    }

    /// The request's lane has no ready endpoint of the app: it went to base.
    pub fn fell_back(&mut self) {
        self.set("lanemesh.lane.fallback", true);
    }

    /// Governance rejected the request: `reason` (flow, concurrency, hot_param,
    /// circuit_breaking, system) by rule `rule`.
    pub fn blocked(&mut self, reason: &'static str, rule: &str) {
        self.set("lanemesh.governance.blocked", reason);
        self.set("lanemesh.governance.rule", rule.to_owned());
    }

    /// The gateway route that matched.
    pub fn route(&mut self, route: &str) {
        self.set("lanemesh.gateway.route", route.to_owned());
    }

    /// A failed attempt is sent again to `target`.
    pub fn retried(&mut self, failed: &HttpOutcome, target: SocketAddr) {
        if !self.is_recording() {
            return;
        }
        self.span.add_event(
            "retry",
            vec![
                KeyValue::new("lanemesh.retry.failed", outcome_text(failed)),
                KeyValue::new("lanemesh.retry.endpoint", target.to_string()),
            ],
        );
    }

    /// The upstream answered (or failed to): the endpoint it was sent to and the status.
    pub fn outcome(&mut self, outcome: &HttpOutcome) {
        if !self.is_recording() {
            return;
        }
        self.set("network.peer.address", outcome.target.ip().to_string());
        self.set("network.peer.port", i64::from(outcome.target.port()));
        match outcome.result {
            Ok(status) => {
                self.status = Some(status.as_u16());
                self.failed = false;
            }
            Err(failure) => {
                self.failed = true;
                self.set("error.type", failure_name(failure));
            }
        }
        if let Some(code) = outcome.grpc_status {
            self.grpc_status(code);
        }
    }

    /// The gRPC status of the response (trailers).
    pub fn grpc_status(&mut self, code: u32) {
        self.set("rpc.grpc.status_code", i64::from(code));
    }

    /// The proxy answered itself with `status`.
    pub fn local(&mut self, status: http::StatusCode) {
        self.status = Some(status.as_u16());
        self.set("lanemesh.local_response", true);
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if let Some(inbound) = self.inbound.take() {
            inbound.leave();
        }
        if !self.span.is_recording() {
            return;
        }
        if let Some(name) = self.name.take() {
            self.span.update_name(name);
        }
        if let Some(status) = self.status {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        // OpenTelemetry's HTTP conventions: a server's span fails on 5xx, a client's on 4xx too.
        let error_from = match self.direction {
            Direction::Outbound => 400,
            Direction::Inbound | Direction::Gateway => 500,
        };
        match self.status {
            _ if self.failed => self
                .span
                .set_status(Status::error("no response from upstream")),
            Some(status) if status >= error_from => self.span.set_status(Status::error("")),
            Some(_) => {}
            None => self
                .span
                .set_status(Status::error("the client went away before the response")),
        }
        self.span.end();
    }
}

fn failure_name(failure: UpstreamFailure) -> &'static str {
    match failure {
        UpstreamFailure::Connect => "connect_failure",
        UpstreamFailure::Reset => "reset",
        UpstreamFailure::Timeout => "timeout",
    }
}

fn outcome_text(outcome: &HttpOutcome) -> String {
    match outcome.result {
        Ok(status) => match outcome.grpc_status {
            Some(code) => format!("grpc {code}"),
            None => status.as_u16().to_string(),
        },
        Err(failure) => failure_name(failure).to_owned(),
    }
}
