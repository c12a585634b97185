//! The outbound circuit breakers of this pod (DESIGN §4): one per destination app and rule, so
//! per caller pod, since every pod has its own sidecar.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

use crate::metrics::{BreakerLabels, ProxyMetrics};
use crate::policy::{
    BreakerState, BreakerTicket, CircuitBreaker, Enforcement, Gated, Outcome, RejectReason,
    RetryBudget, RetryConfig,
};
use crate::route::WarmupConfig;

use super::rules::{BreakerRule, OutboundRules};
use super::{Blocked, GovernContext};

/// One breaker with its rule and the transitions already exported as metrics.
#[derive(Debug)]
pub struct BreakerSlot {
    spec: Arc<BreakerRule>,
    breaker: CircuitBreaker,
    labels: BreakerLabels,
    metrics: Arc<ProxyMetrics>,
    /// Transition counts (opened, half-opened, closed) already added to the metric.
    reported: [AtomicU64; 3],
}

impl BreakerSlot {
    fn new(app: &Arc<str>, spec: &Arc<BreakerRule>, ctx: &GovernContext) -> Option<Self> {
        let labels = BreakerLabels::new(Arc::clone(app), Arc::clone(&spec.name));
        match CircuitBreaker::new(spec.config) {
            Ok(breaker) => {
                ctx.metrics.set_breaker_state(&labels, BreakerState::Closed);
                ctx.declare(&spec.name, &[RejectReason::CircuitBreaking], spec.dry_run);
                let enforcement = if spec.dry_run {
                    Enforcement::DryRun
                } else {
                    Enforcement::Enforce
                };
                Some(Self {
                    spec: Arc::clone(spec),
                    breaker: breaker
                        .with_enforcement(enforcement)
                        .observe_dry_run(ctx.observer(&spec.name)),
                    labels,
                    metrics: Arc::clone(&ctx.metrics),
                    reported: Default::default(),
                })
            }
            Err(error) => {
                tracing::error!(rule = %spec.name, %error, "circuit breaker rule skipped");
                None
            }
        }
    }

    /// The breaker's state right now (for tests and the admin dump).
    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Exports transitions made since the last call: the breaker moves to HalfOpen (and back to
    /// Open for missing probes) inside `try_acquire`, which reports no transition, so the
    /// counters are the one complete record. Three atomic loads when nothing changed.
    fn sync_metrics(&self) {
        let counts = self.breaker.transitions();
        let mut changed = false;
        for (i, (total, to)) in [
            (counts.opened, BreakerState::Open),
            (counts.half_opened, BreakerState::HalfOpen),
            (counts.closed, BreakerState::Closed),
        ]
        .into_iter()
        .enumerate()
        {
            // A plain load first: the common case (no change) writes nothing.
            if self.reported[i].load(Ordering::Acquire) == total {
                continue;
            }
            let before = self.reported[i].swap(total, Ordering::AcqRel);
            if total > before {
                self.metrics
                    .record_breaker_transitions(&self.labels, to, total - before);
                changed = true;
            }
        }
        if changed {
            self.metrics
                .set_breaker_state(&self.labels, self.breaker.state());
        }
    }
}

#[derive(Debug, Clone)]
struct AppBreakers {
    spec: Arc<OutboundRules>,
    breakers: Vec<Arc<BreakerSlot>>,
    /// Kept across snapshots while its configuration does not change.
    budget: Option<Arc<RetryBudget>>,
}

/// The outbound rules of one runtime with their breakers. Built per snapshot; a breaker whose
/// rule did not change keeps its state (and statistics) from the previous runtime.
#[derive(Debug, Default)]
pub struct OutboundGovernor {
    by_app: HashMap<Arc<str>, AppBreakers>,
}

/// How a forwarded request ended, as the breakers classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// An HTTP response status (for gRPC: a response that carried no gRPC status).
    Http(u16),
    /// A gRPC status code.
    Grpc(u32),
    /// Connect failure, reset or timeout: always an error.
    Failed,
}

