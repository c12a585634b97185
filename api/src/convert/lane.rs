//! LaneGroups and their Lanes -> `proto::LaneGroup`.

use std::collections::HashMap;

use super::error::{Errors, Field};
use super::{Built, Invalid, ObjectRef, Violation, Zero};
use crate::crd::lane_group::RoutingMode;
use crate::crd::{Lane, LaneGroup};
use crate::{labels, proto};

/// Converts every LaneGroup with the Lanes that name it.
///
/// A group is served with its valid lanes. A lane is refused on its own
/// faults, when its group does not exist or is refused, when another lane of
/// the group (earlier by name) already uses its tag, or when its weight would
/// push the group's sum over 100 — lanes are admitted in name order, so the
/// lanes already serving keep serving.
pub fn lane_groups(groups: &[LaneGroup], lanes: &[Lane]) -> Built<proto::LaneGroup> {
    let mut built = Built::default();
    // (namespace, name) -> index in built.resources, or None when refused.
    let mut known: HashMap<(String, String), Option<(usize, RoutingMode)>> = HashMap::new();
    for group in super::sorted_by_ref(groups, |g| &g.metadata) {
        match lane_group(group) {
            Ok((object, resource)) => {
                let key = (object.namespace, object.name);
                known.insert(key, Some((built.resources.len(), group.spec.routing_mode)));
                built.resources.push(resource);
            }
            Err(invalid) => {
                let key = (
                    invalid.object.namespace.clone(),
                    invalid.object.name.clone(),
                );
                known.insert(key, None);
                built.rejected.push(invalid);
            }
        }
    }
    let mut weights: HashMap<usize, u32> = HashMap::new();
    for lane in super::sorted_by_ref(lanes, |l| &l.metadata) {
        let mut errors = Errors::default();
        let object = super::object_ref("Lane", &lane.metadata, &mut errors);
        let spec = Field::root("spec");
        let key = (object.namespace.clone(), lane.spec.group.clone());
        let (index, mode) = match known.get(&key) {
            Some(Some(served)) => *served,
            found => {
                let group = lane.spec.group.clone();
                let violation = match found {
                    Some(None) => Violation::RefusedGroup { group },
                    _ => Violation::UnknownGroup { group },
                };
                errors.push(&spec.key("group"), violation);
                built.rejected.extend(errors.finish(object, ()).err());
                continue;
            }
        };
        let resource = lane_resource(&object, lane, mode, &mut errors);
        let group = &built.resources[index];
        if let Some(other) = group.lanes.iter().find(|l| l.tag == resource.tag) {
            let msg = format!(
                "lane {:?} of this group already uses tag {:?}",
                other.name, other.tag
            );
            errors.push(&spec.key("tag"), Violation::Conflict(msg));
        }
        // Saturating: an out-of-range weight (refused above) must not overflow.
        let sum = (weights.get(&index).copied().unwrap_or(0)).saturating_add(resource.weight);
        if mode == RoutingMode::Percentage && sum > 100 {
            let group = lane.spec.group.clone();
            errors.push(
                &spec.key("weight"),
                Violation::WeightSumExceeded { group, sum },
            );
        }
        match errors.finish(object, resource) {
            Ok(resource) => {
                weights.insert(index, sum);
                built.resources[index].lanes.push(resource);
            }
            Err(invalid) => built.rejected.push(invalid),
        }
    }
    built
}

