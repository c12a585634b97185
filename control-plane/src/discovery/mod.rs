//! The discovery server: one delta aggregated stream per sidecar (DESIGN §6,
//! `api/proto/lanemesh/v1/discovery.proto`).
//!
//! Every stream runs in its own task that reads the latest shared
//! [`World`] from a `watch` and computes its own diff against what its
//! sidecar holds, so a slow or stuck sidecar only ever delays itself: its
//! task waits on its own bounded send buffer and, once unblocked, sends the
//! newest state, skipping whatever changed in between.
//!
//! Any pod may connect, so nothing a client sends is trusted beyond its own
//! stream: a stream may NACK only what it was sent, its NACKs are bounded
//! and forgotten when it ends, and [`DiscoveryLimits`] bound streams per
//! connection, the wait for a first request and for a client to read.
//!
//! # Layout
//! - `stream`: the per-stream protocol state (subscriptions, nonces, ACK/NACK).

mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use lanemesh_api::proto::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use lanemesh_api::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AllowAll, Authenticator};

use crate::metrics::Metrics;
use crate::snapshot::World;

/// Default gRPC discovery address.
pub const DEFAULT_ADDR: &str = "0.0.0.0:15010";
/// Responses a stream may have queued before its task waits for the sidecar.
const SEND_BUFFER: usize = 4;

/// Bounds on what one client can make the server hold or wait for; the
/// flags of `lanemesh-pilot` set them.
#[derive(Debug, Clone)]
pub struct DiscoveryLimits {
    /// HTTP/2 streams one connection may have open (a sidecar needs one).
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval, and how long a PING may go unanswered before
    /// the connection is closed (a peer that vanished without a FIN).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time (probes then follow at this interval).
    pub tcp_keepalive: Duration,
    /// A stream whose first request does not arrive within this is closed.
    pub first_request_timeout: Duration,
    /// A stream whose client does not take a response within this is
    /// closed, so it holds neither its task nor an old snapshot.
    pub send_timeout: Duration,
    /// NACKed resources remembered per stream, and the longest message kept.
    pub max_nacks_per_stream: usize,
    pub max_nack_message: usize,
}

impl Default for DiscoveryLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 16,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            first_request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_nacks_per_stream: 64,
            max_nack_message: 1024,
        }
    }
}

/// A NACK as reported by a sidecar, kept for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub message: String,
    /// `namespace/pod` of the sidecar that refused it.
    pub node: String,
}

/// NACKs per (type URL, resource name).
pub type Nacks = BTreeMap<(String, String), Nack>;

/// The NACKs of each open stream, by stream id.
type StreamNacks = BTreeMap<u64, Nacks>;

/// What one open stream's sidecar holds, for `lanemeshctl status` (`/debug/streams`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamView {
    /// `namespace/pod`.
    pub node: String,
    /// The app the control plane serves it as (its pod's label, else what it claimed).
    pub app: String,
    pub gateway: bool,
    /// When the stream opened (RFC 3339).
    pub connected: String,
    /// Per resource type (short name, e.g. `Service`).
    pub types: BTreeMap<String, TypeView>,
}

/// One resource type of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeView {
    /// Resources sent and not removed since.
    pub resources: usize,
    /// Responses not answered yet (0 = everything sent is ACKed or NACKed).
    pub pending: usize,
    /// Resources of this type the sidecar refused (NACKed) and still does.
    pub nacked: usize,
}

/// Shared by every stream.
#[derive(Debug, Clone)]
pub struct Discovery {
    worlds: watch::Receiver<Arc<World>>,
    metrics: Arc<Metrics>,
    nacks: Arc<Mutex<StreamNacks>>,
    /// Every open stream, by id.
    streams: Arc<Mutex<BTreeMap<u64, StreamView>>>,
    next_stream: Arc<AtomicU64>,
    limits: Arc<DiscoveryLimits>,
    /// Bumped after every NACK, so status writing can react to it.
    nacks_changed: Arc<watch::Sender<u64>>,
    shutdown: watch::Receiver<bool>,
    auth: Arc<dyn Authenticator>,
    tls: Option<Arc<DiscoveryTls>>,
}

