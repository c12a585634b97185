//! The discovery client against a fake control plane on 127.0.0.1: the test
//! drives the server side of each stream by hand and checks what the client
//! sends back and what it applies (DESIGN §6).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanemesh_api::proto;
use lanemesh_api::proto::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use lanemesh_api::resource::DiscoveryResource;
use lanemesh_sidecar::discovery::{
    BackoffConfig, ClientConfig, DiscoveryClient, DiscoveryState, node,
};
use lanemesh_sidecar::identity::PodIdentity;
use lanemesh_sidecar::snapshot::{ResourceKind, SnapshotStore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const STEP: Duration = Duration::from_secs(5);

/// The server side of one client stream.
struct FakeStream {
    requests: Streaming<proto::DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<proto::DeltaDiscoveryResponse, Status>>,
}

impl FakeStream {
    async fn recv(&mut self) -> proto::DeltaDiscoveryRequest {
        tokio::time::timeout(STEP, self.requests.message())
            .await
            .expect("no request from the client in time")
            .expect("stream failed")
            .expect("client closed the stream")
    }

    /// The initial requests, one per type.
    async fn initial(
        &mut self,
    ) -> (
        Option<proto::Node>,
        HashMap<ResourceKind, proto::DeltaDiscoveryRequest>,
    ) {
        let mut node = None;
        let mut by_kind = HashMap::new();
        for i in 0..lanemesh_api::resource::ALL_TYPE_URLS.len() {
            let mut request = self.recv().await;
            if i == 0 {
                node = request.node.take();
            } else {
                assert!(request.node.is_none(), "node only in the first request");
            }
            assert!(request.response_nonce.is_empty());
            assert!(request.error_detail.is_none());
            let kind = ResourceKind::from_type_url(&request.type_url).unwrap();
            assert!(
                by_kind.insert(kind, request).is_none(),
                "one initial request per type"
            );
        }
        (node, by_kind)
    }

    async fn send(&self, response: proto::DeltaDiscoveryResponse) {
        self.responses.send(Ok(response)).await.unwrap();
    }

    /// Sends `response` and returns the client's answer to it.
    async fn exchange(
        &mut self,
        response: proto::DeltaDiscoveryResponse,
    ) -> proto::DeltaDiscoveryRequest {
        let nonce = response.nonce.clone();
        self.send(response).await;
        let answer = self.recv().await;
        assert_eq!(answer.response_nonce, nonce, "the answer echoes the nonce");
        answer
    }
}

#[derive(Clone)]
struct FakeControlPlane {
    streams: mpsc::UnboundedSender<FakeStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeControlPlane {
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<proto::DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<proto::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stream = FakeStream {
            requests: request.into_inner(),
            responses: tx,
        };
        self.streams
            .send(stream)
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn serve(listener: TcpListener, streams: mpsc::UnboundedSender<FakeStream>) -> JoinHandle<()> {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FakeControlPlane {
                streams,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    })
}

struct Harness {
    addr: SocketAddr,
    server: JoinHandle<()>,
    streams_tx: mpsc::UnboundedSender<FakeStream>,
    streams: mpsc::UnboundedReceiver<FakeStream>,
    store: Arc<SnapshotStore>,
    state: Arc<DiscoveryState>,
    node: PodIdentity,
    shutdown: Option<oneshot::Sender<()>>,
    client: JoinHandle<()>,
}

/// The node the harness's client claims.
fn node_of(identity: &PodIdentity) -> lanemesh_api::proto::Node {
    node(identity, "token-123")
}

impl Harness {
    async fn start() -> Self {
        Self::start_with_token_file(None).await
    }

    async fn start_with_token_file(token_file: Option<std::path::PathBuf>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let server = serve(listener, streams_tx.clone());
        let node = PodIdentity {
            pod_name: "a-7d9f-x1".into(),
            ip: "10.0.0.5".into(),
            ..PodIdentity::app("demo", "a").with_lane("gray")
        };
        let store = Arc::new(SnapshotStore::new(node.clone()));
        let mut config =
            ClientConfig::new(format!("http://{addr}"), node.clone(), "token-123".into());
        config.backoff = BackoffConfig {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
            stable_after: Duration::from_secs(10),
        };
        config.connect_timeout = Duration::from_secs(1);
        config.token_file = token_file;
        let client = DiscoveryClient::new(config, Arc::clone(&store));
        let state = client.state();
        let (shutdown, stop) = oneshot::channel::<()>();
        let client = tokio::spawn(client.run(async move {
            let _ = stop.await;
        }));
        Self {
            addr,
            server,
            streams_tx,
            streams,
            store,
            state,
            node,
            shutdown: Some(shutdown),
            client,
        }
    }

    async fn next_stream(&mut self) -> FakeStream {
        tokio::time::timeout(STEP, self.streams.recv())
            .await
            .expect("the client did not open a stream in time")
            .unwrap()
    }

    /// The client marks itself connected once the server answered the call,
    /// which may come after the server already read the initial requests.
    async fn wait_connected(&self) {
        tokio::time::timeout(STEP, async {
            while !self.state.is_connected() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the client never reported a connection");
    }

    async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        tokio::time::timeout(STEP, self.client)
            .await
            .expect("client did not stop")
            .unwrap();
        assert!(!self.state.is_connected());
        self.server.abort();
    }
}

fn service(name: &str, cluster_ip: &str, pod_ip: &str) -> proto::Service {
    let pod = SocketAddr::new(pod_ip.parse().unwrap(), 8080);
    support::service(name, &format!("{cluster_ip}:80"), &[(pod, "", true)])
}

fn lane_group(name: &str, pattern: &str) -> proto::LaneGroup {
    proto::LaneGroup {
        name: format!("demo/{name}"),
        namespace: "demo".into(),
        apps: vec!["a".into(), "b".into()],
        entry_apps: vec!["a".into()],
        tag_header: "x-mse-tag".into(),
        lanes: vec![support::lane("gray", proto::Operator::Regex, pattern)],
        ..Default::default()
    }
}

fn inbound(app: &str) -> proto::InboundPolicy {
    proto::InboundPolicy {
        name: format!("demo/{app}"),
        namespace: "demo".into(),
        app: app.into(),
        ..Default::default()
    }
}

fn outbound(app: &str) -> proto::OutboundPolicy {
    proto::OutboundPolicy {
        name: format!("demo/{app}"),
        namespace: "demo".into(),
        app: app.into(),
        ..Default::default()
    }
}

fn resource<T: DiscoveryResource>(version: &str, r: &T) -> proto::Resource {
    proto::Resource {
        name: r.resource_name().to_owned(),
        version: version.into(),
        resource: Some(r.to_any()),
    }
}

fn response(
    kind: ResourceKind,
    nonce: &str,
    resources: Vec<proto::Resource>,
    removed: &[&str],
) -> proto::DeltaDiscoveryResponse {
    proto::DeltaDiscoveryResponse {
        system_version_info: "test".into(),
        type_url: kind.type_url().into(),
        resources,
        removed_resources: removed.iter().map(|s| (*s).to_owned()).collect(),
        nonce: nonce.into(),
    }
}

#[tokio::test]
async fn first_request_carries_the_node_identity_and_one_request_per_type() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    let (node, by_kind) = stream.initial().await;
    assert_eq!(node, Some(node_of(&h.node)));
    assert_eq!(node.unwrap().token, "token-123");
    assert_eq!(by_kind.len(), lanemesh_api::resource::ALL_TYPE_URLS.len());
    assert!(
        by_kind
            .values()
            .all(|r| r.initial_resource_versions.is_empty()),
        "nothing held yet"
    );
    h.wait_connected().await;
    assert!(!h.store.is_ready());
    h.stop().await;
}

#[tokio::test]
async fn responses_are_applied_and_acked_with_the_echoed_nonce() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    stream.initial().await;

    let b = service("b", "10.96.0.2", "10.0.1.2");
    let ack = stream
        .exchange(response(
            ResourceKind::Service,
            "nonce-1",
            vec![resource("v1", &b)],
            &[],
        ))
        .await;
    assert_eq!(ack.type_url, ResourceKind::Service.type_url());
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert!(ack.node.is_none());
    // The ACK is sent after the swap, so the snapshot already holds it.
    let snap = h.store.load_full();
    assert_eq!(snap.get::<proto::Service>("demo/b").unwrap().version, "v1");
    let by_addr = snap
        .service_by_cluster_addr("10.96.0.2:80".parse().unwrap())
        .unwrap();
    assert_eq!(by_addr.resource, b);
    assert_eq!(snap.endpoint("10.0.1.2".parse().unwrap()).unwrap().app, "b");
    assert_eq!(h.state.stats().acks, 1);

    // A type this proxy does not know is NACKed as a whole.
    let mut unknown = response(ResourceKind::Service, "nonce-2", vec![], &[]);
    unknown.type_url = "type.googleapis.com/lanemesh.v1.Future".into();
    let nack = stream.exchange(unknown).await;
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .contains("lanemesh.v1.Future")
    );
    assert_eq!(
        h.store.load().generation(),
        snap.generation(),
        "nothing applied"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_invalid_resource_is_nacked_by_name_while_the_valid_ones_apply() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    stream.initial().await;

    let good_v1 = lane_group("flow", "gr(a|e)y");
    let ack = stream
        .exchange(response(
            ResourceKind::LaneGroup,
            "n1",
            vec![resource("v1", &good_v1)],
            &[],
        ))
        .await;
    assert!(ack.error_detail.is_none());

    // v2 of `flow` breaks its regex; `other` is new and valid.
    let broken_v2 = lane_group("flow", "gr(ay");
    let other = lane_group("other", "blue");
    let nack = stream
        .exchange(response(
            ResourceKind::LaneGroup,
            "n2",
            vec![resource("v2", &broken_v2), resource("v1", &other)],
            &[],
        ))
        .await;
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(detail.resource_errors.len(), 1, "{detail:?}");
    let error = &detail.resource_errors[0];
    assert_eq!(error.name, "demo/flow");
    assert_eq!(error.version, "v2");
    assert!(error.message.contains("gr(ay"), "{}", error.message);
    assert!(error.message.contains("lane gray"), "{}", error.message);

    let snap = h.store.load_full();
    let kept = snap.get::<proto::LaneGroup>("demo/flow").unwrap();
    assert_eq!(kept.version, "v1", "the last good version stays");
    assert_eq!(kept.resource, good_v1);
    assert!(
        snap.get::<proto::LaneGroup>("demo/other").is_some(),
        "valid sibling applied"
    );
    let stats = h.state.stats();
    assert_eq!(
        (stats.acks, stats.nacks, stats.rejected_resources),
        (1, 1, 1)
    );

    // A Service with an unparsable IP is refused just the same.
    let mut bad_service = service("c", "10.96.0.3", "10.0.1.3");
    bad_service.cluster_ips = vec!["10.96.0.300".into()];
    let nack = stream
        .exchange(response(
            ResourceKind::Service,
            "n3",
            vec![resource("v1", &bad_service)],
            &[],
        ))
        .await;
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(detail.resource_errors[0].name, "demo/c");
    assert!(detail.resource_errors[0].message.contains("10.96.0.300"));
    assert!(h.store.load().services().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn removed_resources_are_dropped() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    stream.initial().await;
    let resources = vec![
        resource("v1", &outbound("b")),
        resource("v1", &outbound("c")),
    ];
    stream
        .exchange(response(ResourceKind::OutboundPolicy, "n1", resources, &[]))
        .await;
    assert!(h.store.load().outbound_policy("b").is_some());

    let ack = stream
        .exchange(response(
            ResourceKind::OutboundPolicy,
            "n2",
            vec![],
            &["demo/b"],
        ))
        .await;
    assert!(ack.error_detail.is_none());
    let snap = h.store.load();
    assert!(snap.outbound_policy("b").is_none());
    assert!(
        snap.outbound_policy("c").is_some(),
        "only the named resource goes"
    );
    h.stop().await;
}

#[tokio::test]
async fn readiness_flips_only_after_every_type_arrived() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    stream.initial().await;
    let mut ready = tokio::spawn({
        let store = Arc::clone(&h.store);
        async move { store.ready().await }
    });
    let responses = [
        response(
            ResourceKind::Service,
            "n1",
            vec![resource("v1", &service("b", "10.96.0.2", "10.0.1.2"))],
            &[],
        ),
        response(ResourceKind::LaneGroup, "n2", vec![], &[]),
        response(
            ResourceKind::InboundPolicy,
            "n3",
            vec![resource("v1", &inbound("a"))],
            &[],
        ),
        response(ResourceKind::OutboundPolicy, "n4", vec![], &[]),
    ];
    for r in responses {
        stream.exchange(r).await;
        assert!(!h.store.is_ready());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut ready)
                .await
                .is_err(),
            "ready() must still be waiting"
        );
    }
    stream
        .exchange(response(ResourceKind::Workload, "n5", vec![], &[]))
        .await;
    assert!(h.store.is_ready());
    tokio::time::timeout(STEP, ready).await.unwrap().unwrap();
    assert_eq!(
        h.store.load().local_inbound_policy().unwrap().resource.app,
        "a"
    );
    h.stop().await;
}

