//! Context propagation injected into the app (DESIGN §4 "Carrying the lane"): OpenTelemetry's
//! zero-code instrumentation, so an app forwards W3C `traceparent` and `baggage` on every call
//! it makes while serving a request, and its sidecar links each outbound call to its lane
//! exactly, however many lanes the pod serves at once.
//!
//! Opt-in, per pod (`lanemesh.io/inject-context` on the pod), per namespace (the same
//! annotation on the Namespace) or for every governed pod (`--inject-context`, the chart's
//! `context.default`); the pod's annotation wins over the namespace's, which wins over the
//! default, and `none` turns it off at any level.
//!
//! What a pod gets, as the OpenTelemetry Operator does it:
//! - a `lanemesh-context` emptyDir and an init container of that name running the language's
//!   context image with one argument, the directory to fill: the image copies its payload there
//!   (Java: `opentelemetry-javaagent.jar`; Python: `boot/sitecustomize.py` and, in `lib/`,
//!   `opentelemetry-distro` and its instrumentations installed with `pip install --target`).
//!   The init container runs as the pod's user, so the files belong to the app's user;
//! - in every app container, that directory read-only at [`CONTEXT_DIR`] and the interpreter's
//!   start-up hook: `JAVA_TOOL_OPTIONS=-javaagent:…` (appended to the container's own) or
//!   `PYTHONPATH=…/boot` (prepended; its `sitecustomize` puts `lib/` at the end of `sys.path`,
//!   so the app's own packages win, and starts the instrumentation);
//! - the OpenTelemetry settings, each only where the container does not set it itself:
//!   propagators `tracecontext,baggage`; no exporter (`none`) unless `--inject-context-trace-endpoint`
//!   names an OTLP/HTTP collector; sampler `parentbased_traceidratio` at the sidecars' ratio
//!   (`--inject-trace-sampling`), so an app follows the decision in the `traceparent` its sidecar
//!   hands it and starts its own traces (calls outside any request) as often as a sidecar
//!   would; `service.name` = the pod's app.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

pub use super::annotations::Language;
use super::annotations::{AnnotationError, INJECT_CONTEXT};
use super::{InjectConfig, locked_down, resources, value_env};

/// The name of the init container and of the volume it fills.
pub const CONTAINER: &str = "lanemesh-context";
/// Where app containers see the payload.
pub const CONTEXT_DIR: &str = "/lanemesh-context";
/// The Java agent's file in [`CONTEXT_DIR`].
pub const JAVA_AGENT: &str = "opentelemetry-javaagent.jar";
/// The payload is tens of MiB; more is a broken image.
const VOLUME_LIMIT: &str = "256Mi";

/// The webhook's context settings (the chart's `context.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextConfig {
    /// For pods and namespaces that do not choose.
    pub default: Language,
    /// The image whose entrypoint copies the Java agent into the directory it is given.
    pub java_image: String,
    /// The same for the Python auto-instrumentation.
    pub python_image: String,
    /// OTLP/HTTP endpoint the apps export their spans to; empty = no export.
    pub trace_endpoint: String,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            default: Language::None,
            java_image: "lanemesh/context-java:latest".to_owned(),
            python_image: "lanemesh/context-python:latest".to_owned(),
            trace_endpoint: String::new(),
        }
    }
}

/// A container whose settings leave no place for the start-up hook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "container {container:?}: {variable} comes from valueFrom, so {annotation}: {language} cannot extend it; set it as a plain value or choose \"none\"",
    annotation = INJECT_CONTEXT,
)]
pub struct ContextError {
    pub container: String,
    pub variable: &'static str,
    pub language: &'static str,
}

/// The language a pod gets: its own annotation, else its namespace's, else the default.
pub fn choose(
    pod: Option<Language>,
    namespace: Option<&BTreeMap<String, String>>,
    default: Language,
) -> Result<Language, AnnotationError> {
    if let Some(language) = pod {
        return Ok(language);
    }
    match namespace.and_then(|a| a.get(INJECT_CONTEXT)) {
        Some(value) => Language::parse(INJECT_CONTEXT, value),
        None => Ok(default),
    }
}

