//! Per-resource checks made before a discovery resource enters the snapshot.
//!
//! The control plane already validates what it sends (`lanemesh_api::convert`),
//! but a sidecar must not trust the wire: a newer or buggy control plane may
//! send an enum value this proxy does not know, or a pattern its regex engine
//! refuses. A resource that fails here is NACKed by name and the last good copy
//! stays in force.
//!
//! [`Compile`] is the seam for richer runtime conversions: today each resource
//! compiles into the small structure the snapshot indexes need; the lane and
//! route modules can replace an `Output` with their runtime rules without
//! touching the discovery client.

use std::sync::Arc;
use std::time::Duration;

use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;

use crate::govern::{InboundRules, OutboundRules};
use crate::lane::rules::LaneGroupConfig;
use crate::policy::PolicyError;
use crate::policy::error::{check_min, check_positive, check_ratio, check_threshold};
use crate::route::endpoints::ServiceSpec;

/// Why a resource was refused; rendered into the NACK's `resource_errors`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("the resource has an empty name")]
    EmptyName,
    #[error("the resource is named {outer:?} on the stream but {inner:?} inside")]
    NameMismatch { outer: String, inner: String },
    #[error("cannot decode the resource: {0}")]
    Decode(String),
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("{field}: invalid IP address {value:?}")]
    InvalidIp { field: String, value: String },
    #[error("{field}: unknown {what} value {value} (this proxy is older than the control plane?)")]
    UnknownEnum {
        field: String,
        what: &'static str,
        value: i32,
    },
    #[error("{field}: invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex {
        field: String,
        pattern: String,
        reason: String,
    },
    #[error("{field}: {reason}, got {value}")]
    OutOfRange {
        field: String,
        reason: &'static str,
        value: String,
    },
    #[error("{field}: {source}")]
    Policy { field: String, source: PolicyError },
    /// For runtime conversions plugged into [`Compile`] by other modules.
    #[error("{field}: {message}")]
    Other { field: String, message: String },
}

/// A discovery resource that can be checked and turned into what the data
/// plane uses at run time.
pub trait Compile: DiscoveryResource + Send + Sync + 'static {
    /// The runtime form kept next to the resource in the snapshot.
    type Output: std::fmt::Debug + Send + Sync + 'static;

    /// Refuses the resource with the first problem found, or compiles it.
    fn compile(&self) -> Result<Self::Output, ValidationError>;
}

impl Compile for proto::Service {
    type Output = ServiceSpec;

    fn compile(&self) -> Result<ServiceSpec, ValidationError> {
        non_empty("name", &self.name)?;
        non_empty("namespace", &self.namespace)?;
        ServiceSpec::try_from(self).map_err(|e| ValidationError::Other {
            field: "service".to_owned(),
            message: e.to_string(),
        })
    }
}

/// The lane module's runtime rules are the check: one conversion, made once
/// per resource off the hot path.
impl Compile for proto::LaneGroup {
    type Output = LaneGroupConfig;

    fn compile(&self) -> Result<LaneGroupConfig, ValidationError> {
        non_empty("name", &self.name)?;
        LaneGroupConfig::try_from(self).map_err(|e| ValidationError::Other {
            field: "laneGroup".to_owned(),
            message: e.to_string(),
        })
    }
}

impl Compile for proto::InboundPolicy {
    type Output = Arc<InboundRules>;

