#![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]
use super::*;
use serde_json::json;

fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a-1", "namespace": "demo", "labels": labels, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "app:1"}],
        }
    }))
    .unwrap()
}

fn governed() -> serde_json::Value {
    json!({"msePilotAutoEnable": "on", "msePilotCreateAppName": "a", "alicloud.service.tag": "gray"})
}

fn injected(pod: &Pod, config: &InjectConfig) -> Pod {
    match inject(pod, None, config).unwrap() {
        Injection::Injected(pod) => *pod,
        Injection::Skipped(reason) => panic!("skipped: {reason:?}"),
    }
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

fn field_path(e: &EnvVar) -> &str {
    &e.value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap()
        .field_path
}

#[test]
fn a_governed_pod_gets_init_native_sidecar_token_and_status() {
    let out = injected(&pod(governed(), json!({})), &InjectConfig::default());
    let spec = out.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().unwrap();
    let names: Vec<_> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
    assert_eq!(
        spec.containers.len(),
        1,
        "the app's containers are untouched"
    );

    let init = &inits[0];
    assert_eq!(init.args.as_deref().unwrap(), ["init"]);
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);

    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.port, IntOrString::Int(15021));
    assert_eq!(startup.path.as_deref(), Some("/healthz/ready"));
    assert!(proxy.lifecycle.is_none());
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1337), Some(1337)));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert!(caps.add.is_none());
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);

    assert_eq!(field_path(env(proxy, "POD_NAME").unwrap()), "metadata.name");
    assert_eq!(
        field_path(env(proxy, "POD_NAMESPACE").unwrap()),
        "metadata.namespace"
    );
    assert_eq!(field_path(env(proxy, "POD_IP").unwrap()), "status.podIP");
    // App and lane come from the pilot (a Workload), so a relabelled pod follows without a
    // restart: no env var would.
    assert!(env(proxy, "LANEMESH_APP").is_none());
    assert!(env(proxy, "LANEMESH_LANE_TAG").is_none());
    assert_eq!(
        env(proxy, "LANEMESH_TOKEN_FILE").unwrap().value.as_deref(),
        Some("/var/run/secrets/lanemesh/tokens/lanemesh-token")
    );
    assert!(env(proxy, "LANEMESH_DISCOVERY_CA").is_none());
    let mount = &proxy.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, TOKEN_DIR);
    assert_eq!(mount.read_only, Some(true));

    let volume = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.name, mount.name);
    let token = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("lanemesh"));
    assert_eq!(token.path, TOKEN_FILE);

    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    for c in inits {
        for port in c.ports.iter().flatten() {
            // The API server's limit for a port name (an IANA service name).
            assert!(port.name.as_ref().unwrap().len() <= 15, "{port:?}");
        }
    }

    let annotations = out.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[annotations::STATUS], "injected");
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "app"
    );
}

#[test]
fn classic_mode_puts_the_proxy_first_with_a_post_start_wait() {
    let config = InjectConfig {
        sidecar_mode: SidecarMode::Classic,
        ..InjectConfig::default()
    };
    let out = injected(&pod(governed(), json!({})), &config);
    let spec = out.spec.unwrap();
    let inits: Vec<_> = spec
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(inits, [INIT_CONTAINER, "migrate"]);
    let proxy = &spec.containers[0];
    assert_eq!(proxy.name, PROXY_CONTAINER);
    assert_eq!(spec.containers[1].name, "app");
    assert!(proxy.restart_policy.is_none());
    let command = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command
        .clone()
        .unwrap();
    assert_eq!(command[..2], ["lanemesh-proxy", "wait"]);
}

#[test]
fn annotations_become_init_flags_and_proxy_resources() {
    let out = injected(
        &pod(
            governed(),
            json!({
                "traffic.lanemesh.io/exclude-inbound-ports": "8081",
                "traffic.lanemesh.io/include-inbound-ports": "8080,8081",
                "traffic.lanemesh.io/exclude-outbound-ports": "3306,6379",
                "traffic.lanemesh.io/exclude-outbound-cidrs": "169.254.169.254/32",
                "sidecar.lanemesh.io/proxyCPU": "250m",
                "sidecar.lanemesh.io/proxyMemoryLimit": "256Mi",
            }),
        ),
        &InjectConfig::default(),
    );
    let inits = out.spec.unwrap().init_containers.unwrap();
    assert_eq!(
        inits[0].args.as_deref().unwrap(),
        [
            "init",
            "--inbound-exclude-ports=8081",
            "--inbound-include-ports=8080,8081",
            "--outbound-exclude-ports=3306,6379",
            "--outbound-exclude-cidrs=169.254.169.254/32",
        ]
    );
    let resources = inits[1].resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "250m");
    assert_eq!(requests["memory"].0, InjectConfig::default().memory);
    assert_eq!(limits["memory"].0, "256Mi");
}

