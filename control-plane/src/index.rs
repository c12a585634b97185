//! One index of every object the sources report, converted into a [`World`]
//! after each burst of changes (debounced) and published on a `watch`.
//!
//! A refused object keeps its last good version in force: each build first
//! converts what the sources say; every refused object is then replaced by
//! the last version of it that converted, and the build is repeated. Its
//! refusal is still reported (log + `World::rejected`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use lanemesh_api::convert::{self, Converted, Invalid, ObjectRef};
use lanemesh_api::labels;
use lanemesh_api::manifest::Manifest;
use tokio::sync::{mpsc, watch};

use crate::snapshot::{Encoded, PodInfo, Resources, World};
use crate::source::{Kind, Object, ObjectKey, SourceEvent};

/// Quiet time after a change before building.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);
/// Upper bound on how long constant churn can postpone a build.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// The objects, and the last good version of each one that ever converted.
#[derive(Debug, Default)]
pub struct Index {
    objects: BTreeMap<ObjectKey, Object>,
    last_good: HashMap<ObjectKey, Object>,
    /// Refusals already logged, with their message.
    reported: HashMap<ObjectRef, String>,
    loaded: bool,
    generation: u64,
}

/// Files an object into the manifest field of its kind, for conversion.
fn push(inputs: &mut Manifest, object: Object) {
    match object {
        Object::LaneGroup(o) => inputs.lane_groups.push(*o),
        Object::Lane(o) => inputs.lanes.push(*o),
        Object::RateLimitPolicy(o) => inputs.rate_limits.push(*o),
        Object::CircuitBreakerPolicy(o) => inputs.circuit_breakers.push(*o),
        Object::OverloadProtectionPolicy(o) => inputs.overloads.push(*o),
        Object::TrafficPolicy(o) => inputs.traffic_policies.push(*o),
        Object::Service(o) => inputs.services.push(*o),
        Object::EndpointSlice(o) => inputs.endpoint_slices.push(*o),
        Object::Pod(o) => inputs.pods.push(*o),
        Object::HttpRoute(o) => inputs.http_routes.push(*o),
        Object::Gateway(o) => inputs.gateways.push(*o),
        Object::Ingress(o) => inputs.ingresses.push(*o),
    }
}

impl Index {
    pub fn apply(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Replace(objects) => {
                self.objects = objects.into_iter().map(|o| (o.key(), o)).collect();
                self.loaded = true;
                let keys: HashSet<&ObjectKey> = self.objects.keys().collect();
                self.last_good.retain(|k, _| keys.contains(k));
            }
            SourceEvent::ReplaceKind(kind, objects) => {
                self.objects.retain(|k, _| k.kind != kind);
                let keys: HashSet<ObjectKey> = objects.iter().map(Object::key).collect();
                self.last_good
                    .retain(|k, _| k.kind != kind || keys.contains(k));
                self.objects
                    .extend(objects.into_iter().map(|o| (o.key(), o)));
            }
            SourceEvent::Synced => self.loaded = true,
            SourceEvent::Apply(object) => {
                self.objects.insert(object.key(), object);
            }
            SourceEvent::Delete(key) => {
                self.objects.remove(&key);
                self.last_good.remove(&key);
            }
        }
    }

    /// Converts everything into a new [`World`].
    pub fn build(&mut self) -> World {
        self.generation += 1;
        let pods: Vec<&Pod> = self
            .objects
            .values()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(&**p),
                _ => None,
            })
            .collect();
        let replicas = ready_replicas(&pods);
        let pod_infos = pod_infos(&pods);

        let current = self.objects.values().cloned();
        let first = convert_all(&inputs(current), &replicas);
        let refused: HashSet<ObjectKey> = first.rejected().filter_map(key_of).collect();
        for (key, object) in &self.objects {
            if !refused.contains(key) && key.kind != Kind::Pod && key.kind != Kind::EndpointSlice {
                self.last_good.insert(key.clone(), object.clone());
            }
        }
        let rejected: Vec<Invalid> = first.rejected().cloned().collect();
        self.reported
            .retain(|object, _| rejected.iter().any(|r| &r.object == object));
        let converted = if refused.is_empty() {
            first
        } else {
            for invalid in &rejected {
                let message = invalid.message();
                // Rebuilds are frequent (pod churn); say it once per refusal.
                if self.reported.get(&invalid.object) == Some(&message) {
                    continue;
                }
                let kept = key_of(invalid).is_some_and(|k| self.last_good.contains_key(&k));
                tracing::warn!(
                    object = %invalid.object,
                    errors = %message,
                    kept_last_good = kept,
                    "object refused"
                );
                self.reported.insert(invalid.object.clone(), message);
            }
            let substituted = self.objects.iter().filter_map(|(key, object)| {
                if refused.contains(key) {
                    self.last_good.get(key).cloned()
                } else {
                    Some(object.clone())
                }
            });
            convert_all(&inputs(substituted), &replicas)
        };

        let kept_last_good = refused
            .iter()
            .filter(|k| self.last_good.contains_key(k))
            .cloned()
            .collect();
        let route_parents = route_parents(&self.objects);
        let objects = self
            .objects
            .iter()
            .filter(|(k, _)| k.kind.is_lanemesh() || route_parents.contains_key(*k))
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        let mut world = World {
            generation: self.generation,
            ready: self.loaded,
            built_at: Instant::now(),
            pods: pod_infos,
            rejected,
            objects: Arc::new(objects),
            kept_last_good,
            route_parents,
            ..World::default()
        };
        for s in &converted.services.resources {
            world
                .service_apps
                .insert(s.name.clone(), (s.namespace.clone(), s.app.clone()));
        }
        for g in &converted.lane_groups.resources {
            world
                .group_apps
                .insert(g.name.clone(), (g.namespace.clone(), g.apps.clone()));
        }
        world.services = encode(&converted.services.resources);
        world.lane_groups = encode(&converted.lane_groups.resources);
        world.inbound = encode(&converted.inbound.resources);
        world.outbound = encode(&converted.outbound.resources);
        world.gateway_routes = encode(&converted.gateway_routes.resources);
        world
    }
}

