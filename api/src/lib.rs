//! lanemesh API: discovery protocol, CRD types and validation shared by both planes.
//!
//! # Layout
//! - [`proto`]: the generated discovery protocol (`proto/lanemesh/v1/*.proto`).
//! - [`resource`]: type URLs and `Any` packing of the discovery resources.
//! - [`crd`]: the `lanemesh.io/v1alpha1` custom resources with their schema and CEL rules.
//! - [`convert`]: CRD spec -> discovery resource, with the checks CEL cannot express.
//! - [`defaults`]: the documented values of fields users may leave out.
//! - [`hash`]: FNV-1a 64, for the `Percentage` operator and resource versions.
//! - [`limits`]: upper bounds on user-supplied numbers (schema and conversion).
//! - [`labels`]: the MSE onboarding labels and what they say about a pod.
//! - [`exposition`]: reading the Prometheus text format of the proxies' `/metrics` (the pilot's
//!   traffic view).
//! - [`manifest`]: reading multi-document YAML of lanemesh objects (examples, local source).

pub mod convert;
// `KubeSchema` re-emits each struct in a private module to derive its
// schema; that copy's `pub` items trip `unreachable_pub`.
#[allow(unreachable_pub)]
pub mod crd;
pub mod defaults;
pub mod exposition;
pub mod hash;
pub mod labels;
pub mod limits;
pub mod manifest;
pub mod resource;

/// Generated from `proto/lanemesh/v1/`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("lanemesh.v1");
}
