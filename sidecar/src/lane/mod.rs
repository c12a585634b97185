//! Lanes (full-link canary release with base fallback) as pure logic: the runtime configuration,
//! the lane decision at an entry app or gateway, and carrying the lane across a hop (DESIGN §4).
//!
//! Nothing here performs I/O. The proxy converts each `proto::LaneGroup` with
//! [`LaneGroupConfig::try_from`], builds one [`LaneTable`] per snapshot (off the hot path) and
//! swaps it in atomically; per request it calls [`LaneTable::decide_entry`] on an entry app's
//! inbound, [`Propagator::register_inbound`] on every inbound and [`Propagator::outbound_lane`] on
//! every outbound request.
//!
//! # Modules
//! - [`rules`]: runtime lane groups converted from the protocol, with typed errors.
//! - [`decide`]: the lane decision (conditions, operators, percentage routing, FNV-1a).
//! - [`propagate`]: the six propagation rules, the trace table and the in-flight counts.
//! - [`baggage`]: the lane as a W3C `baggage` member, read and written.

pub mod baggage;
pub mod decide;
pub mod propagate;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::Rng;

pub use decide::{DecisionReason, LaneDecision, LaneWeights, RequestView};
pub use propagate::{
    InboundGuard, OutboundLane, PropagationRule, PropagationSettings, Propagator, TraceTable,
};
pub use rules::{LaneConfigError, LaneGroupConfig, RoutingMode};

/// Every lane group a sidecar knows, indexed for the per-request questions.
#[derive(Debug, Default)]
pub struct LaneTable {
    /// In group name order.
    groups: Vec<Arc<LaneGroupConfig>>,
    /// App -> indices into `groups` of the groups listing it, in group order.
    by_app: HashMap<String, Vec<usize>>,
    /// App -> tags enabled in at least one group listing the app.
    enabled_by_app: HashMap<String, HashSet<Arc<str>>>,
}

impl LaneTable {
    /// Indexes `groups`; their order does not matter (they are sorted by name).
    pub fn new(groups: impl IntoIterator<Item = LaneGroupConfig>) -> Self {
        let mut groups: Vec<Arc<LaneGroupConfig>> = groups.into_iter().map(Arc::new).collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_app: HashMap<String, Vec<usize>> = HashMap::new();
        let mut enabled_by_app: HashMap<String, HashSet<Arc<str>>> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for app in &g.apps {
                let list = by_app.entry(app.clone()).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
                let enabled = enabled_by_app.entry(app.clone()).or_default();
                enabled.extend(g.lanes.iter().filter(|l| l.enabled).map(|l| l.tag.clone()));
            }
        }
        Self {
            groups,
            by_app,
            enabled_by_app,
        }
    }

    /// Every group, in name order.
    pub fn groups(&self) -> &[Arc<LaneGroupConfig>] {
        &self.groups
    }

    /// The group named `namespace/name`.
    pub fn group(&self, name: &str) -> Option<&Arc<LaneGroupConfig>> {
        self.groups
            .binary_search_by(|g| g.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.groups.get(i))
    }

    /// The groups listing `app`, in name order.
    pub fn groups_of(&self, app: &str) -> impl Iterator<Item = &Arc<LaneGroupConfig>> {
        self.by_app
            .get(app)
            .into_iter()
            .flatten()
            .filter_map(|i| self.groups.get(*i))
    }

    /// Whether lane `tag` is enabled in group `group` (`namespace/name`).
    pub fn is_enabled_in_group(&self, group: &str, tag: &str) -> bool {
        self.group(group).is_some_and(|g| g.is_enabled(tag))
    }

    /// Whether `tag` is enabled in some group listing `app`: the condition for routing a request
    /// of lane `tag` to `app`'s tagged endpoints (DESIGN §4 "Endpoint choice").
    pub fn is_enabled_for_app(&self, app: &str, tag: &str) -> bool {
        self.enabled_by_app
            .get(app)
            .is_some_and(|tags| tags.contains(tag))
    }

    /// The lane decision on `app`'s inbound: the groups where `app` is an entry app are consulted
    /// in name order; the first that puts the request in a lane (or finds an existing tag) wins.
    /// `None` when `app` is an entry app of no group.
    pub fn decide_entry<'a, R: Rng + ?Sized>(
        &'a self,
        app: &str,
        request: &RequestView<'a>,
        rng: &mut R,
    ) -> Option<LaneDecision<'a>> {
        let entry = self.groups_of(app).filter(|g| g.is_entry_app(app));
        decide_first(entry, request, rng, None)
    }

    /// The lane decision of a gateway: every group is consulted in name order.
    pub fn decide_gateway<'a, R: Rng + ?Sized>(
        &'a self,
        request: &RequestView<'a>,
        rng: &mut R,
    ) -> Option<LaneDecision<'a>> {
        decide_first(self.groups.iter(), request, rng, None)
    }

    /// The lane decision of a gateway for a request routed to `app`: every group listing `app`
    /// is consulted in name order (entry apps or not: a gateway evaluates lane rules itself,
    /// DESIGN §3), with the route's Percentage-mode `weights` when it has its own. `None` when
    /// no group lists `app`.
    pub fn decide_for_backend<'a, R: Rng + ?Sized>(
        &'a self,
        app: &str,
        request: &RequestView<'a>,
        rng: &mut R,
        weights: Option<&LaneWeights>,
    ) -> Option<LaneDecision<'a>> {
        decide_first(self.groups_of(app), request, rng, weights)
    }

    /// The propagation settings of a pod of `app`: the merge of the groups listing it, or the
    /// CRD defaults when none does. Allocates; compute once per snapshot.
    pub fn propagation_for(&self, app: &str) -> PropagationSettings {
        PropagationSettings::merge(self.groups_of(app).map(|g| &**g))
    }
}

