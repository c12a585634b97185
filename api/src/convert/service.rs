//! Kubernetes Services, EndpointSlices and Pods -> `proto::Service`.
//!
//! With EndpointSlices (a cluster with its endpoint controller) a Service's
//! endpoints are those of its slices; without any slice for it (the local
//! directory source) they are derived from the Pods its selector matches,
//! as the endpoint controller would.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::error::{Errors, Field};
use super::{Built, Violation};
use crate::{labels, proto};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Converts every Service, with the slices labelled for it and the Pods of
/// its namespace. Pods are all known pods: governed ones give the Service
/// its `app`; any pod gives its endpoint a lane tag.
pub fn services(
    services: &[Service],
    slices: &[EndpointSlice],
    pods: &[Pod],
) -> Built<proto::Service> {
    let mut pods_by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for pod in pods {
        pods_by_ns
            .entry(namespace_of(&pod.metadata))
            .or_default()
            .push(pod);
    }
    let mut slices_by_svc: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        slices_by_svc
            .entry((namespace_of(&slice.metadata), svc.as_str()))
            .or_default()
            .push(slice);
    }
    let mut built = Built::default();
    for svc in super::sorted_by_ref(services, |s| &s.metadata) {
        let ns = namespace_of(&svc.metadata);
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let pods = pods_by_ns.get(ns).map(Vec::as_slice).unwrap_or_default();
        let slices = slices_by_svc
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        match service(svc, slices, pods) {
            Ok(s) => built.resources.push(s),
            Err(invalid) => built.rejected.push(invalid),
        }
    }
    built
}

/// One Service. `slices` are its EndpointSlices (may be empty: then the
/// endpoints come from `pods` matching its selector); `pods` are the pods of
/// its namespace.
pub fn service(
    svc: &Service,
    slices: &[&EndpointSlice],
    pods: &[&Pod],
) -> Result<proto::Service, super::Invalid> {
    let mut errors = Errors::default();
    let object = super::object_ref("Service", &svc.metadata, &mut errors);
    let spec = Field::root("spec");
    let default_spec = Default::default();
    let s = svc.spec.as_ref().unwrap_or(&default_spec);

    let mut cluster_ips = Vec::new();
    let ips = s
        .cluster_ips
        .clone()
        .filter(|ips| !ips.is_empty())
        .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    for (i, ip) in ips.iter().enumerate() {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(ip) => cluster_ips.push(ip.to_string()),
            Err(_) => errors.push(
                &spec.key("clusterIPs").at(i),
                Violation::InvalidValue {
                    what: "IP address",
                    value: ip.clone(),
                    reason: "must be an IPv4 or IPv6 address or None",
                },
            ),
        }
    }

    let svc_ports: Vec<&ServicePort> = s
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .collect();
    let mut ports = Vec::with_capacity(svc_ports.len());
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().is_some_and(|p| p != "TCP") {
            // The sidecar proxies TCP only; UDP/SCTP ports pass through.
            continue;
        }
        let field = spec.key("ports").at(i);
        let port = port_number(&field.key("port"), p.port, &mut errors);
        let target_port = match &p.target_port {
            None => port,
            Some(IntOrString::Int(n)) => port_number(&field.key("targetPort"), *n, &mut errors),
            // Named: each endpoint carries the number for this port's name.
            Some(IntOrString::String(name)) => {
                if name.is_empty() {
                    errors.push(&field.key("targetPort"), Violation::Empty);
                }
                0
            }
        };
        ports.push(proto::ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port,
            target_port,
            protocol: app_protocol(p) as i32,
        });
    }
    super::unique(
        &spec.key("ports"),
        "port name",
        s.ports
            .iter()
            .flatten()
            .map(|p| p.name.as_deref().unwrap_or_default()),
        &mut errors,
    );

    let pods_by_name: HashMap<&str, &Pod> = pods
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().map(|n| (n, *p)))
        .collect();
    let endpoints = if slices.is_empty() {
        selected_endpoints(s.selector.as_ref(), &svc_ports, pods)
    } else {
        slice_endpoints(slices, &pods_by_name)
    };

    // The app of the governed pods behind the Service; the first by pod name
    // when (unusually) several apps share one Service.
    let app = endpoints
        .iter()
        .filter_map(|e| pods_by_name.get(e.pod_name.as_str()))
        .filter(|p| p.metadata.labels.as_ref().is_some_and(labels::is_governed))
        .filter_map(|p| p.metadata.labels.as_ref().and_then(labels::app_name))
        .min()
        .unwrap_or_default()
        .to_owned();

    let resource = proto::Service {
        name: format!("{}/{}", object.namespace, object.name),
        namespace: object.namespace.clone(),
        app,
        cluster_ips,
        ports,
        endpoints,
    };
    errors.finish(object, resource)
}

