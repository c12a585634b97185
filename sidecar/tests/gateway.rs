#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gateway mode in process (issue: lane decision at the first hop): `lanemesh-proxy gateway`'s
//! [`App`] on a loopback port, routes as the control plane sends them, apps on 127.0.2.N. The
//! gateway routes by path, decides the lane for the backend app (content and per-route
//! percentage), strips lane claims from untrusted clients and counts requests per route.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lanemesh_api::proto;
use lanemesh_sidecar::app::{App, AppConfig};
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::proxy::{ProxyConfig, SoOriginalDst};
use lanemesh_sidecar::snapshot::SnapshotBuilder;
use support::pod::{STEP, send_to};
use support::service;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// An app that answers `name=<name> tag=<x-mse-tag> baggage=<baggage> decided=<marker>`.
async fn app(n: u8, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(format!("127.0.2.{n}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let h = |k: &str| {
                        req.headers()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let body = format!(
                        "name={name} tag={} baggage={} decided={} trace={}",
                        h("x-mse-tag"),
                        h("baggage"),
                        h("x-lanemesh-lane-decided"),
                        h("traceparent").len(),
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn backend(service: &str) -> proto::Backend {
    proto::Backend {
        service: service.into(),
        port: 80,
        port_name: String::new(),
        weight: 1,
    }
}

fn route(
    name: &str,
    prefix: &str,
    to: &str,
    trust: bool,
    weights: &[(&str, u32)],
) -> proto::GatewayRoute {
    proto::GatewayRoute {
        name: format!("demo/HTTPRoute/{name}"),
        namespace: "demo".into(),
        rules: vec![proto::GatewayRule {
            hostnames: vec![],
            matches: vec![proto::HttpRequestMatch {
                path: Some(proto::PathMatch {
                    kind: Some(proto::path_match::Kind::Prefix(prefix.into())),
                }),
                ..Default::default()
            }],
            backends: vec![backend(to)],
        }],
        trust_lane_tags: trust,
        lane_weights: weights
            .iter()
            .map(|(t, w)| ((*t).to_owned(), *w))
            .collect::<BTreeMap<_, _>>(),
        created: String::new(),
    }
}

fn group(
    name: &str,
    apps: &[&str],
    mode: proto::RoutingMode,
    lanes: Vec<proto::Lane>,
) -> proto::LaneGroup {
    proto::LaneGroup {
        name: format!("demo/{name}"),
        namespace: "demo".into(),
        apps: apps.iter().map(|a| (*a).to_owned()).collect(),
        entry_apps: vec![apps[0].to_owned()],
        routing_mode: mode as i32,
        tag_header: "x-mse-tag".into(),
        lanes,
        ..Default::default()
    }
}

struct Gateway {
    addr: SocketAddr,
    metrics: Arc<lanemesh_sidecar::metrics::ProxyMetrics>,
    shutdown: lanemesh_sidecar::proxy::ShutdownHandle,
    run: tokio::task::JoinHandle<lanemesh_sidecar::proxy::DrainReport>,
}

impl Gateway {
    async fn start(
        routes: Vec<proto::GatewayRoute>,
        services: Vec<proto::Service>,
        groups: Vec<proto::LaneGroup>,
        lane_seed: Option<u64>,
    ) -> Self {
        let proxy = ProxyConfig {
            gateway_ports: vec![0],
            bind_address: "127.0.2.1".parse().unwrap(),
            grace_period: Duration::from_secs(2),
            drain_duration: Duration::ZERO,
            connect_timeout: Duration::from_secs(2),
            workers: Some(1),
            ..ProxyConfig::default()
        };
        let identity = PodIdentity {
            pod_name: "gateway-1".into(),
            gateway: true,
            ..PodIdentity::app("lanemesh-system", "lanemesh-gateway")
        };
        let mut config = AppConfig::new(proxy, identity.clone());
        config.lane_seed = lane_seed;
        let app = App::build(config, Arc::new(SoOriginalDst)).await.unwrap();
        let mut builder = SnapshotBuilder::new(identity);
        builder.insert_all(services).unwrap();
        builder.insert_all(groups).unwrap();
        builder.insert_all(routes).unwrap();
        builder.mark_all_received();
        let generation = app.store.store(builder.build());
        timeout(STEP, async {
            while app.router.generation() != Some(generation) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap();
        Self {
            addr: app.gateway_addrs()[0],
            metrics: Arc::clone(&app.metrics),
            shutdown: app.shutdown_handle(),
            run: tokio::spawn(app.run()),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
        let stream = timeout(STEP, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap();
        send_to(stream, "shop.example.com", path, headers).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_routes_decides_the_lane_and_strips_client_claims() {
    let (a_base, a_gray) = (app(10, "a-base").await, app(11, "a-gray").await);
    let (p_base, p_gray) = (app(12, "p-base").await, app(13, "p-gray").await);
    let services = vec![
        service(
            "a",
            "10.96.1.1:80",
            &[(a_base, "", true), (a_gray, "gray", true)],
        ),
        service(
            "p",
            "10.96.1.2:80",
            &[(p_base, "", true), (p_gray, "gray", true)],
        ),
    ];
    let mut weighted = support::lane("gray", proto::Operator::Equal, "unused");
    weighted.r#match = None;
    weighted.weight = 0;
    let groups = vec![
        group(
            "content",
            &["a"],
            proto::RoutingMode::Content,
            vec![support::lane("gray", proto::Operator::Equal, "gray")],
        ),
        group(
            "percent",
            &["p"],
            proto::RoutingMode::Percentage,
            vec![weighted],
        ),
    ];
    let routes = vec![
        route("a", "/a", "demo/a", false, &[]),
        route("trusted", "/trusted", "demo/a", true, &[]),
        route("p30", "/p", "demo/p", false, &[("gray", 30)]),
        route("nowhere", "/nowhere", "demo/missing", false, &[]),
    ];
    let gw = Gateway::start(routes, services, groups, None).await;

    // Content lane at the first hop: `canary: gray` reaches gray a, the lane in the tag header
    // and in baggage (which OpenTelemetry-instrumented apps forward).
    let (status, _, body) = gw.get("/a/x", &[("canary", "gray")]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.starts_with("name=a-gray tag=gray baggage=x-mse-tag=gray decided=-"),
        "{body}"
    );
    assert!(
        body.ends_with("trace=55"),
        "the gateway starts a W3C trace: {body}"
    );
    // Base: marked decided, so an entry sidecar does not draw again.
    let (_, _, body) = gw.get("/a", &[]).await;
    assert!(
        body.starts_with("name=a-base tag=- baggage=- decided=base"),
        "{body}"
    );
    // A client's own lane tag and baggage member are removed; other baggage stays.
    let (_, _, body) = gw
        .get(
            "/a",
            &[
                ("x-mse-tag", "gray"),
                ("baggage", "x-mse-tag=gray,user=alice"),
            ],
        )
        .await;
    assert!(
        body.starts_with("name=a-base tag=- baggage=user=alice decided=base"),
        "{body}"
    );
    let (_, _, body) = gw
        .get(
            "/a",
            &[("canary", "gray"), ("baggage", "x-mse-tag=blue,user=alice")],
        )
        .await;
    assert!(
        body.starts_with("name=a-gray tag=gray baggage=x-mse-tag=gray,user=alice decided=-"),
        "{body}"
    );
    // A trusted route keeps them.
    let (_, _, body) = gw.get("/trusted", &[("x-mse-tag", "gray")]).await;
    assert!(body.starts_with("name=a-gray tag=gray"), "{body}");
    let (_, _, body) = gw.get("/trusted", &[("baggage", "x-mse-tag=gray")]).await;
    assert!(
        body.starts_with("name=a-gray tag=- baggage=x-mse-tag=gray"),
        "{body}"
    );

    // Per-route weight: the lane's own weight is 0, the route gives it 30 %.
    let n = 400;
    let mut gray = 0;
    for _ in 0..n {
        let (status, _, body) = gw.get("/p", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body.starts_with("name=p-gray tag=gray") {
            gray += 1;
        } else {
            assert!(body.starts_with("name=p-base tag=-"), "{body}");
        }
    }
    // 30 % of 400 = 120, standard deviation 9.2: +-40 is beyond 4 sigma.
    assert!((80..=160).contains(&gray), "{gray} of {n} in gray");

    // No route: 404; a backend the mesh does not know: 503 naming it.
    let (status, headers, _) = gw.get("/elsewhere", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers.get("x-lanemesh-error").unwrap(), "no_route");
    let (status, _, body) = gw.get("/nowhere", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("demo/missing"), "{body}");

    let text = gw.metrics.encode();
    for line in [
        format!("lanemesh_gateway_requests_total{{route=\"demo/HTTPRoute/p30\",app=\"p\",lane=\"gray\",status=\"2xx\"}} {gray}\n"),
        format!("lanemesh_gateway_requests_total{{route=\"demo/HTTPRoute/p30\",app=\"p\",lane=\"\",status=\"2xx\"}} {}\n", n - gray),
        "lanemesh_gateway_requests_total{route=\"demo/HTTPRoute/a\",app=\"a\",lane=\"gray\",status=\"2xx\"} 2\n".to_owned(),
        "lanemesh_gateway_requests_total{route=\"\",app=\"\",lane=\"\",status=\"4xx\"} 1\n".to_owned(),
        "lanemesh_gateway_requests_total{route=\"demo/HTTPRoute/nowhere\",app=\"\",lane=\"\",status=\"5xx\"} 1\n".to_owned(),
        "lanemesh_requests_total{direction=\"gateway\",app=\"a\",lane=\"gray\",status=\"2xx\"} 4\n".to_owned(),
    ] {
        assert!(text.contains(&line), "{line}: {text}");
    }
    gw.shutdown.trigger();
    let report = timeout(STEP, gw.run).await.unwrap().unwrap();
    assert_eq!(report.abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_seed_makes_the_percentage_draws_reproducible() {
    // Percentage lanes with a fixed seed: the same requests get the same lanes, whichever of
    // the gateway's two workers serves them; another seed gives another sequence.
    let (p_base, p_gray) = (app(20, "p-base").await, app(21, "p-gray").await);
    let services = vec![service(
        "p",
        "10.96.1.2:80",
        &[(p_base, "", true), (p_gray, "gray", true)],
    )];
    let mut lane = support::lane("gray", proto::Operator::Equal, "unused");
    lane.r#match = None;
    lane.weight = 30;
    let groups = vec![group(
        "percent",
        &["p"],
        proto::RoutingMode::Percentage,
        vec![lane],
    )];
    let routes = vec![route("p", "/p", "demo/p", false, &[])];
    let mut sequences = Vec::new();
    for seed in [7, 7, 8] {
        let gw = Gateway::start(routes.clone(), services.clone(), groups.clone(), Some(seed)).await;
        let mut lanes = String::new();
        for _ in 0..200 {
            let (status, _, body) = gw.get("/p", &[]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            lanes.push(if body.starts_with("name=p-gray") {
                'g'
            } else {
                'b'
            });
        }
        gw.shutdown.trigger();
        timeout(STEP, gw.run).await.unwrap().unwrap();
        sequences.push(lanes);
    }
    assert_eq!(sequences[0], sequences[1], "same seed, same lanes");
    assert_ne!(sequences[0], sequences[2], "another seed, another sequence");
    // 30 % of 200 is 60, standard deviation 6.5: the seeded sequence is one fixed sample.
    let gray = sequences[0].matches('g').count();
    assert!((35..=85).contains(&gray), "{gray} of 200 in gray");
}
