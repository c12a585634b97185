//! `--config-file`: the snapshot from a multi-document Kubernetes YAML file,
//! for tests and for running without a control plane.
//!
//! The file holds the same lanemesh objects `kubectl apply` takes
//! (LaneGroup, Lane, RateLimitPolicy, CircuitBreakerPolicy,
//! OverloadProtectionPolicy); they go through the same conversion the
//! control plane uses (`lanemesh_api::convert`) and then the sidecar's own
//! validation. Any refused object fails the whole load, naming the object and
//! field: a file is edited by hand and silently ignoring half of it would
//! hide the mistake.
//!
//! Services come from the file's Kubernetes Services with their
//! EndpointSlices, or, without slices, from the Pods their selectors match
//! (`status.podIP`, the `Ready` condition, the lane tag label), exactly as
//! the control plane's local source reads them. Other kinds (Deployments,
//! Namespaces, ...) are skipped with a warning.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lanemesh_api::convert::{self, Invalid};
use lanemesh_api::manifest::{Manifest, ManifestError};

use crate::identity::PodIdentity;
use crate::snapshot::{RefusedResource, Snapshot, SnapshotBuilder, SnapshotStore};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {source}", .path.display())]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("config file {}: {} object(s) refused:{}", .path.display(), .objects.len(), list(.objects))]
    Refused {
        path: PathBuf,
        objects: Vec<Invalid>,
    },
    #[error("config file {}: {source}", .path.display())]
    Resource {
        path: PathBuf,
        source: RefusedResource,
    },
}

fn list(objects: &[Invalid]) -> String {
    let mut out = String::new();
    for object in objects {
        // Writing to a String cannot fail.
        let _ = write!(out, "\n  - {object}");
    }
    out
}

/// Reads `path` into a complete snapshot (every type marked received).
pub fn load(path: &Path, local: PodIdentity) -> Result<Snapshot, FileError> {
    let yaml = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_yaml(path, &yaml, local)
}

/// Reads `path` and swaps it into `store`; returns the new generation.
pub fn load_into(path: &Path, store: &SnapshotStore) -> Result<u64, FileError> {
    let snapshot = load(path, store.load().local().clone())?;
    Ok(store.store(snapshot))
}

/// The snapshot of a YAML text; `path` only labels the errors.
pub fn from_yaml(path: &Path, yaml: &str, local: PodIdentity) -> Result<Snapshot, FileError> {
    let manifest = Manifest::from_yaml(yaml).map_err(|source| FileError::Manifest {
        path: path.to_owned(),
        source,
    })?;
    for other in &manifest.others {
        let kind = other.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
        let name = other
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("?");
        tracing::warn!(
            path = %path.display(),
            kind,
            name,
            "config file: skipping an object lanemesh does not read"
        );
    }
    // Without a cluster there is no replica count: each pod gets the whole
    // Cluster-scoped threshold, as the control plane does with zero replicas.
    let converted = convert::manifest(&manifest, &|_, _| 0);
    let refused: Vec<Invalid> = converted.rejected().cloned().collect();
    if !refused.is_empty() {
        return Err(FileError::Refused {
            path: path.to_owned(),
            objects: refused,
        });
    }
    let mut builder = SnapshotBuilder::new(local);
    // A gateway's routes (HTTPRoutes and Ingresses of the lanemesh class) too; a sidecar holds
    // them unused.
    let inserted = builder
        .insert_all(converted.services.resources)
        .and_then(|()| builder.insert_all(converted.lane_groups.resources))
        .and_then(|()| builder.insert_all(converted.inbound.resources))
        .and_then(|()| builder.insert_all(converted.outbound.resources))
        .and_then(|()| builder.insert_all(converted.gateway_routes.resources));
    inserted.map_err(|source| FileError::Resource {
        path: path.to_owned(),
        source,
    })?;
    builder.mark_all_received();
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanemesh_api::proto;

    const GOOD: &str = r#"
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: flow, namespace: demo}
spec:
  apps: [a, b]
  entryApps: [a]
  routingMode: Content
---
apiVersion: lanemesh.io/v1alpha1
kind: Lane
metadata: {name: gray, namespace: demo}
spec:
  group: flow
  tag: gray
  enabled: true
  match: {logic: All, conditions: [{source: Header, name: canary, operator: Regex, value: "gr(a|e)y"}]}
