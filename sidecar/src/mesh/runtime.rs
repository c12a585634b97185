//! The per-snapshot routing state and the one task that builds it.

use std::sync::Arc;

use crate::gateway::GatewayTable;
use crate::govern::{GovernContext, InboundGovernor, OutboundGovernor};
use crate::lane::{LaneTable, PropagationSettings};
use crate::route::{Balancer, RouteTable};
use crate::snapshot::Snapshot;

use super::observe::LabelNames;

/// What the router needs from one snapshot, compiled once off the hot path.
#[derive(Debug)]
pub struct Runtime {
    /// The snapshot generation this was built from.
    pub generation: u64,
    /// This pod's app (the snapshot's [`local`](Snapshot::local) identity).
    pub app: Arc<str>,
    /// This pod's lane tag, `None` for base: the lane of colour-by-node and of opaque TCP.
    pub pod_tag: Option<Arc<str>>,
    /// Every lane group.
    pub lanes: LaneTable,
    /// Every governed service.
    pub routes: RouteTable,
    /// This pod's propagation settings (the groups listing its app, merged).
    pub propagation: PropagationSettings,
    /// This pod's app is an entry app of some lane group: its inbound requests get the lane
    /// decision.
    pub is_entry: bool,
    /// Rate limits and overload protection of this pod's app.
    pub inbound: InboundGovernor,
    /// Circuit breakers and timeouts towards destination apps.
    pub outbound: OutboundGovernor,
    /// Label values for request metrics: the apps and lane tags this snapshot names.
    pub labels: LabelNames,
    /// A gateway's routes; empty for a sidecar.
    pub gateway: GatewayTable,
    /// The pod is being deleted: inbound HTTP/1 answers ask clients to close their connection.
    pub terminating: bool,
}

impl Runtime {
    /// Compiles `snapshot` for the pod it names. Endpoint statistics come from `balancer`, and
    /// the limiters and breakers of unchanged rules from `previous`, so they survive the swap.
    pub fn build(
        snapshot: &Snapshot,
        balancer: &Balancer,
        previous: Option<&Self>,
        govern: &GovernContext,
    ) -> Self {
        let local = snapshot.local();
        let app = local.app.as_str();
        let lanes = LaneTable::new(
            snapshot
                .lane_groups()
                .values()
                .map(|entry| entry.compiled.clone()),
        );
        let outbound = OutboundGovernor::build(
            outbound_rules(snapshot),
            previous.map(|p| &p.outbound),
            govern,
        );
        // The one wall-clock read: endpoint ready times from the control plane become ages.
        let routes = RouteTable::warming(
            snapshot
                .services()
                .values()
                .map(|entry| entry.compiled.clone()),
            balancer,
            &|app| outbound.warmup(app),
            std::time::SystemTime::now(),
        );
        let propagation = lanes.propagation_for(app);
        let is_entry = lanes.groups_of(app).any(|g| g.is_entry_app(app));
        let inbound = InboundGovernor::build(
            snapshot
                .local_inbound_policy()
                .map(|entry| &*entry.compiled),
            previous.map(|p| &p.inbound),
            govern,
        );
        let labels = LabelNames::new(
            std::iter::once(app)
                .chain(routes.services().iter().map(|s| s.app()))
                .chain(
                    lanes
                        .groups()
                        .iter()
                        .flat_map(|g| g.lanes.iter().map(|l| &*l.tag)),
                ),
        );
        let gateway = GatewayTable::new(
            snapshot
                .resources::<lanemesh_api::proto::GatewayRoute>()
                .values()
                .map(|entry| Arc::clone(&entry.compiled)),
        );
        Self {
            generation: snapshot.generation(),
            app: Arc::from(app),
            pod_tag: local.lane().map(Arc::from),
            lanes,
            routes,
            propagation,
            is_entry,
            inbound,
            outbound,
            labels,
            gateway,
            terminating: snapshot.terminating(),
        }
    }
}

/// The outbound policy of every destination app, one per app: the one of the pod's own
/// namespace where several namespaces use the same app name (as the snapshot index decides).
fn outbound_rules(snapshot: &Snapshot) -> Vec<&Arc<crate::govern::OutboundRules>> {
    let mut apps: Vec<&str> = snapshot
        .outbound_policies()
        .values()
        .map(|e| e.resource.app.as_str())
        .collect();
    apps.sort_unstable();
    apps.dedup();
    apps.into_iter()
        .filter_map(|app| snapshot.outbound_policy(app).map(|e| &e.compiled))
        .collect()
}
