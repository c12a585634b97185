//! The live configuration: an immutable [`Snapshot`] of every discovery
//! resource the sidecar holds, swapped atomically in a [`SnapshotStore`].
//!
//! One writer (the discovery client, or the file loader) builds the next
//! snapshot off the hot path with a [`SnapshotBuilder`] and stores it; each
//! request `load()`s the current snapshot once and keeps using that same
//! value to its end, so it never sees half of an update. Unchanged resources
//! are shared between consecutive snapshots through `Arc`s, so an update
//! costs a map clone of pointers plus the rebuild of the small indexes.
//!
//! # Layout
//! - [`validate`]: the [`Compile`] trait: per-resource checks and runtime
//!   forms, with typed [`ValidationError`]s that become NACK messages.

pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;
use prost::Message;
use tokio::sync::watch;

pub use validate::{Compile, ValidationError, WorkloadIdentity};

/// The resource types of the discovery protocol (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Service,
    LaneGroup,
    InboundPolicy,
    OutboundPolicy,
    /// Who this pod is: its app and lane tag, from the control plane.
    Workload,
    /// The routes of a gateway; a sidecar does not subscribe to them.
    GatewayRoute,
}

impl ResourceKind {
    /// In the order of `lanemesh_api::resource::ALL_TYPE_URLS`, then the gateway's own.
    pub const ALL: [Self; 6] = [
        Self::Service,
        Self::LaneGroup,
        Self::InboundPolicy,
        Self::OutboundPolicy,
        Self::Workload,
        Self::GatewayRoute,
    ];

    /// The types a proxy of `identity` subscribes to: every one but the gateway routes, which
    /// only a gateway asks for.
    pub fn subscribed(identity: &PodIdentity) -> impl Iterator<Item = Self> + use<> {
        let gateway = identity.gateway;
        Self::ALL
            .into_iter()
            .filter(move |k| gateway || *k != Self::GatewayRoute)
    }

    pub const fn type_url(self) -> &'static str {
        match self {
            Self::Service => <proto::Service as DiscoveryResource>::TYPE_URL,
            Self::LaneGroup => <proto::LaneGroup as DiscoveryResource>::TYPE_URL,
            Self::InboundPolicy => <proto::InboundPolicy as DiscoveryResource>::TYPE_URL,
            Self::OutboundPolicy => <proto::OutboundPolicy as DiscoveryResource>::TYPE_URL,
            Self::Workload => <proto::Workload as DiscoveryResource>::TYPE_URL,
            Self::GatewayRoute => <proto::GatewayRoute as DiscoveryResource>::TYPE_URL,
        }
    }

    pub fn from_type_url(type_url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_url() == type_url)
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "Service",
            Self::LaneGroup => "LaneGroup",
            Self::InboundPolicy => "InboundPolicy",
            Self::OutboundPolicy => "OutboundPolicy",
            Self::Workload => "Workload",
            Self::GatewayRoute => "GatewayRoute",
        })
    }
}

/// One accepted resource: the wire form, its runtime form and its version.
#[derive(Debug)]
pub struct Entry<T: Compile> {
    pub version: String,
    pub resource: T,
    pub compiled: T::Output,
}

/// Resources of one type by name. `BTreeMap` so dumps and iteration are in a
/// stable (name) order.
pub type Resources<T> = BTreeMap<String, Arc<Entry<T>>>;

/// A resource type the snapshot holds; ties each type to its map.
pub trait SnapshotResource: Compile + Sized {
    const KIND: ResourceKind;
    #[doc(hidden)]
    fn map(tables: &Tables) -> &Resources<Self>;
    #[doc(hidden)]
    fn map_mut(tables: &mut Tables) -> &mut Resources<Self>;
}

/// The resource maps, one per [`ResourceKind`].
#[derive(Debug, Clone, Default)]
pub struct Tables {
    services: Resources<proto::Service>,
    lane_groups: Resources<proto::LaneGroup>,
    inbound_policies: Resources<proto::InboundPolicy>,
    outbound_policies: Resources<proto::OutboundPolicy>,
    workloads: Resources<proto::Workload>,
    gateway_routes: Resources<proto::GatewayRoute>,
}