pub(super) fn namespace_of(meta: &kube::core::ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .unwrap_or(super::DEFAULT_NAMESPACE)
}

pub(super) fn port_number(field: &Field, port: i32, errors: &mut Errors) -> u32 {
    match u16::try_from(port) {
        Ok(p) if p > 0 => u32::from(p),
        _ => {
            errors.push(
                field,
                Violation::InvalidValue {
                    what: "port",
                    value: port.to_string(),
                    reason: "must be 1..65535",
                },
            );
            0
        }
    }
}

/// `appProtocol` first (free-form: unknown values mean "detect"), then the
/// Istio-style port name prefix (`http-web`, `grpc`, ...).
fn app_protocol(p: &ServicePort) -> proto::AppProtocol {
    let from = |value: &str| match value.to_ascii_lowercase().as_str() {
        "http" | "http1" | "kubernetes.io/http" => Some(proto::AppProtocol::Http1),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(proto::AppProtocol::Http2),
        "grpc" => Some(proto::AppProtocol::Grpc),
        "tcp" => Some(proto::AppProtocol::Tcp),
        _ => None,
    };
    p.app_protocol
        .as_deref()
        .and_then(from)
        .or_else(|| {
            let name = p.name.as_deref()?;
            from(name.split_once('-').map_or(name, |(prefix, _)| prefix))
        })
        .unwrap_or(proto::AppProtocol::Auto)
}

fn lane_tag(pod: Option<&&Pod>) -> String {
    pod.and_then(|p| p.metadata.labels.as_ref())
        .and_then(labels::lane_tag)
        .unwrap_or_default()
        .to_owned()
}

fn slice_endpoints(slices: &[&EndpointSlice], pods: &HashMap<&str, &Pod>) -> Vec<proto::Endpoint> {
    // Keyed by IP: during updates one endpoint may sit in two slices; the
    // ready copy wins.
    let mut out: BTreeMap<String, proto::Endpoint> = BTreeMap::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let ports: BTreeMap<String, u32> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|p| *p > 0)?;
                Some((p.name.clone().unwrap_or_default(), u32::from(port)))
            })
            .collect();
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let pod_name = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .unwrap_or_default();
            // Kubernetes: an absent `ready` means ready.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let pod = pods.get(pod_name.as_str());
            let endpoint = proto::Endpoint {
                ip: ip.to_string(),
                lane_tag: lane_tag(pod),
                ready_since: pod.and_then(|p| ready_since(p)),
                pod_name,
                ready,
                ports: ports.clone().into_iter().collect(),
            };
            let key = endpoint.ip.clone();
            match out.get(&key) {
                Some(existing) if existing.ready || !endpoint.ready => {}
                _ => {
                    out.insert(key, endpoint);
                }
            }
        }
    }
    out.into_values().collect()
}

