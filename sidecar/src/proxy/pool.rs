//! HTTP/1 upstream connections, kept per endpoint and reused (keep-alive).
//!
//! A lean replacement for hyper-util's legacy client on the HTTP/1 path, which costs per request
//! a boxed response future, a pool key hashed from the URI's authority, a URI rewrite and, when
//! the response body is still being read, a spawned task that waits to put the connection back.
//! Here the key is the endpoint's socket address, the request goes out in the form it arrived in,
//! and a connection returns to the pool as soon as hyper says it can take the next request.
//!
//! Behaviour kept from the legacy client: TCP_NODELAY and a connect timeout on new connections,
//! HTTP/1 upgrades (the connection task runs `with_upgrades`), idle connections closed after the
//! idle timeout, and a request that a reused connection refused before sending it (the upstream
//! closed the connection meanwhile) retried on another connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP connect failed.
    #[error("connect to {target}: {source}")]
    Connect {
        /// Endpoint.
        target: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// TCP connect did not finish in time.
    #[error("connect to {target}: timed out after {limit:?}")]
    ConnectTimeout {
        /// Endpoint.
        target: SocketAddr,
        /// The connect timeout.
        limit: Duration,
    },
    /// The HTTP/1 exchange failed (reset, closed, malformed response).
    #[error("http/1 exchange with {target}: {source}")]
    Exchange {
        /// Endpoint.
        target: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

impl PoolError {
    /// No connection could be established (as opposed to one failing mid-exchange).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }
}

type Sender = SendRequest<Incoming>;

struct Idle {
    sender: Sender,
    since: Instant,
}

struct Inner {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    reaper: std::sync::Once,
}

/// Pooled HTTP/1 client connections, keyed by endpoint.
#[derive(Clone)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                idle_timeout,
                connect_timeout,
                reaper: std::sync::Once::new(),
            }),
        }
    }

    /// Sends `req` (URI already in the form the upstream should see) to `target` on an idle
    /// connection, or a new one. The [`Lease`] gives the connection back when dropped, or right
    /// away if the connection is already free for the next request.
    pub async fn send(
        &self,
        target: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        while let Some(mut sender) = self.checkout(target) {
            if sender.ready().await.is_err() {
                // Closed by the upstream while idle.
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(target, sender))),
                Err(mut error) => match error.take_message() {
                    // Never sent: the connection went away first; try another one.
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(PoolError::Exchange {
                            target,
                            source: error.into_error(),
                        });
                    }
                },
            }
        }
        let mut sender = self.connect(target).await?;
        let exchange = |source| PoolError::Exchange { target, source };
        sender.ready().await.map_err(exchange)?;
        let resp = sender.send_request(req).await.map_err(exchange)?;
        Ok((resp, self.lease(target, sender)))
    }

    fn lease(&self, target: SocketAddr, sender: Sender) -> Lease {
        let mut lease = Lease {
            pool: Arc::downgrade(&self.inner),
            target,
            sender: Some(sender),
        };
        // Small bodies are usually read in full with the head: the connection is free already.
        if lease.sender.as_ref().is_some_and(Sender::is_ready) {
            lease.give_back();
        }
        lease
    }

    /// The most recently used idle connection that is still open and not expired.
    fn checkout(&self, target: SocketAddr) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&target)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed()
                && now.duration_since(entry.since) < self.inner.idle_timeout
            {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect(&self, target: SocketAddr) -> Result<Sender, PoolError> {
        let limit = self.inner.connect_timeout;
        let stream = match tokio::time::timeout(limit, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(PoolError::Connect { target, source }),
            Err(_) => return Err(PoolError::ConnectTimeout { target, limit }),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| PoolError::Exchange { target, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%target, %error, "upstream connection ended with error");
            }
        });
        self.start_reaper();
        Ok(sender)
    }

    /// Closes connections that stayed idle past the idle timeout, even for endpoints that get
    /// no more requests. The task ends with the pool.
    fn start_reaper(&self) {
        self.inner.reaper.call_once(|| {
            let pool = Arc::downgrade(&self.inner);
            let period = self.inner.idle_timeout;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    let Some(inner) = pool.upgrade() else { return };
                    let now = Instant::now();
                    let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
                    idle.retain(|_, list| {
                        list.retain(|entry| {
                            !entry.sender.is_closed()
                                && now.duration_since(entry.since) < inner.idle_timeout
                        });
                        !list.is_empty()
                    });
                }
            });
        });
    }
}

/// A connection in use by one exchange. Dropping it returns the connection to the pool once it
/// is free (after the response body was read), or lets it close if it cannot be reused.
pub struct Lease {
    pool: Weak<Inner>,
    target: SocketAddr,
    sender: Option<Sender>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("target", &self.target)
            .field("held", &self.sender.is_some())
            .finish()
    }
}

impl Lease {
    fn give_back(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if sender.is_ready() {
            put(&pool, self.target, sender);
            return;
        }
        // Still finishing the previous exchange: wait for it off the request path. A body that
        // was abandoned closes the connection, which ends the wait with an error.
        let pool = Arc::downgrade(&pool);
        let target = self.target;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut sender = sender;
                if sender.ready().await.is_ok()
                    && let Some(pool) = pool.upgrade()
                {
                    put(&pool, target, sender);
                }
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.give_back();
    }
}

fn put(pool: &Inner, target: SocketAddr, sender: Sender) {
    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
    idle.entry(target).or_default().push(Idle {
        sender,
        since: Instant::now(),
    });
}
