//! Per-service endpoint sets, destination lookup and lane-aware endpoint choice.
//!
//! DESIGN §4 "Endpoint choice": for destination app S and lane L, when L is enabled in a lane
//! group containing S, the ready endpoints of S tagged L; if none, the ready base (untagged)
//! endpoints; if none, a 503 whose body names the app and the lane. A disabled lane, or a lane of
//! no group containing S, routes as base. The tag header stays on the request after a fallback, so
//! a later hop can still reach its tagged version (`Agray -> B -> Cgray`); this module never
//! touches headers.
//!
//! DESIGN §5: an outbound connection to a Service cluster IP:port, or to a pod IP:port of a
//! governed app, is routed by lanemesh; anything else passes through untouched.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lanemesh_api::proto;

use super::balancer::{Balancer, Endpoint};
use crate::lane::LaneTable;

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

/// What to expect on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Detect by peeking.
    Auto,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (prior knowledge).
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name ("" when unnamed).
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// The numeric target port, used when an endpoint does not name the port.
    pub target_port: u16,
    /// Expected protocol.
    pub protocol: Protocol,
}

/// One endpoint (pod) of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Pod IP.
    pub ip: IpAddr,
    /// Pod name.
    pub pod_name: String,
    /// Lane tag; `None` = base.
    pub lane: Option<Arc<str>>,
    /// Only ready endpoints receive traffic.
    pub ready: bool,
    /// Service port name -> port on this endpoint.
    pub ports: HashMap<String, u16>,
}

impl EndpointSpec {
    /// The endpoint's port for service port `port`: by port name, else the target port.
    pub fn port_for(&self, port: &PortSpec) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .unwrap_or(port.target_port)
    }
}

/// A Service with its endpoints, converted from `proto::Service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `namespace/name`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The governed app behind it; `None` = not governed (traffic passes through).
    pub app: Option<String>,
    /// Cluster IPs (empty for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Endpoints, ready or not.
    pub endpoints: Vec<EndpointSpec>,
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

/// A service as the router sees it: per port, its ready endpoints grouped by lane.
#[derive(Debug)]
pub struct ServiceRoute {
    name: String,
    app: String,
    ports: Vec<PortRoute>,
}

impl ServiceRoute {
    /// `namespace/name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The governed app behind the service.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The ports.
    pub fn ports(&self) -> &[PortRoute] {
        &self.ports
    }
}

/// One port of a service with its ready endpoints (endpoint ports already resolved).
#[derive(Debug)]
pub struct PortRoute {
    name: String,
    port: u16,
    protocol: Protocol,
    base: Vec<Endpoint>,
    by_lane: HashMap<Arc<str>, Vec<Endpoint>>,
}

impl PortRoute {
    /// The service port's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Expected protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// Where an outbound connection goes, in lanemesh terms.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The service.
    pub service: &'a ServiceRoute,
    /// The port of the service.
    pub port: &'a PortRoute,
    /// The one pod the caller addressed, when it called a pod IP rather than a cluster IP.
    pub pod: Option<Addressed<'a>>,
}

/// A pod a caller addressed by its IP (StatefulSet peers, Kafka brokers, Nacos-style direct
/// discovery): it keeps the connection unless the request's lane needs another version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressed<'a> {
    /// The pod IP and port called.
    pub addr: SocketAddr,
    /// The pod's lane tag; `None` = base.
    pub lane: Option<&'a str>,
}

/// No ready endpoint for a request; the message is the 503 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", no_endpoint_message(app, lane.as_deref(), service, *port))]
pub struct NoEndpoint {
    /// The destination app.
    pub app: String,
    /// The request's lane, when it was enabled for the app (`None` = base).
    pub lane: Option<String>,
    /// `namespace/name` of the service.
    pub service: String,
    /// The service port.
    pub port: u16,
}

fn no_endpoint_message(app: &str, lane: Option<&str>, service: &str, port: u16) -> String {
    match lane {
        Some(lane) => format!(
            "no ready endpoint of app {app:?} in lane {lane:?} nor in base (service {service}, port {port})"
        ),
        None => {
            format!("no ready endpoint of app {app:?} in base (service {service}, port {port})")
        }
    }
}

/// The endpoints a request may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen<'a> {
    /// Candidates for the balancer; never empty.
    pub endpoints: &'a [Endpoint],
    /// The lane whose endpoints these are; `None` = base.
    pub lane: Option<&'a str>,
    /// The request's lane was enabled for the app but had no ready endpoint.
    pub fell_back: bool,
}

