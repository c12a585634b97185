//! The web console (`--console-addr`, off by default): lane groups with their lanes and matched
//! pods, Total / Exception / Gray QPS per app and per lane over the last 15 minutes, rule hits,
//! breaker states and transitions, refused objects; with `--console-writes`, a switch per lane.
//!
//! Server-rendered data, browser-drawn charts: the page (`control-plane/console/`, compiled in)
//! polls `GET /api/overview` and draws with uPlot (vendored from npm, MIT). Data comes from the
//! pilot's own world (lanes, status, refused objects) and its traffic view (the sidecars'
//! metrics, [`crate::traffic`]); nothing is stored.
//!
//! Writes are off unless the pilot runs with `--console-writes`; then `POST
//! /api/lanes/<namespace>/<name>` with a JSON body `{"enabled": bool}` switches a lane through
//! [`LaneWriter`]. A write must be JSON (a cross-site form cannot send it without a preflight)
//! and, when the browser names its origin, come from the console's own.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::snapshot::World;
use crate::traffic::TrafficView;

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Largest request body (a lane switch is a few bytes).
const MAX_BODY: usize = 4096;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const UPLOT: &str = include_str!("../../console/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../console/vendor/uPlot.min.css");

/// Where a lane switch is written.
#[derive(Clone)]
pub enum LaneWriter {
    /// A merge patch of the Lane's `spec.enabled` through the API server (the pilot's service
    /// account needs `patch` on lanes).
    Kubernetes(kube::Client),
    /// The local source's directory: the file holding the Lane is rewritten.
    Directory(PathBuf),
}

impl std::fmt::Debug for LaneWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kubernetes(_) => f.write_str("LaneWriter::Kubernetes"),
            Self::Directory(dir) => write!(f, "LaneWriter::Directory({})", dir.display()),
        }
    }
}

/// Why a lane switch failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no Lane {namespace}/{name}")]
    NotFound { namespace: String, name: String },
    #[error("the API server refused the change: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error(transparent)]
    Directory(#[from] crate::source::local::LocalError),
}

impl LaneWriter {
    /// Sets `spec.enabled` of Lane `namespace/name`.
    pub async fn set_enabled(
        &self,
        namespace: &str,
        name: &str,
        enabled: bool,
    ) -> Result<(), WriteError> {
        let not_found = || WriteError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match self {
            Self::Kubernetes(client) => {
                let lanes: kube::Api<lanemesh_api::crd::Lane> =
                    kube::Api::namespaced(client.clone(), namespace);
                let patch = json!({"spec": {"enabled": enabled}});
                match lanes
                    .patch(
                        name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Err(not_found()),
                    Err(e) => Err(e.into()),
                }
            }
            Self::Directory(dir) => {
                let (dir, namespace, name) = (dir.clone(), namespace.to_owned(), name.to_owned());
                let written = tokio::task::spawn_blocking(move || {
                    crate::source::local::set_lane_enabled(&dir, &namespace, &name, enabled)
                })
                .await
                .map_err(|e| {
                    WriteError::Directory(crate::source::local::LocalError::File {
                        file: PathBuf::new(),
                        reason: e.to_string(),
                    })
                })??;
                written.map(|_| ()).ok_or_else(not_found)
            }
        }
    }
}

/// The console server.
#[derive(Debug, Clone)]
pub struct Console {
    pub worlds: watch::Receiver<Arc<World>>,
    pub traffic: watch::Receiver<Arc<TrafficView>>,
    /// `Some` with `--console-writes`.
    pub writer: Option<LaneWriter>,
    pub header_read_timeout: Duration,
}

impl Console {
    /// Serves until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        tracing::info!(addr = ?listener.local_addr().ok(), writes = self.writer.is_some(), "console listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "console accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = crate::stopped(shutdown.clone()) => return,
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let console = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let timeout = console.header_read_timeout;
                let service = hyper::service::service_fn(move |req| {
                    let console = console.clone();
                    async move { Ok::<_, Infallible>(console.handle(req).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "console connection ended");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/") => asset(INDEX, "text/html; charset=utf-8"),
            (&Method::GET, "/assets/console.js") => asset(SCRIPT, "text/javascript"),
            (&Method::GET, "/assets/console.css") => asset(STYLE, "text/css"),
            (&Method::GET, "/assets/uPlot.iife.min.js") => asset(UPLOT, "text/javascript"),
            (&Method::GET, "/assets/uPlot.min.css") => asset(UPLOT_CSS, "text/css"),
            (&Method::GET, "/api/overview") => json_response(StatusCode::OK, &self.overview()),
            (&Method::POST, p) if p.starts_with("/api/lanes/") => self.switch(req).await,
            (_, p) if p.starts_with("/api/lanes/") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST {\"enabled\": true|false}",
            ),
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// Everything the page shows.
    fn overview(&self) -> Value {
        let world = Arc::clone(&self.worlds.borrow());
        let traffic = Arc::clone(&self.traffic.borrow());
        json!({
            "writes": self.writer.is_some(),
            "ready": world.ready,
            "lanes": crate::admin::lanes_json(&world),
            "traffic": &*traffic,
            "refused": crate::admin::rejected_json(&world),
        })
    }

    async fn switch(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(writer) = &self.writer else {
            return error(
                StatusCode::FORBIDDEN,
                "the console is read-only: start the pilot with --console-writes (chart: console.writes=true)",
            );
        };
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json");
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let own = ["http://", "https://"].iter().any(|scheme| {
                origin
                    .to_str()
                    .is_ok_and(|o| o == format!("{scheme}{host}"))
            });
            if !own {
                return error(
                    StatusCode::FORBIDDEN,
                    "a lane switch must come from the console's own page",
                );
            }
        }
        let path = req.uri().path().to_owned();
        let mut parts = path.trim_start_matches("/api/lanes/").split('/');
        let (Some(namespace), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return error(StatusCode::NOT_FOUND, "use /api/lanes/<namespace>/<name>");
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        };
        let Some(enabled) = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["enabled"].as_bool())
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"enabled\": true|false}",
            );
        };
        match writer.set_enabled(namespace, name, enabled).await {
            Ok(()) => {
                tracing::info!(lane = %format!("{namespace}/{name}"), enabled, "lane switched from the console");
                json_response(
                    StatusCode::OK,
                    &json!({"lane": format!("{namespace}/{name}"), "enabled": enabled}),
                )
            }
            Err(e @ WriteError::NotFound { .. }) => error(StatusCode::NOT_FOUND, &e.to_string()),
            Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
        }
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": message}))
}
