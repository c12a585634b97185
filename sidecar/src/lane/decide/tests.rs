use super::super::rules::tests::{cond, group, lane};
use super::*;
use http::HeaderValue;
use lanemesh_api::proto::{self, Operator as Op, Source as Src};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn config(logic: proto::Logic, conditions: Vec<proto::Condition>) -> LaneGroupConfig {
    let m = proto::Match {
        logic: logic as i32,
        conditions,
    };
    LaneGroupConfig::try_from(&group(
        "ns/g",
        &["a"],
        vec![lane("l", "gray", true, Some(m))],
    ))
    .unwrap()
}

fn request(uri: &str, headers: &[(&str, &str)]) -> (Uri, HeaderMap) {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    (uri.parse().unwrap(), map)
}

fn tag_of(c: &LaneGroupConfig, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
    let (uri, headers) = request(uri, headers);
    let mut rng = StdRng::seed_from_u64(1);
    c.decide(&RequestView::new(&uri, &headers), &mut rng)
        .tag
        .map(Cow::into_owned)
}

fn single(op: Op, value: &str) -> LaneGroupConfig {
    config(proto::Logic::All, vec![cond(Src::Header, "u", op, value)])
}

fn multi(op: Op, values: &[&str]) -> LaneGroupConfig {
    let mut c = cond(Src::Header, "u", op, "");
    c.values = values.iter().map(|v| (*v).to_owned()).collect();
    config(proto::Logic::All, vec![c])
}

#[test]
fn all_requires_every_condition_any_requires_one() {
    // DESIGN §4: All = every condition holds; Any = at least one.
    let conds = || {
        vec![
            cond(Src::Header, "x-a", Op::Equal, "1"),
            cond(Src::Query, "b", Op::Equal, "2"),
        ]
    };
    let all = config(proto::Logic::All, conds());
    let any = config(proto::Logic::Any, conds());
    assert_eq!(
        tag_of(&all, "/?b=2", &[("x-a", "1")]).as_deref(),
        Some("gray")
    );
    assert_eq!(tag_of(&all, "/?b=3", &[("x-a", "1")]), None);
    assert_eq!(tag_of(&all, "/?b=2", &[]), None);
    assert_eq!(
        tag_of(&any, "/?b=3", &[("x-a", "1")]).as_deref(),
        Some("gray")
    );
    assert_eq!(tag_of(&any, "/?b=2", &[]).as_deref(), Some("gray"));
    assert_eq!(tag_of(&any, "/?b=3", &[("x-a", "0")]), None);
}

#[test]
fn absent_key_is_false_even_for_negative_operators() {
    // DESIGN §4: a condition on an absent key is false (NotEqual/NotIn do not match it).
    let ne = single(Op::NotEqual, "gray");
    assert_eq!(tag_of(&ne, "/", &[]), None);
    assert_eq!(tag_of(&ne, "/", &[("u", "blue")]).as_deref(), Some("gray"));
    assert_eq!(tag_of(&ne, "/", &[("u", "gray")]), None);
    let not_in = multi(Op::NotIn, &["x", "y"]);
    assert_eq!(tag_of(&not_in, "/", &[]), None);
    assert_eq!(tag_of(&not_in, "/", &[("u", "z")]).as_deref(), Some("gray"));
    assert_eq!(tag_of(&not_in, "/", &[("u", "y")]), None);
}

#[test]
fn every_operator() {
    // DESIGN §3: Equal | NotEqual | In | NotIn | Prefix | Regex | Percentage.
    let eq = single(Op::Equal, "gray");
    assert!(tag_of(&eq, "/", &[("u", "gray")]).is_some());
    assert!(
        tag_of(&eq, "/", &[("u", "Gray")]).is_none(),
        "values are case-sensitive"
    );
    let within = multi(Op::In, &["a", "b"]);
    assert!(tag_of(&within, "/", &[("u", "b")]).is_some());
    assert!(tag_of(&within, "/", &[("u", "c")]).is_none());
    let prefix = single(Op::Prefix, "vip-");
    assert!(tag_of(&prefix, "/", &[("u", "vip-42")]).is_some());
    assert!(tag_of(&prefix, "/", &[("u", "x-vip-42")]).is_none());
    let regex = single(Op::Regex, "[0-9]+");
    assert!(tag_of(&regex, "/", &[("u", "123")]).is_some());
    assert!(tag_of(&regex, "/", &[("u", "123a")]).is_none(), "anchored");
    // Percentage: fnv1a64("a") = 0xaf63dc4c8601ec8c (published vector), which is 96 mod 100
    // (computed independently), so "a" is inside a 97% lane and outside a 96% one.
    let mut p = cond(Src::Header, "u", Op::Percentage, "");
    p.percent = 97;
    let p97 = config(proto::Logic::All, vec![p.clone()]);
    p.percent = 96;
    let p96 = config(proto::Logic::All, vec![p]);
    assert!(tag_of(&p97, "/", &[("u", "a")]).is_some());
    assert!(tag_of(&p96, "/", &[("u", "a")]).is_none());
}

