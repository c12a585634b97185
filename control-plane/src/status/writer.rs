//! Writes the desired statuses (I/O): only while this replica holds the
//! Lease, only what differs, through the status subresource with
//! server-side apply (field manager `lanemesh-pilot`, shared by all
//! replicas so a new leader takes over the previous one's fields).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use lanemesh_api::crd::gateway_api::HTTPRoute;
use lanemesh_api::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy, TrafficPolicy,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::desired::{self, Desired, OwnedStatus};
use super::limit::{DEFAULT_MIN_INTERVAL, PerObjectLimit};
use super::{LeaseConfig, nack};
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::snapshot::World;
use crate::source::{Kind, ObjectKey};

/// The server-side apply field manager of every status write.
pub const FIELD_MANAGER: &str = "lanemesh-pilot";
/// Pause before retrying failed writes or a failed Lease setup.
const RETRY: Duration = Duration::from_secs(2);

/// Everything the writer reads.
pub struct StatusWriter {
    pub client: Client,
    pub lease: LeaseConfig,
    pub worlds: watch::Receiver<Arc<World>>,
    pub discovery: Discovery,
    pub metrics: Arc<Metrics>,
}

impl Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A status as written, keyed by object and uid (a re-created object starts
/// afresh).
type Written = HashMap<(ObjectKey, String), OwnedStatus>;

impl StatusWriter {
    /// Runs until `shutdown`; releases the Lease on the way out.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let Some(manager) = self.lease_manager(shutdown.clone()).await else {
            return;
        };
        let (mut leading, lease_task) = manager.watch().await;
        let mut nacks = self.discovery.nack_updates();
        let mut written = Written::new();
        let mut limit = PerObjectLimit::new(DEFAULT_MIN_INTERVAL);
        let mut leader = *leading.borrow_and_update();
        let mut retry_at: Option<tokio::time::Instant> = None;
        self.set_leader(leader);
        if leader {
            retry_at = self.sync(&mut written, &mut limit).await;
        }
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = crate::stopped(shutdown.clone()) => break,
                changed = leading.changed() => {
                    if changed.is_err() {
                        tracing::error!("status writer: the lease task ended; no more status writes");
                        break;
                    }
                    leader = *leading.borrow_and_update();
                    self.set_leader(leader);
                    // A past leadership's record may be stale by now.
                    written.clear();
                }
                changed = self.worlds.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = nacks.changed() => {}
                () = retry => {}
            }
            retry_at = if leader {
                self.sync(&mut written, &mut limit).await
            } else {
                None
            };
        }
        self.set_leader(false);
        // Dropping the receiver makes the lease task release the Lease, so a
        // standby takes over without waiting for it to expire.
        drop(leading);
        match tokio::time::timeout(RETRY, lease_task).await {
            Ok(Ok(Ok(_))) => tracing::info!("status writer: lease released"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "status writer: releasing the lease failed")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "status writer: lease task failed"),
            Err(_) => tracing::warn!("status writer: releasing the lease timed out"),
        }
    }

    fn set_leader(&self, leader: bool) {
        self.metrics.leader.set(i64::from(leader));
        tracing::info!(
            identity = %self.lease.identity,
            lease = %format!("{}/{}", self.lease.namespace, self.lease.name),
            leader,
            "status writer: lease state"
        );
    }

    /// Builds the Lease manager (creating the Lease if needed), retrying
    /// until it works or `shutdown`.
    async fn lease_manager(&self, shutdown: watch::Receiver<bool>) -> Option<LeaseManager> {
        let c = &self.lease;
        loop {
            let params = LeaseParams::new(c.identity.clone(), c.duration_secs(), c.grace_secs())
                .with_field_manager(format!("{FIELD_MANAGER}-lease"));
            let built = LeaseManagerBuilder::new(self.client.clone(), c.name.clone())
                .with_namespace(c.namespace.clone())
                .with_parameters(params)
                .build();
            tokio::select! {
                r = built => match r {
                    Ok(m) => return Some(m),
                    Err(e) => tracing::warn!(
                        error = %e,
                        lease = %format!("{}/{}", c.namespace, c.name),
                        "status writer: cannot set up the lease; retrying"
                    ),
                },
                () = crate::stopped(shutdown.clone()) => return None,
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = crate::stopped(shutdown.clone()) => return None,
            }
        }
    }

    /// Writes every status that differs from what the object has (or what
    /// this leader last wrote), each object at most once per `limit`'s
    /// interval. Returns when to retry failed or postponed writes.
    async fn sync(
        &self,
        written: &mut Written,
        limit: &mut PerObjectLimit<ObjectKey>,
    ) -> Option<tokio::time::Instant> {
        let world = Arc::clone(&self.worlds.borrow());
        if !world.ready {
            return None;
        }
        let blame = nack::blame(&world, &self.discovery.nacks());
        let now = now();
        let wanted = desired::desired(&world, &blame, &now);
        let live: HashSet<(ObjectKey, String)> = wanted
            .iter()
            .map(|d| (d.key.clone(), d.uid.clone()))
            .collect();
        written.retain(|k, _| live.contains(k));
        let live_keys: HashSet<&ObjectKey> = live.iter().map(|(k, _)| k).collect();
        limit.retain(|k| live_keys.contains(k));
        let mut failed = false;
        let mut postponed: Option<tokio::time::Instant> = None;
        for d in wanted {
            let id = (d.key.clone(), d.uid.clone());
            // The watch may not have delivered our last write yet: compare
            // with what was written, and keep its transition time.
            let next = match written.get(&id) {
                Some(w) => {
                    let again = rebase(&d, w, &now);
                    if &again == w {
                        continue;
                    }
                    again
                }
                None if d.next == d.current => continue,
                None => d.next,
            };
            if let Err(at) = limit.admit(d.key.clone(), tokio::time::Instant::now()) {
                postponed = Some(postponed.map_or(at, |p| p.min(at)));
                continue;
            }
            let kind = d.key.kind.as_str();
            match self.apply(&d.key, &next).await {
                Ok(()) => {
                    self.count(kind, "ok");
                    tracing::debug!(object = %format!("{kind} {}/{}", d.key.namespace, d.key.name), "status written");
                    written.insert(id, next);
                }
                Err(e) => {
                    self.count(kind, "error");
                    failed = true;
                    tracing::warn!(
                        object = %format!("{kind} {}/{}", d.key.namespace, d.key.name),
                        error = %e,
                        "status write failed; will retry"
                    );
                }
            }
        }
        let retry = failed.then(|| tokio::time::Instant::now() + RETRY);
        match (retry, postponed) {
            (Some(r), Some(p)) => Some(r.min(p)),
            (r, p) => r.or(p),
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .status_writes
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    async fn apply(&self, key: &ObjectKey, status: &OwnedStatus) -> Result<(), kube::Error> {
        let c = self.client.clone();
        match key.kind {
            Kind::LaneGroup => apply::<LaneGroup>(c, key, status).await,
            Kind::Lane => apply::<Lane>(c, key, status).await,
            Kind::RateLimitPolicy => apply::<RateLimitPolicy>(c, key, status).await,
            Kind::CircuitBreakerPolicy => apply::<CircuitBreakerPolicy>(c, key, status).await,
            Kind::OverloadProtectionPolicy => {
                apply::<OverloadProtectionPolicy>(c, key, status).await
            }
            Kind::TrafficPolicy => apply::<TrafficPolicy>(c, key, status).await,
            Kind::HttpRoute => apply_route_status(c, key, status).await,
            // `desired` lists no other kind.
            Kind::Service | Kind::EndpointSlice | Kind::Pod | Kind::Gateway | Kind::Ingress => {
                Ok(())
            }
        }
    }
}

/// `d.next` recomputed on top of what this leader wrote last.
fn rebase(d: &Desired, written: &OwnedStatus, now: &Time) -> OwnedStatus {
    d.next_from(written, now)
}

/// Now, to the second (the precision Kubernetes keeps).
fn now() -> Time {
    let t = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

async fn apply<K>(client: Client, key: &ObjectKey, status: &OwnedStatus) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client, &key.namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// An HTTPRoute's `status.parents`, as a merge patch: the list is atomic in the Gateway API
/// schema, so the whole list (other controllers' entries included, as read) is written.
async fn apply_route_status(
    client: Client,
    key: &ObjectKey,
    status: &OwnedStatus,
) -> Result<(), kube::Error> {
    let api: Api<HTTPRoute> = Api::namespaced(client, &key.namespace);
    let body = serde_json::json!({"status": {"parents": status.parents}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&key.name, &params, &Patch::Merge(body))
        .await?;
    Ok(())
}