/// What the endpoint controller would publish: every pod with an IP whose
/// labels the selector matches; ready = the pod's Ready condition and not
/// terminating; a named target port resolves through the pod's container
/// ports (a pod without that name has no such port, as in Kubernetes).
fn selected_endpoints(
    selector: Option<&BTreeMap<String, String>>,
    ports: &[&ServicePort],
    pods: &[&Pod],
) -> Vec<proto::Endpoint> {
    // A Service without a selector has manually managed endpoints: none here.
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let mut out: BTreeMap<String, proto::Endpoint> = BTreeMap::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let status = pod.status.as_ref();
        if status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed")
        {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let ready = pod.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let mut endpoint_ports = BTreeMap::new();
        for p in ports {
            let number = match &p.target_port {
                None => Some(p.port),
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => named_container_port(pod, name),
            };
            if let Some(n) = number
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
            {
                endpoint_ports.insert(p.name.clone().unwrap_or_default(), u32::from(n));
            }
        }
        let endpoint = proto::Endpoint {
            ip: ip.to_string(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            lane_tag: lane_tag(Some(pod)),
            ready_since: ready_since(pod),
            ready,
            ports: endpoint_ports,
        };
        out.insert(endpoint.ip.clone(), endpoint);
    }
    out.into_values().collect()
}

/// When the pod's Ready condition last turned True; `None` when it is not ready or the time is
/// not recorded (an endpoint without it is treated as long ready).
fn ready_since(pod: &Pod) -> Option<prost_types::Timestamp> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    let time = condition.last_transition_time.as_ref()?.0;
    Some(prost_types::Timestamp {
        seconds: time.as_second(),
        nanos: time.subsec_nanosecond(),
    })
}

fn named_container_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_yaml::from_str(text).unwrap()
    }

    fn svc() -> Service {
        yaml(
            r#"
apiVersion: v1
kind: Service
metadata: {name: b, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports:
  - {name: http-web, port: 80, targetPort: web}
  - {name: admin, port: 9000, targetPort: 9001, appProtocol: kubernetes.io/h2c}
  - {name: rpc, port: 7000}
  - {name: dns, port: 53, protocol: UDP}
"#,
        )
    }

    fn pod(name: &str, ip: &str, tag: Option<&str>, ready: &str, web_port: i32) -> Pod {
        let tag = tag.map_or(String::new(), |t| format!(", alicloud.service.tag: {t}"));
        yaml(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {{app: b, msePilotAutoEnable: "on", msePilotCreateAppName: spring-b{tag}}}
spec:
  containers:
  - name: app
    ports: [{{name: web, containerPort: {web_port}}}]
status:
  podIP: {ip}
  conditions: [{{type: Ready, status: "{ready}"}}]
"#
        ))
    }

    #[test]
    fn selector_derives_endpoints_with_tags_readiness_and_named_ports() {
        let pods = [
            pod("b-1", "10.0.0.2", None, "True", 8080),
            pod("b-2", "10.0.0.3", Some("gray"), "False", 8081),
        ];
        let other: Pod = yaml(
            "{apiVersion: v1, kind: Pod, metadata: {name: c-1, namespace: shop, labels: {app: c}}, status: {podIP: 10.0.0.9}}",
        );
        let all: Vec<&Pod> = pods.iter().chain([&other]).collect();
        let s = service(&svc(), &[], &all).unwrap();
        assert_eq!(s.name, "shop/b");
        assert_eq!(s.app, "spring-b");
        assert_eq!(s.cluster_ips, ["10.96.0.10"]);
        // UDP dropped; unnamed target port defaults to the port.
        let ports: Vec<(&str, u32, u32, i32)> = s
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.target_port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("http-web", 80, 0, proto::AppProtocol::Http1 as i32),
                ("admin", 9000, 9001, proto::AppProtocol::Http2 as i32),
                ("rpc", 7000, 7000, proto::AppProtocol::Auto as i32),
            ]
        );
        assert_eq!(s.endpoints.len(), 2, "{:?}", s.endpoints);
        let e1 = &s.endpoints[0];
        assert_eq!((e1.ip.as_str(), e1.pod_name.as_str()), ("10.0.0.2", "b-1"));
        assert_eq!(e1.lane_tag, "");
        assert!(e1.ready);
        assert_eq!(e1.ports.get("http-web"), Some(&8080));
        assert_eq!(e1.ports.get("admin"), Some(&9001));
        let e2 = &s.endpoints[1];
        assert_eq!(e2.lane_tag, "gray");
        assert!(!e2.ready);
        assert_eq!(e2.ports.get("http-web"), Some(&8081));
    }

    #[test]
    fn endpoints_carry_when_their_pod_became_ready_and_a_terminating_one_is_not_ready() {
        let mut ready = pod("b-1", "10.0.0.2", None, "True", 8080);
        let condition = &mut ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0];
        condition.last_transition_time = Some(yaml("\"2026-12-07T10:00:00Z\""));
        let mut deleted = pod("b-2", "10.0.0.3", None, "True", 8080);
        deleted.metadata.deletion_timestamp = Some(yaml("\"2026-12-07T11:00:00Z\""));
        let unknown = pod("b-3", "10.0.0.4", None, "True", 8080);
        let s = service(&svc(), &[], &[&ready, &deleted, &unknown]).unwrap();
        let since = |ip: &str| s.endpoints.iter().find(|e| e.ip == ip).unwrap().ready_since;
        assert_eq!(
            since("10.0.0.2"),
            Some(prost_types::Timestamp {
                seconds: 1_796_637_600,
                nanos: 0
            })
        );
        assert_eq!(since("10.0.0.4"), None, "no transition time: long ready");
        let going = s.endpoints.iter().find(|e| e.ip == "10.0.0.3").unwrap();
        assert!(!going.ready, "a terminating pod takes no new requests");
        // From a slice: the terminating endpoint is not ready, and the pod's time still comes.
        let slice: EndpointSlice = yaml(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-abc, namespace: shop, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{name: http-web, port: 8080}]
