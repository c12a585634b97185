use super::*;
use crate::lane::rules::tests::{cond, group, lane};
use crate::lane::{LaneGroupConfig, PropagationRule, PropagationSettings, Propagator};
use crate::policy::clock::ManualClock;
use http::{HeaderMap, HeaderValue};
use lanemesh_api::proto;
use std::time::Duration;

fn ep(ip: &str, tag: &str, ready: bool) -> proto::Endpoint {
    proto::Endpoint {
        ip: ip.to_owned(),
        pod_name: format!("pod-{ip}"),
        lane_tag: tag.to_owned(),
        ready,
        ports: std::collections::BTreeMap::from([("http".to_owned(), 8080)]),
        ..Default::default()
    }
}

fn service(
    name: &str,
    app: &str,
    cluster_ip: &str,
    endpoints: Vec<proto::Endpoint>,
) -> proto::Service {
    proto::Service {
        name: format!("default/{name}"),
        namespace: "default".to_owned(),
        app: app.to_owned(),
        cluster_ips: vec![cluster_ip.to_owned()],
        ports: vec![proto::ServicePort {
            name: "http".to_owned(),
            port: 80,
            target_port: 8080,
            protocol: proto::AppProtocol::Http1 as i32,
        }],
        endpoints,
    }
}

fn lanes(gray_enabled: bool) -> LaneTable {
    let m = proto::Match {
        logic: 0,
        conditions: vec![cond(
            proto::Source::Header,
            "canary",
            proto::Operator::Equal,
            "1",
        )],
    };
    let g = group(
        "default/flow",
        &["a", "b", "c"],
        vec![lane("gray", "gray", gray_enabled, Some(m))],
    );
    LaneTable::new([LaneGroupConfig::try_from(&g).unwrap()])
}

fn balancer() -> Balancer {
    Balancer::new(Arc::new(ManualClock::default()), Default::default())
}

