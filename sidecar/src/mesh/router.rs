//! [`MeshRouter`]: the lane decision on inbound requests and the lane-aware endpoint choice on
//! outbound ones.

use std::borrow::Cow;
use std::sync::Arc;

use std::sync::{Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::gateway::{self, BackendPort, Matched, edge};
use crate::govern::{
    CallResult, GovernContext, InboundAdmission, OutboundAdmission, RetryPlan, Traffic,
};
use crate::lane::{InboundGuard, PropagationRule, Propagator, RequestView, baggage};
use crate::metrics::ProxyMetrics;
use crate::policy::clock::{Clock, MonotonicClock};
use crate::policy::{AttemptResult, SampledCpu};
use crate::proxy::grpc;
use crate::proxy::local;
use crate::proxy::router::ResponseEnd;
use crate::proxy::{
    Attempts, ConnContext, Direction, HttpOutcome, PortProtocol, RequestState, Retry,
    RouteDecision, Routed, Router, TcpDecision, UpstreamFailure,
};
use crate::route::endpoints::{Chosen, Destination, NoEndpoint};
use crate::route::{Balancer, BalancerConfig, Endpoint, Pick, Protocol};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::trace::{Link, RequestSpan, RequestTracer};

use super::observe::{Recorder, declare_lane_series};
use super::runtime::Runtime;

/// Routes by lane: see the [module](super) documentation.
#[derive(Debug)]
pub struct MeshRouter {
    runtime: ArcSwapOption<Runtime>,
    propagator: Propagator,
    /// Shared with the requests that may be retried (they pick again).
    balancer: Arc<Balancer>,
    /// Outbound requests by deciding rule (`lanemesh_lane_propagations_total`), rejections.
    metrics: Arc<ProxyMetrics>,
    /// Time for limiters, breakers and the overload estimate.
    clock: Arc<dyn Clock>,
    /// Container CPU usage for overload protection, written by the sampler task.
    cpu: Arc<SampledCpu>,
    /// See [`GovernContext::trusted_proxy_hops`].
    trusted_proxy_hops: usize,
    /// The route label of gateway requests no route matched.
    no_route: Arc<str>,
    /// With `--lane-seed`: one seeded generator for every lane draw of every worker, so a
    /// sequence of requests gets a reproducible sequence of lanes (tests, demos). Unset: each
    /// worker draws from its thread's generator, without a lock.
    lane_rng: Option<Arc<Mutex<StdRng>>>,
    /// Starts each request's span when tracing is on.
    tracer: Option<RequestTracer>,
}

/// The span of the request being routed, until its recorder takes it.
type SpanSlot = Option<Box<RequestSpan>>;

impl Default for MeshRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl MeshRouter {
    /// A router on the monotonic clock; it passes everything through until the first
    /// [`MeshRouter::install`]. Who the pod is comes with each snapshot.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(MonotonicClock::new()))
    }

    /// A router reading time (trace TTLs, latencies) from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let propagator = Propagator::new(&Default::default(), Arc::clone(&clock));
        Self {
            runtime: ArcSwapOption::empty(),
            propagator,
            balancer: Arc::new(Balancer::new(Arc::clone(&clock), BalancerConfig::default())),
            metrics: {
                let metrics = Arc::new(ProxyMetrics::new());
                declare_lane_series(&metrics);
                metrics
            },
            clock,
            // No reading yet: overload protection sees no evidence of overload.
            cpu: Arc::new(SampledCpu::new(f64::NAN)),
            trusted_proxy_hops: 0,
            no_route: Arc::from(""),
            lane_rng: None,
            tracer: None,
        }
    }

    /// Draws every lane decision from one generator seeded with `seed` (see `--lane-seed`).
    #[must_use]
    pub fn with_lane_seed(mut self, seed: u64) -> Self {
        self.lane_rng = Some(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))));
        self
    }

    /// Gives every request a span from `tracer`.
    #[must_use]
    pub fn with_tracer(mut self, tracer: RequestTracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Runs a lane decision with the generator it draws from.
    fn lane_draw<T>(&self, decide: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        match &self.lane_rng {
            // Held for one decision, never across an await.
            Some(rng) => decide(&mut *rng.lock().unwrap_or_else(PoisonError::into_inner)),
            None => decide(&mut rand::rng()),
        }
    }

    /// Reads CPU usage for overload protection from `cpu` (fed by
    /// [`run_sampler`](crate::govern::cpu::run_sampler), or set by tests).
    pub fn with_cpu(mut self, cpu: Arc<SampledCpu>) -> Self {
        self.cpu = cpu;
        self
    }

    /// The CPU usage source overload protection reads.
    pub fn cpu(&self) -> &Arc<SampledCpu> {
        &self.cpu
    }

    /// Trusts `hops` proxies in front of the pod for the `ClientIP` hot-parameter source.
    pub fn with_trusted_proxy_hops(mut self, hops: usize) -> Self {
        self.trusted_proxy_hops = hops;
        self
    }

    /// Records into the proxy's shared registry instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        declare_lane_series(&metrics);
        self.metrics = metrics;
        self
    }

    /// Compiles `snapshot` into the next [`Runtime`], swaps it in and forgets the endpoint
    /// statistics no runtime uses any more. Off the hot path; called by
    /// [`run_builder`](super::run_builder).
    pub fn install(&self, snapshot: &Snapshot) {
        let govern = GovernContext {
            metrics: Arc::clone(&self.metrics),
            cpu: Arc::clone(&self.cpu) as Arc<dyn crate::policy::CpuSource>,
            trusted_proxy_hops: self.trusted_proxy_hops,
        };
        let previous = self.runtime.load_full();
        let next = Runtime::build(snapshot, &self.balancer, previous.as_deref(), &govern);
        self.propagator.apply(&next.propagation);
        let generation = next.generation;
        self.runtime.store(Some(Arc::new(next)));
        let pruned = self.balancer.prune();
        tracing::debug!(generation, pruned, "routing runtime swapped");
    }

    /// The current runtime; `None` until the first snapshot.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    /// The snapshot generation of the current runtime.
    pub fn generation(&self) -> Option<u64> {
        self.runtime.load().as_ref().map(|rt| rt.generation)
    }

    /// The pod's propagation state (trace table, in-flight counts).
    pub fn propagator(&self) -> &Propagator {
        &self.propagator
    }

    /// The registry this router records into.
    pub fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }

    /// The endpoint balancer.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Outbound requests to governed destinations so far, by the rule that decided their lane.
    pub fn rule_counts(&self) -> [(PropagationRule, u64); PropagationRule::ALL.len()] {
        PropagationRule::ALL.map(|rule| (rule, self.metrics.propagation_count(rule)))
    }

    /// A recorder for a request of `app` whose lane is the tag it carries.
    fn recorder(
        &self,
        rt: &Runtime,
        direction: Direction,
        app: &str,
        headers: &HeaderMap,
        span: &mut SpanSlot,
    ) -> Recorder {
        let lane = rt.propagation.carried_tag(headers);
        Recorder::new(
            &self.metrics,
            direction,
            rt.labels.get(Some(app)),
            rt.labels.get(lane.as_ref().map(|(tag, _)| &**tag)),
        )
        .traced(span)
    }

    /// Answers locally with a governance rejection, counting it.
    fn reject(&self, mut recorder: Recorder, blocked: crate::govern::Blocked) -> Routed {
        self.metrics.record_rejection(&blocked.labels());
        if let Some(span) = recorder.span() {
            span.blocked(blocked.reason.as_str(), &blocked.rule);
        }
        recorder.local(blocked.response.status);
        RouteDecision::Respond(*blocked.response).into()
    }

    fn inbound(
        &self,
        rt: &Runtime,
        conn: &ConnContext,
        req: &mut http::request::Parts,
        span: &mut SpanSlot,
    ) -> Routed {
        let admission = if rt.inbound.is_empty() {
            None
        } else {
            match rt.inbound.check(req, conn.peer.ip(), self.clock.now()) {
                Ok(admission) => Some(admission),
                Err(blocked) => {
                    let recorder =
                        self.recorder(rt, Direction::Inbound, &rt.app, &req.headers, span);
                    return self.reject(recorder, blocked);
                }
            }
        };
        let delay = admission.as_ref().and_then(|a| a.delay);
        // A governed caller already took the decision for this app (and found no lane: a lane
        // it chose travels in the tag header, which the decision below keeps): deciding again
        // would draw twice in Percentage mode.
        let decided_upstream = req.headers.remove(&DECIDED_HEADER).is_some();
        let mut reason = None;
        if rt.is_entry && !decided_upstream {
            let view = RequestView::new(&req.uri, &req.headers);
            let decided = self
                .lane_draw(|rng| rt.lanes.decide_entry(&rt.app, &view, rng))
                .inspect(|d| {
                    self.metrics.record_entry_decision(d.reason);
                    reason = Some(d.reason);
                })
                .filter(|d| d.sets_tag_header())
                .and_then(|d| {
                    let value = HeaderValue::from_str(d.tag.as_deref()?).ok()?;
                    Some((d.tag_header.clone(), value))
                });
            if let Some((name, value)) = decided {
                baggage::carry(&mut req.headers, &name, &value);
            }
        }
        // The entry decision (if any) is in the tag header now; elsewhere the request carries
        // its lane from upstream, or is base.
        let mut lane = rt.propagation.carried_tag(&req.headers);
        // An app that forwards baggage (OpenTelemetry's instrumentation does) then names the
        // lane on each of its own calls, however many lanes it serves at once. A caller's
        // sidecar already wrote it: only a tag from elsewhere costs a copy.
        if let Some((tag, PropagationRule::TagHeader)) = &lane
            && rt
                .propagation
                .tag_headers
                .iter()
                .any(|name| baggage::value(&req.headers, name.as_str()).as_deref() != Some(&**tag))
        {
            let tag = tag.clone().into_owned();
            for name in &rt.propagation.tag_headers {
                baggage::complete(&mut req.headers, name, &tag);
            }
            lane = Some((Cow::Owned(tag), PropagationRule::TagHeader));
        }
        let guard = self.propagator.register_inbound(
            &rt.propagation,
            lane.as_ref().map(|(tag, _)| &**tag),
            &req.headers,
        );
        let mut recorder = Recorder::new(
            &self.metrics,
            Direction::Inbound,
            rt.labels.get(Some(&rt.app)),
            rt.labels.get(lane.as_ref().map(|(tag, _)| &**tag)),
        )
        .traced(span);
        if let Some(span) = recorder.span() {
            span.lane_rule(match (reason, &lane) {
                (Some(reason), _) => reason.as_str(),
                (None, Some(_)) => "carried",
                (None, None) => "base",
            });
        }
        let clock = admission.as_ref().map(|_| Arc::clone(&self.clock));
        Routed::with_state(
            RouteDecision::Passthrough,
            InboundState {
                _guard: guard,
                admission,
                clock,
                recorder,
            },
        )
        .delayed(delay)
    }

    fn outbound(
        &self,
        rt: &Runtime,
        conn: &ConnContext,
        req: &mut http::request::Parts,
        span: &mut SpanSlot,
    ) -> Routed {
        let Some(dest) = rt.routes.lookup(conn.original_dst) else {
            // Not governed: counted under app "" so operators see what bypasses lanemesh.
            let recorder = Recorder::new(
                &self.metrics,
                Direction::Outbound,
                rt.labels.get(None),
                rt.labels.get(None),
            )
            .traced(span);
            return Routed::with_state(RouteDecision::Passthrough, PassthroughState { recorder });
        };
        let app = dest.service.app();
        let (breakers, traffic) = match self.admit_outbound(rt, app, req, span) {
            Ok(admitted) => admitted,
            Err(rejected) => return *rejected,
        };
        let lane =
            self.propagator
                .outbound_lane(&rt.propagation, &req.headers, rt.pod_tag.as_ref());
        let entry = if lane.rule == PropagationRule::Base {
            self.decide_for_entry(rt, app, req)
        } else {
            None
        };
        let (rule, tag, injection) = match &entry {
            Some(EntryDecision::Lane { header, value }) => (
                PropagationRule::EntryDecision,
                value.to_str().ok(),
                Some(Injection::Header(header.clone(), value.clone())),
            ),
            Some(EntryDecision::Base) => (
                PropagationRule::EntryDecision,
                None,
                Some(Injection::DecidedBase),
            ),
            None => (
                lane.rule,
                lane.tag(),
                lane.injection()
                    .and_then(|t| HeaderValue::from_str(t).ok())
                    .map(Injection::Propagated),
            ),
        };
        self.metrics.record_propagation(rule);
        let mut recorder = Recorder::new(
            &self.metrics,
            Direction::Outbound,
            rt.labels.get(Some(app)),
            rt.labels.get(tag),
        )
        .traced(span);
        if let Some(span) = recorder.span() {
            span.lane_rule(rule.as_str());
        }
        let chosen = dest.choose(tag, &rt.lanes);
        match injection {
            Some(Injection::Propagated(value)) => {
                for name in &rt.propagation.tag_headers {
                    baggage::carry(&mut req.headers, name, &value);
                }
            }
            Some(Injection::Header(name, value)) => {
                baggage::carry(&mut req.headers, &name, &value);
            }
            Some(Injection::DecidedBase) => {
                req.headers
                    .insert(DECIDED_HEADER.clone(), HeaderValue::from_static("base"));
            }
            None => {}
        }
        self.forward(&dest, chosen, breakers, traffic, recorder)
    }

    /// The outbound governance of a request to `app`: its breakers' admission and its timeout
    /// and retries, or the rejection to answer with.
    fn admit_outbound(
        &self,
        rt: &Runtime,
        app: &str,
        req: &http::request::Parts,
        span: &mut SpanSlot,
    ) -> Result<(Option<OutboundAdmission>, Traffic), Box<Routed>> {
        if rt.outbound.is_empty() || app.is_empty() {
            return Ok((None, Traffic::default()));
        }
        match rt
            .outbound
            .admit(app, &req.method, req.uri.path(), self.clock.now())
        {
            Ok((admission, mut traffic)) => {
                // Only requests that may be sent twice are retried. gRPC calls are all POSTs:
                // as in gRPC's own retry policy (and Envoy's), their status codes decide.
                if traffic.retry.as_ref().is_some_and(|plan| {
                    !plan.config.retries_method(&req.method) && !grpc::is_grpc(&req.headers)
                }) {
                    traffic.retry = None;
                }
                Ok(((!admission.is_empty()).then_some(admission), traffic))
            }
            Err(blocked) => {
                let recorder = self.recorder(rt, Direction::Outbound, app, &req.headers, span);
                Err(Box::new(self.reject(recorder, blocked)))
            }
        }
    }

    /// Sends a request to one of `chosen`'s endpoints (the balancer's pick), or answers 503 when
    /// there is none.
    fn forward(
        &self,
        dest: &Destination<'_>,
        chosen: Result<Chosen<'_>, NoEndpoint>,
        breakers: Option<OutboundAdmission>,
        traffic: Traffic,
        mut recorder: Recorder,
    ) -> Routed {
        match chosen {
            Ok(chosen) => {
                if chosen.fell_back
                    && let Some(span) = recorder.span()
                {
                    span.fell_back();
                }
                let addressed = dest.keeps_addressed(&chosen);
                let (target, pick) = match addressed {
                    // Statistics only when the addressed pod is a ready endpoint.
                    Some(addr) => (
                        addr,
                        chosen
                            .endpoints
                            .iter()
                            .find(|e| e.addr() == addr)
                            .and_then(|e| {
                                self.balancer
                                    .pick(std::slice::from_ref(e), &mut rand::rng())
                            }),
                    ),
                    None => match self.balancer.pick(chosen.endpoints, &mut rand::rng()) {
                        Some(pick) => (pick.addr(), Some(pick)),
                        // `Chosen::endpoints` is never empty.
                        None => return RouteDecision::Passthrough.into(),
                    },
                };
                let clock = breakers.as_ref().map(|_| Arc::clone(&self.clock));
                let attempts = traffic.retry.as_ref().map(|plan| Attempts {
                    per_try_timeout: plan.config.per_try_timeout,
                });
                let retry = traffic.retry.map(|plan| {
                    self.metrics.record_retry_policy_attempt(&recorder.app());
                    Box::new(Retrying {
                        plan,
                        retried: 0,
                        candidates: Arc::clone(chosen.endpoints),
                        addressed,
                        balancer: Arc::clone(&self.balancer),
                        clock: Arc::clone(&self.clock),
                        metrics: Arc::clone(&self.metrics),
                        app: recorder.app(),
                    })
                });
                Routed::with_state(
                    RouteDecision::Forward(target),
                    OutboundState {
                        pick,
                        breakers,
                        clock,
                        recorder,
                        retry,
                    },
                )
                .with_timeout(traffic.timeout)
                .with_retries(attempts)
            }
            Err(no_endpoint) => {
                tracing::debug!(%no_endpoint, "no endpoint");
                recorder.local(StatusCode::SERVICE_UNAVAILABLE);
                RouteDecision::Respond(local::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_endpoint",
                    &no_endpoint.to_string(),
                ))
                .into()
            }
        }
    }

    /// A request entering the mesh at a gateway listener: the route's backend Service, the lane
    /// decision for its app (after removing what an untrusted client claimed), then the same
    /// governance and lane-aware endpoint choice as a sidecar's outbound.
    fn gateway(&self, rt: &Runtime, req: &mut http::request::Parts, span: &mut SpanSlot) -> Routed {
        let host = gateway::request_host(req);
        let matched = {
            let view = RequestView::new(&req.uri, &req.headers);
            rt.gateway
                .route(host.as_deref(), &req.method, &view, req.uri.path())
        };
        let Some(Matched { route, rule }) = matched else {
            let recorder = Recorder::new(
                &self.metrics,
                Direction::Gateway,
                rt.labels.get(None),
                rt.labels.get(None),
            )
            .traced(span)
            .for_route(Arc::clone(&self.no_route));
            recorder.local(StatusCode::NOT_FOUND);
            return RouteDecision::Respond(local::error(
                StatusCode::NOT_FOUND,
                "no_route",
                "no gateway route matches this request",
            ))
            .into();
        };
        let mut unrouted = |status: StatusCode, reason: &'static str, text: &str| -> Routed {
            Recorder::new(
                &self.metrics,
                Direction::Gateway,
                rt.labels.get(None),
                rt.labels.get(None),
            )
            .traced(span)
            .for_route(Arc::clone(&route.name))
            .local(status);
            RouteDecision::Respond(local::error(status, reason, text)).into()
        };
        let Some(backend) = rule.pick(&mut rand::rng()) else {
            return unrouted(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_backend",
                "every backend of the matching rule has weight 0",
            );
        };
        let Some(dest) = rt.routes.named(&backend.service, |p| match &backend.port {
            BackendPort::Number(n) => p.port() == *n,
            BackendPort::Name(name) => p.name() == name,
        }) else {
            return unrouted(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_endpoint",
                &format!(
                    "backend {} port {} is not a Service port of a governed app",
                    backend.service,
                    match &backend.port {
                        BackendPort::Number(n) => n.to_string(),
                        BackendPort::Name(name) => name.clone(),
                    }
                ),
            );
        };
        let app = dest.service.app();
        if !route.trust_lane_tags {
            edge::strip_lane_claims(&mut req.headers, &rt.lanes);
        }
        edge::ensure_traceparent(&mut req.headers, &mut rand::rng());
        let (breakers, traffic) = match self.admit_outbound(rt, app, req, span) {
            Ok(admitted) => admitted,
            Err(rejected) => return *rejected,
        };
        let mut reason = None;
        let decided = {
            let view = RequestView::new(&req.uri, &req.headers);
            self.lane_draw(|rng| {
                rt.lanes
                    .decide_for_backend(app, &view, rng, route.lane_weights.as_ref())
            })
            .map(|d| {
                self.metrics.record_entry_decision(d.reason);
                reason = Some(d.reason.as_str());
                let set = d
                    .sets_tag_header()
                    .then(|| {
                        Some((
                            d.tag_header.clone(),
                            HeaderValue::from_str(d.tag.as_deref()?).ok()?,
                        ))
                    })
                    .flatten();
                (d.tag.map(|t| t.into_owned()), set)
            })
        };
        let tag = match decided {
            Some((tag, set)) => {
                match (&tag, set) {
                    (_, Some((name, value))) => {
                        baggage::carry(&mut req.headers, &name, &value);
                    }
                    // No lane: the entry app's inbound must not draw again.
                    (None, None) => {
                        req.headers
                            .insert(DECIDED_HEADER.clone(), HeaderValue::from_static("base"));
                    }
                    (Some(_), None) => {}
                }
                tag
            }
            None => None,
        };
        let mut recorder = Recorder::new(
            &self.metrics,
            Direction::Gateway,
            rt.labels.get(Some(app)),
            rt.labels.get(tag.as_deref()),
        )
        .traced(span)
        .for_route(Arc::clone(&route.name));
        if let (Some(span), Some(reason)) = (recorder.span(), reason) {
            span.lane_rule(reason);
        }
        let chosen = dest.choose(tag.as_deref(), &rt.lanes);
        self.forward(&dest, chosen, breakers, traffic, recorder)
    }
}

