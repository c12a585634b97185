//! The seam between the proxy core (sockets, protocols) and the routing
//! logic (lanes, endpoints, policies). The core asks a [`Router`] once per
//! HTTP request and once per opaque TCP connection; the router answers
//! synchronously from its current snapshot (no I/O, no awaits).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// Which capture listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The local app calls out (listener 15001).
    Outbound,
    /// Someone calls the local app (listener 15006).
    Inbound,
    /// A client enters the mesh at a gateway listener (gateway mode).
    Gateway,
}

impl Direction {
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Gateway => "gateway",
        }
    }
}

/// Facts about one captured connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnContext {
    /// Listener that accepted it.
    pub direction: Direction,
    /// Client address.
    pub peer: SocketAddr,
    /// Where the client was going (before the iptables redirect); at a gateway, the listener's
    /// own address.
    pub original_dst: SocketAddr,
    /// Where passthrough sends it: the original destination for outbound; for inbound the
    /// original destination too (the pod IP, so loopback-only app ports stay private) unless
    /// an app address is configured, then that address on the original port.
    pub default_target: SocketAddr,
}

impl ConnContext {
    /// Builds the context, computing [`ConnContext::default_target`].
    pub fn new(
        direction: Direction,
        peer: SocketAddr,
        original_dst: SocketAddr,
        app_address: Option<IpAddr>,
    ) -> Self {
        let default_target = match (direction, app_address) {
            (Direction::Inbound, Some(app)) => SocketAddr::new(app, original_dst.port()),
            _ => original_dst,
        };
        Self {
            direction,
            peer,
            original_dst,
            default_target,
        }
    }
}

/// A response the proxy produces itself (rejections, fallbacks, 503 "no endpoint").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers, e.g. `x-lanemesh-blocked`.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// The gRPC status a gRPC caller gets instead (as a trailers-only response); `None` = derived
    /// from `status` by the gRPC HTTP mapping.
    pub grpc_status: Option<u32>,
}

impl LocalResponse {
    /// A plain-text response.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        Self {
            status,
            headers,
            body: body.into(),
            grpc_status: None,
        }
    }
}

/// What to do with one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send it to the connection's [`ConnContext::default_target`].
    Passthrough,
    /// Send it to this endpoint (lane-aware choice).
    Forward(SocketAddr),
    /// Answer locally; nothing is sent upstream.
    Respond(LocalResponse),
}

/// What to do with one opaque TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpDecision {
    /// Connect to the connection's [`ConnContext::default_target`].
    Passthrough,
    /// Connect to this endpoint instead.
    Forward(SocketAddr),
    /// Close the client connection.
    Reject,
}

/// Why a forwarded request got no upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection to the endpoint could not be established.
    Connect,
    /// The connection failed (reset, closed) before a response head arrived.
    Reset,
    /// No response head within the route's timeout.
    Timeout,
}

/// How one forwarded HTTP request went, reported when the response head
/// arrives or the attempt fails (input for breakers and load balancing).
/// A gRPC status usually travels in the trailers, reported later through
/// [`RequestState::on_end`]; only a trailers-only response has it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpOutcome {
    /// Endpoint the request was sent to.
    pub target: SocketAddr,
    /// Response status, or why there is none.
    pub result: Result<StatusCode, UpstreamFailure>,
    /// From sending the request to the response head (or the failure).
    pub elapsed: Duration,
    /// The response is gRPC (`content-type: application/grpc...`).
    pub grpc: bool,
    /// `grpc-status` of a trailers-only gRPC response.
    pub grpc_status: Option<u32>,
}

/// How a forwarded response body ended.
#[derive(Debug, Clone, Copy)]
pub enum ResponseEnd<'a> {
    /// With trailers (gRPC puts its status here).
    Trailers(&'a HeaderMap),
    /// At the end of the stream, without trailers.
    Complete,
    /// The upstream failed mid-body.
    Error,
}

/// State a router attaches to one HTTP request (in-flight guards, balancer
/// picks). The core holds it until the response body has been sent downstream
/// in full, or until the exchange fails or the client goes away, then drops
/// it: dropping it is how the request ends for the router.
pub trait RequestState: Send + 'static {
    /// Observes the outcome of the forwarded request, when the response head
    /// arrives or the attempt fails. Not called for local responses. Must be
    /// cheap: it runs on the request path.
    fn on_outcome(&mut self, outcome: &HttpOutcome) {
        let _ = outcome;
    }

    /// Observes the end of a forwarded response body (not called when the
    /// client goes away first). At most once, after `on_outcome`.
    fn on_end(&mut self, end: ResponseEnd<'_>) {
        let _ = end;
    }

    /// Asked after each attempt of a request routed [`Routed::with_retries`], before
    /// `on_outcome`: `Some` abandons the attempt and sends the request again. `replayable`:
    /// the core can send it again (its body is in hand and the request timeout has not passed).
    /// A state that retries accounts for the abandoned attempt itself (breakers, balancer);
    /// `on_outcome` then sees only the last attempt.
    fn retry(&mut self, outcome: &HttpOutcome, replayable: bool) -> Option<Retry> {
        let _ = (outcome, replayable);
        None
    }
}

/// Where and when to send a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The endpoint of the next attempt.
    pub target: SocketAddr,
    /// The wait before it.
    pub backoff: Duration,
}

