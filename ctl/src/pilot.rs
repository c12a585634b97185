//! The pilot's admin endpoints (`--pilot <addr>`, its port 15014 reached directly or through
//! `kubectl port-forward`): connected sidecars, what the pilot serves a pod, refused objects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use serde::Deserialize;

use crate::view::Status;

/// Bound of each call to the pilot.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PilotError {
    #[error("the pilot at {addr} cannot be reached: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the pilot at {addr} did not answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("talking to the pilot at {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("the pilot at {addr} answered {path} with {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    #[error("the pilot at {addr} answered {path} with something else than JSON: {source}")]
    Json {
        addr: SocketAddr,
        path: String,
        source: serde_json::Error,
    },
}

/// GET `path` from the pilot's admin port: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), PilotError> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| PilotError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| PilotError::Http { addr, source })?;
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|_| PilotError::Status {
                addr,
                path: path.to_owned(),
                status: 0,
                body: "not a request path".to_owned(),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| PilotError::Http { addr, source })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| PilotError::Http { addr, source })?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| PilotError::Timeout { addr })?
}

/// GET `path`, which must answer 200 with JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
) -> Result<T, PilotError> {
    let (status, body) = get(addr, path).await?;
    if status != 200 {
        return Err(PilotError::Status {
            addr,
            path: path.to_owned(),
            status,
            body: body.trim().to_owned(),
        });
    }
    serde_json::from_str(&body).map_err(|source| PilotError::Json {
        addr,
        path: path.to_owned(),
        source,
    })
}

/// The pilot's readiness, its connected sidecars and the objects it refused.
pub async fn status(addr: SocketAddr) -> Result<Status, PilotError> {
    let (code, ready) = get(addr, "/readyz").await?;
    let ready = if code == 200 {
        "ready".to_owned()
    } else {
        ready.trim().to_owned()
    };
    Ok(Status {
        pilot: addr.to_string(),
        ready,
        sidecars: get_json(addr, "/debug/streams").await?,
        refused: get_json(addr, "/debug/rejected").await?,
    })
}

/// The LaneGroups and Lanes the pilot holds, with the status it computes for them
/// (`/debug/lanes`): the local-mode source of `lanemeshctl lanes --pilot`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lanes {
    pub lane_groups: Vec<lanemesh_api::crd::LaneGroup>,
    pub lanes: Vec<lanemesh_api::crd::Lane>,
}

/// The lane objects the pilot holds, of `namespace` or of every namespace.
pub async fn lanes(addr: SocketAddr, namespace: Option<&str>) -> Result<Lanes, PilotError> {
    let mut held: Lanes = get_json(addr, "/debug/lanes").await?;
    if let Some(ns) = namespace {
        let in_ns = |m: &kube::core::ObjectMeta| m.namespace.as_deref() == Some(ns);
        held.lane_groups.retain(|g| in_ns(&g.metadata));
        held.lanes.retain(|l| in_ns(&l.metadata));
    }
    Ok(held)
}

/// `/debug/traffic`, the parts `lanemeshctl` reads.
#[derive(Debug, Clone, Deserialize)]
struct Traffic {
    enabled: bool,
    points: Vec<TrafficPoint>,
}

#[derive(Debug, Clone, Deserialize)]
struct TrafficPoint {
    /// Unix milliseconds.
    at: u64,
    apps: BTreeMap<String, AppRates>,
}

#[derive(Debug, Clone, Deserialize)]
struct AppRates {
    lanes: BTreeMap<String, Rates>,
}

#[derive(Debug, Clone, Deserialize)]
struct Rates {
    total: f64,
    errors: f64,
}

/// Per-app, per-lane rates the pilot measured over the last minute (as PromQL's
/// `rate(...[1m])`); `None` when it does not scrape (`--scrape-interval`) or has no point yet.
pub async fn lane_rates(addr: SocketAddr) -> Result<Option<crate::view::LaneRates>, PilotError> {
    let traffic: Traffic = get_json(addr, "/debug/traffic").await?;
    if !traffic.enabled {
        return Ok(None);
    }
    let Some(last) = traffic.points.last().map(|p| p.at) else {
        return Ok(None);
    };
    let minute: Vec<&TrafficPoint> = traffic
        .points
        .iter()
        .filter(|p| p.at + 60_000 > last)
        .collect();
    let n = minute.len() as f64;
    let mut rates = crate::view::LaneRates::new();
    for point in &minute {
        for (app, app_rates) in &point.apps {
            for (lane, r) in &app_rates.lanes {
                let sum = rates
                    .entry(app.clone())
                    .or_default()
                    .entry(lane.clone())
                    .or_default();
                sum.0 += r.total / n;
                sum.1 += r.errors / n;
            }
        }
    }
    Ok(Some(rates))
}

/// What the pilot serves pod `node` (`namespace/pod` or `pod`).
pub async fn proxy_config(addr: SocketAddr, node: &str) -> Result<serde_json::Value, PilotError> {
    let encoded: String = node
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    get_json(addr, &format!("/debug/snapshot?node={encoded}")).await
}
