//! lanemesh data plane: the per-pod proxy that captures, routes and governs traffic.
//!
//! # Layout
//! - [`config`]: static proxy flags (`lanemesh-proxy run`), parsed once and validated.
//! - [`policy`]: rate limits, concurrency, hot parameters, circuit breakers and
//!   overload protection as pure state machines (no I/O, injectable clock).
//! - [`proxy`]: capture listeners, protocol detection, HTTP/1.1, HTTP/2/gRPC
//!   and TCP forwarding, graceful shutdown; routing behind the `Router` trait.

pub mod config;
pub mod policy;
pub mod proxy;
