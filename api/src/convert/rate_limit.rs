//! RateLimitPolicies and OverloadProtectionPolicies -> `proto::InboundPolicy`.

use std::collections::BTreeMap;

use super::error::{Errors, Field};
use super::{Built, Invalid, ObjectRef, Violation, Zero};
use crate::crd::common::ParamSource;
use crate::crd::overload::{OverloadMode, OverloadStrategy};
use crate::crd::rate_limit::{HotParam, QpsBehavior, QpsLimit, RateLimitRule, Scope};
use crate::crd::{OverloadProtectionPolicy, RateLimitPolicy};
use crate::proto;

/// Builds one InboundPolicy per (namespace, app) named by any policy.
///
/// `ready_replicas(namespace, app)` gives the divisor for `Cluster`-scoped
/// QPS thresholds; with no ready replica the whole threshold goes to each pod
/// (a pod that is about to become ready must not start at zero).
///
/// A refused policy is left out whole (its rules do not half-apply). Of
/// several OverloadProtectionPolicies for one app the first by name serves;
/// the others are refused as conflicting.
pub fn inbound_policies(
    rate_limits: &[RateLimitPolicy],
    overloads: &[OverloadProtectionPolicy],
    ready_replicas: &dyn Fn(&str, &str) -> u32,
) -> Built<proto::InboundPolicy> {
    let mut built = Built::default();
    let mut by_app: BTreeMap<(String, String), proto::InboundPolicy> = BTreeMap::new();
    for policy in super::sorted_by_ref(rate_limits, |p| &p.metadata) {
        let mut errors = Errors::default();
        let object = super::object_ref("RateLimitPolicy", &policy.metadata, &mut errors);
        let replicas = ready_replicas(&object.namespace, &policy.spec.app);
        let rules = rules(&object, policy, replicas, &mut errors);
        match errors.finish(object, rules) {
            Ok(rules) => {
                let ns = policy
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(super::DEFAULT_NAMESPACE);
                entry(&mut by_app, ns, &policy.spec.app).rules.extend(rules);
            }
            Err(invalid) => built.rejected.push(invalid),
        }
    }
    for policy in super::sorted_by_ref(overloads, |p| &p.metadata) {
        match overload(policy) {
            Ok((object, resource)) => {
                let inbound = entry(&mut by_app, &object.namespace, &policy.spec.app);
                if let Some(existing) = &inbound.overload {
                    let msg = format!(
                        "app {:?} is already protected by OverloadProtectionPolicy {:?}",
                        policy.spec.app, existing.name
                    );
                    let errors = vec![super::FieldError {
                        field: "spec.app".to_owned(),
                        violation: Violation::Conflict(msg),
                    }];
                    built.rejected.push(Invalid { object, errors });
                } else {
                    inbound.overload = Some(resource);
                }
            }
            Err(invalid) => built.rejected.push(invalid),
        }
    }
    built.resources = by_app.into_values().collect();
    built
}

fn entry<'a>(
    by_app: &'a mut BTreeMap<(String, String), proto::InboundPolicy>,
    namespace: &str,
    app: &str,
) -> &'a mut proto::InboundPolicy {
    by_app
        .entry((namespace.to_owned(), app.to_owned()))
        .or_insert_with(|| proto::InboundPolicy {
            name: format!("{namespace}/{app}"),
            namespace: namespace.to_owned(),
            app: app.to_owned(),
            ..Default::default()
        })
}

fn rules(
    object: &ObjectRef,
    policy: &RateLimitPolicy,
    replicas: u32,
    errors: &mut Errors,
) -> Vec<proto::RateLimitRule> {
    let spec = Field::root("spec");
    super::non_empty(&spec.key("app"), &policy.spec.app, errors);
    if policy.spec.rules.is_empty() {
        errors.push(&spec.key("rules"), Violation::Empty);
    }
    let names = policy.spec.rules.iter().map(|r| r.name.as_str());
    super::unique(&spec.key("rules"), "rule name", names, errors);
    let rules = policy.spec.rules.iter().enumerate();
    let rules = rules.map(|(i, r)| {
        rule(
            &spec.key("rules").at(i),
            object,
            r,
            policy.spec.dry_run,
            replicas,
            errors,
        )
    });
    rules.collect()
}

