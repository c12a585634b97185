#![allow(clippy::unwrap_used, clippy::expect_used)]
//! CRD status against a real kube-apiserver: `Accepted` on every lanemesh
//! object, `Lane.status.matchedPods` following pods, refusals (by the API
//! server's CEL, and by the control plane where CEL cannot see) and NACKs.
//!
//! Needs the binaries from `e2e/cluster/build.sh`; set `LANEMESH_SKIP_CLUSTER=1` to skip.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use lanemesh_api::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy,
};
use lanemesh_api::proto::{self, DeltaDiscoveryRequest, ErrorDetail, ResourceError};
use lanemesh_api::resource::DiscoveryResource;
use lanemesh_e2e::cluster;

use support::Sidecar;
use support::cluster::{
    Held, Pilot, apply, cluster_with, delete_pod, ready_pod, short_lease, wait_object,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const LANE_GROUP: &str = <proto::LaneGroup as DiscoveryResource>::TYPE_URL;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec: {apps: [a, b], entryApps: [a]}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec:
  group: flow
  tag: gray
  match: {conditions: [{source: Header, name: canary, operator: Equal, value: gray}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: a-limit, namespace: shop}
spec: {app: a, rules: [{name: all, qps: {threshold: 10}}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: b-breakers, namespace: shop}
spec: {app: b, rules: [{name: errors, strategy: ErrorRatio, threshold: 0.5}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: OverloadProtectionPolicy
metadata: {name: a-cpu, namespace: shop}
spec: {app: a, cpuThreshold: 0.8}
"#;

fn accepted(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Accepted")
}

/// `Accepted=<status>` for the object's current generation.
fn is_accepted(
    meta: &kube::api::ObjectMeta,
    observed: Option<i64>,
    conditions: &[Condition],
    status: &str,
) -> bool {
    observed == meta.generation
        && accepted(conditions)
            .is_some_and(|c| c.status == status && c.observed_generation == meta.generation)
}

fn lane_accepted(l: &Lane, status: &str) -> bool {
    l.status
        .as_ref()
        .is_some_and(|s| is_accepted(&l.metadata, s.observed_generation, &s.conditions, status))
}

fn matched(l: &Lane) -> BTreeMap<String, u32> {
    l.status
        .as_ref()
        .map(|s| s.matched_pods.clone())
        .unwrap_or_default()
}

macro_rules! policy_accepted {
    ($api:expr, $name:expr) => {
        wait_object(&$api, $name, concat!($name, " Accepted=True"), |o| {
            o.status.as_ref().is_some_and(|s| {
                is_accepted(&o.metadata, s.observed_generation, &s.conditions, "True")
            })
        })
        .await
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_accepted_and_matched_pods_follow_pods_and_nacks() {
    if cluster::skip_requested("objects_are_accepted_and_matched_pods_follow_pods_and_nacks") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = cluster_with(OBJECTS).await;
        let client = cluster.client();
        let pilot = Pilot::start(
            client.clone(),
            Some(short_lease("status-test", "only")),
            None,
        )
        .await;

        let groups: Api<LaneGroup> = Api::namespaced(client.clone(), "shop");
        let lanes: Api<Lane> = Api::namespaced(client.clone(), "shop");
        let limits: Api<RateLimitPolicy> = Api::namespaced(client.clone(), "shop");
        let breakers: Api<CircuitBreakerPolicy> = Api::namespaced(client.clone(), "shop");
        let overloads: Api<OverloadProtectionPolicy> = Api::namespaced(client.clone(), "shop");
        policy_accepted!(groups, "flow");
        policy_accepted!(limits, "a-limit");
        policy_accepted!(breakers, "b-breakers");
        policy_accepted!(overloads, "a-cpu");
        let lane = wait_object(&lanes, "gray", "Lane Accepted with matchedPods", |l| {
            lane_accepted(l, "True")
                && l.status
                    .as_ref()
                    .is_some_and(|s| !s.matched_pods.is_empty())
        })
        .await;
        // Every app of the group is listed, with 0 when no pod carries the tag.
        assert_eq!(
            matched(&lane),
            BTreeMap::from([("a".into(), 0), ("b".into(), 0)])
        );
        let since = accepted(&lane.status.as_ref().unwrap().conditions)
            .unwrap()
            .last_transition_time
            .clone();
        assert!(pilot.metric("lanemesh_pilot_status_writes_total{") >= 5.0);
        assert_eq!(pilot.metric("lanemesh_pilot_leader "), 1.0);

        ready_pod(&client, "shop", "a-gray-1", "a", Some("gray"), "10.0.0.1").await;
        ready_pod(&client, "shop", "b-gray-1", "b", Some("gray"), "10.0.0.2").await;
        // Neither a base pod nor another lane's pod counts.
        ready_pod(&client, "shop", "a-1", "a", None, "10.0.0.3").await;
        ready_pod(&client, "shop", "a-blue-1", "a", Some("blue"), "10.0.0.4").await;
        let want = BTreeMap::from([("a".into(), 1), ("b".into(), 1)]);
        let lane = wait_object(&lanes, "gray", "matchedPods a=1 b=1", |l| {
            matched(l) == want
        })
        .await;
        // The condition did not flip, so its transition time stayed.
        assert_eq!(
            accepted(&lane.status.as_ref().unwrap().conditions)
                .unwrap()
                .last_transition_time,
            since
        );

        delete_pod(&client, "shop", "a-gray-1").await;
        let want = BTreeMap::from([("a".into(), 0), ("b".into(), 1)]);
        wait_object(&lanes, "gray", "matchedPods a=0 b=1", |l| {
            matched(l) == want
        })
        .await;

        // Kubernetes keeps times to the second: let one pass so that a flip
        // is visible in lastTransitionTime.
        tokio::time::sleep(Duration::from_millis(1100)).await;

        // A sidecar (pod b-gray-1, app b of the group) NACKs the lane part
        // of its LaneGroup: the Lane, not the group, becomes not accepted.
        let mut sidecar =
            Sidecar::connect(pilot.grpc, "b-gray-1", "shop", &Default::default()).await;
        let mut held = Held::default();
        let group = loop {
            let r = sidecar.recv().await;
            held.apply(&r);
            if r.type_url == LANE_GROUP && !r.resources.is_empty() {
                break r;
            }
            sidecar.ack(&r).await;
        };
        let res = &group.resources[0];
        assert_eq!(res.name, "shop/flow");
        sidecar
            .tx
            .send(DeltaDiscoveryRequest {
                type_url: LANE_GROUP.into(),
                response_nonce: group.nonce.clone(),
                error_detail: Some(ErrorDetail {
                    message: "1 resource refused".into(),
                    resource_errors: vec![ResourceError {
                        name: res.name.clone(),
                        version: res.version.clone(),
                        message: "lanes[0].match.conditions[0].operator: unknown value 9".into(),
                    }],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let lane = wait_object(&lanes, "gray", "Lane Accepted=False after the NACK", |l| {
            lane_accepted(l, "False")
        })
        .await;
        let c = accepted(&lane.status.as_ref().unwrap().conditions).unwrap();
        assert_eq!(c.reason, "RefusedBySidecar");
        assert!(
            c.message.contains("shop/b-gray-1") && c.message.contains("lanes[0]"),
            "{}",
            c.message
        );
        assert_ne!(c.last_transition_time, since);
        policy_accepted!(groups, "flow");

        // A new version of the lane is judged afresh: accepted again.
        apply(&cluster, &OBJECTS.replace("value: gray}", "value: grey}")).await;
        wait_object(&lanes, "gray", "Lane Accepted=True after a change", |l| {
            lane_accepted(l, "True") && l.metadata.generation == Some(2)
        })
        .await;
        pilot.stop().await;
    })
    .await
    .expect("test exceeded its time bound");
}

const PERCENTAGE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: a-1, namespace: shop, labels: {app: a, msePilotAutoEnable: "on"}}
spec: {containers: [{name: app, image: example.invalid/a:1}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec: {apps: [a], entryApps: [a], routingMode: Percentage}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: l1, namespace: shop}
spec: {group: flow, tag: gray, weight: 60}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: l2, namespace: shop}
spec: {group: flow, tag: blue, weight: 30}
"#;

fn weights(held: &Held) -> Vec<(String, u32)> {
    let any = held.get(LANE_GROUP, "shop/flow").expect("shop/flow held");
    proto::LaneGroup::from_any(any)
        .unwrap()
        .lanes
        .iter()
        .map(|l| (l.name.clone(), l.weight))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_are_refused_and_the_last_good_configuration_stays_served() {
    if cluster::skip_requested(
        "bad_objects_are_refused_and_the_last_good_configuration_stays_served",
    ) {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = cluster_with(PERCENTAGE).await;
        let client = cluster.client();
        let pilot = Pilot::start(client.clone(), Some(short_lease("bad-test", "only")), None).await;
        let lanes: Api<Lane> = Api::namespaced(client.clone(), "shop");
        wait_object(&lanes, "l2", "l2 Accepted", |l| lane_accepted(l, "True")).await;

        let mut sidecar = Sidecar::connect(pilot.grpc, "a-1", "shop", &Default::default()).await;
        let mut held = Held::default();
        for r in sidecar.initial().await.values() {
            held.apply(r);
        }
        let good = vec![("l1".to_owned(), 60), ("l2".to_owned(), 30)];
        assert_eq!(weights(&held), good);

        // What CEL can express, the API server refuses with the rule's message.
        let out = cluster
            .kubectl_stdin(
                ["apply", "-f", "-"],
                &PERCENTAGE.replace("routingMode: Percentage", "routingMode: Content"),
            )
            .await
            .unwrap();
        assert!(
            !out.status.success(),
            "the API server accepted a routingMode change"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("routingMode is immutable"), "{stderr}");

        // A sum over several objects CEL cannot see: the control plane
        // refuses the later lane and keeps serving its last good version.
        apply(&cluster, &PERCENTAGE.replace("weight: 30", "weight: 50")).await;
        let l2 = wait_object(&lanes, "l2", "l2 Accepted=False", |l| {
            lane_accepted(l, "False")
        })
        .await;
        let c = accepted(&l2.status.as_ref().unwrap().conditions).unwrap();
        assert_eq!(c.reason, "WeightSumExceeded");
        assert!(c.message.contains("110"), "{}", c.message);
        assert!(
            c.message.contains("last accepted version is still served"),
            "{}",
            c.message
        );
        assert!(lane_accepted(&lanes.get("l1").await.unwrap(), "True"));
        // Nothing new reaches the sidecar: the served group is unchanged.
        sidecar.expect_silence(Duration::from_millis(500)).await;
        assert_eq!(weights(&held), good);

        // Fixed: accepted again and pushed.
        apply(&cluster, &PERCENTAGE.replace("weight: 30", "weight: 40")).await;
        let update = sidecar.recv_type(LANE_GROUP).await;
        held.apply(&update);
        sidecar.ack(&update).await;
        assert_eq!(
            weights(&held),
            [("l1".to_owned(), 60), ("l2".to_owned(), 40)]
        );
        wait_object(&lanes, "l2", "l2 Accepted=True again", |l| {
            lane_accepted(l, "True")
        })
        .await;
        pilot.stop().await;
    })
    .await
    .expect("test exceeded its time bound");
}

/// An HTTPRoute on a lanemesh Gateway, one refused by lanemesh (a filter), one whose backend does
/// not exist, and one of another controller's Gateway (left alone).
const ROUTES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: web}
spec: {selector: {app: a}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: web}
spec: {gatewayClassName: lanemesh, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: web}
spec: {gatewayClassName: someone-else, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: web}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filtered, namespace: web}
spec:
  parentRefs: [{name: edge}]
  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-demo, value: demo}]}}]
    backendRefs: [{name: a, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: dangling, namespace: web}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: foreign, namespace: web}
spec:
  parentRefs: [{name: other}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
"#;

/// lanemesh's `(Accepted, ResolvedRefs)` statuses and reasons on `route`, when written.
fn route_conditions(
    route: &lanemesh_api::crd::gateway_api::HTTPRoute,
) -> Option<[(String, String); 2]> {
    let parent = route
        .status
        .as_ref()?
        .parents
        .iter()
        .find(|p| p.controller_name == lanemesh_api::crd::gateway_api::CONTROLLER_NAME)?;
    let get = |t: &str| {
        parent
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    Some([get("Accepted")?, get("ResolvedRefs")?])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_on_lanemesh_gateways_get_gateway_api_route_status() {
    if cluster::skip_requested("routes_on_lanemesh_gateways_get_gateway_api_route_status") {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster =
            cluster_with("apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n").await;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        cluster
            .install_crds(&root.join("e2e/vendor/gateway-api"))
            .await
            .unwrap();
        apply(&cluster, ROUTES).await;
        let client = cluster.client();
        let pilot = Pilot::start(
            client.clone(),
            Some(short_lease("route-status-test", "only")),
            None,
        )
        .await;
        let routes: Api<lanemesh_api::crd::gateway_api::HTTPRoute> =
            Api::namespaced(client.clone(), "web");
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        for (name, want) in [
            (
                "good",
                [pair("True", "Accepted"), pair("True", "ResolvedRefs")],
            ),
            (
                "filtered",
                [
                    pair("False", "UnsupportedValue"),
                    pair("True", "ResolvedRefs"),
                ],
            ),
            (
                "dangling",
                [pair("True", "Accepted"), pair("False", "BackendNotFound")],
            ),
        ] {
            wait_object(&routes, name, "route status", |r| {
                route_conditions(r).as_ref() == Some(&want)
            })
            .await;
        }
        let filtered = routes.get("filtered").await.unwrap();
        let parent = &filtered.status.as_ref().unwrap().parents[0];
        assert_eq!(parent.parent_ref.name, "edge");
        let accepted = parent
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap();
        assert!(
            accepted.message.contains("spec.rules[0].filters"),
            "{}",
            accepted.message
        );
        // A gateway's stream is served the accepted routes and their backend's Service.
        let mut gateway =
            support::Sidecar::gateway(pilot.grpc, "lanemesh-gateway-0", "lanemesh-system").await;
        let mut first = std::collections::HashMap::new();
        while first.len() < 6 {
            let r = gateway.recv().await;
            gateway.ack(&r).await;
            first.entry(r.type_url.clone()).or_insert(r);
        }
        assert_eq!(
            support::names(&first[lanemesh_api::resource::GATEWAY_TYPE_URL]),
            ["web/HTTPRoute/dangling", "web/HTTPRoute/good"]
        );
        let services = &first[<proto::Service as DiscoveryResource>::TYPE_URL];
        assert!(
            support::names(services).contains(&"web/a"),
            "{:?}",
            support::names(services)
        );
        // Another controller's route is left alone.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let foreign = routes.get("foreign").await.unwrap();
        assert!(
            foreign.status.as_ref().is_none_or(|s| s.parents.is_empty()),
            "{:?}",
            foreign.status
        );
        pilot.stop().await;
    })
    .await
    .expect("test exceeded its time bound");
}
