//! Conversion and validation: every bad input gives an error naming its
//! field; none panics; valid objects around a bad one still convert.

use serde_json::{Value, json};

use super::*;
use crate::manifest::Manifest;

/// Valid objects of every kind, mutated one JSON pointer at a time.
#[derive(Clone)]
struct Fixture {
    docs: Vec<Value>,
}

fn base() -> Fixture {
    Fixture {
        docs: vec![
            json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "LaneGroup",
                "metadata": {"name": "order-flow", "namespace": "shop"},
                "spec": {"apps": ["a", "b", "c"], "entryApps": ["a"], "routingMode": "Content"}}),
            json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "Lane",
                "metadata": {"name": "gray", "namespace": "shop"},
                "spec": {"group": "order-flow", "tag": "gray",
                    "match": {"logic": "All", "conditions": [{"source": "Header", "name": "Canary", "operator": "Equal", "value": "gray"}]}}}),
            json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "RateLimitPolicy",
                "metadata": {"name": "limits", "namespace": "shop"},
                "spec": {"app": "a", "rules": [{"name": "greet1a",
                    "match": {"paths": [{"exact": "/greet1a"}], "methods": ["GET"]},
                    "qps": {"threshold": 1},
                    "hotParams": [{"source": "Header", "name": "x-user-id", "threshold": 5}],
                    "fallback": {"status": 429, "body": "too many requests"}}]}}),
            json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "CircuitBreakerPolicy",
                "metadata": {"name": "c-breakers", "namespace": "shop"},
                "spec": {"app": "c", "rules": [{"name": "slow", "strategy": "SlowRequestRatio",
                    "threshold": 0.5, "slowRequestDuration": "200ms", "window": "20s",
                    "minRequests": 10, "openDuration": "10s"}]}}),
            json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "OverloadProtectionPolicy",
                "metadata": {"name": "cpu", "namespace": "shop"},
                "spec": {"app": "a", "mode": "Enabled", "cpuThreshold": 0.8}}),
        ],
    }
}

/// The valid objects of [`base`], typed (for the property tests).
pub(super) fn base_manifest() -> Manifest {
    base().manifest()
}

const GROUP: usize = 0;
const LANE: usize = 1;
const RATE: usize = 2;
const BREAKER: usize = 3;
const OVERLOAD: usize = 4;

impl Fixture {
    /// Sets `pointer` (creating the last segment) in document `doc`.
    fn set(mut self, doc: usize, pointer: &str, value: Value) -> Self {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        match self.docs[doc].pointer_mut(parent).unwrap() {
            Value::Object(map) => {
                map.insert(last.to_owned(), value);
            }
            Value::Array(items) => items[last.parse::<usize>().unwrap()] = value,
            other => panic!("cannot set {pointer} under {other}"),
        }
        self
    }

    fn remove(mut self, doc: usize, pointer: &str) -> Self {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        self.docs[doc]
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(last);
        self
    }

    fn with(mut self, doc: Value) -> Self {
        self.docs.push(doc);
        self
    }

    fn manifest(&self) -> Manifest {
        let yaml: Vec<String> = self
            .docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        Manifest::from_yaml(&yaml.join("---\n")).unwrap()
    }

    fn convert(&self) -> Converted {
        manifest(&self.manifest(), &|_, _| 3)
    }

    /// Exactly one object of `kind` is refused (objects depending on it may
    /// be too), and one of its errors is about `field` and says `fragment`.
    #[track_caller]
    fn refused(&self, kind: &str, field: &str, fragment: &str) {
        let converted = self.convert();
        let rejected: Vec<&Invalid> = converted.rejected().collect();
        let of_kind: Vec<&Invalid> = rejected
            .iter()
            .copied()
            .filter(|i| i.object.kind == kind)
            .collect();
        assert_eq!(
            of_kind.len(),
            1,
            "expected one refused {kind}, got {rejected:#?}"
        );
        let invalid = of_kind[0];
        let error = invalid.errors.iter().find(|e| e.field == field);
        let error = error.unwrap_or_else(|| panic!("no error for {field} in: {invalid}"));
        let text = error.to_string();
        assert!(text.starts_with(&format!("{field}: ")), "{text}");
        assert!(
            text.contains(fragment),
            "{text:?} does not say {fragment:?}"
        );
    }
}