impl<'a> Destination<'a> {
    /// The addressed pod, when the caller named one and it is of the version `chosen` serves:
    /// traffic to one replica stays with it (the lane only moves it when another version must
    /// answer).
    pub fn keeps_addressed(&self, chosen: &Chosen<'_>) -> Option<SocketAddr> {
        self.pod
            .filter(|pod| pod.lane == chosen.lane)
            .map(|pod| pod.addr)
    }

    /// The candidate endpoints for a request of lane `lane` (`None` = base).
    pub fn choose(&self, lane: Option<&str>, lanes: &LaneTable) -> Result<Chosen<'a>, NoEndpoint> {
        let app = self.service.app.as_str();
        let lane = lane.filter(|l| lanes.is_enabled_for_app(app, l));
        if let Some(l) = lane
            && let Some((tag, endpoints)) = self.port.by_lane.get_key_value(l)
        {
            // Lists are built only for lanes with ready endpoints, so never empty.
            return Ok(Chosen {
                endpoints,
                lane: Some(tag),
                fell_back: false,
            });
        }
        if !self.port.base.is_empty() {
            return Ok(Chosen {
                endpoints: &self.port.base,
                lane: None,
                fell_back: lane.is_some(),
            });
        }
        Err(NoEndpoint {
            app: app.to_owned(),
            lane: lane.map(str::to_owned),
            service: self.service.name.clone(),
            port: self.port.port,
        })
    }
}

/// Every governed service a sidecar may reach, indexed by cluster IP:port and pod IP:port.
#[derive(Debug, Default)]
pub struct RouteTable {
    services: Vec<ServiceRoute>,
    /// Cluster IP:port -> (service, port) indices.
    by_cluster: HashMap<SocketAddr, (usize, usize)>,
    /// Pod IP:endpoint port -> (service, port) indices and the pod's lane tag.
    by_pod: HashMap<SocketAddr, (usize, usize, Option<Arc<str>>)>,
}

impl RouteTable {
    /// Builds the table; services without a governed app are left out (their traffic passes
    /// through). Endpoint statistics come from `balancer`, so they survive the swap. When several
    /// services claim one address, the first by name wins.
    pub fn new(specs: impl IntoIterator<Item = ServiceSpec>, balancer: &Balancer) -> Self {
        let mut specs: Vec<ServiceSpec> = specs.into_iter().filter(|s| s.app.is_some()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut table = Self::default();
        for spec in specs {
            let si = table.services.len();
            let mut ports = Vec::with_capacity(spec.ports.len());
            for (pi, p) in spec.ports.iter().enumerate() {
                for ip in &spec.cluster_ips {
                    table
                        .by_cluster
                        .entry(SocketAddr::new(*ip, p.port))
                        .or_insert((si, pi));
                }
                let mut base = Vec::new();
                let mut by_lane: HashMap<Arc<str>, Vec<Endpoint>> = HashMap::new();
                for e in &spec.endpoints {
                    let addr = SocketAddr::new(e.ip, e.port_for(p));
                    table
                        .by_pod
                        .entry(addr)
                        .or_insert_with(|| (si, pi, e.lane.clone()));
                    if !e.ready {
                        continue;
                    }
                    let endpoint = balancer.endpoint(addr);
                    match &e.lane {
                        None => base.push(endpoint),
                        Some(tag) => by_lane.entry(Arc::clone(tag)).or_default().push(endpoint),
                    }
                }
                ports.push(PortRoute {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                    base,
                    by_lane,
                });
            }
            table.services.push(ServiceRoute {
                name: spec.name,
                app: spec.app.unwrap_or_default(),
                ports,
            });
        }
        table
    }

    /// The services, in name order.
    pub fn services(&self) -> &[ServiceRoute] {
        &self.services
    }

    /// What `addr` (an outbound connection's original destination) is: a cluster IP:port or pod
    /// IP:port of a governed app. `None` = unknown, pass through untouched.
    pub fn lookup(&self, addr: SocketAddr) -> Option<Destination<'_>> {
        let (si, pi, pod) = match self.by_cluster.get(&addr) {
            Some(&(si, pi)) => (si, pi, None),
            None => {
                let (si, pi, lane) = self.by_pod.get(&addr)?;
                (
                    *si,
                    *pi,
                    Some(Addressed {
                        addr,
                        lane: lane.as_deref(),
                    }),
                )
            }
        };
        let service = self.services.get(si)?;
        let port = service.ports.get(pi)?;
        Some(Destination { service, port, pod })
    }

