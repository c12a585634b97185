//! Sidecar injection: what a governed pod gets when it is created (DESIGN §2, §5).
//!
//! [`inject`] is pure: a [`Pod`] and an [`InjectConfig`] in, the injected pod (or the reason
//! there is nothing to do) out. [`webhook`] serves it to the API server as a mutating
//! admission webhook, answering with the JSON patch between the two.
//!
//! A pod labelled `msePilotAutoEnable: "on"` and not annotated
//! `sidecar.lanemesh.io/inject: "false"` gets:
//! - `lanemesh-init`, an init container running `lanemesh-proxy init` as root with only
//!   `NET_ADMIN` and `NET_RAW`, with the exclusions of its `traffic.lanemesh.io/*`
//!   annotations;
//! - `lanemesh-proxy`, the proxy: a native sidecar (an init container with
//!   `restartPolicy: Always` and a startup probe on 15021, so the app's containers start once
//!   it is ready) or, on API servers without native sidecars, the first container with a
//!   `postStart` hook that waits for readiness; UID/GID 1337, read-only root filesystem, every
//!   capability dropped; its identity from the downward API; a projected service-account
//!   token with audience `lanemesh` for the discovery stream and the discovery CA;
//! - the annotation `sidecar.lanemesh.io/status`, which makes injection idempotent;
//! - where the pod, its namespace or the default asks for it, OpenTelemetry's zero-code
//!   context propagation in the app's containers ([`context`]).

pub mod annotations;
pub mod context;
pub mod webhook;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, SleepAction, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lanemesh_api::labels;

pub use annotations::{AnnotationError, InboundPorts, PodOverrides};
pub use context::{ContextConfig, ContextError, Language};

/// The name of the init container that installs the capture rules.
pub const INIT_CONTAINER: &str = "lanemesh-init";
/// The name of the proxy container.
pub const PROXY_CONTAINER: &str = "lanemesh-proxy";
/// The audience of the projected token the proxy presents to the control plane.
pub const TOKEN_AUDIENCE: &str = "lanemesh";
/// The proxy's UID and GID (its own traffic is never captured).
pub const PROXY_UID: i64 = 1337;
/// Where the projected token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/lanemesh/tokens";
/// The token's file name in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "lanemesh-token";
/// The volume holding the token.
const TOKEN_VOLUME: &str = "lanemesh-token";
/// The proxy's health port (`/healthz/ready`).
pub const HEALTH_PORT: i32 = 15021;
/// The proxy's metrics port.
pub const METRICS_PORT: i32 = 15020;
/// Value of [`annotations::STATUS`] on an injected pod.
pub const STATUS_INJECTED: &str = "injected";

/// How the proxy runs beside the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes >= 1.29).
    Native,
    /// The first app container, holding the others until it is ready with a `postStart` hook.
    Classic,
}

impl SidecarMode {
    /// Native sidecars are on by default from Kubernetes 1.29 (beta; GA in 1.33).
    pub fn for_server(major: &str, minor: &str) -> Self {
        if server_minor(major, minor) >= 29 {
            Self::Native
        } else {
            Self::Classic
        }
    }
}

/// The `preStop` sleep action is on by default from Kubernetes 1.30 (beta; GA in 1.34).
pub fn sleep_action_supported(major: &str, minor: &str) -> bool {
    server_minor(major, minor) >= 30
}

/// The minor version of a 1.x API server, 0 otherwise.
fn server_minor(major: &str, minor: &str) -> u32 {
    if major.trim() != "1" {
        return 0;
    }
    // Minor versions may carry a suffix on managed clusters ("29+").
    minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

/// Everything injection needs that is not in the pod: set once from the pilot's flags (the
/// chart's values).
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// The `lanemesh-proxy` image (both containers run it).
    pub proxy_image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// Where sidecars reach the discovery server (`host:port`).
    pub discovery_addr: String,
    /// PEM of the CA that signed the discovery server's certificate; empty = plaintext
    /// discovery (local mode only).
    pub discovery_ca: String,
    pub sidecar_mode: SidecarMode,
    /// Defaults of the proxy container's resources; annotations override each.
    pub cpu: String,
    pub memory: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    /// Lifetime of the projected token (the kubelet rotates it at 80%).
    pub token_expiration_seconds: i64,
    /// Lossless offline: the app containers that have no `preStop` get a `preStop` sleep of
    /// this many seconds, so a deleted pod's app keeps serving while callers learn the
    /// endpoint is gone (the pod annotation `sidecar.lanemesh.io/appDrainSeconds` overrides
    /// it); `0` = none, as on API servers before 1.30 (no sleep action).
    pub app_drain_seconds: i64,
    /// OTLP/gRPC endpoint the sidecars export request spans to; empty = no spans.
    pub trace_endpoint: String,
    /// Share of the traces starting at a sidecar that are recorded (`--trace-sampling`).
    pub trace_sampling: f64,
    /// The context propagation injected into app containers.
    pub context: ContextConfig,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: "lanemesh/proxy:latest".to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            discovery_addr: "lanemesh-pilot.lanemesh-system.svc:15010".to_owned(),
            discovery_ca: String::new(),
            sidecar_mode: SidecarMode::Native,
            cpu: "100m".to_owned(),
            memory: "64Mi".to_owned(),
            cpu_limit: "2".to_owned(),
            memory_limit: "1Gi".to_owned(),
            token_expiration_seconds: 3600,
            app_drain_seconds: 5,
            trace_endpoint: String::new(),
            trace_sampling: 0.01,
            context: ContextConfig::default(),
        }
    }
}

