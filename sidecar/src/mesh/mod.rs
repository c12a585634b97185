//! Lane-aware routing: the proxy's [`Router`](crate::proxy::Router) built from
//! the live snapshot (DESIGN §4-5).
//!
//! One task ([`run_builder`]) watches the [`SnapshotStore`](crate::snapshot::SnapshotStore),
//! compiles each new snapshot into a [`Runtime`] (lane table, route table, this pod's propagation
//! settings) off the hot path, swaps it into the [`MeshRouter`] and prunes the balancer. The
//! router reads the current runtime once per request; the [`Propagator`](crate::lane::Propagator)
//! and [`Balancer`](crate::route::Balancer) it owns outlive every swap.
//!
//! # Layout
//! - [`runtime`]: the per-snapshot [`Runtime`].
//! - [`observe`]: per-request metrics recorded by the router's request state.
//! - [`router`]: [`MeshRouter`], the inbound lane decision and the outbound endpoint choice,
//!   and [`run_builder`], the task that builds each runtime and swaps it in.

pub mod observe;
pub mod router;
pub mod runtime;

pub use router::{MeshRouter, run_builder};
pub use runtime::Runtime;
