//! HTTP/1 upstream connections, kept per endpoint and reused (keep-alive). Each data-plane
//! worker has its own pool, so checking a connection out and back in is an uncontended lock and
//! a hash lookup, and the connection's reads and writes happen in the task of the client
//! connection that uses it (no connection task, no channel between the two).
//!
//! An idle connection the upstream has closed is noticed when it is checked out (its socket
//! reads end-of-file without blocking) and when the reaper finds it expired.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{PoolError, PoolSettings, connect, start_reaper};

/// Read buffer of a new upstream connection; grows for larger heads.
const READ_BUFFER: usize = 8 * 1024;

/// One HTTP/1 connection to an upstream, with the bytes read from it but not yet consumed.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Read buffer.
    pub buf: BytesMut,
    /// Came from the pool (it served a request before), so the upstream may have closed it
    /// just now: a request that fails on it before any response byte can be retried.
    pub reused: bool,
}

impl Upstream {
    /// Whether the idle connection can still carry a request: the upstream has not closed it
    /// and sent nothing unasked. Never blocks.
    fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

struct Idle {
    upstream: Upstream,
    since: Instant,
}

struct Inner {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    settings: PoolSettings,
    reaper: std::sync::Once,
}

/// Pooled HTTP/1 upstream connections, keyed by endpoint.
#[derive(Clone)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                settings,
                reaper: std::sync::Once::new(),
            }),
        }
    }

    /// The most recently used idle connection to `target` that is still usable.
    pub fn checkout(&self, target: SocketAddr) -> Option<Upstream> {
        let now = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&target)?;
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) < self.inner.settings.idle_timeout
                && entry.upstream.is_usable()
            {
                let mut upstream = entry.upstream;
                upstream.reused = true;
                return Some(upstream);
            }
        }
        None
    }

    /// A new connection to `target`.
    pub async fn connect(&self, target: SocketAddr) -> Result<Upstream, PoolError> {
        let stream = connect(target, self.inner.settings).await?;
        self.start_reaper();
        Ok(Upstream {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            reused: false,
        })
    }

    /// Keeps a connection whose last exchange ended cleanly for the next request to `target`.
    pub fn give_back(&self, target: SocketAddr, upstream: Upstream) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(target).or_default().push(Idle {
            upstream,
            since: Instant::now(),
        });
    }

    /// Closes connections that stayed idle past the idle timeout, even for endpoints that get
    /// no more requests.
    fn start_reaper(&self) {
        start_reaper(
            &self.inner.reaper,
            &self.inner,
            self.inner.settings.idle_timeout,
            |inner, now| {
                let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.retain(|_, list| {
                    list.retain(|entry| {
                        now.duration_since(entry.since) < inner.settings.idle_timeout
                            && entry.upstream.is_usable()
                    });
                    !list.is_empty()
                });
            },
        );
    }
}
