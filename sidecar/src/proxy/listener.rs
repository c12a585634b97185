//! The two capture listeners and the per-connection pipeline:
//! accept -> original destination -> detect -> HTTP or opaque TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::{ConfigError, ProxyConfig};

use super::detect::{self, Protocol};
use super::http::HttpProxy;
use super::orig_dst::OriginalDst;
use super::rewind::Rewind;
use super::router::{ConnContext, Direction, Router, TcpDecision};
use super::shutdown::{self, ShutdownHandle, ShutdownSignal};
use super::tcp;

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The flags are inconsistent.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A capture listener cannot bind its port.
    #[error("cannot listen on {addr} ({direction} capture): {source}")]
    Bind {
        /// Listener role.
        direction: &'static str,
        /// Address we tried.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// How the drain after a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the grace period ran out (then closed).
    pub abandoned: usize,
}

/// State every connection task shares (read-only).
#[derive(Debug)]
struct Shared {
    config: ProxyConfig,
    server_first_ports: Vec<u16>,
    orig_dst: Arc<dyn OriginalDst>,
    router: Arc<dyn Router>,
    http: Arc<HttpProxy>,
}

/// The bound capture listeners, ready to [`Proxy::run`].
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    outbound: TcpListener,
    inbound: TcpListener,
    shutdown: ShutdownHandle,
    signal: ShutdownSignal,
}

impl Proxy {
    /// Validates `config` and binds both capture listeners (port 0 picks a
    /// free port, for tests).
    pub async fn bind(
        config: ProxyConfig,
        router: Arc<dyn Router>,
        orig_dst: Arc<dyn OriginalDst>,
    ) -> Result<Self, ProxyError> {
        config.validate()?;
        let outbound = listen(
            Direction::Outbound,
            config.bind_address,
            config.outbound_port,
        )
        .await?;
        let inbound = listen(Direction::Inbound, config.bind_address, config.inbound_port).await?;
        let mut server_first_ports = config.server_first_ports.clone();
        server_first_ports.sort_unstable();
        server_first_ports.dedup();
        let http = Arc::new(HttpProxy::new(&config, Arc::clone(&router)));
        let (shutdown, signal) = shutdown::channel();
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                server_first_ports,
                orig_dst,
                router,
                http,
            }),
            outbound,
            inbound,
            shutdown,
            signal,
        })
    }

    /// Address of the outbound capture listener.
    pub fn outbound_addr(&self) -> SocketAddr {
        // A bound listener always has a local address; fall back to the
        // unspecified one rather than panic if the OS disagrees.
        self.outbound
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Address of the inbound capture listener.
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Handle that starts the graceful shutdown (SIGTERM handler, admin).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Accepts and serves connections until the shutdown is triggered, then
    /// stops accepting, lets in-flight work finish within the grace period,
    /// closes what is left and returns.
    pub async fn run(self) -> DrainReport {
        let Self {
            shared,
            outbound,
            inbound,
            shutdown: _keep_sender_alive,
            mut signal,
        } = self;
        let graceful = GracefulShutdown::new();
        let mut conns = JoinSet::new();
        tracing::info!(
            outbound = ?outbound.local_addr().ok(),
            inbound = ?inbound.local_addr().ok(),
            "capture listeners ready"
        );
        loop {
            tokio::select! {
                () = signal.triggered() => break,
                accepted = outbound.accept() => {
                    spawn_conn(&shared, &graceful, &mut conns, Direction::Outbound, accepted).await;
                }
                accepted = inbound.accept() => {
                    spawn_conn(&shared, &graceful, &mut conns, Direction::Inbound, accepted).await;
                }
                Some(done) = conns.join_next(), if !conns.is_empty() => {
                    if let Err(error) = done
                        && error.is_panic()
                    {
                        tracing::error!(%error, "connection task panicked");
                    }
                }
            }
        }
        // Closing the listeners makes new connection attempts fail at once.
        drop(outbound);
        drop(inbound);
        let grace = shared.config.grace_period;
        tracing::info!(in_flight = conns.len(), ?grace, "draining connections");
        let drain = async {
            graceful.shutdown().await;
            while conns.join_next().await.is_some() {}
        };
        let drained = tokio::time::timeout(grace, drain).await.is_ok();
        let abandoned = if drained { 0 } else { conns.len() };
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "grace period over; closing remaining connections"
            );
        }
        conns.shutdown().await;
        DrainReport { abandoned }
    }
}

async fn listen(
    direction: Direction,
    ip: std::net::IpAddr,
    port: u16,
) -> Result<TcpListener, ProxyError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind {
            direction: direction.as_str(),
            addr,
            source,
        })
}

async fn spawn_conn(
    shared: &Arc<Shared>,
    graceful: &GracefulShutdown,
    conns: &mut JoinSet<()>,
    direction: Direction,
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) {
    match accepted {
        Ok((stream, peer)) => {
            let span = tracing::debug_span!("conn", direction = direction.as_str(), %peer);
            // The watcher is taken now, so a shutdown that fires while this
            // connection is still detecting its protocol is not missed.
            let watcher = graceful.watcher();
            conns.spawn(
                handle_conn(Arc::clone(shared), direction, stream, peer, watcher).instrument(span),
            );
        }
        Err(error) => {
            // Usually EMFILE/ENFILE: back off instead of spinning on accept.
            tracing::warn!(%error, direction = direction.as_str(), "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle_conn(
    shared: Arc<Shared>,
    direction: Direction,
    mut stream: TcpStream,
    peer: SocketAddr,
    watcher: Watcher,
) {
    let original_dst = match shared.orig_dst.original_dst(&stream) {
        Ok(dst) => dst,
        Err(error) => {
            tracing::warn!(%error, "dropping connection with unknown original destination");
            return;
        }
    };
    if stream.local_addr().is_ok_and(|local| local == original_dst) {
        // Connected to the capture port directly, not redirected: forwarding
        // would connect back to ourselves forever.
        tracing::warn!(%original_dst, "dropping connection addressed to the proxy itself");
        return;
    }
    let _ = stream.set_nodelay(true);
    let conn = ConnContext::new(direction, peer, original_dst, shared.config.app_address);
    let _connection = shared.router.open_connection(&conn);
    let (protocol, prefix) = if shared
        .server_first_ports
        .binary_search(&original_dst.port())
        .is_ok()
    {
        (Protocol::Opaque, BytesMut::new())
    } else {
        detect::detect(
            &mut stream,
            shared.config.detect_timeout,
            shared.config.detect_max_bytes,
        )
        .await
    };
    tracing::debug!(%original_dst, ?protocol, "connection classified");
    let io = Rewind::new(prefix, stream);
    match protocol {
        Protocol::Http1 | Protocol::Http2 => shared.http.serve(conn, io, watcher).await,
        Protocol::Opaque => {
            drop(watcher);
            let target = match shared.router.route_tcp(&conn) {
                TcpDecision::Passthrough => conn.default_target,
                TcpDecision::Forward(target) => target,
                TcpDecision::Reject => {
                    tracing::debug!("tcp connection rejected by router");
                    return;
                }
            };
            match tcp::relay(io, target, shared.config.connect_timeout).await {
                Ok(relayed) => tracing::debug!(%target, ?relayed, "tcp relay done"),
                Err(error) => tracing::debug!(%error, "tcp relay ended"),
            }
        }
    }
}
