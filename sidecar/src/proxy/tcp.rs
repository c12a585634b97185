//! Opaque TCP: bytes in, bytes out, half-closes propagated.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

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

/// Connects to `target` and relays until both directions are closed. When
/// one side closes its write half, the other side's write half is shut down
/// too, so request/response protocols that signal "done" with a FIN work.
pub async fn relay<S>(
    mut client: S,
    target: SocketAddr,
    settings: PoolSettings,
) -> Result<Relayed, TcpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = connect(target, settings)
        .await
        .map_err(|error| match error {
            PoolError::Connect { target, source } => TcpError::Connect { target, source },
            PoolError::ConnectTimeout { target, limit } => TcpError::ConnectTimeout {
                target,
                timeout: limit,
            },
        })?;
    let (sent, received) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(|source| TcpError::Relay { target, source })?;
    Ok(Relayed { sent, received })
}
