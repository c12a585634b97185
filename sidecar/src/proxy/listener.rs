//! The two capture listeners and the per-connection pipeline:
//! accept -> original destination -> detect -> HTTP or opaque TCP.
//!
//! The data plane runs thread per core, like Envoy's workers: each worker thread owns a
//! single-threaded tokio runtime, its own pair of capture sockets (`SO_REUSEPORT`, so the
//! kernel spreads new connections over the workers) and its own upstream connection pools. A
//! connection, its upstream exchanges and their wake-ups then stay on one thread: no
//! work-stealing scheduler, no cross-thread wake-ups and no shared pool lock on the request path,
//! which is most of what a multi-threaded runtime costs a proxy on top of its syscalls.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::config::{ConfigError, ProxyConfig};
use super::detect::{self, Protocol};
use super::http::HttpProxy;
use super::orig_dst::OriginalDst;
use super::rewind::Rewind;
use super::router::{ConnContext, Direction, PortProtocol, Router, TcpDecision};
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
    /// The proxy's own ports that inbound traffic must never reach (see [`Shared::refusal`]).
    own_ports: Vec<u16>,
    /// Open connections per listener kind (outbound, inbound, gateway), across workers.
    open: [AtomicUsize; 3],
    orig_dst: Arc<dyn OriginalDst>,
    router: Arc<dyn Router>,
}

/// One of a listener's [`ProxyConfig::max_connections`] slots, given back on drop.
struct ConnSlot {
    shared: Arc<Shared>,
    direction: Direction,
}

impl ConnSlot {
    /// Takes a slot of `direction`'s listener; `None` when all are taken.
    fn take(shared: &Arc<Shared>, direction: Direction) -> Option<Self> {
        let open = &shared.open[direction as usize];
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < shared.config.max_connections).then_some(n + 1)
        })
        .ok()?;
        Some(Self {
            shared: Arc::clone(shared),
            direction,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.shared.open[self.direction as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Connections open in every worker, of every listener.
    fn open_total(&self) -> usize {
        self.open.iter().map(|n| n.load(Ordering::Acquire)).sum()
    }

    /// Why an inbound connection must not be delivered, if it must not. Inbound traffic is
    /// delivered to the address it was sent to, so a caller naming one of the proxy's own
    /// ports (admin `/shutdown`, `/config_dump`, the capture listeners) would otherwise reach
    /// the proxy from outside the pod; and a loopback destination from a non-loopback peer can
    /// only be a spoof that aims at what the pod keeps private.
    fn refusal(&self, conn: &ConnContext) -> Option<&'static str> {
        if conn.direction != Direction::Inbound {
            return None;
        }
        let dst = conn.original_dst;
        if self.own_ports.contains(&dst.port()) {
            return Some("the proxy's own port");
        }
        if dst.ip().is_loopback() && !conn.peer.ip().is_loopback() {
            return Some("a loopback address");
        }
        None
    }
}

/// One data-plane worker before it runs: its runtime and its sockets.
#[derive(Debug)]
struct Worker {
    runtime: tokio::runtime::Runtime,
    sockets: Sockets<std::net::TcpListener>,
}

/// A worker's listening sockets: the two capture ports of a sidecar, or a gateway's ports. Each
/// port has the IPv4 (or configured) socket, plus an IPv6 one on dual-stack hosts.
#[derive(Debug)]
struct Sockets<L> {
    outbound: Vec<L>,
    inbound: Vec<L>,
    gateway: Vec<L>,
}

/// The bound capture listeners, ready to [`Proxy::run`].
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    outbound_addr: SocketAddr,
    inbound_addr: SocketAddr,
    gateway_addrs: Vec<SocketAddr>,
    shutdown: ShutdownHandle,
    signal: ShutdownSignal,
}

