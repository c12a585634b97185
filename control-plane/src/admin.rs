//! The admin server (port 15014): `/healthz`, `/readyz`, `/metrics`, and
//! the debug endpoints `/debug/snapshot?node=<ns>/<pod>` (or `?node=<pod>`),
//! `/debug/streams` (connected sidecars and what each holds), `/debug/rejected` and
//! `/debug/traffic` (QPS per app and lane from the sidecars' metrics, when scraping is on) and
//! `/debug/lanes` (the LaneGroups and Lanes with the status the control plane computes for
//! them: what `lanemeshctl lanes --pilot` shows without an API server).
//!
//! Other pods reach this port (Prometheus scrapes it), while a snapshot shows
//! any node's configuration: the debug endpoints are served only where
//! [`DebugEndpoints`] allows (by default only on a loopback-bound listener).
//! HTTP/1 only; a connection must send its request head within
//! [`AdminOptions::header_read_timeout`] (no slowloris), and at most
//! [`MAX_CONNECTIONS`] are served at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::health::Health;
use crate::metrics::Metrics;
use crate::snapshot::{self, NodeKey, Resources, World};

/// Default admin address.
pub const DEFAULT_ADDR: &str = "0.0.0.0:15014";
/// Default time a client has to send a request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;

/// Where `/debug/*` is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DebugEndpoints {
    /// Only when the admin listener is bound to a loopback address (reached
    /// from inside the pod, or with `kubectl port-forward`).
    #[default]
    Loopback,
    /// On every address: anyone who reaches the port sees every node's snapshot.
    On,
    Off,
}

/// How the admin server behaves.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub header_read_timeout: Duration,
    pub debug_endpoints: DebugEndpoints,
}

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            debug_endpoints: DebugEndpoints::default(),
        }
    }
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    pub worlds: watch::Receiver<Arc<World>>,
    /// The discovery server's open streams (`/debug/streams`); `None` serves an empty list.
    pub streams: Option<crate::discovery::Discovery>,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    pub options: AdminOptions,
    /// The scrape task's latest view (`/debug/traffic`).
    pub traffic: watch::Receiver<Arc<crate::traffic::TrafficView>>,
}

impl Admin {
    /// Serves until `shutdown` turns `true`.
    pub async fn serve(self, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let local = listener.local_addr().ok();
        let serve_debug = match self.options.debug_endpoints {
            DebugEndpoints::On => true,
            DebugEndpoints::Off => false,
            DebugEndpoints::Loopback => local.is_some_and(|a| a.ip().is_loopback()),
        };
        tracing::info!(addr = ?local, debug_endpoints = serve_debug, "admin server listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = crate::stopped(shutdown.clone()) => return,
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!("admin: too many connections; closing a new one");
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let timeout = admin.options.header_read_timeout;
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(&req, serve_debug)) }
                });
                if let Err(e) = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    }

    fn handle(&self, req: &Request<Incoming>, debug: bool) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let world = Arc::clone(&self.worlds.borrow());
        let path = req.uri().path();
        if path.starts_with("/debug/") && !debug {
            return text(
                StatusCode::NOT_FOUND,
                "debug endpoints are off on this address (see --debug-endpoints)\n".into(),
            );
        }
        let failure = self.health.failure();
        match path {
            "/healthz" | "/readyz" if failure.is_some() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {}\n", failure.unwrap_or_default()),
            ),
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if world.ready => text(StatusCode::OK, "ready\n".into()),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the source's first full load is not indexed yet\n".into(),
            ),
            "/metrics" => {
                self.metrics
                    .rejected_objects
                    .set(world.rejected.len() as i64);
                let mut resp = text(StatusCode::OK, self.metrics.render());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/debug/snapshot" => {
                let node = query_param(req.uri().query().unwrap_or_default(), "node");
                match node.and_then(|n| find_node(&world, &n)) {
                    Some(key) => json_response(&node_json(&world, &key)),
                    None => text(
                        StatusCode::NOT_FOUND,
                        "no such governed pod; use ?node=<namespace>/<pod> or ?node=<pod>\n".into(),
                    ),
                }
            }
            "/debug/streams" => {
                let streams = self
                    .streams
                    .as_ref()
                    .map(crate::discovery::Discovery::streams)
                    .unwrap_or_default();
                json_response(&serde_json::to_value(streams).unwrap_or(Value::Null))
            }
            "/debug/traffic" => {
                let view = Arc::clone(&self.traffic.borrow());
                json_response(&serde_json::to_value(&*view).unwrap_or(Value::Null))
            }
            "/debug/lanes" => json_response(&lanes_json(&world)),
            "/debug/rejected" => json_response(&rejected_json(&world)),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Every LaneGroup and Lane as its source reports it, with the status this control plane
/// computes (`Accepted`, `matchedPods`) in place of the one the object carries.
/// The objects the latest build refused, with why.
pub(crate) fn rejected_json(world: &World) -> Value {
    world
        .rejected
        .iter()
        .map(|r| json!({"object": r.object.to_string(), "message": r.message()}))
        .collect()
}

