//! The per-snapshot routing state and the one task that builds it.

use std::sync::Arc;

use crate::lane::{LaneTable, PropagationSettings};
use crate::route::{Balancer, RouteTable};
use crate::snapshot::{Snapshot, SnapshotStore};

use super::router::MeshRouter;

/// What the router needs from one snapshot, compiled once off the hot path.
#[derive(Debug)]
pub struct Runtime {
    /// The snapshot generation this was built from.
    pub generation: u64,
    /// Every lane group.
    pub lanes: LaneTable,
    /// Every governed service.
    pub routes: RouteTable,
    /// This pod's propagation settings (the groups listing its app, merged).
    pub propagation: PropagationSettings,
    /// This pod's app is an entry app of some lane group: its inbound requests get the lane
    /// decision.
    pub is_entry: bool,
}

impl Runtime {
    /// Compiles `snapshot` for a pod of `app`. Endpoint statistics come from `balancer`, so they
    /// survive the swap.
    pub fn build(snapshot: &Snapshot, app: &str, balancer: &Balancer) -> Self {
        let lanes = LaneTable::new(
            snapshot
                .lane_groups()
                .values()
                .map(|entry| entry.compiled.clone()),
        );
        let routes = RouteTable::new(
            snapshot
                .services()
                .values()
                .map(|entry| entry.compiled.clone()),
            balancer,
        );
        let propagation = lanes.propagation_for(app);
        let is_entry = lanes.groups_of(app).any(|g| g.is_entry_app(app));
        Self {
            generation: snapshot.generation(),
            lanes,
            routes,
            propagation,
            is_entry,
        }
    }
}

/// Keeps `router`'s runtime in step with `store`, for ever (abort the task to stop it): for every
/// ready snapshot (a first response of every resource type applied) it builds the next
/// [`Runtime`] and swaps it in. Until the first ready snapshot the router passes everything
/// through. Run exactly one per router.
pub async fn run_builder(store: Arc<SnapshotStore>, router: Arc<MeshRouter>) {
    let mut changes = store.subscribe();
    loop {
        let snapshot = store.load_full();
        if snapshot.is_ready() && router.generation() != Some(snapshot.generation()) {
            router.install(&snapshot);
        }
        // Marks the current value seen, so a swap during the build above wakes us again.
        if changes.changed().await.is_err() {
            return;
        }
    }
}
