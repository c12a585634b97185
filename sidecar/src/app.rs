//! Wiring: the one builder of a running sidecar, shared by `main`, the integration tests and the
//! benches (as ztunnel's `app.rs` is). It owns the order things start and stop in; everything it
//! wires is built in the layers below.
//!
//! [`App::build`] creates the live configuration (store, mesh router and the task that swaps a
//! runtime in for every ready snapshot), binds the capture listeners, starts the configuration
//! source and, when asked, the admin, health and metrics listeners. [`App::run`] serves until the
//! shutdown (SIGTERM, `POST /shutdown` or [`App::shutdown_handle`]) and drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState, LogControl};
use crate::discovery::{self, ConfigSource, DiscoveryClient};
use crate::identity::PodIdentity;
use crate::mesh::{MeshRouter, run_builder};
use crate::metrics::{ProxyMetrics, ScrapeSource};
use crate::proxy::{DrainReport, OriginalDst, Proxy, ProxyConfig, ProxyError, ShutdownHandle};
use crate::snapshot::SnapshotStore;
use crate::trace::{ExportTask, Pipeline, PipelineError, TraceSettings};

/// What a sidecar is built from.
#[derive(Debug)]
pub struct AppConfig {
    /// The proxy core's settings.
    pub proxy: ProxyConfig,
    /// Who the sidecar serves.
    pub identity: PodIdentity,
    /// Where the live configuration comes from; `None`: nothing feeds the store but its owner
    /// (tests store snapshots themselves; without them everything passes through).
    pub source: Option<ConfigSource>,
    /// The admin, health and metrics listeners; `None` binds none.
    pub listeners: Option<Listeners>,
    /// See `--trusted-proxy-hops`.
    pub trusted_proxy_hops: usize,
    /// The cgroup whose CPU usage overload protection samples; `None` starts no sampler (the
    /// router's CPU reading stays unknown, or is set by the caller).
    pub cgroup_dir: Option<PathBuf>,
    /// The reloadable log filter `/logging` controls.
    pub logging: Option<LogControl>,
    /// See `--lane-seed`.
    pub lane_seed: Option<u64>,
    /// Request spans over OTLP; `None`: off.
    pub tracing: Option<TraceSettings>,
}

impl AppConfig {
    /// A sidecar for `identity` with `proxy`'s settings and nothing else: no source, no
    /// listeners besides the capture ones, no CPU sampler.
    pub fn new(proxy: ProxyConfig, identity: PodIdentity) -> Self {
        Self {
            proxy,
            identity,
            source: None,
            listeners: None,
            trusted_proxy_hops: 0,
            cgroup_dir: None,
            logging: None,
            lane_seed: None,
            tracing: None,
        }
    }
}

/// Addresses of the sidecar's own HTTP listeners.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// `/config_dump`, `/logging`, `POST /shutdown`; bind it to loopback.
    pub admin: SocketAddr,
    /// `/healthz/ready`.
    pub health: SocketAddr,
    /// `/metrics`.
    pub metrics: SocketAddr,
}

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The capture listeners.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// An admin, health or metrics listener.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address tried.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The span exporter.
    #[error(transparent)]
    Trace(#[from] PipelineError),
    /// The `--config-file`.
    #[error("loading {}: {source}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: discovery::file::FileError,
    },
}

/// A built sidecar: listening, its configuration source started.
#[derive(Debug)]
pub struct App {
    /// The live configuration.
    pub store: Arc<SnapshotStore>,
    /// The proxy's router (lane decisions, endpoint choice, governance).
    pub router: Arc<MeshRouter>,
    /// Every metric of the proxy.
    pub metrics: Arc<ProxyMetrics>,
    proxy: Proxy,
    /// Bound addresses of the admin, health and metrics listeners, when started.
    listeners: Option<Listeners>,
    /// Turns `true` when the proxy has stopped: the admin listeners close then.
    stopped: watch::Sender<bool>,
    discovery: Option<JoinHandle<()>>,
    /// Tasks that run as long as the app: the runtime builder, the CPU sampler.
    background: Vec<JoinHandle<()>>,
    /// The span export, when tracing is on: flushed after the proxy stops.
    spans: Option<ExportTask>,
}

