//! CircuitBreakerPolicies -> `proto::OutboundPolicy`.

use std::collections::BTreeMap;

use super::error::{Errors, Field};
use super::{Built, ObjectRef, Violation, Zero};
use crate::crd::circuit_breaker::{BreakerStrategy, CircuitBreakerRule, ErrorCodes};
use crate::crd::{CircuitBreakerPolicy, TrafficPolicy};
use crate::proto;

/// Builds one OutboundPolicy per (namespace, destination app) from its CircuitBreakerPolicies
/// and its TrafficPolicy. A refused policy is left out whole. Of several policies setting a
/// timeout for one app, the first by name wins and the others are refused.
pub fn outbound_policies(
    policies: &[CircuitBreakerPolicy],
    traffic: &[TrafficPolicy],
) -> Built<proto::OutboundPolicy> {
    let mut built = Built::default();
    let mut by_app: BTreeMap<(String, String), (proto::OutboundPolicy, Option<String>)> =
        BTreeMap::new();
    for policy in super::sorted_by_ref(policies, |p| &p.metadata) {
        let mut errors = Errors::default();
        let object = super::object_ref("CircuitBreakerPolicy", &policy.metadata, &mut errors);
        let spec = Field::root("spec");
        let s = &policy.spec;
        super::non_empty(&spec.key("app"), &s.app, &mut errors);
        if s.rules.is_empty() {
            errors.push(&spec.key("rules"), Violation::Empty);
        }
        super::unique(
            &spec.key("rules"),
            "rule name",
            s.rules.iter().map(|r| r.name.as_str()),
            &mut errors,
        );
        let timeout = super::optional_duration(
            &spec.key("timeout"),
            s.timeout.as_deref(),
            Zero::Refused,
            &mut errors,
        );
        let rules = s.rules.iter().enumerate();
        let rules: Vec<_> = rules
            .map(|(i, r)| {
                let mut rule = rule(&spec.key("rules").at(i), &object, r, &mut errors);
                rule.dry_run = s.dry_run;
                rule
            })
            .collect();
        let key = (object.namespace.clone(), s.app.clone());
        let (outbound, timeout_owner) = by_app.entry(key).or_insert_with(|| {
            let policy = proto::OutboundPolicy {
                name: format!("{}/{}", object.namespace, s.app),
                namespace: object.namespace.clone(),
                app: s.app.clone(),
                ..Default::default()
            };
            (policy, None)
        });
        if let (Some(_), Some(owner)) = (&timeout, timeout_owner.as_ref()) {
            let msg = format!(
                "app {:?} already has a timeout from CircuitBreakerPolicy {owner:?}",
                s.app
            );
            errors.push(&spec.key("timeout"), Violation::Conflict(msg));
        }
        match errors.finish(object, rules) {
            Ok(rules) => {
                if timeout.is_some() {
                    outbound.timeout = timeout;
                    *timeout_owner = Some(policy.metadata.name.clone().unwrap_or_default());
                }
                outbound.breakers.extend(rules);
            }
            Err(invalid) => built.rejected.push(invalid),
        }
    }
    let mut by_app: super::traffic::ByApp = by_app
        .into_iter()
        .filter(|(_, (p, _))| !p.breakers.is_empty())
        .map(|(key, (p, _))| (key, p))
        .collect();
    super::traffic::apply(traffic, &mut by_app, &mut built.rejected);
    built.resources = by_app.into_values().collect();
    built
}

fn rule(
    field: &Field,
    object: &ObjectRef,
    r: &CircuitBreakerRule,
    errors: &mut Errors,
) -> proto::CircuitBreakerRule {
    super::rate_limit::rule_name(&field.key("name"), &r.name, errors);
    let threshold = match r.strategy {
        BreakerStrategy::SlowRequestRatio | BreakerStrategy::ErrorRatio => {
            super::ratio(&field.key("threshold"), r.threshold, errors)
        }
        BreakerStrategy::ErrorCount => {
            let t = super::threshold(&field.key("threshold"), r.threshold, errors);
            if t.is_finite() && (t < 1.0 || t.fract() != 0.0) {
                errors.push(
                    &field.key("threshold"),
                    Violation::InvalidValue {
                        what: "error count",
                        value: t.to_string(),
                        reason: "must be a whole number >= 1",
                    },
                );
            }
            t
        }
    };
    let slow = super::optional_duration(
        &field.key("slowRequestDuration"),
        r.slow_request_duration.as_deref(),
        Zero::Refused,
        errors,
    );
    match (r.strategy, &slow) {
        (BreakerStrategy::SlowRequestRatio, None) => {
            errors.push(&field.key("slowRequestDuration"), Violation::Required)
        }
        (BreakerStrategy::ErrorRatio | BreakerStrategy::ErrorCount, Some(_)) => {
            let msg =
                "slowRequestDuration is allowed only with strategy SlowRequestRatio".to_owned();
            errors.push(&field.key("slowRequestDuration"), Violation::Conflict(msg));
        }
        _ => {}
    }
    let window = super::duration(&field.key("window"), &r.window, Zero::Refused, errors);
    let open_duration = super::duration(
        &field.key("openDuration"),
        &r.open_duration,
        Zero::Refused,
        errors,
    );
    if r.half_open_probes == 0 {
        errors.push(
            &field.key("halfOpenProbes"),
            Violation::TooSmall {
                min: 1.0,
                value: 0.0,
            },
        );
    }
    proto::CircuitBreakerRule {
        name: format!("{}/{}", object.name, r.name),
        r#match: Some(super::route_match(
            &field.key("match"),
            &r.route_match,
            errors,
        )),
        strategy: match r.strategy {
            BreakerStrategy::SlowRequestRatio => proto::BreakerStrategy::SlowRequestRatio,
            BreakerStrategy::ErrorRatio => proto::BreakerStrategy::ErrorRatio,
            BreakerStrategy::ErrorCount => proto::BreakerStrategy::ErrorCount,
        } as i32,
        threshold,
        slow_request_duration: slow,
        window: Some(window),
        min_requests: super::count(&field.key("minRequests"), r.min_requests, errors),
        open_duration: Some(open_duration),
        half_open_probes: r.half_open_probes,
        fallback: Some(super::fallback(
            &field.key("fallback"),
            r.fallback.as_ref(),
            crate::defaults::SHED_STATUS,
            errors,
        )),
        errors: Some(error_classifier(
            &field.key("errors"),
            r.errors.as_ref(),
            errors,
        )),
        dry_run: false,
    }
}

fn error_classifier(
    field: &Field,
    codes: Option<&ErrorCodes>,
    errors: &mut Errors,
) -> proto::ErrorClassifier {
    let default_http = || {
        let (from, to) = crate::defaults::BREAKER_HTTP_ERRORS;
        vec![proto::StatusRange {
            from: u32::from(from),
            to: u32::from(to),
        }]
    };
    let default_grpc = || crate::defaults::BREAKER_GRPC_ERRORS.to_vec();
    let Some(codes) = codes else {
        return proto::ErrorClassifier {
            http_statuses: default_http(),
            grpc_codes: default_grpc(),
        };
    };
    let ranges = codes.http_statuses.iter().enumerate();
    let ranges = ranges
        .filter_map(|(i, s)| super::status_range(&field.key("httpStatuses").at(i), s, errors));
    let mut grpc_codes: Vec<u32> = codes.grpc_codes.iter().map(|c| c.code()).collect();
    grpc_codes.sort_unstable();
    grpc_codes.dedup();
    proto::ErrorClassifier {
        http_statuses: ranges.collect(),
        grpc_codes,
    }
}