#[test]
fn valid_objects_convert_with_defaults_filled_in() {
    let c = base().convert();
    let rejected: Vec<&Invalid> = c.rejected().collect();
    assert!(rejected.is_empty(), "{rejected:#?}");

    let group = &c.lane_groups.resources[0];
    assert_eq!(group.name, "shop/order-flow");
    assert_eq!(group.tag_header, "x-mse-tag");
    let propagation = group.propagation.as_ref().unwrap();
    assert_eq!(
        propagation.trace_headers,
        [
            "traceparent",
            "x-request-id",
            "x-b3-traceid",
            "uber-trace-id",
            "sw8"
        ]
    );
    assert!(propagation.inflight && propagation.color_by_node);
    let lane = &group.lanes[0];
    assert_eq!((lane.tag.as_str(), lane.enabled), ("gray", true));
    // Header names are matched case-insensitively: stored lower case.
    assert_eq!(lane.r#match.as_ref().unwrap().conditions[0].name, "canary");

    let inbound = &c.inbound.resources[0];
    assert_eq!((inbound.name.as_str(), inbound.rules.len()), ("shop/a", 1));
    let rule = &inbound.rules[0];
    assert_eq!(rule.name, "limits/greet1a");
    assert_eq!(rule.qps.as_ref().unwrap().threshold, 1.0);
    assert_eq!(rule.hot_params[0].max_tracked_values, 10_000);
    assert_eq!(
        rule.hot_params[0].window,
        Some(prost_types::Duration {
            seconds: 1,
            nanos: 0
        })
    );
    assert_eq!(rule.fallback.as_ref().unwrap().status, 429);
    assert_eq!(inbound.overload.as_ref().unwrap().cpu_threshold, 0.8);

    let breaker = &c.outbound.resources[0].breakers[0];
    assert_eq!(
        breaker.slow_request_duration,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000
        })
    );
    assert_eq!(breaker.half_open_probes, 1);
    assert_eq!(breaker.fallback.as_ref().unwrap().status, 503);
    let errors = breaker.errors.as_ref().unwrap();
    assert_eq!(
        errors.http_statuses,
        [proto::StatusRange { from: 500, to: 599 }]
    );
    assert_eq!(errors.grpc_codes.len(), 4);
}

#[test]
fn cluster_scope_divides_the_threshold_over_ready_replicas() {
    let f = base()
        .set(RATE, "/spec/rules/0/qps/threshold", json!(90))
        .set(RATE, "/spec/rules/0/scope", json!("Cluster"));
    let qps = f.convert().inbound.resources[0].rules[0].qps.unwrap();
    assert_eq!(
        (qps.threshold, qps.cluster_threshold, qps.replicas),
        (30.0, 90.0, 3)
    );
    let m = f.manifest();
    let none_ready = inbound_policies(&m.rate_limits, &[], &|_, _| 0);
    assert_eq!(
        none_ready.resources[0].rules[0]
            .qps
            .as_ref()
            .unwrap()
            .threshold,
        90.0
    );
}

#[test]
fn queue_gets_the_default_max_queue_time_and_zero_means_never_wait() {
    let f = base().set(RATE, "/spec/rules/0/qps/behavior", json!("Queue"));
    let qps = f.convert().inbound.resources[0].rules[0].qps.unwrap();
    assert_eq!(
        qps.max_queue_time,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000
        })
    );
    let f = f.set(RATE, "/spec/rules/0/qps/maxQueueTime", json!("0s"));
    let qps = f.convert().inbound.resources[0].rules[0].qps.unwrap();
    assert_eq!(qps.max_queue_time, Some(prost_types::Duration::default()));
}

#[test]
fn a_dry_run_breaker_policy_marks_every_rule() {
    let enforced = base().convert().outbound.resources[0].breakers[0].dry_run;
    assert!(!enforced, "enforced by default");
    let dry = base().set(BREAKER, "/spec/dryRun", json!(true)).convert();
    assert!(dry.outbound.resources[0].breakers.iter().all(|b| b.dry_run));
}

