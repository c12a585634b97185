//! The status each lanemesh object should have, computed from a [`World`]
//! and the NACK blame (pure: no clients, the clock passed in).
//!
//! The control plane owns three things of a status: the `Accepted`
//! condition, `observedGeneration`, and (Lanes only) `matchedPods`. Other
//! conditions are left to whoever wrote them (server-side apply merges the
//! condition list by `type`).
//!
//! Of an HTTPRoute attached to a lanemesh Gateway it owns the `status.parents` entries with
//! lanemesh's `controllerName`, one per such parent, with the Gateway API conditions
//! `Accepted` (`Accepted`, or `UnsupportedValue` with the refusal) and `ResolvedRefs`
//! (`ResolvedRefs`, or `BackendNotFound` naming the missing Services); other controllers'
//! entries are kept as they are.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use lanemesh_api::convert::{Invalid, Violation};
use lanemesh_api::crd::gateway_api::{CONTROLLER_NAME, ParentReference, RouteParentStatus};
use serde::Serialize;

use crate::snapshot::World;
use crate::source::{Kind, Object, ObjectKey};

/// The condition type the control plane writes.
pub const ACCEPTED: &str = "Accepted";

/// `reason` values of the `Accepted` condition.
pub mod reason {
    /// Converted and served.
    pub const ACCEPTED: &str = "Accepted";
    /// Refused by conversion, for a reason without its own name below.
    pub const INVALID: &str = "Invalid";
    /// A Lane names a LaneGroup that does not exist in its namespace.
    pub const GROUP_NOT_FOUND: &str = "GroupNotFound";
    /// A Lane's LaneGroup is itself refused.
    pub const GROUP_NOT_ACCEPTED: &str = "GroupNotAccepted";
    /// The lane's weight would push its group's sum over 100.
    pub const WEIGHT_SUM_EXCEEDED: &str = "WeightSumExceeded";
    /// Another object already claims what this one sets (first by name wins).
    pub const CONFLICT: &str = "Conflict";
    /// A name or tag repeated where it must be unique.
    pub const DUPLICATE: &str = "Duplicate";
    /// A sidecar NACKed the resource built from this object.
    pub const REFUSED_BY_SIDECAR: &str = "RefusedBySidecar";
    /// Served, but uses a deprecated field (the message names it and its replacement).
    pub const DEPRECATED: &str = "Deprecated";
}

/// Accepted objects using a deprecated field say so in their `Accepted` condition, which stays
/// True: `kubectl get` shows the reason, `kubectl describe` what to do.
fn deprecation(object: &Object) -> Option<&'static str> {
    match object {
        Object::CircuitBreakerPolicy(p) if p.spec.timeout.is_some() => Some(
            "spec.timeout is deprecated: set the timeout in the app's TrafficPolicy (spec.timeout or a rule's timeout), which wins over this one",
        ),
        _ => None,
    }
}

/// Whether an object is accepted, and why (not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn accepted() -> Self {
        Self {
            accepted: true,
            reason: reason::ACCEPTED,
            message: "the control plane serves this object".to_owned(),
        }
    }

    /// A conversion refusal. `kept_last_good`: an earlier version is what
    /// sidecars still receive.
    pub fn refused(invalid: &Invalid, kept_last_good: bool) -> Self {
        let mut reasons = invalid.errors.iter().map(|e| reason_of(&e.violation));
        let first = reasons.next().unwrap_or(reason::INVALID);
        // One named reason only when every error agrees on it.
        let reason = if reasons.all(|r| r == first) {
            first
        } else {
            reason::INVALID
        };
        let served = if kept_last_good {
            "the last accepted version is still served"
        } else {
            "nothing of it is served"
        };
        Self {
            accepted: false,
            reason,
            message: format!("{}; {served}", invalid.message()),
        }
    }
}

