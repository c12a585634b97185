//! Where the control plane learns about objects, and the one interface every
//! source feeds the index through.
//!
//! A source sends [`SourceEvent`]s on an mpsc channel: `Replace` with the
//! whole state (the local directory after each change), or `ReplaceKind`
//! per kind after each (re)list followed by `Apply`/`Delete` per object
//! (Kubernetes watches). The index counts as fully loaded (readiness) after
//! the first `Replace`, or after `Synced` once every kind has been listed.
//!
//! # Layout
//! - `local`: a directory of YAML, re-read on change.
//! - `kubernetes`: kube-rs watchers with backoff.

pub mod kubernetes;
pub mod local;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanemesh_api::convert::DEFAULT_NAMESPACE;
use lanemesh_api::crd::gateway_api::{Gateway, HTTPRoute};
use lanemesh_api::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy, TrafficPolicy,
};

/// What a source tells the index.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// The complete state: everything not in it is gone. Implies `Synced`.
    Replace(Vec<Object>),
    /// Every object of one kind (after a list or re-list): objects of that
    /// kind not in it are gone.
    ReplaceKind(Kind, Vec<Object>),
    /// Every kind has been listed once: the state is complete.
    Synced,
    /// One object was added or changed.
    Apply(Object),
    /// One object was deleted.
    Delete(ObjectKey),
}

/// The kinds the control plane reads. Names match `ObjectRef::kind` of
/// `lanemesh_api::convert`, so a refusal maps back to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    LaneGroup,
    Lane,
    RateLimitPolicy,
    CircuitBreakerPolicy,
    OverloadProtectionPolicy,
    TrafficPolicy,
    Service,
    EndpointSlice,
    Pod,
    HttpRoute,
    Gateway,
    Ingress,
}

impl Kind {
    pub const ALL: [Self; 12] = [
        Self::LaneGroup,
        Self::Lane,
        Self::RateLimitPolicy,
        Self::CircuitBreakerPolicy,
        Self::OverloadProtectionPolicy,
        Self::TrafficPolicy,
        Self::Service,
        Self::EndpointSlice,
        Self::Pod,
        Self::HttpRoute,
        Self::Gateway,
        Self::Ingress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LaneGroup => "LaneGroup",
            Self::Lane => "Lane",
            Self::RateLimitPolicy => "RateLimitPolicy",
            Self::CircuitBreakerPolicy => "CircuitBreakerPolicy",
            Self::OverloadProtectionPolicy => "OverloadProtectionPolicy",
            Self::TrafficPolicy => "TrafficPolicy",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Pod => "Pod",
            Self::HttpRoute => "HTTPRoute",
            Self::Gateway => "Gateway",
            Self::Ingress => "Ingress",
        }
    }

    /// One of the lanemesh CRDs (which carry an `Accepted` condition).
    pub fn is_lanemesh(self) -> bool {
        matches!(
            self,
            Self::LaneGroup
                | Self::Lane
                | Self::RateLimitPolicy
                | Self::CircuitBreakerPolicy
                | Self::OverloadProtectionPolicy
                | Self::TrafficPolicy
        )
    }

    /// A kind whose API may not be installed (Gateway API is a separate set of CRDs): when the
    /// API server does not serve it, the source counts it as listed and empty.
    pub fn is_optional(self) -> bool {
        matches!(self, Self::HttpRoute | Self::Gateway)
    }

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// Identifies one object; objects without a namespace live in `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// One object of a kind the control plane reads (boxed: Pods are large).
#[derive(Debug, Clone)]
pub enum Object {
    LaneGroup(Box<LaneGroup>),
    Lane(Box<Lane>),
    RateLimitPolicy(Box<RateLimitPolicy>),
    CircuitBreakerPolicy(Box<CircuitBreakerPolicy>),
    OverloadProtectionPolicy(Box<OverloadProtectionPolicy>),
    TrafficPolicy(Box<TrafficPolicy>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Pod(Box<Pod>),
    HttpRoute(Box<HTTPRoute>),
    Gateway(Box<Gateway>),
    Ingress(Box<Ingress>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Self::LaneGroup(_) => Kind::LaneGroup,
            Self::Lane(_) => Kind::Lane,
            Self::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Self::CircuitBreakerPolicy(_) => Kind::CircuitBreakerPolicy,
            Self::OverloadProtectionPolicy(_) => Kind::OverloadProtectionPolicy,
            Self::TrafficPolicy(_) => Kind::TrafficPolicy,
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Pod(_) => Kind::Pod,
            Self::HttpRoute(_) => Kind::HttpRoute,
            Self::Gateway(_) => Kind::Gateway,
            Self::Ingress(_) => Kind::Ingress,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::LaneGroup(o) => &o.metadata,
            Self::Lane(o) => &o.metadata,
            Self::RateLimitPolicy(o) => &o.metadata,
            Self::CircuitBreakerPolicy(o) => &o.metadata,
            Self::OverloadProtectionPolicy(o) => &o.metadata,
            Self::TrafficPolicy(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Pod(o) => &o.metadata,
            Self::HttpRoute(o) => &o.metadata,
            Self::Gateway(o) => &o.metadata,
            Self::Ingress(o) => &o.metadata,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.meta();
        ObjectKey {
            kind: self.kind(),
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}
