use super::super::rules::TraceIdFormat;
use super::*;
use crate::policy::clock::ManualClock;
use http::HeaderValue;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

/// A pod's propagation state and its lane tag (`None` = base pod).
struct Pod {
    propagator: Propagator,
    tag: Option<Arc<str>>,
}

impl std::ops::Deref for Pod {
    type Target = Propagator;
    fn deref(&self) -> &Propagator {
        &self.propagator
    }
}

fn setup(pod_tag: Option<&str>) -> (Pod, PropagationSettings, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(100)));
    let settings = PropagationSettings::default();
    let propagator = Propagator::new(&settings, clock.clone());
    let pod = Pod {
        propagator,
        tag: pod_tag.map(Arc::from),
    };
    (pod, settings, clock)
}

fn decide(
    p: &Pod,
    s: &PropagationSettings,
    h: &[(&str, &str)],
) -> (Option<String>, PropagationRule, Option<String>) {
    let map = headers(h);
    let out = p.outbound_lane(s, &map, p.tag.as_ref());
    (
        out.tag().map(str::to_owned),
        out.rule,
        out.injection().map(str::to_owned),
    )
}

#[test]
fn rule_labels_are_stable() {
    // DESIGN §4: outbound requests are counted by deciding rule.
    let labels: Vec<&str> = PropagationRule::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "tag_header",
            "baggage",
            "trace_id",
            "inflight",
            "color_by_node",
            "entry_decision",
            "base"
        ]
    );
}

#[test]
fn rule_1_tag_header_is_kept_and_not_injected() {
    // DESIGN §4 rule (1); a tag set upstream is never overwritten (§2).
    let (p, s, _) = setup(Some("blue"));
    let _in = p.register_inbound(&s, Some("green"), &headers(&[("traceparent", TRACEPARENT)]));
    let got = decide(
        &p,
        &s,
        &[("x-mse-tag", "gray"), ("traceparent", TRACEPARENT)],
    );
    assert_eq!(got, (Some("gray".into()), PropagationRule::TagHeader, None));
}

#[test]
fn rule_2_baggage_beats_trace_inflight_and_node() {
    // DESIGN §4 rule (2).
    let (p, s, _) = setup(Some("blue"));
    let _in = p.register_inbound(&s, Some("green"), &headers(&[("traceparent", TRACEPARENT)]));
    let got = decide(
        &p,
        &s,
        &[
            ("baggage", "userId=1, x-mse-tag=gray;p"),
            ("traceparent", TRACEPARENT),
        ],
    );
    assert_eq!(got, (Some("gray".into()), PropagationRule::Baggage, None));
}

#[test]
fn rule_3_trace_id_links_outbound_to_inbound_under_concurrency() {
    // DESIGN §4 rule (3): exact propagation under any concurrency when the app forwards
    // a trace context. Two inbound requests of different lanes are in flight at once.
    let (p, s, _) = setup(Some("blue"));
    let _gray = p.register_inbound(&s, Some("gray"), &headers(&[("traceparent", TRACEPARENT)]));
    let _base = p.register_inbound(&s, None, &headers(&[("x-request-id", "req-7")]));
    // A new span of the same trace: only the trace-id field must match.
    let child = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
    let got = decide(&p, &s, &[("traceparent", child)]);
    assert_eq!(
        got,
        (
            Some("gray".into()),
            PropagationRule::TraceId,
            Some("gray".into())
        )
    );
    // A trace linked to a base request decides base (and injects nothing).
    let got = decide(&p, &s, &[("x-request-id", "req-7")]);
    assert_eq!(got, (None, PropagationRule::TraceId, None));
    // Unknown trace: falls through (lanes differ, so not inflight) to the pod's tag.
    let got = decide(&p, &s, &[("x-request-id", "other")]);
    assert_eq!(got.1, PropagationRule::ColorByNode);
}

