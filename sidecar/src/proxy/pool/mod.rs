//! Upstream connection pools, one set per data-plane worker, keyed by endpoint address:
//! [`Http1Pool`] keeps idle HTTP/1 sockets for the relay, [`Http2Pool`] one multiplexed HTTP/2
//! connection per endpoint. Both close connections left idle past `--pool-idle-timeout`.

mod http1;
mod http2;

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

pub use http1::{Http1Pool, Upstream};
pub use http2::{Http2Error, Http2Pool};

/// Why no connection could be established.
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
}

/// A TCP connection to `target` within `limit`, with Nagle off (heads and small bodies must not
/// wait for an ACK).
async fn connect(target: SocketAddr, limit: Duration) -> Result<TcpStream, PoolError> {
    let stream = match tokio::time::timeout(limit, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(PoolError::Connect { target, source }),
        Err(_) => return Err(PoolError::ConnectTimeout { target, limit }),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Starts, once per pool, a task that calls `sweep` every `period` until the pool is gone (or
/// the worker's runtime ends), so idle connections close even for endpoints that get no more
/// requests.
fn start_reaper<T, F>(once: &Once, pool: &Arc<T>, period: Duration, sweep: F)
where
    T: Send + Sync + 'static,
    F: Fn(&T, Instant) + Send + 'static,
{
    once.call_once(|| {
        let pool = Arc::downgrade(pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                sweep(&pool, Instant::now());
            }
        });
    });
}
