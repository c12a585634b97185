//! The proxy core: capture listeners, protocol detection, HTTP/1.1, HTTP/2
//! (gRPC) and opaque TCP forwarding, graceful shutdown. Routing decisions are
//! delegated to a [`Router`]; the lane/route/policy logic plugs in there.
//!
//! # Layout
//! - [`config`]: the core's own settings and their documented defaults (no flags here).
//! - [`listener`]: the outbound/inbound capture listeners and the
//!   per-connection pipeline ([`Proxy`]).
//! - [`orig_dst`]: where a captured connection was going (`SO_ORIGINAL_DST`,
//!   or a test seam).
//! - [`detect`]: protocol detection by reading and replaying the first bytes.
//! - [`rewind`]: replays the detection bytes in front of the socket.
//! - [`router`]: the [`Router`] trait, decisions and [`PassthroughRouter`].
//! - [`h1`]: the HTTP/1 relay (own head parsing, bodies relayed verbatim, upgrades).
//! - [`headers`]: header rules both HTTP versions share (list fields, hop-by-hop fields).
//! - [`local`]: the proxy's own answers and the one upstream-failure -> status mapping.
//! - [`http`]: HTTP/2: hyper server per connection, hyper client streams upstream.
//! - [`pool`]: upstream connection pools per worker (HTTP/1 sockets, HTTP/2 connections).
//! - [`replay`]: request bodies kept (bounded) so a retry can send them again.
//! - [`grpc`]: recognising gRPC calls, their status, local gRPC answers.
//! - [`tcp`]: opaque byte relay.
//! - [`shutdown`]: the shutdown trigger and SIGTERM handling.

pub mod config;
pub mod detect;
pub mod grpc;
pub mod h1;
pub mod headers;
pub mod http;
pub mod listener;
pub mod local;
pub mod orig_dst;
pub mod pool;
pub mod replay;
pub mod rewind;
pub mod router;
pub mod shutdown;
pub mod tcp;

pub use config::{ConfigError, ProxyConfig};
pub use listener::{DrainReport, Proxy, ProxyError};
pub use orig_dst::{Fixed, OriginalDst, PeerMap, SoOriginalDst};
pub use router::{
    Attempts, ConnContext, Direction, HttpOutcome, LocalResponse, PassthroughRouter, PortProtocol,
    RequestState, Retry, RouteDecision, Routed, Router, TcpDecision, UpstreamFailure,
};
pub use shutdown::{ShutdownHandle, ShutdownSignal};
