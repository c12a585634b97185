//! lanemesh data plane: the per-pod proxy that captures, routes and governs traffic.
//!
//! # Layout
//! - [`init`]: `lanemesh-proxy init`, the nat rules that capture a pod's traffic.
//! - [`policy`]: rate limits, concurrency, hot parameters, circuit breakers and
//!   overload protection as pure state machines (no I/O, injectable clock).

pub mod init;
pub mod policy;
