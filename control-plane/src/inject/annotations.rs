//! The pod annotations a user tunes injection with, parsed once into [`PodOverrides`].
//!
//! Anything wrong is refused with an [`AnnotationError`] naming the annotation and the form it
//! expects: a typo in an exclusion must never inject a sidecar that captures what the user
//! meant to keep out.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// `"false"` keeps a labelled pod out of injection; `"true"` (or absent) injects it.
pub const INJECT: &str = "sidecar.lanemesh.io/inject";
/// Set on an injected pod: the injection is not repeated.
pub const STATUS: &str = "sidecar.lanemesh.io/status";
/// Inbound ports the capture leaves alone.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.lanemesh.io/exclude-inbound-ports";
/// Outbound destination ports the capture leaves alone.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.lanemesh.io/exclude-outbound-ports";
/// Outbound destination CIDRs the capture leaves alone.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "traffic.lanemesh.io/exclude-outbound-cidrs";
/// The only inbound ports captured (`*`, the default, = all).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.lanemesh.io/include-inbound-ports";
/// Seconds the app's containers keep running after the pod is deleted (a `preStop` sleep),
/// while callers learn the endpoint is gone; `0` = none.
pub const APP_DRAIN_SECONDS: &str = "sidecar.lanemesh.io/appDrainSeconds";
/// The proxy container's CPU request.
pub const PROXY_CPU: &str = "sidecar.lanemesh.io/proxyCPU";
/// The proxy container's memory request.
pub const PROXY_MEMORY: &str = "sidecar.lanemesh.io/proxyMemory";
/// The proxy container's CPU limit.
pub const PROXY_CPU_LIMIT: &str = "sidecar.lanemesh.io/proxyCPULimit";
/// The proxy container's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.lanemesh.io/proxyMemoryLimit";

/// The pod or Namespace annotation choosing the context propagation injected into the app's
/// containers (`java`, `python`, `none`; see [`super::context`]).
pub const INJECT_CONTEXT: &str = "lanemesh.io/inject-context";

/// An annotation the webhook refuses; the pod is not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} is not {expected}")]
pub struct AnnotationError {
    /// The annotation's key.
    pub annotation: &'static str,
    /// What it holds.
    pub value: String,
    /// The form it must have.
    pub expected: &'static str,
}

/// Which inbound ports the capture redirects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port (`*`), less the excluded ones.
    #[default]
    All,
    /// Only these.
    Only(Vec<u16>),
}

/// A Kubernetes resource quantity (`100m`, `128Mi`, `0.5`), checked for its form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(pub String);

/// What a pod's annotations change in its injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOverrides {
    /// `sidecar.lanemesh.io/inject: "false"`.
    pub opted_out: bool,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
    pub include_inbound_ports: InboundPorts,
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
    /// `sidecar.lanemesh.io/appDrainSeconds`.
    pub app_drain_seconds: Option<i64>,
    /// `lanemesh.io/inject-context`.
    pub context: Option<Language>,
}

impl TryFrom<&BTreeMap<String, String>> for PodOverrides {
    type Error = AnnotationError;