impl Proxy {
    /// Validates `config` and binds its listeners once per worker: the two capture listeners,
    /// or in gateway mode ([`ProxyConfig::gateway_ports`]) the gateway's (port 0 picks a free
    /// port, for tests). Workers: [`ProxyConfig::workers`], else one per host CPU.
    pub async fn bind(
        config: ProxyConfig,
        router: Arc<dyn Router>,
        orig_dst: Arc<dyn OriginalDst>,
    ) -> Result<Self, ProxyError> {
        config.validate()?;
        let count = config.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        let listeners: Vec<(Direction, u16)> = if config.gateway_ports.is_empty() {
            vec![
                (Direction::Outbound, config.outbound_port),
                (Direction::Inbound, config.inbound_port),
            ]
        } else {
            config
                .gateway_ports
                .iter()
                .map(|port| (Direction::Gateway, *port))
                .collect()
        };
        let mut per_worker: Vec<Sockets<std::net::TcpListener>> = (0..count.max(1))
            .map(|_| Sockets {
                outbound: Vec::new(),
                inbound: Vec::new(),
                gateway: Vec::new(),
            })
            .collect();
        let unbound = SocketAddr::new(config.bind_address, 0);
        let (mut outbound_addr, mut inbound_addr) = (unbound, unbound);
        let mut gateway_addrs = Vec::new();
        for (direction, port) in listeners {
            let group = listen_group(direction, SocketAddr::new(config.bind_address, port), count)?;
            let addr = local_addr(&group);
            match direction {
                Direction::Outbound => outbound_addr = addr,
                Direction::Inbound => inbound_addr = addr,
                Direction::Gateway => gateway_addrs.push(addr),
            }
            // On the default wildcard address, IPv6 too: `init` captures a dual-stack pod's
            // IPv6 traffic, which must find the proxy listening.
            let v6 = if config.bind_address == Ipv4Addr::UNSPECIFIED {
                let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port());
                listen_group_v6(direction, addr, count)?
            } else {
                Vec::new()
            };
            let mut v6 = v6.into_iter();
            for (sockets, socket) in per_worker.iter_mut().zip(group) {
                let list = match direction {
                    Direction::Outbound => &mut sockets.outbound,
                    Direction::Inbound => &mut sockets.inbound,
                    Direction::Gateway => &mut sockets.gateway,
                };
                list.push(socket);
                list.extend(v6.next());
            }
        }
        let workers = per_worker
            .into_iter()
            .enumerate()
            .map(|(worker, sockets)| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| ProxyError::Worker { worker, source })?;
                Ok(Worker { runtime, sockets })
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let mut server_first_ports = config.server_first_ports.clone();
        server_first_ports.sort_unstable();
        server_first_ports.dedup();
        let (shutdown, signal) = shutdown::channel();
        Ok(Self {
            shared: Arc::new(Shared {
                own_ports: [outbound_addr.port(), inbound_addr.port()]
                    .into_iter()
                    .chain(gateway_addrs.iter().map(SocketAddr::port))
                    .chain(config.reserved_ports.iter().copied())
                    .collect(),
                open: [
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                    AtomicUsize::new(0),
                ],
                config,
                server_first_ports,
                orig_dst,
                router,
            }),
            workers,
            outbound_addr,
            inbound_addr,
            gateway_addrs,
            shutdown,
            signal,
        })
    }

    /// Addresses of the gateway listeners, in `--port` order; empty for a sidecar.
    pub fn gateway_addrs(&self) -> &[SocketAddr] {
        &self.gateway_addrs
    }

    /// Address of the outbound capture listener (port 0 in gateway mode).
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    /// Address of the inbound capture listener (port 0 in gateway mode).
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
            gateway_addrs,
            shutdown: _keep_sender_alive,
            signal,
        } = self;
        if gateway_addrs.is_empty() {
            tracing::info!(
                outbound = %outbound_addr,
                inbound = %inbound_addr,
                workers = workers.len(),
                "capture listeners ready"
            );
        } else {
            tracing::info!(listeners = ?gateway_addrs, workers = workers.len(), "gateway listeners ready");
        }
        let mut reports = Vec::with_capacity(workers.len());
        for (index, worker) in workers.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let shared = Arc::clone(&shared);
            let signal = signal.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lanemesh-worker-{index}"))
                .spawn(move || {
                    let Worker { runtime, sockets } = worker;
                    let report = runtime.block_on(serve_worker(shared, sockets, signal));
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

/// How often a draining worker looks whether every worker's connections are gone.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// One worker's accept loop and drain, on its own runtime.
async fn serve_worker(
    shared: Arc<Shared>,
    sockets: Sockets<std::net::TcpListener>,
    mut signal: ShutdownSignal,
) -> DrainReport {
    let register = |sockets: Vec<std::net::TcpListener>| {
        sockets
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<std::io::Result<Vec<_>>>()
    };
    let registered = (
        register(sockets.outbound),
        register(sockets.inbound),
        register(sockets.gateway),
    );
    let (outbound, inbound, gateway) = match registered {
        (Ok(outbound), Ok(inbound), Ok(gateway)) => (outbound, inbound, gateway),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            // Registering a socket with this runtime's epoll failed (out of memory or
            // descriptors): the other workers' sockets still take the connections.
            tracing::error!(%error, "worker cannot register its capture sockets");
            return DrainReport { abandoned: 0 };
        }
    };
    // Connections wait for the shutdown on a signal of their own worker: every idle HTTP/1
    // connection registers with it between requests, and a signal shared by all workers would
    // make those registrations contend across threads.
    let (stop_connections, connection_signal) = shutdown::channel();
    let mut conns = Connections {
        http: Arc::new(HttpProxy::new(&shared.config, Arc::clone(&shared.router))),
        shared: Arc::clone(&shared),
        signal: connection_signal,
        tasks: JoinSet::new(),
    };
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            () = signal.triggered() => break,
            accepted = accept_any(&outbound) => {
                conns.spawn(&graceful, Direction::Outbound, accepted).await;
            }
            accepted = accept_any(&inbound) => {
                conns.spawn(&graceful, Direction::Inbound, accepted).await;
            }
            accepted = accept_any(&gateway) => {
                conns.spawn(&graceful, Direction::Gateway, accepted).await;
            }
            Some(done) = conns.tasks.join_next(), if !conns.tasks.is_empty() => {
                if let Err(error) = done
                    && error.is_panic()
                {
                    tracing::error!(%error, "connection task panicked");
                }
            }
        }
    }
    stop_connections.trigger();
    // Lossless offline: for the drain duration every listener still accepts, because callers
    // may not have learned yet that this endpoint is going (the control plane's push is on
    // its way); what they send is served, with `Connection: close` (HTTP/1; HTTP/2 connections
    // open before the drain get GOAWAY), so keep-alive clients move to another endpoint. The
    // outbound listener stays open until the whole proxy stops: the app may still be
    // finishing its own work and calling out (without native sidecars it got SIGTERM at the
    // same moment), and one worker closing its SO_REUSEPORT socket early would refuse the
    // calls the kernel hashes to it. The proxy stops once the drain duration is over and no
    // connection is left in any worker, or when the grace period runs out.
    let grace = shared.config.grace_period;
    let started = tokio::time::Instant::now();
    let drain_end = started + shared.config.drain_duration.min(grace);
    let deadline = started + grace;
    tracing::info!(
        in_flight = conns.tasks.len(),
        ?grace,
        drain = ?shared.config.drain_duration,
        "draining connections"
    );
    // Connections accepted during the drain are watched by a shutdown of their own that never
    // fires: the drain waits for them like for any other, up to the grace period.
    let late = GracefulShutdown::new();
    let announced = graceful.shutdown();
    tokio::pin!(announced);
    let mut announced_done = false;
    let mut callers = Some((inbound, gateway));
    let mut idle_check = tokio::time::interval(IDLE_CHECK);
    let abandoned = loop {
        if callers.is_none() && announced_done && shared.open_total() == 0 {
            break 0;
        }
        let accepting = callers.is_some();
        let (inbound, gateway) = match &callers {
            Some((inbound, gateway)) => (&inbound[..], &gateway[..]),
            None => (&[][..], &[][..]),
        };
        tokio::select! {
            () = &mut announced, if !announced_done => announced_done = true,
            Some(_) = conns.tasks.join_next(), if !conns.tasks.is_empty() => {}
            accepted = accept_any(&outbound) => {
                conns.spawn(&late, Direction::Outbound, accepted).await;
            }
            accepted = accept_any(inbound), if accepting => {
                conns.spawn(&late, Direction::Inbound, accepted).await;
            }
            accepted = accept_any(gateway), if accepting => {
                conns.spawn(&late, Direction::Gateway, accepted).await;
            }
            () = tokio::time::sleep_until(drain_end), if accepting => {
                // Callers have had the drain duration to move on: new ones are refused now.
                callers = None;
            }
            // Other workers' connections end without waking this one.
            _ = idle_check.tick() => {}
            () = tokio::time::sleep_until(deadline) => break conns.tasks.len(),
        }
    };
    drop(callers);
    drop(outbound);
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "grace period over; closing remaining connections"
        );
    }
    conns.tasks.shutdown().await;
    DrainReport { abandoned }
}