#[test]
fn injection_is_idempotent() {
    let config = InjectConfig::default();
    let once = injected(&pod(governed(), json!({})), &config);
    assert_eq!(
        inject(&once, None, &config).unwrap(),
        Injection::Skipped(SkipReason::AlreadyInjected)
    );
    // Our containers without the annotation (removed by hand) are not added twice either.
    let mut stripped = once.clone();
    stripped.metadata.annotations = None;
    assert_eq!(
        inject(&stripped, None, &config).unwrap(),
        Injection::Skipped(SkipReason::AlreadyInjected)
    );
}

#[test]
fn unlabelled_opted_out_and_host_network_pods_are_left_alone() {
    let config = InjectConfig::default();
    for labels in [json!({}), json!({"msePilotAutoEnable": "off"})] {
        assert_eq!(
            inject(&pod(labels, json!({})), None, &config).unwrap(),
            Injection::Skipped(SkipReason::NotGoverned)
        );
    }
    assert_eq!(
        inject(
            &pod(governed(), json!({"sidecar.lanemesh.io/inject": "false"})),
            None,
            &config
        )
        .unwrap(),
        Injection::Skipped(SkipReason::OptedOut)
    );
    let mut host = pod(governed(), json!({}));
    host.spec.as_mut().unwrap().host_network = Some(true);
    assert_eq!(
        inject(&host, None, &config).unwrap(),
        Injection::Skipped(SkipReason::HostNetwork)
    );
}

#[test]
fn a_bad_annotation_is_an_error_naming_it() {
    let error = inject(
        &pod(
            governed(),
            json!({"traffic.lanemesh.io/exclude-outbound-ports": "mysql"}),
        ),
        None,
        &InjectConfig::default(),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("annotation traffic.lanemesh.io/exclude-outbound-ports: \"mysql\""),
        "{error}"
    );
}

#[test]
fn the_discovery_ca_is_injected_when_configured() {
    let out = injected(
        &pod(json!({"msePilotAutoEnable": "on", "app": "b"}), json!({})),
        &InjectConfig {
            discovery_ca: "-----BEGIN CERTIFICATE-----".into(),
            ..InjectConfig::default()
        },
    );
    let proxy = &out.spec.unwrap().init_containers.unwrap()[1];
    assert_eq!(
        env(proxy, "LANEMESH_DISCOVERY_CA")
            .unwrap()
            .value
            .as_deref(),
        Some("-----BEGIN CERTIFICATE-----")
    );
}

#[test]
fn native_sidecars_from_kubernetes_1_29() {
    assert_eq!(SidecarMode::for_server("1", "28"), SidecarMode::Classic);
    assert_eq!(SidecarMode::for_server("1", "29"), SidecarMode::Native);
    assert_eq!(SidecarMode::for_server("1", "34+"), SidecarMode::Native);
    assert_eq!(SidecarMode::for_server("1", ""), SidecarMode::Classic);
}