fn reason_of(v: &Violation) -> &'static str {
    match v {
        Violation::UnknownGroup { .. } => reason::GROUP_NOT_FOUND,
        Violation::RefusedGroup { .. } => reason::GROUP_NOT_ACCEPTED,
        Violation::WeightSumExceeded { .. } => reason::WEIGHT_SUM_EXCEEDED,
        Violation::Conflict(_) => reason::CONFLICT,
        Violation::Duplicate { .. } => reason::DUPLICATE,
        _ => reason::INVALID,
    }
}

/// The part of a status the control plane owns, in the wire shape of
/// `PolicyStatus` / `LaneStatus` (so it is also the apply patch body).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// At most the `Accepted` condition (lanemesh kinds; HTTPRoutes have none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Lanes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<BTreeMap<String, u32>>,
    /// HTTPRoutes only: every `status.parents` entry (other controllers' too, since the list is
    /// replaced as a whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents: Option<Vec<RouteParentStatus>>,
}

impl OwnedStatus {
    /// What of `object`'s current status the control plane owns.
    pub fn of(object: &Object) -> Self {
        if let Object::HttpRoute(route) = object {
            return Self {
                parents: Some(
                    route
                        .status
                        .as_ref()
                        .map(|s| s.parents.clone())
                        .unwrap_or_default(),
                ),
                ..Self::default()
            };
        }
        let (observed_generation, conditions, matched_pods) = match object {
            Object::Lane(o) => match &o.status {
                Some(s) => (
                    s.observed_generation,
                    s.conditions.as_slice(),
                    Some(s.matched_pods.clone()),
                ),
                None => (None, &[][..], None),
            },
            other => {
                let status = match other {
                    Object::LaneGroup(o) => o.status.as_ref(),
                    Object::RateLimitPolicy(o) => o.status.as_ref(),
                    Object::CircuitBreakerPolicy(o) => o.status.as_ref(),
                    Object::OverloadProtectionPolicy(o) => o.status.as_ref(),
                    Object::TrafficPolicy(o) => o.status.as_ref(),
                    _ => None,
                };
                match status {
                    Some(s) => (s.observed_generation, s.conditions.as_slice(), None),
                    None => (None, &[][..], None),
                }
            }
        };
        Self {
            observed_generation,
            conditions: conditions
                .iter()
                .filter(|c| c.type_ == ACCEPTED)
                .cloned()
                .collect(),
            matched_pods,
            parents: None,
        }
    }

    fn accepted(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == ACCEPTED)
    }
}

/// The status `current` should become. `lastTransitionTime` moves to `now`
/// only when the condition's status flips (or it is new).
pub fn next_status(
    current: &OwnedStatus,
    generation: Option<i64>,
    verdict: &Verdict,
    matched_pods: Option<BTreeMap<String, u32>>,
    now: &Time,
) -> OwnedStatus {
    let status = if verdict.accepted { "True" } else { "False" };
    let last_transition_time = match current.accepted() {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now.clone(),
    };
    OwnedStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: ACCEPTED.to_owned(),
            status: status.to_owned(),
            reason: verdict.reason.to_owned(),
            message: verdict.message.clone(),
            observed_generation: generation,
            last_transition_time,
        }],
        matched_pods,
        parents: None,
    }
}

/// What the control plane knows of an HTTPRoute for its status.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteFacts {
    /// The lanemesh Gateways it is attached to (normalised parentRefs).
    pub parents: Vec<ParentReference>,
    /// Backends without a Service, `namespace/name`.
    pub missing_backends: Vec<String>,
}