fn rule(
    field: &Field,
    object: &ObjectRef,
    r: &RateLimitRule,
    dry_run: bool,
    replicas: u32,
    errors: &mut Errors,
) -> proto::RateLimitRule {
    rule_name(&field.key("name"), &r.name, errors);
    if r.qps.is_none() && r.concurrency.is_none() && r.hot_params.is_empty() {
        let msg = "a rule limits something: set qps, concurrency or hotParams".to_owned();
        errors.push(field, Violation::Conflict(msg));
    }
    let hot_params = r.hot_params.iter().enumerate();
    let hot_params = hot_params
        .map(|(i, h)| hot_param(&field.key("hotParams").at(i), h, errors))
        .collect();
    let route_match = super::route_match(&field.key("match"), &r.route_match, errors);
    let qps = r
        .qps
        .as_ref()
        .map(|q| qps(&field.key("qps"), q, r.scope, replicas, errors));
    let fallback = super::fallback(
        &field.key("fallback"),
        r.fallback.as_ref(),
        crate::defaults::LIMIT_STATUS,
        errors,
    );
    proto::RateLimitRule {
        name: format!("{}/{}", object.name, r.name),
        r#match: Some(route_match),
        qps,
        concurrency: r.concurrency.as_ref().map(|c| proto::ConcurrencyLimit {
            max: super::count(&field.key("concurrency").key("max"), c.max, errors),
        }),
        hot_params,
        fallback: Some(fallback),
        dry_run,
    }
}

/// Rule names end up in metric labels and in `policy/rule` resource names.
pub(super) fn rule_name(field: &Field, name: &str, errors: &mut Errors) {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        errors.push(
            field,
            Violation::InvalidValue {
                what: "rule name",
                value: name.to_owned(),
                reason: "must be 1-63 lower-case letters, digits or '-', starting and ending alphanumeric",
            },
        );
    }
}

fn qps(
    field: &Field,
    q: &QpsLimit,
    scope: Scope,
    replicas: u32,
    errors: &mut Errors,
) -> proto::QpsLimit {
    let threshold = super::threshold(&field.key("threshold"), q.threshold, errors);
    let warm_up = super::optional_duration(
        &field.key("warmUpPeriod"),
        q.warm_up_period.as_deref(),
        Zero::Refused,
        errors,
    );
    let max_queue = super::optional_duration(
        &field.key("maxQueueTime"),
        q.max_queue_time.as_deref(),
        Zero::Allowed,
        errors,
    );
    let behavior = match q.behavior {
        QpsBehavior::Reject => proto::QpsBehavior::Reject,
        QpsBehavior::WarmUp => proto::QpsBehavior::WarmUp,
        QpsBehavior::Queue => proto::QpsBehavior::Queue,
    };
    if q.behavior == QpsBehavior::WarmUp && warm_up.is_none() {
        errors.push(&field.key("warmUpPeriod"), Violation::Required);
    }
    if q.behavior != QpsBehavior::WarmUp && warm_up.is_some() {
        let msg = "warmUpPeriod is allowed only with behavior WarmUp".to_owned();
        errors.push(&field.key("warmUpPeriod"), Violation::Conflict(msg));
    }
    if q.behavior != QpsBehavior::Queue && max_queue.is_some() {
        let msg = "maxQueueTime is allowed only with behavior Queue".to_owned();
        errors.push(&field.key("maxQueueTime"), Violation::Conflict(msg));
    }
    let max_queue = match (q.behavior, max_queue) {
        (QpsBehavior::Queue, None) => Some(super::proto_duration(crate::defaults::MAX_QUEUE_TIME)),
        (_, d) => d,
    };
    let (per_pod, cluster_threshold, replicas) = match scope {
        Scope::PerPod => (threshold, 0.0, 0),
        Scope::Cluster => (threshold / f64::from(replicas.max(1)), threshold, replicas),
    };
    proto::QpsLimit {
        threshold: per_pod,
        behavior: behavior as i32,
        warm_up_period: warm_up,
        max_queue_time: max_queue,
        scope: match scope {
            Scope::PerPod => proto::Scope::PerPod,
            Scope::Cluster => proto::Scope::Cluster,
        } as i32,
        cluster_threshold,
        replicas,
    }
}

