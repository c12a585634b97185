//! Multi-document YAML of lanemesh objects, as `kubectl apply -f` takes it.
//!
//! Used by the local directory source, `lanemesh-proxy --config-file` and
//! the examples test. Besides the lanemesh kinds it types the Kubernetes
//! objects lanemesh reads (Services, EndpointSlices, Pods, Ingresses, Gateway API Gateways and
//! HTTPRoutes); everything else
//! (Deployments, Namespaces, ...) is kept as it is for the caller.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use serde::Deserialize;

use crate::crd::gateway_api::{Gateway, HTTPRoute};

use crate::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy, TrafficPolicy,
};

/// The lanemesh objects of a manifest, and everything else in it.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub lane_groups: Vec<LaneGroup>,
    pub lanes: Vec<Lane>,
    pub rate_limits: Vec<RateLimitPolicy>,
    pub circuit_breakers: Vec<CircuitBreakerPolicy>,
    pub overloads: Vec<OverloadProtectionPolicy>,
    pub traffic_policies: Vec<TrafficPolicy>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    /// Gateway API HTTPRoutes and Gateways, Ingresses: what the lanemesh gateway routes by.
    pub http_routes: Vec<HTTPRoute>,
    pub gateways: Vec<Gateway>,
    pub ingresses: Vec<Ingress>,
    /// Every other document, untouched.
    pub others: Vec<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: not YAML: {source}")]
    Yaml {
        document: usize,
        source: serde_yaml::Error,
    },
    #[error("document {document}: missing apiVersion or kind")]
    Untyped { document: usize },
    #[error(
        "document {document}: unknown lanemesh kind {kind:?} (known: LaneGroup, Lane, RateLimitPolicy, CircuitBreakerPolicy, OverloadProtectionPolicy, TrafficPolicy)"
    )]
    UnknownKind { document: usize, kind: String },
    #[error("document {document}: {kind} {name:?} does not match its schema: {source}")]
    Shape {
        document: usize,
        kind: String,
        name: String,
        source: serde_json::Error,
    },
}

impl Manifest {
    /// Parses every document of `yaml` (separated by `---`) into `self`.
    /// Empty documents are skipped; `kind: List` is not unpacked.
    pub fn add_yaml(&mut self, yaml: &str) -> Result<(), ManifestError> {
        for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let document = index + 1;
            let value = serde_json::Value::deserialize(doc)
                .map_err(|source| ManifestError::Yaml { document, source })?;
            if value.is_null() {
                continue;
            }
            self.add_value(document, value)?;
        }
        Ok(())
    }

    pub fn from_yaml(yaml: &str) -> Result<Self, ManifestError> {
        let mut manifest = Self::default();
        manifest.add_yaml(yaml)?;
        Ok(manifest)
    }

    fn add_value(
        &mut self,
        document: usize,
        value: serde_json::Value,
    ) -> Result<(), ManifestError> {
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        if api_version.is_empty() || kind.is_empty() {
            return Err(ManifestError::Untyped { document });
        }
        let api_version = api_version.to_owned();
        let name = value
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let shape = |source| ManifestError::Shape {
            document,
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        if api_version.split('/').next() != Some(crate::crd::GROUP) {
            match (api_version.as_str(), kind.as_str()) {
                ("v1", "Service") => self
                    .services
                    .push(serde_json::from_value(value).map_err(shape)?),
                ("v1", "Pod") => self
                    .pods
                    .push(serde_json::from_value(value).map_err(shape)?),
                ("discovery.k8s.io/v1", "EndpointSlice") => {
                    self.endpoint_slices
                        .push(serde_json::from_value(value).map_err(shape)?);
                }
                ("networking.k8s.io/v1", "Ingress") => self
                    .ingresses
                    .push(serde_json::from_value(value).map_err(shape)?),
                (
                    "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
                    "HTTPRoute",
                ) => {
                    self.http_routes
                        .push(serde_json::from_value(value).map_err(shape)?);
                }
                (
                    "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
                    "Gateway",
                ) => {
                    self.gateways
                        .push(serde_json::from_value(value).map_err(shape)?);
                }
                _ => self.others.push(value),
            }
            return Ok(());
        }
        match kind.as_str() {
            "LaneGroup" => self
                .lane_groups
                .push(serde_json::from_value(value).map_err(shape)?),
            "Lane" => self
                .lanes
                .push(serde_json::from_value(value).map_err(shape)?),
            "RateLimitPolicy" => self
                .rate_limits
                .push(serde_json::from_value(value).map_err(shape)?),
            "CircuitBreakerPolicy" => self
                .circuit_breakers
                .push(serde_json::from_value(value).map_err(shape)?),
            "OverloadProtectionPolicy" => self
                .overloads
                .push(serde_json::from_value(value).map_err(shape)?),
            "TrafficPolicy" => self
                .traffic_policies
                .push(serde_json::from_value(value).map_err(shape)?),
            _ => return Err(ManifestError::UnknownKind { document, kind }),
        }
        Ok(())
    }
}