fn decide_first<'a, R: Rng + ?Sized>(
    groups: impl Iterator<Item = &'a Arc<LaneGroupConfig>>,
    request: &RequestView<'a>,
    rng: &mut R,
    weights: Option<&LaneWeights>,
) -> Option<LaneDecision<'a>> {
    let mut first = None;
    for g in groups {
        let d = g.decide_weighted(request, rng, weights);
        if d.tag.is_some() {
            return Some(d);
        }
        first.get_or_insert(d);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::rules::tests::{cond, group, lane};
    use super::*;
    use lanemesh_api::proto;

    fn canary(value: &str) -> Option<proto::Match> {
        Some(proto::Match {
            logic: proto::Logic::All as i32,
            conditions: vec![cond(
                proto::Source::Header,
                "canary",
                proto::Operator::Equal,
                value,
            )],
        })
    }

    fn table() -> LaneTable {
        let g1 = group(
            "ns/order",
            &["a", "b", "c"],
            vec![
                lane("order-gray", "gray", true, canary("gray")),
                lane("order-blue", "blue", false, canary("blue")),
            ],
        );
        let g2 = group(
            "ns/pay",
            &["p", "c"],
            vec![lane("pay-blue", "blue", true, canary("blue"))],
        );
        LaneTable::new([&g2, &g1].map(|g| LaneGroupConfig::try_from(g).unwrap()))
    }

    #[test]
    fn indexes_groups_by_app_and_enabled_tags() {
        // DESIGN §4 "Endpoint choice": L must be enabled in a group that contains S.
        let t = table();
        let names: Vec<&str> = t.groups().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["ns/order", "ns/pay"]);
        let of_c: Vec<&str> = t.groups_of("c").map(|g| g.name.as_str()).collect();
        assert_eq!(of_c, ["ns/order", "ns/pay"]);
        assert_eq!(t.groups_of("zzz").count(), 0);
        assert!(t.is_enabled_for_app("a", "gray"));
        assert!(
            !t.is_enabled_for_app("a", "blue"),
            "blue is disabled in order"
        );
        assert!(
            t.is_enabled_for_app("c", "blue"),
            "blue is enabled in pay, which lists c"
        );
        assert!(
            !t.is_enabled_for_app("p", "gray"),
            "gray's group does not list p"
        );
        assert!(t.is_enabled_in_group("ns/order", "gray"));
        assert!(!t.is_enabled_in_group("ns/order", "blue"));
        assert!(!t.is_enabled_in_group("ns/none", "gray"));
    }

    #[test]
    fn entry_decision_uses_only_groups_where_the_app_is_an_entry() {
        // DESIGN §3/§4: lane rules are evaluated at entry apps (and gateways).
        let t = table();
        let uri: http::Uri = "/x".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("canary", "gray".parse().unwrap());
        let view = RequestView::new(&uri, &headers);
        let mut rng = rand::rng();
        let d = t.decide_entry("a", &view, &mut rng).unwrap();
        assert_eq!(d.tag.as_deref(), Some("gray"));
        assert!(
            t.decide_entry("b", &view, &mut rng).is_none(),
            "b is no entry app"
        );
        let d = t.decide_gateway(&view, &mut rng).unwrap();
        assert_eq!(d.tag.as_deref(), Some("gray"));
        headers.insert("canary", "blue".parse().unwrap());
        let view = RequestView::new(&uri, &headers);
        // a's group has blue disabled: base.
        let d = t.decide_entry("a", &view, &mut rng).unwrap();
        assert_eq!(d.tag, None);
        assert_eq!(d.reason, DecisionReason::NoMatch);
        // The gateway falls through to pay, whose blue lane is enabled.
        let d = t.decide_gateway(&view, &mut rng).unwrap();
        assert_eq!(d.tag.as_deref(), Some("blue"));
    }

    #[test]
    fn shared_state_is_send_and_sync() {
        // One instance serves every connection.
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LaneTable>();
        assert_send_sync::<Propagator>();
        assert_send_sync::<InboundGuard>();
        assert_send_sync::<crate::route::RouteTable>();
        assert_send_sync::<crate::route::Balancer>();
        assert_send_sync::<crate::route::Pick>();
    }
}