pub(crate) fn lanes_json(world: &World) -> Value {
    use crate::source::Object;
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let statuses: std::collections::HashMap<_, _> =
        crate::status::desired::desired(world, &std::collections::BTreeMap::new(), &now)
            .into_iter()
            .map(|d| (d.key, d.next))
            .collect();
    let mut groups = Vec::new();
    let mut lanes = Vec::new();
    for (key, object) in world.objects.iter() {
        let (mut value, into) = match object {
            Object::LaneGroup(g) => (serde_json::to_value(g), &mut groups),
            Object::Lane(l) => (serde_json::to_value(l), &mut lanes),
            _ => continue,
        };
        if let (Ok(Value::Object(map)), Some(status)) = (&mut value, statuses.get(key)) {
            map.insert(
                "status".to_owned(),
                serde_json::to_value(status).unwrap_or(Value::Null),
            );
        }
        if let Ok(value) = value {
            into.push(value);
        }
    }
    json!({"laneGroups": groups, "lanes": lanes})
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

fn json_response(value: &Value) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::OK,
        serde_json::to_string_pretty(value).unwrap_or_default(),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

/// `ns/pod`, or a bare pod name looked up across namespaces (first by
/// namespace order).
fn find_node(world: &World, node: &str) -> Option<NodeKey> {
    let (ns, pod) = match node.split_once('/') {
        Some((ns, pod)) => (ns.to_owned(), pod.to_owned()),
        None => world
            .pods
            .keys()
            .filter(|(_, p)| p == node)
            .min()
            .cloned()?,
    };
    world.pods.get(&(ns.clone(), pod.clone()))?;
    Some(NodeKey {
        namespace: ns,
        pod_name: pod,
        app: String::new(),
        lane_tag: String::new(),
        gateway: false,
    })
}

fn node_json(world: &World, key: &NodeKey) -> Value {
    let snap = snapshot::for_node(world, key);
    json!({
        "node": format!("{}/{}", key.namespace, key.pod_name),
        "app": snap.app,
        "laneTag": snap.lane_tag,
        "generation": snap.generation,
        "services": list::<proto::Service>(&snap.services, service_json),
        "laneGroups": list::<proto::LaneGroup>(&snap.lane_groups, |g| json!({
            "apps": g.apps,
            "entryApps": g.entry_apps,
            "tagHeader": g.tag_header,
            "lanes": g.lanes.iter().map(|l| json!({
                "name": l.name, "tag": l.tag, "enabled": l.enabled, "weight": l.weight,
            })).collect::<Vec<_>>(),
        })),
        "inboundPolicies": list::<proto::InboundPolicy>(&snap.inbound, |p| json!({
            "app": p.app,
            "rules": p.rules.iter().map(|r| json!({
                "name": r.name,
                "qps": r.qps.as_ref().map(|q| q.threshold),
                "concurrency": r.concurrency.as_ref().map(|c| c.max),
                "dryRun": r.dry_run,
            })).collect::<Vec<_>>(),
            "overload": p.overload.as_ref().map(|o| o.name.clone()),
        })),
        "outboundPolicies": list::<proto::OutboundPolicy>(&snap.outbound, |p| json!({
            "app": p.app,
            "breakers": p.breakers.iter().map(|b| b.name.clone()).collect::<Vec<_>>(),
            "dryRunBreakers": p.breakers.iter().filter(|b| b.dry_run).map(|b| b.name.clone())
                .collect::<Vec<_>>(),
            "timeout": p.timeout.as_ref().map(duration_text),
            "trafficPolicy": p.traffic_policy,
            "routes": p.routes.iter().map(|r| json!({
                "name": r.name,
                "timeout": r.timeout.as_ref().map(duration_text),
                "retries": r.retries.as_ref().map(|t| t.attempts),
            })).collect::<Vec<_>>(),
            "warmup": p.warmup.as_ref().and_then(|w| w.duration.as_ref()).map(duration_text),
        })),
        "workloads": list::<proto::Workload>(&snap.workload, |w| json!({
            "app": w.app,
            "laneTag": w.lane_tag,
        })),
    })
}

fn list<T: DiscoveryResource>(resources: &Resources, fields: impl Fn(&T) -> Value) -> Value {
    let items = resources.values().map(|e| {
        let mut item = json!({"name": e.name, "version": e.version});
        if let (Ok(r), Value::Object(obj)) = (T::from_any(&e.any), &mut item)
            && let Value::Object(more) = fields(&r)
        {
            obj.extend(more);
        }
        item
    });
    Value::Array(items.collect())
}

fn duration_text(d: &prost_types::Duration) -> String {
    format!("{}s{}ns", d.seconds, d.nanos)
}

fn service_json(s: &proto::Service) -> Value {
    json!({
        "app": s.app,
        "clusterIPs": s.cluster_ips,
        "ports": s.ports.iter().map(|p| json!({
            "name": p.name, "port": p.port, "targetPort": p.target_port,
            "protocol": proto::AppProtocol::try_from(p.protocol)
                .map(|p| p.as_str_name().to_owned())
                .unwrap_or_else(|_| p.protocol.to_string()),
        })).collect::<Vec<_>>(),
        "endpoints": s.endpoints.iter().map(|e| json!({
            "ip": e.ip, "pod": e.pod_name, "laneTag": e.lane_tag, "ready": e.ready,
            "readySince": e.ready_since.as_ref().map(|t| t.seconds),
            "ports": e.ports.iter().collect::<std::collections::BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}
