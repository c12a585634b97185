//! The sidecar's own HTTP endpoints (DESIGN §5):
//! - admin on `127.0.0.1:15000`: `GET /config_dump`, `GET|POST /logging`, `POST /shutdown`;
//! - health on `15021`: `GET /healthz/ready`, 200 once a first snapshot of every
//!   resource type is applied, 503 again once the proxy drains;
//! - metrics on `15020`: `GET /metrics`, OpenMetrics text;
//! - [`wait`]: `lanemesh-proxy wait`, the client that blocks until health says ready.
//!
//! Each `serve_*` takes a bound listener (tests bind port 0) and a shutdown
//! receiver: when it turns `true` the listener closes and open connections
//! finish their current request.

pub mod logging;
mod routes;
mod server;
pub mod wait;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::DiscoveryState;
use crate::metrics::ProxyMetrics;
use crate::snapshot::SnapshotStore;

pub use logging::{LogControl, LogError};
pub use server::shutdown_requested;

/// Default listen addresses (DESIGN §5).
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";
pub const METRICS_ADDR: &str = "0.0.0.0:15020";
pub const HEALTH_ADDR: &str = "0.0.0.0:15021";

/// What the admin endpoints read and control.
#[derive(Debug, Clone)]
pub struct AdminState {
    store: Arc<SnapshotStore>,
    shutdown: watch::Sender<bool>,
    logging: Option<LogControl>,
    discovery: Option<Arc<DiscoveryState>>,
}

impl AdminState {
    /// `POST /shutdown` sends `true` on `shutdown`.
    pub fn new(store: Arc<SnapshotStore>, shutdown: watch::Sender<bool>) -> Self {
        Self {
            store,
            shutdown,
            logging: None,
            discovery: None,
        }
    }

    /// Enables `/logging`; without it the endpoint answers 501.
    #[must_use]
    pub fn with_logging(mut self, logging: LogControl) -> Self {
        self.logging = Some(logging);
        self
    }

    /// Adds the discovery client's counters to `/config_dump`.
    #[must_use]
    pub fn with_discovery(mut self, discovery: Arc<DiscoveryState>) -> Self {
        self.discovery = Some(discovery);
        self
    }
}

/// The admin listener (bind it to loopback: it can stop the proxy).
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(state);
    let handler = Arc::new(move |request| {
        let state = Arc::clone(&state);
        async move { routes::admin(&state, &request) }
    });
    server::serve(listener, "admin", handler, shutdown).await;
}

/// The health listener. `draining` turns `true` when the proxy's shutdown starts: readiness
/// fails from then on, while the listener keeps answering until `shutdown`.
pub async fn serve_health(
    listener: TcpListener,
    store: Arc<SnapshotStore>,
    draining: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = Arc::new(move |request| {
        let store = Arc::clone(&store);
        let draining = *draining.borrow();
        async move { routes::health(&store, draining, &request) }
    });
    server::serve(listener, "health", handler, shutdown).await;
}

/// The metrics listener.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<ProxyMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = Arc::new(move |request| {
        let metrics = Arc::clone(&metrics);
        async move { routes::metrics(&metrics, &request) }
    });
    server::serve(listener, "metrics", handler, shutdown).await;
}