/// The HTTPRoutes attached to a Gateway of lanemesh's class, with those parentRefs, normalised
/// (group and kind filled in as the API server defaults them) so that they compare equal to
/// what a route's status holds.
fn route_parents(
    objects: &BTreeMap<ObjectKey, Object>,
) -> BTreeMap<ObjectKey, Vec<lanemesh_api::crd::gateway_api::ParentReference>> {
    use lanemesh_api::crd::gateway_api::GATEWAY_GROUP;
    let gateways: Vec<_> = objects
        .values()
        .filter_map(|o| match o {
            Object::Gateway(g) => Some((**g).clone()),
            _ => None,
        })
        .collect();
    objects
        .iter()
        .filter_map(|(key, o)| match o {
            Object::HttpRoute(route) => {
                let parents: Vec<_> =
                    convert::lanemesh_parents(route, &gateways, convert::DEFAULT_GATEWAY_CLASS)
                        .into_iter()
                        .map(|p| {
                            let mut p = p.clone();
                            p.group.get_or_insert_with(|| GATEWAY_GROUP.to_owned());
                            p.kind.get_or_insert_with(|| "Gateway".to_owned());
                            p
                        })
                        .collect();
                (!parents.is_empty()).then(|| (key.clone(), parents))
            }
            _ => None,
        })
        .collect()
}

fn inputs(objects: impl Iterator<Item = Object>) -> Manifest {
    let mut inputs = Manifest::default();
    for o in objects {
        push(&mut inputs, o);
    }
    inputs
}