macro_rules! snapshot_resource {
    ($ty:ident, $field:ident) => {
        impl SnapshotResource for proto::$ty {
            const KIND: ResourceKind = ResourceKind::$ty;
            fn map(tables: &Tables) -> &Resources<Self> {
                &tables.$field
            }
            fn map_mut(tables: &mut Tables) -> &mut Resources<Self> {
                &mut tables.$field
            }
        }
    };
}

snapshot_resource!(Service, services);
snapshot_resource!(LaneGroup, lane_groups);
snapshot_resource!(InboundPolicy, inbound_policies);
snapshot_resource!(OutboundPolicy, outbound_policies);
snapshot_resource!(Workload, workloads);
snapshot_resource!(GatewayRoute, gateway_routes);

/// Which types a snapshot has received a first answer for, by [`ResourceKind`] index.
type Received = [bool; ResourceKind::ALL.len()];

use crate::identity::PodIdentity;

/// What the data plane knows about a pod IP from the Services it backs.
#[derive(Debug, Clone)]
pub struct EndpointOwner {
    /// The governed app; empty when none of its Services names one.
    pub app: String,
    pub pod_name: String,
    pub lane_tag: String,
    pub ready: bool,
    /// Every Service with this IP among its endpoints, by name order.
    pub services: Vec<Arc<Entry<proto::Service>>>,
}

#[derive(Debug, Default)]
struct Index {
    by_cluster_addr: HashMap<SocketAddr, Arc<Entry<proto::Service>>>,
    by_endpoint_ip: HashMap<IpAddr, EndpointOwner>,
    local_inbound: Option<Arc<Entry<proto::InboundPolicy>>>,
    outbound_by_app: HashMap<String, Arc<Entry<proto::OutboundPolicy>>>,
}

impl Index {
    fn build(tables: &Tables, local: &PodIdentity) -> Self {
        let mut index = Self::default();
        for entry in tables.services.values() {
            for ip in &entry.compiled.cluster_ips {
                for port in &entry.resource.ports {
                    // Validation bounded ports to u16.
                    let Ok(port) = u16::try_from(port.port) else {
                        continue;
                    };
                    index
                        .by_cluster_addr
                        .entry(SocketAddr::new(*ip, port))
                        .or_insert_with(|| Arc::clone(entry));
                }
            }
            let endpoints = entry.resource.endpoints.iter();
            let ips = entry.compiled.endpoints.iter().map(|e| &e.ip);
            for (ip, endpoint) in ips.zip(endpoints) {
                let owner = index
                    .by_endpoint_ip
                    .entry(*ip)
                    .or_insert_with(|| EndpointOwner {
                        app: String::new(),
                        pod_name: endpoint.pod_name.clone(),
                        lane_tag: endpoint.lane_tag.clone(),
                        ready: endpoint.ready,
                        services: Vec::new(),
                    });
                if owner.app.is_empty() {
                    owner.app.clone_from(&entry.resource.app);
                }
                owner.ready |= endpoint.ready;
                owner.services.push(Arc::clone(entry));
            }
        }
        // The control plane sends only this node's policy, but a file holds
        // every app's: match on the app (and namespace when known).
        index.local_inbound = tables
            .inbound_policies
            .values()
            .find(|e| {
                e.resource.app == local.app
                    && (local.namespace.is_empty() || e.resource.namespace == local.namespace)
            })
            .cloned();
        for entry in tables.outbound_policies.values() {
            let slot = index
                .outbound_by_app
                .entry(entry.resource.app.clone())
                .or_insert_with(|| Arc::clone(entry));
            // Same app name in several namespaces: the node's own namespace wins.
            if entry.resource.namespace == local.namespace {
                *slot = Arc::clone(entry);
            }
        }
        index
    }
}

/// An immutable view of every resource the sidecar holds.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    /// What the flags say (see [`SnapshotBuilder::new`]).
    claimed: PodIdentity,
    /// Who the pod is: the claim completed by the control plane's Workload.
    local: PodIdentity,
    received: Received,
    tables: Tables,
    index: Index,
}

impl Snapshot {
    /// Nothing held, nothing received: not ready.
    pub fn empty(local: PodIdentity) -> Self {
        SnapshotBuilder::new(local).build()
    }