/// The route status `current` should become: every other controller's entry as it is, then
/// one entry of lanemesh per parent in `facts`. A condition's `lastTransitionTime` moves to
/// `now` only when its status flips (or it is new).
pub fn next_route_status(
    current: &OwnedStatus,
    generation: Option<i64>,
    verdict: &Verdict,
    facts: &RouteFacts,
    now: &Time,
) -> OwnedStatus {
    let current = current.parents.as_deref().unwrap_or_default();
    let mut parents: Vec<RouteParentStatus> = current
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for parent in &facts.parents {
        let previous = current
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && &p.parent_ref == parent);
        let condition = |type_: &str, ok: bool, reason: &str, message: String| {
            let status = if ok { "True" } else { "False" };
            let last_transition_time = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
                .filter(|c| c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time,
            }
        };
        let accepted = if verdict.accepted {
            condition(ACCEPTED, true, "Accepted", verdict.message.clone())
        } else {
            condition(ACCEPTED, false, "UnsupportedValue", verdict.message.clone())
        };
        let resolved = if facts.missing_backends.is_empty() {
            condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every backend is a Service".to_owned(),
            )
        } else {
            condition(
                "ResolvedRefs",
                false,
                "BackendNotFound",
                format!("no Service {}", facts.missing_backends.join(", ")),
            )
        };
        parents.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: vec![accepted, resolved],
        });
    }
    OwnedStatus {
        parents: Some(parents),
        ..OwnedStatus::default()
    }
}

/// The route facts of `object`, when it is an HTTPRoute lanemesh serves.
fn route_facts(world: &World, key: &ObjectKey, object: &Object) -> Option<RouteFacts> {
    let Object::HttpRoute(route) = object else {
        return None;
    };
    let parents = world.route_parents.get(key)?.clone();
    let mut missing_backends: Vec<String> = route
        .spec
        .rules
        .iter()
        .flat_map(|r| &r.backend_refs)
        .filter(|b| b.kind.as_deref().unwrap_or("Service") == "Service")
        .map(|b| {
            let ns = b.namespace.as_deref().unwrap_or(&key.namespace);
            format!("{ns}/{}", b.name)
        })
        .filter(|name| !world.services.contains_key(name))
        .collect();
    missing_backends.sort();
    missing_backends.dedup();
    Some(RouteFacts {
        parents,
        missing_backends,
    })
}

/// Ready governed pods per (namespace, app, lane tag).
type TagCounts = HashMap<(String, String, String), u32>;

fn tag_counts(world: &World) -> TagCounts {
    let mut counts = TagCounts::new();
    for ((ns, _), pod) in &world.pods {
        if pod.ready && !pod.lane_tag.is_empty() {
            *counts
                .entry((ns.clone(), pod.app.clone(), pod.lane_tag.clone()))
                .or_default() += 1;
        }
    }
    counts
}

/// `Lane.status.matchedPods`: for each app of the lane's (served) group,
/// the ready governed pods carrying the lane's tag; zeros included, so an
/// app missing its tagged version shows.
fn matched_pods(
    world: &World,
    counts: &TagCounts,
    key: &ObjectKey,
    group: &str,
    tag: &str,
) -> BTreeMap<String, u32> {
    let Some((_, apps)) = world.group_apps.get(&format!("{}/{group}", key.namespace)) else {
        return BTreeMap::new();
    };
    apps.iter()
        .map(|app| {
            let n = counts
                .get(&(key.namespace.clone(), app.clone(), tag.to_owned()))
                .copied()
                .unwrap_or(0);
            (app.clone(), n)
        })
        .collect()
}

/// One object's desired status next to its current one.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub key: ObjectKey,
    /// `metadata.uid`: a re-created object is a different object.
    pub uid: String,
    pub generation: Option<i64>,
    pub verdict: Verdict,
    pub current: OwnedStatus,
    pub next: OwnedStatus,
    /// HTTPRoutes only.
    pub route: Option<RouteFacts>,
}

impl Desired {
    /// The next status on top of `current` (what this leader wrote last, say).
    pub fn next_from(&self, current: &OwnedStatus, now: &Time) -> OwnedStatus {
        match &self.route {
            Some(facts) => next_route_status(current, self.generation, &self.verdict, facts, now),
            None => next_status(
                current,
                self.generation,
                &self.verdict,
                self.next.matched_pods.clone(),
                now,
            ),
        }
    }
}