/// Set by a governed caller that took an entry app's lane decision and found no lane, so the
/// entry's inbound does not decide again; removed there before the app sees the request. A client
/// sending it only keeps itself in base, which it could do by sending nothing.
static DECIDED_HEADER: HeaderName = HeaderName::from_static("x-lanemesh-lane-decided");

/// The lane decision a caller's sidecar took for an entry app.
enum EntryDecision {
    /// The request is in a lane, carried on in the group's tag header.
    Lane {
        header: HeaderName,
        value: HeaderValue,
    },
    /// No lane rule matched: base.
    Base,
}

/// What the outbound path writes into the request.
enum Injection {
    /// The propagated tag, into every tag header of the pod's groups.
    Propagated(HeaderValue),
    /// An entry decision's tag, into its group's tag header.
    Header(HeaderName, HeaderValue),
    /// The entry decision found no lane.
    DecidedBase,
}

impl MeshRouter {
    /// Routes by direction.
    fn route(
        &self,
        rt: &Runtime,
        conn: &ConnContext,
        req: &mut http::request::Parts,
        span: &mut SpanSlot,
    ) -> Routed {
        match conn.direction {
            Direction::Inbound => self.inbound(rt, conn, req, span),
            Direction::Outbound => self.outbound(rt, conn, req, span),
            Direction::Gateway => self.gateway(rt, req, span),
        }
    }