#[test]
fn error_codes_accept_classes_codes_and_ranges() {
    let f = base().set(
        BREAKER,
        "/spec/rules/0/errors",
        json!({"httpStatuses": ["5xx", "429", "400-404"], "grpcCodes": ["UNAVAILABLE"]}),
    );
    let errors = f.convert().outbound.resources[0].breakers[0]
        .errors
        .clone()
        .unwrap();
    let ranges: Vec<(u32, u32)> = errors
        .http_statuses
        .iter()
        .map(|r| (r.from, r.to))
        .collect();
    assert_eq!(ranges, [(500, 599), (429, 429), (400, 404)]);
    assert_eq!(errors.grpc_codes, [14]);
}

#[test]
fn a_refused_lane_leaves_the_group_and_its_other_lanes_served() {
    let f = base()
        .with(json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "Lane", "metadata": {"name": "blue", "namespace": "shop"},
            "spec": {"group": "order-flow", "tag": "blue", "match": {"conditions": [{"source": "Query", "name": "v", "operator": "Regex", "value": "("}]}}}));
    let c = f.convert();
    let rejected: Vec<&Invalid> = c.rejected().collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].object.name, "blue");
    let lanes: Vec<&str> = c.lane_groups.resources[0]
        .lanes
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(lanes, ["gray"]);
}

#[test]
fn every_error_of_an_object_is_reported_at_once() {
    let c = base()
        .set(RATE, "/spec/rules/0/qps/threshold", json!(-1))
        .set(RATE, "/spec/rules/0/hotParams/0/window", json!("soon"))
        .convert();
    let rejected: Vec<&Invalid> = c.rejected().collect();
    let message = rejected[0].message();
    assert!(
        message.contains("spec.rules[0].qps.threshold: must be >= 0, got -1"),
        "{message}"
    );
    assert!(
        message.contains("spec.rules[0].hotParams[0].window: invalid duration \"soon\""),
        "{message}"
    );
    assert_eq!(
        rejected[0].to_string().split(" is invalid: ").next(),
        Some("RateLimitPolicy shop/limits")
    );
}

fn percentage_group() -> Fixture {
    base()
        .set(GROUP, "/spec/routingMode", json!("Percentage"))
        .remove(LANE, "/spec/match")
        .set(LANE, "/spec/weight", json!(60))
        .with(json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "Lane", "metadata": {"name": "zeta", "namespace": "shop"},
            "spec": {"group": "order-flow", "tag": "zeta", "weight": 50}}))
}

#[test]
fn percentage_weights_up_to_100_are_served() {
    let c = percentage_group()
        .set(5, "/spec/weight", json!(40))
        .convert();
    let rejected: Vec<&Invalid> = c.rejected().collect();
    assert!(rejected.is_empty(), "{rejected:#?}");
    let weights: Vec<u32> = c.lane_groups.resources[0]
        .lanes
        .iter()
        .map(|l| l.weight)
        .collect();
    assert_eq!(weights, [60, 40]);
}

