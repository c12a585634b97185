//! TrafficPolicies -> the traffic part of `proto::OutboundPolicy` (routes with timeouts and
//! retries, the retry budget, warm-up).

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{Errors, Field};
use super::{Violation, Zero};
use crate::crd::TrafficPolicy;
use crate::crd::traffic::{Backoff, Retries, RetryBudget, RetryOn, Warmup};
use crate::{defaults, proto};

/// Outbound policies by (namespace, destination app), being built.
pub(super) type ByApp = BTreeMap<(String, String), proto::OutboundPolicy>;

/// Adds each valid TrafficPolicy to its app's OutboundPolicy in `by_app`. One TrafficPolicy per
/// app: the first by name wins, the others are refused naming it.
pub(super) fn apply(
    policies: &[TrafficPolicy],
    by_app: &mut ByApp,
    rejected: &mut Vec<super::Invalid>,
) {
    for policy in super::sorted_by_ref(policies, |p| &p.metadata) {
        let mut errors = Errors::default();
        let object = super::object_ref("TrafficPolicy", &policy.metadata, &mut errors);
        let spec = Field::root("spec");
        let s = &policy.spec;
        super::non_empty(&spec.key("app"), &s.app, &mut errors);
        super::unique(
            &spec.key("rules"),
            "rule name",
            s.rules.iter().map(|r| r.name.as_str()),
            &mut errors,
        );
        let key = (object.namespace.clone(), s.app.clone());
        if let Some(owner) = by_app
            .get(&key)
            .map(|p| p.traffic_policy.as_str())
            .filter(|owner| !owner.is_empty())
        {
            let msg = format!("app {:?} already has TrafficPolicy {owner:?}", s.app);
            errors.push(&spec.key("app"), Violation::Conflict(msg));
        }
        let timeout = super::optional_duration(
            &spec.key("timeout"),
            s.timeout.as_deref(),
            Zero::Refused,
            &mut errors,
        );
        let default_retries = s
            .retries
            .as_ref()
            .and_then(|r| retries(&spec.key("retries"), r, &mut errors));
        let mut routes: Vec<proto::TrafficRoute> = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = spec.key("rules").at(i);
                super::rate_limit::rule_name(&field.key("name"), &r.name, &mut errors);
                let rule_timeout = super::optional_duration(
                    &field.key("timeout"),
                    r.timeout.as_deref(),
                    Zero::Refused,
                    &mut errors,
                );
                let rule_retries = match &r.retries {
                    Some(r) => retries(&field.key("retries"), r, &mut errors),
                    None => default_retries.clone(),
                };
                proto::TrafficRoute {
                    name: format!("{}/{}", object.name, r.name),
                    r#match: Some(super::route_match(
                        &field.key("match"),
                        &r.route_match,
                        &mut errors,
                    )),
                    timeout: rule_timeout.or(timeout),
                    retries: rule_retries,
                }
            })
            .collect();
        if timeout.is_some() || default_retries.is_some() {
            routes.push(proto::TrafficRoute {
                name: object.name.clone(),
                r#match: Some(proto::RouteMatch::default()),
                timeout,
                retries: default_retries,
            });
        }
        let budget = budget(
            &spec.key("retryBudget"),
            s.retry_budget.as_ref(),
            &mut errors,
        );
        let warmup = s
            .warmup
            .as_ref()
            .map(|w| warmup(&spec.key("warmup"), w, &mut errors));
        let name = object.name.clone();
        match errors.finish(object, (routes, budget, warmup)) {
            Ok((routes, budget, warmup)) => {
                let outbound = by_app.entry(key).or_insert_with(|| proto::OutboundPolicy {
                    name: format!("{}/{}", policy_namespace(policy), s.app),
                    namespace: policy_namespace(policy).to_owned(),
                    app: s.app.clone(),
                    ..Default::default()
                });
                outbound.traffic_policy = name;
                outbound.routes = routes;
                outbound.retry_budget = Some(budget);
                outbound.warmup = warmup;
            }
            Err(invalid) => rejected.push(invalid),
        }
    }
}

fn policy_namespace(policy: &TrafficPolicy) -> &str {
    super::service::namespace_of(&policy.metadata)
}

