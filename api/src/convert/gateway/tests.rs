#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::manifest::Manifest;
use crate::proto::path_match::Kind as PathKind;
use crate::proto::value_match::Kind as ValueKind;

fn convert(yaml: &str) -> Built<proto::GatewayRoute> {
    let m = Manifest::from_yaml(yaml).unwrap();
    gateway_routes(&m.http_routes, &m.ingresses, &m.gateways, DEFAULT_CLASS)
}

const GATEWAYS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec: {gatewayClassName: lanemesh, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec: {gatewayClassName: istio}
"#;

fn route(spec: &str, annotations: &str) -> String {
    format!(
        "{GATEWAYS}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop, annotations: {{{annotations}}}}}\nspec:\n{spec}\n"
    )
}

#[test]
fn an_httproute_converts_every_field_kind() {
    let built = convert(&route(
        r#"
  parentRefs: [{name: edge}]
  hostnames: [Shop.Example.com, "*.example.org"]
  rules:
  - matches:
    - path: {type: Exact, value: /a}
      method: get
    - path: {type: PathPrefix, value: /api/}
      headers: [{name: Canary, value: gray}, {type: RegularExpression, name: x-user, value: "u[0-9]+"}]
      queryParams: [{name: v, value: "2"}]
    - path: {type: RegularExpression, value: "/r/[a-z]+"}
    backendRefs: [{name: a, port: 8080, weight: 90}, {name: a-v2, port: 8080, weight: 10}]
  - backendRefs: [{name: b, port: 80}]
"#,
        "",
    ));
    assert!(built.rejected.is_empty(), "{:?}", built.rejected);
    let [r] = built.resources.as_slice() else {
        panic!("{built:?}")
    };
    assert_eq!(r.name, "shop/HTTPRoute/r");
    assert!(!r.trust_lane_tags);
    assert!(r.lane_weights.is_empty());
    let first = &r.rules[0];
    assert_eq!(first.hostnames, ["shop.example.com", "*.example.org"]);
    assert_eq!(
        first.matches[0].path.as_ref().unwrap().kind,
        Some(PathKind::Exact("/a".into()))
    );
    assert_eq!(first.matches[0].method, "GET");
    assert_eq!(
        first.matches[1].path.as_ref().unwrap().kind,
        Some(PathKind::Prefix("/api".into())),
        "a prefix matches segments: the trailing slash is dropped"
    );
    assert_eq!(first.matches[1].headers[0].name, "canary");
    assert_eq!(
        first.matches[1].headers[0].kind,
        Some(ValueKind::Exact("gray".into()))
    );
    assert_eq!(
        first.matches[1].headers[1].kind,
        Some(ValueKind::Regex("u[0-9]+".into()))
    );
    assert_eq!(first.matches[1].query_params[0].name, "v");
    assert_eq!(
        first.matches[2].path.as_ref().unwrap().kind,
        Some(PathKind::Regex("/r/[a-z]+".into()))
    );
    let backends: Vec<(&str, u32, u32)> = first
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(backends, [("shop/a", 8080, 90), ("shop/a-v2", 8080, 10)]);
    // No matches: every request; weight defaults to 1.
    assert!(r.rules[1].matches.is_empty());
    assert_eq!(r.rules[1].backends[0].weight, 1);
}

#[test]
fn only_routes_of_lanemesh_gateways_are_converted() {
    let other = route(
        "  parentRefs: [{name: other}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]",
        "",
    );
    assert_eq!(
        convert(&other),
        Built::default(),
        "another class's route is neither served nor refused"
    );
    let missing = route(
        "  parentRefs: [{name: nowhere}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]",
        "",
    );
    assert!(convert(&missing).resources.is_empty());
    let cross = route(
        "  parentRefs: [{name: edge, namespace: shop, kind: Gateway}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]",
        "",
    );
    assert_eq!(convert(&cross).resources.len(), 1);
}

#[test]
fn annotations_set_edge_trust_and_route_lane_weights() {
    let built = convert(&route(
        "  parentRefs: [{name: edge}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]",
        r#""lanemesh.io/trust-lane-tags": "true", "lanemesh.io/lane-weights": "gray=30, blue=10""#,
    ));
    let r = &built.resources[0];
    assert!(r.trust_lane_tags);
    assert_eq!(
        r.lane_weights,
        BTreeMap::from([("blue".into(), 10), ("gray".into(), 30)])
    );
}

#[test]
fn bad_annotations_are_refused_with_their_field() {
    for (value, expect) in [
        (
            r#""lanemesh.io/lane-weights": "gray=80,blue=30""#,
            "sum to more than 100",
        ),
        (r#""lanemesh.io/lane-weights": "gray""#, "tag=percent"),
        (r#""lanemesh.io/lane-weights": "gray=101""#, "from 0 to 100"),
        (
            r#""lanemesh.io/lane-weights": "gray=1,gray=2""#,
            "duplicate lane tag",
        ),
        (
            r#""lanemesh.io/trust-lane-tags": "yes""#,
            "\"true\" or \"false\"",
        ),
    ] {
        let built = convert(&route(
            "  parentRefs: [{name: edge}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]",
            value,
        ));
        let [invalid] = built.rejected.as_slice() else {
            panic!("{value}: {built:?}")
        };
        assert!(
            invalid.errors[0]
                .field
                .starts_with("metadata.annotations.lanemesh.io/"),
            "{invalid}"
        );
        assert!(invalid.to_string().contains(expect), "{value}: {invalid}");
        assert!(built.resources.is_empty());
    }
}

#[test]
fn unsupported_or_invalid_route_fields_are_refused_by_path() {
    let built = convert(&route(
        r#"
  parentRefs: [{name: edge}]
  hostnames: ["bad host"]
  rules:
  - matches: [{path: {type: Fancy, value: /}, headers: [{name: "bad header", value: x}], method: "G T"}]
    filters: [{type: RequestHeaderModifier}]
    backendRefs:
    - {name: a}
    - {name: b, port: 80, namespace: elsewhere}
    - {name: c, port: 80, kind: Bucket, group: example.com}
    - {name: d, port: 70000, weight: -1}
  - matches: [{path: {type: RegularExpression, value: "(("}}]
    backendRefs: []
"#,
        "",
    ));
    let [invalid] = built.rejected.as_slice() else {
        panic!("{built:?}")
    };
    let fields: Vec<&str> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "spec.hostnames[0]",
        "spec.rules[0].filters",
        "spec.rules[0].matches[0].path.type",
        "spec.rules[0].matches[0].headers[0].name",
        "spec.rules[0].matches[0].method",
        "spec.rules[0].backendRefs[0].port",
        "spec.rules[0].backendRefs[1].namespace",
        "spec.rules[0].backendRefs[2].kind",
        "spec.rules[0].backendRefs[3].port",
        "spec.rules[0].backendRefs[3].weight",
        "spec.rules[1].matches[0].path.value",
        "spec.rules[1].backendRefs",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    assert!(invalid.to_string().contains("ReferenceGrant"), "{invalid}");
}

#[test]
fn an_ingress_of_the_class_converts_paths_hosts_and_default_backend() {
    let built = convert(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop, annotations: {lanemesh.io/lane-weights: "gray=20"}}
spec:
  ingressClassName: lanemesh
  defaultBackend: {service: {name: fallback, port: {number: 80}}}
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /a, pathType: Exact, backend: {service: {name: a, port: {number: 8080}}}}
      - {path: /b/, pathType: Prefix, backend: {service: {name: b, port: {name: http}}}}
      - {path: /c, pathType: ImplementationSpecific, backend: {service: {name: c, port: {number: 81}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: legacy, namespace: shop, annotations: {kubernetes.io/ingress.class: lanemesh}}
spec:
  rules: [{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: nginx, namespace: shop}
spec:
  ingressClassName: nginx
  rules: [{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}}]
"#,
    );
    assert!(built.rejected.is_empty(), "{:?}", built.rejected);
    let names: Vec<&str> = built.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop/Ingress/legacy", "shop/Ingress/web"]);
    let web = &built.resources[1];
    assert_eq!(web.lane_weights.get("gray"), Some(&20));
    type Row<'a> = (Vec<String>, Option<PathKind>, &'a str, u32, &'a str);
    let rules: Vec<Row<'_>> = web
        .rules
        .iter()
        .map(|r| {
            let b = &r.backends[0];
            (
                r.hostnames.clone(),
                r.matches
                    .first()
                    .and_then(|m| m.path.clone())
                    .and_then(|p| p.kind),
                b.service.as_str(),
                b.port,
                b.port_name.as_str(),
            )
        })
        .collect();
    let host = || vec!["shop.example.com".to_owned()];
    assert_eq!(
        rules,
        [
            (
                host(),
                Some(PathKind::Exact("/a".into())),
                "shop/a",
                8080,
                ""
            ),
            (
                host(),
                Some(PathKind::Prefix("/b".into())),
                "shop/b",
                0,
                "http"
            ),
            (
                host(),
                Some(PathKind::Prefix("/c".into())),
                "shop/c",
                81,
                ""
            ),
            (vec![], None, "shop/fallback", 80, ""),
        ]
    );
}

#[test]
fn a_bad_ingress_is_refused_by_path() {
    let built = convert(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  ingressClassName: lanemesh
  rules:
  - host: "-bad-"
    http:
      paths:
      - {path: a, pathType: Weird, backend: {service: {name: a, port: {}}}}
      - {path: /r, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}
"#,
    );
    let [invalid] = built.rejected.as_slice() else {
        panic!("{built:?}")
    };
    let fields: Vec<&str> = invalid.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].host",
            "spec.rules[0].http.paths[0].path",
            "spec.rules[0].http.paths[0].pathType",
            "spec.rules[0].http.paths[0].backend.service.port",
            "spec.rules[0].http.paths[1].backend.service",
        ]
    );
}