/// What [`inject`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// The pod as it should be created.
    Injected(Box<Pod>),
    /// Left as it is, and why.
    Skipped(SkipReason),
}

/// Why a pod is not injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not labelled `msePilotAutoEnable: "on"`.
    NotGoverned,
    /// Annotated `sidecar.lanemesh.io/inject: "false"`.
    OptedOut,
    /// Already injected (the status annotation, or a container of ours).
    AlreadyInjected,
    /// Host network: capture would redirect the node's traffic.
    HostNetwork,
}

/// A pod the webhook refuses to create.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error("pod has no spec")]
    NoSpec,
    #[error(transparent)]
    Context(#[from] ContextError),
}

/// The pod `pod` becomes (see the module docs); `namespace` holds the annotations of its
/// Namespace when the webhook knows them.
pub fn inject(
    pod: &Pod,
    namespace: Option<&BTreeMap<String, String>>,
    config: &InjectConfig,
) -> Result<Injection, InjectError> {
    let empty = BTreeMap::new();
    let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if !labels::is_governed(pod_labels) {
        return Ok(Injection::Skipped(SkipReason::NotGoverned));
    }
    let overrides = PodOverrides::try_from(pod_annotations)?;
    if overrides.opted_out {
        return Ok(Injection::Skipped(SkipReason::OptedOut));
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let ours = |c: &Container| c.name == INIT_CONTAINER || c.name == PROXY_CONTAINER;
    if pod_annotations.contains_key(annotations::STATUS)
        || spec.containers.iter().any(ours)
        || spec.init_containers.iter().flatten().any(ours)
    {
        return Ok(Injection::Skipped(SkipReason::AlreadyInjected));
    }
    if spec.host_network == Some(true) {
        return Ok(Injection::Skipped(SkipReason::HostNetwork));
    }
    let language = context::choose(overrides.context, namespace, config.context.default)?;

    let mut out = pod.clone();
    let first_app_container = spec.containers.first().map(|c| c.name.clone());
    let metadata_annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    metadata_annotations.insert(annotations::STATUS.to_owned(), STATUS_INJECTED.to_owned());
    if let Some(name) = first_app_container {
        metadata_annotations
            .entry("kubectl.kubernetes.io/default-container".to_owned())
            .or_insert(name);
    }
    for (key, value) in [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_owned()),
    ] {
        metadata_annotations.entry(key.to_owned()).or_insert(value);
    }

    let Some(spec) = out.spec.as_mut() else {
        return Err(InjectError::NoSpec);
    };
    let drain = overrides
        .app_drain_seconds
        .unwrap_or(config.app_drain_seconds);
    if drain > 0 {
        for app in &mut spec.containers {
            let lifecycle = app.lifecycle.get_or_insert_with(Lifecycle::default);
            if lifecycle.pre_stop.is_none() {
                lifecycle.pre_stop = Some(LifecycleHandler {
                    sleep: Some(SleepAction { seconds: drain }),
                    ..Default::default()
                });
            }
        }
        // The sleep counts against the grace period: leave the app its own time after it.
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        if grace < drain + 10 {
            spec.termination_grace_period_seconds = Some(drain + 10);
        }
    }
    let app = labels::app_name(pod_labels);
    context::inject(spec, language, config, app)?;
    let init = init_container(config, &overrides);
    let proxy = proxy_container(config, &overrides, app);
    let init_containers = spec.init_containers.get_or_insert_with(Vec::new);
    match config.sidecar_mode {
        SidecarMode::Native => {
            // Capture first, then the proxy, then the app's own init containers: they find
            // their traffic captured and a ready proxy to carry it.
            init_containers.splice(0..0, [init, native(proxy)]);
        }
        SidecarMode::Classic => {
            init_containers.insert(0, init);
            spec.containers.insert(0, classic(proxy));
        }
    }
    // The token projection needs a service account. The ServiceAccount admission plugin sets
    // `default` before webhooks run; where it is off, set what it would have.
    if spec
        .service_account_name
        .as_deref()
        .is_none_or(str::is_empty)
    {
        spec.service_account_name = Some("default".to_owned());
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_owned()),
                    expiration_seconds: Some(config.token_expiration_seconds),
                    path: TOKEN_FILE.to_owned(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    Ok(Injection::Injected(Box::new(out)))
}

/// Not privileged, no privilege escalation, read-only root, no capabilities: what the proxy
/// and the context copy run with (the user is each one's own choice).
fn locked_down() -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(dropped_capabilities(&[])),
        ..Default::default()
    }
}

