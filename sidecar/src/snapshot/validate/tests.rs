use super::*;
use std::collections::BTreeMap;
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
            ports: BTreeMap::from([("http".into(), 8080)]),
            ..Default::default()
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
        ..Default::default()
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
    assert!(matches!(
        s.compile(),
        Err(ValidationError::Service(ServiceConfigError::Empty {
            field: "name",
            ..
        }))
    ));
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
    let mut no_window = breaker(proto::BreakerStrategy::ErrorRatio, 0.5);
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
    let rule = |path: proto::path_match::Kind, threshold: f64, status: u32| proto::InboundPolicy {
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
    assert!(
        matches!(
            &err,
            ValidationError::Field(FieldError {
                problem: crate::field::Problem::Policy(_),
                ..
            })
        ),
        "{err}"
    );
    assert!(
        rule(Kind::Exact("/".into()), f64::NAN, 429)
            .compile()
            .is_err()
    );
    // Proto3's 0 is "not set": the default status.
    assert!(rule(Kind::Exact("/".into()), 1.0, 0).compile().is_ok());
    assert!(rule(Kind::Exact("/".into()), 1.0, 99).compile().is_err());
    assert!(rule(Kind::Exact("/".into()), 1.0, 600).compile().is_err());
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
