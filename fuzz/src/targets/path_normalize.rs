//! The path governance rules match against (`govern::path::normalize`).
//!
//! Input: a request path. Checked twice: as the path of an `http` request target (what the
//! proxy really passes: ASCII, no spaces) when it is one, and as any string.
//! Invariants: normalising is idempotent (or a second spelling of a path would match other
//! rules than the first); the result starts with '/' and has no empty, `.` or `..` segment
//! and no `;` parameters. A path longer than the normaliser's bound (8 KiB) is matched as it
//! is, so only idempotence is checked for it.

use lanemesh_sidecar::govern::path::normalize;

/// `MAX_PATH` of `govern::path` (private there): longer paths are left alone.
const MAX_PATH: usize = 8 * 1024;

pub fn run(data: &[u8]) {
    if let Ok(target) = http::uri::PathAndQuery::try_from(data) {
        check(target.path());
    }
    check(&String::from_utf8_lossy(data));
}

fn check(path: &str) {
    let once = normalize(path);
    let twice = normalize(&once);
    assert_eq!(twice, once, "normalising {path:?} twice");
    if path.len() > MAX_PATH {
        return;
    }
    assert!(once.starts_with('/'), "{path:?} -> {once:?}");
    assert!(
        !once.contains(';'),
        "{path:?} -> {once:?} keeps a parameter"
    );
    // Every segment but the last (after a trailing slash) is non-empty and not a dot segment.
    let segments: Vec<&str> = once[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            (last || !segment.is_empty()) && *segment != "." && *segment != "..",
            "{path:?} -> {once:?} has segment {segment:?}"
        );
    }
}
