//! `proto::Service` -> [`ServiceSpec`]: the one place a Service is checked.

use std::net::IpAddr;

use lanemesh_api::proto;

use super::*;

/// A `proto::Service` the sidecar refuses; the message names the Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceConfigError {
    /// A required field is empty.
    #[error("service {service:?}: {field} must not be empty")]
    Empty {
        /// `namespace/name`.
        service: String,
        /// The field.
        field: &'static str,
    },
    /// A cluster IP or endpoint IP that does not parse.
    #[error("service {service}: invalid IP address {value:?} in {field}")]
    InvalidIp {
        /// `namespace/name`.
        service: String,
        /// The field.
        field: &'static str,
        /// The refused text.
        value: String,
    },
    /// A port number outside 1..=65535.
    #[error("service {service}: {field} {value} is not a port number (1-65535)")]
    InvalidPort {
        /// `namespace/name`.
        service: String,
        /// The field.
        field: &'static str,
        /// The refused number.
        value: u32,
    },
    /// An application protocol number this sidecar does not know.
    #[error("service {service}: unknown app protocol {value} on port {port}")]
    UnknownProtocol {
        /// `namespace/name`.
        service: String,
        /// The service port.
        port: u32,
        /// The refused number.
        value: i32,
    },
}

impl TryFrom<&proto::Service> for ServiceSpec {
    type Error = ServiceConfigError;

    fn try_from(s: &proto::Service) -> Result<Self, Self::Error> {
        let service = || s.name.clone();
        for (field, value) in [("name", &s.name), ("namespace", &s.namespace)] {
            if value.trim().is_empty() {
                return Err(ServiceConfigError::Empty {
                    service: service(),
                    field,
                });
            }
        }
        let ip = |field, value: &str| {
            value
                .parse::<IpAddr>()
                .map_err(|_| ServiceConfigError::InvalidIp {
                    service: service(),
                    field,
                    value: value.to_owned(),
                })
        };
        let port = |field, value: u32| {
            u16::try_from(value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ServiceConfigError::InvalidPort {
                    service: service(),
                    field,
                    value,
                })
        };
        let cluster_ips = s
            .cluster_ips
            .iter()
            .map(|v| ip("clusterIPs", v))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let service_port = port("ports.port", p.port)?;
                // Kubernetes defaults targetPort to port.
                let target_port = match p.target_port {
                    0 => service_port,
                    n => port("ports.targetPort", n)?,
                };
                let protocol = match proto::AppProtocol::try_from(p.protocol) {
                    Ok(proto::AppProtocol::Auto) => Protocol::Auto,
                    Ok(proto::AppProtocol::Http1) => Protocol::Http1,
                    Ok(proto::AppProtocol::Http2) => Protocol::Http2,
                    Ok(proto::AppProtocol::Grpc) => Protocol::Grpc,
                    Ok(proto::AppProtocol::Tcp) => Protocol::Tcp,
                    Err(_) => {
                        return Err(ServiceConfigError::UnknownProtocol {
                            service: service(),
                            port: p.port,
                            value: p.protocol,
                        });
                    }
                };
                Ok(PortSpec {
                    name: p.name.clone(),
                    port: service_port,
                    target_port,
                    protocol,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = s
            .endpoints
            .iter()
            .map(|e| {
                let ports = e
                    .ports
                    .iter()
                    .map(|(name, p)| Ok((name.clone(), port("endpoints.ports", *p)?)))
                    .collect::<Result<HashMap<_, _>, _>>()?;
                Ok(EndpointSpec {
                    ip: ip("endpoints.ip", &e.ip)?,
                    pod_name: e.pod_name.clone(),
                    lane: (!e.lane_tag.is_empty()).then(|| Arc::from(e.lane_tag.as_str())),
                    ready: e.ready,
                    // A time before the epoch or out of range means nothing useful: long ready.
                    ready_since: e.ready_since.and_then(|t| {
                        let since = std::time::Duration::new(
                            u64::try_from(t.seconds).ok()?,
                            u32::try_from(t.nanos).ok()?,
                        );
                        std::time::SystemTime::UNIX_EPOCH.checked_add(since)
                    }),
                    ports,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            app: (!s.app.is_empty()).then(|| s.app.clone()),
            cluster_ips,
            ports,
            endpoints,
        })
    }
}