    fn try_from(annotations: &BTreeMap<String, String>) -> Result<Self, Self::Error> {
        let get = |key: &str| annotations.get(key).map(String::as_str);
        let opted_out = match get(INJECT).map(str::trim) {
            None | Some("true") => false,
            Some("false") => true,
            Some(other) => {
                return Err(AnnotationError {
                    annotation: INJECT,
                    value: other.to_owned(),
                    expected: "\"true\" or \"false\"",
                });
            }
        };
        let include_inbound_ports = match get(INCLUDE_INBOUND_PORTS).map(str::trim) {
            None | Some("*") => InboundPorts::All,
            Some(value) => InboundPorts::Only(ports(INCLUDE_INBOUND_PORTS, value)?),
        };
        Ok(Self {
            opted_out,
            exclude_inbound_ports: get(EXCLUDE_INBOUND_PORTS)
                .map_or(Ok(Vec::new()), |v| ports(EXCLUDE_INBOUND_PORTS, v))?,
            exclude_outbound_ports: get(EXCLUDE_OUTBOUND_PORTS)
                .map_or(Ok(Vec::new()), |v| ports(EXCLUDE_OUTBOUND_PORTS, v))?,
            exclude_outbound_cidrs: get(EXCLUDE_OUTBOUND_CIDRS)
                .map_or(Ok(Vec::new()), |v| cidrs(EXCLUDE_OUTBOUND_CIDRS, v))?,
            include_inbound_ports,
            cpu: get(PROXY_CPU).map(|v| quantity(PROXY_CPU, v)).transpose()?,
            memory: get(PROXY_MEMORY)
                .map(|v| quantity(PROXY_MEMORY, v))
                .transpose()?,
            cpu_limit: get(PROXY_CPU_LIMIT)
                .map(|v| quantity(PROXY_CPU_LIMIT, v))
                .transpose()?,
            memory_limit: get(PROXY_MEMORY_LIMIT)
                .map(|v| quantity(PROXY_MEMORY_LIMIT, v))
                .transpose()?,
            app_drain_seconds: get(APP_DRAIN_SECONDS)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (0..=300).contains(n))
                        .ok_or_else(|| AnnotationError {
                            annotation: APP_DRAIN_SECONDS,
                            value: v.to_owned(),
                            expected: "a whole number of seconds from 0 to 300",
                        })
                })
                .transpose()?,
            context: get(INJECT_CONTEXT)
                .map(|v| Language::parse(INJECT_CONTEXT, v))
                .transpose()?,
        })
    }
}

/// Which instrumentation an app gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Language {
    /// Nothing (the app forwards what it forwards).
    #[default]
    None,
    /// The OpenTelemetry Java agent through `JAVA_TOOL_OPTIONS`.
    Java,
    /// OpenTelemetry's Python auto-instrumentation through `PYTHONPATH`.
    Python,
}

impl Language {
    /// The annotation's value.
    pub fn parse(annotation: &'static str, value: &str) -> Result<Self, AnnotationError> {
        match value.trim() {
            "none" => Ok(Self::None),
            "java" => Ok(Self::Java),
            "python" => Ok(Self::Python),
            other => Err(AnnotationError {
                annotation,
                value: other.to_owned(),
                expected: "\"java\", \"python\" or \"none\"",
            }),
        }
    }

    /// The annotation's value for this language.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Java => "java",
            Self::Python => "python",
        }
    }
}

/// Items of a comma-separated list, trimmed; empty items (a trailing comma) are skipped.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(annotation: &'static str, value: &str) -> Result<Vec<u16>, AnnotationError> {
    let refuse = || AnnotationError {
        annotation,
        value: value.to_owned(),
        expected: "a comma-separated list of ports 1-65535 (e.g. \"8080,9090\")",
    };
    let mut out = Vec::new();
    for item in items(value) {
        let port = item
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(refuse)?;
        if !out.contains(&port) {
            out.push(port);
        }
    }
    if out.is_empty() {
        return Err(refuse());
    }
    Ok(out)
}

fn cidrs(annotation: &'static str, value: &str) -> Result<Vec<String>, AnnotationError> {
    let refuse = || AnnotationError {
        annotation,
        value: value.to_owned(),
        expected: "a comma-separated list of CIDRs (e.g. \"10.0.0.0/8,fd00::/8\")",
    };
    let mut out = Vec::new();
    for item in items(value) {
        let (addr, len) = item.split_once('/').unwrap_or((item, ""));
        let addr: IpAddr = addr.parse().map_err(|_| refuse())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() {
            max
        } else {
            len.parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(refuse)?
        };
        out.push(format!("{addr}/{len}"));
    }
    if out.is_empty() {
        return Err(refuse());
    }
    Ok(out)
}