    fn compile(&self) -> Result<Arc<InboundRules>, ValidationError> {
        non_empty("name", &self.name)?;
        non_empty("app", &self.app)?;
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("rules[{i}]");
            if let Some(qps) = &rule.qps {
                let f = format!("{field}.qps");
                policy(&f, check_threshold("threshold", qps.threshold))?;
                known::<proto::QpsBehavior>(&format!("{f}.behavior"), "behavior", qps.behavior)?;
                known::<proto::Scope>(&format!("{f}.scope"), "scope", qps.scope)?;
                duration(&format!("{f}.warmUpPeriod"), qps.warm_up_period.as_ref())?;
                duration(&format!("{f}.maxQueueTime"), qps.max_queue_time.as_ref())?;
            }
            for (j, hot) in rule.hot_params.iter().enumerate() {
                let f = format!("{field}.hotParams[{j}]");
                known::<proto::Source>(&format!("{f}.source"), "source", hot.source)?;
                policy(&f, check_threshold("threshold", hot.threshold))?;
                if let Some(window) = duration(&format!("{f}.window"), hot.window.as_ref())? {
                    policy(&f, check_positive("window", window))?;
                }
                for (k, o) in hot.overrides.iter().enumerate() {
                    policy(
                        &format!("{f}.overrides[{k}]"),
                        check_threshold("threshold", o.threshold),
                    )?;
                }
            }
            if let Some(fallback) = &rule.fallback {
                self::fallback(&format!("{field}.fallback"), fallback)?;
            }
        }
        if let Some(o) = &self.overload {
            known::<proto::OverloadMode>("overload.mode", "overload mode", o.mode)?;
            known::<proto::OverloadStrategy>("overload.strategy", "strategy", o.strategy)?;
            policy("overload", check_ratio("cpuThreshold", o.cpu_threshold))?;
            if let Some(fallback) = &o.fallback {
                self::fallback("overload.fallback", fallback)?;
            }
        }
        InboundRules::try_from(self).map(Arc::new)
    }
}

impl Compile for proto::OutboundPolicy {
    type Output = Arc<OutboundRules>;

    fn compile(&self) -> Result<Arc<OutboundRules>, ValidationError> {
        non_empty("name", &self.name)?;
        non_empty("app", &self.app)?;
        if let Some(timeout) = duration("timeout", self.timeout.as_ref())? {
            policy("", check_positive("timeout", timeout))?;
        }
        for (i, b) in self.breakers.iter().enumerate() {
            let field = format!("breakers[{i}]");
            let strategy = known::<proto::BreakerStrategy>(
                &format!("{field}.strategy"),
                "strategy",
                b.strategy,
            )?;
            match strategy {
                proto::BreakerStrategy::ErrorCount => {
                    policy(&field, check_threshold("threshold", b.threshold))?;
                    policy(&field, check_min("threshold", b.threshold as u64, 1))?;
                }
                proto::BreakerStrategy::SlowRequestRatio | proto::BreakerStrategy::ErrorRatio => {
                    policy(&field, check_ratio("threshold", b.threshold))?;
                }
            }
            duration(
                &format!("{field}.slowRequestDuration"),
                b.slow_request_duration.as_ref(),
            )?;
            let window = duration(&format!("{field}.window"), b.window.as_ref())?;
            policy(&field, check_positive("window", window.unwrap_or_default()))?;
            let open = duration(&format!("{field}.openDuration"), b.open_duration.as_ref())?;
            policy(
                &field,
                check_positive("openDuration", open.unwrap_or_default()),
            )?;
            policy(
                &field,
                check_min("halfOpenProbes", u64::from(b.half_open_probes), 1),
            )?;
            if let Some(fallback) = &b.fallback {
                self::fallback(&format!("{field}.fallback"), fallback)?;
            }
        }
        OutboundRules::try_from(self).map(Arc::new)
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::Empty {
            field: field.to_owned(),
        });
    }
    Ok(())
}

/// Prost keeps unknown enum numbers as plain `i32`; refuse them rather than
/// silently falling back to the default variant.
fn known<E: TryFrom<i32>>(
    field: &str,
    what: &'static str,
    value: i32,
) -> Result<E, ValidationError> {
    E::try_from(value).map_err(|_| ValidationError::UnknownEnum {
        field: field.to_owned(),
        what,
        value,
    })
}

/// Compiles a pattern anchored as the control plane anchors it
/// (`lanemesh_api::convert`), so a pattern is accepted here exactly when the
/// matcher can use it.
pub(crate) fn anchored_regex(field: &str, pattern: &str) -> Result<regex::Regex, ValidationError> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ValidationError::InvalidRegex {
        field: field.to_owned(),
        pattern: pattern.to_owned(),
        // regex errors draw the pattern over several lines; the last says what is wrong.
        reason: e
            .to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
            .to_owned(),
    })
}

