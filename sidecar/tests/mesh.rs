#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Lane-aware routing end to end on loopback (DESIGN §4-5): each "pod" is a sidecar bound to its
//! own loopback IP (127.0.0.N, its pod IP) with its app on 127.0.1.N; an endpoint's address is the
//! pod IP and the sidecar's inbound port, as iptables would capture it. Apps reach their sidecar's
//! outbound listener with the original destination (a cluster IP) registered in a `PeerMap`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::pod::{AppClient, STEP, Sidecar, send};
use support::service;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lanemesh_api::proto;
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::lane::{PropagationRule, PropagationSettings};
use lanemesh_sidecar::snapshot::Snapshot;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const B_CLUSTER: &str = "10.96.0.2:80";
const C_CLUSTER: &str = "10.96.0.3:80";
const D_CLUSTER: &str = "10.96.0.4:80";

// ---------------------------------------------------------------- apps

/// An app: answers `name=<name> tag=<x-mse-tag it saw> next=[<next hop's body>]`. With `next`,
/// it first calls that destination through its sidecar, forwarding only `traceparent`.
fn app(
    listener: TcpListener,
    name: &'static str,
    next: Option<(AppClient, &'static str)>,
    delay: Duration,
) -> JoinHandle<()> {
    forwarding_app(listener, name, next, "traceparent", delay)
}

/// [`app`] forwarding only the header `forwards` (as OpenTelemetry's instrumentation forwards
/// `traceparent` and `baggage`).
fn forwarding_app(
    listener: TcpListener,
    name: &'static str,
    next: Option<(AppClient, &'static str)>,
    forwards: &'static str,
    delay: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let next = next.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let next = next.clone();
                    async move {
                        let tag = header(req.headers(), "x-mse-tag");
                        let next_body = match next {
                            Some((client, dst)) => {
                                let carried = header(req.headers(), forwards);
                                let headers: Vec<(&str, &str)> = if carried == "-" {
                                    vec![]
                                } else {
                                    vec![(forwards, carried.as_str())]
                                };
                                let (status, _, body) = client.get(dst, &headers).await;
                                format!("{status}:{body}")
                            }
                            None => String::new(),
                        };
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "name={name} tag={tag} next=[{next_body}]"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
}

// ---------------------------------------------------------------- resources

fn lane(tag: &str) -> proto::Lane {
    support::lane(tag, proto::Operator::Equal, tag)
}

/// Apps a, b, c, d; entry app a; lanes gray and blue; trace ids from `traceparent`.
fn lane_group(inflight: bool, color_by_node: bool) -> proto::LaneGroup {
    proto::LaneGroup {
        name: "demo/flow".into(),
        namespace: "demo".into(),
        apps: ["a", "b", "c", "d"].map(String::from).to_vec(),
        entry_apps: vec!["a".into()],
        tag_header: "x-mse-tag".into(),
        propagation: Some(proto::Propagation {
            trace_headers: vec!["traceparent".into()],
            inflight,
            color_by_node,
            ..Default::default()
        }),
        lanes: vec![lane("blue"), lane("gray")],
        ..Default::default()
    }
}

fn snapshot(app: &str, services: Vec<proto::Service>, group: proto::LaneGroup) -> Snapshot {
    Snapshot::from_resources(PodIdentity::app("demo", app), services, [group], [], []).unwrap()
}

fn traceparent(i: usize) -> String {
    format!("00-{i:032x}-{:016x}-01", i + 1)
}

/// An app without sidecar on 127.0.1.n; returns its address.
async fn bare_app(n: u8, name: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind(format!("127.0.1.{n}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    app(listener, name, None, delay);
    addr
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_request_falls_back_to_base_b_keeps_its_tag_and_b_reaches_c_gray() {
    // DESIGN §4: A(gray) -> B (no gray pod: base, tag kept) -> C(gray), B's app forwarding
    // only the trace id.
    let (a, _) = Sidecar::start(2, "a", Some("gray")).await;
    let (b, b_app) = Sidecar::start(3, "b", None).await;
    let c_base = bare_app(4, "c-base", Duration::ZERO).await;
    let c_gray = bare_app(5, "c-gray", Duration::ZERO).await;
    app(
        b_app,
        "b-base",
        Some((b.client(), C_CLUSTER)),
        Duration::ZERO,
    );
    let services = vec![
        service("b", B_CLUSTER, &[(b.pod, "", true)]),
        service(
            "c",
            C_CLUSTER,
            &[(c_base, "", true), (c_gray, "gray", true)],
        ),
    ];
    a.install(snapshot("a", services.clone(), lane_group(false, false)))
        .await;
    b.install(snapshot("b", services, lane_group(false, false)))
        .await;

    let (status, _, body) = a
        .client()
        .get(
            B_CLUSTER,
            &[("x-mse-tag", "gray"), ("traceparent", &traceparent(1))],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "name=b-base tag=gray next=[200 OK:name=c-gray tag=gray next=[]]"
    );
    assert_eq!(a.count(PropagationRule::TagHeader), 1);
    assert_eq!(
        b.count(PropagationRule::TraceId),
        1,
        "B's outbound lane came from the trace id"
    );
    a.stop().await;
    b.stop().await;
}

/// B (a base pod whose app forwards only `forwards`) in front of c-base, c-gray and c-blue, each
/// answering after 20 ms, on the addresses `n`..`n + 3`.
async fn b_before_three_lanes_of_c(
    n: u8,
    forwards: &'static str,
    group: proto::LaneGroup,
) -> Sidecar {
    let (b, b_app) = Sidecar::start(n, "b", None).await;
    let c_base = bare_app(n + 1, "c-base", Duration::from_millis(20)).await;
    let c_gray = bare_app(n + 2, "c-gray", Duration::from_millis(20)).await;
    let c_blue = bare_app(n + 3, "c-blue", Duration::from_millis(20)).await;
    forwarding_app(
        b_app,
        "b-base",
        Some((b.client(), C_CLUSTER)),
        forwards,
        Duration::ZERO,
    );
    let services = vec![
        service("b", B_CLUSTER, &[(b.pod, "", true)]),
        service(
            "c",
            C_CLUSTER,
            &[
                (c_base, "", true),
                (c_gray, "gray", true),
                (c_blue, "blue", true),
            ],
        ),
    ];
    b.install(snapshot("b", services, group)).await;
    b
}

/// 50 requests at once straight to B's pod, as callers' sidecars send them: lanes gray, blue and
/// base by turn, request `i` with `headers(i, lane)`. Every answer is a 200; returns those that
/// did not reach their own lane's C.
async fn mixed_lane_burst(
    b: &Sidecar,
    headers: fn(usize, &'static str) -> Vec<(&'static str, String)>,
) -> Vec<String> {
    let lanes = ["gray", "blue", "base"];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let pod = b.pod;
        tasks.push(tokio::spawn(async move {
            let lane = lanes[i % 3];
            let owned = headers(i, lane);
            let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let stream = timeout(STEP, TcpStream::connect(pod))
                .await
                .unwrap()
                .unwrap();
            let (status, _, body) = send(stream, B_CLUSTER, &headers).await;
            (lane, status, body)
        }));
    }
    let mut misroutes = Vec::new();
    for task in tasks {
        let (lane, status, body) = timeout(STEP, task).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        if !body.contains(&format!("next=[200 OK:name=c-{lane} ")) {
            misroutes.push(format!("{lane}: {body}"));
        }
    }
    misroutes
}

/// The tag header, for the requests of a lane.
fn tag(lane: &'static str) -> Option<(&'static str, String)> {
    (lane != "base").then(|| ("x-mse-tag", lane.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_ids_link_50_concurrent_mixed_lane_requests_to_their_lanes() {
    // DESIGN §4 rule 3: B's app forwards only `traceparent`; B's sidecar must find each
    // outbound call's lane from the inbound request that carried the same trace id, while
    // requests of three lanes are in flight at once (so no in-flight shortcut applies).
    let b = b_before_three_lanes_of_c(6, "traceparent", lane_group(true, false)).await;
    let misroutes = mixed_lane_burst(&b, |i, lane| {
        let mut headers = vec![("traceparent", traceparent(1000 + i))];
        headers.extend(tag(lane));
        headers
    })
    .await;
    assert!(misroutes.is_empty(), "misrouted: {misroutes:#?}");
    assert_eq!(b.count(PropagationRule::TraceId), 50);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_the_sidecar_adds_links_50_concurrent_mixed_lane_requests_to_their_lanes() {
    // Issue 17: B's app forwards only `baggage` (what OpenTelemetry's zero-code instrumentation
    // carries) and its callers set only the tag header; no trace header and no in-flight rule
    // is configured. B's sidecar writes the lane into each inbound request's baggage, so each
    // outbound call names its own lane while three lanes are in flight.
    let mut group = lane_group(false, false);
    if let Some(p) = group.propagation.as_mut() {
        p.trace_headers.clear();
    }
    let b = b_before_three_lanes_of_c(36, "baggage", group).await;
    let misroutes = mixed_lane_burst(&b, |_, lane| {
        // Other members of the caller's baggage travel on beside the lane.
        let mut headers = vec![("baggage", "user=alice".to_owned())];
        headers.extend(tag(lane));
        headers
    })
    .await;
    assert!(misroutes.is_empty(), "misrouted: {misroutes:#?}");
    assert_eq!(
        b.count(PropagationRule::Baggage),
        34,
        "the gray and blue calls"
    );
    assert_eq!(b.count(PropagationRule::Base), 16);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_request_stays_in_flight_until_its_slow_body_ends() {
    // The in-flight rule (DESIGN §4 rule 4) needs the inbound guard to live until the response
    // is complete, not just until its head.
    let (b, b_app) = Sidecar::start(10, "b", None).await;
    tokio::spawn(async move {
        let (stream, _) = b_app.accept().await.unwrap();
        let service = service_fn(|_req: Request<Incoming>| async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("late")))).await;
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    b.install(snapshot(
        "b",
        vec![service("b", B_CLUSTER, &[(b.pod, "", true)])],
        lane_group(true, false),
    ))
    .await;
    let inflight = PropagationSettings {
        trace_headers: vec![],
        inflight: true,
        color_by_node: false,
        ..PropagationSettings::default()
    };
    let lane_now = || {
        let none = HeaderMap::new();
        let lane = b.router.propagator().outbound_lane(&inflight, &none, None);
        (lane.rule, lane.tag().map(str::to_owned))
    };
    assert_eq!(lane_now(), (PropagationRule::Base, None));

    let stream = TcpStream::connect(b.pod).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("x-mse-tag", "gray")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The head is here, the body is not: still in flight.
    assert_eq!(
        lane_now(),
        (PropagationRule::Inflight, Some("gray".to_owned()))
    );
    let body = timeout(STEP, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(body, "late");
    timeout(STEP, async {
        while lane_now().0 != PropagationRule::Base {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the inbound request never ended");
    b.stop().await;
}

#[tokio::test]
async fn no_ready_endpoint_answers_503_naming_app_and_lane() {
    let (a, _) = Sidecar::start(11, "a", None).await;
    let d_gray = bare_app(12, "d-gray", Duration::ZERO).await;
    a.install(snapshot(
        "a",
        vec![service("d", D_CLUSTER, &[(d_gray, "gray", false)])],
        lane_group(false, false),
    ))
    .await;
    let (status, headers, body) = a.client().get(D_CLUSTER, &[("x-mse-tag", "gray")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get("x-lanemesh-error").unwrap(), "no_endpoint");
    assert!(
        body.contains("\"d\"") && body.contains("\"gray\""),
        "{body}"
    );
    a.stop().await;
}

#[tokio::test]
async fn unknown_destinations_pass_through_untouched_known_ones_get_the_pod_lane() {
    // A gray pod with colorByNode: governed calls get the pod's tag injected; calls to
    // addresses no Service claims are not touched at all.
    let (a, _) = Sidecar::start(13, "a", Some("gray")).await;
    let outside = bare_app(14, "outside", Duration::ZERO).await;
    let c_base = bare_app(15, "c-base", Duration::ZERO).await;
    let c_gray = bare_app(16, "c-gray", Duration::ZERO).await;
    a.install(snapshot(
        "a",
        vec![service(
            "c",
            C_CLUSTER,
            &[(c_base, "", true), (c_gray, "gray", true)],
        )],
        lane_group(false, true),
    ))
    .await;
    let (status, _, body) = a.client().get(&outside.to_string(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "name=outside tag=- next=[]");
    let (status, _, body) = a.client().get(C_CLUSTER, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "name=c-gray tag=gray next=[]");
    assert_eq!(a.count(PropagationRule::ColorByNode), 1);
    assert_eq!(
        a.router.rule_counts().iter().map(|(_, n)| n).sum::<u64>(),
        1,
        "only governed destinations are counted"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_hundred_snapshot_swaps_under_load_fail_no_request() {
    // Even snapshots route base traffic to c-base, odd ones to c-base2 only: every swap changes
    // where requests go, so a router stuck on an old snapshot is seen, not just a failing one.
    let (a, _) = Sidecar::start(17, "a", None).await;
    let c_base = bare_app(18, "c-base", Duration::ZERO).await;
    let c_base2 = bare_app(19, "c-base2", Duration::ZERO).await;
    let c_gray = bare_app(20, "c-gray", Duration::ZERO).await;
    let variant = |i: usize| {
        let base = if i.is_multiple_of(2) { c_base } else { c_base2 };
        snapshot(
            "a",
            vec![service(
                "c",
                C_CLUSTER,
                &[(base, "", true), (c_gray, "gray", true)],
            )],
            lane_group(false, false),
        )
    };
    a.install(variant(0)).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|k| {
            let client = a.client();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let (mut sent, mut base2) = (0usize, 0usize);
                let mut failures = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let gray = (sent + k).is_multiple_of(2);
                    let headers: &[(&str, &str)] =
                        if gray { &[("x-mse-tag", "gray")] } else { &[] };
                    let (status, _, body) = client.get(C_CLUSTER, headers).await;
                    let ok = if gray {
                        body.starts_with("name=c-gray ")
                    } else {
                        base2 += usize::from(body.starts_with("name=c-base2 "));
                        body.starts_with("name=c-base ") || body.starts_with("name=c-base2 ")
                    };
                    if status != StatusCode::OK || !ok {
                        failures.push(format!("{status} {body}"));
                    }
                    sent += 1;
                }
                (sent, base2, failures)
            })
        })
        .collect();
    let mut last = 0;
    for i in 1..=100 {
        last = a.store.store(variant(i));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    timeout(STEP, async {
        while a.router.generation() != Some(last) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the last snapshot was never installed");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut base2) = (0, 0);
    for client in clients {
        let (sent, to_base2, failures) = timeout(STEP, client).await.unwrap().unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:#?}");
        total += sent;
        base2 += to_base2;
    }
    assert!(total >= 20, "too little load during the swaps: {total}");
    assert!(base2 > 0, "no request followed a swap to an odd snapshot");
    // The last snapshot (even) is the one in force: base goes to c-base only.
    let client = a.client();
    for _ in 0..10 {
        let (_, _, body) = client.get(C_CLUSTER, &[]).await;
        assert!(body.starts_with("name=c-base "), "{body}");
    }
    // With no request in flight, the next swap forgets the statistics of the endpoint that
    // only the odd snapshots had (a request in flight during the last swap may have kept it).
    a.install(variant(102)).await;
    assert_eq!(a.router.balancer().tracked(), 2);
    a.stop().await;
}

// ------------------------------------------------- control plane

mod fake_control_plane {
    use super::*;
    use lanemesh_api::proto::aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    };
    use lanemesh_api::resource::DiscoveryResource;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::{Status, Streaming};

    type Responses = mpsc::Sender<Result<proto::DeltaDiscoveryResponse, Status>>;

    /// Answers every stream with one response per type, then keeps it open.
    #[derive(Clone)]
    pub(super) struct Fake {
        pub(super) services: Vec<proto::Service>,
        pub(super) group: proto::LaneGroup,
        /// The open streams' senders; dropping them ends the streams.
        pub(super) open: Arc<std::sync::Mutex<Vec<Responses>>>,
    }

    fn resource<T: DiscoveryResource>(r: &T) -> proto::Resource {
        proto::Resource {
            name: r.resource_name().to_owned(),
            version: "v1".into(),
            resource: Some(r.to_any()),
        }
    }

    #[tonic::async_trait]
    impl AggregatedDiscoveryService for Fake {
        type DeltaAggregatedResourcesStream =
            ReceiverStream<Result<proto::DeltaDiscoveryResponse, Status>>;

        async fn delta_aggregated_resources(
            &self,
            request: tonic::Request<Streaming<proto::DeltaDiscoveryRequest>>,
        ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
            let mut requests = request.into_inner();
            // Drain ACKs so the client never blocks on a full stream.
            tokio::spawn(async move { while let Ok(Some(_)) = requests.message().await {} });
            let (tx, rx) = mpsc::channel(16);
            let by_type: [(&str, Vec<proto::Resource>); 5] = [
                (
                    proto::Service::TYPE_URL,
                    self.services.iter().map(resource).collect(),
                ),
                (proto::LaneGroup::TYPE_URL, vec![resource(&self.group)]),
                (proto::InboundPolicy::TYPE_URL, vec![]),
                (proto::OutboundPolicy::TYPE_URL, vec![]),
                (proto::Workload::TYPE_URL, vec![]),
            ];
            for (i, (type_url, resources)) in by_type.into_iter().enumerate() {
                tx.send(Ok(proto::DeltaDiscoveryResponse {
                    system_version_info: "test".into(),
                    type_url: type_url.into(),
                    resources,
                    removed_resources: vec![],
                    nonce: format!("n{i}"),
                }))
                .await
                .map_err(|_| Status::internal("client gone"))?;
            }
            self.open.lock().unwrap().push(tx);
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        }
    }

    pub(super) fn serve(listener: TcpListener, fake: Fake) -> JoinHandle<()> {
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_continues_on_the_last_snapshot_when_the_control_plane_is_gone() {
    use lanemesh_sidecar::discovery::{BackoffConfig, ClientConfig, DiscoveryClient};

    let c_base = bare_app(21, "c-base", Duration::ZERO).await;
    let c_gray = bare_app(22, "c-gray", Duration::ZERO).await;
    let fake = fake_control_plane::Fake {
        services: vec![service(
            "c",
            C_CLUSTER,
            &[(c_base, "", true), (c_gray, "gray", true)],
        )],
        group: lane_group(false, false),
        open: Arc::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let server = fake_control_plane::serve(listener, fake.clone());

    let node = PodIdentity {
        pod_name: "a-0".into(),
        ip: "127.0.0.23".into(),
        ..PodIdentity::app("demo", "a")
    };
    let (a, _) = Sidecar::start(23, "a", None).await;
    let store = Arc::clone(&a.store);
    assert!(
        a.router.generation().is_none(),
        "no runtime before the first snapshot"
    );

    let mut config = ClientConfig::new(format!("http://{cp_addr}"), node, String::new());
    config.backoff = BackoffConfig {
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
        stable_after: Duration::from_secs(10),
    };
    config.connect_timeout = Duration::from_millis(500);
    let client = DiscoveryClient::new(config, Arc::clone(&store));
    let state = client.state();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(client.run(async move {
        let _ = stop_rx.await;
    }));
    timeout(STEP, async {
        while a.router.generation().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no runtime from the control plane's snapshot");
    let (status, _, body) = a.client().get(C_CLUSTER, &[("x-mse-tag", "gray")]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "name=c-gray tag=gray next=[]")
    );

    // The control plane goes away: server stopped, open streams ended.
    server.abort();
    let _ = server.await;
    fake.open.lock().unwrap().clear();
    timeout(STEP, async {
        while state.is_connected() || state.stats().reconnect_attempts < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client never noticed the control plane was gone");
    for tag in ["gray", "base"] {
        let headers: &[(&str, &str)] = if tag == "gray" {
            &[("x-mse-tag", "gray")]
        } else {
            &[]
        };
        let (status, _, body) = a.client().get(C_CLUSTER, headers).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(&format!("name=c-{tag} ")), "{body}");
    }
    stop_tx.send(()).unwrap();
    timeout(STEP, client).await.unwrap().unwrap();
    a.stop().await;
}

#[tokio::test]
async fn entry_app_inbound_gets_the_lane_decision_and_keeps_an_existing_tag() {
    // DESIGN §4: a is the entry app; its sidecar decides the lane on inbound and sets the tag
    // header, but never rewrites a tag the request already carries.
    let (a, a_app) = Sidecar::start(24, "a", None).await;
    app(a_app, "a-base", None, Duration::ZERO);
    a.install(snapshot("a", vec![], lane_group(false, false)))
        .await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("canary", "gray")], "gray"),
        (&[("canary", "gray"), ("x-mse-tag", "blue")], "blue"),
        (&[("canary", "green")], "-"),
    ];
    for (headers, want) in cases {
        let stream = TcpStream::connect(a.pod).await.unwrap();
        let (status, _, body) = send(stream, "a", headers).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            format!("name=a-base tag={want} next=[]"),
            "{headers:?}"
        );
    }
    // Each decision is counted by its reason; the reason no request had stays exported at 0.
    let text = a.router.metrics().encode();
    for (reason, n) in [
        ("matched", 1),
        ("tag_header", 1),
        ("no_match", 1),
        ("weighted", 0),
    ] {
        let line = format!("lanemesh_lane_entry_decisions_total{{reason=\"{reason}\"}} {n}\n");
        assert!(text.contains(&line), "{line}: {text}");
    }
    a.stop().await;
}

#[tokio::test]
async fn a_governed_caller_decides_the_entry_apps_lane_so_the_first_hop_is_lane_aware() {
    // DESIGN §4, decision at the first lanemesh hop: `client` (in no group) calls entry app a,
    // which has a base pod (with a sidecar) and a gray pod. The caller's sidecar takes a's
    // decision, so `canary: gray` reaches gray a, not base a deciding after the fact; base
    // requests reach base a, whose sidecar does not decide again.
    const A_CLUSTER: &str = "10.96.0.1:80";
    let (client, _) = Sidecar::start(33, "client", None).await;
    let (a, a_app) = Sidecar::start(34, "a", None).await;
    app(a_app, "a-base", None, Duration::ZERO);
    let a_gray = bare_app(35, "a-gray", Duration::ZERO).await;
    let services = vec![service(
        "a",
        A_CLUSTER,
        &[(a.pod, "", true), (a_gray, "gray", true)],
    )];
    client
        .install(snapshot("client", services, lane_group(false, false)))
        .await;
    a.install(snapshot("a", vec![], lane_group(false, false)))
        .await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("canary", "gray")], "name=a-gray tag=gray next=[]"),
        (&[("canary", "green")], "name=a-base tag=- next=[]"),
        (&[], "name=a-base tag=- next=[]"),
    ];
    for (headers, want) in cases {
        for _ in 0..3 {
            let (status, _, body) = client.client().get(A_CLUSTER, headers).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, want, "{headers:?}");
        }
    }
    let text = client.router.metrics().encode();
    for line in [
        "lanemesh_lane_entry_decisions_total{reason=\"matched\"} 3\n",
        "lanemesh_lane_entry_decisions_total{reason=\"no_match\"} 6\n",
        "lanemesh_lane_propagations_total{rule=\"entry_decision\"} 9\n",
        "lanemesh_lane_propagations_total{rule=\"base\"} 0\n",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    // The caller's decision stands: a's sidecar took none.
    let text = a.router.metrics().encode();
    for reason in ["matched", "no_match", "tag_header", "weighted"] {
        let line = format!("lanemesh_lane_entry_decisions_total{{reason=\"{reason}\"}} 0\n");
        assert!(text.contains(&line), "{line}: {text}");
    }
    client.stop().await;
    a.stop().await;
}

/// A TCP server that writes `name` and closes.
async fn tcp_named(n: u8, name: &'static str) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind(format!("127.0.1.{n}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_to_a_known_destination_goes_to_the_pods_lane_else_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, _) = Sidecar::start(25, "a", Some("gray")).await;
    let e_base = tcp_named(26, "e-base").await;
    let e_gray = tcp_named(27, "e-gray").await;
    let outside = tcp_named(28, "outside").await;
    // d is in the lane group, so its gray lane is enabled for it.
    let mut e = service(
        "d",
        "10.96.0.5:5000",
        &[(e_base, "", true), (e_gray, "gray", true)],
    );
    e.ports[0].protocol = proto::AppProtocol::Tcp as i32;
    a.install(snapshot("a", vec![e], lane_group(false, false)))
        .await;
    for (dst, want) in [
        ("10.96.0.5:5000".to_owned(), "e-gray"),
        (outside.to_string(), "outside"),
    ] {
        let client = a.client();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(client.app_ip, 0)).unwrap();
        client
            .map
            .insert(socket.local_addr().unwrap(), dst.parse().unwrap());
        let mut stream = timeout(STEP, socket.connect(client.outbound))
            .await
            .unwrap()
            .unwrap();
        // Not HTTP: detection classifies the connection as opaque TCP.
        stream.write_all(b"\x00\x01binary").await.unwrap();
        let mut got = String::new();
        timeout(STEP, stream.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, want, "{dst}");
    }
    a.stop().await;
}

#[tokio::test]
async fn a_call_to_one_pod_ip_stays_with_that_pod_unless_its_lane_needs_another_version() {
    // StatefulSet- or Kafka-style traffic addresses one replica; only the lane may move it.
    let (a, _) = Sidecar::start(29, "a", None).await;
    let d1 = bare_app(30, "d1-base", Duration::ZERO).await;
    let d2 = bare_app(31, "d2-base", Duration::ZERO).await;
    let d3 = bare_app(32, "d3-gray", Duration::ZERO).await;
    a.install(snapshot(
        "a",
        vec![service(
            "d",
            D_CLUSTER,
            &[(d1, "", true), (d2, "", true), (d3, "gray", true)],
        )],
        lane_group(false, false),
    ))
    .await;
    let client = a.client();
    // Balancing would send both to whichever base pod is faster; addressing keeps each.
    for _ in 0..10 {
        for (pod, name) in [(d1, "d1-base"), (d2, "d2-base")] {
            let (_, _, body) = client.get(&pod.to_string(), &[]).await;
            assert_eq!(body, format!("name={name} tag=- next=[]"));
        }
    }
    let (_, _, body) = client.get(&d1.to_string(), &[("x-mse-tag", "gray")]).await;
    assert_eq!(
        body, "name=d3-gray tag=gray next=[]",
        "gray goes to the gray version"
    );
    let (_, _, body) = client.get(&d3.to_string(), &[("x-mse-tag", "gray")]).await;
    assert_eq!(body, "name=d3-gray tag=gray next=[]");
    for _ in 0..5 {
        let (_, _, body) = client.get(&d3.to_string(), &[]).await;
        assert!(
            body.starts_with("name=d1-base") || body.starts_with("name=d2-base"),
            "{body}"
        );
    }
    a.stop().await;
}
