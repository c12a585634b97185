//! The `local` source: a directory of the same YAML a cluster would hold
//! (lanemesh CRDs, Services, Pods, EndpointSlices), for the demo and for
//! running outside Kubernetes.
//!
//! The directory is polled: every `interval` the files' modification times
//! and sizes are compared, and on any difference the whole state is re-sent
//! as one `Replace`. Polling keeps this bounded and portable (no inotify
//! limits, works on bind mounts and ConfigMap symlink swaps). A file that no
//! longer parses keeps its last good objects in force and is logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lanemesh_api::manifest::Manifest;
use tokio::sync::mpsc;

use super::{Object, SourceEvent};

/// Default poll interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    File { file: PathBuf, reason: String },
}

/// A watched directory.
#[derive(Debug)]
pub struct LocalSource {
    dir: PathBuf,
    interval: Duration,
    /// path -> (mtime, size, last good objects of that file).
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug)]
struct FileState {
    stamp: (Option<SystemTime>, u64),
    objects: Vec<Object>,
}

impl LocalSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            interval: DEFAULT_INTERVAL,
            files: BTreeMap::new(),
        }
    }

    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sends a `Replace` now and after every change, until the receiver is
    /// dropped. Fails only when the directory cannot be read at start; later
    /// read errors are logged and the last state stays in force.
    pub async fn run(mut self, tx: mpsc::Sender<SourceEvent>) -> Result<(), LocalError> {
        self.scan(true).await?;
        if tx.send(SourceEvent::Replace(self.objects())).await.is_err() {
            return Ok(());
        }
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = tx.closed() => return Ok(()),
            }
            match self.scan(false).await {
                Ok(false) => {}
                Ok(true) => {
                    if tx.send(SourceEvent::Replace(self.objects())).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "local source: keeping the last state"),
            }
        }
    }

    fn objects(&self) -> Vec<Object> {
        self.files
            .values()
            .flat_map(|f| f.objects.iter().cloned())
            .collect()
    }

    /// Re-reads changed files; returns whether anything changed.
    async fn scan(&mut self, first: bool) -> Result<bool, LocalError> {
        let dir = self.dir.clone();
        let listed = tokio::task::spawn_blocking(move || list(&dir))
            .await
            .map_err(|e| LocalError::Dir {
                dir: self.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|path, _| listed.contains_key(path));
        changed |= self.files.len() != before;
        for (path, stamp) in listed {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            changed = true;
            match read_file(&path).await {
                Ok(objects) => {
                    tracing::info!(file = %path.display(), objects = objects.len(), "local source: loaded");
                    self.files.insert(path, FileState { stamp, objects });
                }
                Err(e) => {
                    tracing::error!(error = %e, "local source: file refused, its last good objects stay in force");
                    // Remember the stamp so the same broken content is not
                    // re-read and re-logged every tick.
                    let objects = self
                        .files
                        .remove(&path)
                        .map(|f| f.objects)
                        .unwrap_or_default();
                    self.files.insert(path, FileState { stamp, objects });
                }
            }
        }
        Ok(changed || first)
    }
}

/// Sets `spec.enabled` of Lane `namespace/name` in the directory's files (the console's lane
/// switch in local mode): the file holding it is rewritten with that document changed, the
/// others as they were parsed (comments and formatting are not kept), through a temporary file
/// and a rename so the source never reads half of it. Returns the file.
pub fn set_lane_enabled(
    dir: &Path,
    namespace: &str,
    name: &str,
    enabled: bool,
) -> Result<Option<PathBuf>, LocalError> {
    use serde::Deserialize as _;
    for path in list(dir)?.into_keys() {
        let file_err = |reason: String| LocalError::File {
            file: path.clone(),
            reason,
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            match serde_yaml::Value::deserialize(doc) {
                Ok(value) => docs.push(value),
                // A file the source refuses is not one to rewrite.
                Err(_) => {
                    docs.clear();
                    break;
                }
            }
        }
        let is_lane = |d: &serde_yaml::Value| {
            d["kind"] == "Lane"
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
        };
        let Some(lane) = docs.iter_mut().find(|d| is_lane(d)) else {
            continue;
        };
        let spec = lane
            .get_mut("spec")
            .and_then(serde_yaml::Value::as_mapping_mut)
            .ok_or_else(|| file_err(format!("Lane {namespace}/{name} has no spec")))?;
        spec.insert("enabled".into(), enabled.into());
        let mut out = String::new();
        for doc in docs.iter().filter(|d| !d.is_null()) {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(doc).map_err(|e| file_err(e.to_string()))?);
        }
        let tmp = dir.join(format!(".lanemesh-console-{}.tmp", std::process::id()));
        std::fs::write(&tmp, out).map_err(|e| file_err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_err(e.to_string()))?;
        return Ok(Some(path));
    }
    Ok(None)
}

fn list(dir: &Path) -> Result<BTreeMap<PathBuf, (Option<SystemTime>, u64)>, LocalError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| LocalError::Dir {
            dir: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            // Hidden entries include Kubernetes' ConfigMap `..data` links and
            // editors' swap files.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            // `metadata` follows symlinks, as a ConfigMap mount needs.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                out.insert(path, (meta.modified().ok(), meta.len()));
            }
        }
    }
    Ok(out)
}

async fn read_file(path: &Path) -> Result<Vec<Object>, LocalError> {
    let file_err = |reason: String| LocalError::File {
        file: path.to_path_buf(),
        reason,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| file_err(e.to_string()))?;
    parse(&text).map_err(file_err)
}

