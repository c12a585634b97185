//! The converted, encoded state of everything ([`World`]) and the part of it
//! one sidecar receives ([`NodeSnapshot`], DESIGN §6).
//!
//! A node receives: the Services of its namespace plus those of the apps in
//! its lane groups; the LaneGroups listing its app; its own InboundPolicy;
//! the OutboundPolicies of the apps behind the Services it receives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use lanemesh_api::convert::Invalid;
use lanemesh_api::crd::gateway_api::ParentReference;
use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;

use crate::source::{Object, ObjectKey};

/// One resource ready to send: encoded once per build, shared by every
/// stream that sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub name: String,
    /// A stable hash of the encoded bytes: equal content, equal version,
    /// across restarts and replicas (so a reconnecting sidecar's
    /// `initial_resource_versions` match).
    pub version: String,
    pub any: prost_types::Any,
}

impl Encoded {
    pub fn new<T: DiscoveryResource>(resource: &T) -> Self {
        let any = resource.to_any();
        Self {
            name: resource.resource_name().to_owned(),
            version: version_of(&any.value),
            any,
        }
    }
}

/// FNV-1a 64 of the bytes, hex. Stable across builds and platforms, unlike
/// `std`'s `DefaultHasher`.
pub fn version_of(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Resources of one type by name.
pub type Resources = BTreeMap<String, Arc<Encoded>>;

/// What the index knows about a pod, for identifying nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub app: String,
    pub lane_tag: String,
    pub ip: String,
    /// Ready condition true and not being deleted.
    pub ready: bool,
    /// Being deleted (`deletionTimestamp` set).
    pub terminating: bool,
}

/// Everything converted, as of one index build. Immutable; replaced whole.
#[derive(Debug, Clone)]
pub struct World {
    /// Increases with every build.
    pub generation: u64,
    /// The source's first full load is in.
    pub ready: bool,
    pub built_at: Instant,
    pub services: Resources,
    pub lane_groups: Resources,
    pub inbound: Resources,
    pub outbound: Resources,
    /// Routes of the lanemesh gateway class (HTTPRoutes, Ingresses).
    pub gateway_routes: Resources,
    /// Service name -> (namespace, app).
    pub service_apps: BTreeMap<String, (String, String)>,
    /// LaneGroup name -> (namespace, apps).
    pub group_apps: BTreeMap<String, (String, Vec<String>)>,
    /// (namespace, pod) -> governed pod facts.
    pub pods: HashMap<(String, String), PodInfo>,
    /// Objects refused by the latest build (their last good version, if
    /// any, is what is served).
    pub rejected: Vec<Invalid>,
    /// The lanemesh objects as the sources report them (not their last good
    /// versions), with their current status: the input of status writing.
    pub objects: Arc<BTreeMap<ObjectKey, Object>>,
    /// Refused objects whose last good version is what is served.
    pub kept_last_good: BTreeSet<ObjectKey>,
    /// HTTPRoutes attached to a Gateway of lanemesh's class -> those parentRefs: the route
    /// status entries the control plane writes.
    pub route_parents: BTreeMap<ObjectKey, Vec<ParentReference>>,
}

impl Default for World {
    fn default() -> Self {
        Self {
            generation: 0,
            ready: false,
            built_at: Instant::now(),
            services: Resources::new(),
            lane_groups: Resources::new(),
            inbound: Resources::new(),
            outbound: Resources::new(),
            gateway_routes: Resources::new(),
            service_apps: BTreeMap::new(),
            group_apps: BTreeMap::new(),
            pods: HashMap::new(),
            rejected: Vec::new(),
            objects: Arc::default(),
            kept_last_good: BTreeSet::new(),
            route_parents: BTreeMap::new(),
        }
    }
}

/// Who a snapshot is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    pub namespace: String,
    pub pod_name: String,
    /// The app the sidecar reports; the index's pod labels win when the
    /// index knows the pod.
    pub app: String,
    /// The lane tag the sidecar reports; the same rule as `app`.
    pub lane_tag: String,
    /// A gateway: it receives the gateway routes and what their backends need.
    pub gateway: bool,
}

impl From<&proto::Node> for NodeKey {
    fn from(node: &proto::Node) -> Self {
        Self {
            namespace: node.namespace.clone(),
            pod_name: node.pod_name.clone(),
            app: node.app.clone(),
            lane_tag: node.lane_tag.clone(),
            gateway: node.gateway,
        }
    }
}

/// What one node receives, per type URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSnapshot {
    pub generation: u64,
    pub app: String,
    pub lane_tag: String,
    pub services: Resources,
    pub lane_groups: Resources,
    pub inbound: Resources,
    pub outbound: Resources,
    /// Exactly one: who the node is (its app and lane tag).
    pub workload: Resources,
    /// Gateways only: every route of the lanemesh gateway class.
    pub gateway_routes: Resources,
}