fn lane_group(group: &LaneGroup) -> Result<(ObjectRef, proto::LaneGroup), Invalid> {
    let mut errors = Errors::default();
    let object = super::object_ref("LaneGroup", &group.metadata, &mut errors);
    let spec = Field::root("spec");
    let s = &group.spec;
    if s.apps.is_empty() {
        errors.push(&spec.key("apps"), Violation::Empty);
    }
    for (i, app) in s.apps.iter().enumerate() {
        super::non_empty(&spec.key("apps").at(i), app, &mut errors);
    }
    super::unique(
        &spec.key("apps"),
        "app",
        s.apps.iter().map(String::as_str),
        &mut errors,
    );
    super::unique(
        &spec.key("entryApps"),
        "app",
        s.entry_apps.iter().map(String::as_str),
        &mut errors,
    );
    for (i, app) in s.entry_apps.iter().enumerate() {
        if !s.apps.contains(app) {
            let msg = format!("entry app {app:?} is not listed in spec.apps");
            errors.push(&spec.key("entryApps").at(i), Violation::Conflict(msg));
        }
    }
    let tag_header = super::header_name(&spec.key("tagHeader"), &s.tag_header, &mut errors);
    let p = &s.propagation;
    let field = spec.key("propagation");
    let trace_headers = p.trace_headers.iter().enumerate();
    let trace_headers = trace_headers
        .map(|(i, h)| super::header_name(&field.key("traceHeaders").at(i), h, &mut errors));
    let trace_headers: Vec<String> = trace_headers.collect();
    super::unique(
        &field.key("traceHeaders"),
        "header",
        trace_headers.iter().map(String::as_str),
        &mut errors,
    );
    if trace_headers.contains(&tag_header) {
        let msg = format!("{tag_header:?} is the tag header and cannot also be a trace header");
        errors.push(&field.key("traceHeaders"), Violation::Conflict(msg));
    }
    if p.trace_table_size == Some(0) {
        errors.push(
            &field.key("traceTableSize"),
            Violation::TooSmall {
                min: 1.0,
                value: 0.0,
            },
        );
    }
    let trace_ttl = super::optional_duration(
        &field.key("traceTtl"),
        p.trace_ttl.as_deref(),
        Zero::Refused,
        &mut errors,
    )
    .unwrap_or_else(|| super::proto_duration(crate::defaults::TRACE_TTL));
    let resource = proto::LaneGroup {
        name: format!("{}/{}", object.namespace, object.name),
        namespace: object.namespace.clone(),
        apps: s.apps.clone(),
        entry_apps: s.entry_apps.clone(),
        routing_mode: match s.routing_mode {
            RoutingMode::Content => proto::RoutingMode::Content,
            RoutingMode::Percentage => proto::RoutingMode::Percentage,
        } as i32,
        tag_header,
        propagation: Some(proto::Propagation {
            trace_headers,
            inflight: p.inflight,
            color_by_node: p.color_by_node,
            trace_table_size: p
                .trace_table_size
                .unwrap_or(crate::defaults::TRACE_TABLE_SIZE),
            trace_ttl: Some(trace_ttl),
        }),
        lanes: Vec::new(),
    };
    errors.finish(object.clone(), (object, resource))
}

fn lane_resource(
    object: &ObjectRef,
    lane: &Lane,
    mode: RoutingMode,
    errors: &mut Errors,
) -> proto::Lane {
    let spec = Field::root("spec");
    let s = &lane.spec;
    if !labels::is_valid_value(&s.tag) {
        errors.push(
            &spec.key("tag"),
            Violation::InvalidValue {
                what: "lane tag",
                value: s.tag.clone(),
                reason: "must be a Kubernetes label value: 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            },
        );
    }
    let weight = s.weight.unwrap_or(0);
    if weight > 100 {
        errors.push(
            &spec.key("weight"),
            Violation::TooLarge {
                max: 100.0,
                value: f64::from(weight),
            },
        );
    }
    let route_match = match (mode, &s.route_match) {
        (RoutingMode::Content, Some(m)) if !m.conditions.is_empty() => {
            Some(super::lane_match(&spec.key("match"), m, errors))
        }
        (RoutingMode::Content, _) => {
            // An empty `All` match would hold for every request and send all
            // traffic into the lane: never what someone who forgot it meant.
            let msg =
                "a lane of a Content-routed group needs at least one match condition".to_owned();
            errors.push(
                &spec.key("match").key("conditions"),
                Violation::Conflict(msg),
            );
            None
        }
        (RoutingMode::Percentage, Some(m)) => {
            Some(super::lane_match(&spec.key("match"), m, errors))
        }
        (RoutingMode::Percentage, None) => None,
    };
    if mode == RoutingMode::Content && s.weight.is_some() {
        let msg = "weight is used only when the group routes by Percentage".to_owned();
        errors.push(&spec.key("weight"), Violation::Conflict(msg));
    }
    proto::Lane {
        name: object.name.clone(),
        tag: s.tag.clone(),
        enabled: s.enabled,
        r#match: route_match,
        weight,
    }
}