#[test]
fn app_containers_get_a_pre_stop_sleep_unless_they_have_one_or_the_pod_says_no() {
    let mut with_hook = pod(governed(), json!({}));
    let spec = with_hook.spec.as_mut().unwrap();
    spec.containers.push(
        serde_json::from_value(json!({
            "name": "own", "image": "own:1",
            "lifecycle": {"preStop": {"exec": {"command": ["/bin/drain"]}}}
        }))
        .unwrap(),
    );
    let out = injected(&with_hook, &InjectConfig::default());
    let spec = out.spec.as_ref().unwrap();
    let pre_stop = |name: &str| {
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.lifecycle.as_ref()?.pre_stop.clone())
    };
    assert_eq!(
        pre_stop("app").unwrap().sleep.unwrap().seconds,
        5,
        "the app keeps serving while callers learn the pod is going"
    );
    assert!(
        pre_stop("own").unwrap().exec.is_some(),
        "the app's own hook is kept"
    );
    assert_eq!(
        spec.termination_grace_period_seconds, None,
        "30 s leave enough after 5"
    );
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert!(
        proxy.lifecycle.is_none(),
        "the proxy is stopped after the app"
    );

    let long = pod(
        governed(),
        json!({"sidecar.lanemesh.io/appDrainSeconds": "40"}),
    );
    let out = injected(&long, &InjectConfig::default());
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(spec.termination_grace_period_seconds, Some(50));

    let off = pod(
        governed(),
        json!({"sidecar.lanemesh.io/appDrainSeconds": "0"}),
    );
    let out = injected(&off, &InjectConfig::default());
    assert!(out.spec.unwrap().containers[0].lifecycle.is_none());
    let old_server = InjectConfig {
        app_drain_seconds: 0,
        ..InjectConfig::default()
    };
    let out = injected(&pod(governed(), json!({})), &old_server);
    assert!(out.spec.unwrap().containers[0].lifecycle.is_none());

    let bad = pod(
        governed(),
        json!({"sidecar.lanemesh.io/appDrainSeconds": "soon"}),
    );
    let error = inject(&bad, None, &InjectConfig::default()).unwrap_err();
    assert!(error.to_string().contains("appDrainSeconds"), "{error}");
    assert!(sleep_action_supported("1", "30+") && !sleep_action_supported("1", "29"));
}

#[test]
fn sidecars_export_spans_only_when_a_trace_endpoint_is_configured() {
    let proxy_of = |pod: &Pod| -> Container {
        pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[1].clone()
    };
    let off = injected(&pod(governed(), json!({})), &InjectConfig::default());
    let proxy = proxy_of(&off);
    assert!(env(&proxy, "LANEMESH_TRACE_ENDPOINT").is_none());
    assert!(env(&proxy, "LANEMESH_TRACE_SAMPLING").is_none());

    let config = InjectConfig {
        trace_endpoint: "http://otel-collector.observability:4317".to_owned(),
        trace_sampling: 0.25,
        ..InjectConfig::default()
    };
    let on = injected(&pod(governed(), json!({})), &config);
    let proxy = proxy_of(&on);
    let value = |name| env(&proxy, name).unwrap().value.clone().unwrap();
    assert_eq!(
        value("LANEMESH_TRACE_ENDPOINT"),
        "http://otel-collector.observability:4317"
    );
    assert_eq!(value("LANEMESH_TRACE_SAMPLING"), "0.25");
    assert_eq!(
        value("LANEMESH_TRACE_SERVICE_NAME"),
        "a",
        "the pod's app label"
    );
}

fn context_pod(annotations: serde_json::Value, env: serde_json::Value) -> Pod {
    let mut p = pod(governed(), annotations);
    let app = &mut p.spec.as_mut().unwrap().containers[0];
    app.env = serde_json::from_value(env).unwrap();
    p
}

fn value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    env(c, name).and_then(|e| e.value.as_deref())
}

#[test]
fn java_context_adds_the_agent_copy_the_volume_and_the_otel_settings() {
    let out = injected(
        &context_pod(
            json!({"lanemesh.io/inject-context": "java"}),
            json!([
                {"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx512m"},
                {"name": "OTEL_TRACES_EXPORTER", "value": "console"},
            ]),
        ),
        &InjectConfig::default(),
    );
    let spec = out.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().unwrap();
    let names: Vec<_> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            INIT_CONTAINER,
            PROXY_CONTAINER,
            "migrate",
            context::CONTAINER
        ]
    );
    let copy = inits.last().unwrap();
    assert_eq!(copy.image.as_deref(), Some("lanemesh/context-java:latest"));
    assert_eq!(copy.args.as_deref().unwrap(), [context::CONTEXT_DIR]);
    let sc = copy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, None, "runs as the pod's user");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let mount = &copy.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.read_only
        ),
        (context::CONTAINER, context::CONTEXT_DIR, None)
    );

    let app = &spec.containers[0];
    assert_eq!(
        value(app, "JAVA_TOOL_OPTIONS"),
        Some("-Xmx512m -javaagent:/lanemesh-context/opentelemetry-javaagent.jar")
    );
    assert_eq!(value(app, "OTEL_PROPAGATORS"), Some("tracecontext,baggage"));
    assert_eq!(
        value(app, "OTEL_TRACES_SAMPLER"),
        Some("parentbased_traceidratio")
    );
    assert_eq!(value(app, "OTEL_TRACES_SAMPLER_ARG"), Some("0.01"));
    assert_eq!(value(app, "OTEL_METRICS_EXPORTER"), Some("none"));
    assert_eq!(value(app, "OTEL_SERVICE_NAME"), Some("a"));
    // The app's own setting stays, once.
    assert_eq!(value(app, "OTEL_TRACES_EXPORTER"), Some("console"));
    assert_eq!(
        app.env
            .iter()
            .flatten()
            .filter(|e| e.name == "OTEL_TRACES_EXPORTER")
            .count(),
        1
    );
    assert!(env(app, "PYTHONPATH").is_none());
    let mount = app
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == context::CONTAINER)
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (context::CONTEXT_DIR, Some(true))
    );
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == context::CONTAINER)
        .unwrap();
    assert!(volume.empty_dir.is_some());
    // The proxy's own container gets none of it.
    let proxy = &inits[1];
    assert!(env(proxy, "OTEL_PROPAGATORS").is_none());
}

