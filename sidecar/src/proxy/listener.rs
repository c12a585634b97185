//! The two capture listeners and the per-connection pipeline:
//! accept -> original destination -> detect -> HTTP or opaque TCP.
//!
//! The data plane runs thread per core, like Envoy's workers: each worker thread owns a
//! single-threaded tokio runtime, its own pair of capture sockets (`SO_REUSEPORT`, so the
//! kernel spreads new connections over the workers) and its own upstream connection pools. A
//! connection, its upstream exchanges and their wake-ups then stay on one thread: no
//! work-stealing scheduler, no cross-thread wake-ups and no shared pool lock on the request path,
//! which is most of what a multi-threaded runtime costs a proxy on top of its syscalls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
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
    /// A worker's runtime could not be built (out of threads or file descriptors).
    #[error("cannot start data-plane worker {worker}: {source}")]
    Worker {
        /// Worker index.
        worker: usize,
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
}

/// One data-plane worker before it runs: its runtime and its two capture sockets.
#[derive(Debug)]
struct Worker {
    runtime: tokio::runtime::Runtime,
    outbound: std::net::TcpListener,
    inbound: std::net::TcpListener,
}

/// The bound capture listeners, ready to [`Proxy::run`].
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    outbound_addr: SocketAddr,
    inbound_addr: SocketAddr,
    shutdown: ShutdownHandle,
    signal: ShutdownSignal,
}

impl Proxy {
    /// Validates `config` and binds both capture listeners once per worker (port 0 picks a
    /// free port, for tests). Workers: [`ProxyConfig::workers`], else one per host CPU.
    pub async fn bind(
        config: ProxyConfig,
        router: Arc<dyn Router>,
        orig_dst: Arc<dyn OriginalDst>,
    ) -> Result<Self, ProxyError> {
        config.validate()?;
        let count = config.workers().unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        let outbound = listen_group(
            Direction::Outbound,
            SocketAddr::new(config.bind_address, config.outbound_port),
            count,
        )?;
        let inbound = listen_group(
            Direction::Inbound,
            SocketAddr::new(config.bind_address, config.inbound_port),
            count,
        )?;
        let outbound_addr = local_addr(&outbound);
        let inbound_addr = local_addr(&inbound);
        let workers = outbound
            .into_iter()
            .zip(inbound)
            .enumerate()
            .map(|(worker, (outbound, inbound))| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| ProxyError::Worker { worker, source })?;
                Ok(Worker {
                    runtime,
                    outbound,
                    inbound,
                })
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let mut server_first_ports = config.server_first_ports.clone();
        server_first_ports.sort_unstable();
        server_first_ports.dedup();
        let (shutdown, signal) = shutdown::channel();
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                server_first_ports,
                orig_dst,
                router,
            }),
            workers,
            outbound_addr,
            inbound_addr,
            shutdown,
            signal,
        })
    }

    /// Address of the outbound capture listener.
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    /// Address of the inbound capture listener.
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    /// Handle that starts the graceful shutdown (SIGTERM handler, admin).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Starts the workers, which accept and serve connections until the shutdown is triggered,
    /// then stop accepting, let in-flight work finish within the grace period, close what is
    /// left and return. Resolves when every worker has.
    pub async fn run(self) -> DrainReport {
        let Self {
            shared,
            workers,
            outbound_addr,
            inbound_addr,
            shutdown: _keep_sender_alive,
            signal,
        } = self;
        tracing::info!(
            outbound = %outbound_addr,
            inbound = %inbound_addr,
            workers = workers.len(),
            "capture listeners ready"
        );
        let mut reports = Vec::with_capacity(workers.len());
        for (index, worker) in workers.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let shared = Arc::clone(&shared);
            let signal = signal.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lanemesh-worker-{index}"))
                .spawn(move || {
                    let Worker {
                        runtime,
                        outbound,
                        inbound,
                    } = worker;
                    let report = runtime.block_on(serve_worker(shared, outbound, inbound, signal));
                    // Dropping the runtime closes what the worker still owned (pooled upstream
                    // connections) before the report says it is done.
                    drop(runtime);
                    let _ = tx.send(report);
                });
            match spawned {
                Ok(_detached) => reports.push(rx),
                Err(error) => {
                    // The other workers still serve; their sockets take this one's share.
                    tracing::error!(worker = index, %error, "cannot start data-plane worker thread");
                }
            }
        }
        let mut total = DrainReport { abandoned: 0 };
        for (index, report) in reports.into_iter().enumerate() {
            match report.await {
                Ok(report) => total.abandoned += report.abandoned,
                Err(_) => tracing::error!(worker = index, "data-plane worker panicked"),
            }
        }
        total
    }
}

