//! Traces sidecar NACKs back to the lanemesh objects they come from (pure).
//!
//! A NACK names a resource (`namespace/name` of a LaneGroup, `namespace/app`
//! of a policy) and, in its message, usually the field the sidecar refused
//! (`lanes[1].match...`, `rules[0].qps...`, `breakers[2]...`). The field's
//! index picks the one object that produced that part (lanes carry their
//! Lane's name; rules and breakers are named `policy/rule`); without one,
//! every object that contributed to the resource is blamed.
//!
//! A NACK only counts while the resource's served version is still the one
//! refused: a change of the object makes a new version, which the sidecar
//! will judge afresh.

use std::collections::BTreeMap;

use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;

use super::desired::{Verdict, reason};
use crate::discovery::Nacks;
use crate::snapshot::{Resources, World};
use crate::source::{Kind, ObjectKey};

/// The objects current NACKs trace to, each with its verdict.
pub fn blame(world: &World, nacks: &Nacks) -> BTreeMap<ObjectKey, Verdict> {
    let mut out = BTreeMap::new();
    for ((type_url, name), nack) in nacks {
        let Some(served) = resources_of(world, type_url).and_then(|r| r.get(name)) else {
            continue;
        };
        if served.version != nack.version {
            continue;
        }
        let keys = blamed_objects(type_url, &served.any, &nack.message);
        for key in keys {
            if !world.objects.contains_key(&key) {
                continue;
            }
            let short = type_url.rsplit('.').next().unwrap_or(type_url);
            out.entry(key).or_insert_with(|| Verdict {
                accepted: false,
                reason: reason::REFUSED_BY_SIDECAR,
                message: format!(
                    "sidecar {} refused {short} {name}: {}",
                    nack.node, nack.message
                ),
            });
        }
    }
    out
}

fn resources_of<'a>(world: &'a World, type_url: &str) -> Option<&'a Resources> {
    match type_url {
        proto::LaneGroup::TYPE_URL => Some(&world.lane_groups),
        proto::InboundPolicy::TYPE_URL => Some(&world.inbound),
        proto::OutboundPolicy::TYPE_URL => Some(&world.outbound),
        // Services come from Kubernetes Services: no lanemesh status.
        _ => None,
    }
}

