//! The discovery client: one `DeltaAggregatedResources` stream to the
//! control plane, applying each response to the [`SnapshotStore`].
//!
//! Per response: removed names are dropped, every changed resource is
//! decoded and validated on its own; valid ones replace what was held,
//! refused ones keep their last good copy and are listed in the NACK's
//! `error_detail.resource_errors` (DESIGN §6). When the stream breaks the
//! snapshot stays as it is and the client reconnects with jittered
//! exponential backoff, announcing what it holds in
//! `initial_resource_versions`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lanemesh_api::proto;
use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::backoff::{Backoff, BackoffConfig};
use crate::identity::PodIdentity;
use crate::snapshot::{ResourceKind, SnapshotBuilder, SnapshotStore};

/// The node a stream claims, sent in its first request: who the sidecar serves, this proxy's
/// version and the pod's credential (empty outside Kubernetes).
pub fn node(identity: &PodIdentity, token: &str) -> proto::Node {
    proto::Node {
        pod_name: identity.pod_name.clone(),
        namespace: identity.namespace.clone(),
        app: identity.app.clone(),
        lane_tag: identity.lane().unwrap_or_default().to_owned(),
        ip: identity.ip.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
        token: token.to_owned(),
        gateway: identity.gateway,
    }
}

/// How to reach the control plane.
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:port` of the discovery service (port 15010 by default).
    pub addr: String,
    /// Who the sidecar serves.
    pub identity: PodIdentity,
    /// Projected service-account token; empty outside Kubernetes. Never shown or logged.
    pub token: String,
    /// Where the token is re-read on every connect (the kubelet rewrites a projected token
    /// before it expires); `token` is used when unset.
    pub token_file: Option<std::path::PathBuf>,
    /// The CA (PEM) the control plane's certificate is verified with; `None` = plaintext.
    pub ca_pem: Option<String>,
    pub backoff: BackoffConfig,
    pub connect_timeout: Duration,
}

/// The token is a credential: a Debug print says only whether there is one.
impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("token_file", &self.token_file)
            .field("tls", &self.ca_pem.is_some())
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientConfig {
    pub fn new(addr: impl Into<String>, identity: PodIdentity, token: String) -> Self {
        Self {
            addr: addr.into(),
            identity,
            token,
            token_file: None,
            ca_pem: None,
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `error: its source: its source...`
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = source.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid discovery address {addr:?}: {source}")]
    Address {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect to the control plane at {addr}: {cause}")]
    Connect {
        addr: String,
        /// The error and its sources ("transport error" alone says nothing: the cause is a
        /// refused connection, a name that does not resolve, a certificate not trusted...).
        cause: String,
    },
    #[error("discovery stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("cannot read the token file {}: {source}", .path.display())]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the discovery request stream closed")]
    RequestsClosed,
}

/// The client's health, for metrics and the admin page. Counters only grow.
#[derive(Debug, Default)]
pub struct DiscoveryState {
    connected: AtomicBool,
    connects: AtomicU64,
    reconnect_attempts: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    rejected_resources: AtomicU64,
}

/// The client's counters on every `/metrics` scrape.
impl crate::metrics::ScrapeSource for DiscoveryState {
    fn samples(&self) -> Vec<crate::metrics::Sample> {
        use crate::metrics::Sample::{Counter, Gauge};
        let stats = self.stats();
        vec![
            Gauge(
                "discovery_connected",
                "1 while a discovery stream to the control plane is open",
                i64::from(stats.connected),
            ),
            Counter(
                "discovery_connects",
                "Discovery streams opened",
                stats.connects,
            ),
            Counter(
                "discovery_reconnects",
                "Waits before a new discovery attempt after a failure or a closed stream",
                stats.reconnect_attempts,
            ),
            Counter(
                "discovery_acks",
                "Discovery responses fully applied",
                stats.acks,
            ),
            Counter(
                "discovery_nacks",
                "Discovery responses with at least one refused resource",
                stats.nacks,
            ),
            Counter(
                "discovery_rejected_resources",
                "Resources refused, summed over all NACKs",
                stats.rejected_resources,
            ),
        ]
    }
}

/// A copy of [`DiscoveryState`] at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscoveryStats {
    /// A stream is open.
    pub connected: bool,
    /// Streams opened successfully.
    pub connects: u64,
    /// Waits before a new attempt, after a failure or a closed stream.
    pub reconnect_attempts: u64,
    /// Responses fully applied.
    pub acks: u64,
    /// Responses with at least one refused resource (or of an unknown type).
    pub nacks: u64,
    /// Resources refused, summed over all NACKs.
    pub rejected_resources: u64,
}

impl DiscoveryState {
    pub fn stats(&self) -> DiscoveryStats {
        DiscoveryStats {
            connected: self.connected.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            reconnect_attempts: self.reconnect_attempts.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            rejected_resources: self.rejected_resources.load(Ordering::Relaxed),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The one writer of a [`SnapshotStore`] while a control plane is used.
#[derive(Debug)]
pub struct DiscoveryClient {
    config: ClientConfig,
    store: Arc<SnapshotStore>,
    state: Arc<DiscoveryState>,
}

impl DiscoveryClient {
    pub fn new(config: ClientConfig, store: Arc<SnapshotStore>) -> Self {
        Self {
            config,
            store,
            state: Arc::default(),
        }
    }

    pub fn state(&self) -> Arc<DiscoveryState> {
        Arc::clone(&self.state)
    }

    /// Streams until `shutdown` completes, reconnecting for ever.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut backoff = Backoff::new(self.config.backoff);
        tokio::pin!(shutdown);
        loop {
            let mut connected_at: Option<Instant> = None;
            let result = tokio::select! {
                () = &mut shutdown => break,
                result = self.session(&mut connected_at) => result,
            };
            self.state.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    tracing::info!(addr = %self.config.addr, "control plane closed the discovery stream")
                }
                Err(error) => {
                    tracing::warn!(%error, "discovery stream lost; keeping the last applied configuration")
                }
            }
            let delay = backoff.after_disconnect(connected_at.map(|at| at.elapsed()));
            self.state
                .reconnect_attempts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                ?delay,
                attempt = backoff.attempt(),
                "reconnecting to the control plane"
            );
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.state.connected.store(false, Ordering::Relaxed);
    }

    /// One stream, from connect to its end. `connected_at` is set once the
    /// stream is open, so the caller can tell a stable connection.
    async fn session(&self, connected_at: &mut Option<Instant>) -> Result<(), ClientError> {
        let addr = &self.config.addr;
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|source| ClientError::Address {
                addr: addr.clone(),
                source,
            })?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            // Detects a vanished control plane (no FIN) on an idle stream.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let endpoint = match &self.config.ca_pem {
            Some(ca) => {
                // Verified for the host the operator named (the pilot Service's DNS name).
                let host = endpoint.uri().host().unwrap_or_default().to_owned();
                endpoint
                    .tls_config(
                        ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(ca))
                            .domain_name(host),
                    )
                    .map_err(|source| ClientError::Address {
                        addr: addr.clone(),
                        source,
                    })?
            }
            None => endpoint,
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                cause: chain(&source),
            })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);

        let token = match &self.config.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| ClientError::Token {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
            None => self.config.token.clone(),
        };
        let (requests, rx) = mpsc::channel(ResourceKind::ALL.len() * 2);
        let held = self.store.load_full();
        for (i, kind) in ResourceKind::subscribed(&self.config.identity).enumerate() {
            let request = proto::DeltaDiscoveryRequest {
                node: (i == 0).then(|| node(&self.config.identity, &token)),
                type_url: kind.type_url().to_owned(),
                initial_resource_versions: held.versions(kind),
                ..Default::default()
            };
            requests
                .send(request)
                .await
                .map_err(|_| ClientError::RequestsClosed)?;
        }
        drop(held);
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        *connected_at = Some(Instant::now());
        self.state.connected.store(true, Ordering::Relaxed);
        self.state.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%addr, "discovery stream open");

        while let Some(response) = responses.message().await? {
            let answer = self.apply(response);
            requests
                .send(answer)
                .await
                .map_err(|_| ClientError::RequestsClosed)?;
        }
        Ok(())
    }

    /// Applies one response and returns its ACK or NACK.
    fn apply(&self, response: proto::DeltaDiscoveryResponse) -> proto::DeltaDiscoveryRequest {
        let mut answer = proto::DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        let Some(kind) = ResourceKind::from_type_url(&response.type_url) else {
            tracing::warn!(type_url = %response.type_url, "NACK: unknown resource type");
            self.state.nacks.fetch_add(1, Ordering::Relaxed);
            answer.error_detail = Some(proto::ErrorDetail {
                message: format!("unknown resource type {:?}", response.type_url),
                resource_errors: Vec::new(),
            });
            return answer;
        };
        let current = self.store.load_full();
        let mut builder = SnapshotBuilder::from_snapshot(&current);
        let refused = builder.apply_delta(kind, response.resources, &response.removed_resources);
        let next = builder.build();
        if next.local() != current.local() {
            let (local, claimed) = (next.local(), next.claimed());
            tracing::info!(
                app = %local.app,
                lane = local.lane().unwrap_or("base"),
                overridden_by_flags = (!claimed.app.is_empty() || claimed.lane().is_some()),
                "workload identity from the control plane"
            );
        }
        let generation = self.store.store(next);
        if refused.is_empty() {
            self.state.acks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%kind, nonce = %response.nonce, generation, "ACK");
            return answer;
        }
        for r in &refused {
            tracing::warn!(%r, "refused resource; keeping its last good version");
        }
        self.state.nacks.fetch_add(1, Ordering::Relaxed);
        let count = u64::try_from(refused.len()).unwrap_or(u64::MAX);
        self.state
            .rejected_resources
            .fetch_add(count, Ordering::Relaxed);
        answer.error_detail = Some(proto::ErrorDetail {
            message: format!(
                "{} of the {kind} resources refused: {}",
                refused.len(),
                refused
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            resource_errors: refused.iter().map(|r| r.to_resource_error()).collect(),
        });
        answer
    }
}
