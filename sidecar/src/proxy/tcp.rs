//! Opaque TCP: bytes in, bytes out, half-closes propagated.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pool::{PoolError, PoolSettings, connect};

/// Why an opaque connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The upstream refused or did not answer.
    #[error("connect to {target} failed: {source}")]
    Connect {
        /// Upstream address.
        target: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The upstream did not accept the connection in time.
    #[error("connect to {target} timed out after {timeout:?}")]
    ConnectTimeout {
        /// Upstream address.
        target: SocketAddr,
        /// Configured connect timeout.
        timeout: Duration,
    },
    /// No byte moved either way for the idle timeout.
    #[error("relay with {target} idle for {idle:?}: closed")]
    Idle {
        /// Upstream address.
        target: SocketAddr,
        /// Configured idle timeout.
        idle: Duration,
    },
    /// Copying failed mid-stream (usually a reset).
    #[error("relay with {target} failed: {source}")]
    Relay {
        /// Upstream address.
        target: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Bytes moved by one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Client to upstream.
    pub sent: u64,
    /// Upstream to client.
    pub received: u64,
}

/// Connects to `target` for an opaque relay.
pub async fn connect_upstream(
    target: SocketAddr,
    settings: PoolSettings,
) -> Result<TcpStream, TcpError> {
    connect(target, settings)
        .await
        .map_err(|error| match error {
            PoolError::Connect { target, source } => TcpError::Connect { target, source },
            PoolError::ConnectTimeout { target, limit } => TcpError::ConnectTimeout {
                target,
                timeout: limit,
            },
        })
}

/// Relays between `client` and the connected `upstream` (at `target`) until both directions
/// are closed, or until no byte moved either way for `idle`. When one side closes its write
/// half, the other side's write half is shut down too, so request/response protocols that
/// signal "done" with a FIN work.
pub async fn relay<S>(
    client: S,
    mut upstream: TcpStream,
    target: SocketAddr,
    idle: Duration,
) -> Result<Relayed, TcpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    // Every relayed byte is read from or written to the client, so watching the client side
    // sees all traffic.
    let mut client = Active {
        inner: client,
        epoch,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let seen = last.load(Ordering::Relaxed);
        let quiet_since = epoch + Duration::from_millis(seen);
        tokio::select! {
            copied = &mut copy => {
                let (sent, received) = copied.map_err(|source| TcpError::Relay { target, source })?;
                return Ok(Relayed { sent, received });
            }
            () = tokio::time::sleep_until((quiet_since + idle).into()) => {
                if last.load(Ordering::Relaxed) == seen {
                    return Err(TcpError::Idle { target, idle });
                }
            }
        }
    }
}

/// A stream that notes when it last moved a byte (milliseconds since `epoch`).
struct Active<'a, S> {
    inner: S,
    epoch: Instant,
    last: &'a AtomicU64,
}

impl<S> Active<'_, S> {
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