    /// DESIGN §4 takes the lane decision at the first lanemesh hop that sees a request: a request
    /// this pod sends that nothing links to a lane, to an entry app of a lane group, is decided
    /// here with that group's rules (as the entry's inbound would), so it reaches the entry app's
    /// lane endpoints rather than being decided after it already reached one of them.
    fn decide_for_entry(
        &self,
        rt: &Runtime,
        app: &str,
        req: &http::request::Parts,
    ) -> Option<EntryDecision> {
        let view = RequestView::new(&req.uri, &req.headers);
        let decision = self.lane_draw(|rng| rt.lanes.decide_entry(app, &view, rng))?;
        self.metrics.record_entry_decision(decision.reason);
        // A tag the request carries in the group's header or baggage (not one of the caller's
        // own tag headers, or propagation would have found it) is kept, as the entry would.
        let Some(tag) = decision.tag.as_deref() else {
            return Some(EntryDecision::Base);
        };
        let value = HeaderValue::from_str(tag).ok()?;
        Some(EntryDecision::Lane {
            header: decision.tag_header.clone(),
            value,
        })
    }
}

impl Router for MeshRouter {
    fn closing(&self, conn: &ConnContext) -> bool {
        conn.direction == Direction::Inbound
            && self
                .runtime
                .load()
                .as_ref()
                .is_some_and(|rt| rt.terminating)
    }

