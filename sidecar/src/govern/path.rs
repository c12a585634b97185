//! The path a governance rule is matched against.
//!
//! Apps and frameworks read a request path after normalising it, so a rule must see the same
//! path or a caller slips past it by spelling the path another way: `/api//pay`, `/api/%70ay`,
//! `/api/./pay`, `/x/../api/pay` and `/api/pay;jsessionid=1` all reach the handler of
//! `/api/pay` in common servlet and router stacks. Like Envoy's `normalize_path` plus
//! `merge_slashes`, and additionally without `;` path parameters (which servlet containers
//! strip before mapping).
//!
//! The request itself is forwarded unchanged; only the match uses the normalised form.

use std::borrow::Cow;

/// Most bytes of path normalised; a longer path is matched as it is (a rule keyed on a path
/// that long cannot be meant), which keeps the work per request bounded.
const MAX_PATH: usize = 8 * 1024;

/// `path` (no query) normalised for matching; borrowed when it is already normal.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if path.len() > MAX_PATH || is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    // A path ending in an empty or dot segment names a directory: keep its trailing slash.
    let last = decoded.rsplit('/').next().unwrap_or("");
    let trailing = matches!(last.split(';').next(), Some("" | "." | ".."));
    for segment in decoded.split('/') {
        // Path parameters end at the next slash.
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    Cow::Owned(out)
}

/// No `%`, `;`, empty or dot segments: nothing to do (the common case, no allocation).
fn is_normal(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['%', ';', '\\'])
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..")
}

/// Decodes `%XX` of unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`), which mean
/// the same encoded or not; every other escape (`%2F` above all) stays as it is, and a `%` that
/// starts no escape becomes `%25`. A backslash counts as a slash, as several servers treat it.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|d| char::from(*d).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    match char::from_u32(hi * 16 + lo) {
                        Some(c)
                            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') =>
                        {
                            out.push(c);
                        }
                        // Another escape (`%2F` above all) means something else than its
                        // character: kept.
                        _ => out.push_str(path.get(i..i + 3).unwrap_or("")),
                    }
                    i += 3;
                }
                // Not an escape: a literal '%' (invalid in a URI). Written as its own escape,
                // so a decoded character after it cannot complete a new one (`%7%61` must not
                // become `%7a`, then `z` on a second look): normalising twice changes nothing.
                _ => {
                    out.push_str("%25");
                    i += 1;
                }
            }
            continue;
        }
        let c = if b == b'\\' { '/' } else { char::from(b) };
        // `path` is ASCII in practice (an `http::Uri` path is); a multi-byte character is
        // copied whole.
        if b.is_ascii() {
            out.push(c);
            i += 1;
        } else {
            let len = utf8_len(b);
            out.push_str(path.get(i..i + len).unwrap_or(""));
            i += len.max(1);
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_path_normalise_to_it() {
        for spelled in [
            "/api/pay",
            "/api//pay",
            "//api///pay",
            "/api/%70ay",
            "/api/%70%61%79",
            "/api/./pay",
            "/x/../api/pay",
            "/api/pay;jsessionid=1",
            "/api;v=1/pay",
            "/api\\pay",
            "/../api/pay",
        ] {
            assert_eq!(normalize(spelled), "/api/pay", "{spelled}");
        }
    }

    #[test]
    fn trailing_slashes_and_reserved_escapes_are_kept() {
        assert_eq!(normalize("/api/pay/"), "/api/pay/");
        assert_eq!(normalize("/api//pay//"), "/api/pay/");
        assert_eq!(normalize("/api/pay/."), "/api/pay/");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/.."), "/");
        // An encoded slash is data, not a separator.
        assert_eq!(normalize("/api%2Fpay"), "/api%2Fpay");
        assert_eq!(normalize("/a%zz"), "/a%25zz", "a stray % is escaped");
        assert_eq!(normalize("/caf%C3%A9"), "/caf%C3%A9");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        // Found by the path-normalize fuzz target: a decoded character completed the escape
        // a stray '%' had started.
        for path in [
            "/61%7%61%F",
            "/api/%7%61%",
            "/;x/api/%70%6%61",
            "/api%61%7%61%\u{5}70%7%6279%\"2",
            "/%%61",
            "/%",
        ] {
            let once = normalize(path);
            assert_eq!(normalize(&once), once, "{path:?}");
        }
        assert_eq!(normalize("/api/%7%61"), "/api/%257a");
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        assert!(matches!(normalize("/api/pay"), Cow::Borrowed(_)));
        assert!(matches!(normalize("/api/pay.json"), Cow::Borrowed(_)));
    }
}
