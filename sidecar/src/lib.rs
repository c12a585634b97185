//! lanemesh data plane: the per-pod proxy that captures, routes and governs traffic.
//!
//! # Layout
//! Layers, each importing only from itself and the ones above it in this list (`make test`
//! checks that, and that sibling modules never import each other in a cycle):
//!
//! 1. Proxy core and its instruments, knowing nothing of lanes or policies:
//!    - [`proxy`]: capture listeners, protocol detection, HTTP/1.1 (own relay), HTTP/2 and gRPC
//!      (hyper), opaque TCP, graceful shutdown, its own plain [`proxy::ProxyConfig`]; routing
//!      is asked through the [`proxy::Router`] trait.
//!    - [`init`]: `lanemesh-proxy init`, the nat rules that capture a pod's traffic.
//!    - [`trace`]: OpenTelemetry request spans and their bounded OTLP export.
//!    - [`metrics`]: the Prometheus registry. It names no domain type: the domains' label enums
//!      implement [`metrics::LabelValue`], and other modules attach what they report.
//! 2. Domain logic, pure (no I/O, injectable clocks):
//!    - [`identity`]: [`identity::PodIdentity`], who the sidecar serves.
//!    - [`policy`]: rate limits, concurrency, hot parameters, circuit breakers and overload
//!      protection as state machines.
//!    - [`field`]: field-level refusals shared by every proto -> runtime conversion.
//!    - [`lane`]: lane groups, the lane decision at entry apps and gateways, and carrying the
//!      lane across a hop.
//!    - [`gateway`]: the gateway's routes (HTTPRoute and Ingress semantics): which backend
//!      Service a request entering the mesh goes to, edge trust, per-route lane weights.
//!    - [`route`]: per-service endpoint sets, lane-aware endpoint choice with base fallback,
//!      destination lookup, peak-EWMA power-of-two-choices balancing.
//!    - [`govern`]: rules compiled from `InboundPolicy` / `OutboundPolicy` (their `TryFrom` is
//!      the one check of each field), the inbound chain, outbound breakers, fallbacks.
//! 3. Live configuration:
//!    - [`snapshot`]: the immutable snapshot of the discovery resources, each compiled into
//!      its runtime form when it arrives, swapped atomically by one writer.
//!    - [`discovery`]: the delta ADS client (ACK/NACK, reconnect backoff) and the
//!      `--config-file` loader that fill the snapshot.
//!    - [`mesh`]: the proxy's [`proxy::Router`] built from the snapshot.
//!    - [`admin`]: the admin (`127.0.0.1:15000`), health (`15021`) and metrics (`15020`)
//!      listeners and the reloadable log filter.
//! 4. Wiring:
//!    - [`app`]: [`app::App`], the one builder `main` and the integration tests share.
//!    - [`config`]: the flags of `lanemesh-proxy run`, parsed once into an
//!      [`app::AppConfig`].

pub mod admin;
pub mod app;
pub mod config;
pub mod discovery;
pub mod field;
pub mod gateway;
pub mod govern;
pub mod identity;
pub mod init;
pub mod lane;
pub mod mesh;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod snapshot;
pub mod trace;