#[tokio::test]
async fn losing_the_control_plane_keeps_the_snapshot_and_reconnects_with_held_versions() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    stream.initial().await;
    let b = service("b", "10.96.0.2", "10.0.1.2");
    stream
        .exchange(response(
            ResourceKind::Service,
            "n1",
            vec![resource("v7", &b)],
            &[],
        ))
        .await;
    stream
        .exchange(response(
            ResourceKind::LaneGroup,
            "n2",
            vec![resource("g3", &lane_group("flow", "gray"))],
            &[],
        ))
        .await;
    let before = h.store.load_full();

    // The control plane goes away: listener closed, stream ended.
    h.server.abort();
    let _ = (&mut h.server).await;
    drop(stream);
    tokio::time::timeout(STEP, async {
        while h.state.is_connected() || h.state.stats().reconnect_attempts < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client neither noticed the loss nor retried");
    let during = h.store.load_full();
    assert!(
        Arc::ptr_eq(&before, &during),
        "the last snapshot stays in force"
    );
    assert_eq!(
        during
            .service_by_cluster_addr("10.96.0.2:80".parse().unwrap())
            .unwrap()
            .version,
        "v7"
    );

    // The control plane comes back on the same address.
    let listener = TcpListener::bind(h.addr).await.unwrap();
    h.server = serve(listener, h.streams_tx.clone());
    let mut stream = h.next_stream().await;
    let (node, by_kind) = stream.initial().await;
    assert_eq!(
        node,
        Some(node_of(&h.node)),
        "a new stream identifies the node again"
    );
    assert_eq!(
        by_kind[&ResourceKind::Service].initial_resource_versions,
        BTreeMap::from([("demo/b".to_owned(), "v7".to_owned())])
    );
    assert_eq!(
        by_kind[&ResourceKind::LaneGroup].initial_resource_versions,
        BTreeMap::from([("demo/flow".to_owned(), "g3".to_owned())])
    );
    assert!(
        by_kind[&ResourceKind::InboundPolicy]
            .initial_resource_versions
            .is_empty()
    );
    h.wait_connected().await;
    assert_eq!(h.state.stats().connects, 2);

    // The new stream works as the old one did.
    let ack = stream
        .exchange(response(ResourceKind::Service, "n3", vec![], &["demo/b"]))
        .await;
    assert!(ack.error_detail.is_none());
    assert!(h.store.load().services().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again_on_reconnect() {
    // The kubelet rewrites a projected token before it expires; a new stream must present the
    // current one, not the one read at start.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "token-A\n").unwrap();
    let mut h = Harness::start_with_token_file(Some(file.clone())).await;
    let mut stream = h.next_stream().await;
    let (node, _) = stream.initial().await;
    assert_eq!(node.unwrap().token, "token-A");

    std::fs::write(&file, "token-B\n").unwrap();
    h.server.abort();
    let _ = (&mut h.server).await;
    drop(stream);
    let listener = TcpListener::bind(h.addr).await.unwrap();
    h.server = serve(listener, h.streams_tx.clone());
    let mut stream = h.next_stream().await;
    let (node, _) = stream.initial().await;
    assert_eq!(node.unwrap().token, "token-B");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn readers_see_only_complete_snapshots_while_100_responses_stream_in() {
    let mut h = Harness::start().await;
    let mut stream = h.next_stream().await;
    stream.initial().await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&h.store);
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut loads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let snap = store.load();
                    // Each response replaces demo/b with a new cluster IP and
                    // pod IP; the indexes must belong to the same update.
                    if let Some(entry) = snap.get::<proto::Service>("demo/b") {
                        let addr = SocketAddr::new(entry.compiled.cluster_ips[0], 80);
                        let by_addr = snap.service_by_cluster_addr(addr).unwrap();
                        assert!(Arc::ptr_eq(by_addr, entry), "index from another snapshot");
                        let owner = snap.endpoint(entry.compiled.endpoints[0].ip).unwrap();
                        assert!(Arc::ptr_eq(&owner.services[0], entry));
                        assert_eq!(snap.services().len(), 1, "stale entries left behind");
                    }
                    loads += 1;
                    tokio::task::yield_now().await;
                }
                loads
            })
        })
        .collect();
    for i in 0..100u32 {
        let b = service(
            "b",
            &format!("10.96.{}.{}", i / 200, i % 200 + 1),
            &format!("10.1.{}.{}", i / 200, i % 200 + 1),
        );
        stream
            .send(response(
                ResourceKind::Service,
                &format!("n{i}"),
                vec![resource(&format!("v{i}"), &b)],
                &[],
            ))
            .await;
    }
    for i in 0..100u32 {
        let ack = stream.recv().await;
        assert_eq!(
            ack.response_nonce,
            format!("n{i}"),
            "ACKs in response order"
        );
        assert!(ack.error_detail.is_none());
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        let loads = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
        assert!(loads > 0);
    }
    let snap = h.store.load();
    assert_eq!(snap.get::<proto::Service>("demo/b").unwrap().version, "v99");
    assert_eq!(h.state.stats().acks, 100);
    h.stop().await;
}
