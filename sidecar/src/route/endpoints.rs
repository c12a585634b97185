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
//!
//! The runtime model is here; its conversion from `proto::Service`, the one place a Service is
//! checked, is in `from_proto.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::balancer::{Balancer, Endpoint, WarmupConfig};
use crate::lane::LaneTable;

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
    /// When the pod last became ready (wall clock, from the control plane); `None` = long ago.
    pub ready_since: Option<std::time::SystemTime>,
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
    /// Shared, so a request that may be retried holds its candidates without copying them.
    base: Arc<[Endpoint]>,
    by_lane: HashMap<Arc<str>, Arc<[Endpoint]>>,
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
    pub endpoints: &'a Arc<[Endpoint]>,
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
        Self::warming(
            specs,
            balancer,
            &|_| None,
            std::time::SystemTime::UNIX_EPOCH,
        )
    }

    /// [`RouteTable::new`] where the endpoints of an app with a warm-up (`warmup(app)`) that
    /// became ready less than its duration before `now` (wall clock) warm up.
    pub fn warming(
        specs: impl IntoIterator<Item = ServiceSpec>,
        balancer: &Balancer,
        warmup: &dyn Fn(&str) -> Option<WarmupConfig>,
        now: std::time::SystemTime,
    ) -> Self {
        let mut specs: Vec<ServiceSpec> = specs.into_iter().filter(|s| s.app.is_some()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut table = Self::default();
        for spec in specs {
            let si = table.services.len();
            let app_warmup = spec.app.as_deref().and_then(warmup);
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
                    let age = e
                        .ready_since
                        .map(|since| now.duration_since(since).unwrap_or_default());
                    let endpoint = match (app_warmup, age) {
                        (Some(warmup), Some(age)) => balancer.warming_endpoint(addr, warmup, age),
                        _ => balancer.endpoint(addr),
                    };
                    match &e.lane {
                        None => base.push(endpoint),
                        Some(tag) => by_lane.entry(Arc::clone(tag)).or_default().push(endpoint),
                    }
                }
                ports.push(PortRoute {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                    base: base.into(),
                    by_lane: by_lane
                        .into_iter()
                        .map(|(tag, endpoints)| (tag, endpoints.into()))
                        .collect(),
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

    /// The first port of service `name` (`namespace/name`) that `port` accepts: for a caller
    /// that names a Service instead of addressing it (the gateway's backends).
    pub fn named(&self, name: &str, port: impl Fn(&PortRoute) -> bool) -> Option<Destination<'_>> {
        let service = self.service(name)?;
        let port = service.ports.iter().find(|p| port(p))?;
        Some(Destination {
            service,
            port,
            pod: None,
        })
    }

    /// The service `namespace/name`.
    pub fn service(&self, name: &str) -> Option<&ServiceRoute> {
        self.services
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.services.get(i))
    }
}

mod from_proto;
pub use from_proto::ServiceConfigError;

#[cfg(test)]
mod tests;
