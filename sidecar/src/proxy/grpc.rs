//! What the proxy knows of gRPC: recognising a call, reading its status, and the parts of a
//! locally generated answer. One home for the status codes the router, the governors and the
//! core use.

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// gRPC status codes (numeric, as on the wire) the proxy produces or interprets.
pub mod code {
    /// A status the trailers did not carry, or could not be read.
    pub const UNKNOWN: u32 = 2;
    /// A timeout the proxy enforced.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// A rate limit, concurrency limit or overload protection refused the call.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// A response that ended without trailers.
    pub const INTERNAL: u32 = 13;
    /// An open breaker, or no endpoint.
    pub const UNAVAILABLE: u32 = 14;
}

/// `content-type: application/grpc` (or `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-status` of a header block, if present and numeric.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The gRPC status for an HTTP status, per gRPC's HTTP-to-gRPC status mapping.
pub fn code_for_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// gRPC percent-encodes `grpc-message` outside printable ASCII, and `%` itself.
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// `text` as a `grpc-message` value.
pub fn message(text: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(text.trim(), MESSAGE).to_string();
    // Only printable ASCII is left, which is always a valid header value.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn message_is_percent_encoded_as_grpc_specifies() {
        assert_eq!(message(" 50% done\n"), "50%25 done");
        assert_eq!(message("héllo"), "h%C3%A9llo");
        assert_eq!(message("tab\there"), "tab%09here");
    }

    #[test]
    fn http_statuses_map_like_grpc_clients_expect() {
        assert_eq!(
            code_for_http(StatusCode::SERVICE_UNAVAILABLE),
            code::UNAVAILABLE
        );
        assert_eq!(
            code_for_http(StatusCode::TOO_MANY_REQUESTS),
            code::UNAVAILABLE
        );
        assert_eq!(code_for_http(StatusCode::NOT_FOUND), 12);
        assert_eq!(code_for_http(StatusCode::IM_A_TEAPOT), code::UNKNOWN);
    }

    #[test]
    fn status_and_content_type_are_read_from_headers() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        h.insert("grpc-status", HeaderValue::from_static(" 14"));
        assert!(is_grpc(&h));
        assert_eq!(status(&h), Some(14));
    }
}