#[test]
fn python_context_puts_the_distro_first_on_the_path_and_exports_only_when_asked() {
    let config = InjectConfig {
        context: ContextConfig {
            trace_endpoint: "http://collector:4318".to_owned(),
            ..ContextConfig::default()
        },
        ..InjectConfig::default()
    };
    let out = injected(
        &context_pod(
            json!({"lanemesh.io/inject-context": "python"}),
            json!([{"name": "PYTHONPATH", "value": "/app/lib"}]),
        ),
        &config,
    );
    let spec = out.spec.as_ref().unwrap();
    let copy = spec.init_containers.as_ref().unwrap().last().unwrap();
    assert_eq!(
        copy.image.as_deref(),
        Some("lanemesh/context-python:latest")
    );
    let app = &spec.containers[0];
    assert_eq!(
        value(app, "PYTHONPATH"),
        Some("/lanemesh-context/boot:/app/lib")
    );
    assert!(env(app, "JAVA_TOOL_OPTIONS").is_none());
    assert_eq!(value(app, "OTEL_TRACES_EXPORTER"), Some("otlp"));
    assert_eq!(
        value(app, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://collector:4318")
    );
    assert_eq!(
        value(app, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        Some("http/protobuf")
    );
}

#[test]
fn the_default_context_applies_unless_the_pod_says_none_and_classic_proxies_get_none() {
    let config = InjectConfig {
        sidecar_mode: SidecarMode::Classic,
        context: ContextConfig {
            default: Language::Java,
            ..ContextConfig::default()
        },
        ..InjectConfig::default()
    };
    let out = injected(&context_pod(json!({}), json!([])), &config);
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].name, PROXY_CONTAINER);
    assert!(env(&spec.containers[0], "JAVA_TOOL_OPTIONS").is_none());
    assert_eq!(
        value(&spec.containers[1], "JAVA_TOOL_OPTIONS"),
        Some("-javaagent:/lanemesh-context/opentelemetry-javaagent.jar")
    );
    assert_eq!(
        value(&spec.containers[1], "OTEL_TRACES_EXPORTER"),
        Some("none")
    );

    let out = injected(
        &context_pod(json!({"lanemesh.io/inject-context": "none"}), json!([])),
        &config,
    );
    let spec = out.spec.as_ref().unwrap();
    assert!(env(&spec.containers[1], "JAVA_TOOL_OPTIONS").is_none());
    assert!(
        !spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == context::CONTAINER)
    );
}

#[test]
fn a_context_that_cannot_be_injected_is_refused_with_the_reason() {
    let error = inject(
        &context_pod(json!({"lanemesh.io/inject-context": "ruby"}), json!([])),
        None,
        &InjectConfig::default(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "annotation lanemesh.io/inject-context: \"ruby\" is not \"java\", \"python\" or \"none\""
    );
    let error = inject(
        &context_pod(
            json!({"lanemesh.io/inject-context": "java"}),
            json!([{"name": "JAVA_TOOL_OPTIONS", "valueFrom": {"configMapKeyRef": {"name": "jvm", "key": "opts"}}}]),
        ),
        None,
        &InjectConfig::default(),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("container \"app\": JAVA_TOOL_OPTIONS comes from valueFrom"),
        "{message}"
    );
}
