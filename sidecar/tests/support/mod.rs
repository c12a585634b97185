//! Discovery resources the sidecar's integration tests build, shaped as the
//! control plane sends them (namespace `demo`, one HTTP port named `http`).

// Each test file uses a different subset.
#![allow(dead_code)]

pub(crate) mod pod;
pub(crate) mod root;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use lanemesh_api::proto;
use lanemesh_sidecar::proxy::ProxyConfig;

/// Proxy settings for in-process tests: capture listeners on free loopback ports, short
/// timeouts (a 600 ms header-read timeout for the slowloris cases), 16 KiB heads.
pub(crate) fn loopback_config() -> ProxyConfig {
    ProxyConfig {
        outbound_port: 0,
        inbound_port: 0,
        bind_address: "127.0.0.1".parse().expect("an IP address"),
        grace_period: std::time::Duration::from_secs(5),
        // Tests that stop proxies do not wait for callers that will never come; the drain
        // tests set their own.
        drain_duration: std::time::Duration::ZERO,
        detect_timeout: std::time::Duration::from_millis(200),
        header_read_timeout: std::time::Duration::from_millis(600),
        max_header_bytes: 16 * 1024,
        connect_timeout: std::time::Duration::from_secs(2),
        ..ProxyConfig::default()
    }
}

/// Service `demo/<name>` of app `<name>` on `cluster` (`ip:port`), target
/// port 8080, with one endpoint per `(address, lane tag, ready)`.
pub(crate) fn service(
    name: &str,
    cluster: &str,
    endpoints: &[(SocketAddr, &str, bool)],
) -> proto::Service {
    let cluster: SocketAddr = cluster.parse().expect("cluster is ip:port");
    proto::Service {
        name: format!("demo/{name}"),
        namespace: "demo".into(),
        app: name.into(),
        cluster_ips: vec![cluster.ip().to_string()],
        ports: vec![proto::ServicePort {
            name: "http".into(),
            port: u32::from(cluster.port()),
            target_port: 8080,
            protocol: proto::AppProtocol::Http1 as i32,
        }],
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, (addr, tag, ready))| proto::Endpoint {
                ip: addr.ip().to_string(),
                pod_name: format!("{name}-{i}"),
                lane_tag: (*tag).into(),
                ready: *ready,
                ports: BTreeMap::from([("http".into(), u32::from(addr.port()))]),
                ..Default::default()
            })
            .collect(),
    }
}

/// An enabled lane `<tag>` entered when header `canary` satisfies `operator value`.
pub(crate) fn lane(tag: &str, operator: proto::Operator, value: &str) -> proto::Lane {
    proto::Lane {
        name: tag.into(),
        tag: tag.into(),
        enabled: true,
        r#match: Some(proto::Match {
            logic: proto::Logic::All as i32,
            conditions: vec![proto::Condition {
                source: proto::Source::Header as i32,
                name: "canary".into(),
                operator: operator as i32,
                value: value.into(),
                ..Default::default()
            }],
        }),
        weight: 0,
    }
}