    /// A complete snapshot of the given resources, every type marked as
    /// received; for in-process tests and the file loader. Refuses the first
    /// invalid resource.
    pub fn from_resources(
        local: PodIdentity,
        services: impl IntoIterator<Item = proto::Service>,
        lane_groups: impl IntoIterator<Item = proto::LaneGroup>,
        inbound_policies: impl IntoIterator<Item = proto::InboundPolicy>,
        outbound_policies: impl IntoIterator<Item = proto::OutboundPolicy>,
    ) -> Result<Self, RefusedResource> {
        let mut builder = SnapshotBuilder::new(local);
        builder.insert_all(services)?;
        builder.insert_all(lane_groups)?;
        builder.insert_all(inbound_policies)?;
        builder.insert_all(outbound_policies)?;
        builder.mark_all_received();
        Ok(builder.build())
    }

    /// Counts up by one with every swap in a [`SnapshotStore`]; 0 before the first.
    pub const fn generation(&self) -> u64 {
        self.generation
    }

    /// Who the pod is: the flags' app and lane tag where given, else the control plane's
    /// Workload (the pod's labels).
    pub const fn local(&self) -> &PodIdentity {
        &self.local
    }

    /// The control plane says the pod is being deleted (its Workload).
    pub fn terminating(&self) -> bool {
        self.tables
            .workloads
            .values()
            .next()
            .is_some_and(|w| w.compiled.terminating)
    }

    /// The identity the flags claim, before the control plane's Workload.
    pub const fn claimed(&self) -> &PodIdentity {
        &self.claimed
    }

    /// True once a first response of every resource type has been applied
    /// (`/healthz/ready`, DESIGN §5).
    pub fn is_ready(&self) -> bool {
        self.received.iter().all(|r| *r)
    }

    pub const fn has_received(&self, kind: ResourceKind) -> bool {
        self.received[kind.index()]
    }

    pub fn resources<T: SnapshotResource>(&self) -> &Resources<T> {
        T::map(&self.tables)
    }

    pub fn get<T: SnapshotResource>(&self, name: &str) -> Option<&Arc<Entry<T>>> {
        T::map(&self.tables).get(name)
    }

    pub const fn services(&self) -> &Resources<proto::Service> {
        &self.tables.services
    }

    pub const fn lane_groups(&self) -> &Resources<proto::LaneGroup> {
        &self.tables.lane_groups
    }

    pub const fn inbound_policies(&self) -> &Resources<proto::InboundPolicy> {
        &self.tables.inbound_policies
    }

    pub const fn outbound_policies(&self) -> &Resources<proto::OutboundPolicy> {
        &self.tables.outbound_policies
    }

    /// The Service whose cluster IP and port an outbound connection targets.
    pub fn service_by_cluster_addr(&self, addr: SocketAddr) -> Option<&Arc<Entry<proto::Service>>> {
        self.index.by_cluster_addr.get(&addr)
    }

    /// What a pod IP is (app, lane, Services), for direct pod-IP calls.
    pub fn endpoint(&self, ip: IpAddr) -> Option<&EndpointOwner> {
        self.index.by_endpoint_ip.get(&ip)
    }

    /// The InboundPolicy of this sidecar's own app.
    pub fn local_inbound_policy(&self) -> Option<&Arc<Entry<proto::InboundPolicy>>> {
        self.index.local_inbound.as_ref()
    }

    /// The OutboundPolicy towards a destination app.
    pub fn outbound_policy(&self, app: &str) -> Option<&Arc<Entry<proto::OutboundPolicy>>> {
        self.index.outbound_by_app.get(app)
    }

    /// name -> version of every held resource of a type; sent as
    /// `initial_resource_versions` on reconnect.
    pub fn versions(&self, kind: ResourceKind) -> BTreeMap<String, String> {
        fn of<T: SnapshotResource>(t: &Tables) -> BTreeMap<String, String> {
            T::map(t)
                .iter()
                .map(|(name, e)| (name.clone(), e.version.clone()))
                .collect()
        }
        match kind {
            ResourceKind::Service => of::<proto::Service>(&self.tables),
            ResourceKind::LaneGroup => of::<proto::LaneGroup>(&self.tables),
            ResourceKind::InboundPolicy => of::<proto::InboundPolicy>(&self.tables),
            ResourceKind::OutboundPolicy => of::<proto::OutboundPolicy>(&self.tables),
            ResourceKind::Workload => of::<proto::Workload>(&self.tables),
            ResourceKind::GatewayRoute => of::<proto::GatewayRoute>(&self.tables),
        }
    }
}

