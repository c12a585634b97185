#![allow(clippy::unwrap_used)]
use super::*;

fn route(paths: Vec<proto::path_match::Kind>, methods: &[&str]) -> proto::RouteMatch {
    proto::RouteMatch {
        paths: paths
            .into_iter()
            .map(|kind| proto::PathMatch { kind: Some(kind) })
            .collect(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
    }
}

#[test]
fn route_matcher_exact_prefix_regex_and_methods() {
    use proto::path_match::Kind;
    let m = RouteMatcher::from_proto(
        "m",
        Some(&route(
            vec![
                Kind::Exact("/greet1a".into()),
                Kind::Prefix("/api/".into()),
                Kind::Regex("/users/[0-9]+".into()),
            ],
            &["GET", "post"],
        )),
    )
    .unwrap();
    assert!(m.matches(&Method::GET, "/greet1a"));
    assert!(!m.matches(&Method::GET, "/greet1ab"), "exact is exact");
    assert!(m.matches(&Method::POST, "/api/x"));
    assert!(m.matches(&Method::GET, "/users/42"));
    assert!(!m.matches(&Method::GET, "/users/42/x"), "regex is anchored");
    assert!(!m.matches(&Method::DELETE, "/greet1a"), "method not listed");
    let all = RouteMatcher::from_proto("m", None).unwrap();
    assert!(all.matches(&Method::PUT, "/anything"));
}

#[test]
fn route_matcher_refuses_relative_paths_and_bad_regexes_naming_the_field() {
    use proto::path_match::Kind;
    let relative =
        RouteMatcher::from_proto("m", Some(&route(vec![Kind::Prefix("api".into())], &[])));
    assert!(
        matches!(&relative, Err(FieldError { field, problem: Problem::OutOfRange { .. } }) if field == "m.paths[0]"),
        "{relative:?}"
    );
    let bad = RouteMatcher::from_proto("m", Some(&route(vec![Kind::Regex("(".into())], &[])));
    assert!(
        matches!(&bad, Err(FieldError { field, problem: Problem::InvalidRegex { .. } }) if field == "m.paths[0].regex"),
        "{bad:?}"
    );
}

#[test]
fn fallback_defaults_to_a_text_naming_rule_and_reason() {
    let rule: Arc<str> = Arc::from("limits/greet");
    let f = Fallback::from_proto("f", &rule, None, StatusCode::TOO_MANY_REQUESTS).unwrap();
    let r = f.response(RejectReason::Flow);
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers[BLOCKED_HEADER], "flow");
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain");
    assert!(
        std::str::from_utf8(&r.body)
            .unwrap()
            .contains("limits/greet")
    );
    assert_eq!(r.grpc_status, Some(grpc::code::RESOURCE_EXHAUSTED));
    assert_eq!(
        f.response(RejectReason::CircuitBreaking).grpc_status,
        Some(grpc::code::UNAVAILABLE)
    );
}

#[test]
fn fallback_custom_body_headers_and_redirect() {
    let rule: Arc<str> = Arc::from("r");
    let custom = proto::Fallback {
        status: 429,
        content_type: "application/json".into(),
        body: "{\"busy\":true}".into(),
        headers: [("retry-after".to_owned(), "1".to_owned())].into(),
        redirect: String::new(),
    };
    let r = Fallback::from_proto("f", &rule, Some(&custom), StatusCode::SERVICE_UNAVAILABLE)
        .unwrap()
        .response(RejectReason::HotParam);
    assert_eq!(r.status, 429);
    assert_eq!(r.body, "{\"busy\":true}");
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers[BLOCKED_HEADER], "hot_param");

    let redirect = proto::Fallback {
        redirect: "https://example.com/busy".into(),
        ..Default::default()
    };
    let r = Fallback::from_proto("f", &rule, Some(&redirect), StatusCode::SERVICE_UNAVAILABLE)
        .unwrap()
        .response(RejectReason::Flow);
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers[header::LOCATION], "https://example.com/busy");
}

#[test]
fn error_classifier_defaults_follow_the_design() {
    let c = ErrorClassifier::from_proto(None);
    assert!(c.is_http_error(500) && c.is_http_error(503) && !c.is_http_error(404));
    for code in [2, 4, 13, 14] {
        assert!(c.is_grpc_error(code));
    }
    assert!(!c.is_grpc_error(0) && !c.is_grpc_error(5));
    let custom = ErrorClassifier::from_proto(Some(&proto::ErrorClassifier {
        http_statuses: vec![proto::StatusRange { from: 404, to: 404 }],
        grpc_codes: vec![5],
    }));
    assert!(custom.is_http_error(404) && !custom.is_http_error(500));
    assert!(custom.is_grpc_error(5));
}

#[test]
fn inbound_rules_convert_qps_hot_params_and_overload() {
    let p = proto::InboundPolicy {
        name: "shop/a".into(),
        namespace: "shop".into(),
        app: "a".into(),
        rules: vec![proto::RateLimitRule {
            name: "limits/greet".into(),
            qps: Some(proto::QpsLimit {
                threshold: 5.0,
                behavior: proto::QpsBehavior::Queue as i32,
                ..Default::default()
            }),
            concurrency: Some(proto::ConcurrencyLimit { max: 3 }),
            hot_params: vec![proto::HotParam {
                source: proto::Source::Header as i32,
                name: "X-User-Id".into(),
                threshold: 2.0,
                overrides: vec![proto::HotParamOverride {
                    value: "vip".into(),
                    threshold: 50.0,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        overload: Some(proto::OverloadProtection {
            mode: proto::OverloadMode::DryRun as i32,
            cpu_threshold: 0.8,
            ..Default::default()
        }),
    };
    let rules = InboundRules::try_from(&p).unwrap();
    let rule = &rules.rules[0];
    assert_eq!(
        rule.qps.unwrap().behavior,
        QpsBehavior::Queue {
            max_queue_time: Duration::from_millis(500)
        }
    );
    assert_eq!(rule.concurrency, Some(3));
    let hot = &rule.hot_params[0];
    assert_eq!(
        hot.source,
        ParamSource::Header(HeaderName::from_static("x-user-id"))
    );
    assert_eq!(hot.config.window, Duration::from_secs(1));
    assert_eq!(hot.config.overrides["vip"], 50);
    let overload = rules.overload.as_ref().unwrap();
    assert_eq!(overload.config.mode, OverloadMode::DryRun);
    assert_eq!(&*overload.name, "a/overload");

    let mut off = p.clone();
    off.overload.as_mut().unwrap().mode = proto::OverloadMode::Off as i32;
    assert!(InboundRules::try_from(&off).unwrap().overload.is_none());
    assert_eq!(
        InboundRules::try_from(&p).unwrap(),
        rules,
        "compares by value"
    );
}
