#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use lanemesh_api::proto;
use rand::SeedableRng;

use super::*;

fn path(kind: proto::path_match::Kind) -> Option<proto::PathMatch> {
    Some(proto::PathMatch { kind: Some(kind) })
}

fn prefix(p: &str) -> proto::HttpRequestMatch {
    proto::HttpRequestMatch {
        path: path(proto::path_match::Kind::Prefix(p.into())),
        ..Default::default()
    }
}

fn backend(service: &str, weight: u32) -> proto::Backend {
    proto::Backend {
        service: service.into(),
        port: 80,
        port_name: String::new(),
        weight,
    }
}

fn rule(hosts: &[&str], matches: Vec<proto::HttpRequestMatch>, to: &str) -> proto::GatewayRule {
    proto::GatewayRule {
        hostnames: hosts.iter().map(|h| (*h).to_owned()).collect(),
        matches,
        backends: vec![backend(to, 1)],
    }
}

fn route(name: &str, created: &str, rules: Vec<proto::GatewayRule>) -> proto::GatewayRoute {
    proto::GatewayRoute {
        name: name.into(),
        namespace: "shop".into(),
        rules,
        trust_lane_tags: false,
        lane_weights: BTreeMap::new(),
        created: created.into(),
    }
}

fn table(routes: &[proto::GatewayRoute]) -> GatewayTable {
    GatewayTable::new(
        routes
            .iter()
            .map(|r| Arc::new(GatewayRouteConfig::try_from(r).unwrap())),
    )
}

/// The first backend of the rule `method uri` (with `headers`) goes by, on `host`.
fn to(
    t: &GatewayTable,
    host: Option<&str>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let uri: http::Uri = uri.parse().unwrap();
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let view = RequestView::new(&uri, &map);
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let matched = t.route(host, &method, &view, uri.path())?;
    Some(matched.rule.backends[0].1.service.clone())
}

#[test]
fn prefixes_match_whole_segments_and_the_longest_wins() {
    let t = table(&[route(
        "shop/HTTPRoute/r",
        "",
        vec![
            rule(&[], vec![prefix("/")], "root"),
            rule(&[], vec![prefix("/a")], "a"),
            rule(&[], vec![prefix("/a/b")], "ab"),
        ],
    )]);
    assert_eq!(to(&t, None, "GET", "/a", &[]).as_deref(), Some("a"));
    assert_eq!(to(&t, None, "GET", "/a/x", &[]).as_deref(), Some("a"));
    assert_eq!(to(&t, None, "GET", "/a/b/c", &[]).as_deref(), Some("ab"));
    assert_eq!(
        to(&t, None, "GET", "/ab", &[]).as_deref(),
        Some("root"),
        "/a is no prefix of /ab"
    );
}

#[test]
fn exact_beats_regex_beats_prefix_then_method_headers_and_query_count() {
    use proto::path_match::Kind;
    let m = |p, method: &str, headers: Vec<(&str, &str)>, query: Vec<(&str, &str)>| {
        proto::HttpRequestMatch {
            path: path(p),
            method: method.into(),
            headers: headers
                .into_iter()
                .map(|(n, v)| proto::ValueMatch {
                    name: n.into(),
                    kind: Some(proto::value_match::Kind::Exact(v.into())),
                })
                .collect(),
            query_params: query
                .into_iter()
                .map(|(n, v)| proto::ValueMatch {
                    name: n.into(),
                    kind: Some(proto::value_match::Kind::Regex(v.into())),
                })
                .collect(),
        }
    };
    let t = table(&[route(
        "shop/HTTPRoute/r",
        "",
        vec![
            rule(
                &[],
                vec![m(Kind::Prefix("/x".into()), "", vec![], vec![])],
                "prefix",
            ),
            rule(
                &[],
                vec![m(Kind::Regex("/x/[0-9]+".into()), "", vec![], vec![])],
                "regex",
            ),
            rule(
                &[],
                vec![m(Kind::Exact("/x/1".into()), "", vec![], vec![])],
                "exact",
            ),
            rule(
                &[],
                vec![m(Kind::Prefix("/y".into()), "POST", vec![], vec![])],
                "post",
            ),
            rule(
                &[],
                vec![m(
                    Kind::Prefix("/y".into()),
                    "",
                    vec![("canary", "gray")],
                    vec![],
                )],
                "header",
            ),
            rule(
                &[],
                vec![m(
                    Kind::Prefix("/y".into()),
                    "",
                    vec![],
                    vec![("v", "[0-9]")],
                )],
                "query",
            ),
            rule(
                &[],
                vec![m(Kind::Prefix("/y".into()), "", vec![], vec![])],
                "plain",
            ),
        ],
    )]);
    assert_eq!(to(&t, None, "GET", "/x/1", &[]).as_deref(), Some("exact"));
    assert_eq!(to(&t, None, "GET", "/x/2", &[]).as_deref(), Some("regex"));
    assert_eq!(to(&t, None, "GET", "/x/z", &[]).as_deref(), Some("prefix"));
    assert_eq!(
        to(&t, None, "POST", "/y?v=1", &[("canary", "gray")]).as_deref(),
        Some("post")
    );
    assert_eq!(
        to(&t, None, "GET", "/y?v=1", &[("canary", "gray")]).as_deref(),
        Some("header")
    );
    assert_eq!(
        to(&t, None, "GET", "/y?v=1", &[("canary", "blue")]).as_deref(),
        Some("query")
    );
    assert_eq!(to(&t, None, "GET", "/y?v=x", &[]).as_deref(), Some("plain"));
}