#[test]
fn rule_3_every_trace_header_format() {
    // DESIGN §4 rule (3): the trace id of traceparent, x-b3-traceid, uber-trace-id, sw8 and
    // x-request-id.
    let cases: [(&str, &str, &str); 5] = [
        (
            "traceparent",
            TRACEPARENT,
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-aaaaaaaaaaaaaaaa-00",
        ),
        (
            "x-b3-traceid",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7",
        ),
        ("uber-trace-id", "abc123:1:0:1", "abc123%3A77%3A1%3A1"),
        (
            "sw8",
            "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-MWU3YzIwNGE3YmY3MTFlYWI4NThhY2RlNDgwMDExMjI=-0-c2VydmljZQ==-aW5zdGFuY2U=-L2FwcA==-MTI3LjAuMC4xOjgwODA=",
            "1-MWYyZDRiZjQ3YmY3MTFlYWI3OTRhY2RlNDgwMDExMjI=-OTHERSEGMENT=-3-c2VydmljZQ==-aW5zdGFuY2U=-L2FwcA==-MTI3LjAuMC4xOjgwODA=",
        ),
        (
            "x-request-id",
            "f9f1a6a2-5d0b-4c4e-9c4b-6f8a0d1e2b3c",
            "f9f1a6a2-5d0b-4c4e-9c4b-6f8a0d1e2b3c",
        ),
    ];
    for (name, inbound, outbound) in cases {
        let (p, mut s, _) = setup(None);
        s.inflight = false;
        let _in = p.register_inbound(&s, Some("gray"), &headers(&[(name, inbound)]));
        let got = decide(&p, &s, &[(name, outbound)]);
        assert_eq!(got.1, PropagationRule::TraceId, "{name}");
        assert_eq!(got.0.as_deref(), Some("gray"), "{name}");
    }
    assert_eq!(
        TraceIdFormat::TraceParent.extract(TRACEPARENT),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(TraceIdFormat::Jaeger.extract("abc:1:0:1"), Some("abc"));
    assert_eq!(
        TraceIdFormat::Sw8.extract("1-dHJhY2U=-c2Vn-0"),
        Some("dHJhY2U=")
    );
    assert_eq!(TraceIdFormat::B3Single.extract("abc-def-1"), Some("abc"));
    assert_eq!(TraceIdFormat::Whole.extract(" id "), Some("id"));
    // Malformed or invalid (all-zero) ids link nothing.
    assert_eq!(TraceIdFormat::TraceParent.extract("garbage"), None);
    assert_eq!(
        TraceIdFormat::TraceParent
            .extract("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(TraceIdFormat::Whole.extract(""), None);
}

#[test]
fn rule_4_inflight_only_when_all_share_one_lane() {
    // DESIGN §4 rule (4): if inflight and all in-flight inbound requests share one lane.
    let (p, s, _) = setup(None);
    let gray1 = p.register_inbound(&s, Some("gray"), &HeaderMap::new());
    let gray2 = p.register_inbound(&s, Some("gray"), &HeaderMap::new());
    assert_eq!(
        decide(&p, &s, &[]),
        (
            Some("gray".into()),
            PropagationRule::Inflight,
            Some("gray".into())
        )
    );
    let base = p.register_inbound(&s, None, &HeaderMap::new());
    // gray and base in flight: base counts as its own lane, so rule 4 does not apply.
    assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Base, None));
    drop(gray1);
    drop(gray2);
    // Only base in flight: rule 4 decides base.
    assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Inflight, None));
    drop(base);
    // Nothing in flight: rule 4 does not apply.
    assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Base, None));
    // Switched off: not consulted.
    let off = PropagationSettings {
        inflight: false,
        ..s.clone()
    };
    let _g = p.register_inbound(&off, Some("gray"), &HeaderMap::new());
    assert_eq!(decide(&p, &off, &[]), (None, PropagationRule::Base, None));
    assert_eq!(decide(&p, &s, &[]).1, PropagationRule::Inflight);
}

