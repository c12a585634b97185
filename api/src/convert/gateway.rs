//! Gateway API HTTPRoutes and `networking.k8s.io/v1` Ingresses of lanemesh's class ->
//! `proto::GatewayRoute`, what `lanemesh-proxy gateway` serves.
//!
//! Only objects addressed to lanemesh are converted: an HTTPRoute with a parent Gateway of the
//! class, an Ingress of the class (`spec.ingressClassName`, or the older
//! `kubernetes.io/ingress.class` annotation). Everything else belongs to another implementation
//! and is neither served nor refused. Two annotations, on either kind, tune the lane decision:
//! [`TRUST_LANE_TAGS`] and [`LANE_WEIGHTS`].

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::core::ObjectMeta;

use super::error::{Errors, Field};
use super::service::{namespace_of, port_number};
use super::{Built, Invalid, ObjectRef, Violation};
use crate::crd::gateway_api::{
    GATEWAY_GROUP, Gateway, HTTPBackendRef, HTTPRoute, HTTPRouteMatch, HTTPValueMatch,
    ParentReference,
};
use crate::{labels, proto};

/// The class lanemesh serves unless told otherwise (`--gateway-class`).
pub const DEFAULT_CLASS: &str = "lanemesh";

/// `"true"`: the gateway keeps lane tags and `baggage` lane members clients send (a trusted edge
/// in front of it already decided); default `"false"`: it removes them, so a client cannot pick
/// a lane the rules did not give it.
pub const TRUST_LANE_TAGS: &str = "lanemesh.io/trust-lane-tags";

/// `"gray=30,blue=10"`: Percentage-mode weights for this route's requests, by lane tag, instead
/// of the Lanes' own (MSE's "different traffic percentages for each gateway route"); a
/// Percentage-mode lane not listed takes none of this route's requests. Sum <= 100.
pub const LANE_WEIGHTS: &str = "lanemesh.io/lane-weights";

/// The legacy Ingress class annotation, still honoured by most controllers.
const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Largest backend weight (Gateway API's own bound).
const MAX_BACKEND_WEIGHT: i32 = 1_000_000;

/// Converts the HTTPRoutes attached to a Gateway of `class` and the Ingresses of `class`.
pub fn gateway_routes(
    routes: &[HTTPRoute],
    ingresses: &[Ingress],
    gateways: &[Gateway],
    class: &str,
) -> Built<proto::GatewayRoute> {
    let mut built = Built::default();
    for route in super::sorted_by_ref(routes, |r| &r.metadata) {
        if !lanemesh_parents(route, gateways, class).is_empty() {
            push(&mut built, http_route(route));
        }
    }
    for ingress in super::sorted_by_ref(ingresses, |i| &i.metadata) {
        let spec_class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let annotated = annotation(&ingress.metadata, INGRESS_CLASS_ANNOTATION);
        if spec_class.or(annotated) == Some(class) {
            push(&mut built, ingress_route(ingress));
        }
    }
    built
}

/// The parentRefs of `route` that name a Gateway of `class`: the parents lanemesh serves the
/// route for (and writes its status for).
pub fn lanemesh_parents<'a>(
    route: &'a HTTPRoute,
    gateways: &[Gateway],
    class: &str,
) -> Vec<&'a ParentReference> {
    let route_namespace = namespace_of(&route.metadata);
    route
        .spec
        .parent_refs
        .iter()
        .filter(|p| {
            let namespace = p.namespace.as_deref().unwrap_or(route_namespace);
            p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                && gateways.iter().any(|g| {
                    g.spec.gateway_class_name == class
                        && g.metadata.name.as_deref() == Some(p.name.as_str())
                        && namespace_of(&g.metadata) == namespace
                })
        })
        .collect()
}

