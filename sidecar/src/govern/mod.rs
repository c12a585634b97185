//! Governance on the request path (DESIGN §4): the policy engine's limiters and breakers built
//! from the snapshot's `InboundPolicy` and `OutboundPolicy`, asked once per request by the mesh
//! router.
//!
//! Specifications ([`rules`]) are compiled with the snapshot; the governors pair each with its
//! live state and are rebuilt with every routing runtime. A rule that did not change hands its
//! state (QPS window, tokens, in-flight slots, breaker statistics) to the next runtime; a rule
//! that changed starts afresh; requests in flight keep the permits of the runtime that admitted
//! them, so nothing in flight is dropped or double-counted by a swap.
//!
//! # Layout
//! - [`rules`]: compiled rule specifications (route match, limits, fallbacks, error classes).
//! - [`inbound`]: [`InboundGovernor`], the chain overload → concurrency → QPS → hot params.
//! - [`outbound`]: [`OutboundGovernor`], circuit breakers per destination app and rule.
//! - [`path`]: the normalised path rules are matched against.
//! - [`cpu`]: the container CPU sampler feeding overload protection.

pub mod cpu;
pub mod inbound;
pub mod outbound;
pub mod path;
pub mod rules;

use std::sync::Arc;

use crate::metrics::{ProxyMetrics, RejectionLabels};
use crate::policy::{CpuSource, DryRunObserver, RejectReason};
use crate::proxy::LocalResponse;

pub use inbound::{InboundAdmission, InboundGovernor};
pub use outbound::{CallResult, OutboundAdmission, OutboundGovernor, RetryPlan, Traffic};
pub use rules::{BLOCKED_HEADER, InboundRules, OutboundRules, TrafficRule};

/// What building limiters needs from the proxy.
#[derive(Debug, Clone)]
pub struct GovernContext {
    /// Where rejections, dry-run counts and breaker transitions are recorded.
    pub metrics: Arc<ProxyMetrics>,
    /// Container CPU usage for overload protection.
    pub cpu: Arc<dyn CpuSource>,
    /// Proxies in front of the pod whose `X-Forwarded-For` entries the `ClientIP` source
    /// trusts (`--trusted-proxy-hops`); 0 = the connection's peer address.
    pub trusted_proxy_hops: usize,
}

impl GovernContext {
    /// Exports `rule`'s rejection series for `reasons` at 0 (see
    /// [`ProxyMetrics::declare_rejections`]).
    fn declare(&self, rule: &Arc<str>, reasons: &[RejectReason], dry_run: bool) {
        for reason in reasons {
            self.metrics
                .declare_rejections(&RejectionLabels::new(*reason, Arc::clone(rule)), dry_run);
        }
    }

    fn observer(&self, rule: &Arc<str>) -> Arc<dyn DryRunObserver> {
        Arc::new(MetricsObserver {
            metrics: Arc::clone(&self.metrics),
            rule: Arc::clone(rule),
        })
    }
}

/// Counts a dry-run rule's would-be rejections in `lanemesh_dry_run_rejections_total`.
#[derive(Debug)]
struct MetricsObserver {
    metrics: Arc<ProxyMetrics>,
    rule: Arc<str>,
}

impl DryRunObserver for MetricsObserver {
    fn would_reject(&self, reason: RejectReason) {
        self.metrics
            .record_dry_run_rejection(&RejectionLabels::new(reason, Arc::clone(&self.rule)));
    }
}

/// A refused request: why, by which rule, and the response the caller gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub reason: RejectReason,
    pub rule: Arc<str>,
    /// Boxed: rejections are the rare path, and keeping `Result<_, Blocked>` small keeps the
    /// admitted path cheap.
    pub response: Box<LocalResponse>,
}

impl Blocked {
    fn new(rule: &Arc<str>, fallback: &rules::Fallback, reason: RejectReason) -> Self {
        Self {
            reason,
            rule: Arc::clone(rule),
            response: Box::new(fallback.response(reason)),
        }
    }

    /// The metric labels of this rejection.
    pub fn labels(&self) -> RejectionLabels {
        RejectionLabels::new(self.reason, Arc::clone(&self.rule))
    }
}
