//! HTTP/2 upstream connections: one multiplexed connection per endpoint, shared by every
//! request of the worker to that endpoint. Requests keep their own `:scheme` and `:authority`
//! (the connection is chosen by endpoint address, not by URI), so an upstream sees the authority
//! its caller used, as it would without the mesh.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::{PoolError, PoolSettings, connect, start_reaper};
use crate::proxy::replay::UpstreamBody;

/// Why an HTTP/2 request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    /// No TCP connection.
    #[error(transparent)]
    Connect(#[from] PoolError),
    /// The HTTP/2 handshake failed (the endpoint does not speak HTTP/2 with prior knowledge).
    #[error("http/2 handshake with {target}: {source}")]
    Handshake {
        /// Endpoint.
        target: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
    /// The stream failed (reset, GOAWAY after it was sent, connection lost).
    #[error("http/2 exchange with {target}: {source}")]
    Exchange {
        /// Endpoint.
        target: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

impl Http2Error {
    /// No connection to the endpoint could be established.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Handshake { .. })
    }
}

type Sender = SendRequest<UpstreamBody>;

struct Entry {
    sender: Sender,
    last_used: Instant,
}

struct Inner {
    conns: Mutex<HashMap<SocketAddr, Entry>>,
    settings: PoolSettings,
    reaper: Once,
}

/// One HTTP/2 connection per endpoint.
#[derive(Clone)]
pub struct Http2Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Http2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Pool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Http2Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                conns: Mutex::new(HashMap::new()),
                settings,
                reaper: Once::new(),
            }),
        }
    }

    /// Sends `req` (absolute URI: its scheme and authority become `:scheme` and `:authority`)
    /// to `target`. A request the pooled connection refused before sending it (the connection
    /// was closing) goes out on a new connection.
    pub async fn send(
        &self,
        target: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Http2Error> {
        let exchange = |source| Http2Error::Exchange { target, source };
        if let Some(mut sender) = self.pooled(target) {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(exchange(error.into_error())),
                    },
                }
            }
            self.forget(target);
        }
        let mut sender = self.connect(target).await?;
        sender.ready().await.map_err(exchange)?;
        sender.send_request(req).await.map_err(exchange)
    }

    /// The endpoint's connection, if it is still open.
    fn pooled(&self, target: SocketAddr) -> Option<Sender> {
        let mut conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        let entry = conns.get_mut(&target)?;
        if entry.sender.is_closed() {
            conns.remove(&target);
            return None;
        }
        entry.last_used = Instant::now();
        Some(entry.sender.clone())
    }

    fn forget(&self, target: SocketAddr) {
        let mut conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.remove(&target);
    }

    async fn connect(&self, target: SocketAddr) -> Result<Sender, Http2Error> {
        let stream = connect(target, self.inner.settings).await?;
        let keepalive = self.inner.settings.http2_keepalive;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // An upstream that stops answering is noticed, and its streams fail over.
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Http2Error::Handshake { target, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%target, %error, "upstream http/2 connection ended with error");
            }
        });
        let mut conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        // A concurrent request may have connected too: the newer connection serves from now on,
        // the other one closes when its last stream ends.
        conns.insert(
            target,
            Entry {
                sender: sender.clone(),
                last_used: Instant::now(),
            },
        );
        drop(conns);
        start_reaper(
            &self.inner.reaper,
            &self.inner,
            self.inner.settings.idle_timeout,
            |inner, now| {
                let mut conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
                // Dropping the pool's handle lets hyper close the connection once its open
                // streams (if any) are done.
                conns.retain(|_, entry| {
                    !entry.sender.is_closed()
                        && now.duration_since(entry.last_used) < inner.settings.idle_timeout
                });
            },
        );
        Ok(sender)
    }
}
