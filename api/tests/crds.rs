//! The committed CRDs: in sync with the Rust types, and their CEL rules
//! refuse what they should (evaluated here with kube's client-side CEL; the
//! cluster tier in `e2e/` shows a real API server doing the same).

// Test support: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_pass_by_value
)]

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use serde_json::{Value, json};

fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh/crds")
}

#[test]
fn committed_crds_match_what_crdgen_generates() {
    let rendered = lanemesh_api::crd::render().unwrap();
    for (file, yaml) in &rendered {
        let path = crd_dir().join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == *yaml,
            "{} is stale: run `cargo run -p lanemesh-api --bin crdgen` and commit the result",
            path.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(crd_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = rendered.into_iter().map(|(f, _)| f).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "charts/lanemesh/crds/ holds files crdgen does not write"
    );
}

#[test]
fn crds_are_namespaced_with_status_short_names_and_printer_columns() {
    for crd in lanemesh_api::crd::all() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.group, "lanemesh.io", "{name}");
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: no status"
        );
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert!(columns.iter().any(|c| c.name == "Accepted"), "{name}");
    }
}

/// The openAPIV3Schema of the committed CRD for `kind`.
fn schema(kind: &str) -> Value {
    let dir = crd_dir();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: Value = serde_yaml::from_str(&text).unwrap();
        if crd["spec"]["names"]["kind"] == kind {
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        }
    }
    panic!("no CRD for {kind} in {}", dir.display());
}

fn object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "lanemesh.io/v1alpha1", "kind": kind, "metadata": {"name": "x", "namespace": "d"}, "spec": spec})
}

/// `Ok` or the CEL messages.
fn cel(kind: &str, spec: Value, old_spec: Option<Value>) -> Result<(), String> {
    let old = old_spec.map(|s| object(kind, s));
    Validator::new()
        .validate(&schema(kind), &object(kind, spec), old.as_ref())
        .map_err(|errors| {
            errors
                .into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })
}

#[track_caller]
fn refused(kind: &str, spec: Value, fragment: &str) {
    let err = cel(kind, spec, None).expect_err("CEL accepted a bad object");
    assert!(err.contains(fragment), "{err:?} does not say {fragment:?}");
}

fn rule(extra: Value) -> Value {
    let mut rule = json!({"name": "r", "qps": {"threshold": 1, "behavior": "Reject"}});
    rule.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"app": "a", "rules": [rule]})
}

fn breaker(strategy: &str, threshold: Value, slow: Option<&str>) -> Value {
    let mut rule = json!({"name": "r", "strategy": strategy, "threshold": threshold});
    if let Some(slow) = slow {
        rule["slowRequestDuration"] = json!(slow);
    }
    json!({"app": "c", "rules": [rule]})
}

#[test]
fn routing_mode_is_immutable() {
    let spec = |mode| json!({"apps": ["a"], "routingMode": mode});
    assert_eq!(
        cel("LaneGroup", spec("Content"), Some(spec("Content"))),
        Ok(())
    );
    let err = cel("LaneGroup", spec("Percentage"), Some(spec("Content"))).unwrap_err();
    assert!(err.contains("routingMode is immutable"), "{err}");
}

#[test]
fn lane_group_rules() {
    assert_eq!(
        cel(
            "LaneGroup",
            json!({"apps": ["a", "b"], "entryApps": ["a"]}),
            None
        ),
        Ok(())
    );
    refused(
        "LaneGroup",
        json!({"apps": ["a"], "entryApps": ["z"]}),
        "every entry app must also be listed in apps",
    );
}

#[test]
fn match_condition_rules() {
    let lane = |condition: Value| json!({"group": "g", "tag": "gray", "match": {"conditions": [condition]}});
    let ok = json!({"source": "Header", "name": "canary", "operator": "Equal", "value": "gray"});
    assert_eq!(cel("Lane", lane(ok), None), Ok(()));
    let ok = json!({"source": "Header", "name": "u", "operator": "In", "values": ["1", "2"]});
    assert_eq!(cel("Lane", lane(ok), None), Ok(()));
    refused(
        "Lane",
        lane(json!({"source": "Header", "name": "u", "operator": "In", "value": "1"})),
        "non-empty `values`",
    );
    refused(
        "Lane",
        lane(json!({"source": "Header", "name": "u", "operator": "Equal", "values": ["1"]})),
        "single `value`",
    );
    refused(
        "Lane",
        lane(json!({"source": "Header", "name": "u", "operator": "Percentage", "value": "150"})),
        "integer `value` from 0 to 100",
    );
    assert_eq!(
        cel(
            "Lane",
            lane(json!({"source": "Header", "name": "u", "operator": "Percentage", "value": "30"})),
            None
        ),
        Ok(())
    );
}