/// The desired status of every lanemesh object of `world`. A conversion
/// refusal wins over a NACK `blame` (it is the more specific reason).
pub fn desired(world: &World, blame: &BTreeMap<ObjectKey, Verdict>, now: &Time) -> Vec<Desired> {
    let refused: HashMap<ObjectKey, &Invalid> = world
        .rejected
        .iter()
        .filter_map(|i| {
            let key = ObjectKey {
                kind: Kind::parse(i.object.kind)?,
                namespace: i.object.namespace.clone(),
                name: i.object.name.clone(),
            };
            Some((key, i))
        })
        .collect();
    let counts = tag_counts(world);
    let accepted = Verdict::accepted();
    world
        .objects
        .iter()
        .filter(|(key, _)| key.kind.is_lanemesh() || world.route_parents.contains_key(*key))
        .map(|(key, object)| {
            let verdict = match refused.get(key) {
                Some(invalid) => Verdict::refused(invalid, world.kept_last_good.contains(key)),
                None => blame.get(key).cloned().unwrap_or_else(|| accepted.clone()),
            };
            let verdict = match deprecation(object) {
                Some(warning) if verdict.accepted => Verdict {
                    accepted: true,
                    reason: reason::DEPRECATED,
                    message: format!("{}; {warning}", verdict.message),
                },
                _ => verdict,
            };
            let matched = match object {
                Object::Lane(l) => Some(matched_pods(
                    world,
                    &counts,
                    key,
                    &l.spec.group,
                    &l.spec.tag,
                )),
                _ => None,
            };
            let current = OwnedStatus::of(object);
            let route = route_facts(world, key, object);
            let generation = object.meta().generation;
            let next = match &route {
                Some(facts) => next_route_status(&current, generation, &verdict, facts, now),
                None => next_status(&current, generation, &verdict, matched, now),
            };
            Desired {
                key: key.clone(),
                uid: object.meta().uid.clone().unwrap_or_default(),
                generation,
                verdict,
                current,
                next,
                route,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;
    use crate::source::SourceEvent;
    use crate::source::local::parse;

    #[test]
    fn a_route_status_keeps_other_controllers_and_transition_times() {
        use lanemesh_api::crd::gateway_api::{GATEWAY_GROUP, ParentReference, RouteParentStatus};
        let edge = ParentReference {
            group: Some(GATEWAY_GROUP.into()),
            kind: Some("Gateway".into()),
            name: "edge".into(),
            ..Default::default()
        };
        let theirs = RouteParentStatus {
            parent_ref: ParentReference {
                name: "other".into(),
                ..edge.clone()
            },
            controller_name: "example.net/gateway".into(),
            conditions: vec![],
        };
        let facts = RouteFacts {
            parents: vec![edge.clone()],
            missing_backends: vec!["web/missing".into()],
        };
        let current = OwnedStatus {
            parents: Some(vec![theirs.clone()]),
            ..OwnedStatus::default()
        };
        let first = next_route_status(&current, Some(2), &Verdict::accepted(), &facts, &time(10));
        let parents = first.parents.clone().unwrap();
        assert_eq!(parents[0], theirs, "another controller's entry is kept");
        assert_eq!(parents[1].parent_ref, edge);
        assert_eq!(parents[1].controller_name, CONTROLLER_NAME);
        let conditions: Vec<(&str, &str, &str)> = parents[1]
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            conditions,
            [
                ("Accepted", "True", "Accepted"),
                ("ResolvedRefs", "False", "BackendNotFound")
            ]
        );
        assert!(parents[1].conditions[1].message.contains("web/missing"));
        // Unchanged verdict later: the same status, transition times kept.
        let again = next_route_status(&first, Some(2), &Verdict::accepted(), &facts, &time(99));
        assert_eq!(again, first);
        // Refused: Accepted flips (new time), ResolvedRefs keeps its time.
        let refused = Verdict {
            accepted: false,
            reason: reason::INVALID,
            message: "spec.rules[0].filters: not supported".into(),
        };
        let flipped = next_route_status(&first, Some(3), &refused, &facts, &time(50));
        let ours = &flipped.parents.unwrap()[1];
        assert_eq!(ours.conditions[0].reason, "UnsupportedValue");
        assert_eq!(ours.conditions[0].last_transition_time, time(50));
        assert_eq!(ours.conditions[1].last_transition_time, time(10));
        // The wire shape of a route status carries no lanemesh-kind fields.
        let json = serde_json::to_value(&first).unwrap();
        assert!(json.get("conditions").is_none() && json.get("observedGeneration").is_none());
    }

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    const GROUP: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop, generation: 3}
spec: {apps: [a, b], entryApps: [a], routingMode: Percentage}
"#;

    fn lane(name: &str, tag: &str, weight: u32) -> String {
        format!(
            r#"
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {{name: {name}, namespace: shop, generation: 2}}
spec: {{group: flow, tag: {tag}, weight: {weight}}}
"#
        )
    }

    fn pod(name: &str, app: &str, tag: &str, ready: bool) -> String {
        format!(
            r#"
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {app}, msePilotAutoEnable: "on", alicloud.service.tag: {tag}}}}}
status: {{podIP: 10.0.0.9, conditions: [{{type: Ready, status: "{}"}}]}}
"#,
            if ready { "True" } else { "False" }
        )
    }

    fn world(yaml: &str) -> World {
        let mut index = Index::default();
        index.apply(SourceEvent::Replace(parse(yaml).unwrap()));
        index.build()
    }

    fn by_name<'a>(d: &'a [Desired], name: &str) -> &'a Desired {
        d.iter().find(|d| d.key.name == name).unwrap()
    }

    #[test]
    fn good_objects_are_accepted_with_their_generation() {
        let w = world(&format!("{GROUP}{}", lane("gray", "gray", 30)));
        let d = desired(&w, &BTreeMap::new(), &time(100));
        assert_eq!(d.len(), 2);
        let group = by_name(&d, "flow");
        assert_eq!(group.next.observed_generation, Some(3));
        let c = &group.next.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "True", "Accepted")
        );
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, time(100));
        assert_eq!(group.next.matched_pods, None);
        assert_eq!(by_name(&d, "gray").next.observed_generation, Some(2));
    }

    #[test]
    fn a_breaker_timeout_is_served_with_a_deprecation_and_a_traffic_policy_is_accepted() {
        let yaml = r#"
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: old, namespace: demo}
spec:
  app: b
  timeout: 2s
  rules: [{name: errors, strategy: ErrorRatio, threshold: 0.5}]
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: new, namespace: demo}
spec:
  app: c
  rules: [{name: errors, strategy: ErrorRatio, threshold: 0.5}]
