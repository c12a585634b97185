#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Helm chart (`charts/lanemesh`): `helm lint`, the security-relevant fields of `helm
//! template`, and `helm install` / `helm upgrade` into the local API server with the RBAC it
//! grants checked by `kubectl auth can-i`.
//!
//! `helm` is built from Go modules by `e2e/cluster/build.sh` (with the cluster binaries); set
//! `LANEMESH_SKIP_CLUSTER=1` to skip.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use lanemesh_e2e::cluster::{self, Binaries, TestCluster};
use serde_yaml::Value;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::ServerCertVerifier as _;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const NAMESPACE: &str = "lanemesh-system";
const SERVICE_HOST: &str = "lanemesh-pilot.lanemesh-system.svc";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanemesh")
}

/// Runs helm with its caches and config in `home` (never the user's).
fn helm(home: &Path, args: &[&str]) -> Output {
    Binaries::locate()
        .unwrap()
        .helm_command(home)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template lanemesh charts/lanemesh -n lanemesh-system EXTRA...`, which must succeed.
fn template(home: &Path, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "lanemesh",
        chart.to_str().unwrap(),
        "-n",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    ok(&helm(home, &args))
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Verifies `cert_pem` for the pilot's Service name against `ca_pem` as a TLS client would.
fn verify(ca_pem: &[u8], cert_pem: &[u8]) -> Result<(), rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem).unwrap();
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(SERVICE_HOST).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

/// A container's env vars that have a plain value, by name.
fn env_values(container: &Value) -> std::collections::BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn helm_lint_passes_and_the_schema_refuses_bad_values() {
    if cluster::skip_requested("helm_lint_passes_and_the_schema_refuses_bad_values") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    ok(&helm(home.path(), &["lint", "--strict", chart]));
    for bad in [
        "proxy.sidecarMode=sometimes",
        "webhook.failurePolicy=Maybe",
        "pilot.replicas=0",
        "proxy.resources.requests.cpu=lots",
        "pilot.unknownKey=1",
        "tracing.samplingRatio=2",
        "tracing.samplingRatio=1.5",
        "tracing.endpoint=otel-collector:4317",
    ] {
        let out = helm(home.path(), &["lint", chart, "--set", bad]);
        assert!(!out.status.success(), "{bad} passed lint");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("schema"), "{bad}: {text}");
    }
}

#[test]
fn helm_template_renders_a_least_privilege_pilot_and_a_verifiable_webhook() {
    if cluster::skip_requested(
        "helm_template_renders_a_least_privilege_pilot_and_a_verifiable_webhook",
    ) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let out = template(home.path(), &[]);
    let docs = documents(&out);

    // The pilot: 2 replicas, probes on 15014, non-root, read-only, no capabilities.
    let deploy = find(&docs, "Deployment", "lanemesh-pilot");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http-admin", "{probe}");
    }
    let ports: Vec<_> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [15010, 15014, 15017]);
    let args = strings(&container["args"]);
    assert!(args.contains(&"--source=kubernetes".to_owned()), "{args:?}");
    assert!(pod["affinity"]["podAntiAffinity"].is_mapping());
    let pdb = find(&docs, "PodDisruptionBudget", "lanemesh-pilot");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let service = find(&docs, "Service", "lanemesh-pilot");
    let service_ports: Vec<_> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    for port in [15010, 15014, 15017] {
        assert!(
            service_ports.contains(&port),
            "{port} not in {service_ports:?}"
        );
    }

    // RBAC: reads, status writes and TokenReviews cluster-wide; Leases in its namespace only;
    // no wildcard, no Secrets, no writes to specs.
    let role = find(&docs, "ClusterRole", "lanemesh-pilot");
    for rule in role["rules"].as_sequence().unwrap() {
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        assert!(
            !resources.iter().any(|r| r == "*" || r == "secrets"),
            "{rule:?}"
        );
        assert!(!verbs.iter().any(|v| v == "*" || v == "delete"), "{rule:?}");
        let writes = verbs
            .iter()
            .any(|v| ["create", "update", "patch"].contains(&v.as_str()));
        if writes {
            assert!(
                resources
                    .iter()
                    .all(|r| r.ends_with("/status") || r == "tokenreviews"),
                "a write outside status/tokenreviews: {rule:?}"
            );
        }
    }
    let leases = find(&docs, "Role", "lanemesh-pilot");
    assert_eq!(leases["metadata"]["namespace"], NAMESPACE);
    assert_eq!(strings(&leases["rules"][0]["resources"]), ["leases"]);

    // The webhook: only labelled pods, no side effects, Fail, and a CA bundle that verifies
    // the certificate the pilot serves.
    let hook = &find(
        &docs,
        "MutatingWebhookConfiguration",
        "lanemesh-sidecar-injector",
    )["webhooks"][0];
    assert_eq!(
        hook["objectSelector"]["matchLabels"]["msePilotAutoEnable"],
        "on"
    );
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    let secret = find(&docs, "Secret", "lanemesh-pilot-tls");
    let ca = b64(hook["clientConfig"]["caBundle"].as_str().unwrap());
    let cert = b64(secret["data"]["tls.crt"].as_str().unwrap());
    assert_eq!(ca, b64(secret["data"]["ca.crt"].as_str().unwrap()));
    verify(&ca, &cert).unwrap();
    // And it does not verify under another CA (the check can fail).
    let other = lanemesh_e2e::cluster::ServingPki::new(&[SERVICE_HOST.to_owned()], "x").unwrap();
    assert!(verify(other.ca_pem.as_bytes(), &cert).is_err());

    // failurePolicy is a value.
    let ignore = template(home.path(), &["--set", "webhook.failurePolicy=Ignore"]);
    let docs = documents(&ignore);
    let hook = &find(
        &docs,
        "MutatingWebhookConfiguration",
        "lanemesh-sidecar-injector",
    )["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
}

#[test]
fn gateway_enabled_renders_the_gateway_deployment_service_and_classes() {
    if cluster::skip_requested("gateway_enabled_renders_the_gateway_deployment_service_and_classes")
    {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let off = documents(&template(home.path(), &[]));
    assert!(
        !off.iter()
            .any(|d| d["metadata"]["name"] == "lanemesh-gateway"),
        "the gateway is off by default"
    );
    let docs = documents(&template(home.path(), &["--set", "gateway.enabled=true"]));
    let deploy = find(&docs, "Deployment", "lanemesh-gateway");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"].as_str().unwrap().split(':').next(),
        Some("lanemesh/proxy")
    );
    let args = strings(&container["args"]);
    assert_eq!(args[..2], ["gateway".to_owned(), "--port=8080".to_owned()]);
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/healthz/ready"
    );
    // Discovery over TLS with the chart's CA, authenticated by a projected token.
    let env = env_values(container);
    let secret = find(&docs, "Secret", "lanemesh-pilot-tls");
    assert_eq!(
        env["LANEMESH_DISCOVERY_CA"].as_bytes(),
        b64(secret["data"]["ca.crt"].as_str().unwrap())
    );
    assert_eq!(
        env["LANEMESH_DISCOVERY_ADDR"],
        format!("{SERVICE_HOST}:15010")
    );
    let token = &pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "lanemesh");
    let service = find(&docs, "Service", "lanemesh-gateway");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        find(&docs, "IngressClass", "lanemesh")["spec"]["controller"],
        "lanemesh.io/gateway-controller"
    );
    // A port the proxy itself uses is refused by the schema.
    let refused = helm(
        home.path(),
        &[
            "template",
            "x",
            chart().to_str().unwrap(),
            "--set",
            "gateway.enabled=true",
            "--set",
            "gateway.port=15001",
        ],
    );
    assert!(!refused.status.success(), "port 15001 accepted");
}

/// The pilot container's arguments in rendered `docs`.
fn pilot_args(docs: &[Value]) -> Vec<String> {
    strings(
        &find(docs, "Deployment", "lanemesh-pilot")["spec"]["template"]["spec"]["containers"][0]["args"],
    )
}

#[test]
fn tracing_values_reach_the_webhook_and_the_gateway() {
    if cluster::skip_requested("tracing_values_reach_the_webhook_and_the_gateway") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let off = documents(&template(home.path(), &["--set", "gateway.enabled=true"]));
    assert!(
        !pilot_args(&off)
            .iter()
            .any(|a| a.starts_with("--inject-trace")),
        "tracing is off by default"
    );
    let on = documents(&template(
        home.path(),
        &[
            "--set",
            "gateway.enabled=true",
            "--set",
            "tracing.endpoint=http://otel-collector.observability:4317",
            "--set",
            "tracing.samplingRatio=0.5",
        ],
    ));
    let args = pilot_args(&on);
    assert!(
        args.contains(
            &"--inject-trace-endpoint=http://otel-collector.observability:4317".to_owned()
        ),
        "{args:?}"
    );
    assert!(
        args.contains(&"--inject-trace-sampling=0.5".to_owned()),
        "{args:?}"
    );
    let gateway =
        &find(&on, "Deployment", "lanemesh-gateway")["spec"]["template"]["spec"]["containers"][0];
    let env = env_values(gateway);
    assert_eq!(
        env["LANEMESH_TRACE_ENDPOINT"],
        "http://otel-collector.observability:4317"
    );
    assert_eq!(env["LANEMESH_TRACE_SAMPLING"], "0.5");
}

/// `resource` may end in `/status`: the subresource.
async fn get_json(cluster: &TestCluster, args: &[&str]) -> serde_json::Value {
    let out = cluster.kubectl(args).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The installed webhook's CA bundle and the serving certificate, checked to verify.
async fn installed_chain(cluster: &TestCluster) -> (Vec<u8>, Vec<u8>) {
    let secret = get_json(
        cluster,
        &[
            "get",
            "secret",
            "lanemesh-pilot-tls",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ],
    )
    .await;
    let hook = get_json(
        cluster,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "lanemesh-sidecar-injector",
            "-o",
            "json",
        ],
    )
    .await;
    let ca = b64(hook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap());
    let cert = b64(secret["data"]["tls.crt"].as_str().unwrap());
    verify(&ca, &cert).unwrap();
    (ca, cert)
}

async fn can_i(cluster: &TestCluster, verb: &str, resource: &str, namespace: &str) -> bool {
    let user = format!("system:serviceaccount:{NAMESPACE}:lanemesh-pilot");
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, format!("--subresource={sub}")),
        None => (resource, "--subresource=".to_owned()),
    };
    let out = cluster
        .kubectl([
            "auth",
            "can-i",
            verb,
            resource,
            &subresource,
            "-n",
            namespace,
            "--as",
            &user,
        ])
        .await
        .unwrap();
    // Exit 0 = yes, 1 = no; the answer is on stdout either way.
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_and_upgrade_into_the_cluster_keep_a_valid_certificate_chain() {
    if cluster::skip_requested(
        "helm_install_and_upgrade_into_the_cluster_keep_a_valid_certificate_chain",
    ) {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = TestCluster::start().await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let chart = chart();
        let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_owned();
        let install = |verb: &'static str| {
            let chart = chart.clone();
            let kubeconfig = kubeconfig.clone();
            let home = home.path().to_owned();
            move || {
                helm(
                    &home,
                    &[
                        verb,
                        "lanemesh",
                        chart.to_str().unwrap(),
                        "-n",
                        NAMESPACE,
                        "--create-namespace",
                        "--kubeconfig",
                        &kubeconfig,
                    ],
                )
            }
        };
        ok(&tokio::task::spawn_blocking(install("install"))
            .await
            .unwrap());

        let deploy = get_json(
            &cluster,
            &[
                "get",
                "deployment",
                "lanemesh-pilot",
                "-n",
                NAMESPACE,
                "-o",
                "json",
            ],
        )
        .await;
        assert_eq!(deploy["spec"]["replicas"], 2);
        let crd = get_json(
            &cluster,
            &["get", "crd", "lanegroups.lanemesh.io", "-o", "json"],
        )
        .await;
        assert_eq!(crd["spec"]["group"], "lanemesh.io");
        let first = installed_chain(&cluster).await;

        // RBAC, both directions.
        for (verb, resource, namespace, want) in [
            ("list", "pods", "default", true),
            ("watch", "endpointslices.discovery.k8s.io", "shop", true),
            ("watch", "lanes.lanemesh.io", "shop", true),
            ("patch", "lanes.lanemesh.io/status", "shop", true),
            (
                "patch",
                "ratelimitpolicies.lanemesh.io/status",
                "shop",
                true,
            ),
            (
                "create",
                "tokenreviews.authentication.k8s.io",
                "default",
                true,
            ),
            ("update", "leases.coordination.k8s.io", NAMESPACE, true),
            ("update", "leases.coordination.k8s.io", "default", false),
            ("patch", "lanes.lanemesh.io", "shop", false),
            ("get", "secrets", "default", false),
            ("create", "pods", "default", false),
            ("delete", "pods", "default", false),
            ("list", "configmaps", "default", false),
        ] {
            assert_eq!(
                can_i(&cluster, verb, resource, namespace).await,
                want,
                "can-i {verb} {resource} -n {namespace}"
            );
        }

        // An upgrade keeps the certificate chain (and so every injected sidecar's CA).
        ok(&tokio::task::spawn_blocking(install("upgrade"))
            .await
            .unwrap());
        assert_eq!(
            installed_chain(&cluster).await,
            first,
            "the upgrade replaced the certificates"
        );
    })
    .await
    .expect("test timed out");
}

/// The pilot binary with the args of the installed Deployment, as the chart's ServiceAccount
/// (a kubeconfig holding its token, so exactly the chart's RBAC applies), on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pilot_runs_with_the_charts_args_and_rbac_and_serves_authenticated_tls_discovery() {
    use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use lanemesh_api::proto::{DeltaDiscoveryRequest, Node};
    use lanemesh_api::resource::ALL_TYPE_URLS;
    use lanemesh_e2e::process::{ChildGuard, free_addr, lanemesh_binaries};

    if cluster::skip_requested(
        "the_pilot_runs_with_the_charts_args_and_rbac_and_serves_authenticated_tls_discovery",
    ) {
        return;
    }
    tokio::time::timeout(Duration::from_secs(20 * 60), async {
        let bins = tokio::task::spawn_blocking(|| lanemesh_binaries(Duration::from_secs(15 * 60)))
            .await
            .unwrap()
            .unwrap();
        let cluster = TestCluster::start().await.unwrap();
        let home = tempfile::tempdir().unwrap();
        let chart = chart();
        let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_owned();
        let home_path = home.path().to_owned();
        ok(&tokio::task::spawn_blocking(move || {
            helm(
                &home_path,
                &[
                    "install",
                    "lanemesh",
                    chart.to_str().unwrap(),
                    "-n",
                    NAMESPACE,
                    "--create-namespace",
                    "--kubeconfig",
                    &kubeconfig,
                ],
            )
        })
        .await
        .unwrap());

        // The Secret's files where the Deployment mounts them, under a temporary root.
        let tls = tempfile::tempdir().unwrap();
        let secret = get_json(
            &cluster,
            &[
                "get",
                "secret",
                "lanemesh-pilot-tls",
                "-n",
                NAMESPACE,
                "-o",
                "json",
            ],
        )
        .await;
        for file in ["ca.crt", "tls.crt", "tls.key"] {
            std::fs::write(
                tls.path().join(file),
                b64(secret["data"][file].as_str().unwrap()),
            )
            .unwrap();
        }
        let ca_pem = std::fs::read_to_string(tls.path().join("ca.crt")).unwrap();
        let deploy = get_json(
            &cluster,
            &[
                "get",
                "deployment",
                "lanemesh-pilot",
                "-n",
                NAMESPACE,
                "-o",
                "json",
            ],
        )
        .await;
        let (grpc, admin, webhook) = (
            free_addr().unwrap(),
            free_addr().unwrap(),
            free_addr().unwrap(),
        );
        let mount = format!("{}/", tls.path().display());
        let args: Vec<String> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = a.as_str().unwrap();
                match a.split_once('=') {
                    Some(("--grpc-addr", _)) => format!("--grpc-addr={grpc}"),
                    Some(("--admin-addr", _)) => format!("--admin-addr={admin}"),
                    Some(("--webhook-addr", _)) => format!("--webhook-addr={webhook}"),
                    _ => a.replace("/etc/lanemesh/tls/", &mount),
                }
            })
            .collect();
        assert!(args.contains(&"--source=kubernetes".to_owned()), "{args:?}");

        let token = cluster
            .kubectl([
                "create",
                "token",
                "lanemesh-pilot",
                "-n",
                NAMESPACE,
                "--duration",
                "1h",
            ])
            .await
            .unwrap();
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8(token.stdout).unwrap();
        let as_pilot = cluster.kubeconfig_for_token("pilot", token.trim()).unwrap();
        let mut command = std::process::Command::new(&bins.pilot);
        command
            .args(&args)
            .env("KUBECONFIG", &as_pilot)
            .env("POD_NAME", "lanemesh-pilot-0")
            .env("POD_NAMESPACE", NAMESPACE)
            .env("RUST_LOG", "info");
        let log = tls.path().join("pilot.log");
        let mut pilot = ChildGuard::spawn("lanemesh-pilot", command, &log).unwrap();
        let ready = tokio::task::block_in_place(|| {
            pilot.wait_ready(admin, "/readyz", Duration::from_secs(60))
        });
        if let Err(error) = ready {
            panic!("{error}\n{}", pilot.log_tail(40));
        }

        // It holds the status Lease in its namespace (RBAC: leases there).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lease = cluster
                .kubectl([
                    "get",
                    "lease",
                    "lanemesh-pilot-status",
                    "-n",
                    NAMESPACE,
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ])
                .await
                .unwrap();
            if String::from_utf8_lossy(&lease.stdout) == "lanemesh-pilot-0" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no lease held\n{}",
                pilot.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // A sidecar of an (unlabelled, so not injected) pod: TLS verified with the chart's CA
        // for the Service's name, and a token bound to the pod (RBAC: tokenreviews).
        let setup = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: a-1, namespace: shop}
spec:
  serviceAccountName: default
  containers: [{name: app, image: example.invalid/a:1}]
"#;
        let out = cluster
            .kubectl_stdin(["apply", "-f", "-"], setup)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uid = cluster
            .kubectl([
                "get",
                "pod",
                "a-1",
                "-n",
                "shop",
                "-o",
                "jsonpath={.metadata.uid}",
            ])
            .await
            .unwrap();
        let uid = String::from_utf8(uid.stdout).unwrap();
        let bound = cluster
            .kubectl([
                "create",
                "token",
                "default",
                "-n",
                "shop",
                "--audience",
                "lanemesh",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "a-1",
                "--bound-object-uid",
                uid.trim(),
            ])
            .await
            .unwrap();
        let bound = String::from_utf8(bound.stdout).unwrap().trim().to_owned();
        let open = |pod: &'static str, token: String| {
            let ca_pem = ca_pem.clone();
            async move {
                let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
                    .unwrap()
                    .tls_config(
                        tonic::transport::ClientTlsConfig::new()
                            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                            .domain_name(SERVICE_HOST),
                    )
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                for (i, type_url) in ALL_TYPE_URLS.iter().enumerate() {
                    let node = (i == 0).then(|| Node {
                        pod_name: pod.into(),
                        namespace: "shop".into(),
                        token: token.clone(),
                        ..Default::default()
                    });
                    tx.send(DeltaDiscoveryRequest {
                        node,
                        type_url: (*type_url).into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
                let mut client = AggregatedDiscoveryServiceClient::new(channel);
                let answer = client
                    .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                match answer {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
                            .await
                            .expect("no response")
                            .map(|m| m.is_some());
                        drop(tx);
                        first.map_err(|s| s.code())
                    }
                    Err(status) => Err(status.code()),
                }
            }
        };
        assert_eq!(
            open("a-1", bound.clone()).await,
            Ok(true),
            "{}",
            pilot.log_tail(40)
        );
        assert_eq!(
            open("a-2", bound).await,
            Err(tonic::Code::PermissionDenied),
            "a token bound to a-1 claiming a-2"
        );
        assert_eq!(
            open("a-1", String::new()).await,
            Err(tonic::Code::PermissionDenied)
        );
    })
    .await
    .expect("test timed out");
}

#[test]
fn monitors_render_where_the_prometheus_operator_is_installed_with_the_dashboard() {
    if cluster::skip_requested(
        "monitors_render_where_the_prometheus_operator_is_installed_with_the_dashboard",
    ) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let kinds = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_owned))
            .collect()
    };
    let plain = documents(&template(home.path(), &["--set", "gateway.enabled=true"]));
    assert!(
        !kinds(&plain).iter().any(|k| k.ends_with("Monitor")),
        "no Prometheus Operator, no monitors: {:?}",
        kinds(&plain)
    );
    let docs = documents(&template(
        home.path(),
        &[
            "--api-versions",
            "monitoring.coreos.com/v1/PodMonitor",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--set",
            "gateway.enabled=true",
            "--set",
            "monitoring.labels.release=kube-prometheus-stack",
            "--set",
            "monitoring.dashboard.enabled=true",
        ],
    ));
    let proxies = find(&docs, "PodMonitor", "lanemesh-proxies");
    assert_eq!(
        proxies["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(proxies["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        proxies["spec"]["selector"]["matchLabels"]["msePilotAutoEnable"],
        "on"
    );
    // The injected proxy container's metrics port (control-plane/src/inject).
    assert_eq!(
        proxies["spec"]["podMetricsEndpoints"][0]["port"],
        "lanemesh-prom"
    );
    assert_eq!(proxies["spec"]["podMetricsEndpoints"][0]["interval"], "15s");

    // The gateway's and the pilot's monitors name ports their pods and Service declare.
    let gateway = find(&docs, "PodMonitor", "lanemesh-gateway");
    let gateway_pod = &find(&docs, "Deployment", "lanemesh-gateway")["spec"]["template"];
    for (k, v) in gateway["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &gateway_pod["metadata"]["labels"][k], v,
            "selects the gateway pods"
        );
    }
    let port = &gateway["spec"]["podMetricsEndpoints"][0]["port"];
    assert!(
        gateway_pod["spec"]["containers"][0]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == port),
        "gateway port {port:?}"
    );
    let pilot = find(&docs, "ServiceMonitor", "lanemesh-pilot");
    let service = find(&docs, "Service", "lanemesh-pilot");
    let port = &pilot["spec"]["endpoints"][0]["port"];
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| &p["name"] == port),
        "pilot Service port {port:?}"
    );
    for (k, v) in pilot["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "selects the pilot Service"
        );
    }

    // The dashboard, as shipped in the chart, for Grafana's sidecar.
    let map = find(&docs, "ConfigMap", "lanemesh-grafana-dashboard");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: serde_json::Value =
        serde_json::from_str(map["data"]["lanemesh.json"].as_str().unwrap()).unwrap();
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for panel in [
        "Total QPS by app",
        "Exception QPS by app",
        "GrayQPS by app",
        "QPS by app and lane",
        "Rejections by rule and reason",
        "Breaker transitions",
        "Refused objects",
    ] {
        assert!(titles.contains(&panel), "{panel} missing: {titles:?}");
    }
}

#[test]
fn the_console_is_off_by_default_read_only_when_on_and_writes_need_their_own_permission() {
    if cluster::skip_requested(
        "the_console_is_off_by_default_read_only_when_on_and_writes_need_their_own_permission",
    ) {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let args = |docs: &[Value]| {
        strings(
            &find(docs, "Deployment", "lanemesh-pilot")["spec"]["template"]["spec"]["containers"]
                [0]["args"],
        )
    };
    let may_patch_lanes = |docs: &[Value]| {
        find(docs, "ClusterRole", "lanemesh-pilot")["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|r| {
                strings(&r["resources"]) == ["lanes"]
                    && strings(&r["verbs"]).contains(&"patch".to_owned())
            })
    };
    let off = documents(&template(home.path(), &[]));
    assert!(!args(&off).iter().any(|a| a.starts_with("--console")));
    assert!(!may_patch_lanes(&off));
    let on = documents(&template(home.path(), &["--set", "console.enabled=true"]));
    let on_args = args(&on);
    assert!(
        on_args.contains(&"--console-addr=0.0.0.0:15080".to_owned()),
        "{on_args:?}"
    );
    assert!(
        on_args.contains(&"--scrape-interval=5s".to_owned()),
        "{on_args:?}"
    );
    assert!(
        !on_args.contains(&"--console-writes".to_owned()),
        "read-only by default"
    );
    assert!(!may_patch_lanes(&on));
    let ports = &find(&on, "Service", "lanemesh-pilot")["spec"]["ports"];
    assert!(
        ports
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "http-console" && p["port"] == 15080),
        "{ports:?}"
    );
    let writes = documents(&template(
        home.path(),
        &[
            "--set",
            "console.enabled=true",
            "--set",
            "console.writes=true",
        ],
    ));
    assert!(args(&writes).contains(&"--console-writes".to_owned()));
    assert!(may_patch_lanes(&writes));
}

#[test]
fn context_values_reach_the_webhook_and_a_bad_language_is_refused() {
    if cluster::skip_requested("context_values_reach_the_webhook_and_a_bad_language_is_refused") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let defaults = pilot_args(&documents(&template(home.path(), &[])));
    for arg in [
        "--inject-context=none",
        "--context-java-image=lanemesh/context-java:2.33.1",
        "--context-python-image=lanemesh/context-python:0.66b1",
    ] {
        assert!(defaults.contains(&arg.to_owned()), "{arg}: {defaults:?}");
    }
    assert!(
        !defaults
            .iter()
            .any(|a| a.starts_with("--inject-context-trace-endpoint")),
        "apps export nothing by default"
    );
    let set = pilot_args(&documents(&template(
        home.path(),
        &[
            "--set",
            "context.default=python",
            "--set",
            "context.traceEndpoint=http://collector:4318",
        ],
    )));
    assert!(
        set.contains(&"--inject-context=python".to_owned()),
        "{set:?}"
    );
    assert!(
        set.contains(&"--inject-context-trace-endpoint=http://collector:4318".to_owned()),
        "{set:?}"
    );
    let refused = helm(
        home.path(),
        &[
            "template",
            "x",
            chart().to_str().unwrap(),
            "--set",
            "context.default=ruby",
        ],
    );
    assert!(!refused.status.success(), "context.default=ruby accepted");
}
