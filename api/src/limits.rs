//! Upper bounds on the numbers users write, shared by the CRD schema and
//! conversion.
//!
//! The API server checks `minimum`/`maximum`/`maxLength` but not `format`:
//! without explicit bounds a value such as `concurrency.max: 4294967296`
//! would be stored, and every client decoding it into a `u32` would fail.
//! Conversion checks the same bounds again, because the local directory
//! source and `lanemesh-proxy --config-file` never see the API server.

use std::time::Duration;

/// The longest duration any field takes. Far beyond any sensible window,
/// timeout or warm-up, and small enough that the sidecar's arithmetic on it
/// (nanosecond counters, `period * threshold` token counts) cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `maxLength` of every duration string: a value the API server stores can
/// never make the parser work hard (the longest sensible one, `23h59m59.999999999s`,
/// has 20 characters).
pub const DURATION_MAX_LENGTH: u32 = 64;

/// The largest QPS or hot-parameter threshold, and breaker error count.
/// With [`MAX_DURATION`] it keeps the warm-up token count
/// (`threshold * period`) well inside a `u64`.
pub const MAX_THRESHOLD: f64 = 1e9;

/// The largest count users give (concurrency, burst, minimum requests).
pub const MAX_COUNT: u32 = 1_000_000_000;

/// The most hot-parameter values one rule tracks: the sidecar sizes the rule's table for it
/// up front, so this bounds its memory (tens of MB at most).
pub const MAX_TRACKED_VALUES: u32 = 1_000_000;