    /// The service `namespace/name`.
    pub fn service(&self, name: &str) -> Option<&ServiceRoute> {
        self.services
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.services.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane::rules::tests::{cond, group, lane};
    use crate::lane::{LaneGroupConfig, PropagationRule, PropagationSettings, Propagator};
    use crate::policy::clock::ManualClock;
    use http::{HeaderMap, HeaderValue};
    use std::time::Duration;

    fn ep(ip: &str, tag: &str, ready: bool) -> proto::Endpoint {
        proto::Endpoint {
            ip: ip.to_owned(),
            pod_name: format!("pod-{ip}"),
            lane_tag: tag.to_owned(),
            ready,
            ports: HashMap::from([("http".to_owned(), 8080)]),
        }
    }

    fn service(
        name: &str,
        app: &str,
        cluster_ip: &str,
        endpoints: Vec<proto::Endpoint>,
    ) -> proto::Service {
        proto::Service {
            name: format!("default/{name}"),
            namespace: "default".to_owned(),
            app: app.to_owned(),
            cluster_ips: vec![cluster_ip.to_owned()],
            ports: vec![proto::ServicePort {
                name: "http".to_owned(),
                port: 80,
                target_port: 8080,
                protocol: proto::AppProtocol::Http1 as i32,
            }],
            endpoints,
        }
    }

    fn lanes(gray_enabled: bool) -> LaneTable {
        let m = proto::Match {
            logic: 0,
            conditions: vec![cond(
                proto::Source::Header,
                "canary",
                proto::Operator::Equal,
                "1",
            )],
        };
        let g = group(
            "default/flow",
            &["a", "b", "c"],
            vec![lane("gray", "gray", gray_enabled, Some(m))],
        );
        LaneTable::new([LaneGroupConfig::try_from(&g).unwrap()])
    }

    fn balancer() -> Balancer {
        Balancer::new(Arc::new(ManualClock::default()), Default::default())
    }

    fn table(services: &[proto::Service], b: &Balancer) -> RouteTable {
        RouteTable::new(
            services.iter().map(|s| ServiceSpec::try_from(s).unwrap()),
            b,
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ips(chosen: &Chosen<'_>) -> Vec<String> {
        let mut v: Vec<String> = chosen
            .endpoints
            .iter()
            .map(|e| e.addr().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn converts_services_and_maps_ports() {
        let mut s = service("c", "c", "10.96.0.3", vec![ep("10.0.0.1", "gray", true)]);
        s.ports.push(proto::ServicePort {
            name: "grpc".into(),
            port: 9090,
            target_port: 0,
            protocol: proto::AppProtocol::Grpc as i32,
        });
        let spec = ServiceSpec::try_from(&s).unwrap();
        assert_eq!(spec.app.as_deref(), Some("c"));
        assert_eq!(spec.endpoints[0].lane.as_deref(), Some("gray"));
        // Named port -> the endpoint's port; unnamed on the endpoint -> targetPort (defaulting to port).
        assert_eq!(spec.endpoints[0].port_for(&spec.ports[0]), 8080);
        assert_eq!(spec.ports[1].target_port, 9090);
        assert_eq!(spec.endpoints[0].port_for(&spec.ports[1]), 9090);
        assert_eq!(spec.ports[1].protocol, Protocol::Grpc);

        let mut bad = s.clone();
        bad.cluster_ips = vec!["10.96.0.300".into()];
        let err = ServiceSpec::try_from(&bad).unwrap_err();
        assert!(err.to_string().contains("default/c") && err.to_string().contains("10.96.0.300"));
        let mut bad = s.clone();
        bad.ports[0].port = 70_000;
        assert!(matches!(
            ServiceSpec::try_from(&bad),
            Err(ServiceConfigError::InvalidPort { value: 70_000, .. })
        ));
        let mut bad = s;
        bad.ports[0].protocol = 42;
        assert!(matches!(
            ServiceSpec::try_from(&bad),
            Err(ServiceConfigError::UnknownProtocol { .. })
        ));
    }

    #[test]
    fn destination_lookup_by_cluster_ip_and_pod_ip() {
        // DESIGN §5: a Service ClusterIP or a pod IP of a governed app is routed; unknown passes.
        let b = balancer();
        let t = table(
            &[
                service(
                    "c",
                    "c",
                    "10.96.0.3",
                    vec![ep("10.0.0.1", "", true), ep("10.0.0.2", "gray", false)],
                ),
                service("plain", "", "10.96.0.9", vec![ep("10.0.0.9", "", true)]),
            ],
            &b,
        );
        let d = t.lookup(addr("10.96.0.3:80")).unwrap();
        assert_eq!(
            (d.service.app(), d.service.name(), d.port.port()),
            ("c", "default/c", 80)
        );
        assert_eq!(d.port.protocol(), Protocol::Http1);
        // Pod IP at the endpoint port, ready or not (Nacos-style direct calls).
        let d = t.lookup(addr("10.0.0.2:8080")).unwrap();
        assert_eq!(d.service.app(), "c");
        assert_eq!(d.port.name(), "http");
        assert!(
            t.lookup(addr("10.96.0.3:81")).is_none(),
            "port not in the service"
        );
        assert!(
            t.lookup(addr("10.0.0.1:80")).is_none(),
            "pod IP at the service port"
        );
        assert!(
            t.lookup(addr("10.96.0.9:80")).is_none(),
            "ungoverned service passes through"
        );
        assert!(t.lookup(addr("10.0.0.9:8080")).is_none());
        assert!(t.lookup(addr("192.0.2.1:443")).is_none());
        assert_eq!(t.service("default/c").map(ServiceRoute::app), Some("c"));
    }

    #[test]
    fn lane_endpoints_then_base_then_error_naming_app_and_lane() {
        // DESIGN §4 "Endpoint choice": tagged L, else base, else 503 with a clear body.
        let b = balancer();
        let lanes = lanes(true);
        let full = table(
            &[service(
                "c",
                "c",
                "10.96.0.3",
                vec![
                    ep("10.0.0.1", "", true),
                    ep("10.0.0.2", "gray", true),
                    ep("10.0.0.3", "gray", false),
                    ep("10.0.0.4", "blue", true),
                ],
            )],
            &b,
        );
        let d = full.lookup(addr("10.96.0.3:80")).unwrap();
        let gray = d.choose(Some("gray"), &lanes).unwrap();
        assert_eq!(ips(&gray), ["10.0.0.2:8080"], "only ready gray endpoints");
        assert_eq!((gray.lane, gray.fell_back), (Some("gray"), false));
        let base = d.choose(None, &lanes).unwrap();
        assert_eq!(
            ips(&base),
            ["10.0.0.1:8080"],
            "base excludes tagged endpoints"
        );
        assert_eq!((base.lane, base.fell_back), (None, false));

        let no_gray = table(
            &[service(
                "c",
                "c",
                "10.96.0.3",
                vec![ep("10.0.0.1", "", true), ep("10.0.0.3", "gray", false)],
            )],
            &b,
        );
        let d = no_gray.lookup(addr("10.96.0.3:80")).unwrap();
        let fallback = d.choose(Some("gray"), &lanes).unwrap();
        assert_eq!(ips(&fallback), ["10.0.0.1:8080"]);
        assert_eq!((fallback.lane, fallback.fell_back), (None, true));

        let nothing = table(
            &[service(
                "c",
                "c",
                "10.96.0.3",
                vec![ep("10.0.0.1", "", false), ep("10.0.0.3", "gray", false)],
            )],
            &b,
        );
        let d = nothing.lookup(addr("10.96.0.3:80")).unwrap();
        let err = d.choose(Some("gray"), &lanes).unwrap_err();
        assert_eq!(err.lane.as_deref(), Some("gray"));
        let body = err.to_string();
        assert!(
            body.contains("\"c\"") && body.contains("\"gray\""),
            "{body}"
        );
        let err = d.choose(None, &lanes).unwrap_err();
        assert!(err.to_string().contains("\"c\"") && err.lane.is_none());
    }

    #[test]
    fn disabled_or_foreign_lane_routes_as_base() {
        // DESIGN §4: a disabled lane routes as base; so does a lane of no group containing S.
        let b = balancer();
        let services = [
            service(
                "c",
                "c",
                "10.96.0.3",
                vec![ep("10.0.0.1", "", true), ep("10.0.0.2", "gray", true)],
            ),
            service(
                "x",
                "x",
                "10.96.0.4",
                vec![ep("10.0.1.1", "", true), ep("10.0.1.2", "gray", true)],
            ),
        ];
        let t = table(&services, &b);
        let disabled = lanes(false);
        let chosen = t
            .lookup(addr("10.96.0.3:80"))
            .unwrap()
            .choose(Some("gray"), &disabled)
            .unwrap();
        assert_eq!(ips(&chosen), ["10.0.0.1:8080"]);
        assert!(!chosen.fell_back, "a disabled lane is base, not a fallback");
        let enabled = lanes(true);
        // x is in no lane group: its gray pods are not a lane target.
        let chosen = t
            .lookup(addr("10.96.0.4:80"))
            .unwrap()
            .choose(Some("gray"), &enabled)
            .unwrap();
        assert_eq!(ips(&chosen), ["10.0.1.1:8080"]);
        // An unknown tag routes as base too.
        let chosen = t
            .lookup(addr("10.96.0.3:80"))
            .unwrap()
            .choose(Some("nope"), &enabled)
            .unwrap();
        assert_eq!(chosen.lane, None);
    }

    #[test]
    fn gray_a_to_base_b_to_gray_c() {
        // DESIGN §4: the tag header stays after a fallback, so `Agray -> B -> Cgray` works: B has
        // no gray endpoint (base B is chosen), and B's outbound to C still finds gray C.
        let b = balancer();
        let lanes = lanes(true);
        let t = table(
            &[
                service("b", "b", "10.96.0.2", vec![ep("10.0.2.1", "", true)]),
                service(
                    "c",
                    "c",
                    "10.96.0.3",
                    vec![ep("10.0.3.1", "", true), ep("10.0.3.2", "gray", true)],
                ),
            ],
            &b,
        );
        // A's request to B carries the tag set at the entry.
        let mut to_b = HeaderMap::new();
        to_b.insert("x-mse-tag", HeaderValue::from_static("gray"));
        let chosen_b = t
            .lookup(addr("10.96.0.2:80"))
            .unwrap()
            .choose(Some("gray"), &lanes)
            .unwrap();
        assert_eq!(ips(&chosen_b), ["10.0.2.1:8080"]);
        assert!(chosen_b.fell_back);
        // B's sidecar: the inbound keeps its header; the app forwards it on its call to C.
        let settings = PropagationSettings::merge(lanes.groups_of("b").map(|g| &**g));
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1)));
        let propagator = Propagator::new(None, &settings, clock);
        let inbound_lane = settings.carried_tag(&to_b).map(|(t, _)| t.into_owned());
        let _guard = propagator.register_inbound(&settings, inbound_lane.as_deref(), &to_b);
        let to_c = to_b.clone();
        let out = propagator.outbound_lane(&settings, &to_c);
        assert_eq!(
            (out.tag(), out.rule),
            (Some("gray"), PropagationRule::TagHeader)
        );
        let chosen_c = t
            .lookup(addr("10.96.0.3:80"))
            .unwrap()
            .choose(out.tag(), &lanes)
            .unwrap();
        assert_eq!(ips(&chosen_c), ["10.0.3.2:8080"]);
        // Even if B's app drops the header, B's inflight state (only gray in flight) recovers it
        // and the proxy injects it.
        let dropped = HeaderMap::new();
        let out = propagator.outbound_lane(&settings, &dropped);
        assert_eq!(
            (out.injection(), out.rule),
            (Some("gray"), PropagationRule::Inflight)
        );
    }

    #[test]
    fn endpoint_statistics_are_shared_across_table_rebuilds() {
        let b = balancer();
        let services = [service(
            "c",
            "c",
            "10.96.0.3",
            vec![ep("10.0.0.1", "", true)],
        )];
        let t1 = table(&services, &b);
        let t2 = table(&services, &b);
        let e1 = &t1
            .lookup(addr("10.96.0.3:80"))
            .unwrap()
            .choose(None, &lanes(true))
            .unwrap()
            .endpoints[0];
        let e2 = &t2
            .lookup(addr("10.96.0.3:80"))
            .unwrap()
            .choose(None, &lanes(true))
            .unwrap()
            .endpoints[0];
        let pick = b.pick(std::slice::from_ref(e1), &mut rand::rng()).unwrap();
        assert_eq!(
            e2.stats().outstanding(),
            1,
            "the rebuilt table sees the same counters"
        );
        drop(pick);
        drop(t1);
        assert_eq!(b.prune(), 0, "still used by t2");
        drop(t2);
        assert_eq!(b.prune(), 1);
    }
}