fn push(built: &mut Built<proto::GatewayRoute>, result: Result<proto::GatewayRoute, Invalid>) {
    match result {
        Ok(route) => built.resources.push(route),
        Err(invalid) => built.rejected.push(invalid),
    }
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// What both kinds share: name, annotations, creation time.
fn route_shell(
    kind: &'static str,
    meta: &ObjectMeta,
    errors: &mut Errors,
) -> (ObjectRef, proto::GatewayRoute) {
    let object = super::object_ref(kind, meta, errors);
    let annotations = Field::root("metadata.annotations");
    let trust_lane_tags = match annotation(meta, TRUST_LANE_TAGS) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            errors.push(
                &annotations.key(TRUST_LANE_TAGS),
                Violation::InvalidValue {
                    what: "boolean",
                    value: super::shown(other),
                    reason: "use \"true\" or \"false\"",
                },
            );
            false
        }
    };
    let lane_weights = annotation(meta, LANE_WEIGHTS)
        .map(|v| lane_weights(&annotations.key(LANE_WEIGHTS), v, errors))
        .unwrap_or_default();
    let created = meta
        .creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let route = proto::GatewayRoute {
        name: format!("{}/{kind}/{}", object.namespace, object.name),
        namespace: object.namespace.clone(),
        rules: Vec::new(),
        trust_lane_tags,
        lane_weights,
        created,
    };
    (object, route)
}

/// `gray=30,blue=10`: tags are label values, weights 0..=100, no tag twice, sum <= 100.
fn lane_weights(field: &Field, value: &str, errors: &mut Errors) -> BTreeMap<String, u32> {
    let mut weights = BTreeMap::new();
    let invalid = |reason| Violation::InvalidValue {
        what: "lane weights",
        value: super::shown(value),
        reason,
    };
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((tag, weight)) = part.split_once('=') else {
            errors.push(
                field,
                invalid("write tag=percent pairs separated by commas, e.g. gray=30"),
            );
            continue;
        };
        let tag = tag.trim();
        if !labels::is_valid_value(tag) || tag.is_empty() {
            errors.push(field, invalid("a lane tag must be a label value"));
            continue;
        }
        let Ok(weight) = weight.trim().parse::<u32>() else {
            errors.push(
                field,
                invalid("a weight must be a whole number from 0 to 100"),
            );
            continue;
        };
        if weight > 100 {
            errors.push(
                field,
                invalid("a weight must be a whole number from 0 to 100"),
            );
            continue;
        }
        if weights.insert(tag.to_owned(), weight).is_some() {
            errors.push(
                field,
                Violation::Duplicate {
                    what: "lane tag",
                    value: tag.to_owned(),
                },
            );
        }
    }
    let sum: u32 = weights.values().sum();
    if sum > 100 {
        errors.push(field, invalid("the weights sum to more than 100"));
    }
    weights
}

fn http_route(route: &HTTPRoute) -> Result<proto::GatewayRoute, Invalid> {
    let mut errors = Errors::default();
    let (object, mut out) = route_shell("HTTPRoute", &route.metadata, &mut errors);
    let spec = Field::root("spec");
    let hostnames: Vec<String> = route
        .spec
        .hostnames
        .iter()
        .enumerate()
        .map(|(i, h)| hostname(&spec.key("hostnames").at(i), h, &mut errors))
        .collect();
    if route.spec.rules.is_empty() {
        errors.push(&spec.key("rules"), Violation::Empty);
    }
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let field = spec.key("rules").at(i);
        if !rule.filters.is_empty() {
            errors.push(
                &field.key("filters"),
                Violation::Conflict("filters are not supported by the lanemesh gateway".to_owned()),
            );
        }
        let matches = match &rule.matches {
            // Gateway API's default: a path prefix `/`, i.e. every request.
            None => Vec::new(),
            Some(matches) => matches
                .iter()
                .enumerate()
                .map(|(j, m)| request_match(&field.key("matches").at(j), m, &mut errors))
                .collect(),
        };
        if rule.backend_refs.is_empty() {
            errors.push(&field.key("backendRefs"), Violation::Required);
        }
        let backends = rule
            .backend_refs
            .iter()
            .enumerate()
            .map(|(j, b)| {
                backend_ref(
                    &field.key("backendRefs").at(j),
                    &object.namespace,
                    b,
                    &mut errors,
                )
            })
            .collect();
        out.rules.push(proto::GatewayRule {
            hostnames: hostnames.clone(),
            matches,
            backends,
        });
    }
    errors.finish(object, out)
}