#[test]
fn a_kubelet_probe_in_flight_does_not_make_rule_4_ambiguous() {
    // A base pod serving a gray request while the kubelet probes it: its outbound call still
    // belongs to the gray request.
    let (p, s, _) = setup(None);
    let _gray = p.register_inbound(&s, Some("gray"), &HeaderMap::new());
    let probe = p.register_inbound(&s, None, &headers(&[("user-agent", "kube-probe/1.34")]));
    assert_eq!(probe.lane(), None);
    assert_eq!(
        decide(&p, &s, &[]),
        (
            Some("gray".into()),
            PropagationRule::Inflight,
            Some("gray".into())
        )
    );
    drop(probe);
    // Any other caller in base does count.
    let _base = p.register_inbound(&s, None, &headers(&[("user-agent", "curl/8.5")]));
    assert_eq!(decide(&p, &s, &[]), (None, PropagationRule::Base, None));
}

#[test]
fn rule_5_color_by_node_and_rule_6_base() {
    // DESIGN §4 rules (5) and (6).
    let (p, s, _) = setup(Some("gray"));
    assert_eq!(
        decide(&p, &s, &[]),
        (
            Some("gray".into()),
            PropagationRule::ColorByNode,
            Some("gray".into())
        )
    );
    let off = PropagationSettings {
        color_by_node: false,
        ..s.clone()
    };
    assert_eq!(decide(&p, &off, &[]), (None, PropagationRule::Base, None));
    let (untagged, s, _) = setup(None);
    assert_eq!(
        decide(&untagged, &s, &[]),
        (None, PropagationRule::Base, None)
    );
    // An empty pod tag is the base pod.
    let (empty, s, _) = setup(Some(""));
    assert_eq!(decide(&empty, &s, &[]).1, PropagationRule::Base);
}

#[test]
fn precedence_trace_beats_inflight_beats_node() {
    // DESIGN §4: rules apply in order (3) before (4) before (5).
    let (p, s, _) = setup(Some("node"));
    let _blue = p.register_inbound(&s, Some("blue"), &headers(&[("x-request-id", "r1")]));
    // All in flight are blue, but the trace id says gray (an earlier, finished request).
    drop(p.register_inbound(&s, Some("gray"), &headers(&[("x-request-id", "r0")])));
    assert_eq!(
        decide(&p, &s, &[("x-request-id", "r0")]).0.as_deref(),
        Some("gray")
    );
    assert_eq!(decide(&p, &s, &[]).0.as_deref(), Some("blue"));
    assert_eq!(decide(&p, &s, &[]).1, PropagationRule::Inflight);
}

#[test]
fn trace_entries_expire_after_ttl() {
    // DESIGN §4 rule (3): a table with TTL.
    let (p, mut s, clock) = setup(None);
    s.inflight = false;
    s.trace_ttl = Duration::from_secs(10);
    p.apply(&s);
    drop(p.register_inbound(&s, Some("gray"), &headers(&[("x-request-id", "r")])));
    clock.advance(Duration::from_secs(9));
    assert_eq!(
        decide(&p, &s, &[("x-request-id", "r")]).1,
        PropagationRule::TraceId
    );
    // The hit refreshed the entry: 9 s more is still within the TTL.
    clock.advance(Duration::from_secs(9));
    assert_eq!(
        decide(&p, &s, &[("x-request-id", "r")]).1,
        PropagationRule::TraceId
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        decide(&p, &s, &[("x-request-id", "r")]).1,
        PropagationRule::Base
    );
    assert!(p.traces().is_empty(), "the expired entry is removed");
}

#[test]
fn trace_table_is_bounded_and_evicts_least_recently_used() {
    // DESIGN §4 rule (3): a table with a size bound. Four entries: two on probation, two
    // protected.
    let t = TraceTable::new(4, Duration::from_secs(60));
    let now = Duration::ZERO;
    let gray: Option<Arc<str>> = Some(Arc::from("gray"));
    for id in ["a", "b", "c"] {
        t.insert(id, gray.clone(), now);
    }
    assert_eq!(t.len(), 2, "probation holds two new traces");
    assert!(
        t.lookup("a", now).is_none(),
        "a, the oldest new trace, was evicted"
    );
    assert!(t.lookup("b", now).is_some(), "b used: protected");
    t.insert("d", gray.clone(), now);
    t.insert("e", gray.clone(), now);
    assert_eq!(t.len(), 3);
    assert!(t.lookup("c", now).is_none(), "c evicted from probation");
    for id in ["b", "d", "e"] {
        assert!(t.lookup(id, now).is_some(), "{id} kept");
    }
    // Trace ids compare case-insensitively (hex ids may be upper-cased by some agents).
    assert_eq!(t.lookup("D", now), Some(gray.clone()));
    // A large table splits into shards and still honours its bound.
    let big = TraceTable::new(2_048, Duration::from_secs(60));
    for i in 0..10_000 {
        big.insert(&format!("trace-{i}"), None, now);
    }
    // New traces fill the probation segments: half the table.
    assert!(big.len() <= 1_024, "{}", big.len());
    assert!(big.len() > 950, "shards are used evenly: {}", big.len());
    // Shrinking applies at once.
    big.set_bounds(160, Duration::from_secs(60));
    assert!(big.len() <= 160);
}

