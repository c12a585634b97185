use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

fn local() -> PodIdentity {
    PodIdentity::app("default", "a")
}

fn service(name: &str, app: &str, cluster_ip: &str, pod_ips: &[(&str, &str)]) -> proto::Service {
    proto::Service {
        name: format!("default/{name}"),
        namespace: "default".into(),
        app: app.into(),
        cluster_ips: vec![cluster_ip.into()],
        ports: vec![proto::ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
            protocol: 0,
        }],
        endpoints: pod_ips
            .iter()
            .map(|(ip, tag)| proto::Endpoint {
                ip: (*ip).into(),
                pod_name: format!("{app}-{ip}"),
                lane_tag: (*tag).into(),
                ready: true,
                ports: BTreeMap::from([("http".into(), 8080)]),
                ..Default::default()
            })
            .collect(),
    }
}

fn inbound(ns: &str, app: &str) -> proto::InboundPolicy {
    proto::InboundPolicy {
        name: format!("{ns}/{app}"),
        namespace: ns.into(),
        app: app.into(),
        ..Default::default()
    }
}

fn outbound(ns: &str, app: &str) -> proto::OutboundPolicy {
    proto::OutboundPolicy {
        name: format!("{ns}/{app}"),
        namespace: ns.into(),
        app: app.into(),
        timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn wire<T: DiscoveryResource>(version: &str, r: &T) -> proto::Resource {
    proto::Resource {
        name: r.resource_name().to_owned(),
        version: version.into(),
        resource: Some(r.to_any()),
    }
}

#[test]
fn a_gateway_is_ready_only_once_it_has_its_routes() {
    let mut sidecar = SnapshotBuilder::new(PodIdentity::app("demo", "a"));
    let mut gateway = SnapshotBuilder::new(PodIdentity {
        gateway: true,
        ..PodIdentity::app("demo", "gw")
    });
    for kind in ResourceKind::ALL
        .into_iter()
        .filter(|k| *k != ResourceKind::GatewayRoute)
    {
        sidecar.mark_received(kind);
        gateway.mark_received(kind);
    }
    assert!(
        sidecar.build().is_ready(),
        "a sidecar never asks for routes"
    );
    assert!(!gateway.clone().build().is_ready());
    gateway.mark_received(ResourceKind::GatewayRoute);
    assert!(gateway.build().is_ready());
}

#[test]
fn type_urls_match_the_api_constants() {
    let sidecar = PodIdentity::app("demo", "a");
    let urls: Vec<&str> = ResourceKind::subscribed(&sidecar)
        .map(|k| k.type_url())
        .collect();
    assert_eq!(urls, lanemesh_api::resource::ALL_TYPE_URLS);
    let gateway = PodIdentity {
        gateway: true,
        ..sidecar
    };
    let urls: Vec<&str> = ResourceKind::subscribed(&gateway)
        .map(|k| k.type_url())
        .collect();
    assert_eq!(urls.last(), Some(&lanemesh_api::resource::GATEWAY_TYPE_URL));
    assert_eq!(urls.len(), ResourceKind::ALL.len());
    assert_eq!(
        ResourceKind::from_type_url("type.googleapis.com/lanemesh.v1.LaneGroup"),
        Some(ResourceKind::LaneGroup)
    );
    assert_eq!(ResourceKind::from_type_url("type.googleapis.com/x.Y"), None);
}

#[test]
fn indexes_find_services_by_cluster_address_and_pods_by_ip() {
    let snap = Snapshot::from_resources(
        local(),
        [
            service(
                "b",
                "b",
                "10.96.0.2",
                &[("10.0.0.2", ""), ("10.0.0.3", "gray")],
            ),
            service("b-alt", "", "10.96.0.9", &[("10.0.0.3", "gray")]),
        ],
        [],
        [inbound("default", "a"), inbound("default", "b")],
        [
            outbound("default", "c"),
            outbound("other", "c"),
            outbound("other", "d"),
        ],
    )
    .unwrap();
    assert!(snap.is_ready());
    let by_addr = snap
        .service_by_cluster_addr("10.96.0.2:80".parse().unwrap())
        .unwrap();
    assert_eq!(by_addr.resource.name, "default/b");
    assert!(
        snap.service_by_cluster_addr("10.96.0.2:81".parse().unwrap())
            .is_none()
    );

    let pod = snap.endpoint("10.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(
        pod.app, "b",
        "the app comes from whichever Service names one"
    );
    assert_eq!(pod.lane_tag, "gray");
    let names: Vec<&str> = pod
        .services
        .iter()
        .map(|s| s.resource.name.as_str())
        .collect();
    assert_eq!(names, ["default/b", "default/b-alt"]);
    assert!(snap.endpoint("10.0.0.99".parse().unwrap()).is_none());

    assert_eq!(snap.local_inbound_policy().unwrap().resource.app, "a");
    // Same app in two namespaces: the node's namespace wins.
    assert_eq!(
        snap.outbound_policy("c").unwrap().resource.namespace,
        "default"
    );
    assert_eq!(
        snap.outbound_policy("d").unwrap().resource.namespace,
        "other"
    );
    assert!(snap.outbound_policy("e").is_none());
}

#[test]
fn a_partly_invalid_delta_applies_the_valid_resources_and_keeps_last_good() {
    let mut builder = SnapshotBuilder::new(local());
    let good = service("b", "b", "10.96.0.2", &[("10.0.0.2", "")]);
    let refused = builder.apply_delta(ResourceKind::Service, vec![wire("v1", &good)], &[]);
    assert!(refused.is_empty());
    let first = builder.clone().build();

    let mut broken = good.clone();
    broken.endpoints[0].ip = "10.0.0.999".into();
    let fresh = service("c", "c", "10.96.0.3", &[("10.0.0.4", "")]);
    let mut builder = SnapshotBuilder::from_snapshot(&first);
    let refused = builder.apply_delta(
        ResourceKind::Service,
        vec![wire("v2", &broken), wire("v1", &fresh)],
        &[],
    );
    assert_eq!(refused.len(), 1);
    let error = refused[0].to_resource_error();
    assert_eq!(
        (error.name.as_str(), error.version.as_str()),
        ("default/b", "v2")
    );
    assert!(error.message.contains("10.0.0.999"), "{}", error.message);
    let second = builder.build();
    assert_eq!(
        second.get::<proto::Service>("default/b").unwrap().version,
        "v1"
    );
    assert!(second.get::<proto::Service>("default/c").is_some());
    // Unchanged resources are shared, not copied.
    assert!(Arc::ptr_eq(
        first.get::<proto::Service>("default/b").unwrap(),
        second.get::<proto::Service>("default/b").unwrap()
    ));
}

#[test]
fn removal_drops_the_resource_and_its_index_entries() {
    let snap = Snapshot::from_resources(
        local(),
        [service("b", "b", "10.96.0.2", &[("10.0.0.2", "")])],
        [],
        [],
        [],
    )
    .unwrap();
    let mut builder = SnapshotBuilder::from_snapshot(&snap);
    let refused = builder.apply_delta(ResourceKind::Service, vec![], &["default/b".into()]);
    assert!(refused.is_empty());
    let next = builder.build();
    assert!(next.services().is_empty());
    assert!(next.endpoint("10.0.0.2".parse().unwrap()).is_none());
    assert!(
        next.service_by_cluster_addr("10.96.0.2:80".parse().unwrap())
            .is_none()
    );
}

#[test]
fn resources_of_the_wrong_type_or_name_are_refused() {
    let mut builder = SnapshotBuilder::new(local());
    let mut misnamed = wire("v1", &inbound("default", "a"));
    misnamed.name = "default/z".into();
    let refused = builder.apply_delta(
        ResourceKind::InboundPolicy,
        vec![
            wire("v1", &outbound("default", "a")),
            misnamed,
            proto::Resource {
                name: "default/empty".into(),
                version: "v1".into(),
                resource: None,
            },
        ],
        &[],
    );
    assert_eq!(refused.len(), 3);
    assert!(matches!(*refused[0].error, ValidationError::Decode(_)));
    assert!(matches!(
        *refused[1].error,
        ValidationError::NameMismatch { .. }
    ));
    assert!(matches!(*refused[2].error, ValidationError::Decode(_)));
    assert!(builder.build().inbound_policies().is_empty());
}

#[test]
fn ready_only_after_every_type_was_received() {
    let mut builder = SnapshotBuilder::new(local());
    for kind in [
        ResourceKind::Service,
        ResourceKind::LaneGroup,
        ResourceKind::InboundPolicy,
        ResourceKind::OutboundPolicy,
    ] {
        builder.apply_delta(kind, vec![], &[]);
        assert!(
            !builder.clone().build().is_ready(),
            "ready before all types, after {kind}"
        );
    }
    builder.apply_delta(ResourceKind::Workload, vec![], &[]);
    assert!(builder.build().is_ready());
}

#[test]
fn store_counts_generations_and_notifies() {
    let store = SnapshotStore::new(local());
    let mut rx = store.subscribe();
    assert_eq!(store.load().generation(), 0);
    assert!(!store.is_ready());
    let snap = Snapshot::from_resources(local(), [], [], [], []).unwrap();
    assert_eq!(store.store(snap), 1);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);
    assert!(store.is_ready());
    assert_eq!(store.load().generation(), 1);
}

/// Snapshot `i` holds services s0..s{i%7} all at version `i`; a reader that
/// ever saw a mix of versions, or indexes out of step with the maps, would
/// have seen a half-applied update.
fn consistent_snapshot(i: usize) -> Snapshot {
    let mut builder = SnapshotBuilder::new(local());
    for s in 0..=(i % 7) {
        let svc = service(
            &format!("s{s}"),
            "b",
            &format!("10.96.1.{s}"),
            &[(&format!("10.1.{}.{s}", i % 200), "")],
        );
        builder.insert(i.to_string(), svc).unwrap();
    }
    builder.mark_all_received();
    builder.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_see_only_complete_snapshots_during_rapid_swaps() {
    let store = Arc::new(SnapshotStore::new(local()));
    store.store(consistent_snapshot(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        readers.push(tokio::spawn(async move {
            let mut seen = 0u64;
            let mut last_generation = 0;
            // Every reader checks at least once more after the last swap, however the tasks
            // happen to be scheduled.
            loop {
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                let snap = store.load();
                assert!(
                    snap.generation() >= last_generation,
                    "generations went backwards"
                );
                last_generation = snap.generation();
                let versions: Vec<&str> = snap
                    .services()
                    .values()
                    .map(|e| e.version.as_str())
                    .collect();
                let i: usize = versions[0].parse().unwrap();
                assert_eq!(versions.len(), i % 7 + 1);
                assert!(versions.iter().all(|v| *v == versions[0]), "{versions:?}");
                for e in snap.services().values() {
                    let ip = e.compiled.endpoints[0].ip;
                    let owner = snap.endpoint(ip).unwrap();
                    assert_eq!(owner.services[0].version, e.version);
                }
                seen += 1;
                if finished {
                    break;
                }
                tokio::task::yield_now().await;
            }
            seen
        }));
    }
    for i in 1..=100 {
        store.store(consistent_snapshot(i));
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(seen > 0);
    }
    assert_eq!(store.load().generation(), 101);
    assert_eq!(store.load().services().len(), 100 % 7 + 1);
}

#[test]
fn the_store_reports_readiness_and_generation_to_metrics() {
    use crate::metrics::{ProxyMetrics, Sample, ScrapeSource};
    let store = Arc::new(SnapshotStore::new(PodIdentity::default()));
    assert_eq!(
        store.samples()[..2],
        [
            Sample::Gauge(
                "config_ready",
                "1 once a first snapshot of every resource type is applied",
                0
            ),
            Sample::Gauge("config_generation", "Snapshots applied since start", 0),
        ]
    );
    let metrics = ProxyMetrics::new();
    metrics.attach(Arc::clone(&store) as Arc<dyn ScrapeSource>);
    store.store(Snapshot::from_resources(PodIdentity::default(), [], [], [], []).unwrap());
    let text = metrics.encode();
    assert!(text.contains("lanemesh_config_ready 1\n"), "{text}");
    assert!(text.contains("lanemesh_config_generation 1\n"), "{text}");
}

fn workload(app: &str, lane: &str) -> proto::Workload {
    proto::Workload {
        name: "default/a-1".into(),
        namespace: "default".into(),
        pod_name: "a-1".into(),
        app: app.into(),
        lane_tag: lane.into(),
        terminating: false,
    }
}

#[test]
fn the_workload_completes_an_identity_the_flags_leave_open() {
    // In Kubernetes the flags give only the pod; app and lane come from the control plane.
    let pod = PodIdentity {
        pod_name: "a-1".into(),
        ..PodIdentity::app("default", "")
    };
    let mut builder = SnapshotBuilder::new(pod.clone());
    builder.insert_all([inbound("default", "a")]).unwrap();
    let before = builder.clone().build();
    assert_eq!(before.local().app, "");
    assert!(before.local_inbound_policy().is_none());

    let refused = builder.apply_delta(
        ResourceKind::Workload,
        vec![wire("w1", &workload("a", "gray"))],
        &[],
    );
    assert!(refused.is_empty(), "{refused:?}");
    let snap = builder.build();
    assert_eq!(
        (snap.local().app.as_str(), snap.local().lane()),
        ("a", Some("gray"))
    );
    assert_eq!(snap.local().pod_name, "a-1", "the flags' pod stays");
    assert_eq!(snap.claimed(), &pod);
    assert!(
        snap.local_inbound_policy().is_some(),
        "the app's own policy is found through the Workload's app"
    );

    // Relabelled to base: the next Workload drops the lane.
    let mut builder = SnapshotBuilder::from_snapshot(&snap);
    builder.apply_delta(
        ResourceKind::Workload,
        vec![wire("w2", &workload("a", ""))],
        &[],
    );
    let snap = builder.build();
    assert_eq!(snap.local().lane(), None);
    assert_eq!(snap.versions(ResourceKind::Workload)["default/a-1"], "w2");
}

#[test]
fn flags_that_name_app_and_lane_override_the_workload() {
    let claimed = PodIdentity {
        pod_name: "a-1".into(),
        ..PodIdentity::app("default", "local-app").with_lane("blue")
    };
    let mut builder = SnapshotBuilder::new(claimed.clone());
    builder.insert_all([workload("a", "gray")]).unwrap();
    let snap = builder.build();
    assert_eq!(snap.local(), &claimed);
}

#[test]
fn a_workload_that_names_no_pod_or_an_invalid_lane_is_refused() {
    let mut builder = SnapshotBuilder::new(PodIdentity::app("default", ""));
    let cases = [
        (workload("a", "gray;drop"), "lane_tag"),
        (workload("a", "-gray"), "lane_tag"),
        (
            proto::Workload {
                name: "default/other".into(),
                ..workload("a", "")
            },
            "default/a-1",
        ),
        (
            proto::Workload {
                pod_name: String::new(),
                name: "default/".into(),
                ..workload("a", "")
            },
            "pod_name",
        ),
    ];
    for (bad, says) in cases {
        let refused = builder.insert(String::from("v"), bad.clone()).unwrap_err();
        assert_eq!(refused.kind, ResourceKind::Workload);
        assert!(refused.to_string().contains(says), "{bad:?}: {refused}");
    }
    assert_eq!(builder.build().local().app, "", "nothing refused is used");
}
