//! Wires a source, the index, the discovery server and the admin server
//! together on already-bound listeners (so tests can use port 0).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::discovery::Discovery;
use crate::metrics::Metrics;
use crate::snapshot::World;
use crate::source::SourceEvent;

/// Events a source may queue before it waits for the index.
const SOURCE_BUFFER: usize = 64;

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub worlds: watch::Receiver<Arc<World>>,
    pub discovery: Discovery,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts everything. `source` gets the sender it feeds the index with.
    pub fn start<F, Fut>(
        source: F,
        grpc: TcpListener,
        admin_listener: TcpListener,
        debounce: Duration,
    ) -> Self
    where
        F: FnOnce(mpsc::Sender<SourceEvent>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (events_tx, events_rx) = mpsc::channel(SOURCE_BUFFER);
        let (worlds_tx, worlds) = watch::channel(Arc::new(World::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let discovery = Discovery::new(worlds.clone(), Arc::clone(&metrics), shutdown_rx.clone());
        let admin = Admin {
            worlds: worlds.clone(),
            metrics: Arc::clone(&metrics),
        };
        let serving = discovery.clone();
        let tasks = vec![
            tokio::spawn(source(events_tx)),
            tokio::spawn(crate::index::run(events_rx, worlds_tx, debounce)),
            tokio::spawn(async move {
                if let Err(e) = serving.serve(grpc).await {
                    tracing::error!(error = %e, "discovery server failed");
                }
            }),
            tokio::spawn(admin.serve(admin_listener, shutdown_rx)),
        ];
        Self {
            worlds,
            discovery,
            metrics,
            shutdown,
            tasks,
        }
    }

    /// Starts writing CRD status (Kubernetes source only) whenever this
    /// replica holds the Lease; stops with the rest.
    pub fn start_status_writer(&mut self, client: kube::Client, lease: crate::status::LeaseConfig) {
        let writer = crate::status::StatusWriter {
            client,
            lease,
            worlds: self.worlds.clone(),
            discovery: self.discovery.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        self.tasks
            .push(tokio::spawn(writer.run(self.shutdown.subscribe())));
    }

    /// Ends every stream and stops serving; waits at most `grace`.
    pub async fn stop(self, grace: Duration) {
        self.shutdown.send_replace(true);
        let mut tasks = self.tasks;
        // The source and index tasks end when their peers go; abort them.
        for t in tasks.drain(..2) {
            t.abort();
        }
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "graceful stop timed out");
        }
    }
}
