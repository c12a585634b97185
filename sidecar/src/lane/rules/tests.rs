use super::*;
use lanemesh_api::proto;

pub(crate) fn cond(
    source: proto::Source,
    name: &str,
    operator: proto::Operator,
    value: &str,
) -> proto::Condition {
    proto::Condition {
        source: source as i32,
        name: name.to_owned(),
        operator: operator as i32,
        value: value.to_owned(),
        ..Default::default()
    }
}

pub(crate) fn lane(name: &str, tag: &str, enabled: bool, m: Option<proto::Match>) -> proto::Lane {
    proto::Lane {
        name: name.to_owned(),
        tag: tag.to_owned(),
        enabled,
        r#match: m,
        weight: 0,
    }
}

pub(crate) fn group(name: &str, apps: &[&str], lanes: Vec<proto::Lane>) -> proto::LaneGroup {
    proto::LaneGroup {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        apps: apps.iter().map(|a| (*a).to_owned()).collect(),
        entry_apps: apps.first().map(|a| (*a).to_owned()).into_iter().collect(),
        routing_mode: proto::RoutingMode::Content as i32,
        tag_header: "x-mse-tag".to_owned(),
        propagation: None,
        lanes,
    }
}

fn header_match(value: &str) -> Option<proto::Match> {
    Some(proto::Match {
        logic: proto::Logic::All as i32,
        conditions: vec![cond(
            proto::Source::Header,
            "Canary",
            proto::Operator::Equal,
            value,
        )],
    })
}

#[test]
fn converts_and_sorts_lanes_by_name() {
    // DESIGN §4 "Lane decision": lanes are tried in a stable order (by name).
    let g = group(
        "default/flow",
        &["a", "b"],
        vec![
            lane("z-lane", "gray", true, header_match("gray")),
            lane("a-lane", "blue", false, header_match("blue")),
        ],
    );
    let c = LaneGroupConfig::try_from(&g).unwrap();
    let names: Vec<&str> = c.lanes.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["a-lane", "z-lane"]);
    assert!(c.is_enabled("gray"));
    assert!(!c.is_enabled("blue"), "disabled lane");
    assert!(c.contains_app("b") && !c.contains_app("c"));
    assert!(c.is_entry_app("a") && !c.is_entry_app("b"));
    // Header names are stored lower-case.
    match &c.lanes[1].lane_match.as_ref().unwrap().conditions[0].source {
        Source::Header(h) => assert_eq!(h.as_str(), "canary"),
        other => panic!("unexpected source {other:?}"),
    }
    // No propagation in the resource: the CRD defaults.
    assert_eq!(c.propagation, PropagationConfig::default());
    assert_eq!(c.tag_header.as_str(), "x-mse-tag");
}

#[test]
fn regexes_are_anchored() {
    let m = proto::Match {
        logic: 0,
        conditions: vec![cond(
            proto::Source::Header,
            "u",
            proto::Operator::Regex,
            "ab+",
        )],
    };
    let c = LaneGroupConfig::try_from(&group("d/g", &["a"], vec![lane("l", "t", true, Some(m))]))
        .unwrap();
    let Operator::Regex(re) = &c.lanes[0].lane_match.as_ref().unwrap().conditions[0].operator
    else {
        panic!("not a regex")
    };
    assert!(re.is_match("abbb"));
    assert!(!re.is_match("xabb"), "anchored at the start");
    assert!(!re.is_match("abx"), "anchored at the end");
}

#[test]
fn refuses_invalid_groups_with_messages_naming_them() {
    let bad_re = proto::Match {
        logic: 0,
        conditions: vec![cond(
            proto::Source::Header,
            "u",
            proto::Operator::Regex,
            "(",
        )],
    };
    let err = LaneGroupConfig::try_from(&group(
        "ns/g",
        &["a"],
        vec![lane("l1", "gray", true, Some(bad_re))],
    ))
    .unwrap_err();
    assert!(matches!(err, LaneConfigError::InvalidRegex { .. }));
    assert!(err.to_string().contains("ns/g") && err.to_string().contains("l1"));

    let dup = group(
        "ns/g",
        &["a"],
        vec![
            lane("l1", "gray", true, header_match("x")),
            lane("l2", "gray", true, header_match("y")),
        ],
    );
    assert_eq!(
        LaneGroupConfig::try_from(&dup).unwrap_err(),
        LaneConfigError::DuplicateTag {
            group: "ns/g".into(),
            tag: "gray".into()
        }
    );

    let mut heavy = group(
        "ns/g",
        &["a"],
        vec![
            lane("l1", "gray", true, None),
            lane("l2", "blue", true, None),
        ],
    );
    heavy.routing_mode = proto::RoutingMode::Percentage as i32;
    heavy.lanes[0].weight = 60;
    heavy.lanes[1].weight = 50;
    assert_eq!(
        LaneGroupConfig::try_from(&heavy).unwrap_err(),
        LaneConfigError::WeightSumExceeded {
            group: "ns/g".into(),
            sum: 110
        }
    );

    let mut bad_header = group("ns/g", &["a"], vec![]);
    bad_header.tag_header = "x mse".into();
    assert!(matches!(
        LaneGroupConfig::try_from(&bad_header).unwrap_err(),
        LaneConfigError::InvalidHeaderName { .. }
    ));

    let mut unknown = group("ns/g", &["a"], vec![]);
    unknown.routing_mode = 7;
    assert!(matches!(
        LaneGroupConfig::try_from(&unknown).unwrap_err(),
        LaneConfigError::UnknownEnum { value: 7, .. }
    ));

    let host = proto::Match {
        logic: 0,
        conditions: vec![cond(proto::Source::Host, "h", proto::Operator::Equal, "x")],
    };
    assert!(matches!(
        LaneGroupConfig::try_from(&group(
            "ns/g",
            &["a"],
            vec![lane("l", "t", true, Some(host))]
        ))
        .unwrap_err(),
        LaneConfigError::UnsupportedSource { .. }
    ));

    let mut pct = cond(proto::Source::Header, "u", proto::Operator::Percentage, "");
    pct.percent = 101;
    let m = proto::Match {
        logic: 0,
        conditions: vec![pct],
    };
    assert!(matches!(
        LaneGroupConfig::try_from(&group("ns/g", &["a"], vec![lane("l", "t", true, Some(m))]))
            .unwrap_err(),
        LaneConfigError::OutOfRange { value: 101, .. }
    ));
}

#[test]
fn converts_propagation_settings() {
    let mut g = group("ns/g", &["a"], vec![]);
    g.propagation = Some(proto::Propagation {
        trace_headers: vec!["TraceParent".into(), "x-custom-trace".into()],
        inflight: false,
        color_by_node: true,
        trace_table_size: 5,
        trace_ttl: None,
    });
    if let Some(p) = g.propagation.as_mut() {
        p.trace_ttl.get_or_insert_with(Default::default).seconds = 2;
    }
    let c = LaneGroupConfig::try_from(&g).unwrap();
    let p = &c.propagation;
    assert_eq!(p.trace_headers[0].name.as_str(), "traceparent");
    assert_eq!(p.trace_headers[0].format, TraceIdFormat::TraceParent);
    assert_eq!(p.trace_headers[1].format, TraceIdFormat::Whole);
    assert!(!p.inflight && p.color_by_node);
    assert_eq!(p.trace_table_size, 5);
    assert_eq!(p.trace_ttl, Duration::from_secs(2));
}