---
apiVersion: lanemesh.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: a-limits, namespace: demo}
spec:
  app: a
  rules:
  - name: greet
    match: {paths: [{exact: /greet}]}
    qps: {threshold: 2, behavior: Reject}
---
apiVersion: lanemesh.io/v1alpha1
kind: CircuitBreakerPolicy
metadata: {name: b-breaker, namespace: demo}
spec:
  app: b
  rules:
  - {name: errors, strategy: ErrorRatio, threshold: 0.5, window: 10s, minRequests: 5, openDuration: 5s}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: demo}
spec: {clusterIP: 10.96.0.20, selector: {app: b}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: b-gray-1
  namespace: demo
  labels: {app: b, msePilotAutoEnable: "on", alicloud.service.tag: gray}
spec: {containers: [{name: app, image: b}]}
status: {podIP: 10.0.0.9, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: b, namespace: demo}
spec: {selector: {matchLabels: {app: b}}, template: {metadata: {labels: {app: b}}, spec: {containers: [{name: app, image: b}]}}}
"#;

    fn local() -> PodIdentity {
        PodIdentity::app("demo", "a")
    }

    #[test]
    fn a_file_yields_a_ready_snapshot_of_its_lanemesh_objects() {
        let snap = from_yaml(Path::new("test.yaml"), GOOD, local()).unwrap();
        assert!(snap.is_ready(), "a file is complete by itself");
        let group = snap.get::<proto::LaneGroup>("demo/flow").unwrap();
        assert_eq!(group.resource.lanes.len(), 1);
        assert_eq!(group.resource.lanes[0].tag, "gray");
        let inbound = snap.local_inbound_policy().unwrap();
        assert_eq!(inbound.resource.rules.len(), 1);
        assert_eq!(inbound.resource.rules[0].name, "a-limits/greet");
        assert!(snap.outbound_policy("b").is_some());
        // The Service gets its endpoint from the Pod its selector matches; the
        // Deployment is skipped, not an error.
        let service = snap.get::<proto::Service>("demo/b").unwrap();
        assert_eq!(
            (
                service.resource.app.as_str(),
                service.resource.cluster_ips.as_slice()
            ),
            ("b", &["10.96.0.20".to_owned()][..])
        );
        let endpoint = &service.resource.endpoints[0];
        assert_eq!(
            (
                endpoint.ip.as_str(),
                endpoint.lane_tag.as_str(),
                endpoint.ready
            ),
            ("10.0.0.9", "gray", true)
        );
        assert_eq!(snap.services().len(), 1);
    }

    #[test]
    fn a_refused_object_fails_the_load_naming_object_and_field() {
        let bad = GOOD.replace("gr(a|e)y", "gr(ay");
        let err = from_yaml(Path::new("lanes.yaml"), &bad, local()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, FileError::Refused { .. }), "{message}");
        assert!(message.contains("lanes.yaml"), "{message}");
        assert!(message.contains("Lane demo/gray"), "{message}");
        assert!(
            message.contains("spec.match.conditions[0].value"),
            "{message}"
        );
    }

    #[test]
    fn unreadable_and_malformed_files_are_errors() {
        let err = load(Path::new("/nonexistent/lanemesh.yaml"), local()).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }), "{err}");
        let err = from_yaml(Path::new("x.yaml"), "kind: [", local()).unwrap_err();
        assert!(matches!(err, FileError::Manifest { .. }), "{err}");
    }

    #[test]
    fn every_example_passes_the_sidecar_validation() {
        // What the shared conversion accepts, the sidecar must accept too;
        // otherwise a valid cluster configuration would be NACKed.
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut files = Vec::new();
        let mut dirs = vec![examples];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 4, "examples not found: {files:?}");
        let mut held = 0;
        for path in &files {
            let snap = load(path, local()).unwrap_or_else(|e| panic!("{e}"));
            held += snap.lane_groups().len()
                + snap.inbound_policies().len()
                + snap.outbound_policies().len();
        }
        assert!(held >= 4, "the examples produced only {held} resources");
    }

    #[test]
    fn load_into_swaps_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let store = SnapshotStore::new(local());
        assert!(!store.is_ready());
        assert_eq!(load_into(&path, &store).unwrap(), 1);
        assert!(store.is_ready());
        assert!(store.load().local_inbound_policy().is_some());
    }
}