endpoints:
- addresses: [10.0.0.2]
  conditions: {ready: true, serving: true, terminating: false}
  targetRef: {kind: Pod, name: b-1, namespace: shop}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: true, terminating: true}
  targetRef: {kind: Pod, name: b-2, namespace: shop}
"#,
        );
        let s = service(&svc(), &[&slice], &[&ready]).unwrap();
        let by_ip = |ip: &str| s.endpoints.iter().find(|e| e.ip == ip).unwrap();
        assert!(by_ip("10.0.0.2").ready && by_ip("10.0.0.2").ready_since.is_some());
        assert!(!by_ip("10.0.0.3").ready);
    }

    #[test]
    fn slices_win_over_the_selector() {
        let pods = [pod("b-1", "10.0.0.2", Some("gray"), "True", 8080)];
        let slice: EndpointSlice = yaml(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-abc, namespace: shop, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{name: http-web, port: 8080}, {name: admin, port: 9001}]
endpoints:
- addresses: [10.0.0.2]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: b-1, namespace: shop}
- addresses: [10.0.0.7]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: gone, namespace: shop}
"#,
        );
        let built = services(&[svc()], &[slice], &pods);
        assert!(built.rejected.is_empty(), "{:?}", built.rejected);
        let s = &built.resources[0];
        let eps: Vec<(&str, &str, &str, bool)> = s
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.ip.as_str(),
                    e.pod_name.as_str(),
                    e.lane_tag.as_str(),
                    e.ready,
                )
            })
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.2", "b-1", "gray", true),
                ("10.0.0.7", "gone", "", false)
            ]
        );
        assert_eq!(s.endpoints[0].ports.get("admin"), Some(&9001));
    }

    #[test]
    fn ungoverned_pods_give_no_app_and_headless_has_no_ip() {
        let mut p = pod("b-1", "10.0.0.2", None, "True", 8080);
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("msePilotAutoEnable");
        let mut s = svc();
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let out = service(&s, &[], &[&p]).unwrap();
        assert_eq!(out.app, "");
        assert!(out.cluster_ips.is_empty());
        assert_eq!(out.endpoints.len(), 1);
    }

    #[test]
    fn bad_ports_and_ips_are_refused_by_field() {
        let mut s = svc();
        let spec = s.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.300".into());
        spec.ports.as_mut().unwrap()[1].target_port = Some(IntOrString::Int(70000));
        spec.ports.as_mut().unwrap()[2].name = Some("admin".into());
        let err = service(&s, &[], &[]).unwrap_err();
        assert!(err.names_field("spec.clusterIPs[0]"), "{err}");
        assert!(err.names_field("spec.ports[1].targetPort"), "{err}");
        assert!(err.names_field("spec.ports[2]"), "{err}");
        assert!(
            err.to_string().starts_with("Service shop/b is invalid"),
            "{err}"
        );
    }
}
