//! Wires a source, the index, the discovery server and the admin server
//! together on already-bound listeners (so tests can use port 0).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{Admin, AdminOptions};
use crate::discovery::{Discovery, DiscoveryLimits};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::snapshot::World;
use crate::source::SourceEvent;

/// Events a source may queue before it waits for the index.
const SOURCE_BUFFER: usize = 64;

type BoxedTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How a control plane runs; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// Quiet time after a change before snapshots are rebuilt.
    pub debounce: Duration,
    pub discovery: DiscoveryLimits,
    pub admin: AdminOptions,
    /// Who may open a stream for which pod: [`crate::auth::AllowAll`] (local mode) or
    /// [`crate::auth::TokenReviewer`].
    pub authenticator: Arc<dyn crate::auth::Authenticator>,
    /// Serve discovery over TLS with this certificate (required in Kubernetes mode).
    pub discovery_tls: Option<crate::discovery::DiscoveryTls>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            debounce: crate::index::DEFAULT_DEBOUNCE,
            discovery: DiscoveryLimits::default(),
            admin: AdminOptions::default(),
            authenticator: Arc::new(crate::auth::AllowAll),
            discovery_tls: None,
        }
    }
}

/// Aborts the task it guards when dropped (when its supervisor is aborted).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `task` and reports to `health` if it ends, by returning or by
/// panicking, before `shutdown`: a dead index or source would otherwise
/// leave a replica that answers `/readyz` but serves stale configuration.
fn supervise<F>(
    name: &'static str,
    task: F,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut inner = tokio::spawn(task);
    tokio::spawn(async move {
        let _guard = AbortOnDrop(inner.abort_handle());
        let outcome = (&mut inner).await;
        if *shutdown.borrow() {
            return;
        }
        let why = match outcome {
            Ok(()) => "ended".to_owned(),
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let text = (panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {text}")
            }
            Err(_) => "was cancelled".to_owned(),
        };
        health.fail(name, &why);
    })
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub worlds: watch::Receiver<Arc<World>>,
    pub discovery: Discovery,
    pub metrics: Arc<Metrics>,
    pub health: Health,
    /// The traffic view, updated by the scrape task when started.
    pub traffic: watch::Receiver<Arc<crate::traffic::TrafficView>>,
    traffic_tx: watch::Sender<Arc<crate::traffic::TrafficView>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts everything with the default [`Options`] but `debounce`.
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
        let options = Options {
            debounce,
            ..Options::default()
        };
        Self::start_with(source, grpc, admin_listener, options)
    }

    /// Starts everything. `source` gets the sender it feeds the index with.
    pub fn start_with<F, Fut>(
        source: F,
        grpc: TcpListener,
        admin_listener: TcpListener,
        options: Options,
    ) -> Self
    where
        F: FnOnce(mpsc::Sender<SourceEvent>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (events_tx, events_rx) = mpsc::channel(SOURCE_BUFFER);
        let (worlds_tx, worlds) = watch::channel(Arc::new(World::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let health = Health::default();
        let (traffic_tx, traffic) = watch::channel(Arc::default());
        let discovery = Discovery::new(worlds.clone(), Arc::clone(&metrics), shutdown_rx.clone())
            .with_limits(options.discovery)
            .with_authenticator(options.authenticator)
            .with_tls(options.discovery_tls);
        let admin = Admin {
            worlds: worlds.clone(),
            streams: Some(discovery.clone()),
            metrics: Arc::clone(&metrics),
            health: health.clone(),
            options: options.admin,
            traffic: traffic.clone(),
        };
        let serving = discovery.clone();
        let spawn = |name, task| supervise(name, task, health.clone(), shutdown_rx.clone());
        let tasks = vec![
            spawn("source", Box::pin(source(events_tx)) as BoxedTask),
            spawn(
                "index",
                Box::pin(crate::index::run(events_rx, worlds_tx, options.debounce)),
            ),
            spawn(
                "discovery server",
                Box::pin(async move {
                    if let Err(e) = serving.serve(grpc).await {
                        tracing::error!(error = %e, "discovery server failed");
                    }
                }),
            ),
            spawn(
                "admin server",
                Box::pin(admin.serve(admin_listener, shutdown_rx.clone())),
            ),
        ];
        Self {
            worlds,
            discovery,
            metrics,
            health,
            traffic,
            traffic_tx,
            shutdown,
            tasks,
        }
    }

    /// Resolves when a task failed (see [`Health`]), with the reason.
    pub async fn failed(&self) -> String {
        self.health.failed().await
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
        let task = supervise(
            "status writer",
            writer.run(self.shutdown.subscribe()),
            self.health.clone(),
            self.shutdown.subscribe(),
        );
        self.tasks.push(task);
    }

    /// Scrapes the sidecars of the served pods into [`ControlPlane::traffic`]; stops with the
    /// rest.
    pub fn start_scraper(&mut self, options: crate::traffic::scrape::ScrapeOptions) {
        let task = supervise(
            "traffic scraper",
            crate::traffic::scrape::run(
                options,
                self.worlds.clone(),
                self.traffic_tx.clone(),
                self.shutdown.subscribe(),
            ),
            self.health.clone(),
            self.shutdown.subscribe(),
        );
        self.tasks.push(task);
    }

    /// Serves the web console on `listener`; stops with the rest.
    pub fn start_console(
        &mut self,
        listener: TcpListener,
        writer: Option<crate::console::LaneWriter>,
    ) {
        let console = crate::console::Console {
            worlds: self.worlds.clone(),
            traffic: self.traffic.clone(),
            writer,
            header_read_timeout: crate::admin::DEFAULT_HEADER_READ_TIMEOUT,
        };
        let task = supervise(
            "console",
            console.serve(listener, self.shutdown.subscribe()),
            self.health.clone(),
            self.shutdown.subscribe(),
        );
        self.tasks.push(task);
    }

    /// Serves the sidecar injection webhook on `listener` (HTTPS with `tls`); stops with the
    /// rest. With `client`, it reads Namespace annotations (a metadata reflector).
    pub fn start_webhook(
        &mut self,
        listener: TcpListener,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
        config: crate::inject::InjectConfig,
        client: Option<kube::Client>,
    ) {
        let (namespaces, watch) = match client {
            Some(client) => {
                let (store, watch) = crate::inject::webhook::watch_namespaces(client);
                (Some(store), Some(watch))
            }
            None => (None, None),
        };
        let serve = crate::inject::webhook::serve(
            listener,
            tls,
            Arc::new(config),
            namespaces,
            Arc::clone(&self.metrics),
            self.shutdown.subscribe(),
        );
        let task = supervise(
            "injection webhook",
            async move {
                match watch {
                    // The watch retries with backoff and never ends: serving decides.
                    Some(watch) => {
                        tokio::select! {
                            () = serve => {}
                            () = watch => {}
                        }
                    }
                    None => serve.await,
                }
            },
            self.health.clone(),
            self.shutdown.subscribe(),
        );
        self.tasks.push(task);
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
