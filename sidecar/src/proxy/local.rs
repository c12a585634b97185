//! The proxy's own answers: errors it reports with `x-lanemesh-error`, and the one mapping from
//! "no response from the upstream" to a status, shared by HTTP/1, HTTP/2 and the router.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use http::header::HeaderValue;

use super::grpc;
use super::router::{LocalResponse, UpstreamFailure};

/// Response header naming why the proxy answered itself (`upstream_connect`, `no_endpoint`, ...).
pub const ERROR_HEADER: &str = "x-lanemesh-error";

/// A plain-text answer of the proxy's own, with `x-lanemesh-error: <reason>`.
pub fn error(status: StatusCode, reason: &'static str, text: &str) -> LocalResponse {
    let mut local = LocalResponse::text(status, format!("lanemesh: {text}\n"));
    local
        .headers
        .insert(ERROR_HEADER, HeaderValue::from_static(reason));
    local
}

/// Why a forwarded request got no response head, as both HTTP versions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoResponse {
    /// No connection to the endpoint could be made.
    Connect,
    /// The connection failed (reset, closed, unreadable answer) before a response head.
    Reset,
    /// No response head within the limit.
    Timeout(Duration),
}

impl NoResponse {
    /// The outcome reported to the router (breakers, balancer).
    pub fn outcome(self) -> UpstreamFailure {
        match self {
            Self::Connect => UpstreamFailure::Connect,
            Self::Reset => UpstreamFailure::Reset,
            Self::Timeout(_) => UpstreamFailure::Timeout,
        }
    }

    /// The caller's answer: 502 for a failed connection, 504 for a timeout (gRPC callers get
    /// `DEADLINE_EXCEEDED` for it, `UNAVAILABLE` by the HTTP mapping otherwise).
    pub fn local(self, target: SocketAddr) -> LocalResponse {
        match self {
            Self::Connect => error(
                StatusCode::BAD_GATEWAY,
                "upstream_connect",
                &format!("upstream connect error ({target})"),
            ),
            Self::Reset => error(
                StatusCode::BAD_GATEWAY,
                "upstream_reset",
                &format!("upstream connection failed before a response ({target})"),
            ),
            Self::Timeout(limit) => {
                let mut local = error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    &format!("no response from {target} within {limit:.0?}"),
                );
                local.grpc_status = Some(grpc::code::DEADLINE_EXCEEDED);
                local
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_reason_and_outcome() {
        let target: SocketAddr = "10.0.0.7:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        for (failure, status, reason) in [
            (NoResponse::Connect, 502, "upstream_connect"),
            (NoResponse::Reset, 502, "upstream_reset"),
            (
                NoResponse::Timeout(Duration::from_secs(1)),
                504,
                "upstream_timeout",
            ),
        ] {
            let local = failure.local(target);
            assert_eq!(local.status.as_u16(), status);
            assert_eq!(local.headers[ERROR_HEADER], reason);
            assert!(String::from_utf8_lossy(&local.body).contains("10.0.0.7:8080"));
        }
        assert_eq!(NoResponse::Reset.outcome(), UpstreamFailure::Reset);
        assert_eq!(
            NoResponse::Timeout(Duration::ZERO).outcome(),
            UpstreamFailure::Timeout
        );
    }
}
