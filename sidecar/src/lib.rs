//! lanemesh data plane: the per-pod proxy that captures, routes and governs traffic.
//!
//! # Layout
//! - [`config`]: static proxy flags (`lanemesh-proxy run`), parsed once and validated.
//! - [`proxy`]: capture listeners, protocol detection, HTTP/1.1, HTTP/2/gRPC
//!   and TCP forwarding, graceful shutdown; routing behind the `Router` trait.
//! - [`admin`]: the admin (`127.0.0.1:15000`: `/config_dump`, `/logging`,
//!   `/shutdown`), health (`15021`: `/healthz/ready`) and metrics (`15020`:
//!   `/metrics`) listeners, and the reloadable log filter.
//! - [`init`]: `lanemesh-proxy init`, the nat rules that capture a pod's traffic.
//! - [`field`]: field-level refusals of discovery resources, shared by every conversion.
//! - [`policy`]: rate limits, concurrency, hot parameters, circuit breakers and
//!   overload protection as pure state machines (no I/O, injectable clock).
//! - [`lane`]: lane groups, the lane decision at entry apps and gateways, and carrying the lane
//!   across a hop (pure; injectable clock and random source).
//! - [`route`]: per-service endpoint sets, lane-aware endpoint choice with base fallback,
//!   destination lookup, and peak-EWMA power-of-two-choices balancing (pure).
//! - [`snapshot`]: the live configuration, an immutable snapshot of the
//!   discovery resources with indexes, validated per resource and swapped
//!   atomically.
//! - [`discovery`]: the discovery client (delta ADS stream with ACK/NACK and
//!   reconnect backoff) and the `--config-file` loader that fill the snapshot.
//! - [`metrics`]: the proxy's Prometheus registry (requests, durations,
//!   connections, lanes, governance, discovery), shared through an `Arc`.
//! - [`govern`]: the policy engine on the request path: rules compiled from `InboundPolicy` /
//!   `OutboundPolicy`, inbound limit chain, outbound breakers, fallbacks, CPU sampling.
//! - [`mesh`]: lane-aware routing, the proxy's `Router` fed from the live snapshot
//!   (lane decision, propagation, endpoint choice with base fallback).

pub mod admin;
pub mod config;
pub mod discovery;
pub mod field;
pub mod govern;
pub mod init;
pub mod lane;
pub mod mesh;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod snapshot;
