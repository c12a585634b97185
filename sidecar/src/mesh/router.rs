//! [`MeshRouter`]: the lane decision on inbound requests and the lane-aware endpoint choice on
//! outbound ones.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use rand::Rng;

use crate::lane::{InboundGuard, PropagationRule, Propagator, RequestView};
use crate::metrics::ProxyMetrics;
use crate::policy::clock::{Clock, MonotonicClock};
use crate::proxy::http::ERROR_HEADER;
use crate::proxy::{
    ConnContext, Direction, HttpOutcome, LocalResponse, RequestState, RouteDecision, Routed,
    Router, TcpDecision,
};
use crate::route::{Balancer, BalancerConfig, Pick};
use crate::snapshot::Snapshot;

use super::runtime::Runtime;

/// Who this sidecar serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPod {
    /// The pod's app (label `msePilotCreateAppName`); lane groups and services refer to it.
    pub app: String,
    /// The pod's lane tag; `None` = base pod.
    pub lane_tag: Option<String>,
}

/// Routes by lane: see the [module](super) documentation.
#[derive(Debug)]
pub struct MeshRouter {
    local: LocalPod,
    pod_tag: Option<Arc<str>>,
    runtime: ArcSwapOption<Runtime>,
    propagator: Propagator,
    balancer: Balancer,
    /// Outbound requests by deciding rule (`lanemesh_lane_propagations_total`).
    metrics: Arc<ProxyMetrics>,
}

impl MeshRouter {
    /// A router for `local` on the monotonic clock; it passes everything through until the first
    /// [`MeshRouter::install`].
    pub fn new(local: LocalPod) -> Self {
        Self::with_clock(local, Arc::new(MonotonicClock::new()))
    }

    /// A router reading time (trace TTLs, latencies) from `clock`.
    pub fn with_clock(local: LocalPod, clock: Arc<dyn Clock>) -> Self {
        let lane_tag = local.lane_tag.as_deref().filter(|t| !t.is_empty());
        let propagator = Propagator::new(lane_tag, &Default::default(), Arc::clone(&clock));
        Self {
            pod_tag: lane_tag.map(Arc::from),
            local,
            runtime: ArcSwapOption::empty(),
            propagator,
            balancer: Balancer::new(clock, BalancerConfig::default()),
            metrics: Arc::new(ProxyMetrics::new()),
        }
    }

    /// Records into the proxy's shared registry instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Compiles `snapshot` into the next [`Runtime`], swaps it in and forgets the endpoint
    /// statistics no runtime uses any more. Off the hot path; called by
    /// [`run_builder`](super::run_builder).
    pub fn install(&self, snapshot: &Snapshot) {
        let next = Runtime::build(snapshot, &self.local.app, &self.balancer);
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

    /// The endpoint balancer.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Outbound requests to governed destinations so far, by the rule that decided their lane.
    pub fn rule_counts(&self) -> [(PropagationRule, u64); PropagationRule::ALL.len()] {
        PropagationRule::ALL.map(|rule| (rule, self.metrics.propagation_count(rule)))
    }

    fn inbound(&self, rt: &Runtime, req: &mut http::request::Parts) -> Routed {
        if rt.is_entry {
            let view = RequestView::new(&req.uri, &req.headers);
            let decided = rt
                .lanes
                .decide_entry(&self.local.app, &view, &mut rand::rng())
                .filter(|d| d.sets_tag_header())
                .and_then(|d| {
                    let value = HeaderValue::from_str(d.tag.as_deref()?).ok()?;
                    Some((d.tag_header.clone(), value))
                });
            if let Some((name, value)) = decided {
                req.headers.insert(name, value);
            }
        }
        // The entry decision (if any) is in the tag header now; elsewhere the request carries
        // its lane from upstream, or is base.
        let lane = rt.propagation.carried_tag(&req.headers);
        let guard = self.propagator.register_inbound(
            &rt.propagation,
            lane.as_ref().map(|(tag, _)| &**tag),
            &req.headers,
        );
        Routed::with_state(RouteDecision::Passthrough, InboundState { _guard: guard })
    }

    fn outbound(&self, rt: &Runtime, conn: &ConnContext, req: &mut http::request::Parts) -> Routed {
        let Some(dest) = rt.routes.lookup(conn.original_dst) else {
            return RouteDecision::Passthrough.into();
        };
        let (chosen, injection) = {
            let lane = self.propagator.outbound_lane(&rt.propagation, &req.headers);
            self.metrics.record_propagation(lane.rule);
            let injection = lane.injection().and_then(|t| HeaderValue::from_str(t).ok());
            (dest.choose(lane.tag(), &rt.lanes), injection)
        };
        if let Some(value) = injection {
            for name in &rt.propagation.tag_headers {
                req.headers.insert(name.clone(), value.clone());
            }
        }
        match chosen {
            Ok(chosen) => match self.balancer.pick(chosen.endpoints, &mut rand::rng()) {
                Some(pick) => Routed::with_state(
                    RouteDecision::Forward(pick.addr()),
                    OutboundState { pick: Some(pick) },
                ),
                // `Chosen::endpoints` is never empty.
                None => RouteDecision::Passthrough.into(),
            },
            Err(no_endpoint) => {
                tracing::debug!(%no_endpoint, "no endpoint");
                let mut headers = HeaderMap::new();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                headers.insert(ERROR_HEADER, HeaderValue::from_static("no_endpoint"));
                RouteDecision::Respond(LocalResponse {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    headers,
                    body: Bytes::from(format!("lanemesh: {no_endpoint}\n")),
                })
                .into()
            }
        }
    }
}

impl Router for MeshRouter {
    fn route_http(&self, conn: &ConnContext, req: &mut http::request::Parts) -> Routed {
        let runtime = self.runtime.load();
        let Some(rt) = runtime.as_deref() else {
            return RouteDecision::Passthrough.into();
        };
        match conn.direction {
            Direction::Inbound => self.inbound(rt, req),
            Direction::Outbound => self.outbound(rt, conn, req),
        }
    }

    /// Opaque TCP carries no headers: a known destination gets an endpoint of the pod's own lane
    /// (as color-by-node would), else base, chosen uniformly (a connection's lifetime says nothing
    /// about endpoint latency, so the balancer's statistics are left alone).
    fn route_tcp(&self, conn: &ConnContext) -> TcpDecision {
        if conn.direction == Direction::Inbound {
            return TcpDecision::Passthrough;
        }
        let runtime = self.runtime.load();
        let Some(rt) = runtime.as_deref() else {
            return TcpDecision::Passthrough;
        };
        let Some(dest) = rt.routes.lookup(conn.original_dst) else {
            return TcpDecision::Passthrough;
        };
        match dest.choose(self.pod_tag.as_deref(), &rt.lanes) {
            Ok(chosen) => {
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

/// Keeps an inbound request counted as in flight until its response has been sent.
struct InboundState {
    _guard: InboundGuard,
}

impl RequestState for InboundState {}

/// The balancer pick of an outbound request, recorded when the response head arrives.
struct OutboundState {
    pick: Option<Pick>,
}

impl RequestState for OutboundState {
    fn on_outcome(&mut self, outcome: &HttpOutcome) {
        if let Some(pick) = self.pick.take() {
            match outcome.result {
                Ok(status) if !status.is_server_error() => drop(pick),
                _ => pick.fail(),
            }
        }
    }
}