fn quantity(annotation: &'static str, value: &str) -> Result<Quantity, AnnotationError> {
    Quantity::parse(value).ok_or_else(|| AnnotationError {
        annotation,
        value: value.to_owned(),
        expected: "a Kubernetes quantity (e.g. \"100m\", \"0.5\", \"128Mi\")",
    })
}

impl Quantity {
    /// `value` if it has the quantity grammar of Kubernetes
    /// (`k8s.io/apimachinery/pkg/api/resource`): a non-negative decimal number, then a binary
    /// (`Ki`..`Ei`) or decimal (`n u m k M G T P E`) suffix or an exponent.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim();
        if v.starts_with('-') {
            return None;
        }
        let unsigned = v.strip_prefix('+').unwrap_or(v);
        let digits_end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(digits_end);
        let number_ok = !number.is_empty()
            && number != "."
            && number.matches('.').count() <= 1
            && number.len() <= 32;
        let suffix_ok = match suffix {
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G"
            | "T" | "P" | "E" => true,
            exponent => exponent
                .strip_prefix(['e', 'E'])
                .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
                .is_some_and(|e| {
                    !e.is_empty() && e.len() <= 3 && e.bytes().all(|b| b.is_ascii_digit())
                }),
        };
        (number_ok && suffix_ok).then(|| Self(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<PodOverrides, AnnotationError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PodOverrides::try_from(&map)
    }

    #[test]
    fn no_annotation_means_defaults() {
        assert_eq!(parse(&[]).unwrap(), PodOverrides::default());
    }

    #[test]
    fn lists_are_parsed_trimmed_and_deduplicated() {
        let o = parse(&[
            (EXCLUDE_INBOUND_PORTS, "8080, 9090,8080,"),
            (EXCLUDE_OUTBOUND_PORTS, "3306"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8, fd00::/8,192.168.1.1"),
            (INCLUDE_INBOUND_PORTS, "80,443"),
            (PROXY_CPU, "100m"),
            (PROXY_MEMORY, "128Mi"),
            (PROXY_CPU_LIMIT, "2"),
            (PROXY_MEMORY_LIMIT, "1e9"),
            (INJECT, "true"),
        ])
        .unwrap();
        assert_eq!(o.exclude_inbound_ports, [8080, 9090]);
        assert_eq!(o.exclude_outbound_ports, [3306]);
        assert_eq!(
            o.exclude_outbound_cidrs,
            ["10.0.0.0/8", "fd00::/8", "192.168.1.1/32"]
        );
        assert_eq!(o.include_inbound_ports, InboundPorts::Only(vec![80, 443]));
        assert_eq!(o.cpu, Some(Quantity("100m".into())));
        assert_eq!(o.memory_limit, Some(Quantity("1e9".into())));
        assert!(!o.opted_out);
        assert!(parse(&[(INJECT, "false")]).unwrap().opted_out);
        assert_eq!(
            parse(&[(INCLUDE_INBOUND_PORTS, "*")])
                .unwrap()
                .include_inbound_ports,
            InboundPorts::All
        );
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_annotation_and_the_form() {
        for (key, value) in [
            (INJECT, "yes"),
            (EXCLUDE_INBOUND_PORTS, "http"),
            (EXCLUDE_INBOUND_PORTS, "0"),
            (EXCLUDE_OUTBOUND_PORTS, "70000"),
            (EXCLUDE_OUTBOUND_PORTS, ","),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_CIDRS, "fd00::/129"),
            (EXCLUDE_OUTBOUND_CIDRS, "example.com/8"),
            (INCLUDE_INBOUND_PORTS, "80-90"),
            (PROXY_CPU, "a lot"),
            (PROXY_CPU, "-1"),
            (PROXY_MEMORY, "128MB"),
            (PROXY_MEMORY, "1.2.3"),
            (PROXY_MEMORY_LIMIT, "1e"),
        ] {
            let error = parse(&[(key, value)]).unwrap_err();
            assert_eq!(error.annotation, key, "{value}");
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("annotation {key}: {value:?} is not ")),
                "{message}"
            );
        }
    }
}