fn dropped_capabilities(add: &[&str]) -> Capabilities {
    Capabilities {
        add: (!add.is_empty()).then(|| add.iter().map(|c| (*c).to_owned()).collect()),
        drop: Some(vec!["ALL".to_owned()]),
    }
}

fn init_container(config: &InjectConfig, o: &PodOverrides) -> Container {
    let mut args = vec!["init".to_owned()];
    let list = |values: &[u16]| {
        values
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !o.exclude_inbound_ports.is_empty() {
        args.push(format!(
            "--inbound-exclude-ports={}",
            list(&o.exclude_inbound_ports)
        ));
    }
    if let InboundPorts::Only(ports) = &o.include_inbound_ports {
        args.push(format!("--inbound-include-ports={}", list(ports)));
    }
    if !o.exclude_outbound_ports.is_empty() {
        args.push(format!(
            "--outbound-exclude-ports={}",
            list(&o.exclude_outbound_ports)
        ));
    }
    if !o.exclude_outbound_cidrs.is_empty() {
        args.push(format!(
            "--outbound-exclude-cidrs={}",
            o.exclude_outbound_cidrs.join(",")
        ));
    }
    Container {
        name: INIT_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(args),
        security_context: Some(SecurityContext {
            // iptables needs root and these two capabilities, nothing else.
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(dropped_capabilities(&["NET_ADMIN", "NET_RAW"])),
            ..Default::default()
        }),
        resources: Some(resources(
            [("cpu", "10m"), ("memory", "16Mi")],
            [("cpu", "100m"), ("memory", "64Mi")],
        )),
        ..Default::default()
    }
}

fn resources<const N: usize>(
    requests: [(&str, &str); N],
    limits: [(&str, &str); N],
) -> ResourceRequirements {
    let map = |pairs: [(&str, &str); N]| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(map(requests)),
        limits: Some(map(limits)),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

fn ready_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".to_owned()),
            port: IntOrString::Int(HEALTH_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn proxy_container(config: &InjectConfig, o: &PodOverrides, app: Option<&str>) -> Container {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        value_env("LANEMESH_DISCOVERY_ADDR", &config.discovery_addr),
        value_env("LANEMESH_TOKEN_FILE", &format!("{TOKEN_DIR}/{TOKEN_FILE}")),
    ];
    // No app or lane env: the pilot tells the sidecar both from the pod's labels (a Workload
    // resource), so a relabelled pod changes lane without a restart; downward-API env vars
    // would be frozen at container start.
    if !config.discovery_ca.is_empty() {
        env.push(value_env("LANEMESH_DISCOVERY_CA", &config.discovery_ca));
    }
    if !config.trace_endpoint.is_empty() {
        env.push(value_env("LANEMESH_TRACE_ENDPOINT", &config.trace_endpoint));
        env.push(value_env(
            "LANEMESH_TRACE_SAMPLING",
            &config.trace_sampling.to_string(),
        ));
        // The spans' service.name: the app as the pod was created (a trace backend groups by
        // it); the lane and the live app still come from the pilot.
        if let Some(app) = app {
            env.push(value_env("LANEMESH_TRACE_SERVICE_NAME", app));
        }
    }
    let pick = |annotation: &Option<annotations::Quantity>, default: &str| {
        annotation
            .as_ref()
            .map_or_else(|| default.to_owned(), |q| q.0.clone())
    };
    let (cpu, memory) = (pick(&o.cpu, &config.cpu), pick(&o.memory, &config.memory));
    let (cpu_limit, memory_limit) = (
        pick(&o.cpu_limit, &config.cpu_limit),
        pick(&o.memory_limit, &config.memory_limit),
    );
    Container {
        name: PROXY_CONTAINER.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(vec!["run".to_owned()]),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("lanemesh-prom".to_owned()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("lanemesh-health".to_owned()),
                container_port: HEALTH_PORT,
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(ready_probe(5, 3)),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            ..locked_down()
        }),
        resources: Some(resources(
            [("cpu", cpu.as_str()), ("memory", memory.as_str())],
            [
                ("cpu", cpu_limit.as_str()),
                ("memory", memory_limit.as_str()),
            ],
        )),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The proxy as a native sidecar: the kubelet starts the next container once the startup
/// probe passes, and stops the proxy after the app.
fn native(mut proxy: Container) -> Container {
    proxy.restart_policy = Some("Always".to_owned());
    // Up to 2 minutes for the first snapshot, checked every second.
    proxy.startup_probe = Some(ready_probe(1, 120));
    proxy
}

/// The proxy as the first app container: the kubelet starts containers in order and waits for
/// each `postStart` hook, so the app starts once `lanemesh-proxy wait` returns.
fn classic(mut proxy: Container) -> Container {
    proxy.lifecycle = Some(Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "lanemesh-proxy".to_owned(),
                    "wait".to_owned(),
                    "--timeout=120s".to_owned(),
                ]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    proxy
}

#[cfg(test)]
mod tests;
