//! The pilot's admin endpoints (`--pilot <addr>`, its port 15014 reached directly or through
//! `kubectl port-forward`): connected sidecars, what the pilot serves a pod, refused objects.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
