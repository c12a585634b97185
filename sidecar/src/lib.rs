//! lanemesh data plane: the per-pod proxy that captures, routes and governs traffic.
//!
//! # Layout
//! - [`policy`]: rate limits, concurrency, hot parameters, circuit breakers and
//!   overload protection as pure state machines (no I/O, injectable clock).
//! - [`snapshot`]: the live configuration, an immutable snapshot of the
//!   discovery resources with indexes, validated per resource and swapped
//!   atomically.
//! - [`discovery`]: the discovery client (delta ADS stream with ACK/NACK and
//!   reconnect backoff) and the `--config-file` loader that fill the snapshot.

pub mod discovery;
pub mod policy;
pub mod snapshot;
