//! The inbound chain of the pod's own app (DESIGN §4): overload, then on the first matching rule
//! concurrency, QPS and hot parameters.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::lane::RequestView;
use crate::policy::{
    ConcurrencyLimiter, ConcurrencyPermit, Decision, Enforcement, Gated, HotParamLimiter,
    OverloadMode, OverloadPermit, OverloadProtector, QpsLimiter, RejectReason,
};

use super::rules::{InboundRules, OverloadRule, ParamSource, RateRule};
use super::{Blocked, GovernContext};

/// The limiters of one rate-limit rule.
#[derive(Debug)]
struct RuleLimits {
    qps: Option<QpsLimiter>,
    concurrency: Option<ConcurrencyLimiter>,
    hot_params: Vec<(ParamSource, HotParamLimiter)>,
}

#[derive(Debug, Clone)]
struct RuleSlot {
    spec: Arc<RateRule>,
    limits: Arc<RuleLimits>,
}

#[derive(Debug, Clone)]
struct OverloadSlot {
    spec: Arc<OverloadRule>,
    protector: Arc<OverloadProtector>,
}

/// The inbound rules of one runtime with their limiters. Built per snapshot; a rule whose
/// specification did not change keeps its limiters (and so its counts, tokens and in-flight
/// slots) from the previous runtime.
#[derive(Debug, Default)]
pub struct InboundGovernor {
    rules: Vec<RuleSlot>,
    overload: Option<OverloadSlot>,
    /// Proxies in front of the pod whose `X-Forwarded-For` entries are trusted.
    trusted_hops: usize,
}

/// What an admitted inbound request holds until its response is complete.
#[derive(Debug, Default)]
#[must_use = "the permits end the request's accounting when dropped"]
pub struct InboundAdmission {
    overload: Option<OverloadPermit>,
    _concurrency: Option<ConcurrencyPermit>,
    /// A `Queue` rule spaced this request: forward it after this delay.
    pub delay: Option<Duration>,
}

impl InboundAdmission {
    /// The response went out in full at `now`: feeds the overload estimate (latency and
    /// completions). Dropping the admission instead only releases its slots.
    pub fn finish(&mut self, now: Duration) {
        if let Some(permit) = self.overload.take() {
            permit.finish(now);
        }
    }
}

impl InboundGovernor {
    /// Builds the limiters for `rules`, reusing `previous`'s for rules that did not change.
    /// A rule whose limiter refuses its parameters is skipped with an error log (the snapshot
    /// validation refuses such resources, so this is a last line of defence).
    pub fn build(
        rules: Option<&InboundRules>,
        previous: Option<&Self>,
        ctx: &GovernContext,
    ) -> Self {
        let Some(rules) = rules else {
            return Self::default();
        };
        let trusted_hops = ctx.trusted_proxy_hops;
        let slots = rules
            .rules
            .iter()
            .filter_map(|spec| {
                let reused = previous
                    .and_then(|p| p.rules.iter().find(|s| *s.spec == **spec))
                    .cloned();
                reused.or_else(|| match limits(spec, ctx) {
                    Ok(limits) => Some(RuleSlot {
                        spec: Arc::clone(spec),
                        limits: Arc::new(limits),
                    }),
                    Err(error) => {
                        tracing::error!(rule = %spec.name, %error, "rate limit rule skipped");
                        None
                    }
                })
            })
            .collect();
        let overload = rules.overload.as_ref().and_then(|spec| {
            if let Some(slot) = previous
                .and_then(|p| p.overload.as_ref())
                .filter(|s| *s.spec == **spec)
            {
                return Some(slot.clone());
            }
            match OverloadProtector::new(spec.config, Arc::clone(&ctx.cpu)) {
                Ok(p) => {
                    let dry_run = spec.config.mode == OverloadMode::DryRun;
                    ctx.declare(&spec.name, &[RejectReason::System], dry_run);
                    Some(OverloadSlot {
                        spec: Arc::clone(spec),
                        protector: Arc::new(p.observe_dry_run(ctx.observer(&spec.name))),
                    })
                }
                Err(error) => {
                    tracing::error!(rule = %spec.name, %error, "overload protection skipped");
                    None
                }
            }
        });
        Self {
            rules: slots,
            overload,
            trusted_hops,
        }
    }