impl App {
    /// Builds and starts everything but the data plane's workers (see [`App::run`]).
    pub async fn build(
        config: AppConfig,
        orig_dst: Arc<dyn OriginalDst>,
    ) -> Result<Self, AppError> {
        let store = Arc::new(SnapshotStore::new(config.identity.clone()));
        let metrics = Arc::new(ProxyMetrics::new());
        metrics.attach(Arc::clone(&store) as Arc<dyn ScrapeSource>);
        let mut router = MeshRouter::new()
            .with_metrics(Arc::clone(&metrics))
            .with_trusted_proxy_hops(config.trusted_proxy_hops);
        if let Some(seed) = config.lane_seed {
            router = router.with_lane_seed(seed);
        }
        let spans = match &config.tracing {
            Some(settings) => {
                let (tracer, export) = Pipeline::start(
                    settings,
                    trace_resource(settings, &config.identity),
                    Arc::clone(&metrics),
                )?;
                metrics.declare_span_series();
                router = router.with_tracer(tracer);
                tracing::info!(endpoint = %settings.endpoint, sampling = settings.sampling, "exporting request spans");
                Some(export)
            }
            None => None,
        };
        let router = Arc::new(router);
        let mut background = Vec::new();
        if let Some(cgroup_dir) = config.cgroup_dir {
            background.push(tokio::spawn(crate::govern::cpu::run_sampler(
                Arc::clone(router.cpu()),
                cgroup_dir,
            )));
        }
        // Until the first complete snapshot the router passes everything through.
        background.push(tokio::spawn(run_builder(
            Arc::clone(&store),
            Arc::clone(&router),
        )));
        let proxy = Proxy::bind(config.proxy, Arc::clone(&router) as _, orig_dst).await?;
        let handle = proxy.shutdown_handle();

        // `POST /shutdown` and the proxy's own shutdown share one signal.
        let (stopped, stopped_rx) = watch::channel(false);
        let mut admin_state = AdminState::new(Arc::clone(&store), stopped.clone());
        if let Some(logging) = config.logging {
            admin_state = admin_state.with_logging(logging);
        }
        let discovery = match config.source {
            Some(ConfigSource::File { path }) => {
                let generation =
                    discovery::file::load_into(&path, &store).map_err(|source| AppError::Load {
                        path: path.clone(),
                        source,
                    })?;
                tracing::info!(path = %path.display(), generation, "configuration loaded");
                None
            }
            Some(ConfigSource::ControlPlane(mut client)) => {
                tracing::info!(addr = %client.addr, "connecting to the control plane");
                // The stream claims who the store was built for (a gateway subscribes to its
                // routes too), whatever the source's own settings say.
                client.identity = config.identity.clone();
                let mut signal = handle.signal();
                let client = DiscoveryClient::new(*client, Arc::clone(&store));
                metrics.attach(client.state() as Arc<dyn ScrapeSource>);
                admin_state = admin_state.with_discovery(client.state());
                Some(tokio::spawn(async move {
                    client.run(async move { signal.triggered().await }).await;
                }))
            }
            None => None,
        };
        let listeners = match config.listeners {
            Some(addrs) => Some(
                serve_listeners(addrs, admin_state, &store, &metrics, &handle, stopped_rx).await?,
            ),
            None => None,
        };
        Ok(Self {
            store,
            router,
            metrics,
            proxy,
            listeners,
            stopped,
            discovery,
            background,
            spans,
        })
    }

    /// Address of the outbound capture listener.
    pub fn outbound_addr(&self) -> SocketAddr {
        self.proxy.outbound_addr()
    }

    /// Address of the inbound capture listener.
    pub fn inbound_addr(&self) -> SocketAddr {
        self.proxy.inbound_addr()
    }