/// `prefix[<n>]` anywhere in `message` -> `n`.
fn indexed(message: &str, prefix: &str) -> Option<usize> {
    let at = message.find(prefix)? + prefix.len();
    let rest = &message[at..];
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// `policy/rule` -> `policy`.
fn policy_of(rule: &str) -> &str {
    rule.split_once('/').map_or(rule, |(policy, _)| policy)
}

fn blamed_objects(type_url: &str, any: &prost_types::Any, message: &str) -> Vec<ObjectKey> {
    match type_url {
        proto::LaneGroup::TYPE_URL => {
            let Ok(g) = proto::LaneGroup::from_any(any) else {
                return Vec::new();
            };
            let name = g.name.rsplit('/').next().unwrap_or(&g.name);
            match indexed(message, "lanes[").and_then(|i| g.lanes.get(i)) {
                Some(lane) => vec![key(Kind::Lane, &g.namespace, &lane.name)],
                None => vec![key(Kind::LaneGroup, &g.namespace, name)],
            }
        }
        proto::InboundPolicy::TYPE_URL => {
            let Ok(p) = proto::InboundPolicy::from_any(any) else {
                return Vec::new();
            };
            let limit = |rule: &proto::RateLimitRule| {
                key(Kind::RateLimitPolicy, &p.namespace, policy_of(&rule.name))
            };
            let overload = p
                .overload
                .as_ref()
                .map(|o| key(Kind::OverloadProtectionPolicy, &p.namespace, &o.name));
            if let Some(rule) = indexed(message, "rules[").and_then(|i| p.rules.get(i)) {
                return vec![limit(rule)];
            }
            if message.contains("overload") && overload.is_some() {
                return overload.into_iter().collect();
            }
            let mut all: Vec<ObjectKey> = p.rules.iter().map(limit).collect();
            all.extend(overload);
            all.dedup();
            all
        }
        proto::OutboundPolicy::TYPE_URL => {
            let Ok(p) = proto::OutboundPolicy::from_any(any) else {
                return Vec::new();
            };
            let breaker = |b: &proto::CircuitBreakerRule| {
                key(Kind::CircuitBreakerPolicy, &p.namespace, policy_of(&b.name))
            };
            let traffic = (!p.traffic_policy.is_empty())
                .then(|| key(Kind::TrafficPolicy, &p.namespace, &p.traffic_policy));
            if let Some(b) = indexed(message, "breakers[").and_then(|i| p.breakers.get(i)) {
                return vec![breaker(b)];
            }
            if ["routes[", "retry_budget", "warmup"]
                .iter()
                .any(|field| message.contains(field))
                && traffic.is_some()
            {
                return traffic.into_iter().collect();
            }
            let mut all: Vec<ObjectKey> = p.breakers.iter().map(breaker).collect();
            all.dedup();
            all.extend(traffic);
            all
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Nack;
    use crate::index::Index;
    use crate::source::SourceEvent;
    use crate::source::local::parse;

    const OBJECTS: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: shop}
spec: {apps: [a], entryApps: [a]}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: blue, namespace: shop}
spec:
  group: flow
  tag: blue
  match: {conditions: [{source: Header, name: x, operator: Equal, value: b}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: shop}
spec:
  group: flow
  tag: gray
  match: {conditions: [{source: Header, name: x, operator: Equal, value: g}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: p1, namespace: shop}
spec: {app: a, rules: [{name: r, qps: {threshold: 1}}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: p2, namespace: shop}
spec: {app: a, rules: [{name: r, qps: {threshold: 2}}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: OverloadProtectionPolicy
metadata: {name: cpu, namespace: shop}
spec: {app: a, cpuThreshold: 0.8}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: cb, namespace: shop}
spec:
  app: a
  rules: [{name: errors, strategy: ErrorRatio, threshold: 0.5}]
"#;

    fn world() -> World {
        let mut index = Index::default();
        index.apply(SourceEvent::Replace(parse(OBJECTS).unwrap()));
        let w = index.build();
        assert!(w.rejected.is_empty(), "{:?}", w.rejected);
        w
    }

    fn nack(world: &World, type_url: &str, name: &str, message: &str) -> Nacks {
        let served = match type_url {
            proto::LaneGroup::TYPE_URL => &world.lane_groups,
            proto::InboundPolicy::TYPE_URL => &world.inbound,
            _ => &world.outbound,
        };
        Nacks::from([(
            (type_url.to_owned(), name.to_owned()),
            Nack {
                version: served[name].version.clone(),
                message: message.to_owned(),
                node: "shop/a-1".to_owned(),
            },
        )])
    }

    fn names(b: &BTreeMap<ObjectKey, Verdict>) -> Vec<String> {
        b.keys()
            .map(|k| format!("{}/{}", k.kind.as_str(), k.name))
            .collect()
    }

    #[test]
    fn a_lane_field_blames_that_lane() {
        let w = world();
        // Lanes are in name order: [blue, gray].
        let n = nack(
            &w,
            proto::LaneGroup::TYPE_URL,
            "shop/flow",
            "LaneGroup \"shop/flow\" refused: lanes[1].match.conditions[0]: bad",
        );
        let b = blame(&w, &n);
        assert_eq!(names(&b), ["Lane/gray"]);
        let v = &b.values().next().unwrap();
        assert!(!v.accepted);
        assert_eq!(v.reason, reason::REFUSED_BY_SIDECAR);
        assert!(v.message.contains("shop/a-1"), "{}", v.message);
        assert!(v.message.contains("lanes[1]"), "{}", v.message);
    }

    #[test]
    fn a_group_level_error_blames_the_group() {
        let w = world();
        let n = nack(
            &w,
            proto::LaneGroup::TYPE_URL,
            "shop/flow",
            "tagHeader: bad",
        );
        assert_eq!(names(&blame(&w, &n)), ["LaneGroup/flow"]);
    }

    #[test]
    fn a_rule_blames_its_policy_and_without_a_field_every_contributor() {
        let w = world();
        let n = nack(
            &w,
            proto::InboundPolicy::TYPE_URL,
            "shop/a",
            "rules[1].qps.behavior: unknown",
        );
        assert_eq!(names(&blame(&w, &n)), ["RateLimitPolicy/p2"]);
        let n = nack(
            &w,
            proto::InboundPolicy::TYPE_URL,
            "shop/a",
            "overload: unknown strategy",
        );
        assert_eq!(names(&blame(&w, &n)), ["OverloadProtectionPolicy/cpu"]);
        let n = nack(
            &w,
            proto::InboundPolicy::TYPE_URL,
            "shop/a",
            "cannot decode",
        );
        assert_eq!(
            names(&blame(&w, &n)),
            [
                "RateLimitPolicy/p1",
                "RateLimitPolicy/p2",
                "OverloadProtectionPolicy/cpu"
            ]
        );
        let n = nack(
            &w,
            proto::OutboundPolicy::TYPE_URL,
            "shop/a",
            "breakers[0].window: bad",
        );
        assert_eq!(names(&blame(&w, &n)), ["CircuitBreakerPolicy/cb"]);
    }

    #[test]
    fn a_nack_of_an_older_version_blames_nothing() {
        let w = world();
        let mut n = nack(&w, proto::LaneGroup::TYPE_URL, "shop/flow", "bad");
        for nack in n.values_mut() {
            nack.version = "0000000000000000".into();
        }
        assert!(blame(&w, &n).is_empty());
        // A resource no longer served blames nothing either.
        let gone = Nacks::from([(
            (
                proto::LaneGroup::TYPE_URL.to_owned(),
                "shop/gone".to_owned(),
            ),
            Nack {
                version: "1".into(),
                message: "bad".into(),
                node: "shop/a-1".into(),
            },
        )]);
        assert!(blame(&w, &gone).is_empty());
    }
}