impl NodeSnapshot {
    /// The resources of `type_url`; `None` for a type this server does not know.
    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        match type_url {
            t if t == <proto::Service as DiscoveryResource>::TYPE_URL => Some(&self.services),
            t if t == <proto::LaneGroup as DiscoveryResource>::TYPE_URL => Some(&self.lane_groups),
            t if t == <proto::InboundPolicy as DiscoveryResource>::TYPE_URL => Some(&self.inbound),
            t if t == <proto::OutboundPolicy as DiscoveryResource>::TYPE_URL => {
                Some(&self.outbound)
            }
            t if t == <proto::Workload as DiscoveryResource>::TYPE_URL => Some(&self.workload),
            t if t == <proto::GatewayRoute as DiscoveryResource>::TYPE_URL => {
                Some(&self.gateway_routes)
            }
            _ => None,
        }
    }
}

/// The part of `world` that concerns `node`.
pub fn for_node(world: &World, node: &NodeKey) -> NodeSnapshot {
    // The pod's labels are the truth when the index knows the pod; the
    // app the sidecar reports covers pods outside the index (e.g. a gateway
    // or a process outside Kubernetes).
    let pod = world
        .pods
        .get(&(node.namespace.clone(), node.pod_name.clone()));
    let app = pod
        .map(|p| p.app.clone())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| node.app.clone());
    // A known pod's lane is its label, even when the label is absent (base): a sidecar cannot
    // claim a lane its pod is not in.
    let lane_tag = pod.map_or_else(|| node.lane_tag.clone(), |p| p.lane_tag.clone());
    let workload = proto::Workload {
        name: format!("{}/{}", node.namespace, node.pod_name),
        namespace: node.namespace.clone(),
        pod_name: node.pod_name.clone(),
        app: app.clone(),
        lane_tag: lane_tag.clone(),
        terminating: pod.is_some_and(|p| p.terminating),
    };
    let pick = |all: &Resources, names: &mut dyn Iterator<Item = &String>| -> Resources {
        names
            .filter_map(|n| all.get(n).map(|r| (n.clone(), Arc::clone(r))))
            .collect()
    };

    let groups: Vec<&String> = world
        .group_apps
        .iter()
        .filter(|(_, (ns, apps))| *ns == node.namespace && !app.is_empty() && apps.contains(&app))
        .map(|(name, _)| name)
        .collect();
    // Every group of the node's namespace goes to the node, not only those listing its app: a
    // caller takes the lane decision for an entry app it calls and routes a tagged request by
    // the lanes enabled for the destination's app, also when it is in no group itself (DESIGN §4).
    // A gateway routes to the backends of every route: their Services, and the lane groups of
    // their namespaces (it takes the entry decision for them, as a governed caller does).
    let (gateway_routes, backends, backend_namespaces) = if node.gateway {
        let (backends, namespaces) = gateway_backends(&world.gateway_routes);
        (world.gateway_routes.clone(), backends, namespaces)
    } else {
        (Resources::new(), BTreeSet::new(), BTreeSet::new())
    };
    let namespace_groups = world
        .group_apps
        .iter()
        .filter(|(_, (ns, _))| *ns == node.namespace || backend_namespaces.contains(ns))
        .map(|(name, _)| name);
    // (namespace, app) pairs reachable through the node's lane groups.
    let group_members: BTreeSet<(&str, &str)> = groups
        .iter()
        .filter_map(|g| world.group_apps.get(*g))
        .flat_map(|(ns, apps)| apps.iter().map(move |a| (ns.as_str(), a.as_str())))
        .collect();
    let services: Vec<&String> = world
        .service_apps
        .iter()
        .filter(|(name, (ns, svc_app))| {
            *ns == node.namespace
                || backends.contains(name.as_str())
                || (!svc_app.is_empty() && group_members.contains(&(ns.as_str(), svc_app.as_str())))
        })
        .map(|(name, _)| name)
        .collect();
    let outbound: BTreeSet<String> = services
        .iter()
        .filter_map(|s| world.service_apps.get(*s))
        .filter(|(_, a)| !a.is_empty())
        .map(|(ns, a)| format!("{ns}/{a}"))
        .collect();
    let inbound = format!("{}/{app}", node.namespace);

    NodeSnapshot {
        generation: world.generation,
        services: pick(&world.services, &mut services.into_iter()),
        lane_groups: pick(&world.lane_groups, &mut namespace_groups.into_iter()),
        inbound: if app.is_empty() {
            Resources::new()
        } else {
            pick(&world.inbound, &mut std::iter::once(&inbound))
        },
        outbound: pick(&world.outbound, &mut outbound.iter()),
        workload: std::iter::once((workload.name.clone(), Arc::new(Encoded::new(&workload))))
            .collect(),
        gateway_routes,
        app,
        lane_tag,
    }
}