fn request_match(
    field: &Field,
    m: &HTTPRouteMatch,
    errors: &mut Errors,
) -> proto::HttpRequestMatch {
    use proto::path_match::Kind;
    let path = m.path.as_ref().map(|p| {
        let value = p.value.clone().unwrap_or_else(|| "/".to_owned());
        let value_field = field.key("path").key("value");
        let kind = match p.match_type.as_deref().unwrap_or("PathPrefix") {
            "Exact" => {
                super::absolute_path(&value_field, &value, errors);
                Kind::Exact(value)
            }
            "PathPrefix" => {
                super::absolute_path(&value_field, &value, errors);
                Kind::Prefix(segment_prefix(value))
            }
            "RegularExpression" => {
                super::regex(&value_field, &value, errors);
                Kind::Regex(value)
            }
            other => {
                errors.push(
                    &field.key("path").key("type"),
                    Violation::InvalidValue {
                        what: "path match type",
                        value: super::shown(other),
                        reason: "use Exact, PathPrefix or RegularExpression",
                    },
                );
                Kind::Prefix("/".to_owned())
            }
        };
        proto::PathMatch { kind: Some(kind) }
    });
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let field = field.key("headers").at(i);
            let name = super::header_name(&field.key("name"), &h.name, errors);
            value_match(&field, name, h, errors)
        })
        .collect();
    let query_params = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let field = field.key("queryParams").at(i);
            if q.name.is_empty() {
                errors.push(&field.key("name"), Violation::Empty);
            }
            value_match(&field, q.name.clone(), q, errors)
        })
        .collect();
    let method = m.method.as_deref().map_or_else(String::new, |method| {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            errors.push(
                &field.key("method"),
                Violation::InvalidValue {
                    what: "method",
                    value: super::shown(method),
                    reason: "must be an HTTP method such as GET",
                },
            );
        }
        method.to_ascii_uppercase()
    });
    proto::HttpRequestMatch {
        path,
        headers,
        query_params,
        method,
    }
}

fn value_match(
    field: &Field,
    name: String,
    m: &HTTPValueMatch,
    errors: &mut Errors,
) -> proto::ValueMatch {
    use proto::value_match::Kind;
    let kind = match m.match_type.as_deref().unwrap_or("Exact") {
        "Exact" => Kind::Exact(m.value.clone()),
        "RegularExpression" => {
            super::regex(&field.key("value"), &m.value, errors);
            Kind::Regex(m.value.clone())
        }
        other => {
            errors.push(
                &field.key("type"),
                Violation::InvalidValue {
                    what: "match type",
                    value: super::shown(other),
                    reason: "use Exact or RegularExpression",
                },
            );
            Kind::Exact(m.value.clone())
        }
    };
    proto::ValueMatch {
        name,
        kind: Some(kind),
    }
}

fn backend_ref(
    field: &Field,
    namespace: &str,
    b: &HTTPBackendRef,
    errors: &mut Errors,
) -> proto::Backend {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        errors.push(
            &field.key("kind"),
            Violation::Conflict(format!(
                "only Services can be backends of the lanemesh gateway, not {kind} of group {group:?}"
            )),
        );
    }
    if !b.filters.is_empty() {
        errors.push(
            &field.key("filters"),
            Violation::Conflict("filters are not supported by the lanemesh gateway".to_owned()),
        );
    }
    let backend_namespace = b.namespace.as_deref().unwrap_or(namespace);
    if backend_namespace != namespace {
        errors.push(
            &field.key("namespace"),
            Violation::Conflict(format!(
                "a backend in another namespace ({backend_namespace}) needs a ReferenceGrant, which lanemesh does not read: route to a Service of {namespace}"
            )),
        );
    }
    if b.name.is_empty() {
        errors.push(&field.key("name"), Violation::Empty);
    }
    let port = match b.port {
        None => {
            errors.push(&field.key("port"), Violation::Required);
            0
        }
        Some(port) => port_number(&field.key("port"), port, errors),
    };
    let weight = b.weight.unwrap_or(1);
    if !(0..=MAX_BACKEND_WEIGHT).contains(&weight) {
        errors.push(
            &field.key("weight"),
            Violation::InvalidValue {
                what: "weight",
                value: weight.to_string(),
                reason: "must be from 0 to 1000000",
            },
        );
    }
    proto::Backend {
        service: format!("{namespace}/{}", b.name),
        port,
        port_name: String::new(),
        weight: u32::try_from(weight).unwrap_or(0),
    }
}

/// A prefix without its trailing `/` (but `/` itself): Gateway API and Ingress prefixes match
/// whole segments, so `/a/` and `/a` are the same prefix.
fn segment_prefix(mut value: String) -> String {
    while value.len() > 1 && value.ends_with('/') {
        value.pop();
    }
    value
}