/// Adds `language`'s context to `spec` (see the module docs); `app` names the service.
pub fn inject(
    spec: &mut PodSpec,
    language: Language,
    config: &InjectConfig,
    app: Option<&str>,
) -> Result<(), ContextError> {
    let (image, hook) = match language {
        Language::None => return Ok(()),
        Language::Java => (&config.context.java_image, java_hook as Hook),
        Language::Python => (&config.context.python_image, python_hook as Hook),
    };
    for container in &mut spec.containers {
        if container.name == super::PROXY_CONTAINER {
            continue;
        }
        let env = container.env.get_or_insert_with(Vec::new);
        hook(env).map_err(|variable| ContextError {
            container: container.name.clone(),
            variable,
            language: language.as_str(),
        })?;
        for (name, value) in otel_env(config, app) {
            if !env.iter().any(|e| e.name == name) {
                env.push(value_env(name, &value));
            }
        }
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: CONTAINER.to_owned(),
                mount_path: CONTEXT_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            });
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .push(Container {
            name: CONTAINER.to_owned(),
            image: Some(image.clone()),
            image_pull_policy: Some(config.image_pull_policy.clone()),
            args: Some(vec![CONTEXT_DIR.to_owned()]),
            // The pod's own user (no runAsUser here): the copied files then belong to it.
            security_context: Some(locked_down()),
            resources: Some(resources(
                [("cpu", "10m"), ("memory", "32Mi")],
                [("cpu", "500m"), ("memory", "128Mi")],
            )),
            volume_mounts: Some(vec![VolumeMount {
                name: CONTAINER.to_owned(),
                mount_path: CONTEXT_DIR.to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        });
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: CONTAINER.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(VOLUME_LIMIT.to_owned())),
            ..Default::default()
        }),
        ..Default::default()
    });
    Ok(())
}

/// Installs the interpreter's start-up hook in a container's env; `Err` names the variable
/// that cannot be extended.
type Hook = fn(&mut Vec<EnvVar>) -> Result<(), &'static str>;

fn java_hook(env: &mut Vec<EnvVar>) -> Result<(), &'static str> {
    extend(
        env,
        "JAVA_TOOL_OPTIONS",
        &format!("-javaagent:{CONTEXT_DIR}/{JAVA_AGENT}"),
        |own, ours| format!("{own} {ours}"),
    )
}

fn python_hook(env: &mut Vec<EnvVar>) -> Result<(), &'static str> {
    // Only the payload's `sitecustomize` goes first: it appends the payload's packages to the
    // end of `sys.path` (the app's own versions win) and starts the auto-instrumentation.
    extend(
        env,
        "PYTHONPATH",
        &format!("{CONTEXT_DIR}/boot"),
        |own, ours| format!("{ours}:{own}"),
    )
}

/// Sets `name` to `ours`, or to `join(own, ours)` when the container sets it to `own`.
fn extend(
    env: &mut Vec<EnvVar>,
    name: &'static str,
    ours: &str,
    join: impl Fn(&str, &str) -> String,
) -> Result<(), &'static str> {
    match env.iter_mut().find(|e| e.name == name) {
        Some(var) if var.value_from.is_some() => Err(name),
        Some(var) => {
            let own = var.value.as_deref().unwrap_or("").trim();
            var.value = Some(if own.is_empty() {
                ours.to_owned()
            } else {
                join(own, ours)
            });
            Ok(())
        }
        None => {
            env.push(value_env(name, ours));
            Ok(())
        }
    }
}

/// The OpenTelemetry SDK settings (environment variables both SDKs read).
fn otel_env(config: &InjectConfig, app: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OTEL_PROPAGATORS", "tracecontext,baggage".to_owned()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", config.trace_sampling.to_string()),
        ("OTEL_METRICS_EXPORTER", "none".to_owned()),
        ("OTEL_LOGS_EXPORTER", "none".to_owned()),
    ];
    if config.context.trace_endpoint.is_empty() {
        env.push(("OTEL_TRACES_EXPORTER", "none".to_owned()));
    } else {
        env.push(("OTEL_TRACES_EXPORTER", "otlp".to_owned()));
        env.push((
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "http/protobuf".to_owned(),
        ));
        env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            config.context.trace_endpoint.clone(),
        ));
    }
    if let Some(app) = app {
        env.push(("OTEL_SERVICE_NAME", app.to_owned()));
    }
    env
}
