//! Header rules both HTTP versions share: list-valued fields and the connection-scoped fields a
//! proxy must not forward (RFC 9110 §7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The comma-separated tokens of a list-valued field (`Connection`, `TE`, `Transfer-Encoding`),
/// trimmed, empty ones skipped.
pub fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes a request's connection-scoped fields (RFC 9110 §7.6.1) and those its `Connection`
/// names, keeping `TE: trailers` and, for an upgrade, `Upgrade` with `connection: upgrade`.
/// Runs before the router sees the request, so a client cannot name a field the router adds
/// (the lane tag) and have it removed on the way out; `Host` is never removed this way.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most requests carry none of these: one pass over the names present, nothing else.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Values share the head's buffer, so holding them is a reference count, not a copy; a
    // second `Connection` field is rare enough to pay for a Vec.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let first = connection.next().cloned();
    let more: Vec<HeaderValue> = connection.cloned().collect();
    for value in first.iter().chain(&more) {
        for token in list_tokens(value.as_bytes()) {
            if token.eq_ignore_ascii_case(b"host") || token.eq_ignore_ascii_case(b"upgrade") {
                continue;
            }
            // Not a field name (not UTF-8 or not a token): nothing can carry it.
            if let Ok(name) = std::str::from_utf8(token) {
                headers.remove(name);
            }
        }
    }
    headers.remove(header::CONNECTION);
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::PROXY_AUTHENTICATE);
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .flat_map(|v| list_tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}