/// The bad inputs: (what, fixture, refused kind, field, message fragment).
fn bad_inputs() -> Vec<(
    &'static str,
    Fixture,
    &'static str,
    &'static str,
    &'static str,
)> {
    vec![
        ("empty object name", base().set(RATE, "/metadata/name", json!("")), "RateLimitPolicy", "metadata.name", "required"),
        ("group without apps", base().set(GROUP, "/spec/apps", json!([])).set(GROUP, "/spec/entryApps", json!([])), "LaneGroup", "spec.apps", "must not be empty"),
        ("empty app name", base().set(GROUP, "/spec/apps/1", json!(" ")), "LaneGroup", "spec.apps[1]", "must not be empty"),
        ("duplicate app", base().set(GROUP, "/spec/apps/2", json!("a")), "LaneGroup", "spec.apps[2]", "duplicate app \"a\""),
        ("entry app outside apps", base().set(GROUP, "/spec/entryApps", json!(["z"])), "LaneGroup", "spec.entryApps[0]", "not listed in spec.apps"),
        ("tag header with a space", base().set(GROUP, "/spec/tagHeader", json!("x mse")), "LaneGroup", "spec.tagHeader", "invalid header name"),
        ("trace ttl of zero", base().set(GROUP, "/spec/propagation", json!({"traceTtl": "0s"})), "LaneGroup", "spec.propagation.traceTtl", "greater than zero"),
        ("lane naming a missing group", base().set(LANE, "/spec/group", json!("nope")), "Lane", "spec.group", "LaneGroup \"nope\" does not exist"),
        ("lane tag not a label value", base().set(LANE, "/spec/tag", json!("gray!")), "Lane", "spec.tag", "Kubernetes label value"),
        ("unknown operator", base().set(LANE, "/spec/match/conditions/0/operator", json!("Like")), "", "", ""),
        ("In without values", base().set(LANE, "/spec/match/conditions/0/operator", json!("In")), "Lane", "spec.match.conditions[0].values", "non-empty `values`"),
        ("invalid regex", base().set(LANE, "/spec/match/conditions/0/operator", json!("Regex")).set(LANE, "/spec/match/conditions/0/value", json!("a(b")), "Lane", "spec.match.conditions[0].value", "invalid regular expression \"a(b\""),
        ("percentage over 100", base().set(LANE, "/spec/match/conditions/0/operator", json!("Percentage")).set(LANE, "/spec/match/conditions/0/value", json!("101")), "Lane", "spec.match.conditions[0].value", "from 0 to 100"),
        ("content lane without conditions", base().remove(LANE, "/spec/match"), "Lane", "spec.match.conditions", "at least one match condition"),
        ("weight in a content group", base().set(LANE, "/spec/weight", json!(10)), "Lane", "spec.weight", "only when the group routes by Percentage"),
        ("lane weight over 100", percentage_group().set(LANE, "/spec/weight", json!(120)).set(5, "/spec/weight", json!(0)), "Lane", "spec.weight", "must be <= 100"),
        ("weight sum over 100", percentage_group(), "Lane", "spec.weight", "would sum to 110"),
        ("two lanes with one tag", base().with(json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "Lane", "metadata": {"name": "gray2", "namespace": "shop"},
            "spec": {"group": "order-flow", "tag": "gray", "match": {"conditions": [{"source": "Cookie", "name": "c", "operator": "Equal", "value": "1"}]}}})),
            "Lane", "spec.tag", "already uses tag \"gray\""),
        ("policy without rules", base().set(RATE, "/spec/rules", json!([])), "RateLimitPolicy", "spec.rules", "must not be empty"),
        ("duplicate rule names", base().set(RATE, "/spec/rules", json!([{"name": "r", "qps": {"threshold": 1}}, {"name": "r", "concurrency": {"max": 1}}])), "RateLimitPolicy", "spec.rules[1]", "duplicate rule name \"r\""),
        ("rule name with capitals", base().set(RATE, "/spec/rules/0/name", json!("Greet")), "RateLimitPolicy", "spec.rules[0].name", "lower-case"),
        ("negative qps threshold", base().set(RATE, "/spec/rules/0/qps/threshold", json!(-1)), "RateLimitPolicy", "spec.rules[0].qps.threshold", "must be >= 0, got -1"),
        ("threshold of the wrong type", base().set(RATE, "/spec/rules/0/hotParams/0/threshold", json!("lots")), "", "", ""),
        ("rule that limits nothing", base().set(RATE, "/spec/rules/0", json!({"name": "idle"})), "RateLimitPolicy", "spec.rules[0]", "set qps, concurrency or hotParams"),
        ("warm-up without period", base().set(RATE, "/spec/rules/0/qps/behavior", json!("WarmUp")), "RateLimitPolicy", "spec.rules[0].qps.warmUpPeriod", "required"),
        ("unparsable duration", base().set(RATE, "/spec/rules/0/qps/behavior", json!("WarmUp")).set(RATE, "/spec/rules/0/qps/warmUpPeriod", json!("10 seconds")), "RateLimitPolicy", "spec.rules[0].qps.warmUpPeriod", "invalid duration \"10 seconds\""),
        ("negative duration", base().set(RATE, "/spec/rules/0/hotParams/0/window", json!("-1s")), "RateLimitPolicy", "spec.rules[0].hotParams[0].window", "must not be negative"),
        ("overflowing duration", base().set(RATE, "/spec/rules/0/hotParams/0/window", json!("99999999999999999999h")), "RateLimitPolicy", "spec.rules[0].hotParams[0].window", "longer than the maximum of 24h"),
        ("duration over a day", base().set(BREAKER, "/spec/rules/0/openDuration", json!("24h0.5s")), "CircuitBreakerPolicy", "spec.rules[0].openDuration", "longer than the maximum of 24h"),
        ("qps threshold over the maximum", base().set(RATE, "/spec/rules/0/qps/threshold", json!(1e12)), "RateLimitPolicy", "spec.rules[0].qps.threshold", "must be <= 1000000000"),
        ("burst over the maximum", base().set(RATE, "/spec/rules/0/hotParams/0/burst", json!(2_000_000_000u32)), "RateLimitPolicy", "spec.rules[0].hotParams[0].burst", "must be <= 1000000000"),
        ("concurrency over the maximum", base().set(RATE, "/spec/rules/0/concurrency", json!({"max": 4_000_000_000u32})), "RateLimitPolicy", "spec.rules[0].concurrency.max", "must be <= 1000000000"),
        ("minRequests over the maximum", base().set(BREAKER, "/spec/rules/0/minRequests", json!(u32::MAX)), "CircuitBreakerPolicy", "spec.rules[0].minRequests", "must be <= 1000000000"),
        ("maxTrackedValues over the maximum", base().set(RATE, "/spec/rules/0/hotParams/0/maxTrackedValues", json!(1_000_000_000u32)), "RateLimitPolicy", "spec.rules[0].hotParams[0].maxTrackedValues", "must be <= 1000000"),
        ("concurrency beyond u32", base().set(RATE, "/spec/rules/0/concurrency", json!({"max": 4_294_967_296u64})), "", "", ""),
        ("maxQueueTime without Queue", base().set(RATE, "/spec/rules/0/qps/maxQueueTime", json!("1s")), "RateLimitPolicy", "spec.rules[0].qps.maxQueueTime", "only with behavior Queue"),
        ("header hot param without name", base().remove(RATE, "/spec/rules/0/hotParams/0/name"), "RateLimitPolicy", "spec.rules[0].hotParams[0].name", "required"),
        ("ClientIP hot param with a name", base().set(RATE, "/spec/rules/0/hotParams/0/source", json!("ClientIP")), "RateLimitPolicy", "spec.rules[0].hotParams[0].name", "takes no name"),
        ("duplicate override", base().set(RATE, "/spec/rules/0/hotParams/0/overrides", json!([{"value": "vip", "threshold": 50}, {"value": "vip", "threshold": 9}])), "RateLimitPolicy", "spec.rules[0].hotParams[0].overrides[1]", "duplicate override value"),
        ("relative exact path", base().set(RATE, "/spec/rules/0/match/paths/0", json!({"exact": "greet"})), "RateLimitPolicy", "spec.rules[0].match.paths[0].exact", "must start with /"),
        ("two kinds of path match", base().set(RATE, "/spec/rules/0/match/paths/0", json!({"exact": "/a", "prefix": "/a"})), "RateLimitPolicy", "spec.rules[0].match.paths[0]", "only one of exact, prefix or regex"),
        ("invalid path regex", base().set(RATE, "/spec/rules/0/match/paths/0", json!({"regex": "/(a"})), "RateLimitPolicy", "spec.rules[0].match.paths[0].regex", "invalid regular expression"),
        ("fallback status out of range", base().set(RATE, "/spec/rules/0/fallback/status", json!(99)), "RateLimitPolicy", "spec.rules[0].fallback.status", "must be 200..599"),
        ("redirect with status 200", base().set(RATE, "/spec/rules/0/fallback/redirect", json!("https://x/")).set(RATE, "/spec/rules/0/fallback/status", json!(200)), "RateLimitPolicy", "spec.rules[0].fallback.status", "redirect answers 302"),
        ("fallback header with a newline", base().set(RATE, "/spec/rules/0/fallback/headers", json!({"retry-after": "1\r\nx: y"})), "RateLimitPolicy", "spec.rules[0].fallback.headers.retry-after", "CR, LF or NUL"),
        ("breaker ratio of 0", base().set(BREAKER, "/spec/rules/0/threshold", json!(0)), "CircuitBreakerPolicy", "spec.rules[0].threshold", "ratio in (0, 1], got 0"),
        ("breaker ratio over 1", base().set(BREAKER, "/spec/rules/0/threshold", json!(1.5)), "CircuitBreakerPolicy", "spec.rules[0].threshold", "ratio in (0, 1], got 1.5"),
        ("fractional error count", base().set(BREAKER, "/spec/rules/0/strategy", json!("ErrorCount")).remove(BREAKER, "/spec/rules/0/slowRequestDuration").set(BREAKER, "/spec/rules/0/threshold", json!(2.5)), "CircuitBreakerPolicy", "spec.rules[0].threshold", "whole number >= 1"),
        ("slow ratio without slow duration", base().remove(BREAKER, "/spec/rules/0/slowRequestDuration"), "CircuitBreakerPolicy", "spec.rules[0].slowRequestDuration", "required"),
        ("zero half-open probes", base().set(BREAKER, "/spec/rules/0/halfOpenProbes", json!(0)), "CircuitBreakerPolicy", "spec.rules[0].halfOpenProbes", "must be >= 1"),
        ("open duration of zero", base().set(BREAKER, "/spec/rules/0/openDuration", json!("0ms")), "CircuitBreakerPolicy", "spec.rules[0].openDuration", "greater than zero"),
        ("unknown HTTP status class", base().set(BREAKER, "/spec/rules/0/errors", json!({"httpStatuses": ["6xx"]})), "CircuitBreakerPolicy", "spec.rules[0].errors.httpStatuses[0]", "invalid HTTP status \"6xx\""),
        ("inverted status range", base().set(BREAKER, "/spec/rules/0/errors", json!({"httpStatuses": ["504-500"]})), "CircuitBreakerPolicy", "spec.rules[0].errors.httpStatuses[0]", "invalid HTTP status"),
        ("cpu threshold of 0", base().set(OVERLOAD, "/spec/cpuThreshold", json!(0)), "OverloadProtectionPolicy", "spec.cpuThreshold", "ratio in (0, 1]"),
        ("cpu threshold over 1", base().set(OVERLOAD, "/spec/cpuThreshold", json!(1.2)), "OverloadProtectionPolicy", "spec.cpuThreshold", "got 1.2"),
        ("second overload policy for one app", base().with(json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": "OverloadProtectionPolicy",
            "metadata": {"name": "cpu2", "namespace": "shop"}, "spec": {"app": "a", "cpuThreshold": 0.9}})), "OverloadProtectionPolicy", "spec.app", "already protected by OverloadProtectionPolicy \"cpu\""),
    ]
}

