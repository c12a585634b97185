//! lanemesh control plane: sources -> index -> per-node snapshots -> discovery streams to sidecars.
//!
//! # Layout
//! - [`source`]: where objects come from (`local` directory, `kubernetes` watchers); the
//!   [`source::SourceEvent`] interface.
//! - [`index`]: every object, converted (debounced) into one immutable [`snapshot::World`].
//! - [`snapshot`]: the encoded world and the part of it each node receives.
//! - [`auth`]: who may open a discovery stream for which pod (TokenReview).
//! - [`discovery`]: the gRPC delta aggregated discovery server (port 15010).
//! - [`status`]: CRD status (`Accepted`, `Lane.status.matchedPods`), written by the Lease holder.
//! - [`inject`]: sidecar injection and its mutating admission webhook (port 15017).
//! - [`traffic`]: QPS per app and lane, rule hits and breakers from the sidecars' own metrics
//!   (scraped by the pilot).
//! - [`console`]: the web console (`--console-addr`): lanes, QPS charts, rule hits, refused
//!   objects, lane switches with `--console-writes`.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/debug/*` (port 15014).
//! - [`metrics`]: the Prometheus metrics.
//! - [`health`]: whether every task of the replica still runs (the admin server reports it).
//! - [`run`]: wiring of all the above, used by `lanemesh-pilot` and tests.

pub mod admin;
pub mod auth;
pub mod console;
pub mod discovery;
pub mod health;
pub mod index;
pub mod inject;
pub mod metrics;
pub mod run;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod traffic;

/// Resolves once `shutdown` is `true` (or its sender is gone). The borrow
/// `wait_for` returns is dropped here, so callers' futures stay `Send`.
pub(crate) async fn stopped(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
