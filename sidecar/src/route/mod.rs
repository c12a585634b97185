//! Endpoint choice as pure logic (DESIGN §4 "Endpoint choice", §5 destinations).
//!
//! The proxy converts each `proto::Service` with [`ServiceSpec::try_from`], builds one
//! [`RouteTable`] per snapshot (off the hot path, attaching each endpoint's statistics from the
//! long-lived [`Balancer`]) and swaps it in atomically; afterwards it calls [`Balancer::prune`].
//! Per outbound connection it calls [`RouteTable::lookup`] on the original destination (`None` =
//! pass through untouched), per request [`Destination::choose`] with the request's lane (a
//! [`NoEndpoint`] error is the 503 body), then [`Balancer::pick`] on the candidates, holding the
//! returned [`Pick`] until the response completes.
//!
//! # Modules
//! - [`endpoints`]: service endpoint sets, destination lookup, lane-aware candidates.
//! - [`balancer`]: power of two choices over a peak EWMA of latency and outstanding requests.

pub mod balancer;
pub mod endpoints;

pub use balancer::{Balancer, BalancerConfig, Endpoint, EndpointStats, Pick, WarmupConfig};
pub use endpoints::{
    Addressed, Chosen, Destination, EndpointSpec, NoEndpoint, PortRoute, PortSpec, Protocol,
    RouteTable, ServiceConfigError, ServiceRoute, ServiceSpec,
};
