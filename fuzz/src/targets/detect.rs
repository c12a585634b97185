//! Protocol detection on a connection's first bytes, read and replayed.
//!
//! Invariants:
//! - once a prefix of the bytes is classified, every longer prefix gets the same protocol (a
//!   verdict never goes back to "need more", and never changes);
//! - `detect` over the bytes (any read budget) hands back exactly the bytes it read, a prefix
//!   of the input, never more than the budget, and its protocol agrees with `classify`.

use std::sync::OnceLock;
use std::time::Duration;

use lanemesh_sidecar::proxy::detect::{Protocol, Verdict, classify, detect};

/// Prefixes checked one by one; beyond that a sample, so a long input costs linear time.
const EVERY_PREFIX_UP_TO: usize = 128;
const SAMPLED_PREFIXES: usize = 64;

pub fn run(data: &[u8]) {
    monotone(data);
    replayed(data);
}

fn monotone(data: &[u8]) {
    let mut lengths: Vec<usize> = (0..=data.len().min(EVERY_PREFIX_UP_TO)).collect();
    if data.len() > EVERY_PREFIX_UP_TO {
        let rest = data.len() - EVERY_PREFIX_UP_TO;
        lengths.extend(
            (1..=SAMPLED_PREFIXES).map(|i| EVERY_PREFIX_UP_TO + rest * i / SAMPLED_PREFIXES),
        );
    }
    let mut known: Option<(usize, Protocol)> = None;
    for len in lengths {
        let verdict = classify(&data[..len]);
        match (known, verdict) {
            (None, Verdict::Known(protocol)) => known = Some((len, protocol)),
            (None, Verdict::NeedMore) => {}
            (Some((at, protocol)), verdict) => assert_eq!(
                verdict,
                Verdict::Known(protocol),
                "{protocol:?} after {at} bytes, then {verdict:?} after {len}"
            ),
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            // The harness cannot run without it; a panic reports that.
            Err(error) => panic!("tokio runtime: {error}"),
        }
    })
}

fn replayed(data: &[u8]) {
    // The first byte picks the read budget, as `--detect-max-bytes` would (1..=4096).
    let max = data.first().map_or(1, |b| usize::from(*b) * 16 + 1);
    let mut reader = data;
    let (protocol, buf) = runtime().block_on(detect(&mut reader, Duration::from_secs(5), max));
    assert!(
        buf.len() <= max,
        "read {} bytes with a budget of {max}",
        buf.len()
    );
    assert_eq!(
        &buf[..],
        &data[..buf.len()],
        "replayed bytes differ from those read"
    );
    match classify(&buf) {
        Verdict::Known(classified) => assert_eq!(protocol, classified, "detect vs classify"),
        // Undecided: the reader ran dry (opaque) or the budget is spent (HTTP/1 if a prefix).
        Verdict::NeedMore => assert!(
            buf.len() == max || buf.len() == data.len(),
            "stopped undecided after {} of {} bytes",
            buf.len(),
            data.len()
        ),
    }
}