/// The discovery server's certificate and key (PEM); sidecars verify it with the CA the
/// injection hands them.
#[derive(Clone)]
pub struct DiscoveryTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for DiscoveryTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret.
        f.debug_struct("DiscoveryTls")
            .field("cert_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// `shutdown` turning `true` ends every open stream.
    pub fn new(
        worlds: watch::Receiver<Arc<World>>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            worlds,
            metrics,
            nacks: Arc::default(),
            streams: Arc::default(),
            next_stream: Arc::default(),
            limits: Arc::default(),
            nacks_changed: Arc::new(watch::channel(0).0),
            shutdown,
            auth: Arc::new(AllowAll),
            tls: None,
        }
    }

    /// Serves TLS with `tls` instead of plaintext.
    pub fn with_tls(mut self, tls: Option<DiscoveryTls>) -> Self {
        self.tls = tls.map(Arc::new);
        self
    }

    /// Checks every stream's claimed node with `auth` (TokenReview in Kubernetes mode).
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_limits(mut self, limits: DiscoveryLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// The NACKs of the open streams; of several streams refusing one
    /// resource, the longest-connected one's.
    pub fn nacks(&self) -> Nacks {
        let mut out = Nacks::new();
        for nacks in self.lock_nacks().values() {
            for (key, nack) in nacks {
                out.entry(key.clone()).or_insert_with(|| nack.clone());
            }
        }
        out
    }

    /// Every open stream and what its sidecar holds, by node.
    pub fn streams(&self) -> Vec<StreamView> {
        let mut out: Vec<StreamView> = self.lock_streams().values().cloned().collect();
        out.sort_by(|a, b| (&a.node, &a.connected).cmp(&(&b.node, &b.connected)));
        out
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, StreamView>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_nacks(&self) -> std::sync::MutexGuard<'_, StreamNacks> {
        // A poisoned lock only means a stream task panicked mid-insert; the
        // map itself is still usable.
        self.nacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes after every NACK (the value counts them).
    pub fn nack_updates(&self) -> watch::Receiver<u64> {
        self.nacks_changed.subscribe()
    }

    /// Serves on `listener` until `shutdown` turns `true`.
    pub async fn serve(self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        let shutdown = self.shutdown.clone();
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        let limits = Arc::clone(&self.limits);
        tracing::info!(?addr, ?limits, "discovery server listening");
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(limits.tcp_keepalive)
            .with_interval(limits.tcp_keepalive);
        // tonic applies its own TCP settings only to listeners it binds.
        let incoming = TcpListenerStream::new(listener).map(move |accepted| {
            accepted.inspect(|stream| {
                if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
                    tracing::debug!(error = %e, "cannot set TCP keepalive");
                }
            })
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            // The handshake counts against the first-request deadline.
            builder = builder.tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(
                        &tls.cert_pem,
                        &tls.key_pem,
                    ))
                    .timeout(limits.first_request_timeout),
            )?;
        }
        tracing::info!(tls = self.tls.is_some(), "discovery transport");
        builder
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .add_service(AggregatedDiscoveryServiceServer::new(self))
            .serve_with_incoming_shutdown(incoming, async move {
                crate::stopped(shutdown).await;
            })
            .await
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Discovery {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let mut requests = request.into_inner();
        let wait = self.limits.first_request_timeout;
        let first = tokio::time::timeout(wait, requests.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no first request within {wait:?}")))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let node = first
            .node
            .clone()
            .filter(|n| !n.pod_name.is_empty() && !n.namespace.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "the first request must carry node with pod_name and namespace",
                )
            })?;
        if let Err(error) = self.auth.authenticate(&node).await {
            let claimed = format!("{}/{}", node.namespace, node.pod_name);
            tracing::warn!(node = %claimed, ?peer, %error, "discovery stream refused");
            self.metrics
                .streams_refused
                .get_or_create(&vec![("reason", error.reason().to_owned())])
                .inc();
            return Err(if error.is_denial() {
                Status::permission_denied(error.to_string())
            } else {
                Status::unavailable(error.to_string())
            });
        }
        tracing::info!(
            node = %format!("{}/{}", node.namespace, node.pod_name),
            app = %node.app,
            ?peer,
            "sidecar connected"
        );
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let task = stream::StreamTask::new(id, node, self.clone(), tx);
        tokio::spawn(task.run(first, requests));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