#[test]
fn rate_limit_rules() {
    assert_eq!(cel("RateLimitPolicy", rule(json!({})), None), Ok(()));
    refused(
        "RateLimitPolicy",
        json!({"app": "a", "rules": [{"name": "r"}]}),
        "set qps, concurrency or hotParams",
    );
    refused(
        "RateLimitPolicy",
        rule(json!({"qps": {"threshold": 1, "behavior": "WarmUp"}})),
        "warmUpPeriod is required",
    );
    refused(
        "RateLimitPolicy",
        rule(json!({"qps": {"threshold": 1, "behavior": "Reject", "maxQueueTime": "1s"}})),
        "maxQueueTime is allowed only",
    );
    refused(
        "RateLimitPolicy",
        rule(json!({"hotParams": [{"source": "ClientIP", "name": "x", "threshold": 1}]})),
        "ClientIP and Host take none",
    );
    refused(
        "RateLimitPolicy",
        rule(json!({"hotParams": [{"source": "Header", "threshold": 1}]})),
        "need a name",
    );
    refused(
        "RateLimitPolicy",
        rule(json!({"match": {"paths": [{"exact": "/a", "prefix": "/a"}]}})),
        "exactly one of exact, prefix or regex",
    );
    refused(
        "RateLimitPolicy",
        rule(json!({"fallback": {"status": 200, "redirect": "https://x/"}})),
        "redirect answers 302",
    );
}

#[test]
fn circuit_breaker_rules() {
    assert_eq!(
        cel(
            "CircuitBreakerPolicy",
            breaker("SlowRequestRatio", json!(0.5), Some("200ms")),
            None
        ),
        Ok(())
    );
    assert_eq!(
        cel(
            "CircuitBreakerPolicy",
            breaker("ErrorRatio", json!(1), None),
            None
        ),
        Ok(())
    );
    assert_eq!(
        cel(
            "CircuitBreakerPolicy",
            breaker("ErrorCount", json!(5), None),
            None
        ),
        Ok(())
    );
    let ratio = "a ratio in (0, 1]";
    refused(
        "CircuitBreakerPolicy",
        breaker("ErrorRatio", json!(0), None),
        ratio,
    );
    refused(
        "CircuitBreakerPolicy",
        breaker("ErrorRatio", json!(1.5), None),
        ratio,
    );
    refused(
        "CircuitBreakerPolicy",
        breaker("ErrorCount", json!(0.5), None),
        "a count >= 1",
    );
    refused(
        "CircuitBreakerPolicy",
        breaker("SlowRequestRatio", json!(0.5), None),
        "slowRequestDuration is required",
    );
    refused(
        "CircuitBreakerPolicy",
        breaker("ErrorRatio", json!(0.5), Some("1s")),
        "allowed only there",
    );
}

#[test]
fn overload_cpu_threshold_is_a_ratio() {
    let spec = |t: Value| json!({"app": "a", "cpuThreshold": t});
    assert_eq!(
        cel("OverloadProtectionPolicy", spec(json!(0.8)), None),
        Ok(())
    );
    assert_eq!(
        cel("OverloadProtectionPolicy", spec(json!(1)), None),
        Ok(())
    );
    refused(
        "OverloadProtectionPolicy",
        spec(json!(0)),
        "cpuThreshold is a ratio in (0, 1]",
    );
    refused(
        "OverloadProtectionPolicy",
        spec(json!(1.2)),
        "cpuThreshold is a ratio in (0, 1]",
    );
}

/// kubectl and the API server read YAML 1.1, where unquoted `on`, `off`,
/// `yes`, `no`, `y` and `n` are booleans: a CRD (or an example) containing
/// one as a string value would be refused or mean something else.
#[test]
fn no_yaml_1_1_boolean_lookalikes_in_crds_or_examples() {
    let words = ["on", "off", "yes", "no", "y", "n"];
    let mut files: Vec<PathBuf> = std::fs::read_dir(crd_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut stack = vec![examples];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path)
            } else {
                files.push(path)
            }
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let value = line
                .trim()
                .trim_start_matches("- ")
                .rsplit(": ")
                .next()
                .unwrap_or_default()
                .trim();
            assert!(
                !words.contains(&value.to_ascii_lowercase().as_str()),
                "{}:{}: unquoted {value:?} is a boolean in YAML 1.1",
                file.display(),
                n + 1
            );
        }
    }
}

/// Every `(path, schema)` node of a JSON schema, depth first.
fn schema_nodes<'a>(path: String, schema: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), schema));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            schema_nodes(format!("{path}.{name}"), child, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            schema_nodes(format!("{path}[{key}]"), child, out);
        }
    }
}

#[test]
fn every_integer_is_bounded_and_every_duration_has_a_max_length() {
    // The API server checks minimum/maximum/maxLength, never `format`: an
    // unbounded uint32 field stores 4294967296, which no client can decode.
    let mut problems = Vec::new();
    let mut durations = 0;
    for crd in lanemesh_api::crd::all() {
        let name = crd.metadata.name.clone().unwrap();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let mut nodes = Vec::new();
        schema_nodes(name, &schema, &mut nodes);
        for (path, node) in nodes {
            let is = |k: &str, v: &str| node.get(k).and_then(Value::as_str) == Some(v);
            // int64 is what the API server itself decodes into.
            if is("type", "integer")
                && !is("format", "int64")
                && (node.get("minimum").is_none() || node.get("maximum").is_none())
            {
                problems.push(format!("{path}: integer without minimum and maximum"));
            }
            if is("type", "number")
                && node.get("maximum").is_none()
                && node.get("x-kubernetes-validations").is_none()
            {
                problems.push(format!("{path}: number without maximum or CEL rule"));
            }
            if is("pattern", lanemesh_api::crd::common::DURATION_PATTERN) {
                durations += 1;
                let max = node.get("maxLength").and_then(Value::as_u64);
                if max != Some(u64::from(lanemesh_api::limits::DURATION_MAX_LENGTH)) {
                    problems.push(format!("{path}: duration without maxLength"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(durations, 18, "every duration field was checked");
}
