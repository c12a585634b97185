//! The discovery server: one delta aggregated stream per sidecar (DESIGN §6,
//! `api/proto/lanemesh/v1/discovery.proto`).
//!
//! Every stream runs in its own task that reads the latest shared
//! [`World`] from a `watch` and computes its own diff against what its
//! sidecar holds, so a slow or stuck sidecar only ever delays itself: its
//! task waits on its own bounded send buffer and, once unblocked, sends the
//! newest state, skipping whatever changed in between.
//!
//! # Layout
//! - `stream`: the per-stream protocol state (subscriptions, nonces, ACK/NACK).

mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use lanemesh_api::proto::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use lanemesh_api::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::snapshot::World;

/// Default gRPC discovery address.
pub const DEFAULT_ADDR: &str = "0.0.0.0:15010";
/// Responses a stream may have queued before its task waits for the sidecar.
const SEND_BUFFER: usize = 4;

/// A NACK as reported by a sidecar, kept for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: String,
    pub message: String,
    /// `namespace/pod` of the sidecar that refused it.
    pub node: String,
}

/// The latest NACK per (type URL, resource name).
pub type Nacks = BTreeMap<(String, String), Nack>;

/// Shared by every stream.
#[derive(Debug, Clone)]
pub struct Discovery {
    worlds: watch::Receiver<Arc<World>>,
    metrics: Arc<Metrics>,
    nacks: Arc<Mutex<Nacks>>,
    /// Bumped after every NACK, so status writing can react to it.
    nacks_changed: Arc<watch::Sender<u64>>,
    shutdown: watch::Receiver<bool>,
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
            nacks_changed: Arc::new(watch::channel(0).0),
            shutdown,
        }
    }

    /// The NACKs seen so far.
    pub fn nacks(&self) -> Nacks {
        // A poisoned lock only means a stream task panicked mid-insert; the
        // map itself is still usable.
        self.nacks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes after every NACK (the value counts them).
    pub fn nack_updates(&self) -> watch::Receiver<u64> {
        self.nacks_changed.subscribe()
    }

    /// Serves on `listener` until `shutdown` turns `true`.
    pub async fn serve(self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        let shutdown = self.shutdown.clone();
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(?addr, "discovery server listening");
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(AggregatedDiscoveryServiceServer::new(self))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
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
        let first = requests
            .message()
            .await?
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
        tracing::info!(
            node = %format!("{}/{}", node.namespace, node.pod_name),
            app = %node.app,
            ?peer,
            "sidecar connected"
        );
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let task = stream::StreamTask::new(node, self.clone(), tx);
        tokio::spawn(task.run(first, requests));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