fn hot_param(field: &Field, h: &HotParam, errors: &mut Errors) -> proto::HotParam {
    let (source, named) = match h.source {
        ParamSource::Header => (proto::Source::Header, true),
        ParamSource::Query => (proto::Source::Query, true),
        ParamSource::Cookie => (proto::Source::Cookie, true),
        ParamSource::ClientIp => (proto::Source::ClientIp, false),
        ParamSource::Host => (proto::Source::Host, false),
    };
    let name = match (&h.name, named) {
        (Some(name), true) if h.source == ParamSource::Header => {
            super::header_name(&field.key("name"), name, errors)
        }
        (Some(name), true) => {
            super::non_empty(&field.key("name"), name, errors);
            name.clone()
        }
        (None, true) => {
            errors.push(&field.key("name"), Violation::Required);
            String::new()
        }
        (Some(_), false) => {
            let msg = format!("source {:?} takes no name", h.source);
            errors.push(&field.key("name"), Violation::Conflict(msg));
            String::new()
        }
        (None, false) => String::new(),
    };
    let threshold = super::threshold(&field.key("threshold"), h.threshold, errors);
    let window = super::duration(&field.key("window"), &h.window, Zero::Refused, errors);
    let values = h.overrides.iter().map(|o| o.value.as_str());
    super::unique(&field.key("overrides"), "override value", values, errors);
    let overrides = h
        .overrides
        .iter()
        .enumerate()
        .map(|(i, o)| proto::HotParamOverride {
            value: o.value.clone(),
            threshold: super::threshold(
                &field.key("overrides").at(i).key("threshold"),
                o.threshold,
                errors,
            ),
        });
    let overrides = overrides.collect();
    match h.max_tracked_values {
        Some(0) => errors.push(
            &field.key("maxTrackedValues"),
            Violation::TooSmall {
                min: 1.0,
                value: 0.0,
            },
        ),
        Some(n) if n > crate::limits::MAX_TRACKED_VALUES => errors.push(
            &field.key("maxTrackedValues"),
            Violation::TooLarge {
                max: f64::from(crate::limits::MAX_TRACKED_VALUES),
                value: f64::from(n),
            },
        ),
        _ => {}
    }
    proto::HotParam {
        source: source as i32,
        name,
        threshold,
        burst: super::count(&field.key("burst"), h.burst, errors),
        window: Some(window),
        overrides,
        max_tracked_values: h
            .max_tracked_values
            .unwrap_or(crate::defaults::HOT_PARAM_TRACKED_VALUES),
    }
}

fn overload(
    policy: &OverloadProtectionPolicy,
) -> Result<(ObjectRef, proto::OverloadProtection), Invalid> {
    let mut errors = Errors::default();
    let object = super::object_ref("OverloadProtectionPolicy", &policy.metadata, &mut errors);
    let spec = Field::root("spec");
    let s = &policy.spec;
    super::non_empty(&spec.key("app"), &s.app, &mut errors);
    let cpu_threshold = super::ratio(&spec.key("cpuThreshold"), s.cpu_threshold, &mut errors);
    let fallback = super::fallback(
        &spec.key("fallback"),
        s.fallback.as_ref(),
        crate::defaults::SHED_STATUS,
        &mut errors,
    );
    let resource = proto::OverloadProtection {
        mode: match s.mode {
            OverloadMode::Disabled => proto::OverloadMode::Off,
            OverloadMode::DryRun => proto::OverloadMode::DryRun,
            OverloadMode::Enabled => proto::OverloadMode::On,
        } as i32,
        cpu_threshold,
        strategy: match s.strategy {
            OverloadStrategy::Bbr => proto::OverloadStrategy::Bbr,
        } as i32,
        name: object.name.clone(),
        fallback: Some(fallback),
    };
    errors.finish(object.clone(), (object, resource))
}
