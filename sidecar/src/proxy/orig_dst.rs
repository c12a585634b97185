//! Where a captured connection was going before iptables redirected it.
//!
//! In a pod the answer comes from the kernel (`SO_ORIGINAL_DST`); in-process
//! tests have no NAT, so they implement [`OriginalDst`] themselves
//! ([`PeerMap`], [`Fixed`]) and tell the proxy each connection's destination.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use socket2::SockRef;
use tokio::net::TcpStream;

/// Why the original destination of a connection is unknown.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The kernel has no NAT entry for the socket (not redirected by iptables).
    #[error("SO_ORIGINAL_DST unavailable for connection from {peer}: {source}")]
    Kernel {
        /// Client address.
        peer: SocketAddr,
        /// Error from getsockopt.
        source: std::io::Error,
    },
    /// The socket address cannot be read.
    #[error("cannot read socket address: {0}")]
    Socket(#[from] std::io::Error),
    /// A test seam has no entry for this client.
    #[error("no original destination registered for client {0}")]
    Unknown(SocketAddr),
}

/// Looks up the original destination of an accepted connection.
pub trait OriginalDst: Send + Sync + 'static {
    /// The address the client meant to reach. Called once per connection, before
    /// any byte is read.
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OrigDstError>;
}

/// The kernel's answer: `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6),
/// set by the iptables `REDIRECT` rules that `lanemesh-proxy init` installs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoOriginalDst;

impl OriginalDst for SoOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
        let peer = stream.peer_addr()?;
        let sock = SockRef::from(stream);
        let result = if stream.local_addr()?.is_ipv4() {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        };
        let addr = result.map_err(|source| OrigDstError::Kernel { peer, source })?;
        addr.as_socket().ok_or_else(|| OrigDstError::Kernel {
            peer,
            source: std::io::Error::other("original destination is not an IP address"),
        })
    }
}

/// Every connection is taken to have been going to one address.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub SocketAddr);

impl OriginalDst for Fixed {
    fn original_dst(&self, _stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
        Ok(self.0)
    }
}

/// Original destinations keyed by the client's address. A test binds its
/// client socket first, registers `(client address -> destination)`, then
/// connects, so the entry exists before the proxy accepts.
#[derive(Debug, Clone, Default)]
pub struct PeerMap {
    entries: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
}

impl PeerMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that connections from `client` were going to `dst`.
    pub fn insert(&self, client: SocketAddr, dst: SocketAddr) {
        // A poisoned map still holds valid entries (inserts cannot half-apply).
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client, dst);
    }
}

impl OriginalDst for PeerMap {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OrigDstError> {
        let peer = stream.peer_addr()?;
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .copied()
            .ok_or(OrigDstError::Unknown(peer))
    }
}

impl std::fmt::Debug for dyn OriginalDst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn OriginalDst")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn so_original_dst_without_nat_is_an_error_not_a_panic() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Without a REDIRECT rule Linux reports ENOENT; the proxy must treat it
        // as "unknown destination", never crash.
        match SoOriginalDst.original_dst(&server) {
            Err(OrigDstError::Kernel { .. }) => {}
            // Some kernels answer with the local address itself when there is no NAT entry.
            Ok(dst) => assert_eq!(dst, addr),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[tokio::test]
    async fn peer_map_answers_per_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let map = PeerMap::new();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dst: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        map.insert(socket.local_addr().unwrap(), dst);
        let _client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(map.original_dst(&server).unwrap(), dst);

        let _other = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(matches!(
            map.original_dst(&server),
            Err(OrigDstError::Unknown(_))
        ));
    }
}