/// `None` when `attempts` is 0 (retries off).
fn retries(field: &Field, r: &Retries, errors: &mut Errors) -> Option<proto::Retries> {
    let per_try_timeout = super::optional_duration(
        &field.key("perTryTimeout"),
        r.per_try_timeout.as_deref(),
        Zero::Refused,
        errors,
    );
    if r.attempts > 10 {
        errors.push(
            &field.key("attempts"),
            Violation::TooLarge {
                max: 10.0,
                value: f64::from(r.attempts),
            },
        );
    }
    let mut out = proto::Retries {
        attempts: r.attempts,
        per_try_timeout,
        non_idempotent: r.retry_non_idempotent,
        ..Default::default()
    };
    match (&r.retry_on, &r.http_statuses) {
        (None, None) => {
            out.on_connect_failure = true;
            out.on_reset = true;
            let status = u32::from(defaults::RETRY_HTTP_STATUS);
            out.http_statuses.push(proto::StatusRange {
                from: status,
                to: status,
            });
            out.grpc_codes.extend(defaults::RETRY_GRPC_CODES);
        }
        (on, statuses) => {
            for what in on.iter().flatten() {
                retry_on(*what, &mut out);
            }
            if on.iter().flatten().any(|w| *w == RetryOn::PerTryTimeout)
                && per_try_timeout.is_none()
            {
                let msg = "retryOn per-try-timeout needs perTryTimeout".to_owned();
                errors.push(&field.key("retryOn"), Violation::Conflict(msg));
            }
            let statuses = statuses.iter().flatten().enumerate();
            out.http_statuses.extend(statuses.filter_map(|(i, s)| {
                super::status_range(&field.key("httpStatuses").at(i), s, errors)
            }));
        }
    }
    out.grpc_codes.extend(r.grpc_codes.iter().map(|c| c.code()));
    out.grpc_codes.sort_unstable();
    out.grpc_codes.dedup();
    let base = match r.backoff.as_ref() {
        Some(Backoff {
            base_interval: Some(base),
            ..
        }) => super::duration(
            &field.key("backoff").key("baseInterval"),
            base,
            Zero::Refused,
            errors,
        ),
        _ => super::proto_duration(defaults::RETRY_BACKOFF_BASE),
    };
    let max = match r.backoff.as_ref().and_then(|b| b.max_interval.as_deref()) {
        Some(max) => super::duration(
            &field.key("backoff").key("maxInterval"),
            max,
            Zero::Refused,
            errors,
        ),
        None => super::proto_duration(std_duration(&base).saturating_mul(10)),
    };
    if std_duration(&max) < std_duration(&base) {
        let msg = "backoff.maxInterval must not be shorter than backoff.baseInterval".to_owned();
        errors.push(
            &field.key("backoff").key("maxInterval"),
            Violation::Conflict(msg),
        );
    }
    out.backoff_base = Some(base);
    out.backoff_max = Some(max);
    (r.attempts > 0).then_some(out)
}

fn retry_on(what: RetryOn, out: &mut proto::Retries) {
    let mut statuses = |from: u32, to: u32| out.http_statuses.push(proto::StatusRange { from, to });
    match what {
        RetryOn::ServerError => statuses(500, 599),
        RetryOn::GatewayError => statuses(502, 504),
        _ => {}
    }
    match what {
        RetryOn::ConnectFailure => out.on_connect_failure = true,
        RetryOn::Reset => out.on_reset = true,
        RetryOn::PerTryTimeout => out.on_timeout = true,
        RetryOn::ServerError | RetryOn::GatewayError => {
            out.on_connect_failure = true;
            out.on_reset = true;
        }
        RetryOn::Cancelled => out.grpc_codes.push(1),
        RetryOn::DeadlineExceeded => out.grpc_codes.push(4),
        RetryOn::ResourceExhausted => out.grpc_codes.push(8),
        RetryOn::Internal => out.grpc_codes.push(13),
        RetryOn::Unavailable => out.grpc_codes.push(14),
    }
}

fn budget(field: &Field, b: Option<&RetryBudget>, errors: &mut Errors) -> proto::RetryBudget {
    let ratio = b
        .and_then(|b| b.ratio)
        .unwrap_or(defaults::RETRY_BUDGET_RATIO);
    in_range(
        &field.key("ratio"),
        ratio,
        0.0..=1000.0,
        ("retry ratio", "must be a number in 0..=1000"),
        errors,
    );
    let min_per_second = b
        .and_then(|b| b.min_retries_per_second)
        .unwrap_or(defaults::RETRY_BUDGET_MIN_PER_SECOND);
    if min_per_second > 100_000 {
        errors.push(
            &field.key("minRetriesPerSecond"),
            Violation::TooLarge {
                max: 100_000.0,
                value: f64::from(min_per_second),
            },
        );
    }
    let ttl = match b.and_then(|b| b.ttl.as_deref()) {
        Some(ttl) => {
            let d = super::duration(&field.key("ttl"), ttl, Zero::Refused, errors);
            let std = std_duration(&d);
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&std) && !std.is_zero()
            {
                errors.push(
                    &field.key("ttl"),
                    Violation::InvalidValue {
                        what: "retry budget ttl",
                        value: ttl.to_owned(),
                        reason: "must be between 1s and 60s",
                    },
                );
            }
            d
        }
        None => super::proto_duration(defaults::RETRY_BUDGET_TTL),
    };
    proto::RetryBudget {
        ratio,
        min_per_second,
        ttl: Some(ttl),
    }
}

fn warmup(field: &Field, w: &Warmup, errors: &mut Errors) -> proto::Warmup {
    let duration = super::duration(&field.key("duration"), &w.duration, Zero::Refused, errors);
    let aggression = w.aggression.unwrap_or(defaults::WARMUP_AGGRESSION);
    in_range(
        &field.key("aggression"),
        aggression,
        0.1..=100.0,
        ("aggression", "must be a number in 0.1..=100"),
        errors,
    );
    let percent = w
        .min_weight_percent
        .unwrap_or(defaults::WARMUP_MIN_WEIGHT_PERCENT);
    if !(1..=100).contains(&percent) {
        errors.push(
            &field.key("minWeightPercent"),
            Violation::InvalidValue {
                what: "minimum weight",
                value: percent.to_string(),
                reason: "must be a percentage in 1..=100",
            },
        );
    }
    proto::Warmup {
        duration: Some(duration),
        aggression,
        min_weight: f64::from(percent) / 100.0,
    }
}

/// Refuses a number outside `range` (NaN and infinities included) as `(what, reason)`.
fn in_range(
    field: &Field,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    (what, reason): (&'static str, &'static str),
    errors: &mut Errors,
) {
    if !range.contains(&value) {
        errors.push(
            field,
            Violation::InvalidValue {
                what,
                value: value.to_string(),
                reason,
            },
        );
    }
}

/// The converted (already bounded) duration as a std one; negative or invalid reads as zero.
fn std_duration(d: &prost_types::Duration) -> Duration {
    Duration::try_from(*d).unwrap_or_default()
}

#[cfg(test)]
mod tests;
