//! Multi-document YAML of lanemesh objects, as `kubectl apply -f` takes it.
//!
//! Used by the local directory source, `lanemesh-proxy --config-file` and
//! the examples test. Objects of other API groups (Deployments, Services,
//! Pods, ...) are kept as they are for the caller to use or ignore.

use serde::Deserialize;

use crate::crd::{
    CircuitBreakerPolicy, Lane, LaneGroup, OverloadProtectionPolicy, RateLimitPolicy,
};

/// The lanemesh objects of a manifest, and everything else in it.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub lane_groups: Vec<LaneGroup>,
    pub lanes: Vec<Lane>,
    pub rate_limits: Vec<RateLimitPolicy>,
    pub circuit_breakers: Vec<CircuitBreakerPolicy>,
    pub overloads: Vec<OverloadProtectionPolicy>,
    /// Documents of other API groups, untouched.
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
        "document {document}: unknown lanemesh kind {kind:?} (known: LaneGroup, Lane, RateLimitPolicy, CircuitBreakerPolicy, OverloadProtectionPolicy)"
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
        if api_version.split('/').next() != Some(crate::crd::GROUP) {
            self.others.push(value);
            return Ok(());
        }
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
            _ => return Err(ManifestError::UnknownKind { document, kind }),
        }
        Ok(())
    }
}