/// The objects of one multi-document YAML text. Kinds the control plane
/// does not read (Deployments, ConfigMaps, ...) are skipped.
pub fn parse(text: &str) -> Result<Vec<Object>, String> {
    let manifest = Manifest::from_yaml(text).map_err(|e| e.to_string())?;
    let mut out: Vec<Object> = Vec::new();
    out.extend(
        manifest
            .lane_groups
            .into_iter()
            .map(|o| Object::LaneGroup(Box::new(o))),
    );
    out.extend(
        manifest
            .lanes
            .into_iter()
            .map(|o| Object::Lane(Box::new(o))),
    );
    out.extend(
        manifest
            .rate_limits
            .into_iter()
            .map(|o| Object::RateLimitPolicy(Box::new(o))),
    );
    out.extend(
        manifest
            .circuit_breakers
            .into_iter()
            .map(|o| Object::CircuitBreakerPolicy(Box::new(o))),
    );
    out.extend(
        manifest
            .overloads
            .into_iter()
            .map(|o| Object::OverloadProtectionPolicy(Box::new(o))),
    );
    out.extend(
        manifest
            .traffic_policies
            .into_iter()
            .map(|o| Object::TrafficPolicy(Box::new(o))),
    );
    out.extend(
        manifest
            .services
            .into_iter()
            .map(|o| Object::Service(Box::new(o))),
    );
    out.extend(manifest.pods.into_iter().map(|o| Object::Pod(Box::new(o))));
    out.extend(
        manifest
            .endpoint_slices
            .into_iter()
            .map(|o| Object::EndpointSlice(Box::new(o))),
    );
    out.extend(
        manifest
            .http_routes
            .into_iter()
            .map(|o| Object::HttpRoute(Box::new(o))),
    );
    out.extend(
        manifest
            .gateways
            .into_iter()
            .map(|o| Object::Gateway(Box::new(o))),
    );
    out.extend(
        manifest
            .ingresses
            .into_iter()
            .map(|o| Object::Ingress(Box::new(o))),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;

    #[test]
    fn the_console_switch_rewrites_the_one_lane_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = dir.path().join("lanes.yaml");
        std::fs::write(
            &lanes,
            "# comment\napiVersion: lanemesh.io/v1alpha1\nkind: Lane\nmetadata: {name: gray, namespace: shop}\nspec: {group: flow, tag: gray, enabled: true}\n---\napiVersion: lanemesh.io/v1alpha1\nkind: Lane\nmetadata: {name: blue, namespace: shop}\nspec: {group: flow, tag: blue, enabled: true}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other.yaml"),
            "kind: Service\nmetadata: {name: gray, namespace: shop}\n",
        )
        .unwrap();
        let written = set_lane_enabled(dir.path(), "shop", "gray", false).unwrap();
        assert_eq!(written.as_deref(), Some(lanes.as_path()));
        let objects = parse(&std::fs::read_to_string(&lanes).unwrap()).unwrap();
        let enabled: Vec<(String, bool)> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Lane(l) => Some((l.metadata.name.clone().unwrap(), l.spec.enabled)),
                _ => None,
            })
            .collect();
        assert_eq!(
            enabled,
            [("gray".to_owned(), false), ("blue".to_owned(), true)]
        );
        assert_eq!(
            set_lane_enabled(dir.path(), "shop", "red", false).unwrap(),
            None
        );
        assert_eq!(
            set_lane_enabled(dir.path(), "other", "gray", false).unwrap(),
            None
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn parse_keeps_known_kinds_and_skips_others() {
        let objects = parse(
            r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {selector: {app: a}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: a-1, namespace: shop}
---
apiVersion: lanemesh.io/v1alpha1
kind: LaneGroup
metadata: {name: g}
spec: {apps: [a], entryApps: [a]}
"#,
        )
        .unwrap();
        let kinds: Vec<Kind> = objects.iter().map(Object::kind).collect();
        assert_eq!(kinds, [Kind::LaneGroup, Kind::Service, Kind::Pod]);
        assert_eq!(objects[1].key().namespace, "default");
        assert_eq!(objects[2].key().namespace, "shop");
    }

    #[test]
    fn gateway_routes_are_read_from_the_same_yaml() {
        let objects = parse(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {gatewayClassName: lanemesh}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec: {parentRefs: [{name: edge}], rules: [{backendRefs: [{name: a, port: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: legacy}
spec: {ingressClassName: lanemesh, defaultBackend: {service: {name: a, port: {number: 80}}}}
"#,
        )
        .unwrap();
        let kinds: Vec<Kind> = objects.iter().map(Object::kind).collect();
        assert_eq!(kinds, [Kind::HttpRoute, Kind::Gateway, Kind::Ingress]);
        let mut index = crate::index::Index::default();
        index.apply(SourceEvent::Replace(objects));
        let world = index.build();
        let names: Vec<&str> = world.gateway_routes.keys().map(String::as_str).collect();
        assert_eq!(names, ["default/HTTPRoute/web", "default/Ingress/legacy"]);
    }

    #[test]
    fn a_pod_of_the_wrong_shape_is_refused_with_its_kind() {
        let err = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: 3}\nspec: 7\n").unwrap_err();
        assert!(
            err.contains("Pod") && err.contains("does not match its schema"),
            "{err}"
        );
    }
}