/// The breaker tickets of one admitted outbound request. Dropping it without
/// [`record`](Self::record) releases them (the request never got an outcome).
#[derive(Debug, Default)]
#[must_use = "record the outcome, or the breakers never learn how the request went"]
pub struct OutboundAdmission {
    /// Usually one rule matches: its ticket is kept inline, so the request path allocates
    /// nothing; further ones go to `more`.
    first: Option<(Arc<BreakerSlot>, BreakerTicket)>,
    more: Vec<(Arc<BreakerSlot>, BreakerTicket)>,
    admitted_at: Duration,
}

impl OutboundAdmission {
    /// No breaker governs the request.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push(&mut self, entry: (Arc<BreakerSlot>, BreakerTicket)) {
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.more.push(entry);
        }
    }

    fn take_all(&mut self) -> impl Iterator<Item = (Arc<BreakerSlot>, BreakerTicket)> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }

    /// Feeds the outcome, observed at `now`, to every breaker that admitted the request.
    pub fn record(&mut self, result: CallResult, now: Duration) {
        let duration = now.saturating_sub(self.admitted_at);
        for (slot, ticket) in self.take_all() {
            record(&slot, ticket, result, duration, now);
        }
    }

    /// Feeds a failed attempt's outcome to the breakers, like Envoy counting every attempt,
    /// and asks them again for the next attempt. `false` when one refuses (it opened): then
    /// nothing is held and the request is not retried.
    pub fn retry(&mut self, result: CallResult, now: Duration) -> bool {
        let duration = now.saturating_sub(self.admitted_at);
        self.admitted_at = now;
        // Only on the retry path, and usually one entry.
        let entries: Vec<_> = self.take_all().collect();
        let mut admitted = true;
        for (slot, ticket) in entries {
            record(&slot, ticket, result, duration, now);
            if admitted {
                let acquired = slot.breaker.try_acquire(now);
                slot.sync_metrics();
                match acquired {
                    Ok(ticket) => self.push((slot, ticket)),
                    Err(_) => admitted = false,
                }
            }
        }
        if !admitted {
            for (slot, ticket) in self.take_all() {
                slot.breaker.release(ticket);
            }
        }
        admitted
    }
}

fn record(
    slot: &BreakerSlot,
    ticket: BreakerTicket,
    result: CallResult,
    duration: Duration,
    now: Duration,
) {
    let errors = &slot.spec.errors;
    let is_error = match result {
        CallResult::Http(status) => errors.is_http_error(status),
        CallResult::Grpc(code) => errors.is_grpc_error(code),
        CallResult::Failed => true,
    };
    let _ = slot
        .breaker
        .record(ticket, Outcome { duration, is_error }, now);
    slot.sync_metrics();
}

/// The timeout and retries of one request, from its app's TrafficPolicy (and the deprecated
/// breaker timeout).
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Whole request, retries included, to the response head.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPlan>,
}

/// How a request may be retried.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    /// The traffic rule's name, for metrics.
    pub rule: Arc<str>,
    pub config: Arc<RetryConfig>,
    /// The app's budget, shared by all its requests.
    pub budget: Arc<RetryBudget>,
}

impl Drop for OutboundAdmission {
    fn drop(&mut self) {
        for (slot, ticket) in self.take_all() {
            slot.breaker.release(ticket);
        }
    }
}