/// A resource refused while building a snapshot, by name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind} {name:?} (version {version:?}) refused: {error}")]
pub struct RefusedResource {
    pub kind: ResourceKind,
    pub name: String,
    pub version: String,
    /// Boxed: the refusal travels in `Result`s of every insert.
    pub error: Box<ValidationError>,
}

impl RefusedResource {
    /// The NACK entry for this refusal.
    pub fn to_resource_error(&self) -> proto::ResourceError {
        proto::ResourceError {
            name: self.name.clone(),
            version: self.version.clone(),
            message: self.error.to_string(),
        }
    }
}

/// Builds the next snapshot from the current one, off the hot path.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    claimed: PodIdentity,
    received: Received,
    tables: Tables,
}

impl SnapshotBuilder {
    /// A snapshot for the pod `claimed` names: its namespace, name and IP are final; its app and
    /// lane tag, where empty, come from the control plane's Workload (set ones override it, for
    /// processes outside Kubernetes).
    pub fn new(claimed: PodIdentity) -> Self {
        let mut received = [false; ResourceKind::ALL.len()];
        // A sidecar never asks for gateway routes: it holds every one there is (none).
        received[ResourceKind::GatewayRoute.index()] = !claimed.gateway;
        Self {
            claimed,
            received,
            tables: Tables::default(),
        }
    }

    /// Starts from `snapshot`, sharing its resources.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self {
            claimed: snapshot.claimed.clone(),
            received: snapshot.received,
            tables: snapshot.tables.clone(),
        }
    }

    /// Validates and adds (or replaces) a resource under its own name.
    pub fn insert<T: SnapshotResource>(
        &mut self,
        version: impl Into<String>,
        resource: T,
    ) -> Result<(), RefusedResource> {
        let name = resource.resource_name().to_owned();
        let version = version.into();
        match resource.compile() {
            Ok(compiled) => {
                let entry = Entry {
                    version,
                    resource,
                    compiled,
                };
                T::map_mut(&mut self.tables).insert(name, Arc::new(entry));
                Ok(())
            }
            Err(error) => Err(RefusedResource {
                kind: T::KIND,
                name,
                version,
                error: Box::new(error),
            }),
        }
    }

    /// Adds resources with a version derived from their content.
    pub fn insert_all<T: SnapshotResource>(
        &mut self,
        resources: impl IntoIterator<Item = T>,
    ) -> Result<(), RefusedResource> {
        for resource in resources {
            let version = content_version(&resource);
            self.insert(version, resource)?;
        }
        Ok(())
    }

    /// Drops a resource; `true` when it was held.
    pub fn remove(&mut self, kind: ResourceKind, name: &str) -> bool {
        match kind {
            ResourceKind::Service => self.tables.services.remove(name).is_some(),
            ResourceKind::LaneGroup => self.tables.lane_groups.remove(name).is_some(),
            ResourceKind::InboundPolicy => self.tables.inbound_policies.remove(name).is_some(),
            ResourceKind::OutboundPolicy => self.tables.outbound_policies.remove(name).is_some(),
            ResourceKind::Workload => self.tables.workloads.remove(name).is_some(),
            ResourceKind::GatewayRoute => self.tables.gateway_routes.remove(name).is_some(),
        }
    }

    /// Applies one delta response of `kind`: drops `removed`, then decodes,
    /// validates and stores each resource. Refused resources keep their last
    /// good copy (if any) and are returned for the NACK. Marks the type received.
    pub fn apply_delta(
        &mut self,
        kind: ResourceKind,
        resources: Vec<proto::Resource>,
        removed: &[String],
    ) -> Vec<RefusedResource> {
        for name in removed {
            self.remove(kind, name);
        }
        let refused = match kind {
            ResourceKind::Service => self.apply_all::<proto::Service>(resources),
            ResourceKind::LaneGroup => self.apply_all::<proto::LaneGroup>(resources),
            ResourceKind::InboundPolicy => self.apply_all::<proto::InboundPolicy>(resources),
            ResourceKind::OutboundPolicy => self.apply_all::<proto::OutboundPolicy>(resources),
            ResourceKind::Workload => self.apply_all::<proto::Workload>(resources),
            ResourceKind::GatewayRoute => self.apply_all::<proto::GatewayRoute>(resources),
        };
        self.mark_received(kind);
        refused
    }

    fn apply_all<T: SnapshotResource>(
        &mut self,
        resources: Vec<proto::Resource>,
    ) -> Vec<RefusedResource> {
        let mut refused = Vec::new();
        for r in resources {
            let refuse = |error| RefusedResource {
                kind: T::KIND,
                name: r.name.clone(),
                version: r.version.clone(),
                error: Box::new(error),
            };
            let decoded = match &r.resource {
                None => Err(ValidationError::Decode(
                    "the resource body is missing".into(),
                )),
                Some(any) => T::from_any(any).map_err(|e| ValidationError::Decode(e.to_string())),
            };
            let resource = match decoded {
                Ok(resource) if resource.resource_name() != r.name => {
                    Err(ValidationError::NameMismatch {
                        outer: r.name.clone(),
                        inner: resource.resource_name().to_owned(),
                    })
                }
                other => other,
            };
            match resource {
                Ok(resource) => {
                    if let Err(e) = self.insert(r.version, resource) {
                        refused.push(e);
                    }
                }
                Err(error) => refused.push(refuse(error)),
            }
        }
        refused
    }

    pub fn mark_received(&mut self, kind: ResourceKind) {
        self.received[kind.index()] = true;
    }

    pub fn mark_all_received(&mut self) {
        self.received = [true; ResourceKind::ALL.len()];
    }

    /// The snapshot, with its indexes. Its generation is assigned when it is
    /// stored.
    pub fn build(self) -> Snapshot {
        let local = self.identity();
        let index = Index::build(&self.tables, &local);
        Snapshot {
            generation: 0,
            claimed: self.claimed,
            local,
            received: self.received,
            tables: self.tables,
            index,
        }
    }
}