    /// Addresses of the gateway listeners (gateway mode); empty for a sidecar.
    pub fn gateway_addrs(&self) -> &[SocketAddr] {
        self.proxy.gateway_addrs()
    }

    /// The bound admin, health and metrics addresses, when started.
    pub fn listeners(&self) -> Option<Listeners> {
        self.listeners
    }

    /// Starts the graceful shutdown (SIGTERM handlers, tests).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.proxy.shutdown_handle()
    }

    /// Serves until the shutdown, drains, then stops the listeners, the configuration source
    /// and the background tasks.
    pub async fn run(self) -> DrainReport {
        let report = self.proxy.run().await;
        let _ = self.stopped.send(true);
        if let Some(discovery) = self.discovery
            && let Err(error) = discovery.await
        {
            tracing::warn!(%error, "discovery client task failed");
        }
        for task in self.background {
            task.abort();
        }
        if let Some(spans) = self.spans {
            spans.finish(SPAN_FLUSH).await;
        }
        report
    }
}

/// How long a stopping proxy waits for its last spans to be exported.
const SPAN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// What every span of this proxy is from: `service.name` (the flag, else the app, else the
/// proxy's role) and the pod, as the OpenTelemetry Kubernetes conventions name them.
fn trace_resource(
    settings: &TraceSettings,
    identity: &PodIdentity,
) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let service = settings.service_name.clone().unwrap_or_else(|| {
        if !identity.app.is_empty() {
            identity.app.clone()
        } else if identity.gateway {
            "lanemesh-gateway".to_owned()
        } else {
            "lanemesh-proxy".to_owned()
        }
    });
    let mut resource = vec![
        KeyValue::new("service.name", service),
        KeyValue::new("service.namespace", identity.namespace.clone()),
        KeyValue::new("k8s.namespace.name", identity.namespace.clone()),
        KeyValue::new(
            "lanemesh.proxy",
            if identity.gateway {
                "gateway"
            } else {
                "sidecar"
            },
        ),
    ];
    if !identity.pod_name.is_empty() {
        resource.push(KeyValue::new("k8s.pod.name", identity.pod_name.clone()));
    }
    if let Some(lane) = identity.lane() {
        resource.push(KeyValue::new("lanemesh.pod.lane", lane.to_owned()));
    }
    resource
}

/// Binds and serves the admin, health and metrics listeners; returns their bound addresses.
async fn serve_listeners(
    addrs: Listeners,
    admin_state: AdminState,
    store: &Arc<SnapshotStore>,
    metrics: &Arc<ProxyMetrics>,
    handle: &ShutdownHandle,
    stopped: watch::Receiver<bool>,
) -> Result<Listeners, AppError> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { what, addr, source })
    };
    let admin_listener = bind("admin", addrs.admin).await?;
    let health_listener = bind("health", addrs.health).await?;
    let metrics_listener = bind("metrics", addrs.metrics).await?;
    let local = |l: &TcpListener, addr| l.local_addr().unwrap_or(addr);
    let bound = Listeners {
        admin: local(&admin_listener, addrs.admin),
        health: local(&health_listener, addrs.health),
        metrics: local(&metrics_listener, addrs.metrics),
    };
    tokio::spawn(admin::serve_admin(
        admin_listener,
        admin_state,
        stopped.clone(),
    ));
    tokio::spawn(admin::serve_health(
        health_listener,
        Arc::clone(store),
        handle.watch(),
        stopped.clone(),
    ));
    tokio::spawn(admin::serve_metrics(
        metrics_listener,
        Arc::clone(metrics),
        stopped.clone(),
    ));
    tokio::spawn({
        let handle = handle.clone();
        let mut requested = stopped;
        async move {
            // Fires on `POST /shutdown`, and harmlessly once the proxy has stopped.
            admin::shutdown_requested(&mut requested).await;
            handle.trigger();
        }
    });
    Ok(bound)
}
