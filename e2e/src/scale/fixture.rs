//! A large local-source directory: what `lanemesh-pilot --source local --dir`
//! reads, shaped like a busy cluster.
//!
//! `namespaces` namespaces each hold `apps_per_namespace` apps; every app has
//! a Service, `pods_per_app` governed Pods (`msePilotAutoEnable: "on"`, every
//! `gray_every`-th one tagged `alicloud.service.tag: gray`) and the
//! EndpointSlices the endpoint controller would publish (at most 100
//! endpoints each, as Kubernetes does). Each namespace has one LaneGroup with
//! all its apps and a `gray` Lane; every app has a RateLimitPolicy and a
//! CircuitBreakerPolicy.
//!
//! The Lanes live alone in `lanes.yaml`, and their match value is a marker
//! the benchmark rewrites: one file write changes the LaneGroup of every
//! namespace, so every sidecar must receive it.

use std::fmt::Write as _;
use std::path::Path;

/// File holding every LaneGroup and Lane.
pub const LANES_FILE: &str = "lanes.yaml";
/// The header the gray lanes match on; its value is the marker.
pub const MARKER_HEADER: &str = "x-scale-marker";
/// Kubernetes' default (and maximum) endpoints per EndpointSlice.
const ENDPOINTS_PER_SLICE: usize = 100;

/// The shape of the generated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixture {
    pub namespaces: usize,
    pub apps_per_namespace: usize,
    pub pods_per_app: usize,
    /// Every n-th pod of an app is gray (0 = none).
    pub gray_every: usize,
}

/// One generated pod, as a simulated sidecar presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub app: String,
    pub lane_tag: String,
    pub ip: String,
}

impl Fixture {
    pub fn pods(&self) -> usize {
        self.namespaces * self.apps_per_namespace * self.pods_per_app
    }

    pub fn apps(&self) -> usize {
        self.namespaces * self.apps_per_namespace
    }

    pub fn namespace(ns: usize) -> String {
        format!("scale-{ns:03}")
    }

    /// App names are unique across namespaces, so a report line names one.
    fn app(&self, ns: usize, app: usize) -> String {
        format!("app-{:04}", ns * self.apps_per_namespace + app)
    }

    /// The `index`-th pod, counting namespace by namespace, app by app.
    /// `None` past the last pod.
    pub fn pod(&self, index: usize) -> Option<PodRef> {
        if index >= self.pods() || self.pods_per_app == 0 || self.apps_per_namespace == 0 {
            return None;
        }
        let pod = index % self.pods_per_app;
        let app_global = index / self.pods_per_app;
        let (ns, app) = (
            app_global / self.apps_per_namespace,
            app_global % self.apps_per_namespace,
        );
        let app_name = self.app(ns, app);
        let gray = self.gray_every > 0 && pod % self.gray_every == self.gray_every - 1;
        Some(PodRef {
            namespace: Self::namespace(ns),
            name: format!("{app_name}-{pod:05}"),
            app: app_name,
            lane_tag: if gray { "gray".into() } else { String::new() },
            ip: numbered_ip([10, 0, 0, 0], index + 1),
        })
    }

    /// `count` pods spread evenly over all of them (each app gets its share).
    pub fn spread(&self, count: usize) -> Vec<PodRef> {
        let total = self.pods();
        (0..count.min(total))
            .filter_map(|i| self.pod(i * total / count.max(1)))
            .collect()
    }

    /// Writes every file into `dir` (which should be empty), the Lanes with
    /// `marker`.
    pub fn write(&self, dir: &Path, marker: &str) -> std::io::Result<()> {
        for ns in 0..self.namespaces {
            write_atomically(dir, &format!("apps-{ns:03}.yaml"), &self.apps_yaml(ns))?;
        }
        write_atomically(dir, "policies.yaml", &self.policies_yaml())?;
        self.write_lanes(dir, marker)
    }

    /// Rewrites `lanes.yaml` with `marker`: the one change the benchmark makes.
    pub fn write_lanes(&self, dir: &Path, marker: &str) -> std::io::Result<()> {
        write_atomically(dir, LANES_FILE, &self.lanes_yaml(marker))
    }