impl SnapshotBuilder {
    /// The claim completed by the Workload of this pod (the control plane sends exactly one;
    /// a file may list none).
    fn identity(&self) -> PodIdentity {
        let mut local = self.claimed.clone();
        if let Some(workload) = self.tables.workloads.values().next() {
            if local.app.is_empty() {
                local.app.clone_from(&workload.compiled.app);
            }
            if local.lane_tag.is_none() {
                local.lane_tag.clone_from(&workload.compiled.lane_tag);
            }
        }
        local
    }
}

/// A version that changes whenever the content does (as the control plane computes it), for
/// resources that come without one.
pub fn content_version<T: Message>(resource: &T) -> String {
    lanemesh_api::hash::version_of(&resource.encode_to_vec())
}

/// The current snapshot, swapped atomically by its one writer.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    generation: watch::Sender<u64>,
}

impl SnapshotStore {
    pub fn new(local: PodIdentity) -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::empty(local)),
            generation: watch::Sender::new(0),
        }
    }

    /// The current snapshot; call once per request and keep it to the end.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for long-lived holders.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in `next` and announces its generation; returns it.
    pub fn store(&self, mut next: Snapshot) -> u64 {
        let mut generation = 0;
        // The watch's lock serialises concurrent stores, so generations
        // strictly increase in swap order even with more than one writer.
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
            next.generation = *g;
            self.current.store(Arc::new(next));
        });
        generation
    }

    /// A receiver that changes with each swap (its value is the generation).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_ready()
    }

    /// Waits until the current snapshot is ready.
    pub async fn ready(&self) {
        let mut rx = self.subscribe();
        // `wait_for` checks the current value first, so a swap between
        // subscribe and here is not missed.
        let _ = rx.wait_for(|_| self.is_ready()).await;
    }
}

/// Readiness and the generation on every `/metrics` scrape.
impl crate::metrics::ScrapeSource for SnapshotStore {
    fn samples(&self) -> Vec<crate::metrics::Sample> {
        use crate::metrics::Sample::Gauge;
        let snapshot = self.load();
        vec![
            Gauge(
                "config_ready",
                "1 once a first snapshot of every resource type is applied",
                i64::from(snapshot.is_ready()),
            ),
            Gauge(
                "config_generation",
                "Snapshots applied since start",
                i64::try_from(snapshot.generation()).unwrap_or(i64::MAX),
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