/// The Services the gateway routes name (`namespace/name`), and their namespaces.
fn gateway_backends(routes: &Resources) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut services = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for encoded in routes.values() {
        // Encoded by this process from a valid route: decoding cannot fail; skip if it does.
        let Ok(route) = proto::GatewayRoute::from_any(&encoded.any) else {
            continue;
        };
        for backend in route.rules.iter().flat_map(|r| &r.backends) {
            if let Some((ns, _)) = backend.service.split_once('/') {
                namespaces.insert(ns.to_owned());
            }
            services.insert(backend.service.clone());
        }
    }
    (services, namespaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_fnv1a64_of_the_bytes() {
        // Reference values of FNV-1a 64 (offset basis for empty input).
        assert_eq!(version_of(b""), "cbf29ce484222325");
        assert_eq!(version_of(b"a"), "af63dc4c8601ec8c");
    }

    fn world() -> World {
        let mut w = World::default();
        let svc = |ns: &str, name: &str, app: &str| proto::Service {
            name: format!("{ns}/{name}"),
            namespace: ns.into(),
            app: app.into(),
            ..Default::default()
        };
        for s in [
            svc("a", "front", "front"),
            svc("a", "plain", ""),
            svc("b", "back", "back"),
            svc("c", "other", "other"),
        ] {
            w.service_apps
                .insert(s.name.clone(), (s.namespace.clone(), s.app.clone()));
            w.services
                .insert(s.name.clone(), Arc::new(Encoded::new(&s)));
        }
        // A group in namespace b listing front and back: not front's group,
        // since groups are per namespace.
        for (ns, name, apps) in [("a", "g", vec!["front"]), ("b", "h", vec!["front", "back"])] {
            let g = proto::LaneGroup {
                name: format!("{ns}/{name}"),
                namespace: ns.into(),
                apps: apps.iter().map(|a| (*a).to_owned()).collect(),
                ..Default::default()
            };
            w.group_apps
                .insert(g.name.clone(), (ns.to_owned(), g.apps.clone()));
            w.lane_groups
                .insert(g.name.clone(), Arc::new(Encoded::new(&g)));
        }
        for (ns, app) in [("a", "front"), ("b", "back"), ("c", "other")] {
            let p = proto::InboundPolicy {
                name: format!("{ns}/{app}"),
                ..Default::default()
            };
            w.inbound.insert(p.name.clone(), Arc::new(Encoded::new(&p)));
            let o = proto::OutboundPolicy {
                name: format!("{ns}/{app}"),
                ..Default::default()
            };
            w.outbound
                .insert(o.name.clone(), Arc::new(Encoded::new(&o)));
        }
        w.pods.insert(
            ("a".into(), "front-1".into()),
            PodInfo {
                app: "front".into(),
                lane_tag: String::new(),
                ip: "10.0.0.1".into(),
                ready: true,
                terminating: false,
            },
        );
        w
    }

    fn names(r: &Resources) -> Vec<&str> {
        r.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_node_gets_its_namespace_its_groups_and_what_it_reaches() {
        let node = NodeKey {
            namespace: "a".into(),
            pod_name: "front-1".into(),
            app: String::new(),
            lane_tag: String::new(),
            gateway: false,
        };
        let s = for_node(&world(), &node);
        assert_eq!(s.app, "front", "app comes from the pod index");
        let claimed = NodeKey {
            app: "back".into(),
            ..node
        };
        assert_eq!(
            for_node(&world(), &claimed).app,
            "front",
            "labels win over the claim"
        );
        assert_eq!(names(&s.services), ["a/front", "a/plain"]);
        assert_eq!(names(&s.lane_groups), ["a/g"]);
        assert_eq!(names(&s.inbound), ["a/front"]);
        assert_eq!(names(&s.outbound), ["a/front"]);
    }

    #[test]
    fn lane_group_members_bring_their_services_and_outbound_policies() {
        let node = NodeKey {
            namespace: "b".into(),
            pod_name: "x".into(),
            app: "front".into(),
            lane_tag: String::new(),
            gateway: false,
        };
        let s = for_node(&world(), &node);
        assert_eq!(names(&s.lane_groups), ["b/h"]);
        assert_eq!(names(&s.services), ["b/back"]);
        assert_eq!(names(&s.outbound), ["b/back"]);
        assert!(s.inbound.is_empty(), "no policy for b/front");
    }

    #[test]
    fn a_gateway_gets_every_route_and_what_their_backends_need() {
        let mut w = world();
        let route = proto::GatewayRoute {
            name: "b/HTTPRoute/web".into(),
            namespace: "b".into(),
            rules: vec![proto::GatewayRule {
                backends: vec![proto::Backend {
                    service: "b/back".into(),
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        w.gateway_routes
            .insert(route.name.clone(), Arc::new(Encoded::new(&route)));
        let gateway = NodeKey {
            namespace: "lanemesh-system".into(),
            pod_name: "gateway-1".into(),
            app: "lanemesh-gateway".into(),
            lane_tag: String::new(),
            gateway: true,
        };
        let s = for_node(&w, &gateway);
        assert_eq!(names(&s.gateway_routes), ["b/HTTPRoute/web"]);
        assert_eq!(
            names(&s.services),
            ["b/back"],
            "the backends' Services only"
        );
        assert_eq!(
            names(&s.lane_groups),
            ["b/h"],
            "the backends' namespaces' groups"
        );
        assert_eq!(names(&s.outbound), ["b/back"]);
        let type_url = <proto::GatewayRoute as DiscoveryResource>::TYPE_URL;
        assert_eq!(s.of_type(type_url).map(Resources::len), Some(1));
        let sidecar = NodeKey {
            gateway: false,
            ..gateway
        };
        assert!(
            for_node(&w, &sidecar).gateway_routes.is_empty(),
            "a sidecar gets no routes"
        );
    }

    #[test]
    fn a_node_in_no_group_still_gets_its_namespaces_groups_to_decide_and_route_lanes() {
        // A caller outside every group decides the lane of an entry app it calls, and routes a
        // tagged request by the lanes enabled for the destination app: it needs the groups.
        let node = NodeKey {
            namespace: "b".into(),
            pod_name: "caller".into(),
            app: "client".into(),
            lane_tag: String::new(),
            gateway: false,
        };
        let s = for_node(&world(), &node);
        assert_eq!(names(&s.lane_groups), ["b/h"]);
        assert_eq!(
            names(&s.services),
            ["b/back"],
            "only its namespace's services: it is no group's member"
        );
    }

    #[test]
    fn unknown_pod_without_app_gets_only_its_namespace_services() {
        let node = NodeKey {
            namespace: "c".into(),
            pod_name: "nobody".into(),
            app: String::new(),
            lane_tag: String::new(),
            gateway: false,
        };
        let s = for_node(&world(), &node);
        assert_eq!(names(&s.services), ["c/other"]);
        assert!(s.lane_groups.is_empty() && s.inbound.is_empty());
        assert_eq!(names(&s.outbound), ["c/other"]);
    }

    fn workload(s: &NodeSnapshot) -> proto::Workload {
        let [(name, encoded)] = <[_; 1]>::try_from(s.workload.iter().collect::<Vec<_>>()).unwrap();
        let w = proto::Workload::from_any(&encoded.any).unwrap();
        assert_eq!(&w.name, name);
        w
    }

    #[test]
    fn the_workload_tells_a_known_pod_its_labels_and_echoes_an_unknown_one() {
        let mut world = world();
        let known = NodeKey {
            namespace: "a".into(),
            pod_name: "front-1".into(),
            app: String::new(),
            lane_tag: String::new(),
            gateway: false,
        };
        let w = workload(&for_node(&world, &known));
        assert_eq!(
            (w.name.as_str(), w.namespace.as_str(), w.pod_name.as_str()),
            ("a/front-1", "a", "front-1")
        );
        assert_eq!((w.app.as_str(), w.lane_tag.as_str()), ("front", ""));

        // Relabelled into a lane: the next snapshot says so, under a new version.
        let before = for_node(&world, &known).workload;
        world
            .pods
            .get_mut(&("a".into(), "front-1".into()))
            .unwrap()
            .lane_tag = "gray".into();
        let after = for_node(&world, &known);
        assert_eq!(workload(&after).lane_tag, "gray");
        assert_ne!(
            before["a/front-1"].version,
            after.workload["a/front-1"].version
        );

        // A known pod cannot claim another lane or app.
        let claiming = NodeKey {
            app: "back".into(),
            lane_tag: "blue".into(),
            gateway: false,
            ..known.clone()
        };
        let w = workload(&for_node(&world, &claiming));
        assert_eq!((w.app.as_str(), w.lane_tag.as_str()), ("front", "gray"));
        assert!(!w.terminating);

        // Deleted: the sidecar learns it while the app still serves.
        world
            .pods
            .get_mut(&("a".into(), "front-1".into()))
            .unwrap()
            .terminating = true;
        assert!(workload(&for_node(&world, &known)).terminating);

        // Outside the index (local mode, a process outside Kubernetes): the claim, echoed.
        let outside = NodeKey {
            namespace: "c".into(),
            pod_name: "dev".into(),
            app: "other".into(),
            lane_tag: "blue".into(),
            gateway: false,
        };
        let w = workload(&for_node(&world, &outside));
        assert_eq!((w.app.as_str(), w.lane_tag.as_str()), ("other", "blue"));
    }
}