---
apiVersion: lanemesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: b, namespace: demo}
spec: {app: b, timeout: 1s, retries: {attempts: 1}}
"#;
        let d = desired(&world(yaml), &BTreeMap::new(), &time(100));
        let condition = |name: &str| by_name(&d, name).next.conditions[0].clone();
        let old = condition("old");
        assert_eq!(
            (old.status.as_str(), old.reason.as_str()),
            ("True", "Deprecated")
        );
        assert!(
            old.message.contains("spec.timeout is deprecated"),
            "{}",
            old.message
        );
        assert_eq!(condition("new").reason, "Accepted");
        assert_eq!(by_name(&d, "b").key.kind, Kind::TrafficPolicy);
        assert_eq!(condition("b").reason, "Accepted");
    }

    #[test]
    fn matched_pods_counts_ready_tagged_pods_per_group_app() {
        let yaml = format!(
            "{GROUP}{}{}{}{}{}",
            lane("gray", "gray", 30),
            pod("a-gray-1", "a", "gray", true),
            pod("a-gray-2", "a", "gray", true),
            pod("a-gray-3", "a", "gray", false),
            pod("a-blue-1", "a", "blue", true),
        );
        let d = desired(&world(&yaml), &BTreeMap::new(), &time(1));
        let matched = by_name(&d, "gray").next.matched_pods.clone().unwrap();
        // b has no gray pod: it shows as 0, not missing.
        assert_eq!(
            matched,
            BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 0)])
        );
    }

    #[test]
    fn weights_over_100_refuse_the_later_lane_with_its_reason() {
        let yaml = format!(
            "{GROUP}{}{}",
            lane("a-first", "gray", 60),
            lane("b-second", "blue", 50)
        );
        let d = desired(&world(&yaml), &BTreeMap::new(), &time(1));
        assert_eq!(by_name(&d, "a-first").next.conditions[0].status, "True");
        let c = &by_name(&d, "b-second").next.conditions[0];
        assert_eq!(c.status, "False");
        assert_eq!(c.reason, reason::WEIGHT_SUM_EXCEEDED);
        assert!(c.message.contains("110"), "{}", c.message);
        assert!(
            c.message.ends_with("nothing of it is served"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_refusal_after_a_good_version_says_the_old_one_is_served() {
        let mut index = Index::default();
        index.apply(SourceEvent::Replace(
            parse(&format!("{GROUP}{}", lane("gray", "gray", 30))).unwrap(),
        ));
        index.build();
        index.apply(SourceEvent::Replace(
            parse(&format!("{GROUP}{}", lane("gray", "gray", 130))).unwrap(),
        ));
        let w = index.build();
        let d = desired(&w, &BTreeMap::new(), &time(1));
        let c = &by_name(&d, "gray").next.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Invalid"));
        assert!(
            c.message
                .ends_with("the last accepted version is still served"),
            "{}",
            c.message
        );
    }

    #[test]
    fn blame_applies_unless_conversion_already_refused() {
        let w = world(&format!("{GROUP}{}", lane("gray", "gray", 30)));
        let blamed = Verdict {
            accepted: false,
            reason: reason::REFUSED_BY_SIDECAR,
            message: "no".into(),
        };
        let blame = BTreeMap::from([(
            ObjectKey {
                kind: Kind::Lane,
                namespace: "shop".into(),
                name: "gray".into(),
            },
            blamed,
        )]);
        let d = desired(&w, &blame, &time(1));
        assert_eq!(
            by_name(&d, "gray").next.conditions[0].reason,
            reason::REFUSED_BY_SIDECAR
        );
        assert_eq!(by_name(&d, "flow").next.conditions[0].status, "True");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let good = Verdict::accepted();
        let first = next_status(&OwnedStatus::default(), Some(1), &good, None, &time(10));
        // Same status, new generation and message: the time stays.
        let mut other = good.clone();
        other.message = "still fine".into();
        let again = next_status(&first, Some(2), &other, None, &time(20));
        assert_eq!(again.conditions[0].last_transition_time, time(10));
        assert_eq!(again.conditions[0].observed_generation, Some(2));
        let bad = Verdict {
            accepted: false,
            reason: reason::INVALID,
            message: "x".into(),
        };
        let flipped = next_status(&again, Some(2), &bad, None, &time(30));
        assert_eq!(flipped.conditions[0].last_transition_time, time(30));
        // Nothing new: equal, so the writer skips it.
        assert_eq!(
            next_status(&flipped, Some(2), &bad, None, &time(40)),
            flipped
        );
    }

    #[test]
    fn current_status_keeps_only_what_the_control_plane_owns() {
        let yaml = r#"
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop, generation: 2}
spec: {group: flow, tag: gray}
status:
  observedGeneration: 1
  matchedPods: {a: 1}
  conditions:
  - {type: Accepted, status: "True", reason: Accepted, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z"}
  - {type: Other, status: "True", reason: X, message: y, lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;
        let objects = parse(yaml).unwrap();
        let s = OwnedStatus::of(&objects[0]);
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.matched_pods, Some(BTreeMap::from([("a".to_owned(), 1)])));
        let body = serde_json::to_value(&s).unwrap();
        assert_eq!(body["matchedPods"]["a"], 1);
        assert_eq!(body["conditions"][0]["type"], "Accepted");
    }
}