#[test]
fn the_most_specific_host_wins_before_the_path() {
    let t = table(&[
        route(
            "shop/HTTPRoute/any",
            "",
            vec![rule(&[], vec![prefix("/deep/path")], "any")],
        ),
        route(
            "shop/HTTPRoute/wild",
            "",
            vec![rule(&["*.example.com"], vec![prefix("/")], "wild")],
        ),
        route(
            "shop/HTTPRoute/exact",
            "",
            vec![rule(&["shop.example.com"], vec![prefix("/")], "exact")],
        ),
    ]);
    assert_eq!(
        to(&t, Some("shop.example.com"), "GET", "/deep/path", &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(
        to(&t, Some("pay.example.com"), "GET", "/deep/path", &[]).as_deref(),
        Some("wild")
    );
    assert_eq!(
        to(&t, Some("example.com"), "GET", "/deep/path", &[]).as_deref(),
        Some("any"),
        "a wildcard needs a label in front"
    );
    assert_eq!(to(&t, None, "GET", "/other", &[]), None, "no route matches");
}

#[test]
fn the_older_route_wins_a_tie() {
    let t = table(&[
        route(
            "shop/HTTPRoute/a-new",
            "2026-02-01T00:00:00Z",
            vec![rule(&[], vec![prefix("/")], "new")],
        ),
        route(
            "shop/HTTPRoute/z-old",
            "2026-01-01T00:00:00Z",
            vec![rule(&[], vec![prefix("/")], "old")],
        ),
    ]);
    assert_eq!(to(&t, None, "GET", "/", &[]).as_deref(), Some("old"));
}

#[test]
fn backends_are_drawn_by_weight() {
    let mut r = route("shop/HTTPRoute/r", "", vec![rule(&[], vec![], "unused")]);
    r.rules[0].backends = vec![
        backend("shop/a", 3),
        backend("shop/b", 1),
        backend("shop/none", 0),
    ];
    let config = GatewayRouteConfig::try_from(&r).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..4000 {
        *counts
            .entry(config.rules[0].pick(&mut rng).unwrap().service.clone())
            .or_default() += 1;
    }
    let a = counts["shop/a"];
    assert!((2800..3200).contains(&a), "{counts:?}");
    assert!(!counts.contains_key("shop/none"), "weight 0 gets nothing");
    r.rules[0].backends = vec![backend("shop/a", 0)];
    let config = GatewayRouteConfig::try_from(&r).unwrap();
    assert!(config.rules[0].pick(&mut rng).is_none());
}

#[test]
fn bad_routes_are_refused_by_field() {
    let good = route(
        "shop/HTTPRoute/r",
        "",
        vec![rule(&[], vec![prefix("/")], "shop/a")],
    );
    let refused = |f: &dyn Fn(&mut proto::GatewayRoute)| {
        let mut r = good.clone();
        f(&mut r);
        GatewayRouteConfig::try_from(&r).unwrap_err().to_string()
    };
    assert!(refused(&|r| r.rules.clear()).contains("rules: must not be empty"));
    assert!(refused(&|r| r.rules[0].backends.clear()).contains("rules[0].backends"));
    assert!(
        refused(&|r| r.rules[0].backends[0].port = 70000).contains("rules[0].backends[0].port")
    );
    assert!(refused(&|r| r.rules[0].matches[0].path = path(proto::path_match::Kind::Regex("((".into()))).contains("rules[0].matches[0].path.regex"));
    assert!(
        refused(&|r| {
            r.lane_weights.insert("gray".into(), 80);
            r.lane_weights.insert("blue".into(), 30);
        })
        .contains("laneWeights")
    );
    let err = refused(&|r| r.rules[0].matches[0].method = "G T".into());
    assert!(
        err.starts_with("gateway route shop/HTTPRoute/r: rules[0].matches[0].method"),
        "{err}"
    );
}

#[test]
fn the_request_host_drops_port_and_case() {
    let req = |host: &str| {
        http::Request::get("/")
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    assert_eq!(
        request_host(&req("Shop.Example.com:8080")).as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(request_host(&req("[::1]:80")).as_deref(), Some("[::1]"));
    let h2 = http::Request::get("http://a.example/")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert_eq!(request_host(&h2).as_deref(), Some("a.example"));
}