    fn route_http(&self, conn: &ConnContext, req: &mut http::request::Parts) -> Routed {
        let runtime = self.runtime.load();
        let Some(rt) = runtime.as_deref() else {
            return RouteDecision::Passthrough.into();
        };
        // Before any decision reads `traceparent`: the span's own context replaces the caller's
        // there (the trace id stays, so lane correlation by trace id is unchanged).
        let Some(tracer) = &self.tracer else {
            return self.route(rt, conn, req, &mut None);
        };
        let link = match conn.direction {
            Direction::Inbound if !crate::lane::propagate::is_health_probe(&req.headers) => {
                Link::Inbound
            }
            Direction::Outbound => Link::Outbound,
            Direction::Inbound | Direction::Gateway => Link::None,
        };
        let (span, deferred) = tracer.start(conn.direction, link, req);
        let routed = self.route(rt, conn, req, &mut Some(span));
        if let Some(traceparent) = deferred {
            RequestTracer::write(req, traceparent);
        }
        routed
    }

    /// The Service port the connection is addressed to (a cluster IP or, inbound, this pod's
    /// own IP and port) declares its protocol.
    fn port_protocol(&self, conn: &ConnContext) -> PortProtocol {
        if conn.direction == Direction::Gateway {
            return PortProtocol::Http;
        }
        let runtime = self.runtime.load();
        let Some(dest) = runtime
            .as_deref()
            .and_then(|rt| rt.routes.lookup(conn.original_dst))
        else {
            return PortProtocol::Detect;
        };
        match dest.port.protocol() {
            Protocol::Auto => PortProtocol::Detect,
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => PortProtocol::Http,
            Protocol::Tcp => PortProtocol::Opaque,
        }
    }