#[test]
fn a_flood_of_new_trace_ids_does_not_flush_the_traces_in_use() {
    let t = TraceTable::new(1_000, Duration::from_secs(60));
    let now = Duration::ZERO;
    let gray: Option<Arc<str>> = Some(Arc::from("gray"));
    for i in 0..100 {
        t.insert(&format!("user-{i}"), gray.clone(), now);
        assert!(t.lookup(&format!("user-{i}"), now).is_some());
    }
    // A caller sends 100 000 requests with unique trace ids.
    for i in 0..100_000 {
        t.insert(&format!("flood-{i}"), None, now);
    }
    assert!(t.len() <= 1_000);
    for i in 0..100 {
        assert_eq!(
            t.lookup(&format!("user-{i}"), now),
            Some(gray.clone()),
            "user-{i}"
        );
    }
}

#[test]
fn inbound_guard_counts_across_threads() {
    // The propagator is shared by every connection.
    let (p, s, _) = setup(None);
    let p = Arc::new(p);
    let s = Arc::new(s);
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (p, s) = (Arc::clone(&p), Arc::clone(&s));
            std::thread::spawn(move || {
                let lane = if i % 2 == 0 { Some("gray") } else { None };
                for _ in 0..1_000 {
                    let g = p.register_inbound(&s, lane, &HeaderMap::new());
                    assert_eq!(g.lane(), lane);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Every guard dropped: nothing in flight.
    assert_eq!(decide(&p, &s, &[]).1, PropagationRule::Base);
}

#[test]
fn settings_merge_groups_of_the_app() {
    use super::super::LaneGroupConfig;
    use super::super::rules::tests::group;
    let mut g1 = group("ns/a", &["x"], vec![]);
    g1.propagation = Some(lanemesh_api::proto::Propagation {
        trace_headers: vec!["traceparent".into()],
        inflight: false,
        color_by_node: false,
        trace_table_size: 10,
        trace_ttl: None,
    });
    let mut g2 = group("ns/b", &["x"], vec![]);
    g2.tag_header = "x-lane".into();
    g2.propagation = Some(lanemesh_api::proto::Propagation {
        trace_headers: vec!["sw8".into(), "traceparent".into()],
        inflight: true,
        color_by_node: false,
        trace_table_size: 20,
        trace_ttl: None,
    });
    let c1 = LaneGroupConfig::try_from(&g1).unwrap();
    let c2 = LaneGroupConfig::try_from(&g2).unwrap();
    let m = PropagationSettings::merge([&c1, &c2]);
    let tags: Vec<&str> = m.tag_headers.iter().map(HeaderName::as_str).collect();
    assert_eq!(tags, ["x-mse-tag", "x-lane"]);
    let traces: Vec<&str> = m.trace_headers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(traces, ["traceparent", "sw8"]);
    assert!(m.inflight && !m.color_by_node);
    assert_eq!(m.trace_table_size, 20);
    assert_eq!(
        PropagationSettings::merge([]),
        PropagationSettings::default()
    );
    // Either group's tag header carries the tag.
    let map = headers(&[("x-lane", "gray")]);
    assert_eq!(
        m.carried_tag(&map).map(|(t, _)| t.into_owned()).as_deref(),
        Some("gray")
    );
}
