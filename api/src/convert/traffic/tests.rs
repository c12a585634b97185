//! TrafficPolicy conversion: defaults, rule inheritance, what `retryOn` expands to, refusals
//! by field path, one policy per app.

use std::time::Duration;

use crate::convert::{Converted, manifest};
use crate::manifest::Manifest;
use crate::proto;

fn convert(yaml: &str) -> Converted {
    manifest(&Manifest::from_yaml(yaml).unwrap(), &|_, _| 1)
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: lanemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: tp, namespace: shop}}\nspec: {spec}\n"
    )
}

fn secs(d: &Option<prost_types::Duration>) -> Duration {
    Duration::try_from(d.unwrap()).unwrap()
}

fn only(c: &Converted) -> &proto::OutboundPolicy {
    assert!(c.outbound.rejected.is_empty(), "{:?}", c.outbound.rejected);
    assert_eq!(c.outbound.resources.len(), 1);
    &c.outbound.resources[0]
}

fn refusals(c: &Converted) -> Vec<String> {
    c.outbound
        .rejected
        .iter()
        .flat_map(|i| i.errors.iter().map(ToString::to_string))
        .collect()
}

#[test]
fn the_seed_policy_converts_with_documented_defaults() {
    let c = convert(&policy("{app: b, timeout: 1s, retries: {attempts: 1}}"));
    let p = only(&c);
    assert_eq!((p.name.as_str(), p.app.as_str()), ("shop/b", "b"));
    assert_eq!(p.traffic_policy, "tp");
    assert_eq!(
        p.routes.len(),
        1,
        "the policy's defaults as one catch-all route"
    );
    let route = &p.routes[0];
    assert_eq!(route.name, "tp");
    assert_eq!(route.r#match, Some(proto::RouteMatch::default()));
    assert_eq!(secs(&route.timeout), Duration::from_secs(1));
    let r = route.retries.as_ref().unwrap();
    assert_eq!(r.attempts, 1);
    assert!(r.on_connect_failure && r.on_reset && !r.on_timeout && !r.non_idempotent);
    assert_eq!(r.http_statuses, [proto::StatusRange { from: 503, to: 503 }]);
    assert_eq!(r.grpc_codes, [1, 14]);
    assert_eq!(secs(&r.backoff_base), Duration::from_millis(25));
    assert_eq!(secs(&r.backoff_max), Duration::from_millis(250));
    let budget = p.retry_budget.as_ref().unwrap();
    assert_eq!(budget.ratio, 0.2);
    assert_eq!(budget.min_per_second, 10);
    assert_eq!(secs(&budget.ttl), Duration::from_secs(10));
    assert_eq!(p.warmup, None);
}

#[test]
fn rules_come_first_and_inherit_what_they_leave_unset() {
    let c = convert(&policy(
        r#"
  app: b
  timeout: 1s
  retries: {attempts: 2, retryOn: [5xx, per-try-timeout], perTryTimeout: 300ms, grpcCodes: [ABORTED]}
  rules:
  - {name: report, match: {paths: [{prefix: /report}]}, timeout: 10s}
  - {name: pay, match: {methods: [POST]}, retries: {attempts: 0}}
  - name: put
    match: {methods: [PUT]}
    retries: {attempts: 1, retryOn: [gateway-error], httpStatuses: ["429"], retryNonIdempotent: true, backoff: {baseInterval: 100ms}}
  warmup: {duration: 2m, aggression: 2, minWeightPercent: 5}"#,
    ));
    let p = only(&c);
    let names: Vec<&str> = p.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["tp/report", "tp/pay", "tp/put", "tp"]);
    let [report, pay, put, default] = &p.routes[..] else {
        unreachable!()
    };
    assert_eq!(secs(&report.timeout), Duration::from_secs(10));
    assert_eq!(
        report.retries, default.retries,
        "inherits the policy's retries"
    );
    assert_eq!(
        secs(&pay.timeout),
        Duration::from_secs(1),
        "inherits the timeout"
    );
    assert_eq!(
        pay.retries, None,
        "attempts 0 turns retries off for the rule"
    );
    let d = default.retries.as_ref().unwrap();
    assert!(d.on_connect_failure && d.on_reset && d.on_timeout);
    assert_eq!(d.http_statuses, [proto::StatusRange { from: 500, to: 599 }]);
    assert_eq!(d.grpc_codes, [10], "only what was named");
    assert_eq!(secs(&d.per_try_timeout), Duration::from_millis(300));
    let u = put.retries.as_ref().unwrap();
    assert_eq!(
        u.http_statuses,
        [
            proto::StatusRange { from: 502, to: 504 },
            proto::StatusRange { from: 429, to: 429 }
        ]
    );
    assert!(u.non_idempotent && !u.on_timeout);
    assert_eq!(secs(&u.backoff_max), Duration::from_secs(1), "10 x base");
    let w = p.warmup.as_ref().unwrap();
    assert_eq!(secs(&w.duration), Duration::from_secs(120));
    assert_eq!((w.aggression, w.min_weight), (2.0, 0.05));
}

#[test]
fn bad_fields_are_refused_by_path_and_nothing_of_the_policy_is_served() {
    let c = convert(&policy(
        r#"
  app: b
  timeout: 0s
  retries: {attempts: 11, retryOn: [per-try-timeout], httpStatuses: ["700"], backoff: {baseInterval: 1s, maxInterval: 10ms}}
  rules: [{name: Bad_Name, timeout: soon}]
  retryBudget: {ratio: -1, ttl: 5m}
  warmup: {duration: 1m, aggression: 0, minWeightPercent: 0}"#,
    ));
    assert!(c.outbound.resources.is_empty());
    let errors = refusals(&c);
    for field in [
        "spec.timeout",
        "spec.retries.attempts",
        "spec.retries.retryOn",
        "spec.retries.httpStatuses[0]",
        "spec.retries.backoff.maxInterval",
        "spec.rules[0].name",
        "spec.rules[0].timeout",
        "spec.retryBudget.ratio",
        "spec.retryBudget.ttl",
        "spec.warmup.aggression",
        "spec.warmup.minWeightPercent",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{field}:"))),
            "no error for {field} in {errors:#?}"
        );
    }
}

#[test]
fn one_traffic_policy_per_app_and_breakers_share_the_resource() {
    let yaml = format!(
        "{}---\n{}---\n{}",
        policy("{app: b, timeout: 1s}"),
        policy("{app: b, timeout: 2s}").replace("name: tp", "name: tq"),
        r#"apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: cb, namespace: shop}
spec:
  app: b
  rules: [{name: errors, strategy: ErrorRatio, threshold: 0.5}]
"#
    );
    let c = convert(&yaml);
    assert_eq!(c.outbound.resources.len(), 1);
    let p = &c.outbound.resources[0];
    assert_eq!(p.traffic_policy, "tp", "the first by name wins");
    assert_eq!(p.breakers.len(), 1);
    assert_eq!(secs(&p.routes[0].timeout), Duration::from_secs(1));
    let errors = refusals(&c);
    assert_eq!(c.outbound.rejected[0].object.name, "tq");
    assert!(
        errors[0].contains("spec.app") && errors[0].contains("already has TrafficPolicy \"tp\""),
        "{errors:?}"
    );
}

#[test]
fn a_policy_with_only_warmup_still_makes_a_resource() {
    let c = convert(&policy("{app: b, warmup: {duration: 30s}}"));
    let p = only(&c);
    assert!(p.routes.is_empty());
    let w = p.warmup.as_ref().unwrap();
    assert_eq!((w.aggression, w.min_weight), (1.0, 0.1));
}