/// One worker's accept loop and drain, on its own runtime.
async fn serve_worker(
    shared: Arc<Shared>,
    outbound: std::net::TcpListener,
    inbound: std::net::TcpListener,
    mut signal: ShutdownSignal,
) -> DrainReport {
    let (outbound, inbound) = match (
        TcpListener::from_std(outbound),
        TcpListener::from_std(inbound),
    ) {
        (Ok(outbound), Ok(inbound)) => (outbound, inbound),
        (Err(error), _) | (_, Err(error)) => {
            // Registering a socket with this runtime's epoll failed (out of memory or
            // descriptors): the other workers' sockets still take the connections.
            tracing::error!(%error, "worker cannot register its capture sockets");
            return DrainReport { abandoned: 0 };
        }
    };
    let http = Arc::new(HttpProxy::new(&shared.config, Arc::clone(&shared.router)));
    // Connections wait for the shutdown on a signal of their own worker: every idle HTTP/1
    // connection registers with it between requests, and a signal shared by all workers would
    // make those registrations contend across threads.
    let (stop_connections, connection_signal) = shutdown::channel();
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = signal.triggered() => break,
            accepted = outbound.accept() => {
                spawn_conn(&shared, &http, &connection_signal, &graceful, &mut conns, Direction::Outbound, accepted).await;
            }
            accepted = inbound.accept() => {
                spawn_conn(&shared, &http, &connection_signal, &graceful, &mut conns, Direction::Inbound, accepted).await;
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
    stop_connections.trigger();
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

/// `count` listening sockets on one address, in one `SO_REUSEPORT` group (the kernel hashes
/// each new connection to one of them). Port 0 binds the first socket to a free port and the
/// rest to the same one.
fn listen_group(
    direction: Direction,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let error = |addr, source| ProxyError::Bind {
        direction: direction.as_str(),
        addr,
        source,
    };
    if addr.port() != 0 {
        // SO_REUSEPORT would let this proxy share the port with a proxy that is still running
        // (same UID) and silently take half its connections: make sure nobody listens first.
        // A plain bind fails with EADDRINUSE then; it is released again at once.
        std::net::TcpListener::bind(addr).map_err(|source| error(addr, source))?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = reuseport_listener(bound).map_err(|source| error(bound, source))?;
        bound = socket.local_addr().map_err(|source| error(bound, source))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn local_addr(group: &[std::net::TcpListener]) -> SocketAddr {
    // A bound listener always has a local address; fall back to the unspecified one rather
    // than panic if the OS disagrees.
    group
        .first()
        .and_then(|socket| socket.local_addr().ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[allow(clippy::too_many_arguments)]
async fn spawn_conn(
    shared: &Arc<Shared>,
    http: &Arc<HttpProxy>,
    signal: &ShutdownSignal,
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
                handle_conn(
                    Arc::clone(shared),
                    Arc::clone(http),
                    signal.clone(),
                    direction,
                    stream,
                    peer,
                    watcher,
                )
                .instrument(span),
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
    http: Arc<HttpProxy>,
    signal: ShutdownSignal,
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
    super::pool::tune(&stream, shared.config.tcp_keepalive);
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
    match protocol {
        Protocol::Http1 => {
            drop(watcher);
            http.serve_http1(conn, stream, prefix, signal).await;
        }
        Protocol::Http2 => http.serve(conn, Rewind::new(prefix, stream), watcher).await,
        Protocol::Opaque => {
            let io = Rewind::new(prefix, stream);
            drop(watcher);
            let target = match shared.router.route_tcp(&conn) {
                TcpDecision::Passthrough => conn.default_target,
                TcpDecision::Forward(target) => target,
                TcpDecision::Reject => {
                    tracing::debug!("tcp connection rejected by router");
                    return;
                }
            };
            match tcp::relay(io, target, (&shared.config).into()).await {
                Ok(relayed) => tracing::debug!(%target, ?relayed, "tcp relay done"),
                Err(error) => tracing::debug!(%error, "tcp relay ended"),
            }
        }
    }
}
