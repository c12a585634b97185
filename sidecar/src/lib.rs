//! lanemesh data plane: the per-pod proxy that captures, routes and governs traffic.
//!
//! # Layout
//! - [`policy`]: rate limits, concurrency, hot parameters, circuit breakers and
//!   overload protection as pure state machines (no I/O, injectable clock).

pub mod policy;