    fn apps_yaml(&self, ns: usize) -> String {
        let namespace = Self::namespace(ns);
        let mut out = String::with_capacity(self.apps_per_namespace * self.pods_per_app * 700);
        for app in 0..self.apps_per_namespace {
            let name = self.app(ns, app);
            let cluster_ip = numbered_ip([172, 16, 0, 0], ns * self.apps_per_namespace + app + 1);
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
                 spec: {{clusterIP: {cluster_ip}, selector: {{app: {name}}}, \
                 ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n"
            );
            let first = (ns * self.apps_per_namespace + app) * self.pods_per_app;
            let pods: Vec<PodRef> = (first..first + self.pods_per_app)
                .filter_map(|i| self.pod(i))
                .collect();
            for p in &pods {
                let tag = if p.lane_tag.is_empty() {
                    String::new()
                } else {
                    format!(", alicloud.service.tag: {}", p.lane_tag)
                };
                let _ = write!(
                    out,
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {namespace}, \
                     labels: {{app: {name}, msePilotAutoEnable: \"on\"{tag}}}}}\n\
                     spec: {{containers: [{{name: app, image: demo, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
                     status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
                    pod = p.name,
                    ip = p.ip,
                );
            }
            for (slice, chunk) in pods.chunks(ENDPOINTS_PER_SLICE).enumerate() {
                let _ = write!(
                    out,
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {{name: {name}-{slice:03}, namespace: {namespace}, \
                     labels: {{kubernetes.io/service-name: {name}}}}}\n\
                     addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
                );
                for p in chunk {
                    let _ = writeln!(
                        out,
                        "- {{addresses: [{ip}], conditions: {{ready: true}}, \
                         targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}}}",
                        ip = p.ip,
                        pod = p.name,
                    );
                }
                out.push_str("---\n");
            }
        }
        out
    }

    fn policies_yaml(&self) -> String {
        let mut out = String::new();
        for ns in 0..self.namespaces {
            let namespace = Self::namespace(ns);
            for app in 0..self.apps_per_namespace {
                let name = self.app(ns, app);
                let _ = write!(
                    out,
                    "apiVersion: lanemesh.io/v1alpha1\nkind: RateLimitPolicy\n\
                     metadata: {{name: {name}-limits, namespace: {namespace}}}\n\
                     spec:\n  app: {name}\n  rules:\n  - name: all\n    qps: {{threshold: 100}}\n\
                     ---\n\
                     apiVersion: lanemesh.io/v1alpha1\nkind: CircuitBreakerPolicy\n\
                     metadata: {{name: {name}-breakers, namespace: {namespace}}}\n\
                     spec:\n  app: {name}\n  rules:\n  - {{name: errors, strategy: ErrorRatio, threshold: 0.5}}\n\
                     ---\n"
                );
            }
        }
        out
    }

    /// Every LaneGroup and Lane; the gray Lanes match `MARKER_HEADER: marker`.
    pub fn lanes_yaml(&self, marker: &str) -> String {
        let mut out = String::new();
        for ns in 0..self.namespaces {
            let namespace = Self::namespace(ns);
            let apps: Vec<String> = (0..self.apps_per_namespace)
                .map(|a| self.app(ns, a))
                .collect();
            let entry = apps.first().cloned().unwrap_or_default();
            let _ = write!(
                out,
                "apiVersion: lanemesh.io/v1alpha1\nkind: LaneGroup\n\
                 metadata: {{name: flow, namespace: {namespace}}}\n\
                 spec: {{apps: [{apps}], entryApps: [{entry}]}}\n---\n\
                 apiVersion: lanemesh.io/v1alpha1\nkind: Lane\n\
                 metadata: {{name: gray, namespace: {namespace}}}\n\
                 spec:\n  group: flow\n  tag: gray\n  match:\n    conditions:\n\
                 \x20   - {{source: Header, name: {MARKER_HEADER}, operator: Equal, value: \"{marker}\"}}\n---\n",
                apps = apps.join(", "),
            );
        }
        out
    }
}

/// `base` plus `n`, as an IPv4 address (n < 2^24 for a /8 base).
fn numbered_ip(base: [u8; 4], n: usize) -> String {
    let [a, b, c, d] = base;
    let value = u32::from_be_bytes([a, b, c, d]).wrapping_add(u32::try_from(n).unwrap_or(0));
    std::net::Ipv4Addr::from(value).to_string()
}

/// Write-then-rename, as editors and ConfigMap updates do: the poller never
/// reads half a file. The temporary name is hidden, which the source skips.
pub fn write_atomically(dir: &Path, file: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(file))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lanemesh_api::manifest::Manifest;
    use std::collections::BTreeSet;

    const SMALL: Fixture = Fixture {
        namespaces: 2,
        apps_per_namespace: 3,
        pods_per_app: 150,
        gray_every: 10,
    };

    #[test]
    fn the_directory_parses_with_every_object_counted() {
        let dir = tempfile::tempdir().unwrap();
        SMALL.write(dir.path(), "m0").unwrap();
        let mut manifest = Manifest::default();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            assert!(
                !path.file_name().unwrap().to_string_lossy().starts_with('.'),
                "no temporary file is left behind: {}",
                path.display()
            );
            manifest
                .add_yaml(&std::fs::read_to_string(&path).unwrap())
                .unwrap();
        }
        assert_eq!(manifest.pods.len(), 2 * 3 * 150);
        assert_eq!(manifest.services.len(), 6);
        // 150 endpoints need two slices of at most 100.
        assert_eq!(manifest.endpoint_slices.len(), 12);
        assert!(
            manifest
                .endpoint_slices
                .iter()
                .all(|s| s.endpoints.len() <= 100)
        );
        assert_eq!(manifest.lane_groups.len(), 2);
        assert_eq!(manifest.lanes.len(), 2);
        assert_eq!(manifest.rate_limits.len(), 6);
        assert_eq!(manifest.circuit_breakers.len(), 6);

        let labels = |p: &k8s_openapi::api::core::v1::Pod| p.metadata.labels.clone().unwrap();
        assert!(
            manifest
                .pods
                .iter()
                .all(|p| lanemesh_api::labels::is_governed(&labels(p)))
        );
        let gray = manifest
            .pods
            .iter()
            .filter(|p| lanemesh_api::labels::lane_tag(&labels(p)) == Some("gray"))
            .count();
        assert_eq!(gray, 2 * 3 * 15, "every tenth pod is gray");
        let ips: BTreeSet<String> = manifest
            .pods
            .iter()
            .map(|p| p.status.clone().unwrap().pod_ip.unwrap())
            .collect();
        assert_eq!(ips.len(), manifest.pods.len(), "pod IPs are unique");
    }

    #[test]
    fn rewriting_the_lanes_changes_only_the_marker() {
        let (a, b) = (SMALL.lanes_yaml("round-1"), SMALL.lanes_yaml("round-2"));
        assert_ne!(a, b);
        assert_eq!(a.replace("round-1", "round-2"), b);
        let lanes = Manifest::from_yaml(&b).unwrap().lanes;
        assert_eq!(lanes.len(), 2);
    }

    #[test]
    fn pods_are_numbered_and_spread_over_every_app() {
        let first = SMALL.pod(0).unwrap();
        assert_eq!(
            (
                first.namespace.as_str(),
                first.name.as_str(),
                first.app.as_str()
            ),
            ("scale-000", "app-0000-00000", "app-0000")
        );
        assert_eq!(first.ip, "10.0.0.1");
        let last = SMALL.pod(SMALL.pods() - 1).unwrap();
        assert_eq!(last.namespace, "scale-001");
        assert_eq!(last.app, "app-0005");
        assert!(SMALL.pod(SMALL.pods()).is_none());
        assert_eq!(SMALL.pod(9).unwrap().lane_tag, "gray");
        assert_eq!(SMALL.pod(10).unwrap().lane_tag, "");

        let picked = SMALL.spread(60);
        assert_eq!(picked.len(), 60);
        let names: BTreeSet<&str> = picked.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 60, "distinct pods");
        let apps: BTreeSet<&str> = picked.iter().map(|p| p.app.as_str()).collect();
        assert_eq!(apps.len(), 6, "every app is represented");
    }
}