fn fallback(field: &str, f: &proto::Fallback) -> Result<(), ValidationError> {
    if !(200..=599).contains(&f.status) {
        return Err(ValidationError::OutOfRange {
            field: format!("{field}.status"),
            reason: "must be an HTTP status 200..=599",
            value: f.status.to_string(),
        });
    }
    Ok(())
}

/// `None` when absent; refuses negative or denormalised durations.
pub(crate) fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, ValidationError> {
    let Some(d) = d else { return Ok(None) };
    Duration::try_from(*d)
        .map(Some)
        .map_err(|_| ValidationError::OutOfRange {
            field: field.to_owned(),
            reason: "must be a non-negative duration",
            value: format!("{}s {}ns", d.seconds, d.nanos),
        })
}

fn policy<T>(field: &str, result: Result<T, PolicyError>) -> Result<T, ValidationError> {
    result.map_err(|source| ValidationError::Policy {
        field: field.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::IpAddr;

    fn service() -> proto::Service {
        proto::Service {
            name: "default/b".into(),
            namespace: "default".into(),
            app: "b".into(),
            cluster_ips: vec!["10.96.0.10".into(), "fd00::10".into()],
            ports: vec![proto::ServicePort {
                name: "http".into(),
                port: 80,
                target_port: 8080,
                protocol: proto::AppProtocol::Http1 as i32,
            }],
            endpoints: vec![proto::Endpoint {
                ip: "10.0.0.7".into(),
                pod_name: "b-1".into(),
                lane_tag: "gray".into(),
                ready: true,
                ports: HashMap::from([("http".into(), 8080)]),
            }],
        }
    }

    fn lane_group(condition: proto::Condition) -> proto::LaneGroup {
        proto::LaneGroup {
            name: "default/flow".into(),
            namespace: "default".into(),
            apps: vec!["a".into()],
            tag_header: "x-mse-tag".into(),
            lanes: vec![proto::Lane {
                name: "gray".into(),
                tag: "gray".into(),
                enabled: true,
                r#match: Some(proto::Match {
                    logic: proto::Logic::All as i32,
                    conditions: vec![condition],
                }),
                weight: 0,
            }],
            ..Default::default()
        }
    }

    fn breaker(strategy: proto::BreakerStrategy, threshold: f64) -> proto::OutboundPolicy {
        let secs = |s| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        proto::OutboundPolicy {
            name: "default/c".into(),
            namespace: "default".into(),
            app: "c".into(),
            breakers: vec![proto::CircuitBreakerRule {
                name: "cb/slow".into(),
                strategy: strategy as i32,
                threshold,
                window: secs(10),
                open_duration: secs(5),
                half_open_probes: 1,
                ..Default::default()
            }],
            timeout: None,
        }
    }

    #[test]
    fn a_well_formed_service_compiles_into_parsed_addresses() {
        let addrs = service().compile().unwrap();
        assert_eq!(
            addrs.cluster_ips,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        let endpoint_ips: Vec<IpAddr> = addrs.endpoints.iter().map(|e| e.ip).collect();
        assert_eq!(endpoint_ips, vec!["10.0.0.7".parse::<IpAddr>().unwrap()]);
    }

    /// The error text of a refused resource; the conversions behind
    /// `compile` pin their variants in their own modules.
    fn refusal<T: Compile>(resource: &T) -> String {
        match resource.compile() {
            Ok(_) => panic!("accepted a bad resource"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn service_with_unparsable_ips_or_ports_is_refused_naming_the_value() {
        let mut s = service();
        s.endpoints[0].ip = "10.0.0.300".into();
        let err = refusal(&s);
        assert!(
            err.contains("\"10.0.0.300\"") && err.contains("default/b"),
            "{err}"
        );
        let mut s = service();
        s.cluster_ips.push("not-an-ip".into());
        assert!(refusal(&s).contains("not-an-ip"));
        let mut s = service();
        s.ports[0].port = 70_000;
        assert!(refusal(&s).contains("70000"));
        let mut s = service();
        s.name.clear();
        assert!(matches!(s.compile(), Err(ValidationError::Empty { .. })));
        let mut s = service();
        s.ports[0].protocol = 42;
        assert!(refusal(&s).contains("42"));
    }

    #[test]
    fn lane_conditions_with_bad_regex_or_unknown_operator_are_refused() {
        let regex_condition = |value: &str| proto::Condition {
            source: proto::Source::Header as i32,
            name: "canary".into(),
            operator: proto::Operator::Regex as i32,
            value: value.into(),
            ..Default::default()
        };
        assert!(lane_group(regex_condition("gr(a|e)y")).compile().is_ok());
        let err = refusal(&lane_group(regex_condition("gr(ay")));
        assert!(err.contains("gr(ay") && err.contains("lane gray"), "{err}");
        let mut unknown = regex_condition("x");
        unknown.operator = 99;
        assert!(refusal(&lane_group(unknown)).contains("99"));
        let percentage = proto::Condition {
            operator: proto::Operator::Percentage as i32,
            percent: 101,
            ..regex_condition("")
        };
        assert!(refusal(&lane_group(percentage)).contains("101"));
    }

    #[test]
    fn breaker_ratios_are_checked_with_the_policy_constructors() {
        assert!(
            breaker(proto::BreakerStrategy::ErrorRatio, 0.5)
                .compile()
                .is_ok()
        );
        let err = breaker(proto::BreakerStrategy::ErrorRatio, 1.5)
            .compile()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "breakers[0]: threshold must be a ratio in (0, 1], got 1.5"
        );
        // A count strategy takes counts, not ratios.
        assert!(
            breaker(proto::BreakerStrategy::ErrorCount, 3.0)
                .compile()
                .is_ok()
        );
        assert!(
            breaker(proto::BreakerStrategy::ErrorCount, 0.0)
                .compile()
                .is_err()
        );
        let mut no_window = breaker(proto::BreakerStrategy::SlowRequestRatio, 0.5);
        no_window.breakers[0].window = None;
        assert!(
            no_window
                .compile()
                .unwrap_err()
                .to_string()
                .contains("window")
        );
    }

    #[test]
    fn inbound_rules_check_paths_thresholds_and_fallbacks() {
        let rule =
            |path: proto::path_match::Kind, threshold: f64, status: u32| proto::InboundPolicy {
                name: "default/a".into(),
                namespace: "default".into(),
                app: "a".into(),
                rules: vec![proto::RateLimitRule {
                    name: "rl/r1".into(),
                    r#match: Some(proto::RouteMatch {
                        paths: vec![proto::PathMatch { kind: Some(path) }],
                        methods: vec!["GET".into()],
                    }),
                    qps: Some(proto::QpsLimit {
                        threshold,
                        ..Default::default()
                    }),
                    fallback: Some(proto::Fallback {
                        status,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                overload: None,
            };
        use proto::path_match::Kind;
        assert!(
            rule(Kind::Exact("/greet".into()), 1.0, 429)
                .compile()
                .is_ok()
        );
        assert!(
            rule(Kind::Prefix("greet".into()), 1.0, 429)
                .compile()
                .is_err()
        );
        let err = rule(Kind::Regex("/(a".into()), 1.0, 429)
            .compile()
            .unwrap_err();
        assert!(
            err.to_string().contains("rules[0].match.paths[0].regex"),
            "{err}"
        );
        let err = rule(Kind::Exact("/".into()), -1.0, 429)
            .compile()
            .unwrap_err();
        assert!(matches!(err, ValidationError::Policy { .. }), "{err}");
        assert!(
            rule(Kind::Exact("/".into()), f64::NAN, 429)
                .compile()
                .is_err()
        );
        assert!(rule(Kind::Exact("/".into()), 1.0, 0).compile().is_err());
    }

    #[test]
    fn overload_cpu_threshold_must_be_a_ratio() {
        let policy = |cpu: f64| proto::InboundPolicy {
            name: "default/a".into(),
            app: "a".into(),
            overload: Some(proto::OverloadProtection {
                mode: proto::OverloadMode::On as i32,
                cpu_threshold: cpu,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(policy(0.8).compile().is_ok());
        assert!(policy(0.0).compile().is_err());
        assert!(policy(1.2).compile().is_err());
    }
}
