//! The demo's pods and what the pilot's directory holds: the Services and Pods Kubernetes would
//! report (written here, as there is no Kubernetes), and the examples' lanes, rate limit and
//! gateway routes, applied step by step.

use std::path::Path;

use anyhow::{Context, Result};

/// The examples' namespace.
pub const NS: &str = "canary-demo";

/// One app instance of the seed.
#[derive(Debug, Clone, Copy)]
pub struct App {
    /// Pod (and network namespace) name.
    pub pod: &'static str,
    /// What the app calls itself in answers (`--name`).
    pub name: &'static str,
    /// The Service (and governed app) it belongs to.
    pub service: &'static str,
    /// Lane tag; empty = base.
    pub tag: &'static str,
    /// Last octet of its address.
    pub host: u8,
    /// The port it serves (the Service's port and target port).
    pub port: u16,
    /// The Service it calls.
    pub next: Option<&'static str>,
}

const fn app(
    pod: &'static str,
    name: &'static str,
    service: &'static str,
    tag: &'static str,
    host: u8,
    port: u16,
    next: Option<&'static str>,
) -> App {
    App {
        pod,
        name,
        service,
        tag,
        host,
        port,
        next,
    }
}

/// The seed's apps (examples/canary/apps.yaml): A -> B -> C, gray A and gray C.
pub const APPS: [App; 5] = [
    app(
        "spring-cloud-a-0",
        "A",
        "spring-cloud-a",
        "",
        11,
        20001,
        Some("spring-cloud-b"),
    ),
    app(
        "spring-cloud-a-gray-0",
        "Agray",
        "spring-cloud-a",
        "gray",
        12,
        20001,
        Some("spring-cloud-b"),
    ),
    app(
        "spring-cloud-b-0",
        "B",
        "spring-cloud-b",
        "",
        13,
        20002,
        Some("spring-cloud-c"),
    ),
    app(
        "spring-cloud-c-0",
        "C",
        "spring-cloud-c",
        "",
        14,
        20003,
        None,
    ),
    app(
        "spring-cloud-c-gray-0",
        "Cgray",
        "spring-cloud-c",
        "gray",
        15,
        20003,
        None,
    ),
];

/// The gateway's pod.
pub const GATEWAY: App = app("lanemesh-gateway-0", "gateway", "", "", 10, 8080, None);

/// The cluster IP of `app`'s Service (`10.96.78.N`, N by Service).
pub fn cluster_ip(app: &App) -> String {
    let n = match app.service {
        "spring-cloud-a" => 1,
        "spring-cloud-b" => 2,
        _ => 3,
    };
    format!("10.96.78.{n}")
}

/// How the demo's Lane gray is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneMode {
    /// `examples/canary/lanes.yaml` as it is: header `canary: gray`.
    Content,
    /// The group in Percentage mode, the lane taking this share.
    Percentage(u32),
    /// The example's lane with `enabled: false`.
    Disabled,
}

/// The examples the demo applies.
#[derive(Debug, Clone)]
pub struct Topology {
    lanes: String,
    rate_limit: String,
    gateway: String,
    resilience: String,
}

impl Topology {
    /// Reads the examples under `examples`.
    pub fn new(examples: &Path) -> Result<Self> {
        let read = |rel: &str| {
            let path = examples.join(rel);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self {
            lanes: read("canary/lanes.yaml")?,
            rate_limit: read("rate-limit.yaml")?,
            gateway: read("gateway/httproute.yaml")?,
            resilience: read("resilience.yaml")?,
        })
    }

    /// The first state: every pod, the lane group without lanes, the rate limit, the routes.
    pub fn write_initial(&self, dir: &Path) -> Result<()> {
        self.write_pods(dir, &[])?;
        let group = self
            .lanes
            .split("\n---\n")
            .find(|doc| doc.contains("kind: LaneGroup"))
            .context("examples/canary/lanes.yaml has no LaneGroup")?;
        write(dir, "lanes.yaml", group)?;
        write(dir, "rate-limit.yaml", &self.rate_limit)?;
        write(dir, "gateway.yaml", &self.gateway)
    }

    /// The Services and the ready Pods, without the pods named in `gone` (scaled to 0).
    pub fn write_pods(&self, dir: &Path, gone: &[&str]) -> Result<()> {
        let mut yaml = String::new();
        for (service, port) in [
            ("spring-cloud-a", 20001),
            ("spring-cloud-b", 20002),
            ("spring-cloud-c", 20003),
        ] {
            let ip = APPS
                .iter()
                .find(|a| a.service == service)
                .map(cluster_ip)
                .unwrap_or_default();
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {NS}}}\n\
                 spec: {{clusterIP: {ip}, selector: {{app: {service}}}, ports: [{{name: http, port: {port}, targetPort: {port}}}]}}\n"
            ));
        }
        for app in APPS.iter().filter(|a| !gone.contains(&a.pod)) {
            let tag = if app.tag.is_empty() {
                String::new()
            } else {
                format!(", alicloud.service.tag: {}", app.tag)
            };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {NS}\n  \
                 labels: {{app: {}, msePilotAutoEnable: \"on\", msePilotCreateAppName: {}{tag}}}\n\
                 status: {{podIP: {}.{}, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
                app.pod,
                app.service,
                app.service,
                super::net::SUBNET,
                app.host,
            ));
        }
        write(dir, "topology.yaml", &yaml)
    }

    /// `examples/resilience.yaml`: timeout, retries and breaker for callers of B.
    pub fn write_resilience(&self, dir: &Path) -> Result<()> {
        write(dir, "resilience.yaml", &self.resilience)
    }

    /// Lane gray as `mode` says.
    pub fn write_lane(&self, dir: &Path, mode: LaneMode) -> Result<()> {
        let yaml = match mode {
            LaneMode::Content => self.lanes.clone(),
            LaneMode::Disabled => self.lanes.replace("enabled: true", "enabled: false"),
            LaneMode::Percentage(weight) => {
                let group = self
                    .lanes
                    .split("\n---\n")
                    .find(|doc| doc.contains("kind: LaneGroup"))
                    .context("examples/canary/lanes.yaml has no LaneGroup")?
                    .replace("routingMode: Content", "routingMode: Percentage");
                format!(
                    "{group}\n---\napiVersion: lanemesh.io/v1alpha1\nkind: Lane\n\
                     metadata: {{name: gray, namespace: {NS}}}\n\
                     spec: {{group: order-flow, tag: gray, enabled: true, weight: {weight}}}\n"
                )
            }
        };
        write(dir, "lanes.yaml", &yaml)
    }
}

/// Replaces `dir/name` at once (write, then rename), so the pilot never reads half a file.
fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("replacing {name}"))
}
