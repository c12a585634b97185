use super::*;

fn source(name: &str, text: &str) -> Source {
    Source {
        name: name.into(),
        text: text.into(),
    }
}

const GROUP: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec: {apps: [a, b], entryApps: [a], routingMode: Content}
"#;

const LANE: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec:
  group: flow
  tag: gray
  enabled: true
  match: {logic: All, conditions: [{source: Header, name: canary, operator: Equal, value: gray}]}
"#;

#[test]
fn the_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut sources = Vec::new();
    for file in [
        "canary/apps.yaml",
        "canary/lanes.yaml",
        "rate-limit.yaml",
        "circuit-breaker.yaml",
        "overload.yaml",
        "resilience.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        sources.push(source(file, &text));
    }
    assert_eq!(check(&sources), Vec::new());
}

#[test]
fn a_lane_finds_its_group_in_another_file_and_is_refused_without_it() {
    assert_eq!(
        check(&[source("g.yaml", GROUP), source("l.yaml", LANE)]),
        Vec::new()
    );
    let problems = check(&[source("l.yaml", LANE)]);
    assert_eq!(
        problems,
        [Problem {
            file: "l.yaml".into(),
            object: "Lane shop/gray".into(),
            field: "spec.group".into(),
            message: r#"LaneGroup "flow" does not exist in this namespace"#.into(),
        }]
    );
}

#[test]
fn every_field_problem_of_an_object_is_listed_with_its_path() {
    let bad = r#"
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: limits}
spec:
  app: a
  rules:
  - name: r1
    match: {paths: [{regex: "("}]}
    qps: {threshold: 5, behavior: Reject}
  - name: r2
    qps: {threshold: -1, behavior: Reject}
"#;
    let problems = check(&[source("p.yaml", bad)]);
    assert!(problems.len() >= 2, "{problems:#?}");
    assert!(
        problems
            .iter()
            .all(|p| p.file == "p.yaml" && p.object == "RateLimitPolicy default/limits"),
        "{problems:#?}"
    );
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert!(
        fields
            .iter()
            .any(|f| f.starts_with("spec.rules[0].match.paths[0]")),
        "{fields:?}"
    );
    assert!(
        fields.iter().any(|f| f.starts_with("spec.rules[1]")),
        "{fields:?}"
    );
}

#[test]
fn a_document_that_is_not_an_object_names_its_file_and_position() {
    let problems = check(&[
        source("ok.yaml", GROUP),
        source(
            "broken.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\nkind: Lane\n",
        ),
        source(
            "unknown.yaml",
            "apiVersion: lanemesh.io/v1alpha1\nkind: Lanes\nmetadata: {name: x}\n",
        ),
        source(
            "shape.yaml",
            "apiVersion: lanemesh.io/v1alpha1\nkind: Lane\nmetadata: {name: x}\nspec: {tag: [1]}\n",
        ),
    ]);
    let got: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.file.as_str(), p.object.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("broken.yaml", "document 2"),
            ("unknown.yaml", "document 1"),
            ("shape.yaml", "document 1")
        ]
    );
    assert!(
        problems[0].message.contains("missing apiVersion or kind"),
        "{problems:#?}"
    );
    assert!(
        problems[1]
            .message
            .contains("unknown lanemesh kind \"Lanes\""),
        "{problems:#?}"
    );
    assert!(
        problems[2].message.contains("does not match its schema"),
        "{problems:#?}"
    );
}

#[test]
fn a_second_traffic_policy_for_an_app_is_refused_with_its_file() {
    let policy = |name: &str| {
        format!(
            "apiVersion: lanemesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{app: b, timeout: 1s}}\n"
        )
    };
    let problems = check(&[
        source("one.yaml", &policy("b-1")),
        source("two.yaml", &policy("b-2")),
    ]);
    assert_eq!(
        problems,
        [Problem {
            file: "two.yaml".into(),
            object: "TrafficPolicy shop/b-2".into(),
            field: "spec.app".into(),
            message: r#"app "b" already has TrafficPolicy "b-1""#.into(),
        }]
    );
}
