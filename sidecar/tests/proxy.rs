#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The proxy core end to end on 127.0.0.1: real sockets, tiny upstream
//! servers, and the original-destination seam telling the proxy where each
//! client connection was going (there is no iptables in these tests).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanemesh_api::proto::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use lanemesh_api::proto::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use lanemesh_api::proto::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use lanemesh_sidecar::proxy::ProxyConfig;
use lanemesh_sidecar::proxy::{
    ConnContext, DrainReport, Fixed, HttpOutcome, LocalResponse, OriginalDst, PassthroughRouter,
    PeerMap, PortProtocol, Proxy, RouteDecision, Routed, Router, ShutdownHandle, TcpDecision,
    UpstreamFailure,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for any single step; generous for a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- harness

struct Harness {
    outbound: SocketAddr,
    inbound: SocketAddr,
    map: PeerMap,
    shutdown: ShutdownHandle,
    run: JoinHandle<DrainReport>,
}

fn test_config() -> ProxyConfig {
    support::loopback_config()
}

impl Harness {
    async fn start(config: ProxyConfig) -> Self {
        Self::start_with(config, Arc::new(PassthroughRouter), None).await
    }

    async fn start_with(
        config: ProxyConfig,
        router: Arc<dyn Router>,
        orig_dst: Option<Arc<dyn OriginalDst>>,
    ) -> Self {
        let map = PeerMap::new();
        let orig_dst = orig_dst.unwrap_or_else(|| Arc::new(map.clone()));
        let proxy = Proxy::bind(config, router, orig_dst).await.unwrap();
        let outbound = proxy.outbound_addr();
        let inbound = proxy.inbound_addr();
        let shutdown = proxy.shutdown_handle();
        let run = tokio::spawn(proxy.run());
        Self {
            outbound,
            inbound,
            map,
            shutdown,
            run,
        }
    }

    /// A connection to the outbound listener that "was going to" `dst`.
    async fn connect(&self, dst: SocketAddr) -> TcpStream {
        self.connect_via(self.outbound, dst).await
    }

    async fn connect_via(&self, listener: SocketAddr, dst: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Registered before connecting, so the proxy finds it on accept.
        self.map.insert(socket.local_addr().unwrap(), dst);
        timeout(STEP, socket.connect(listener))
            .await
            .unwrap()
            .unwrap()
    }

    async fn h1(&self, dst: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = self.connect(dst).await;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }

    /// A fresh connection through the proxy is still served: whatever a test
    /// did to another connection did not affect this one.
    async fn assert_serves(&self, upstream: SocketAddr, path: &str) {
        let mut send = self.h1(upstream).await;
        let resp = timeout(STEP, send.send_request(get(path)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body_text(resp).await, "hello");
    }
}

// ---------------------------------------------------------------- upstreams

/// An HTTP/1.1 + HTTP/2 upstream that reports what it saw.
/// `/echo` streams the request body back frame by frame; `/slow?ms=N` answers
/// after N ms; anything else answers "hello".
struct HttpUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn http_upstream() -> HttpUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let conn_id = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(upstream_handle(conn_id, req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    HttpUpstream { addr, accepted }
}

type EchoBody = http_body_util::Either<Incoming, Full<Bytes>>;

async fn upstream_handle(conn_id: usize, req: Request<Incoming>) -> Response<EchoBody> {
    let seen_version = format!("{:?}", req.version());
    let seen_host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| h.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let seen_authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let mut resp = if path == "/echo" {
        Response::new(http_body_util::Either::Left(req.into_body()))
    } else if path == "/slow" {
        let ms: u64 = query.trim_start_matches("ms=").parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(http_body_util::Either::Right(Full::new(Bytes::from(
            "slow done",
        ))))
    } else {
        Response::new(http_body_util::Either::Right(Full::new(Bytes::from(
            "hello",
        ))))
    };
    let h = resp.headers_mut();
    h.insert("x-seen-version", seen_version.parse().unwrap());
    h.insert("x-seen-host", seen_host.parse().unwrap());
    h.insert("x-seen-path", path.parse().unwrap());
    h.insert("x-seen-authority", seen_authority.parse().unwrap());
    h.insert("x-conn-id", conn_id.to_string().parse().unwrap());
    resp
}

/// Echoes bytes; after the client's EOF writes "|eof" and closes.
async fn tcp_echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.write_all(b"|eof").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Greets first, like SMTP or MySQL, then echoes.
async fn server_first_upstream(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream.write_all(b"220 ready\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Answers an HTTP/1.1 Upgrade with 101, then echoes raw bytes.
async fn upgrade_echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let lower = head.to_ascii_lowercase();
                if !lower.contains("upgrade: websocket") || !lower.contains("connection: upgrade") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                    )
                    .await
                    .unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one HTTP head (up to and including the blank line), byte by byte so
/// nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = timeout(STEP, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "eof inside head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    timeout(STEP, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "svc.test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_text(resp: Response<Incoming>) -> String {
    let bytes = timeout(STEP, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

// ---------------------------------------------------------------- HTTP/1.1

#[tokio::test]
async fn http1_request_reaches_original_destination_with_host_kept() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut send = harness.h1(upstream.addr).await;
    let resp = timeout(STEP, send.send_request(get("/hello?x=1")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
    assert_eq!(resp.headers()["x-seen-host"], "svc.test");
    assert_eq!(resp.headers()["x-seen-path"], "/hello");
    assert_eq!(body_text(resp).await, "hello");
}

#[tokio::test]
async fn http1_keep_alive_serves_two_requests_on_one_connection_and_pools_upstream() {
    let upstream = http_upstream().await;
    // Pools are per worker and the kernel spreads client connections over the workers'
    // sockets: with one worker both client connections share its pool.
    let config = ProxyConfig {
        workers: Some(1),
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let mut send = harness.h1(upstream.addr).await;
    for _ in 0..2 {
        let resp = timeout(STEP, send.send_request(get("/a")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body_text(resp).await, "hello");
    }
    // A second client connection (same worker) reuses the pooled upstream connection.
    let mut other = harness.h1(upstream.addr).await;
    let resp = timeout(STEP, other.send_request(get("/b")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()["x-conn-id"], "1");
    assert_eq!(body_text(resp).await, "hello");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

/// The upstream echoes each chunk as it arrives; the client only sends the
/// next chunk after reading the previous echo. A proxy that buffered either
/// body would deadlock here.
#[tokio::test]
async fn http1_chunked_body_is_streamed_both_ways() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let stream = harness.connect(upstream.addr).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("/echo")
        .header("host", "svc.test")
        .body(body)
        .unwrap();
    let resp_fut = tokio::spawn(send.send_request(req));
    tx.send(Ok(Frame::data(Bytes::from("first"))))
        .await
        .unwrap();
    let resp = timeout(STEP, resp_fut).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    for chunk in ["first", "second", "third"] {
        if chunk != "first" {
            tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.unwrap();
        }
        let frame = timeout(STEP, body.frame()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(tx);
    assert!(timeout(STEP, body.frame()).await.unwrap().is_none());
}

#[tokio::test]
async fn inbound_delivers_to_the_app_address_on_the_original_port() {
    let upstream = http_upstream().await;
    let harness = Harness::start(ProxyConfig {
        app_address: Some("127.0.0.1".parse().unwrap()),
        ..test_config()
    })
    .await;
    // The pod IP is unroutable here; inbound must go to 127.0.0.1 instead.
    let pod_dst = SocketAddr::new("192.0.2.10".parse().unwrap(), upstream.addr.port());
    let stream = harness.connect_via(harness.inbound, pod_dst).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = timeout(STEP, send.send_request(get("/in")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()["x-seen-path"], "/in");
    assert_eq!(body_text(resp).await, "hello");
}

/// One HTTP/1 exchange on a fresh inbound connection addressed to `dst`: the status line, or
/// `None` when the proxy closed the connection without answering.
async fn inbound_status_line(harness: &Harness, dst: SocketAddr) -> Option<String> {
    let mut stream = harness.connect_via(harness.inbound, dst).await;
    let request = b"GET /config_dump HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n";
    // The proxy may close before reading, so a failed write also counts as "no answer".
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = timeout(STEP, stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn inbound_is_delivered_to_the_pod_ip_so_loopback_only_apps_stay_private() {
    // The app listens on 127.0.0.1 only; the pod IP is 127.0.0.2 (another loopback address
    // standing in for it). Delivering to the original destination must not reach the app.
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let to_pod_ip = SocketAddr::new("127.0.0.2".parse().unwrap(), upstream.addr.port());
    let status = inbound_status_line(&harness, to_pod_ip).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 502 Bad Gateway"));
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);
    // An app bound to the address it is called on is reached.
    let status = inbound_status_line(&harness, upstream.addr).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn inbound_to_the_proxys_own_ports_is_refused_and_the_proxy_keeps_serving() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let pod_ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    for port in [15000, harness.inbound.port(), harness.outbound.port()] {
        let status = inbound_status_line(&harness, SocketAddr::new(pod_ip, port)).await;
        assert_eq!(status, None, "port {port} must not be reached from outside");
    }
    let status = inbound_status_line(&harness, upstream.addr).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn websocket_upgrade_is_relayed_after_101() {
    let upstream = upgrade_echo_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream).await;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: svc.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"\x81\x04ping"[..], b"\x81\x05hello"] {
        stream.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        timeout(STEP, stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

// ---------------------------------------------------------------- HTTP/2 and gRPC

#[tokio::test]
async fn http2_prior_knowledge_is_proxied_as_http2() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let stream = harness.connect(upstream.addr).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://svc.test/echo")
        .body(Full::new(Bytes::from("over h2")))
        .unwrap();
    let resp = timeout(STEP, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
    // Passthrough leaves the request alone: the upstream sees the authority the caller used.
    assert_eq!(resp.headers()["x-seen-authority"], "svc.test");
    assert_eq!(body_text(resp).await, "over h2");
}

#[derive(Debug)]
struct EchoDiscovery;

#[tonic::async_trait]
impl AggregatedDiscoveryService for EchoDiscovery {
    type DeltaAggregatedResourcesStream =
        tokio_stream::wrappers::ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    /// Answers each request with its nonce and type; a request of type
    /// "fail" ends the call with FAILED_PRECONDITION and custom metadata,
    /// which travel back in HTTP/2 trailers.
    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                if req.type_url == "fail" {
                    let mut status = tonic::Status::failed_precondition("told to fail");
                    status
                        .metadata_mut()
                        .insert("x-detail", "from-trailer".parse().unwrap());
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let resp = DeltaDiscoveryResponse {
                    type_url: req.type_url,
                    nonce: req.response_nonce,
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }
}

/// A proxy whose every connection "was going to" a tonic echo server; the
/// generated client connects to the proxy as if it were the server.
async fn grpc_setup() -> (
    Harness,
    AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(EchoDiscovery))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let harness = Harness::start_with(
        test_config(),
        Arc::new(PassthroughRouter),
        Some(Arc::new(Fixed(server_addr))),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", harness.outbound))
        .unwrap()
        .connect_timeout(STEP)
        .connect()
        .await
        .unwrap();
    (harness, AggregatedDiscoveryServiceClient::new(channel))
}

fn request(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_single_request_gets_response_and_ok_status() {
    let (_harness, mut client) = grpc_setup().await;
    let outbound = tokio_stream::iter(vec![request("t/one", "n1")]);
    let mut responses = timeout(STEP, client.delta_aggregated_resources(outbound))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let first = timeout(STEP, responses.message()).await.unwrap().unwrap();
    assert_eq!(first.unwrap().nonce, "n1");
    // End of stream with grpc-status 0 (read from the trailers).
    assert!(
        timeout(STEP, responses.message())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn grpc_bidirectional_stream_interleaves_and_keeps_trailers() {
    let (_harness, mut client) = grpc_setup().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request("t/a", "1")).await.unwrap();
    let mut responses = timeout(
        STEP,
        client.delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    // Each response must arrive before the next request is sent.
    for nonce in ["1", "2", "3"] {
        if nonce != "1" {
            tx.send(request("t/a", nonce)).await.unwrap();
        }
        let resp = timeout(STEP, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.nonce, nonce);
    }
    tx.send(request("fail", "4")).await.unwrap();
    let status = timeout(STEP, responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "told to fail");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "from-trailer");
}

// ---------------------------------------------------------------- TCP

#[tokio::test]
async fn opaque_tcp_is_relayed_and_half_close_propagates() {
    let upstream = tcp_echo_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream).await;
    stream.write_all(b"\x00\x01binary").await.unwrap();
    let mut buf = [0u8; 8];
    timeout(STEP, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"\x00\x01binary");
    // Our FIN must reach the upstream (it then says "|eof" and closes), while
    // our read half stays open for its answer.
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, b"|eof");
}

#[tokio::test]
async fn garbage_bytes_go_to_the_destination_untouched() {
    let upstream = tcp_echo_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream).await;
    // A TLS ClientHello start, then junk: not HTTP, so forwarded as-is.
    let junk = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n";
    stream.write_all(junk).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut expected = junk.to_vec();
    expected.extend_from_slice(b"|eof");
    assert_eq!(read_to_end(&mut stream).await, expected);
}

#[tokio::test]
async fn server_first_port_skips_detection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    server_first_upstream(listener).await;
    let config = ProxyConfig {
        // Long enough that waiting for it would be obvious.
        detect_timeout: Duration::from_secs(3),
        server_first_ports: vec![addr.port()],
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let started = Instant::now();
    let mut stream = harness.connect(addr).await;
    let mut greeting = [0u8; 11];
    timeout(STEP, stream.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "greeting took {:?}",
        started.elapsed()
    );
    stream.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    timeout(STEP, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
}

#[tokio::test]
async fn silent_client_on_unlisted_port_becomes_tcp_after_detect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    server_first_upstream(listener).await;
    let config = ProxyConfig {
        detect_timeout: Duration::from_millis(400),
        server_first_ports: vec![],
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let started = Instant::now();
    let mut stream = harness.connect(addr).await;
    let mut greeting = [0u8; 11];
    timeout(STEP, stream.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    // The upstream is only dialled once detection gives up.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn malformed_http_gets_400_without_reaching_upstream() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream.addr).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_headers_get_431_and_other_connections_still_work() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream.addr).await;
    let big = "a".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The proxy may answer and close before we finish writing.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = timeout(STEP, stream.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);

    harness.assert_serves(upstream.addr, "/after").await;
}

#[tokio::test]
async fn slowloris_is_closed_after_header_timeout_while_others_are_served() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await; // header timeout 600 ms
    let mut slow = harness.connect(upstream.addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        // One header line every 100 ms, forever: never a complete head.
        let mut i = 0u32;
        loop {
            let line = format!("X-Slow-{i}: y\r\n");
            if slow.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            let mut buf = [0u8; 256];
            match timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                // hyper may answer 408 before closing.
                Ok(Ok(_)) => {
                    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"));
                    break;
                }
                Err(_) => {}
            }
            i += 1;
        }
        started.elapsed()
    };
    let healthy = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut send = harness.h1(upstream.addr).await;
        let resp = send.send_request(get("/ok")).await.unwrap();
        body_text(resp).await
    };
    let (closed_after, healthy_body) = timeout(STEP, async { tokio::join!(trickle, healthy) })
        .await
        .unwrap();
    assert_eq!(healthy_body, "hello");
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after < Duration::from_secs(3),
        "slow client closed after {closed_after:?}"
    );
}

#[tokio::test]
async fn http1_client_half_close_still_gets_its_response() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream.addr).await;
    stream
        .write_all(b"GET /slow?ms=100 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // "I am done sending" must not cancel the request in flight.
    stream.shutdown().await.unwrap();
    let response = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow done"), "{response}");
}

#[tokio::test]
async fn h2_preface_followed_by_garbage_only_breaks_that_connection() {
    let upstream = http_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut bad = harness.connect(upstream.addr).await;
    bad.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xffthis is no frame")
        .await
        .unwrap();
    // The proxy ends the connection (GOAWAY then close, or a reset) rather than hanging.
    let mut sink = Vec::new();
    let _ = timeout(STEP, bad.read_to_end(&mut sink))
        .await
        .expect("connection with a broken h2 frame was left open");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);

    harness.assert_serves(upstream.addr, "/still-fine").await;
}

#[tokio::test]
async fn unreachable_upstream_gets_502_with_reason() {
    let closed = closed_port().await;
    let harness = Harness::start(test_config()).await;
    let mut send = harness.h1(closed).await;
    let resp = timeout(STEP, send.send_request(get("/")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["x-lanemesh-error"], "upstream_connect");
}

/// An HTTP/1.1 upstream that answers one request per connection without announcing the close
/// (no `Connection: close`); then closes, or with `keep_open` waits for the proxy to close.
/// Counts connections.
async fn one_shot_upstream(
    keep_open: bool,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<Duration>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    // Reports, per connection kept open, how long after the response the proxy closed it.
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let _ = read_head(&mut stream).await;
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                if keep_open {
                    let answered = Instant::now();
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest).await;
                    let _ = closed_tx.send(answered.elapsed());
                }
            });
        }
    });
    (addr, accepted, closed_rx)
}

#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_is_not_reused() {
    let (upstream, accepted, _closed) = one_shot_upstream(false).await;
    let harness = Harness::start(test_config()).await;
    let mut send = harness.h1(upstream).await;
    for round in 1..=3 {
        let resp = timeout(STEP, send.send_request(get("/")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        assert_eq!(body_text(resp).await, "ok");
        // Time for the proxy to see the upstream's FIN on the idle connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn idle_upstream_connection_is_closed_after_the_pool_idle_timeout() {
    let (upstream, accepted, mut closed) = one_shot_upstream(true).await;
    let config = ProxyConfig {
        pool_idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let mut send = harness.h1(upstream).await;
    let resp = timeout(STEP, send.send_request(get("/")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body_text(resp).await, "ok");
    // The client connection stays open; only the idle upstream connection is closed.
    let after = timeout(STEP, closed.recv()).await.unwrap().unwrap();
    assert!(
        after >= Duration::from_millis(250),
        "closed {after:?} after the response, before the idle timeout"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------- routing seam

/// Blocks `/blocked` locally, sends `/other` to a second upstream and
/// `/dead` to a closed port; records the outcomes it is told about.
struct TestRouter {
    other: SocketAddr,
    dead: SocketAddr,
    outcomes: std::sync::Mutex<Vec<HttpOutcome>>,
}

impl Router for TestRouter {
    fn route_http(&self, _conn: &ConnContext, req: &mut http::request::Parts) -> Routed {
        let decision = match req.uri.path() {
            "/blocked" => {
                let mut headers = http::HeaderMap::new();
                headers.insert("x-lanemesh-blocked", "flow".parse().unwrap());
                RouteDecision::Respond(LocalResponse {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    headers,
                    body: Bytes::from("blocked"),
                    grpc_status: None,
                })
            }
            "/other" => {
                req.headers
                    .insert("x-lanemesh-tag", "gray".parse().unwrap());
                RouteDecision::Forward(self.other)
            }
            "/dead" => RouteDecision::Forward(self.dead),
            _ => RouteDecision::Passthrough,
        };
        decision.into()
    }

    fn route_tcp(&self, _conn: &ConnContext) -> TcpDecision {
        TcpDecision::Reject
    }

    fn on_http_outcome(&self, _conn: &ConnContext, outcome: &HttpOutcome) {
        self.outcomes.lock().unwrap().push(*outcome);
    }
}

async fn closed_port() -> SocketAddr {
    // Bind then drop: the port is (very likely) closed.
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn router_decisions_are_applied() {
    let first = http_upstream().await;
    let second = http_upstream().await;
    let tcp = tcp_echo_upstream().await;
    let router = Arc::new(TestRouter {
        other: second.addr,
        dead: closed_port().await,
        outcomes: std::sync::Mutex::default(),
    });
    let harness = Harness::start_with(test_config(), router.clone(), None).await;
    let mut send = harness.h1(first.addr).await;
    let resp = send.send_request(get("/blocked")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["x-lanemesh-blocked"], "flow");
    assert_eq!(body_text(resp).await, "blocked");
    let resp = send.send_request(get("/other")).await.unwrap();
    assert_eq!(resp.headers()["x-seen-path"], "/other");
    assert_eq!(body_text(resp).await, "hello");
    assert_eq!(first.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(second.accepted.load(Ordering::SeqCst), 1);
    let resp = send.send_request(get("/dead")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let outcomes: Vec<_> = router
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|o| (o.target, o.result))
        .collect();
    // The local answer is not an upstream outcome.
    assert_eq!(
        outcomes,
        vec![
            (second.addr, Ok(StatusCode::OK)),
            (router.dead, Err(UpstreamFailure::Connect))
        ]
    );

    let mut stream = harness.connect(tcp).await;
    stream.write_all(b"\x00not http").await.unwrap();
    // Rejected: closed without a byte relayed.
    assert_eq!(read_to_end(&mut stream).await, b"");
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn a_drain_serves_late_callers_with_connection_close_then_refuses_them() {
    let upstream = http_upstream().await;
    let config = ProxyConfig {
        drain_duration: Duration::from_millis(600),
        ..test_config() // grace 5 s
    };
    let harness = Harness::start(config).await;
    let mut send = harness.h1(upstream.addr).await;
    let in_flight = tokio::spawn(send.send_request(get("/slow?ms=1500")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    harness.shutdown.trigger();

    // A caller that has not yet learned this endpoint is going is still served, and told to
    // close its connection.
    let mut late = harness.connect_via(harness.inbound, upstream.addr).await;
    late.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_to_end(&mut late).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Once the drain duration is over, new inbound connections are refused (attempts racing
    // the close may be accepted by the backlog and then reset).
    timeout(STEP, async {
        loop {
            match TcpStream::connect(harness.inbound).await {
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("inbound listener still accepting after the drain duration");
    assert!(started.elapsed() >= Duration::from_millis(550));
    // The app's own calls during its drain still go out.
    let mut stream = harness.connect(upstream.addr).await;
    stream.write_all(CLOSE_REQUEST).await.unwrap();
    let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let resp = timeout(STEP, in_flight).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_text(resp).await, "slow done");
    let report = timeout(STEP, harness.run).await.unwrap().unwrap();
    assert_eq!(report.abandoned, 0);
    // Once drained, the outbound listener is closed too.
    let refused = TcpStream::connect(harness.outbound).await;
    assert!(
        refused.is_err(),
        "outbound listener open after the proxy stopped"
    );
}

#[tokio::test]
async fn without_connections_the_proxy_stops_when_the_drain_duration_ends() {
    let config = ProxyConfig {
        drain_duration: Duration::from_millis(300),
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let started = Instant::now();
    harness.shutdown.trigger();
    let report = timeout(STEP, harness.run).await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(report.abandoned, 0);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "stopped after {took:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_what_outlives_the_grace_period() {
    let upstream = http_upstream().await;
    let config = ProxyConfig {
        grace_period: Duration::from_millis(300),
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let mut send = harness.h1(upstream.addr).await;
    let in_flight = tokio::spawn(send.send_request(get("/slow?ms=5000")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    harness.shutdown.trigger();
    let report = timeout(STEP, harness.run).await.unwrap().unwrap();
    assert_eq!(report.abandoned, 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(timeout(STEP, in_flight).await.unwrap().unwrap().is_err());
}

#[tokio::test]
async fn shutdown_waits_for_then_cuts_an_upgraded_tunnel() {
    let upstream = upgrade_echo_upstream().await;
    let config = ProxyConfig {
        grace_period: Duration::from_millis(500),
        ..test_config()
    };
    let harness = Harness::start(config).await;
    let mut stream = harness.connect(upstream).await;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 101"));
    harness.shutdown.trigger();
    // Still relaying during the grace period.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(b"during grace").await.unwrap();
    let mut buf = [0u8; 12];
    timeout(STEP, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"during grace");
    let report = timeout(STEP, harness.run).await.unwrap().unwrap();
    assert_eq!(report.abandoned, 1);
    // Cut afterwards: EOF (or a reset), not a hang.
    let mut rest = Vec::new();
    let outcome = timeout(STEP, stream.read_to_end(&mut rest)).await.unwrap();
    assert!(outcome.is_err() || rest.is_empty());
}

// ---------------------------------------------------------------- hostile clients

/// Declares every port to speak `declared`; counts the HTTP requests it routes.
#[derive(Debug)]
struct DeclaringRouter {
    declared: PortProtocol,
    http_requests: AtomicUsize,
}

impl DeclaringRouter {
    fn new(declared: PortProtocol) -> Arc<Self> {
        Arc::new(Self {
            declared,
            http_requests: AtomicUsize::new(0),
        })
    }

    fn routed(&self) -> usize {
        self.http_requests.load(Ordering::SeqCst)
    }
}

impl Router for DeclaringRouter {
    fn route_http(&self, _conn: &ConnContext, _req: &mut http::request::Parts) -> Routed {
        self.http_requests.fetch_add(1, Ordering::SeqCst);
        RouteDecision::Passthrough.into()
    }

    fn route_tcp(&self, _conn: &ConnContext) -> TcpDecision {
        TcpDecision::Passthrough
    }

    fn port_protocol(&self, _conn: &ConnContext) -> PortProtocol {
        self.declared
    }
}

const CLOSE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_client_that_waits_out_detection_is_still_routed_as_http() {
    let upstream = http_upstream().await;
    let router = DeclaringRouter::new(PortProtocol::Detect);
    let harness = Harness::start_with(test_config(), router.clone(), None).await;
    let mut stream = harness.connect(upstream.addr).await;
    // Longer than the 200 ms detection timeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream.write_all(CLOSE_REQUEST).await.unwrap();
    let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(router.routed(), 1, "the request skipped routing");

    // Half a request line, then a pause: still HTTP.
    let mut stream = harness.connect(upstream.addr).await;
    stream.write_all(b"GE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&CLOSE_REQUEST[2..]).await.unwrap();
    let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(router.routed(), 2);

    // Empty lines before the request line (RFC 9112 §2.2): HTTP, not opaque.
    let mut stream = harness.connect(upstream.addr).await;
    stream.write_all(b"\r\n").await.unwrap();
    stream.write_all(CLOSE_REQUEST).await.unwrap();
    let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert_eq!(router.routed(), 3);
}

#[tokio::test]
async fn a_server_first_protocol_on_an_undeclared_port_still_works() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    server_first_upstream(listener).await;
    let router = DeclaringRouter::new(PortProtocol::Detect);
    let harness = Harness::start_with(test_config(), router.clone(), None).await;
    let mut stream = harness.connect(addr).await;
    let mut greeting = [0u8; 11];
    timeout(STEP, stream.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    stream.write_all(b"EHLO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    timeout(STEP, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"EHLO x\r\n");
    assert_eq!(router.routed(), 0);
}

#[tokio::test]
async fn a_port_declared_http_is_never_relayed_as_opaque_bytes() {
    let upstream = http_upstream().await;
    let router = DeclaringRouter::new(PortProtocol::Http);
    let harness = Harness::start_with(test_config(), router.clone(), None).await;
    let mut stream = harness.connect(upstream.addr).await;
    stream.write_all(b"\x00\x01 not http at all").await.unwrap();
    assert_eq!(
        read_to_end(&mut stream).await,
        b"",
        "closed, nothing relayed"
    );
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);

    // A slow client is still served as HTTP (within the header-read timeout, 600 ms here).
    let mut stream = harness.connect(upstream.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(CLOSE_REQUEST).await.unwrap();
    let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(router.routed(), 1);
}

#[tokio::test]
async fn a_port_declared_tcp_skips_detection() {
    let echo = tcp_echo_upstream().await;
    let router = DeclaringRouter::new(PortProtocol::Opaque);
    let harness = Harness::start_with(test_config(), router.clone(), None).await;
    let mut stream = harness.connect(echo).await;
    stream.write_all(CLOSE_REQUEST).await.unwrap();
    stream.shutdown().await.unwrap();
    let echoed = read_to_end(&mut stream).await;
    assert!(echoed.starts_with(CLOSE_REQUEST) && echoed.ends_with(b"|eof"));
    assert_eq!(router.routed(), 0, "relayed as bytes, not parsed");
}

#[tokio::test]
async fn past_the_connection_limit_new_connections_close_and_open_ones_keep_working() {
    let upstream = http_upstream().await;
    let harness = Harness::start(ProxyConfig {
        max_connections: 2,
        workers: Some(1),
        ..test_config()
    })
    .await;
    let mut first = harness.h1(upstream.addr).await;
    let mut second = harness.h1(upstream.addr).await;
    for send in [&mut first, &mut second] {
        let resp = send.send_request(get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // The third is closed without an answer.
    let mut third = harness.connect(upstream.addr).await;
    let _ = third.write_all(CLOSE_REQUEST).await;
    let mut answer = Vec::new();
    let _ = timeout(STEP, third.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer, b"");
    // The open ones still work.
    for send in [&mut first, &mut second] {
        let resp = send.send_request(get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // A slot freed is a slot to take.
    drop(first);
    let deadline = Instant::now() + STEP;
    loop {
        let mut stream = harness.connect(upstream.addr).await;
        let _ = stream.write_all(CLOSE_REQUEST).await;
        let mut answer = Vec::new();
        let _ = timeout(STEP, stream.read_to_end(&mut answer))
            .await
            .unwrap();
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_opaque_relay_is_closed_and_a_busy_one_is_not() {
    let echo = tcp_echo_upstream().await;
    let harness = Harness::start(ProxyConfig {
        tcp_idle_timeout: Duration::from_millis(400),
        ..test_config()
    })
    .await;
    // Busy: a byte every 100 ms for a second, well past the idle timeout.
    let mut busy = harness.connect(echo).await;
    for _ in 0..10 {
        busy.write_all(b"\x00").await.unwrap();
        let mut byte = [0u8; 1];
        timeout(STEP, busy.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: closed by the proxy (the echo server would otherwise keep it open forever).
    let started = Instant::now();
    let mut buf = Vec::new();
    timeout(STEP, busy.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf.is_empty(), "{buf:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
}

/// Switches to whatever protocol a request asks for (an h2c-capable server), echoing raw bytes
/// after the 101; answers a request without `Upgrade` with `200 plain` and the head it saw.
async fn any_upgrade_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await.to_ascii_lowercase();
                if head.contains("\r\nupgrade:") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                        .await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                } else {
                    let body = format!("plain\n{head}");
                    let _ = stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                }
            });
        }
    });
    addr
}

const H2C_UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";

#[tokio::test]
async fn an_h2c_upgrade_is_not_allowed_to_turn_the_connection_into_a_tunnel() {
    let upstream = any_upgrade_upstream().await;
    let harness = Harness::start(test_config()).await;
    let mut stream = harness.connect(upstream).await;
    stream.write_all(H2C_UPGRADE).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")?
                .parse()
                .ok()
        })
        .unwrap();
    let mut body = vec![0u8; length];
    timeout(STEP, stream.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(body).unwrap();
    assert!(answer.contains("plain\n"), "{answer}");
    // The upstream never saw the upgrade request.
    assert!(!answer.contains("upgrade: h2c"), "{answer}");
    assert!(!answer.contains("http2-settings"), "{answer}");

    // Allowed explicitly, the same request switches protocols.
    let harness = Harness::start(ProxyConfig {
        upgrade_protocols: vec!["websocket".into(), "h2c".into()],
        ..test_config()
    })
    .await;
    let mut stream = harness.connect(upstream).await;
    stream.write_all(H2C_UPGRADE).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}
