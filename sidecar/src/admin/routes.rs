//! Request -> response for each listener; no I/O beyond reading shared state.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::AdminState;
use super::logging::LogError;
use crate::metrics::{self, ProxyMetrics};
use crate::snapshot::{ResourceKind, Resources, Snapshot, SnapshotResource, SnapshotStore};

type Reply = Response<Full<Bytes>>;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    body.push('\n');
    reply(status, TEXT, body)
}

fn not_found() -> Reply {
    text(StatusCode::NOT_FOUND, "not found")
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `GET /healthz/ready`: 503 while draining, so the endpoint leaves every caller's rotation
/// before the proxy stops.
pub(super) fn health<B>(store: &SnapshotStore, draining: bool, request: &Request<B>) -> Reply {
    if request.uri().path() != "/healthz/ready" {
        return not_found();
    }
    if request.method() != Method::GET {
        return method_not_allowed("GET");
    }
    if draining {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining");
    }
    let snapshot = store.load();
    if snapshot.is_ready() {
        return text(StatusCode::OK, "ready");
    }
    let missing: Vec<String> = ResourceKind::ALL
        .into_iter()
        .filter(|kind| !snapshot.has_received(*kind))
        .map(|kind| kind.to_string())
        .collect();
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: waiting for {}", missing.join(", ")),
    )
}

/// `GET /metrics`.
pub(super) fn metrics<B>(metrics: &ProxyMetrics, request: &Request<B>) -> Reply {
    if request.uri().path() != "/metrics" {
        return not_found();
    }
    if request.method() != Method::GET {
        return method_not_allowed("GET");
    }
    reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics.encode())
}

/// The admin listener's routes.
pub(super) fn admin<B>(state: &AdminState, request: &Request<B>) -> Reply {
    let method = request.method();
    match request.uri().path() {
        "/config_dump" if method == Method::GET => config_dump(state),
        "/config_dump" => method_not_allowed("GET"),
        "/logging" if method == Method::GET || method == Method::POST => {
            logging(state, method, request.uri().query())
        }
        "/logging" => method_not_allowed("GET, POST"),
        "/shutdown" if method == Method::POST => {
            state.shutdown.send_replace(true);
            tracing::info!("shutdown requested through the admin endpoint");
            text(StatusCode::OK, "shutting down")
        }
        "/shutdown" => method_not_allowed("POST"),
        _ => not_found(),
    }
}

fn logging(state: &AdminState, method: &Method, query: Option<&str>) -> Reply {
    let Some(control) = &state.logging else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "log filter control is not enabled",
        );
    };
    let result = if method == Method::POST {
        let mut level = None;
        let mut filter = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "level" => level = Some(value),
                "filter" => filter = Some(value),
                _ => {}
            }
        }
        match (level, filter) {
            (Some(level), None) => control.set_level(&level),
            (None, Some(filter)) => control.set_filter(&filter),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "give exactly one of ?level=<trace|debug|info|warn|error|off> or ?filter=<directives>",
                );
            }
        }
    } else {
        control.current()
    };
    match result {
        Ok(filter) => text(StatusCode::OK, filter),
        Err(error @ (LogError::InvalidFilter { .. } | LogError::UnknownLevel(_))) => {
            text(StatusCode::BAD_REQUEST, error.to_string())
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

fn config_dump(state: &AdminState) -> Reply {
    let snapshot = state.store.load();
    let dump = config_dump_json(state, &snapshot);
    match serde_json::to_vec_pretty(&dump) {
        Ok(body) => reply(StatusCode::OK, JSON, body),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

fn config_dump_json(state: &AdminState, snapshot: &Snapshot) -> Value {
    use lanemesh_api::proto;

    // The identity only: the admin never holds the token.
    let identity = |pod: &crate::identity::PodIdentity| {
        json!({
            "pod_name": pod.pod_name,
            "namespace": pod.namespace,
            "app": pod.app,
            "lane_tag": pod.lane().unwrap_or_default(),
            "ip": pod.ip,
        })
    };
    let mut node = identity(snapshot.local());
    if let Some(object) = node.as_object_mut() {
        object.insert("proxy_version".into(), env!("CARGO_PKG_VERSION").into());
        // What the flags said, when the control plane's Workload completed it.
        if snapshot.claimed() != snapshot.local() {
            object.insert("claimed".into(), identity(snapshot.claimed()));
        }
    }
    let mut dump = json!({
        "node": node,
        "ready": snapshot.is_ready(),
        "generation": snapshot.generation(),
        "resources": {
            "Service": kind_json::<proto::Service>(snapshot),
            "LaneGroup": kind_json::<proto::LaneGroup>(snapshot),
            "InboundPolicy": kind_json::<proto::InboundPolicy>(snapshot),
            "OutboundPolicy": kind_json::<proto::OutboundPolicy>(snapshot),
            "Workload": kind_json::<proto::Workload>(snapshot),
        },
    });
    if let (Some(discovery), Some(object)) = (&state.discovery, dump.as_object_mut()) {
        let stats = discovery.stats();
        object.insert(
            "discovery".into(),
            json!({
                "connected": stats.connected,
                "connects": stats.connects,
                "reconnect_attempts": stats.reconnect_attempts,
                "acks": stats.acks,
                "nacks": stats.nacks,
                "rejected_resources": stats.rejected_resources,
            }),
        );
    }
    dump
}

fn kind_json<T: SnapshotResource>(snapshot: &Snapshot) -> Value {
    let resources: &Resources<T> = snapshot.resources::<T>();
    let list: Vec<Value> = resources
        .iter()
        .map(|(name, entry)| json!({ "name": name, "version": entry.version }))
        .collect();
    json!({
        "type_url": T::KIND.type_url(),
        "received": snapshot.has_received(T::KIND),
        "resources": list,
    })
}