#[test]
fn each_bad_input_is_refused_with_a_clear_error_naming_its_field() {
    let cases = bad_inputs();
    assert!(cases.len() >= 20);
    for (what, fixture, kind, field, fragment) in cases {
        if kind.is_empty() {
            continue; // refused while parsing: see the next test
        }
        let outcome = std::panic::catch_unwind(|| fixture.refused(kind, field, fragment));
        assert!(outcome.is_ok(), "case {what:?} failed");
    }
}

#[test]
fn values_outside_the_schema_are_refused_while_parsing_with_the_object_named() {
    let cases = bad_inputs().into_iter().filter(|c| c.2.is_empty());
    for (what, fixture, ..) in cases {
        let yaml: Vec<String> = fixture
            .docs
            .iter()
            .map(|d| serde_yaml::to_string(d).unwrap())
            .collect();
        let err = Manifest::from_yaml(&yaml.join("---\n"))
            .map(|_| ())
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("does not match its schema"), "{what}: {text}");
    }
}

#[test]
fn lanes_of_an_invalid_group_say_so_rather_than_that_it_is_missing() {
    let c = base()
        .set(GROUP, "/spec/apps", json!([]))
        .set(GROUP, "/spec/entryApps", json!([]))
        .convert();
    let lane = c.rejected().find(|i| i.object.kind == "Lane").unwrap();
    assert!(
        lane.message()
            .contains("LaneGroup \"order-flow\" is invalid"),
        "{lane}"
    );
}

#[test]
fn a_non_finite_threshold_is_refused() {
    // JSON and so the API server cannot carry NaN; Rust callers can.
    let mut m = base().manifest();
    m.rate_limits[0].spec.rules[0]
        .qps
        .as_mut()
        .unwrap()
        .threshold = f64::NAN;
    let built = inbound_policies(&m.rate_limits, &[], &|_, _| 1);
    let invalid = &built.rejected[0];
    assert!(
        invalid
            .message()
            .contains("spec.rules[0].qps.threshold: must be a finite number"),
        "{invalid}"
    );
    m.overloads[0].spec.cpu_threshold = f64::INFINITY;
    let built = inbound_policies(&[], &m.overloads, &|_, _| 1);
    assert!(built.rejected[0].names_field("spec.cpuThreshold"));
}
