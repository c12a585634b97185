//! The mutating admission webhook (port 15017, HTTPS): `POST /inject` takes an
//! `AdmissionReview` of a Pod and answers with the JSON patch [`inject`](super::inject) makes.
//!
//! The webhook has no side effects (`sideEffects: None`), so a `dryRun` request is answered
//! like any other. A pod it must not inject is allowed unchanged; a pod with a malformed
//! annotation is refused with the annotation's name and expected form, so `kubectl` shows it.
//! The API server calls with a 10 s timeout by default; injection is a few microseconds of
//! work, so requests are served as they come with a bound on connections and body size.
//!
//! In Kubernetes mode the webhook also reads the pod's Namespace annotations (for
//! `lanemesh.io/inject-context`) from a reflector of Namespace metadata ([`watch_namespaces`]).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{InjectConfig, Injection, inject};
use crate::metrics::Metrics;

/// Default webhook address (DESIGN §7).
pub const DEFAULT_ADDR: &str = "0.0.0.0:15017";
/// The path the MutatingWebhookConfiguration calls.
pub const PATH: &str = "/inject";
/// Largest AdmissionReview read: the API server's own object limit is 3 MiB.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a review waits for the first list of Namespaces (only right after start).
const NAMESPACES_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The Namespaces' metadata as last seen; `None` outside Kubernetes (no namespace opt-in).
pub type Namespaces = Option<Store<PartialObjectMeta<Namespace>>>;

/// A store of every Namespace's metadata and the task keeping it current (it runs until
/// dropped; watch errors are retried with backoff).
pub fn watch_namespaces(
    client: kube::Client,
) -> (
    Store<PartialObjectMeta<Namespace>>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    // `Api<PartialObjectMeta<_>>` lists and watches metadata only.
    let api = kube::Api::<PartialObjectMeta<Namespace>>::all(client);
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, "watching namespaces for the injection webhook");
            }
        }
    };
    (reader, task)
}