fn convert_all(i: &Manifest, replicas: &HashMap<(String, String), u32>) -> Converted {
    let ready = |ns: &str, app: &str| {
        replicas
            .get(&(ns.to_owned(), app.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    convert::manifest(i, &ready)
}

fn key_of(invalid: &Invalid) -> Option<ObjectKey> {
    Some(ObjectKey {
        kind: Kind::parse(invalid.object.kind)?,
        namespace: invalid.object.namespace.clone(),
        name: invalid.object.name.clone(),
    })
}

fn encode<T: lanemesh_api::resource::DiscoveryResource>(items: &[T]) -> Resources {
    items
        .iter()
        .map(|r| {
            let e = Encoded::new(r);
            (e.name.clone(), Arc::new(e))
        })
        .collect()
}

fn governed_labels(pod: &Pod) -> Option<&BTreeMap<String, String>> {
    pod.metadata
        .labels
        .as_ref()
        .filter(|l| labels::is_governed(l))
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready governed pods per (namespace, app): the divisor of Cluster-scoped
/// QPS thresholds.
fn ready_replicas(pods: &[&Pod]) -> HashMap<(String, String), u32> {
    let mut out: HashMap<(String, String), u32> = HashMap::new();
    for pod in pods.iter().filter(|p| pod_ready(p)) {
        let Some(app) = governed_labels(pod).and_then(labels::app_name) else {
            continue;
        };
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| convert::DEFAULT_NAMESPACE.to_owned());
        *out.entry((ns, app.to_owned())).or_default() += 1;
    }
    out
}

fn pod_infos(pods: &[&Pod]) -> HashMap<(String, String), PodInfo> {
    pods.iter()
        .filter_map(|pod| {
            let l = governed_labels(pod)?;
            let ns = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| convert::DEFAULT_NAMESPACE.to_owned());
            let info = PodInfo {
                app: labels::app_name(l).unwrap_or_default().to_owned(),
                lane_tag: labels::lane_tag(l).unwrap_or_default().to_owned(),
                ip: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default(),
                ready: pod_ready(pod),
                terminating: pod.metadata.deletion_timestamp.is_some(),
            };
            Some(((ns, pod.metadata.name.clone()?), info))
        })
        .collect()
}

/// Applies source events and publishes a new [`World`] after each burst:
/// `debounce` of quiet, at most [`MAX_DELAY`] after the burst's first event.
/// Ends when every source has gone.
pub async fn run(
    mut events: mpsc::Receiver<SourceEvent>,
    worlds: watch::Sender<Arc<World>>,
    debounce: Duration,
) {
    let mut index = Index::default();
    while let Some(event) = events.recv().await {
        index.apply(event);
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet = tokio::time::Instant::now() + debounce;
            match tokio::time::timeout_at(quiet.min(deadline), events.recv()).await {
                Ok(Some(event)) => index.apply(event),
                Ok(None) | Err(_) => break,
            }
        }
        let world = index.build();
        tracing::debug!(
            generation = world.generation,
            services = world.services.len(),
            lane_groups = world.lane_groups.len(),
            inbound = world.inbound.len(),
            outbound = world.outbound.len(),
            rejected = world.rejected.len(),
            "index built"
        );
        worlds.send_replace(Arc::new(world));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::local::parse;

    const GOOD_LIMIT: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: limit, namespace: shop}
spec:
  app: b
  rules:
  - name: all
    scope: Cluster
    qps: {threshold: 10}
"#;

    fn pods(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: b-{i}, namespace: shop, labels: {{app: b, msePilotAutoEnable: "on"}}}}
status: {{podIP: 10.0.0.{i}, conditions: [{{type: Ready, status: "True"}}]}}
"#
                )
            })
            .collect()
    }

    fn replace(yaml: &str) -> SourceEvent {
        SourceEvent::Replace(parse(yaml).unwrap())
    }

    fn qps_threshold(world: &World) -> f64 {
        let any = &world.inbound["shop/b"].any;
        let p = <lanemesh_api::proto::InboundPolicy as lanemesh_api::resource::DiscoveryResource>::from_any(any).unwrap();
        p.rules[0].qps.as_ref().unwrap().threshold
    }

    #[test]
    fn cluster_scope_divides_by_ready_governed_replicas() {
        let mut index = Index::default();
        index.apply(replace(&format!("{GOOD_LIMIT}{}", pods(4))));
        let world = index.build();
        assert!(world.ready);
        assert_eq!(qps_threshold(&world), 2.5);
    }

    #[test]
    fn a_refused_object_keeps_its_last_good_version_and_is_reported() {
        let mut index = Index::default();
        index.apply(replace(GOOD_LIMIT));
        let good = index.build();
        assert!(good.rejected.is_empty());
        let bad = GOOD_LIMIT.replace("threshold: 10", "threshold: -1");
        index.apply(replace(&bad));
        let world = index.build();
        assert_eq!(world.rejected.len(), 1, "{:?}", world.rejected);
        assert!(world.rejected[0].names_field("spec.rules[0].qps.threshold"));
        assert_eq!(world.inbound["shop/b"], good.inbound["shop/b"]);

        // A never-good object is simply absent.
        let mut fresh = Index::default();
        fresh.apply(replace(&bad));
        assert!(fresh.build().inbound.is_empty());
    }

    #[test]
    fn a_deleted_object_does_not_come_back_as_last_good() {
        let mut index = Index::default();
        index.apply(replace(GOOD_LIMIT));
        index.build();
        index.apply(replace(""));
        assert!(index.build().inbound.is_empty());
    }
}
