//! Offline validation: the same parsing ([`Manifest`]) and conversion ([`convert::manifest`]) as
//! the control plane, over every given file at once, so a Lane in one file finds its LaneGroup in
//! another, as it would in the cluster.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanemesh_api::convert;
use lanemesh_api::manifest::{Manifest, ManifestError};
use serde::Serialize;

/// One thing the control plane would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file it is in.
    pub file: String,
    /// `Kind namespace/name`, or `document N` when the document is not a valid object.
    pub object: String,
    /// The field path (`spec.rules[0].qps.threshold`); empty when the whole document is wrong.
    pub field: String,
    /// What is wrong, as the object's `Accepted` condition would say it.
    pub message: String,
}

/// A manifest to check: its name (a path, `-` for stdin) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Every problem in `sources`, in file order, then object and field order. Empty = all valid.
pub fn check(sources: &[Source]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut all = Manifest::default();
    // Which file each lanemesh object came from, for reporting conversion errors.
    let mut origin: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for source in sources {
        let manifest = match Manifest::from_yaml(&source.text) {
            Ok(m) => m,
            Err(e) => {
                problems.push(parse_problem(&source.name, &e));
                continue;
            }
        };
        for key in object_keys(&manifest) {
            origin.entry(key).or_insert_with(|| source.name.clone());
        }
        merge(&mut all, manifest);
    }
    // Replicas do not matter for validity; 1 keeps Cluster-scoped thresholds as written.
    let converted = convert::manifest(&all, &|_, _| 1);
    let mut refused: Vec<Problem> = converted
        .rejected()
        .flat_map(|invalid| {
            let o = &invalid.object;
            let file = origin
                .get(&(o.kind.to_owned(), o.namespace.clone(), o.name.clone()))
                .cloned()
                .unwrap_or_default();
            invalid.errors.iter().map(move |e| Problem {
                file: file.clone(),
                object: o.to_string(),
                field: e.field.clone(),
                message: e.violation.to_string(),
            })
        })
        .collect();
    let position: BTreeMap<&str, usize> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    refused.sort_by(|a, b| {
        let at = |p: &Problem| position.get(p.file.as_str()).copied().unwrap_or(usize::MAX);
        (at(a), &a.object, &a.field).cmp(&(at(b), &b.object, &b.field))
    });
    refused.dedup();
    problems.extend(refused);
    problems
}

fn parse_problem(file: &str, e: &ManifestError) -> Problem {
    let document = match e {
        ManifestError::Yaml { document, .. }
        | ManifestError::Untyped { document }
        | ManifestError::UnknownKind { document, .. }
        | ManifestError::Shape { document, .. } => *document,
    };
    Problem {
        file: file.to_owned(),
        object: format!("document {document}"),
        field: String::new(),
        message: e.to_string(),
    }
}

/// (kind, namespace, name) of each lanemesh object, as conversion names them.
fn object_keys(m: &Manifest) -> Vec<(String, String, String)> {
    fn key(kind: &str, meta: &ObjectMeta) -> (String, String, String) {
        (
            kind.to_owned(),
            meta.namespace
                .clone()
                .unwrap_or_else(|| convert::DEFAULT_NAMESPACE.to_owned()),
            meta.name.clone().unwrap_or_default(),
        )
    }
    let mut keys = Vec::new();
    keys.extend(m.lane_groups.iter().map(|o| key("LaneGroup", &o.metadata)));
    keys.extend(m.lanes.iter().map(|o| key("Lane", &o.metadata)));
    keys.extend(
        m.rate_limits
            .iter()
            .map(|o| key("RateLimitPolicy", &o.metadata)),
    );
    keys.extend(
        m.circuit_breakers
            .iter()
            .map(|o| key("CircuitBreakerPolicy", &o.metadata)),
    );
    keys.extend(
        m.overloads
            .iter()
            .map(|o| key("OverloadProtectionPolicy", &o.metadata)),
    );
    keys.extend(
        m.traffic_policies
            .iter()
            .map(|o| key("TrafficPolicy", &o.metadata)),
    );
    keys.extend(m.services.iter().map(|o| key("Service", &o.metadata)));
    keys
}

fn merge(into: &mut Manifest, from: Manifest) {
    into.lane_groups.extend(from.lane_groups);
    into.lanes.extend(from.lanes);
    into.rate_limits.extend(from.rate_limits);
    into.circuit_breakers.extend(from.circuit_breakers);
    into.overloads.extend(from.overloads);
    into.traffic_policies.extend(from.traffic_policies);
    into.services.extend(from.services);
    into.endpoint_slices.extend(from.endpoint_slices);
    into.pods.extend(from.pods);
    into.others.extend(from.others);
}

#[cfg(test)]
mod tests;
