//! Discovery resources from the wire into the sidecar's runtime: prost decoding of each
//! resource type, the per-resource compilation the snapshot makes (Service -> `ServiceSpec`,
//! LaneGroup -> `LaneGroupConfig`, policies -> `InboundRules` / `OutboundRules`, the Workload
//! that names the pod's app and lane), the
//! snapshot indexes and the routing runtime built from a ready snapshot (lane table, route
//! table, governors), as a control plane, buggy or newer, could make the sidecar do.
//!
//! Input, read two ways:
//! - the whole input as one message of each of the five types, each alone in a snapshot;
//! - a sequence of records `kind (1 byte, mod 5) | length (u16 LE) | message`, together in one
//!   snapshot, so resources that refer to each other (apps, lanes, services) meet.
//!
//! Invariants: no panic anywhere on the way; a decoded message encodes to bytes that decode
//! to a message with the same encoding; a resource accepted by `insert` is accepted when it
//! arrives wrapped in an `Any` through `apply_delta`, and one refused is refused there too;
//! the runtime builds (twice, the second time on top of the first, as on a snapshot swap) and
//! every Service it routes is found at each of its cluster addresses.

use std::net::{IpAddr, SocketAddr};

use lanemesh_api::proto;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::mesh::MeshRouter;
use lanemesh_sidecar::snapshot::{SnapshotBuilder, SnapshotResource};
use prost::Message;

/// A decoded resource of any type.
#[derive(Debug)]
enum Resource {
    Service(proto::Service),
    LaneGroup(proto::LaneGroup),
    InboundPolicy(proto::InboundPolicy),
    OutboundPolicy(proto::OutboundPolicy),
    Workload(proto::Workload),
}

impl Resource {
    fn decode(kind: u8, bytes: &[u8]) -> Option<Self> {
        match kind % 5 {
            0 => decode(bytes).map(Self::Service),
            1 => decode(bytes).map(Self::LaneGroup),
            2 => decode(bytes).map(Self::InboundPolicy),
            3 => decode(bytes).map(Self::OutboundPolicy),
            _ => decode(bytes).map(Self::Workload),
        }
    }
}

/// Decodes `bytes` as `T`, checking the encoding of the result is stable.
fn decode<T: Message + Default + PartialEq>(bytes: &[u8]) -> Option<T> {
    let message = T::decode(bytes).ok()?;
    let encoded = message.encode_to_vec();
    let again = match T::decode(encoded.as_slice()) {
        Ok(again) => again,
        Err(error) => panic!("re-encoded message does not decode: {error}"),
    };
    // Compared as bytes, not as messages: a NaN threshold is a legal double that is not equal
    // to itself, and the resource version is a hash of these bytes.
    assert!(
        again.encode_to_vec() == encoded,
        "re-encoding the decoded message gives other bytes"
    );
    Some(message)
}

pub fn run(data: &[u8]) {
    for kind in 0..5 {
        if let Some(resource) = Resource::decode(kind, data) {
            snapshot(vec![resource]);
        }
    }
    snapshot(records(data));
}

/// The record reading of the input; a truncated record ends it.
fn records(mut data: &[u8]) -> Vec<Resource> {
    let mut resources = Vec::new();
    while let [kind, lo, hi, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (message, tail) = rest.split_at(len);
        if let Some(resource) = Resource::decode(*kind, message) {
            resources.push(resource);
        }
        data = tail;
    }
    resources
}

/// Whose sidecar the snapshot is built for: the app of the first inbound policy (so its
/// rules are compiled into the governor), else of the first lane group.
fn local_app(resources: &[Resource]) -> PodIdentity {
    let inbound = resources.iter().find_map(|r| match r {
        Resource::InboundPolicy(p) => Some((p.namespace.clone(), p.app.clone())),
        _ => None,
    });
    let lane = resources.iter().find_map(|r| match r {
        Resource::LaneGroup(g) => g.apps.first().map(|a| (String::new(), a.clone())),
        _ => None,
    });
    let (namespace, app) = inbound.or(lane).unwrap_or_default();
    PodIdentity::app(namespace, app)
}

fn snapshot(resources: Vec<Resource>) {
    let local = local_app(&resources);
    let mut builder = SnapshotBuilder::new(local.clone());
    for resource in resources {
        match resource {
            Resource::Service(r) => insert(&mut builder, r),
            Resource::LaneGroup(r) => insert(&mut builder, r),
            Resource::InboundPolicy(r) => insert(&mut builder, r),
            Resource::OutboundPolicy(r) => insert(&mut builder, r),
            Resource::Workload(r) => insert(&mut builder, r),
        }
    }
    builder.mark_all_received();
    let snapshot = builder.build();

    let router = MeshRouter::new();
    router.install(&snapshot);
    // A second install starts from the first runtime's limiters and breakers (snapshot swap).
    router.install(&snapshot);
    let Some(runtime) = router.runtime() else {
        panic!("no runtime after install");
    };
    for service in runtime.routes.services() {
        let Some(entry) = snapshot.get::<proto::Service>(service.name()) else {
            continue;
        };
        for ip in &entry.compiled.cluster_ips {
            for port in service.ports() {
                let addr = SocketAddr::new(*ip, port.port());
                let Some(destination) = runtime.routes.lookup(addr) else {
                    panic!("{} not found at {addr}", service.name());
                };
                // Every lane of every group, and base: the choice must not panic.
                let _ = destination.choose(None, &runtime.lanes);
                for group in runtime.lanes.groups() {
                    for lane in &group.lanes {
                        let _ = destination.choose(Some(&lane.tag), &runtime.lanes);
                    }
                }
            }
        }
    }
    let _ = snapshot.endpoint(IpAddr::from([127, 0, 0, 1]));
}

/// Inserts `resource` directly and through the wire path; both must agree.
fn insert<T: SnapshotResource + Clone>(builder: &mut SnapshotBuilder, resource: T) {
    let mut wire = builder.clone();
    let name = resource.resource_name().to_owned();
    let refused = wire.apply_delta(
        T::KIND,
        vec![proto::Resource {
            name: name.clone(),
            version: "fuzz".to_owned(),
            resource: Some(resource.to_any()),
        }],
        &[],
    );
    let inserted = builder.insert("fuzz", resource);
    assert_eq!(
        inserted.is_ok(),
        refused.is_empty(),
        "{} {name:?}: insert says {inserted:?}, apply_delta refused {refused:?}",
        T::KIND
    );
}