/// The next connection of any of `listeners` (a capture port's IPv4 and IPv6 sockets).
async fn accept_any(listeners: &[TcpListener]) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for listener in listeners {
            if let Poll::Ready(accepted) = listener.poll_accept(cx) {
                return Poll::Ready(accepted);
            }
        }
        Poll::Pending
    })
    .await
}

/// [`listen_group`] on an IPv6 wildcard address, IPv6 only (the IPv4 group serves IPv4); empty
/// when the network namespace has no IPv6 at all.
fn listen_group_v6(
    direction: Direction,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    match listen_group(direction, addr, count) {
        Err(ProxyError::Bind { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc_codes::EAFNOSUPPORT | libc_codes::EADDRNOTAVAIL)
            ) =>
        {
            tracing::debug!(%addr, "no IPv6 here; capturing IPv4 only");
            Ok(Vec::new())
        }
        other => other,
    }
}

/// The two errno values that mean "this namespace has no IPv6".
mod libc_codes {
    pub(super) const EAFNOSUPPORT: i32 = 97;
    pub(super) const EADDRNOTAVAIL: i32 = 99;
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
        plain_bind(addr).map_err(|source| error(addr, source))?;
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

/// Binds (and at once releases) a socket without `SO_REUSEPORT`; IPv6 only for an IPv6
/// address, so it does not collide with this proxy's own IPv4 sockets.
fn plain_bind(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
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

/// A worker's connection tasks and what each new one is handed.
struct Connections {
    shared: Arc<Shared>,
    http: Arc<HttpProxy>,
    /// The worker's own shutdown signal for its connections.
    signal: ShutdownSignal,
    tasks: JoinSet<()>,
}

impl Connections {
    /// Serves an accepted connection in a task of its own (or closes it at once past
    /// `--max-connections`); `graceful` tells its HTTP/2 server when to stop.
    async fn spawn(
        &mut self,
        graceful: &GracefulShutdown,
        direction: Direction,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
    ) {
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = ConnSlot::take(&self.shared, direction) else {
                    // Closed at once: the connections already open keep their share of the proxy.
                    tracing::debug!(direction = direction.as_str(), %peer, "connection limit reached");
                    drop(stream);
                    return;
                };
                let span = tracing::debug_span!("conn", direction = direction.as_str(), %peer);
                // The watcher is taken now, so a shutdown that fires while this
                // connection is still detecting its protocol is not missed.
                let watcher = graceful.watcher();
                let (http, signal) = (Arc::clone(&self.http), self.signal.clone());
                self.tasks.spawn(
                    async move {
                        handle_conn(
                            Arc::clone(&slot.shared),
                            http,
                            signal,
                            direction,
                            stream,
                            peer,
                            watcher,
                        )
                        .await;
                        drop(slot);
                    }
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
    let original_dst = if direction == Direction::Gateway {
        // Not redirected: the client connected to the gateway itself.
        match stream.local_addr() {
            Ok(local) => local,
            Err(error) => {
                tracing::debug!(%error, "dropping gateway connection without a local address");
                return;
            }
        }
    } else {
        match shared.orig_dst.original_dst(&stream) {
            Ok(dst) => dst,
            Err(error) => {
                tracing::warn!(%error, "dropping connection with unknown original destination");
                return;
            }
        }
    };
    if direction != Direction::Gateway
        && stream.local_addr().is_ok_and(|local| local == original_dst)
    {
        // Connected to the capture port directly, not redirected: forwarding
        // would connect back to ourselves forever.
        tracing::warn!(%original_dst, "dropping connection addressed to the proxy itself");
        return;
    }
    super::pool::tune(&stream, shared.config.tcp_keepalive);
    let conn = ConnContext::new(direction, peer, original_dst, shared.config.app_address);
    if let Some(what) = shared.refusal(&conn) {
        // Debug, not warn: a caller could otherwise flood the log with one connection each.
        tracing::debug!(%original_dst, "refusing inbound connection to {what}");
        return;
    }
    let _connection = shared.router.open_connection(&conn);
    let declared = shared.router.port_protocol(&conn);
    let skip_detection = declared == PortProtocol::Opaque
        || shared
            .server_first_ports
            .binary_search(&original_dst.port())
            .is_ok();
    let (mut protocol, mut prefix) = if skip_detection {
        (Protocol::Opaque, BytesMut::new())
    } else {
        // A port declared HTTP waits as long as a request head may take: a slow client is
        // still HTTP there, never opaque.
        let wait = match declared {
            PortProtocol::Http => shared.config.header_read_timeout,
            _ => shared.config.detect_timeout,
        };
        detect::detect(&mut stream, wait, shared.config.detect_max_bytes).await
    };
    let mut upstream = None;
    if protocol == Protocol::Opaque && !skip_detection {
        if declared == PortProtocol::Http {
            tracing::debug!(%original_dst, "closing: not HTTP on a port declared HTTP");
            return;
        }
        if prefix.is_empty() {
            // A silent client: a server-first protocol on a port not listed as one, or a client
            // waiting out detection to slip past routing and governance. Connect, and see who
            // speaks first: the server (opaque it is) or the client (detect again).
            let Some((target, connected)) = open_tcp(&shared, &conn).await else {
                return;
            };
            let mut signal = signal.clone();
            let client_first = tokio::select! {
                biased;
                () = signal.triggered() => return,
                first = speaks_first(&stream, &connected) => first,
            };
            if client_first {
                (protocol, prefix) = detect::detect(
                    &mut stream,
                    shared.config.header_read_timeout,
                    shared.config.detect_max_bytes,
                )
                .await;
            }
            // The upstream has seen nothing: an HTTP client gets routed connections instead.
            upstream = (protocol == Protocol::Opaque).then_some((target, connected));
        }
    }
    tracing::debug!(%original_dst, ?protocol, "connection classified");
    match protocol {
        Protocol::Http1 => {
            drop(watcher);
            http.serve_http1(conn, stream, prefix, signal).await;
        }
        Protocol::Http2 => http.serve(conn, Rewind::new(prefix, stream), watcher).await,
        Protocol::Opaque => {
            drop(watcher);
            let connected = match upstream {
                Some(connected) => Some(connected),
                None => open_tcp(&shared, &conn).await,
            };
            let Some((target, connected)) = connected else {
                return;
            };
            let idle = shared.config.tcp_idle_timeout;
            match tcp::relay(Rewind::new(prefix, stream), connected, target, idle).await {
                Ok(relayed) => tracing::debug!(%target, ?relayed, "tcp relay done"),
                Err(error) => tracing::debug!(%error, "tcp relay ended"),
            }
        }
    }
}

/// Routes an opaque connection and connects to its target; `None` (logged) when the router
/// rejects it or the target cannot be reached.
async fn open_tcp(shared: &Shared, conn: &ConnContext) -> Option<(SocketAddr, TcpStream)> {
    let target = match shared.router.route_tcp(conn) {
        TcpDecision::Passthrough => conn.default_target,
        TcpDecision::Forward(target) => target,
        TcpDecision::Reject => {
            tracing::debug!("tcp connection rejected by router");
            return None;
        }
    };
    match tcp::connect_upstream(target, (&shared.config).into()).await {
        Ok(upstream) => Some((target, upstream)),
        Err(error) => {
            tracing::debug!(%error, "tcp relay ended");
            None
        }
    }
}

/// Whether the client sends its first byte before the upstream does (or closes).
async fn speaks_first(client: &TcpStream, upstream: &TcpStream) -> bool {
    let (mut a, mut b) = ([0u8; 1], [0u8; 1]);
    tokio::select! {
        biased;
        sent = client.peek(&mut a) => matches!(sent, Ok(n) if n > 0),
        _ = upstream.peek(&mut b) => false,
    }
}