fn table(services: &[proto::Service], b: &Balancer) -> RouteTable {
    RouteTable::new(
        services.iter().map(|s| ServiceSpec::try_from(s).unwrap()),
        b,
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ips(chosen: &Chosen<'_>) -> Vec<String> {
    let mut v: Vec<String> = chosen
        .endpoints
        .iter()
        .map(|e| e.addr().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn converts_services_and_maps_ports() {
    let mut s = service("c", "c", "10.96.0.3", vec![ep("10.0.0.1", "gray", true)]);
    s.ports.push(proto::ServicePort {
        name: "grpc".into(),
        port: 9090,
        target_port: 0,
        protocol: proto::AppProtocol::Grpc as i32,
    });
    let spec = ServiceSpec::try_from(&s).unwrap();
    assert_eq!(spec.app.as_deref(), Some("c"));
    assert_eq!(spec.endpoints[0].lane.as_deref(), Some("gray"));
    // Named port -> the endpoint's port; unnamed on the endpoint -> targetPort (defaulting to port).
    assert_eq!(spec.endpoints[0].port_for(&spec.ports[0]), 8080);
    assert_eq!(spec.ports[1].target_port, 9090);
    assert_eq!(spec.endpoints[0].port_for(&spec.ports[1]), 9090);
    assert_eq!(spec.ports[1].protocol, Protocol::Grpc);

    let mut bad = s.clone();
    bad.cluster_ips = vec!["10.96.0.300".into()];
    let err = ServiceSpec::try_from(&bad).unwrap_err();
    assert!(err.to_string().contains("default/c") && err.to_string().contains("10.96.0.300"));
    let mut bad = s.clone();
    bad.ports[0].port = 70_000;
    assert!(matches!(
        ServiceSpec::try_from(&bad),
        Err(ServiceConfigError::InvalidPort { value: 70_000, .. })
    ));
    let mut bad = s;
    bad.ports[0].protocol = 42;
    assert!(matches!(
        ServiceSpec::try_from(&bad),
        Err(ServiceConfigError::UnknownProtocol { .. })
    ));
}

#[test]
fn destination_lookup_by_cluster_ip_and_pod_ip() {
    // DESIGN §5: a Service ClusterIP or a pod IP of a governed app is routed; unknown passes.
    let b = balancer();
    let t = table(
        &[
            service(
                "c",
                "c",
                "10.96.0.3",
                vec![ep("10.0.0.1", "", true), ep("10.0.0.2", "gray", false)],
            ),
            service("plain", "", "10.96.0.9", vec![ep("10.0.0.9", "", true)]),
        ],
        &b,
    );
    let d = t.lookup(addr("10.96.0.3:80")).unwrap();
    assert_eq!(
        (d.service.app(), d.service.name(), d.port.port()),
        ("c", "default/c", 80)
    );
    assert_eq!(d.port.protocol(), Protocol::Http1);
    // Pod IP at the endpoint port, ready or not (Nacos-style direct calls).
    let d = t.lookup(addr("10.0.0.2:8080")).unwrap();
    assert_eq!(d.service.app(), "c");
    assert_eq!(d.port.name(), "http");
    assert!(
        t.lookup(addr("10.96.0.3:81")).is_none(),
        "port not in the service"
    );
    assert!(
        t.lookup(addr("10.0.0.1:80")).is_none(),
        "pod IP at the service port"
    );
    assert!(
        t.lookup(addr("10.96.0.9:80")).is_none(),
        "ungoverned service passes through"
    );
    assert!(t.lookup(addr("10.0.0.9:8080")).is_none());
    assert!(t.lookup(addr("192.0.2.1:443")).is_none());
    assert_eq!(t.service("default/c").map(ServiceRoute::app), Some("c"));
}

#[test]
fn lane_endpoints_then_base_then_error_naming_app_and_lane() {
    // DESIGN §4 "Endpoint choice": tagged L, else base, else 503 with a clear body.
    let b = balancer();
    let lanes = lanes(true);
    let full = table(
        &[service(
            "c",
            "c",
            "10.96.0.3",
            vec![
                ep("10.0.0.1", "", true),
                ep("10.0.0.2", "gray", true),
                ep("10.0.0.3", "gray", false),
                ep("10.0.0.4", "blue", true),
            ],
        )],
        &b,
    );
    let d = full.lookup(addr("10.96.0.3:80")).unwrap();
    let gray = d.choose(Some("gray"), &lanes).unwrap();
    assert_eq!(ips(&gray), ["10.0.0.2:8080"], "only ready gray endpoints");
    assert_eq!((gray.lane, gray.fell_back), (Some("gray"), false));
    let base = d.choose(None, &lanes).unwrap();
    assert_eq!(
        ips(&base),
        ["10.0.0.1:8080"],
        "base excludes tagged endpoints"
    );
    assert_eq!((base.lane, base.fell_back), (None, false));

    let no_gray = table(
        &[service(
            "c",
            "c",
            "10.96.0.3",
            vec![ep("10.0.0.1", "", true), ep("10.0.0.3", "gray", false)],
        )],
        &b,
    );
    let d = no_gray.lookup(addr("10.96.0.3:80")).unwrap();
    let fallback = d.choose(Some("gray"), &lanes).unwrap();
    assert_eq!(ips(&fallback), ["10.0.0.1:8080"]);
    assert_eq!((fallback.lane, fallback.fell_back), (None, true));

    let nothing = table(
        &[service(
            "c",
            "c",
            "10.96.0.3",
            vec![ep("10.0.0.1", "", false), ep("10.0.0.3", "gray", false)],
        )],
        &b,
    );
    let d = nothing.lookup(addr("10.96.0.3:80")).unwrap();
    let err = d.choose(Some("gray"), &lanes).unwrap_err();
    assert_eq!(err.lane.as_deref(), Some("gray"));
    let body = err.to_string();
    assert!(
        body.contains("\"c\"") && body.contains("\"gray\""),
        "{body}"
    );
    let err = d.choose(None, &lanes).unwrap_err();
    assert!(err.to_string().contains("\"c\"") && err.lane.is_none());
}

#[test]
fn disabled_or_foreign_lane_routes_as_base() {
    // DESIGN §4: a disabled lane routes as base; so does a lane of no group containing S.
    let b = balancer();
    let services = [
        service(
            "c",
            "c",
            "10.96.0.3",
            vec![ep("10.0.0.1", "", true), ep("10.0.0.2", "gray", true)],
        ),
        service(
            "x",
            "x",
            "10.96.0.4",
            vec![ep("10.0.1.1", "", true), ep("10.0.1.2", "gray", true)],
        ),
    ];
    let t = table(&services, &b);
    let disabled = lanes(false);
    let chosen = t
        .lookup(addr("10.96.0.3:80"))
        .unwrap()
        .choose(Some("gray"), &disabled)
        .unwrap();
    assert_eq!(ips(&chosen), ["10.0.0.1:8080"]);
    assert!(!chosen.fell_back, "a disabled lane is base, not a fallback");
    let enabled = lanes(true);
    // x is in no lane group: its gray pods are not a lane target.
    let chosen = t
        .lookup(addr("10.96.0.4:80"))
        .unwrap()
        .choose(Some("gray"), &enabled)
        .unwrap();
    assert_eq!(ips(&chosen), ["10.0.1.1:8080"]);
    // An unknown tag routes as base too.
    let chosen = t
        .lookup(addr("10.96.0.3:80"))
        .unwrap()
        .choose(Some("nope"), &enabled)
        .unwrap();
    assert_eq!(chosen.lane, None);
}

#[test]
fn gray_a_to_base_b_to_gray_c() {
    // DESIGN §4: the tag header stays after a fallback, so `Agray -> B -> Cgray` works: B has
    // no gray endpoint (base B is chosen), and B's outbound to C still finds gray C.
    let b = balancer();
    let lanes = lanes(true);
    let t = table(
        &[
            service("b", "b", "10.96.0.2", vec![ep("10.0.2.1", "", true)]),
            service(
                "c",
                "c",
                "10.96.0.3",
                vec![ep("10.0.3.1", "", true), ep("10.0.3.2", "gray", true)],
            ),
        ],
        &b,
    );
    // A's request to B carries the tag set at the entry.
    let mut to_b = HeaderMap::new();
    to_b.insert("x-mse-tag", HeaderValue::from_static("gray"));
    let chosen_b = t
        .lookup(addr("10.96.0.2:80"))
        .unwrap()
        .choose(Some("gray"), &lanes)
        .unwrap();
    assert_eq!(ips(&chosen_b), ["10.0.2.1:8080"]);
    assert!(chosen_b.fell_back);
    // B's sidecar: the inbound keeps its header; the app forwards it on its call to C.
    let settings = PropagationSettings::merge(lanes.groups_of("b").map(|g| &**g));
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
    let propagator = Propagator::new(&settings, clock);
    let inbound_lane = settings.carried_tag(&to_b).map(|(t, _)| t.into_owned());
    let _guard = propagator.register_inbound(&settings, inbound_lane.as_deref(), &to_b);
    let to_c = to_b.clone();
    let out = propagator.outbound_lane(&settings, &to_c, None);
    assert_eq!(
        (out.tag(), out.rule),
        (Some("gray"), PropagationRule::TagHeader)
    );
    let chosen_c = t
        .lookup(addr("10.96.0.3:80"))
        .unwrap()
        .choose(out.tag(), &lanes)
        .unwrap();
    assert_eq!(ips(&chosen_c), ["10.0.3.2:8080"]);
    // Even if B's app drops the header, B's inflight state (only gray in flight) recovers it
    // and the proxy injects it.
    let dropped = HeaderMap::new();
    let out = propagator.outbound_lane(&settings, &dropped, None);
    assert_eq!(
        (out.injection(), out.rule),
        (Some("gray"), PropagationRule::Inflight)
    );
}

#[test]
fn endpoint_statistics_are_shared_across_table_rebuilds() {
    let b = balancer();
    let services = [service(
        "c",
        "c",
        "10.96.0.3",
        vec![ep("10.0.0.1", "", true)],
    )];
    let t1 = table(&services, &b);
    let t2 = table(&services, &b);
    let e1 = &t1
        .lookup(addr("10.96.0.3:80"))
        .unwrap()
        .choose(None, &lanes(true))
        .unwrap()
        .endpoints[0];
    let e2 = &t2
        .lookup(addr("10.96.0.3:80"))
        .unwrap()
        .choose(None, &lanes(true))
        .unwrap()
        .endpoints[0];
    let pick = b.pick(std::slice::from_ref(e1), &mut rand::rng()).unwrap();
    assert_eq!(
        e2.stats().outstanding(),
        1,
        "the rebuilt table sees the same counters"
    );
    drop(pick);
    drop(t1);
    assert_eq!(b.prune(), 0, "still used by t2");
    drop(t2);
    assert_eq!(b.prune(), 1);
}