#[test]
fn percentage_operator_is_deterministic_and_proportional() {
    // DESIGN §4: fnv1a64(value) % 100 < n, deterministic per key.
    let mut p = cond(Src::Header, "u", Op::Percentage, "");
    p.percent = 30;
    let c = config(proto::Logic::All, vec![p]);
    let mut inside = 0;
    for i in 0..2_000 {
        let user = format!("user-{i}");
        let first = tag_of(&c, "/", &[("u", &user)]);
        // Same key, same answer, whatever the rng.
        for _ in 0..3 {
            assert_eq!(tag_of(&c, "/", &[("u", &user)]), first);
        }
        let expected = fnv1a64(user.as_bytes()) % 100 < 30;
        assert_eq!(first.is_some(), expected);
        inside += usize::from(expected);
    }
    assert!(
        (500..700).contains(&inside),
        "{inside} of 2000 in a 30% lane"
    );
}

#[test]
fn sources_header_query_cookie() {
    // DESIGN §3: condition sources Header | Query | Cookie.
    let h = config(
        proto::Logic::All,
        vec![cond(Src::Header, "X-User", Op::Equal, "v")],
    );
    assert!(
        tag_of(&h, "/", &[("x-user", "v")]).is_some(),
        "header names case-insensitive"
    );
    let q = config(
        proto::Logic::All,
        vec![cond(Src::Query, "name", Op::Equal, "a b/é")],
    );
    assert!(tag_of(&q, "/p?x=1&name=a+b%2F%C3%A9&name=other", &[]).is_some());
    assert!(
        tag_of(&q, "/p?Name=a+b%2F%C3%A9", &[]).is_none(),
        "query names keep case"
    );
    let flag = config(
        proto::Logic::All,
        vec![cond(Src::Query, "debug", Op::Equal, "")],
    );
    assert!(
        tag_of(&flag, "/?debug", &[]).is_some(),
        "a bare parameter is present and empty"
    );
    let c = config(
        proto::Logic::All,
        vec![cond(Src::Cookie, "lane", Op::Equal, "gray")],
    );
    assert!(tag_of(&c, "/", &[("cookie", "a=1; lane=gray; b=2")]).is_some());
    assert!(tag_of(&c, "/", &[("cookie", "a=1"), ("cookie", "lane=\"gray\"")]).is_some());
    assert!(tag_of(&c, "/", &[("cookie", "xlane=gray")]).is_none());
    assert!(
        tag_of(&c, "/", &[("cookie", "Lane=gray")]).is_none(),
        "cookie names keep case"
    );
}

#[test]
fn first_enabled_matching_lane_in_name_order_wins() {
    // DESIGN §4: lanes tried in stable (name) order; the first enabled lane whose match holds.
    let m = |v: &str| {
        Some(proto::Match {
            logic: 0,
            conditions: vec![cond(Src::Header, "u", Op::Prefix, v)],
        })
    };
    let g = group(
        "ns/g",
        &["a"],
        vec![
            lane("c-lane", "c", true, m("")),
            lane("b-lane", "b", true, m("x")),
            lane("a-lane", "a", false, m("")),
        ],
    );
    let c = LaneGroupConfig::try_from(&g).unwrap();
    // a-lane would match everything but is disabled; b-lane comes before c-lane.
    assert_eq!(tag_of(&c, "/", &[("u", "xy")]).as_deref(), Some("b"));
    assert_eq!(tag_of(&c, "/", &[("u", "y")]).as_deref(), Some("c"));
    let (uri, headers) = request("/", &[("u", "xy")]);
    let d = c.decide(&RequestView::new(&uri, &headers), &mut rand::rng());
    assert_eq!(d.reason, DecisionReason::Matched);
    assert_eq!(d.lane, Some("b-lane"));
    assert!(d.sets_tag_header());
}

