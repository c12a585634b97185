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

use super::config::ProxyConfig;

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

/// How pools (and the opaque relay) open and keep upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// `--connect-timeout`.
    pub connect_timeout: Duration,
    /// `--pool-idle-timeout`.
    pub idle_timeout: Duration,
    /// `--tcp-keepalive`.
    pub keepalive: Duration,
    /// `--http2-keepalive`: PING interval and answer timeout on HTTP/2 upstream connections.
    pub http2_keepalive: Duration,
}

impl From<&ProxyConfig> for PoolSettings {
    fn from(config: &ProxyConfig) -> Self {
        Self {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            keepalive: config.tcp_keepalive,
            http2_keepalive: config.http2_keepalive,
        }
    }
}

/// A TCP connection to `target`, tuned with [`tune`].
pub(crate) async fn connect(
    target: SocketAddr,
    settings: PoolSettings,
) -> Result<TcpStream, PoolError> {
    let limit = settings.connect_timeout;
    let stream = match tokio::time::timeout(limit, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(PoolError::Connect { target, source }),
        Err(_) => return Err(PoolError::ConnectTimeout { target, limit }),
    };
    tune(&stream, settings.keepalive);
    Ok(stream)
}

/// Nagle off (heads and small bodies must not wait for an ACK) and TCP keepalive on (a vanished
/// peer's connection is closed by the kernel). Best effort: a socket that refuses still works.
pub(crate) fn tune(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let probes = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&probes);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn upstream_sockets_get_nodelay_and_the_configured_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(90),
            keepalive: Duration::from_secs(7),
            http2_keepalive: Duration::from_secs(20),
        };
        let stream = connect(listener.local_addr().unwrap(), settings)
            .await
            .unwrap();
        let socket = socket2::SockRef::from(&stream);
        assert!(stream.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_endpoint() {
        // Bind and drop: nothing listens on the port afterwards.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(90),
            keepalive: Duration::from_secs(10),
            http2_keepalive: Duration::from_secs(20),
        };
        let error = connect(addr, settings).await.unwrap_err();
        assert!(matches!(error, PoolError::Connect { target, .. } if target == addr));
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
