//! The check made before a discovery resource enters the snapshot: its conversion into the
//! runtime form the data plane uses.
//!
//! The control plane already validates what it sends (`lanemesh_api::convert`), but a sidecar
//! must not trust the wire. Each runtime type's `TryFrom` (next to that type) is the one place
//! its resource is checked; a resource it refuses is NACKed by name with the typed error, and the
//! last good copy stays in force.

use std::sync::Arc;

use lanemesh_api::proto;
use lanemesh_api::resource::DiscoveryResource;

use crate::field::FieldError;
use crate::gateway::{GatewayRouteConfig, GatewayRouteError};
use crate::govern::{InboundRules, OutboundRules};
use crate::lane::rules::{LaneConfigError, LaneGroupConfig};
use crate::route::endpoints::{ServiceConfigError, ServiceSpec};

/// Why a resource was refused; rendered into the NACK's `resource_errors`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("the resource has an empty name")]
    EmptyName,
    #[error("the resource is named {outer:?} on the stream but {inner:?} inside")]
    NameMismatch { outer: String, inner: String },
    #[error("cannot decode the resource: {0}")]
    Decode(String),
    /// A Service its conversion refused.
    #[error(transparent)]
    Service(#[from] ServiceConfigError),
    /// A LaneGroup its conversion refused.
    #[error(transparent)]
    LaneGroup(#[from] LaneConfigError),
    /// A policy field its conversion refused.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A gateway route its conversion refused.
    #[error(transparent)]
    GatewayRoute(#[from] GatewayRouteError),
    /// A Workload that does not describe a pod.
    #[error("workload {name}: {problem}")]
    Workload { name: String, problem: String },
}

/// A discovery resource that can be checked and turned into what the data plane uses at run
/// time.
pub trait Compile: DiscoveryResource + Send + Sync + 'static {
    /// The runtime form kept next to the resource in the snapshot.
    type Output: std::fmt::Debug + Send + Sync + 'static;

    /// Refuses the resource with the first problem found, or compiles it.
    fn compile(&self) -> Result<Self::Output, ValidationError>;
}

impl Compile for proto::GatewayRoute {
    type Output = Arc<GatewayRouteConfig>;

    fn compile(&self) -> Result<Self::Output, ValidationError> {
        Ok(Arc::new(GatewayRouteConfig::try_from(self)?))
    }
}

impl Compile for proto::Service {
    type Output = ServiceSpec;

    fn compile(&self) -> Result<ServiceSpec, ValidationError> {
        Ok(ServiceSpec::try_from(self)?)
    }
}

impl Compile for proto::LaneGroup {
    type Output = LaneGroupConfig;

    fn compile(&self) -> Result<LaneGroupConfig, ValidationError> {
        Ok(LaneGroupConfig::try_from(self)?)
    }
}

impl Compile for proto::InboundPolicy {
    type Output = Arc<InboundRules>;

    fn compile(&self) -> Result<Arc<InboundRules>, ValidationError> {
        Ok(Arc::new(InboundRules::try_from(self)?))
    }
}

impl Compile for proto::OutboundPolicy {
    type Output = Arc<OutboundRules>;

    fn compile(&self) -> Result<Arc<OutboundRules>, ValidationError> {
        Ok(Arc::new(OutboundRules::try_from(self)?))
    }
}

/// The app and lane tag of this pod, as the control plane knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub app: String,
    pub lane_tag: Option<String>,
    /// The pod is being deleted.
    pub terminating: bool,
}

impl Compile for proto::Workload {
    type Output = WorkloadIdentity;

    fn compile(&self) -> Result<WorkloadIdentity, ValidationError> {
        let problem = |problem: String| ValidationError::Workload {
            name: self.name.clone(),
            problem,
        };
        if self.namespace.is_empty() || self.pod_name.is_empty() {
            return Err(problem("namespace and pod_name must be set".into()));
        }
        let expected = format!("{}/{}", self.namespace, self.pod_name);
        if self.name != expected {
            return Err(problem(format!("the name must be {expected:?}")));
        }
        // The tag goes into request headers (colour by node): a label value, or empty for base.
        if !self.lane_tag.is_empty() && !lanemesh_api::labels::is_valid_value(&self.lane_tag) {
            return Err(problem(format!(
                "lane_tag {:?} is not a label value (alphanumerics, '-', '_', '.', at most 63)",
                self.lane_tag
            )));
        }
        Ok(WorkloadIdentity {
            app: self.app.clone(),
            lane_tag: (!self.lane_tag.is_empty()).then(|| self.lane_tag.clone()),
            terminating: self.terminating,
        })
    }
}

#[cfg(test)]
mod tests;