#[test]
fn existing_tag_is_kept() {
    // DESIGN §4: a request that already carries a tag keeps it (header, then baggage).
    let c = single(Op::Equal, "yes");
    let (uri, headers) = request("/", &[("u", "yes"), ("x-mse-tag", "blue")]);
    let d = c.decide(&RequestView::new(&uri, &headers), &mut rand::rng());
    assert_eq!(d.tag.as_deref(), Some("blue"));
    assert_eq!(d.reason, DecisionReason::TagHeader);
    assert!(!d.sets_tag_header());
    let (uri, headers) = request("/", &[("u", "yes"), ("baggage", "k=v, x-mse-tag=blue")]);
    let d = c.decide(&RequestView::new(&uri, &headers), &mut rand::rng());
    assert_eq!(d.tag.as_deref(), Some("blue"));
    assert_eq!(d.reason, DecisionReason::Baggage);
    // The header wins over baggage.
    let (uri, headers) = request(
        "/",
        &[("baggage", "x-mse-tag=blue"), ("x-mse-tag", "green")],
    );
    let d = c.decide(&RequestView::new(&uri, &headers), &mut rand::rng());
    assert_eq!(d.tag.as_deref(), Some("green"));
    // An empty tag header is no tag.
    let (uri, headers) = request("/", &[("u", "yes"), ("x-mse-tag", "")]);
    let d = c.decide(&RequestView::new(&uri, &headers), &mut rand::rng());
    assert_eq!(d.reason, DecisionReason::Matched);
}

fn weighted(weights: &[(&str, &str, u32, bool)]) -> LaneGroupConfig {
    let mut g = group("ns/w", &["a"], vec![]);
    g.routing_mode = proto::RoutingMode::Percentage as i32;
    g.lanes = weights
        .iter()
        .map(|(name, tag, w, enabled)| {
            let mut l = lane(name, tag, *enabled, None);
            l.weight = *w;
            l
        })
        .collect();
    LaneGroupConfig::try_from(&g).unwrap()
}

#[test]
fn percentage_mode_draws_against_cumulative_weights() {
    // DESIGN §4: percentage mode is a uniform draw per request against cumulative weights;
    // the remainder stays base. Disabled lanes take no share.
    let c = weighted(&[
        ("l1", "gray", 30, true),
        ("l2", "blue", 20, true),
        ("l3", "off", 40, false),
    ]);
    let (uri, headers) = request("/", &[]);
    let view = RequestView::new(&uri, &headers);
    let mut rng = StdRng::seed_from_u64(42);
    let (mut gray, mut blue, mut base) = (0, 0, 0);
    for _ in 0..10_000 {
        let d = c.decide(&view, &mut rng);
        match d.tag.as_deref() {
            Some("gray") => gray += 1,
            Some("blue") => blue += 1,
            None => {
                assert_eq!(d.reason, DecisionReason::NoMatch);
                base += 1;
            }
            other => panic!("unexpected lane {other:?}"),
        }
    }
    // Binomial standard deviation at n = 10 000 is at most 50; allow about 5 sigma.
    assert!((2_750..3_250).contains(&gray), "gray {gray}");
    assert!((1_750..2_250).contains(&blue), "blue {blue}");
    assert!((4_750..5_250).contains(&base), "base {base}");
}

#[test]
fn percentage_mode_respects_existing_tags_and_lane_filters() {
    // DESIGN §4: an existing tag is kept even in percentage mode.
    let all = weighted(&[("l1", "gray", 100, true)]);
    let (uri, headers) = request("/", &[("x-mse-tag", "blue")]);
    let d = all.decide(
        &RequestView::new(&uri, &headers),
        &mut StdRng::seed_from_u64(3),
    );
    assert_eq!(d.tag.as_deref(), Some("blue"));
    // A match on a weighted lane filters its slice.
    let mut g = group("ns/w", &["a"], vec![]);
    g.routing_mode = proto::RoutingMode::Percentage as i32;
    let mut l = lane(
        "l1",
        "gray",
        true,
        Some(proto::Match {
            logic: 0,
            conditions: vec![cond(Src::Header, "u", Op::Equal, "1")],
        }),
    );
    l.weight = 100;
    g.lanes = vec![l];
    let c = LaneGroupConfig::try_from(&g).unwrap();
    assert_eq!(tag_of(&c, "/", &[("u", "1")]).as_deref(), Some("gray"));
    assert_eq!(tag_of(&c, "/", &[("u", "2")]), None);
}
