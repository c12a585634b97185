//! Multi-document YAML as users `kubectl apply` it (and the sidecar's `--config-file` and the
//! control plane's local source read it): `manifest::Manifest` parsing, then the CRD ->
//! discovery conversion of `convert::manifest`.
//!
//! Invariants: no panic on any input; conversion is deterministic; every resource the
//! conversion accepts is accepted by the sidecar (a control plane must not stream what its
//! sidecars NACK), and the sidecar builds its routing runtime from all of them together.

use lanemesh_api::convert;
use lanemesh_api::manifest::Manifest;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::mesh::MeshRouter;
use lanemesh_sidecar::snapshot::Snapshot;
use prost::Message;

pub fn run(data: &[u8]) {
    let yaml = String::from_utf8_lossy(data);
    let Ok(manifest) = Manifest::from_yaml(&yaml) else {
        return;
    };
    // Cluster-scoped QPS is divided by the ready replicas; 0, 1 and 2 all occur.
    let replicas = |_: &str, app: &str| u32::try_from(app.len() % 3).unwrap_or(1);
    let converted = convert::manifest(&manifest, &replicas);
    let again = convert::manifest(&manifest, &replicas);
    // Compared encoded: thresholds may be NaN, which is never equal to itself.
    assert_eq!(
        encoded(&again),
        encoded(&converted),
        "conversion is not deterministic"
    );

    let app = converted
        .inbound
        .resources
        .first()
        .map(|p| p.app.clone())
        .unwrap_or_default();
    let local = PodIdentity::app("", app);
    let snapshot = match Snapshot::from_resources(
        local,
        converted.services.resources,
        converted.lane_groups.resources,
        converted.inbound.resources,
        converted.outbound.resources,
    ) {
        Ok(snapshot) => snapshot,
        Err(refused) => panic!("the conversion accepted what the sidecar refuses: {refused}"),
    };
    let router = MeshRouter::new();
    router.install(&snapshot);
}

fn encoded(c: &convert::Converted) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    out.extend(c.services.resources.iter().map(Message::encode_to_vec));
    out.extend(c.lane_groups.resources.iter().map(Message::encode_to_vec));
    out.extend(c.inbound.resources.iter().map(Message::encode_to_vec));
    out.extend(c.outbound.resources.iter().map(Message::encode_to_vec));
    out.push(format!("{:?}", c.rejected().collect::<Vec<_>>()).into_bytes());
    out
}