/// A host name as the route writes it: an RFC 1123 name, or `*.` followed by one; lower-cased.
fn hostname(field: &Field, host: &str, errors: &mut Errors) -> String {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        errors.push(
            field,
            Violation::InvalidValue {
                what: "hostname",
                value: super::shown(host),
                reason: "must be a DNS name, optionally starting with \"*.\"",
            },
        );
    }
    host.to_ascii_lowercase()
}

fn ingress_route(ingress: &Ingress) -> Result<proto::GatewayRoute, Invalid> {
    use proto::path_match::Kind;
    let mut errors = Errors::default();
    let (object, mut out) = route_shell("Ingress", &ingress.metadata, &mut errors);
    let spec = Field::root("spec");
    let Some(ingress_spec) = ingress.spec.as_ref() else {
        errors.push(&spec, Violation::Required);
        return errors.finish(object, out);
    };
    for (i, rule) in ingress_spec.rules.iter().flatten().enumerate() {
        let field = spec.key("rules").at(i);
        let hostnames: Vec<String> = rule
            .host
            .iter()
            .map(|h| hostname(&field.key("host"), h, &mut errors))
            .collect();
        let paths = rule
            .http
            .as_ref()
            .map(|h| h.paths.as_slice())
            .unwrap_or_default();
        if paths.is_empty() && ingress_spec.default_backend.is_none() {
            errors.push(&field.key("http").key("paths"), Violation::Empty);
        }
        // One gateway rule per path: Ingress paths of one host compete by specificity, which
        // the gateway orders across all rules.
        for (j, p) in paths.iter().enumerate() {
            let field = field.key("http").key("paths").at(j);
            let value = p.path.clone().unwrap_or_else(|| "/".to_owned());
            super::absolute_path(&field.key("path"), &value, &mut errors);
            let kind = match p.path_type.as_str() {
                "Exact" => Kind::Exact(value),
                // ImplementationSpecific: lanemesh treats it as Prefix, as most controllers do.
                "Prefix" | "ImplementationSpecific" => Kind::Prefix(segment_prefix(value)),
                other => {
                    errors.push(
                        &field.key("pathType"),
                        Violation::InvalidValue {
                            what: "path type",
                            value: super::shown(other),
                            reason: "use Exact, Prefix or ImplementationSpecific",
                        },
                    );
                    Kind::Prefix("/".to_owned())
                }
            };
            let backend = ingress_backend(
                &field.key("backend"),
                &object.namespace,
                &p.backend,
                &mut errors,
            );
            out.rules.push(proto::GatewayRule {
                hostnames: hostnames.clone(),
                matches: vec![proto::HttpRequestMatch {
                    path: Some(proto::PathMatch { kind: Some(kind) }),
                    ..Default::default()
                }],
                backends: vec![backend],
            });
        }
    }
    if let Some(default) = &ingress_spec.default_backend {
        let backend = ingress_backend(
            &spec.key("defaultBackend"),
            &object.namespace,
            default,
            &mut errors,
        );
        out.rules.push(proto::GatewayRule {
            hostnames: Vec::new(),
            matches: Vec::new(),
            backends: vec![backend],
        });
    }
    if out.rules.is_empty() && ingress_spec.rules.as_ref().is_none_or(Vec::is_empty) {
        errors.push(&spec.key("rules"), Violation::Empty);
    }
    errors.finish(object, out)
}

fn ingress_backend(
    field: &Field,
    namespace: &str,
    b: &IngressBackend,
    errors: &mut Errors,
) -> proto::Backend {
    let mut out = proto::Backend {
        service: String::new(),
        port: 0,
        port_name: String::new(),
        weight: 1,
    };
    let Some(service) = &b.service else {
        errors.push(
            &field.key("service"),
            Violation::Conflict(
                "only Service backends are supported by the lanemesh gateway".to_owned(),
            ),
        );
        return out;
    };
    if service.name.is_empty() {
        errors.push(&field.key("service").key("name"), Violation::Empty);
    }
    out.service = format!("{namespace}/{}", service.name);
    let port_field = field.key("service").key("port");
    match service.port.as_ref() {
        Some(port) => match (port.number, port.name.as_deref()) {
            (Some(n), None) => out.port = port_number(&port_field.key("number"), n, errors),
            (None, Some(name)) if !name.is_empty() => out.port_name = name.to_owned(),
            _ => errors.push(
                &port_field,
                Violation::Conflict("set exactly one of number or name".to_owned()),
            ),
        },
        None => errors.push(&port_field, Violation::Required),
    }
    out
}

#[cfg(test)]
mod tests;