    /// No rule and no overload protection: nothing to check.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.overload.is_none()
    }

    /// Runs the chain for one request at `now`. `peer` is the connection's remote address
    /// (the `ClientIP` hot-parameter source, unless proxies in front are trusted).
    pub fn check(
        &self,
        req: &Parts,
        peer: IpAddr,
        now: Duration,
    ) -> Result<InboundAdmission, Blocked> {
        let mut admission = InboundAdmission::default();
        if let Some(slot) = &self.overload {
            match slot.protector.try_acquire(now) {
                Ok(permit) => admission.overload = Some(permit),
                Err(rejected) => {
                    return Err(Blocked::new(
                        &slot.spec.name,
                        &slot.spec.fallback,
                        rejected.reason(),
                    ));
                }
            }
        }
        let path = super::path::normalize(req.uri.path());
        let path = path.as_ref();
        let Some(slot) = self
            .rules
            .iter()
            .find(|s| s.spec.matcher.matches(&req.method, path))
        else {
            return Ok(admission);
        };
        let spec = &slot.spec;
        let limits = &slot.limits;
        let blocked = |reason| Blocked::new(&spec.name, &spec.fallback, reason);
        if let Some(c) = &limits.concurrency {
            admission._concurrency = Some(c.try_acquire().map_err(|r| blocked(r.reason()))?);
        }
        let qps_pass = match &limits.qps {
            Some(qps) => {
                let (decision, pass) = qps.try_acquire_refundable(now);
                match decision {
                    Decision::Admit => {}
                    Decision::Delay(d) => admission.delay = Some(d),
                    Decision::Reject(reason) => return Err(blocked(reason)),
                }
                Some((qps, pass))
            }
            None => None,
        };
        if !limits.hot_params.is_empty() {
            let view = RequestView::new(&req.uri, &req.headers);
            for (source, limiter) in &limits.hot_params {
                let Some(value) = param_value(source, &view, req, peer, self.trusted_hops) else {
                    continue;
                };
                if let Decision::Reject(reason) = limiter.try_acquire(&value, now) {
                    if let Some((qps, pass)) = qps_pass {
                        qps.refund(pass);
                    }
                    return Err(blocked(reason));
                }
            }
        }
        Ok(admission)
    }
}

fn limits(spec: &RateRule, ctx: &GovernContext) -> Result<RuleLimits, crate::policy::PolicyError> {
    let enforcement = if spec.dry_run {
        Enforcement::DryRun
    } else {
        Enforcement::Enforce
    };
    let observer = ctx.observer(&spec.name);
    let qps = spec
        .qps
        .map(|q| {
            QpsLimiter::new(q.threshold, q.behavior).map(|l| {
                l.with_enforcement(enforcement)
                    .observe_dry_run(Arc::clone(&observer))
            })
        })
        .transpose()?;
    let concurrency = spec.concurrency.map(|max| {
        ConcurrencyLimiter::new(max)
            .with_enforcement(enforcement)
            .observe_dry_run(Arc::clone(&observer))
    });
    let hot_params = spec
        .hot_params
        .iter()
        .map(|h| {
            HotParamLimiter::new(h.config.clone()).map(|l| {
                (
                    h.source.clone(),
                    l.with_enforcement(enforcement)
                        .observe_dry_run(Arc::clone(&observer)),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let reasons: Vec<RejectReason> = [
        (qps.is_some(), RejectReason::Flow),
        (concurrency.is_some(), RejectReason::Concurrency),
        (!spec.hot_params.is_empty(), RejectReason::HotParam),
    ]
    .into_iter()
    .filter_map(|(used, reason)| used.then_some(reason))
    .collect();
    ctx.declare(&spec.name, &reasons, spec.dry_run);
    Ok(RuleLimits {
        qps,
        concurrency,
        hot_params,
    })
}

/// The request's value for a hot-parameter source; `None` = the rule does not apply.
fn param_value<'a>(
    source: &ParamSource,
    view: &RequestView<'a>,
    req: &'a Parts,
    peer: IpAddr,
    trusted_hops: usize,
) -> Option<Cow<'a, str>> {
    match source {
        ParamSource::Header(name) => view.header(name).map(Cow::Borrowed),
        ParamSource::Query(name) => view.query(name),
        ParamSource::Cookie(name) => view.cookie(name).map(Cow::Borrowed),
        ParamSource::ClientIp => Some(
            forwarded_client(req, trusted_hops)
                .map_or_else(|| Cow::Owned(peer.to_string()), Cow::Borrowed),
        ),
        ParamSource::Host => req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .map(Cow::Borrowed),
    }
}

/// The client address `trusted_hops` proxies in front of the pod reported, as Envoy's
/// `xff_num_trusted_hops` reads it: each trusted proxy appended the address it saw, so the
/// client is the entry `trusted_hops` from the right. `None` (use the peer) when no proxy is
/// trusted or the header has too few entries: anything a caller writes further left is its own
/// claim, and a limit keyed on it could be dodged by rotating it.
fn forwarded_client(req: &Parts, trusted_hops: usize) -> Option<&str> {
    let hops = trusted_hops.checked_sub(1)?;
    let mut entries: Vec<&str> = Vec::new();
    for value in req.headers.get_all("x-forwarded-for") {
        entries.extend(value.to_str().ok()?.split(',').map(str::trim));
    }
    let index = entries.len().checked_sub(1 + hops)?;
    entries.get(index).copied().filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests;