    fn open_connection(&self, conn: &ConnContext) -> Option<Box<dyn std::any::Any + Send>> {
        Some(Box::new(
            self.metrics.open_connection(conn.direction.into()),
        ))
    }

    /// Opaque TCP carries no headers: a known destination gets an endpoint of the pod's own lane
    /// (as color-by-node would), else base, chosen uniformly (a connection's lifetime says nothing
    /// about endpoint latency, so the balancer's statistics are left alone).
    fn route_tcp(&self, conn: &ConnContext) -> TcpDecision {
        match conn.direction {
            Direction::Inbound => return TcpDecision::Passthrough,
            // Listeners declared HTTP: never relayed as bytes.
            Direction::Gateway => return TcpDecision::Reject,
            Direction::Outbound => {}
        }
        let runtime = self.runtime.load();
        let Some(rt) = runtime.as_deref() else {
            return TcpDecision::Passthrough;
        };
        let Some(dest) = rt.routes.lookup(conn.original_dst) else {
            return TcpDecision::Passthrough;
        };
        match dest.choose(rt.pod_tag.as_deref(), &rt.lanes) {
            Ok(chosen) => {
                if let Some(addr) = dest.keeps_addressed(&chosen) {
                    return TcpDecision::Forward(addr);
                }
                let i = rand::rng().random_range(0..chosen.endpoints.len());
                chosen
                    .endpoints
                    .get(i)
                    .map_or(TcpDecision::Reject, |e| TcpDecision::Forward(e.addr()))
            }
            Err(no_endpoint) => {
                tracing::debug!(%no_endpoint, "no endpoint for tcp connection");
                TcpDecision::Reject
            }
        }
    }
}