impl OutboundGovernor {
    /// Builds the breakers for `policies`, reusing `previous`'s where the app's rule did not
    /// change; the state gauge of a breaker that is gone is removed.
    pub fn build<'a>(
        policies: impl IntoIterator<Item = &'a Arc<OutboundRules>>,
        previous: Option<&Self>,
        ctx: &GovernContext,
    ) -> Self {
        let mut by_app = HashMap::new();
        for spec in policies {
            let old = previous.and_then(|p| p.by_app.get(&spec.app));
            if let Some(old) = old.filter(|old| old.spec == *spec) {
                by_app.insert(Arc::clone(&spec.app), old.clone());
                continue;
            }
            let breakers = spec
                .breakers
                .iter()
                .filter_map(|rule| {
                    let kept = old
                        .and_then(|o| o.breakers.iter().find(|b| b.spec == *rule))
                        .cloned();
                    kept.or_else(|| BreakerSlot::new(&spec.app, rule, ctx).map(Arc::new))
                })
                .collect();
            let budget = spec.budget.and_then(|config| {
                let kept = old
                    .and_then(|o| o.budget.as_ref())
                    .filter(|b| *b.config() == config)
                    .cloned();
                kept.or_else(|| match RetryBudget::new(config) {
                    Ok(budget) => Some(Arc::new(budget)),
                    Err(error) => {
                        tracing::error!(app = %spec.app, %error, "retry budget skipped: no retries");
                        None
                    }
                })
            });
            by_app.insert(
                Arc::clone(&spec.app),
                AppBreakers {
                    spec: Arc::clone(spec),
                    breakers,
                    budget,
                },
            );
        }
        let next = Self { by_app };
        if let Some(previous) = previous {
            for slot in previous.by_app.values().flat_map(|a| &a.breakers) {
                if !next.contains_labels(&slot.labels) {
                    ctx.metrics.remove_breaker(&slot.labels);
                }
            }
        }
        next
    }

    fn contains_labels(&self, labels: &BreakerLabels) -> bool {
        self.by_app
            .get(&labels.app)
            .is_some_and(|a| a.breakers.iter().any(|b| b.labels == *labels))
    }

    /// Nothing to enforce anywhere.
    pub fn is_empty(&self) -> bool {
        self.by_app.is_empty()
    }

    /// The per-request timeout towards `app` when no traffic rule sets one.
    pub fn timeout(&self, app: &str) -> Option<Duration> {
        self.by_app.get(app).and_then(|a| a.spec.timeout)
    }

    /// The warm-up of `app`'s new endpoints.
    pub fn warmup(&self, app: &str) -> Option<WarmupConfig> {
        self.by_app.get(app).and_then(|a| a.spec.warmup)
    }

    /// The breakers' admission and the traffic rule (timeout, retries) of a request to `app`;
    /// a request with a retry budget counts towards it.
    pub fn admit(
        &self,
        app: &str,
        method: &Method,
        path: &str,
        now: Duration,
    ) -> Result<(OutboundAdmission, Traffic), Blocked> {
        let path = super::path::normalize(path);
        let admission = self.check_normalized(app, method, &path, now)?;
        let Some(rules) = self.by_app.get(app) else {
            return Ok((admission, Traffic::default()));
        };
        let rule = rules.spec.traffic(method, &path);
        if let Some(budget) = &rules.budget {
            budget.deposit(now);
        }
        let retry = rule.and_then(|r| {
            let config = r.retry.as_ref()?;
            Some(RetryPlan {
                rule: Arc::clone(&r.name),
                config: Arc::clone(config),
                budget: Arc::clone(rules.budget.as_ref()?),
            })
        });
        let traffic = Traffic {
            timeout: rule.and_then(|r| r.timeout).or(rules.spec.timeout),
            retry,
        };
        Ok((admission, traffic))
    }

    /// The breakers of `app` (for tests and the admin dump).
    pub fn breakers(&self, app: &str) -> &[Arc<BreakerSlot>] {
        self.by_app.get(app).map_or(&[], |a| &a.breakers)
    }

    /// Asks every breaker of `app` whose rule matches the request. The first refusal wins and
    /// the tickets already taken are released.
    pub fn check(
        &self,
        app: &str,
        method: &Method,
        path: &str,
        now: Duration,
    ) -> Result<OutboundAdmission, Blocked> {
        let path = super::path::normalize(path);
        self.check_normalized(app, method, &path, now)
    }

    fn check_normalized(
        &self,
        app: &str,
        method: &Method,
        path: &str,
        now: Duration,
    ) -> Result<OutboundAdmission, Blocked> {
        let mut admission = OutboundAdmission {
            first: None,
            more: Vec::new(),
            admitted_at: now,
        };
        let Some(app) = self.by_app.get(app) else {
            return Ok(admission);
        };
        for slot in &app.breakers {
            if !slot.spec.matcher.matches(method, path) {
                continue;
            }
            let acquired = slot.breaker.try_acquire(now);
            slot.sync_metrics();
            match acquired {
                Ok(ticket) => admission.push((Arc::clone(slot), ticket)),
                Err(rejected) => {
                    return Err(Blocked::new(
                        &slot.spec.name,
                        &slot.spec.fallback,
                        rejected.reason(),
                    ));
                }
            }
        }
        Ok(admission)
    }
}

#[cfg(test)]
mod tests;