/// The annotations of Namespace `name`, waiting briefly for the first list after start.
async fn namespace_annotations(
    namespaces: &Namespaces,
    name: Option<&str>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let (store, name) = (namespaces.as_ref()?, name?);
    if tokio::time::timeout(NAMESPACES_READY_TIMEOUT, store.wait_until_ready())
        .await
        .is_err()
    {
        tracing::warn!("the namespace list is not ready: namespace annotations not applied");
    }
    store
        .get(&ObjectRef::new(name))
        .and_then(|ns| ns.metadata.annotations.clone())
}

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} in it")]
    Pem { path: String, what: &'static str },
    #[error("the webhook certificate and key do not make a TLS configuration: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

/// The TLS configuration of the webhook from PEM files (the chart mounts them from a Secret).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, WebhookError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| WebhookError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(WebhookError::Pem {
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| WebhookError::Pem {
        path: key.display().to_string(),
        what: "private key",
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The answer to one AdmissionReview body: always a review (a malformed one is answered with
/// an `invalid` response, as the API server expects), and how the pod fared, for the log.
pub async fn review(
    body: &[u8],
    config: &InjectConfig,
    namespaces: &Namespaces,
) -> (AdmissionReview<DynamicObject>, &'static str) {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => {
            return (
                AdmissionResponse::invalid(format!("not an AdmissionReview of a Pod: {error}"))
                    .into_review(),
                "invalid",
            );
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            return (
                AdmissionResponse::invalid(error.to_string()).into_review(),
                "invalid",
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    let Some(pod) = request.object.as_ref() else {
        return (response.into_review(), "no object");
    };
    let namespace = namespace_annotations(namespaces, request.namespace.as_deref()).await;
    let (response, outcome) = match inject(pod, namespace.as_ref(), config) {
        Ok(Injection::Injected(injected)) => match patch(pod, &injected) {
            Ok(patch) => match response.clone().with_patch(patch) {
                Ok(response) => (response, "injected"),
                Err(error) => (response.deny(error.to_string()), "error"),
            },
            Err(error) => (response.deny(error.to_string()), "error"),
        },
        Ok(Injection::Skipped(_)) => (response, "skipped"),
        Err(error) => (response.deny(error.to_string()), "refused"),
    };
    (response.into_review(), outcome)
}

fn patch(before: &Pod, after: &Pod) -> Result<json_patch::Patch, serde_json::Error> {
    let before = serde_json::to_value(before)?;
    let after = serde_json::to_value(after)?;
    Ok(json_patch::diff(&before, &after))
}

/// Serves the webhook on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    config: Arc<InjectConfig>,
    namespaces: Namespaces,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let config = Arc::clone(&config);
        let namespaces = namespaces.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let config = Arc::clone(&config);
                let namespaces = namespaces.clone();
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(handle(req, &config, &namespaces, &metrics).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(error) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, %error, "webhook connection ended");
            }
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn handle(
    req: Request<Incoming>,
    config: &InjectConfig,
    namespaces: &Namespaces,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
    };
    let (review, outcome) = review(&body, config, namespaces).await;
    metrics
        .injections
        .get_or_create(&vec![("outcome", outcome.to_owned())])
        .inc();
    if let Some(response) = &review.response {
        tracing::debug!(uid = %response.uid, outcome, "admission review");
    }
    match serde_json::to_vec(&review) {
        Ok(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the review failed\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::needless_pass_by_value)]
    use super::*;
    use serde_json::{Value, json};

    fn admission(pod: Value, dry_run: bool) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "demo",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": pod,
                "dryRun": dry_run,
            }
        }))
        .unwrap()
    }

    fn pod(labels: Value, annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "a-", "namespace": "demo", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        })
    }

    fn answer(body: &[u8]) -> Value {
        answer_with(body, &None)
    }

    fn answer_with(body: &[u8], namespaces: &Namespaces) -> Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let review = runtime.block_on(review(body, &InjectConfig::default(), namespaces));
        serde_json::to_value(review.0).unwrap()
    }

    /// A listed store holding Namespace `demo` with `annotations`.
    fn namespaces(annotations: Value) -> Namespaces {
        let (reader, mut writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let ns: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "demo", "annotations": annotations},
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(ns));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Some(reader)
    }

    fn init_names(pod: &Value) -> Vec<String> {
        pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_namespace_annotation_injects_context_unless_the_pod_says_none() {
        let java = namespaces(json!({"lanemesh.io/inject-context": "java"}));
        let governed = pod(json!({"msePilotAutoEnable": "on"}), json!({}));
        let review = answer_with(&admission(governed.clone(), false), &java);
        let patched = apply_patch(&governed, &review["response"]);
        assert_eq!(
            init_names(&patched),
            ["lanemesh-init", "lanemesh-proxy", "lanemesh-context"]
        );
        let env = &patched["spec"]["containers"][0]["env"];
        assert!(
            env.to_string()
                .contains("-javaagent:/lanemesh-context/opentelemetry-javaagent.jar"),
            "{env}"
        );

        let opted_out = pod(
            json!({"msePilotAutoEnable": "on"}),
            json!({"lanemesh.io/inject-context": "none"}),
        );
        let review = answer_with(&admission(opted_out.clone(), false), &java);
        let patched = apply_patch(&opted_out, &review["response"]);
        assert_eq!(init_names(&patched), ["lanemesh-init", "lanemesh-proxy"]);

        // A typo on the namespace refuses its governed pods, naming the annotation.
        let typo = namespaces(json!({"lanemesh.io/inject-context": "jvm"}));
        let review = answer_with(&admission(governed, false), &typo);
        assert_eq!(review["response"]["allowed"], false);
        let message = review["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("lanemesh.io/inject-context: \"jvm\""),
            "{message}"
        );
    }

    fn apply_patch(pod: &Value, response: &Value) -> Value {
        assert_eq!(response["patchType"], "JSONPatch");
        // kube serializes the bytes as a JSON array, which Go's decoder reads into []byte.
        let patch: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    #[test]
    fn a_governed_pod_is_answered_with_a_patch_that_injects_it() {
        let pod = pod(json!({"msePilotAutoEnable": "on"}), json!({}));
        for dry_run in [false, true] {
            let review = answer(&admission(pod.clone(), dry_run));
            assert_eq!(review["kind"], "AdmissionReview");
            let response = &review["response"];
            assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
            assert_eq!(response["allowed"], true);
            let patched = apply_patch(&pod, response);
            assert_eq!(init_names(&patched), ["lanemesh-init", "lanemesh-proxy"]);
            assert_eq!(
                patched["metadata"]["annotations"]["sidecar.lanemesh.io/status"],
                "injected"
            );
            // The patched pod injects to nothing more.
            let again = answer(&admission(patched, false));
            assert!(again["response"]["patch"].is_null(), "{again}");
            assert_eq!(again["response"]["allowed"], true);
        }
    }

    #[test]
    fn an_unlabelled_pod_is_allowed_unchanged() {
        let review = answer(&admission(pod(json!({"app": "x"}), json!({})), false));
        assert_eq!(review["response"]["allowed"], true);
        assert!(review["response"]["patch"].is_null());
    }

    #[test]
    fn a_bad_annotation_is_denied_with_its_message() {
        let review = answer(&admission(
            pod(
                json!({"msePilotAutoEnable": "on"}),
                json!({"traffic.lanemesh.io/exclude-inbound-ports": "http"}),
            ),
            false,
        ));
        let response = &review["response"];
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("annotation traffic.lanemesh.io/exclude-inbound-ports: \"http\""),
            "{message}"
        );
    }

    #[test]
    fn garbage_is_answered_as_invalid_not_a_panic() {
        for body in [&b""[..], b"{}", b"[1,2]", b"{\"request\": 7}"] {
            let review = answer(body);
            assert_eq!(review["response"]["allowed"], false, "{review}");
        }
    }
}