/// Keeps `router`'s runtime in step with `store`, for ever (abort the task to stop it): for every
/// ready snapshot (a first response of every resource type applied) it builds the next
/// [`Runtime`] and swaps it in. Until the first ready snapshot the router passes everything
/// through. Run exactly one per router.
pub async fn run_builder(store: Arc<SnapshotStore>, router: Arc<MeshRouter>) {
    let mut changes = store.subscribe();
    loop {
        let snapshot = store.load_full();
        if snapshot.is_ready() && router.generation() != Some(snapshot.generation()) {
            router.install(&snapshot);
        }
        // Marks the current value seen, so a swap during the build above wakes us again.
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps an inbound request counted as in flight (for lane inference, concurrency limits and
/// overload protection) until its response has been sent.
struct InboundState {
    _guard: InboundGuard,
    admission: Option<InboundAdmission>,
    /// Set with `admission`.
    clock: Option<Arc<dyn Clock>>,
    recorder: Recorder,
}

impl RequestState for InboundState {
    fn on_outcome(&mut self, outcome: &HttpOutcome) {
        self.recorder.outcome(outcome);
    }

    fn on_end(&mut self, end: ResponseEnd<'_>) {
        // Only complete responses feed the overload estimate; a failed one just releases.
        if !matches!(end, ResponseEnd::Error)
            && let (Some(admission), Some(clock)) = (self.admission.as_mut(), &self.clock)
        {
            admission.finish(clock.now());
        }
    }
}

/// What an outbound request reports back: its balancer pick when the response head arrives,
/// and its breaker tickets when the outcome is known (for gRPC, often only at the trailers).
struct OutboundState {
    pick: Option<Pick>,
    breakers: Option<OutboundAdmission>,
    /// Set with `breakers`.
    clock: Option<Arc<dyn Clock>>,
    recorder: Recorder,
    /// Requests a retry policy governs (boxed: most requests have none).
    retry: Option<Box<Retrying>>,
}

/// What a request that may be retried needs to try again.
struct Retrying {
    plan: RetryPlan,
    /// Retries made so far.
    retried: u32,
    /// The endpoints of the request's lane (or base), to pick the next attempt's from.
    candidates: Arc<[Endpoint]>,
    /// The pod the caller addressed: its retries stay with it.
    addressed: Option<std::net::SocketAddr>,
    balancer: Arc<Balancer>,
    clock: Arc<dyn Clock>,
    metrics: Arc<ProxyMetrics>,
    /// Destination app label.
    app: Arc<str>,
}

impl Retrying {
    fn pick(&self) -> Option<Pick> {
        match self.addressed {
            Some(addr) => {
                let endpoint = self.candidates.iter().find(|e| e.addr() == addr)?;
                self.balancer
                    .pick(std::slice::from_ref(endpoint), &mut rand::rng())
            }
            None => self.balancer.pick(&self.candidates, &mut rand::rng()),
        }
    }
}

/// An attempt's outcome as the retry policy reads it.
fn attempt_result(outcome: &HttpOutcome) -> AttemptResult {
    match outcome.result {
        Err(UpstreamFailure::Connect) => AttemptResult::ConnectFailure,
        Err(UpstreamFailure::Reset) => AttemptResult::Reset,
        Err(UpstreamFailure::Timeout) => AttemptResult::Timeout,
        Ok(_) if outcome.grpc && outcome.grpc_status.is_some() => {
            AttemptResult::Grpc(outcome.grpc_status.unwrap_or_default())
        }
        Ok(status) => AttemptResult::Http(status.as_u16()),
    }
}

/// An attempt's outcome as the breakers read it.
fn call_result(outcome: &HttpOutcome) -> CallResult {
    match outcome.result {
        Err(_) => CallResult::Failed,
        Ok(_) if outcome.grpc && outcome.grpc_status.is_some() => {
            CallResult::Grpc(outcome.grpc_status.unwrap_or_default())
        }
        Ok(status) => CallResult::Http(status.as_u16()),
    }
}

/// An outbound request lanemesh does not govern: only counted.
struct PassthroughState {
    recorder: Recorder,
}

impl RequestState for PassthroughState {
    fn on_outcome(&mut self, outcome: &HttpOutcome) {
        self.recorder.outcome(outcome);
    }
}

impl OutboundState {
    fn record(&mut self, result: CallResult) {
        if let (Some(mut admission), Some(clock)) = (self.breakers.take(), &self.clock) {
            admission.record(result, clock.now());
        }
    }
}

impl RequestState for OutboundState {
    fn retry(&mut self, outcome: &HttpOutcome, replayable: bool) -> Option<Retry> {
        let r = self.retry.as_mut()?;
        if !r.plan.config.retries_result(attempt_result(outcome)) {
            return None;
        }
        let refused = if r.retried >= r.plan.config.attempts {
            Some("attempts_exhausted")
        } else if !replayable {
            Some("not_replayable")
        } else if !r.plan.budget.try_withdraw(r.clock.now()) {
            Some("budget_exhausted")
        } else {
            None
        };
        if let Some(result) = refused {
            r.metrics.record_retry(&r.app, result);
            return None;
        }
        // The failed attempt counts for the balancer and, once per attempt, for the breakers.
        if let Some(pick) = self.pick.take() {
            pick.fail();
        }
        if let Some(admission) = self.breakers.as_mut()
            && !admission.retry(call_result(outcome), r.clock.now())
        {
            self.breakers = None;
            r.metrics.record_retry(&r.app, "breaker_open");
            return None;
        }
        let pick = r.pick()?;
        let target = pick.addr();
        self.pick = Some(pick);
        if let Some(span) = self.recorder.span() {
            span.retried(outcome, target);
        }
        r.retried += 1;
        r.metrics.record_retry(&r.app, "retried");
        r.metrics.record_retry_policy_attempt(&r.app);
        Some(Retry {
            target,
            backoff: r.plan.config.backoff(r.retried, &mut rand::rng()),
        })
    }

    fn on_outcome(&mut self, outcome: &HttpOutcome) {
        self.recorder.outcome(outcome);
        if let Some(pick) = self.pick.take() {
            match outcome.result {
                Ok(status) if !status.is_server_error() => drop(pick),
                _ => pick.fail(),
            }
        }
        if self.breakers.is_some() {
            match outcome.result {
                Err(_) => self.record(CallResult::Failed),
                Ok(status) if outcome.grpc => match outcome.grpc_status {
                    Some(code) => self.record(CallResult::Grpc(code)),
                    // The status comes with the trailers.
                    None if status.is_success() => {}
                    None => self.record(CallResult::Http(status.as_u16())),
                },
                Ok(status) => self.record(CallResult::Http(status.as_u16())),
            }
        }
    }

    fn on_end(&mut self, end: ResponseEnd<'_>) {
        if let (ResponseEnd::Trailers(trailers), Some(span)) = (end, self.recorder.span())
            && let Some(code) = grpc::status(trailers)
        {
            span.grpc_status(code);
        }
        if self.breakers.is_some() {
            self.record(match end {
                ResponseEnd::Trailers(trailers) => {
                    CallResult::Grpc(grpc::status(trailers).unwrap_or(grpc::code::UNKNOWN))
                }
                ResponseEnd::Complete => CallResult::Grpc(grpc::code::INTERNAL),
                ResponseEnd::Error => CallResult::Failed,
            });
        }
    }
}