/// A routing decision with the request's state, if the router keeps any.
pub struct Routed {
    /// Where the request goes.
    pub decision: RouteDecision,
    /// Held by the core until the exchange ends.
    pub state: Option<Box<dyn RequestState>>,
    /// Forward only after this delay (a queueing rate limit spaced the request).
    pub delay: Option<Duration>,
    /// Give up on the upstream if no response head arrived within this time (every attempt
    /// included).
    pub timeout: Option<Duration>,
    /// `Some` when the router may retry the request: the core keeps a copy of a small body and
    /// asks [`RequestState::retry`] after each attempt.
    pub retries: Option<Attempts>,
}

/// How the core makes the attempts of a request that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempts {
    /// Each attempt's limit to its response head.
    pub per_try_timeout: Option<Duration>,
}

impl Attempts {
    /// The limit of an attempt starting now, given what is left of the request's timeout.
    pub fn limit(&self, left: Option<Duration>) -> Option<Duration> {
        match (self.per_try_timeout, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Routed {
    /// A decision with per-request state.
    pub fn with_state(decision: RouteDecision, state: impl RequestState) -> Self {
        Self {
            decision,
            state: Some(Box::new(state)),
            delay: None,
            timeout: None,
            retries: None,
        }
    }

    /// Lets the router retry the request (see [`Routed::retries`]).
    #[must_use]
    pub fn with_retries(mut self, retries: Option<Attempts>) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the forwarding delay.
    #[must_use]
    pub fn delayed(mut self, delay: Option<Duration>) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the upstream timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
}

impl From<RouteDecision> for Routed {
    /// A decision without per-request state.
    fn from(decision: RouteDecision) -> Self {
        Self {
            decision,
            state: None,
            delay: None,
            timeout: None,
            retries: None,
        }
    }
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("decision", &self.decision)
            .field("state", &self.state.is_some())
            .finish()
    }
}

/// What the configuration declares a connection's destination port to speak (a Service port's
/// `appProtocol` or name prefix, as Istio reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortProtocol {
    /// Nothing declared: detect from the client's first bytes.
    #[default]
    Detect,
    /// HTTP (HTTP/1, HTTP/2 or gRPC): never relayed as opaque bytes, so a client cannot skip
    /// routing and governance by waiting or by sending something else first.
    Http,
    /// Opaque TCP: no detection delay.
    Opaque,
}

/// Routing logic plugged into the proxy core. Implementations read their
/// live snapshot (`arc-swap`) once per call and must not block.
pub trait Router: Send + Sync + 'static {
    /// Decides one HTTP request. `req` may be modified (e.g. the lane tag
    /// header injected); the URI's authority is rewritten by the core. State
    /// returned with the decision lives until the exchange ends.
    fn route_http(&self, conn: &ConnContext, req: &mut http::request::Parts) -> Routed;

    /// Decides one opaque TCP connection.
    fn route_tcp(&self, conn: &ConnContext) -> TcpDecision;

    /// What the connection's destination port is declared to speak. The default declares
    /// nothing.
    fn port_protocol(&self, conn: &ConnContext) -> PortProtocol {
        let _ = conn;
        PortProtocol::Detect
    }

    /// Called once per accepted connection (after its original destination is known); what it
    /// returns is dropped when the connection ends, e.g. an open-connections gauge guard.
    fn open_connection(&self, conn: &ConnContext) -> Option<Box<dyn std::any::Any + Send>> {
        let _ = conn;
        None
    }

    /// Whether the answers on this connection should ask the client to close it (HTTP/1
    /// `Connection: close`) while it is still served: the pod is being deleted, and keep-alive
    /// clients should move to another endpoint before the app stops. Asked once per request.
    fn closing(&self, conn: &ConnContext) -> bool {
        let _ = conn;
        false
    }

    /// Observes the outcome of a request this router forwarded. Must be cheap:
    /// it runs on the request path. The default ignores it.
    fn on_http_outcome(&self, conn: &ConnContext, outcome: &HttpOutcome) {
        let _ = (conn, outcome);
    }
}

/// Sends everything where it was going: outbound to the original
/// destination, inbound to the app. The behaviour for traffic lanemesh does
/// not govern, and the router used until a snapshot arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassthroughRouter;

impl Router for PassthroughRouter {
    fn route_http(&self, _conn: &ConnContext, _req: &mut http::request::Parts) -> Routed {
        RouteDecision::Passthrough.into()
    }

    fn route_tcp(&self, _conn: &ConnContext) -> TcpDecision {
        TcpDecision::Passthrough
    }
}

impl std::fmt::Debug for dyn Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Router")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inbound_default_target_is_the_pod_ip_unless_an_app_address_is_set() {
        let peer: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let inbound = ConnContext::new(Direction::Inbound, peer, dst, None);
        assert_eq!(
            inbound.default_target, dst,
            "delivered to the pod IP, not loopback"
        );
        let app: IpAddr = "127.0.0.1".parse().unwrap();
        let inbound = ConnContext::new(Direction::Inbound, peer, dst, Some(app));
        assert_eq!(inbound.default_target, "127.0.0.1:8080".parse().unwrap());
        let outbound = ConnContext::new(Direction::Outbound, peer, dst, Some(app));
        assert_eq!(outbound.default_target, dst);
    }
}
