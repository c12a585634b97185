#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP/1 conformance of the proxy, black box: the client writes exact request bytes on a raw
//! socket and parses the response bytes itself, and the upstream is a scripted raw socket that
//! records exactly what the proxy put on the wire. Written against the hyper-based HTTP/1 path and
//! kept for the relay that replaced it (`proxy::h1`): they pin the wire behaviour. The cases that
//! `tests/proxy.rs` already covers (basic keep-alive, chunked echo, WebSocket, 400 on garbage,
//! 431, slowloris, half-close, pool reuse, idle timeout) are not repeated here.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanemesh_sidecar::proxy::ProxyConfig;
use lanemesh_sidecar::proxy::h1::Http1Relay;
use lanemesh_sidecar::proxy::{
    ConnContext, Direction, LocalResponse, PassthroughRouter, PeerMap, Proxy, RouteDecision,
    Routed, Router, TcpDecision,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

/// Upper bound for any single step; generous for a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(10);
/// How long a connection is watched for bytes that must not come.
const QUIET: Duration = Duration::from_millis(300);
/// Upper bound for a whole multi-megabyte transfer in a debug build.
const BULK: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- harness

struct Harness {
    outbound: SocketAddr,
    map: PeerMap,
}

fn test_config() -> ProxyConfig {
    support::loopback_config()
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(Arc::new(PassthroughRouter)).await
    }

    async fn start_with(router: Arc<dyn Router>) -> Self {
        let map = PeerMap::new();
        let proxy = Proxy::bind(test_config(), router, Arc::new(map.clone()))
            .await
            .unwrap();
        let outbound = proxy.outbound_addr();
        tokio::spawn(proxy.run());
        Self { outbound, map }
    }

    /// A raw connection to the outbound listener that "was going to" `dst`.
    async fn connect(&self, dst: SocketAddr) -> Wire {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Registered before connecting, so the proxy finds it on accept.
        self.map.insert(socket.local_addr().unwrap(), dst);
        let stream = timeout(STEP, socket.connect(self.outbound))
            .await
            .unwrap()
            .unwrap();
        Wire::new(stream)
    }
}

// ---------------------------------------------------------------- wire parsing

/// A start line and header fields, in the order they arrived.
#[derive(Debug, Clone)]
struct Head {
    start: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8(raw.to_vec()).expect("head is not UTF-8");
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_owned();
        let fields = lines
            .take_while(|line| !line.is_empty())
            .map(split_field)
            .collect();
        Self { start, fields }
    }

    fn token(&self, i: usize) -> &str {
        self.start.splitn(3, ' ').nth(i).unwrap_or_default()
    }

    fn method(&self) -> &str {
        self.token(0)
    }

    fn target(&self) -> &str {
        self.token(1)
    }

    fn status(&self) -> u16 {
        self.token(1)
            .parse()
            .unwrap_or_else(|_| panic!("not a status line: {:?}", self.start))
    }

    /// Every value of `name`, in arrival order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    fn is_chunked(&self) -> bool {
        self.all("transfer-encoding").last().is_some_and(|v| {
            v.rsplit(',')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("chunked")
        })
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }

    /// `Connection` lists `token`.
    fn connection_has(&self, token: &str) -> bool {
        self.all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// `name: value` with the optional whitespace around the value removed (RFC 9112 §5).
fn split_field(line: &str) -> (String, String) {
    let (name, value) = line
        .split_once(':')
        .unwrap_or_else(|| panic!("field line without a colon: {line:?}"));
    (name.to_owned(), value.trim_matches([' ', '\t']).to_owned())
}

/// One HTTP message: head, body with the transfer coding removed, trailer fields.
#[derive(Debug)]
struct Message {
    head: Head,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(2048)]).into_owned()
}

/// A TCP stream with a read buffer and an HTTP/1 message reader. Every read is bounded by
/// `STEP` (a hang fails the test) except [`Wire::wait_data`], which the scripted upstreams use
/// to idle between requests.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every byte read, for upstreams that must prove something never arrived.
    log: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            log: None,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .unwrap();
    }

    async fn read_some(&mut self) -> std::io::Result<usize> {
        let before = self.buf.len();
        self.buf.reserve(64 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if let Some(log) = &self.log {
            log.lock().unwrap().extend_from_slice(&self.buf[before..]);
        }
        Ok(n)
    }

    /// One read appended to the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> std::io::Result<usize> {
        timeout(STEP, self.read_some())
            .await
            .expect("read timed out: peer neither sent nor closed")
    }

    /// Waits without a bound for the next bytes; false once the peer closed.
    async fn wait_data(&mut self) -> bool {
        !self.buf.is_empty() || self.read_some().await.is_ok_and(|n| n > 0)
    }

    async fn need(&mut self, what: &str) {
        let n = self.fill().await.unwrap_or(0);
        assert!(
            n > 0,
            "connection ended inside {what}; buffered: {:?}",
            lossy(&self.buf)
        );
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = self.take(pos + 2);
                return String::from_utf8(line[..pos].to_vec()).unwrap();
            }
            self.need("a line").await;
        }
    }

    /// The next head, or `None` if the peer closed (or reset) before its first byte.
    async fn try_head(&mut self) -> Option<Head> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                let raw = self.take(pos + 4);
                return Some(Head::parse(&raw));
            }
            if self.fill().await.unwrap_or(0) == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection ended inside a head: {:?}",
                    lossy(&self.buf)
                );
                return None;
            }
        }
    }

    async fn head(&mut self) -> Head {
        self.try_head()
            .await
            .expect("connection closed where a head was expected")
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.need("a body").await;
        }
        self.take(n)
    }

    /// A chunked body (RFC 9112 §7.1): the data and the trailer fields.
    async fn chunked(&mut self) -> (Vec<u8>, Vec<(String, String)>) {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("bad chunk-size line {line:?}"));
            if size == 0 {
                break;
            }
            body.extend(self.exact(size).await);
            assert_eq!(self.exact(2).await, b"\r\n", "chunk data not ended by CRLF");
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (body, trailers);
            }
            trailers.push(split_field(&line));
        }
    }

    /// Everything until the peer closes (or resets) the connection.
    async fn until_eof(&mut self) -> Vec<u8> {
        while self.fill().await.unwrap_or(0) > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// The next request, or `None` if the peer closed first. `Transfer-Encoding` wins over
    /// `Content-Length` (RFC 9112 §6.3); no length means no body.
    async fn read_request(&mut self) -> Option<Message> {
        let head = self.try_head().await?;
        let (body, trailers) = if head.is_chunked() {
            self.chunked().await
        } else {
            let len = head.content_length().unwrap_or(0);
            (self.exact(len).await, Vec::new())
        };
        Some(Message {
            head,
            body,
            trailers,
        })
    }

    /// The next response (interim ones included) to a `method` request, framed as RFC 9112
    /// §6.3 says: no body after HEAD, 1xx, 204 and 304; else chunked, Content-Length, or
    /// everything until the connection closes.
    /// Sends one request and reads its response (the method decides whether a body follows).
    async fn exchange(&mut self, request: &[u8]) -> Message {
        let method = request.split(|&b| b == b' ').next().unwrap_or_default();
        let method = String::from_utf8(method.to_vec()).unwrap();
        self.send(request).await;
        self.read_response(&method).await
    }

    async fn read_response(&mut self, method: &str) -> Message {
        let head = self.head().await;
        let status = head.status();
        let (body, trailers) =
            if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
                (Vec::new(), Vec::new())
            } else if head.is_chunked() {
                self.chunked().await
            } else if let Some(len) = head.content_length() {
                (self.exact(len).await, Vec::new())
            } else {
                (self.until_eof().await, Vec::new())
            };
        Message {
            head,
            body,
            trailers,
        }
    }

    /// The final response, after any number of 1xx ones.
    async fn read_final_response(&mut self, method: &str) -> Message {
        loop {
            let resp = self.read_response(method).await;
            if resp.head.status() >= 200 {
                return resp;
            }
        }
    }

    /// The peer closes (or resets) the connection without sending anything more.
    async fn expect_closed(&mut self) {
        let rest = self.until_eof().await;
        assert!(
            rest.is_empty(),
            "bytes before the close: {:?}",
            lossy(&rest)
        );
    }

    /// Whatever arrives within `QUIET` (stopping early if the peer closes).
    async fn quiet(&mut self) -> Vec<u8> {
        let _ = timeout(QUIET, async {
            while self.read_some().await.unwrap_or(0) > 0 {}
        })
        .await;
        std::mem::take(&mut self.buf)
    }
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Bytes that are neither constant nor short-periodic, so a dropped, duplicated or reordered
/// range shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11) ^ usize::from(seed)) as u8)
        .collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------- upstreams

/// A listener the test scripts by hand, connection by connection.
struct RawUpstream {
    listener: TcpListener,
    addr: SocketAddr,
}

impl RawUpstream {
    async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self { listener, addr }
    }

    async fn accept(&self) -> Wire {
        let (stream, _) = timeout(STEP, self.listener.accept())
            .await
            .expect("the proxy opened no upstream connection")
            .unwrap();
        Wire::new(stream)
    }
}

/// What an [`AutoUpstream`] writes back for one request.
struct Reply {
    bytes: Vec<u8>,
    delay: Duration,
    close: bool,
}

impl Reply {
    fn send(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            delay: Duration::ZERO,
            close: false,
        }
    }

    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Closes the connection once the bytes are written.
    fn then_close(mut self) -> Self {
        self.close = true;
        self
    }
}

/// Serves any number of connections and requests, answering each with `respond(conn, req)`
/// (connections counted from 1), and records every request and every byte received.
struct AutoUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(usize, Message)>>>,
    raw: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<AtomicUsize>,
}

impl AutoUpstream {
    async fn start(respond: impl Fn(usize, &Message) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let respond = Arc::new(respond);
        let (seen2, raw2, accepted2) = (Arc::clone(&seen), Arc::clone(&raw), Arc::clone(&accepted));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = accepted2.fetch_add(1, Ordering::SeqCst) + 1;
                let (respond, seen, raw) =
                    (Arc::clone(&respond), Arc::clone(&seen2), Arc::clone(&raw2));
                tokio::spawn(async move {
                    let mut wire = Wire::new(stream);
                    wire.log = Some(raw);
                    while wire.wait_data().await {
                        let Some(req) = wire.read_request().await else {
                            return;
                        };
                        let reply = (*respond)(conn, &req);
                        seen.lock().unwrap().push((conn, req));
                        tokio::time::sleep(reply.delay).await;
                        if wire.stream.write_all(&reply.bytes).await.is_err() || reply.close {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            raw,
            accepted,
        }
    }

    fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, req)| req.head.target().to_owned())
            .collect()
    }

    fn heads(&self) -> Vec<Head> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, req)| req.head.clone())
            .collect()
    }
}

// ---------------------------------------------------------------- tests

/// Two requests in one write: both answered, in order, on the same connection. The first
/// answer is slow, so a proxy that answered whichever came back first would reorder them.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = AutoUpstream::start(|_, req| {
        let target = req.head.target().to_owned();
        let reply = Reply::send(ok(target.as_bytes()));
        if target == "/one" {
            reply.after(Duration::from_millis(150))
        } else {
            reply
        }
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let first = client.exchange(b"GET /one HTTP/1.1\r\nHost: svc.test\r\n\r\nGET /two HTTP/1.1\r\nHost: svc.test\r\n\r\n").await;
    assert_eq!(first.head.status(), 200);
    assert_eq!(first.body, b"/one");
    let second = client.read_response("GET").await;
    assert_eq!(second.head.status(), 200);
    assert_eq!(second.body, b"/two");
    assert_eq!(up.targets(), ["/one", "/two"]);
    // Still open and in sync for a third.
    client
        .send(b"GET /three HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(client.read_response("GET").await.body, b"/three");
}

/// A HEAD response announces the length of the GET body but carries none; a proxy that waited
/// for those 5 bytes would hang, one that invented them would break the next response.
#[tokio::test]
async fn head_response_with_content_length_has_no_body_and_the_connection_goes_on() {
    let up = AutoUpstream::start(|_, req| {
        if req.head.method() == "HEAD" {
            Reply::send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::send(ok(b"after"))
        }
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let head = client
        .exchange(b"HEAD /doc HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(head.head.status(), 200);
    // The representation's length travels unchanged (RFC 9110 §9.3.2).
    assert_eq!(head.head.get("content-length"), Some("5"));
    assert_eq!(head.head.get("content-type"), Some("text/plain"));
    let after = client
        .exchange(b"GET /after HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(after.head.status(), 200);
    assert_eq!(after.body, b"after");
    assert_eq!(up.targets(), ["/doc", "/after"]);
}

/// 204 and 304 end at their head (a 304 may even carry the Content-Length of the
/// representation); the requests after them on the same connection are answered correctly.
#[tokio::test]
async fn no_content_and_not_modified_end_at_the_head() {
    let up = AutoUpstream::start(|_, req| match req.head.target() {
        "/nc" => Reply::send(b"HTTP/1.1 204 No Content\r\nX-Kind: nc\r\n\r\n".to_vec()),
        "/nm" => Reply::send(
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n".to_vec(),
        ),
        _ => Reply::send(ok(b"after")),
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;

    let nc = client
        .exchange(b"DELETE /nc HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(nc.head.status(), 204);
    assert_eq!(nc.head.get("x-kind"), Some("nc"));
    assert!(!nc.head.is_chunked(), "204 with a body framing: {nc:?}");

    let nm = client
        .exchange(b"GET /nm HTTP/1.1\r\nHost: svc.test\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .await;
    assert_eq!(nm.head.status(), 304);
    assert_eq!(nm.head.get("etag"), Some("\"v1\""));
    assert!(!nm.head.is_chunked(), "304 with a body framing: {nm:?}");

    let after = client
        .exchange(b"GET /after HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(after.head.status(), 200);
    assert_eq!(after.body, b"after");
    // One upstream request per client request: none was retried or lost.
    assert_eq!(up.targets(), ["/nc", "/nm", "/after"]);
    assert_eq!(
        up.seen.lock().unwrap()[1].1.head.get("if-none-match"),
        Some("\"v1\"")
    );
}

/// The client waits for `100 Continue` before sending its body, as RFC 9110 §10.1.1 lets it.
/// The relay forwards `Expect` and relays the upstream's own 100 (the hyper-based path sent one
/// itself and swallowed the upstream's); either way the client must see a 100 and then the
/// final response, and the upstream the full body.
#[tokio::test]
async fn expect_100_continue_gets_the_interim_response_then_the_body_flows() {
    let up = RawUpstream::bind().await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: svc.test\r\nExpect: 100-continue\r\n\
              Content-Length: 11\r\n\r\n",
        )
        .await;
    let mut server = up.accept().await;
    // The head is forwarded without waiting for a body the client is holding back.
    let head = server.head().await;
    assert_eq!(head.method(), "POST");
    assert_eq!(head.target(), "/upload");
    assert_eq!(head.content_length(), Some(11));
    server.send(b"HTTP/1.1 100 Continue\r\n\r\n").await;

    let interim = client.head().await;
    assert_eq!(interim.status(), 100, "{interim:?}");
    client.send(b"hello world").await;

    assert_eq!(server.exact(11).await, b"hello world");
    server.send(&ok(b"stored")).await;
    let resp = client.read_final_response("POST").await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"stored");
}

/// Chunk extensions and trailer fields on a request, and a chunked response with a trailer.
/// Bodies are compared after decoding: a proxy may re-chunk, but not change the data.
#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_arrive_whole() {
    let up = RawUpstream::bind().await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client
        .send(
            b"POST /chunks HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\
              Trailer: x-checksum\r\nTE: trailers\r\n\r\n\
              5;ext=1\r\nhello\r\n7;name=\"quoted\"\r\n, world\r\n1\r\n!\r\n\
              0\r\nx-checksum: abc123\r\n\r\n",
        )
        .await;
    let mut server = up.accept().await;
    let req = server.read_request().await.expect("request");
    assert_eq!(req.head.target(), "/chunks");
    assert_eq!(req.body, b"hello, world!");
    // The request trailer (declared in `Trailer`) reaches the upstream.
    assert_eq!(
        req.trailers,
        [("x-checksum".to_owned(), "abc123".to_owned())],
        "{req:?}"
    );
    assert!(!req.head.has("content-length"), "{req:?}");

    server
        .send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              4;a=b\r\nwiki\r\n5\r\npedia\r\ne\r\n in\r\n\r\nchunks.\r\n0\r\nx-sum: 9\r\n\r\n",
        )
        .await;
    let resp = client.read_response("POST").await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"wikipedia in\r\n\r\nchunks.");
    // The client asked for trailers (`TE: trailers`), so the upstream's trailer is relayed.
    assert_eq!(
        resp.trailers,
        [("x-sum".to_owned(), "9".to_owned())],
        "{resp:?}"
    );

    // Both sides still in sync for another exchange on the same connections.
    client
        .send(b"GET /next HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    let next = server.read_request().await.expect("second request");
    assert_eq!(next.head.target(), "/next");
    server.send(&ok(b"next")).await;
    assert_eq!(client.read_response("GET").await.body, b"next");
}

/// Upstream answers without Content-Length or Transfer-Encoding and closes to end the body.
async fn close_delimited_upstream(up: &RawUpstream, body: &[u8]) {
    let mut server = up.accept().await;
    server.read_request().await.expect("request");
    server
        .send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n")
        .await;
    // In pieces, so the proxy sees several reads before the close.
    for piece in body.chunks(7000) {
        server.send(piece).await;
    }
    drop(server);
}

/// Sends `request` through a fresh proxy to an upstream that answers with a 100 kB body and no
/// length, then closes; checks the client got all of it. The harness is returned so the proxy
/// keeps running.
async fn close_delimited_exchange(
    request: &[u8],
    seed: u8,
) -> (Harness, RawUpstream, Wire, Message) {
    let up = RawUpstream::bind().await;
    let harness = Harness::start().await;
    let body = pattern(100_000, seed);
    let mut client = harness.connect(up.addr).await;
    client.send(request).await;
    close_delimited_upstream(&up, &body).await;
    let resp = client.read_response("GET").await;
    assert_eq!(resp.head.status(), 200);
    assert!(
        resp.body == body,
        "body differs ({} bytes)",
        resp.body.len()
    );
    (harness, up, client, resp)
}

#[tokio::test]
async fn close_delimited_response_arrives_whole_then_the_client_connection_closes() {
    let (_harness, _up, mut client, _) = close_delimited_exchange(
        b"GET /stream HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n",
        6,
    )
    .await;
    client.expect_closed().await;
}

/// Same upstream, but the client wants to keep its connection: the proxy either re-frames the
/// body (the hyper-based path re-sent it chunked) and keeps serving the connection, or relays
/// it close-delimited and then closes (the relay).
#[tokio::test]
async fn close_delimited_response_to_a_keep_alive_client_is_framed_or_closed() {
    let (_harness, up, mut client, resp) =
        close_delimited_exchange(b"GET /stream HTTP/1.1\r\nHost: svc.test\r\n\r\n", 7).await;
    if resp.head.is_chunked() || resp.head.content_length().is_some() {
        client
            .send(b"GET /again HTTP/1.1\r\nHost: svc.test\r\n\r\n")
            .await;
        let mut server = up.accept().await;
        assert_eq!(server.read_request().await.unwrap().head.target(), "/again");
        server.send(&ok(b"again")).await;
        assert_eq!(client.read_response("GET").await.body, b"again");
    } else {
        // Close-delimited: `read_response` already read to EOF.
        assert!(resp.head.connection_has("close"), "{resp:?}");
    }
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: svc.test\r\n\r\n";

/// `head` (request line and fields, without the blank line) then a chunked body of one chunk
/// holding [`SMUGGLED`]: a second request for any hop that reads the framing differently.
fn chunked_smuggle(head: &str) -> Vec<u8> {
    let mut request = format!("{head}\r\n{:x}\r\n", SMUGGLED.len()).into_bytes();
    request.extend_from_slice(SMUGGLED);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    request
}

fn smuggle_upstream() -> impl std::future::Future<Output = AutoUpstream> {
    AutoUpstream::start(|_, _| Reply::send(ok(b"ok")))
}

/// Common verdict for an ambiguously framed request: either the proxy refused it with a 4xx
/// (and then closed: it cannot know where the next request starts), or it forwarded exactly one
/// request with one unambiguous framing. Never may `/smuggled` reach the upstream as a request,
/// nor a second response reach the client.
async fn assert_not_smuggled(client: &mut Wire, up: &AutoUpstream) -> u16 {
    let resp = client.read_response("POST").await;
    let status = resp.head.status();
    let extra = client.quiet().await;
    assert!(
        find(&extra, b"HTTP/1.").is_none(),
        "a second response came back: {:?}",
        lossy(&extra)
    );
    assert!(
        !up.targets().iter().any(|t| t.contains("smuggled")),
        "upstream saw {:?}",
        up.targets()
    );
    if (400..500).contains(&status) {
        assert_eq!(up.targets(), Vec::<String>::new(), "refused but forwarded");
        client.expect_closed().await;
    } else {
        assert_eq!(status, 200, "{resp:?}");
        let heads = up.heads();
        assert_eq!(heads.len(), 1, "{heads:?}");
        let head = &heads[0];
        assert!(
            !(head.has("content-length") && head.has("transfer-encoding")),
            "forwarded with both framings: {head:?}"
        );
        assert!(head.all("content-length").len() <= 1, "{head:?}");
    }
    status
}

/// TE.CL shape: chunked says the smuggled request is body data, `Content-Length: 4` says it is
/// the next request. RFC 9112 §6.3 lets a server either let `Transfer-Encoding` win or refuse;
/// the relay refuses (400, like nginx), so no upstream ever has to guess, and closes.
#[tokio::test]
async fn content_length_with_chunked_is_not_smuggled() {
    for cl_first in [true, false] {
        let up = smuggle_upstream().await;
        let harness = Harness::start().await;
        let mut client = harness.connect(up.addr).await;
        let framing = if cl_first {
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        } else {
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"
        };
        let request = chunked_smuggle(&format!("POST /a HTTP/1.1\r\nHost: svc.test\r\n{framing}"));
        client.send(&request).await;
        let status = assert_not_smuggled(&mut client, &up).await;
        // RFC 9112 §6.3: whatever it does with such a request, a server closes the connection
        // after responding.
        client.expect_closed().await;
        if status == 200 {
            // Forwarded as the chunked message it was.
            let seen = up.seen.lock().unwrap();
            assert_eq!(seen[0].1.body, SMUGGLED, "cl_first={cl_first}");
            assert!(seen[0].1.head.is_chunked(), "{:?}", seen[0].1.head);
        }
        assert_eq!(status, 400, "cl_first={cl_first}");
        assert!(
            up.seen.lock().unwrap().is_empty(),
            "nothing reaches the upstream"
        );
    }
}

/// Two different Content-Length values: 5 makes the smuggled request the next one, the other
/// makes it body: 400 and close; nothing reaches the upstream.
#[tokio::test]
async fn conflicting_content_lengths_are_not_smuggled() {
    let up = smuggle_upstream().await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let mut request = format!(
        "POST /a HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello",
        5 + SMUGGLED.len()
    )
    .into_bytes();
    request.extend_from_slice(SMUGGLED);
    client.send(&request).await;
    let status = assert_not_smuggled(&mut client, &up).await;
    assert_eq!(status, 400);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
}

/// `Content-Length: abc`: a proxy that read it as "no body" would serve the smuggled request
/// next: 400, connection closed, nothing forwarded.
#[tokio::test]
async fn invalid_content_length_is_not_smuggled() {
    let up = smuggle_upstream().await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let mut request = b"POST /a HTTP/1.1\r\nHost: svc.test\r\nContent-Length: abc\r\n\r\n".to_vec();
    request.extend_from_slice(SMUGGLED);
    client.send(&request).await;
    let status = assert_not_smuggled(&mut client, &up).await;
    assert_eq!(status, 400);
    assert!(find(&up.raw.lock().unwrap(), b"smuggled").is_none());
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
}

/// A 5 MiB Content-Length request body and a 5 MiB chunked response (odd chunk sizes), each
/// streamed while the other side reads it, byte-exact.
#[tokio::test]
async fn five_mebibyte_bodies_stream_through_byte_exact() {
    const SIZE: usize = 5 * 1024 * 1024;
    let up = RawUpstream::bind().await;
    let harness = Harness::start().await;
    let request_body = pattern(SIZE, 1);
    let response_body = pattern(SIZE, 2);
    let mut client = harness.connect(up.addr).await;

    let upload = async {
        client
            .send(
                format!("PUT /big HTTP/1.1\r\nHost: svc.test\r\nContent-Length: {SIZE}\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        for piece in request_body.chunks(256 * 1024) {
            client.send(piece).await;
        }
    };
    let receive = async {
        let mut server = up.accept().await;
        let req = server.read_request().await.expect("request");
        (server, req)
    };
    let ((), (mut server, req)) = timeout(BULK, async { tokio::join!(upload, receive) })
        .await
        .expect("upload did not finish");
    assert_eq!(req.head.content_length(), Some(SIZE));
    assert_eq!(req.body.len(), SIZE);
    assert_eq!(checksum(&req.body), checksum(&request_body));
    assert!(req.body == request_body);

    let download = async {
        server
            .send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        let sizes = [1, 4096, 65_536, 100_003, 7, 1_048_576];
        let mut rest = &response_body[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            server
                .send(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await;
            server.send(chunk).await;
            server.send(b"\r\n").await;
        }
        server.send(b"0\r\n\r\n").await;
    };
    let ((), resp) = timeout(BULK, async {
        tokio::join!(download, client.read_response("PUT"))
    })
    .await
    .expect("download did not finish");
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body.len(), SIZE);
    assert_eq!(checksum(&resp.body), checksum(&response_body));
    assert!(resp.body == response_body);
}

/// The body trickles in: the proxy relays what it has and waits for the rest.
#[tokio::test]
async fn slowly_arriving_request_body_reaches_the_upstream_whole() {
    let up = AutoUpstream::start(|_, req| Reply::send(ok(&req.body))).await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client
        .send(b"POST /slow HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 16\r\n\r\nhello")
        .await;
    for piece in [&b" world"[..], b" 1234"] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(piece).await;
    }
    let resp = client.read_response("POST").await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"hello world 1234");
    assert_eq!(up.seen.lock().unwrap()[0].1.body, b"hello world 1234");
}

/// Connection-scoped headers (RFC 9110 §7.6.1) stop at the proxy in both directions; the
/// end-to-end ones pass with their values, repeated fields in order. The client said `close`,
/// so the proxy closes its connection after the response.
#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_end_to_end_ones_kept() {
    let up = RawUpstream::bind().await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client
        .send(
            b"GET /h HTTP/1.1\r\nHost: svc.test\r\nConnection: close, x-private\r\nx-private: 1\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nx-multi: a\r\n\
              x-first: 1\r\nx-multi: b, c\r\nx-spacing:   lots  of   space \t\r\n\
              Accept: text/plain\r\n\r\n",
        )
        .await;
    let mut server = up.accept().await;
    let req = server.read_request().await.expect("request");
    for gone in ["x-private", "keep-alive", "proxy-connection"] {
        assert!(!req.head.has(gone), "{gone} forwarded: {:?}", req.head);
    }
    assert!(!req.head.connection_has("x-private"), "{:?}", req.head);
    assert_eq!(req.head.get("host"), Some("svc.test"));
    assert_eq!(req.head.all("x-multi"), ["a", "b, c"]);
    assert_eq!(req.head.get("x-first"), Some("1"));
    // Inner whitespace is part of the value; only the optional outer whitespace goes.
    assert_eq!(req.head.get("x-spacing"), Some("lots  of   space"));
    assert_eq!(req.head.get("accept"), Some("text/plain"));

    server
        .send(
            b"HTTP/1.1 200 OK\r\nConnection: x-resp-private\r\nx-resp-private: 1\r\n\
              Keep-Alive: timeout=9\r\nx-resp: kept\r\nContent-Length: 2\r\n\r\nok",
        )
        .await;
    let resp = client.read_response("GET").await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"ok");
    assert_eq!(resp.head.get("x-resp"), Some("kept"));
    for gone in ["x-resp-private", "keep-alive"] {
        assert!(!resp.head.has(gone), "{gone} relayed: {:?}", resp.head);
    }
    client.expect_closed().await;
}

/// HTTP/1.0 without Host is forwarded as is (the proxy invents no Host), and without
/// keep-alive the connection ends after the response.
#[tokio::test]
async fn http10_without_host_is_forwarded_and_then_closed() {
    let up = AutoUpstream::start(|_, _| Reply::send(ok(b"ten"))).await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let resp = client.exchange(b"GET /ten HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.head.status(), 200);
    assert!(resp.head.start.starts_with("HTTP/1."), "{resp:?}");
    assert_eq!(resp.body, b"ten");
    client.expect_closed().await;
    let heads = up.heads();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].target(), "/ten");
    assert!(!heads[0].has("host"), "{:?}", heads[0]);
}

/// HTTP/1.0 with `Connection: keep-alive`: the proxy says it keeps the connection and does.
#[tokio::test]
async fn http10_keep_alive_keeps_the_connection() {
    let up = AutoUpstream::start(|_, req| Reply::send(ok(req.head.target().as_bytes()))).await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    for target in ["/a", "/b"] {
        client
            .send(format!("GET {target} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await;
        let resp = client.read_response("GET").await;
        assert_eq!(resp.head.status(), 200);
        assert_eq!(resp.body, target.as_bytes());
        // A 1.0 client assumes a close unless told otherwise.
        assert!(resp.head.connection_has("keep-alive"), "{resp:?}");
    }
    assert_eq!(up.targets(), ["/a", "/b"]);
}

/// The upstream announces `Connection: close` and closes after each response: the client's own
/// connection is unaffected and its next request goes out on a new upstream connection.
#[tokio::test]
async fn upstream_connection_close_does_not_end_the_client_connection() {
    let up = AutoUpstream::start(|conn, _| {
        let body = format!("conn {conn}");
        let mut bytes = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        Reply::send(bytes).then_close()
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    for (round, expected) in [(1, "conn 1"), (2, "conn 2")] {
        // No pause: the close was announced, so there is no race with the FIN to lose.
        let resp = client
            .exchange(b"GET /r HTTP/1.1\r\nHost: svc.test\r\n\r\n")
            .await;
        assert_eq!(resp.head.status(), 200, "round {round}");
        assert_eq!(resp.body, expected.as_bytes(), "round {round}");
        assert!(
            !resp.head.connection_has("close"),
            "round {round}: {resp:?}"
        );
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// The upstream promises 100 bytes, sends 10 and closes. The client must not hang and must not
/// be handed a complete-looking response: it gets the 200 head and the 10 bytes, then the proxy
/// closes the connection. A fresh connection is served normally.
#[tokio::test]
async fn upstream_close_mid_body_truncates_the_client_connection() {
    let up = AutoUpstream::start(|conn, _| {
        if conn == 1 {
            let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
            bytes.extend_from_slice(b"0123456789");
            Reply::send(bytes).then_close()
        } else {
            Reply::send(ok(b"fine"))
        }
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client
        .send(b"GET /cut HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    match client.try_head().await {
        // Closed before any response: acceptable, nothing pretends to be complete.
        None => {}
        Some(head) if head.status() >= 500 => {}
        Some(head) => {
            assert_eq!(head.status(), 200, "{head:?}");
            let got = client.until_eof().await;
            if head.is_chunked() {
                // A chunked relay must not send the last-chunk for a cut body.
                assert!(find(&got, b"\r\n0\r\n\r\n").is_none(), "{:?}", lossy(&got));
            } else {
                assert_eq!(head.content_length(), Some(100), "{head:?}");
                assert!(got.len() < 100, "{:?}", lossy(&got));
            }
            assert!(
                got.starts_with(b"0123456789") || got.is_empty(),
                "{:?}",
                lossy(&got)
            );
        }
    }

    let mut fresh = harness.connect(up.addr).await;
    let resp = fresh
        .exchange(b"GET /fresh HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"fine");
}

/// Absolute-form target: the upstream gets origin-form, the client's Host unchanged.
#[tokio::test]
async fn absolute_form_target_goes_out_in_origin_form() {
    let up = AutoUpstream::start(|_, _| Reply::send(ok(b"abs"))).await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let resp = client
        .exchange(b"GET http://example.test/x?y=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"abs");
    let heads = up.heads();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].start, "GET /x?y=1 HTTP/1.1");
    assert_eq!(heads[0].all("host"), ["example.test"]);
}

// ---------------------------------------------------------------- hostile input and faults

/// Answers every request itself, as a rate limit does.
struct LimitRouter;

impl Router for LimitRouter {
    fn route_http(&self, _: &ConnContext, _: &mut http::request::Parts) -> Routed {
        let local = LocalResponse::text(http::StatusCode::TOO_MANY_REQUESTS, "limited\n");
        RouteDecision::Respond(local).into()
    }

    fn route_tcp(&self, _: &ConnContext) -> TcpDecision {
        TcpDecision::Passthrough
    }
}

/// Sets the lane tag when the request has none, as an entry app's lane decision does.
struct TagRouter;

impl Router for TagRouter {
    fn route_http(&self, _: &ConnContext, req: &mut http::request::Parts) -> Routed {
        if !req.headers.contains_key("x-mse-tag") {
            req.headers
                .insert("x-mse-tag", http::HeaderValue::from_static("gray"));
        }
        RouteDecision::Passthrough.into()
    }

    fn route_tcp(&self, _: &ConnContext) -> TcpDecision {
        TcpDecision::Passthrough
    }
}

/// A relay built directly (its idle timeouts are not proxy flags yet) serving every connection
/// to a fresh listener, passing them through to `upstream`.
async fn start_relay(relay: Http1Relay, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = Arc::new(relay);
    let (handle, signal) = lanemesh_sidecar::proxy::shutdown::channel();
    tokio::spawn(async move {
        // Held here: dropping every handle reads as a shutdown.
        let _handle = handle;
        while let Ok((stream, peer)) = listener.accept().await {
            let conn = ConnContext {
                direction: Direction::Outbound,
                peer,
                original_dst: upstream,
                default_target: upstream,
            };
            let (relay, signal) = (Arc::clone(&relay), signal.clone());
            tokio::spawn(async move { relay.serve(conn, stream, BytesMut::new(), signal).await });
        }
    });
    addr
}

async fn connect_to(addr: SocketAddr) -> Wire {
    Wire::new(
        timeout(STEP, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap(),
    )
}

/// A request the relay must refuse with 400 `bad_request` before any upstream sees it; the
/// client connection is closed after the answer.
async fn assert_refused(request: &[u8]) {
    let up = smuggle_upstream().await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client.send(request).await;
    let resp = client.read_response("POST").await;
    assert_eq!(
        resp.head.status(),
        400,
        "{:?}: {resp:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(resp.head.get("x-lanemesh-error"), Some("bad_request"));
    client.expect_closed().await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0, "forwarded");
}

/// `Transfer-Encoding` must be one field saying `chunked`: a lenient upstream behind the shared
/// pool could read `identity, chunked`, a repeated or an empty field differently and take the
/// body for the next request.
#[tokio::test]
async fn transfer_encoding_other_than_one_chunked_is_refused() {
    for framing in [
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n",
        "Transfer-Encoding: \r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
    ] {
        let request = chunked_smuggle(&format!("POST /a HTTP/1.1\r\nHost: svc.test\r\n{framing}"));
        assert_refused(&request).await;
    }
}

/// RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request means faulty framing.
#[tokio::test]
async fn transfer_encoding_in_an_http10_request_is_refused() {
    let request = chunked_smuggle("POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n");
    assert_refused(&request).await;
}

/// Bare LF line endings (httparse accepts them), obs-fold, and a space before the colon: each
/// a way to show the proxy one set of fields and a stricter or laxer upstream another.
#[tokio::test]
async fn bare_lf_and_obs_fold_in_request_heads_are_refused() {
    for request in [
        &b"GET /lf HTTP/1.1\nHost: svc.test\n\n"[..],
        b"GET /lf HTTP/1.1\r\nHost: svc.test\nX-A: 1\r\n\r\n",
        b"POST /lf HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\n\r\n0\r\n\r\n",
        b"GET /fold HTTP/1.1\r\nHost: svc.test\r\nX-A: 1\r\n  folded\r\n\r\n",
        b"POST /fold HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        b"POST /sp HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ] {
        assert_refused(request).await;
    }
}

/// A chunked request in any letter case goes out as the one spelling every parser knows.
#[tokio::test]
async fn chunked_request_goes_out_as_plain_transfer_encoding_chunked() {
    let up = AutoUpstream::start(|_, req| Reply::send(ok(&req.body))).await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let resp = client
        .exchange(
            b"POST /upper HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding:\tCHUNKED \r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"hello");
    let raw = up.raw.lock().unwrap().clone();
    assert!(
        find(&raw, b"\r\ntransfer-encoding: chunked\r\n").is_some(),
        "{:?}",
        lossy(&raw)
    );
    assert!(find(&raw, b"CHUNKED").is_none(), "{:?}", lossy(&raw));
}

/// Chunk-size lines a lenient parser reads as another size (`0x5` as 0, `5 5` as 0x55) or with
/// too many digits: 400 `bad_request_body`, nothing forwarded.
#[tokio::test]
async fn malformed_chunk_size_lines_are_refused() {
    for chunk in [
        &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"00000000000000005\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ] {
        let up = smuggle_upstream().await;
        let harness = Harness::start().await;
        let mut client = harness.connect(up.addr).await;
        let mut request =
            b"POST /c HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(chunk);
        client.send(&request).await;
        let resp = client.read_response("POST").await;
        assert_eq!(resp.head.status(), 400, "{:?}", lossy(chunk));
        assert_eq!(resp.head.get("x-lanemesh-error"), Some("bad_request_body"));
        client.expect_closed().await;
        assert!(up.targets().is_empty(), "{:?}", lossy(chunk));
    }
}

/// A response with both framings is read by Transfer-Encoding (RFC 9112 §6.3), and its
/// upstream connection is not used again: the next request goes out on a new one.
#[tokio::test]
async fn response_with_content_length_and_chunked_is_read_chunked_and_not_reused() {
    let up = AutoUpstream::start(|_, req| {
        if req.head.target() == "/both" {
            Reply::send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::send(ok(b"next"))
        }
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let resp = client
        .exchange(b"GET /both HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"hello");
    assert!(!resp.head.has("content-length"), "{resp:?}");
    let next = client
        .exchange(b"GET /next HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(next.body, b"next");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2, "connection reused");
}

/// Two different Content-Length values in a response: nobody can know where it ends, so the
/// client gets 502 and the upstream connection is dropped.
#[tokio::test]
async fn response_with_conflicting_content_lengths_gets_502() {
    let up = AutoUpstream::start(|_, req| {
        if req.head.target() == "/two" {
            Reply::send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            )
        } else {
            Reply::send(ok(b"next"))
        }
    })
    .await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    let resp = client
        .exchange(b"GET /two HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(resp.head.status(), 502, "{resp:?}");
    let next = client
        .exchange(b"GET /next HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(next.body, b"next");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// A local answer (the router's 429, the proxy's own 502) to HEAD announces its length but has
/// no body: the client would read the body as the next response.
#[tokio::test]
async fn local_answers_to_head_have_no_body() {
    let up = AutoUpstream::start(|_, _| Reply::send(ok(b"unused"))).await;
    let harness = Harness::start_with(Arc::new(LimitRouter)).await;
    let mut client = harness.connect(up.addr).await;
    let head = client
        .exchange(b"HEAD /x HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(head.head.status(), 429);
    assert_eq!(head.head.get("content-length"), Some("8"));
    let extra = client.quiet().await;
    assert!(
        extra.is_empty(),
        "body after a HEAD answer: {:?}",
        lossy(&extra)
    );
    let get = client
        .exchange(b"GET /x HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(get.head.start, "HTTP/1.1 429 Too Many Requests");
    assert_eq!(get.body, b"limited\n");

    // The proxy's own 502: nothing listens at the destination.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let harness = Harness::start().await;
    let mut client = harness.connect(gone).await;
    let head = client
        .exchange(b"HEAD /x HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(head.head.status(), 502);
    assert!(
        head.head.content_length().is_some_and(|n| n > 0),
        "{head:?}"
    );
    let extra = client.quiet().await;
    assert!(
        extra.is_empty(),
        "body after a HEAD answer: {:?}",
        lossy(&extra)
    );
}

/// The same over HTTP/2: hyper's server would send the body as DATA frames after HEAD.
#[tokio::test]
async fn local_answer_to_an_http2_head_has_no_body() {
    let up = AutoUpstream::start(|_, _| Reply::send(ok(b"unused"))).await;
    let harness = Harness::start_with(Arc::new(LimitRouter)).await;
    let client = harness.connect(up.addr).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client.stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("HEAD")
        .uri("http://svc.test/x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = timeout(STEP, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["content-length"], "8");
    let body = timeout(STEP, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(body.is_empty(), "{body:?}");
}

/// `Connection` names fields the client wants dropped at the next hop; it cannot make the
/// proxy drop `Host`, nor the lane tag the router adds (a client's own tag it names is dropped
/// before routing, and the router then decides).
#[tokio::test]
async fn connection_cannot_strip_host_or_the_routers_lane_tag() {
    let up = RawUpstream::bind().await;
    let harness = Harness::start_with(Arc::new(TagRouter)).await;
    let mut client = harness.connect(up.addr).await;
    client
        .send(
            b"GET /t HTTP/1.1\r\nHost: svc.test\r\nConnection: x-mse-tag, host, x-private\r\n\
              x-private: 1\r\n\r\n",
        )
        .await;
    let mut server = up.accept().await;
    let req = server.read_request().await.expect("request");
    assert_eq!(req.head.all("host"), ["svc.test"], "{:?}", req.head);
    assert_eq!(req.head.all("x-mse-tag"), ["gray"], "{:?}", req.head);
    assert!(
        !req.head.has("x-private") && !req.head.has("connection"),
        "{:?}",
        req.head
    );
    server.send(&ok(b"one")).await;
    assert_eq!(client.read_response("GET").await.body, b"one");

    client
        .send(
            b"GET /u HTTP/1.1\r\nHost: svc.test\r\nConnection: x-mse-tag\r\nx-mse-tag: blue\r\n\r\n",
        )
        .await;
    let req = server.read_request().await.expect("request");
    assert_eq!(req.head.all("x-mse-tag"), ["gray"], "{:?}", req.head);
    server.send(&ok(b"two")).await;
    assert_eq!(client.read_response("GET").await.body, b"two");
}

/// The upstream reads a request on a pooled connection and closes it without answering. Only a
/// safe method may be sent again; anything else reaches the upstream once and the client gets
/// 502 (the upstream may have acted on it).
#[tokio::test]
async fn only_safe_requests_are_resent_after_a_pooled_connection_broke() {
    for (method, resent) in [
        ("POST", false),
        ("PUT", false),
        ("DELETE", false),
        ("PATCH", false),
        ("GET", true),
    ] {
        let up = AutoUpstream::start(|conn, req| {
            if req.head.target() == "/warm" {
                Reply::send(ok(b"warm"))
            } else if conn == 1 {
                Reply::send(Vec::new()).then_close()
            } else {
                Reply::send(ok(b"fresh"))
            }
        })
        .await;
        let harness = Harness::start().await;
        let mut client = harness.connect(up.addr).await;
        let warm = client
            .exchange(b"GET /warm HTTP/1.1\r\nHost: svc.test\r\n\r\n")
            .await;
        assert_eq!(warm.body, b"warm");
        let request =
            format!("{method} /once HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 4\r\n\r\nbody");
        let resp = client.exchange(request.as_bytes()).await;
        tokio::time::sleep(QUIET).await;
        let sent = up.targets().iter().filter(|t| *t == "/once").count();
        if resent {
            assert_eq!(resp.head.status(), 200, "{method}");
            assert_eq!(resp.body, b"fresh", "{method}");
            assert_eq!(sent, 2, "{method}");
        } else {
            assert_eq!(resp.head.status(), 502, "{method}: {resp:?}");
            assert_eq!(resp.head.get("x-lanemesh-error"), Some("upstream_reset"));
            assert_eq!(sent, 1, "{method} sent again");
        }
    }
}

/// An HTTP/1.0 client knows neither interim responses nor chunked: the upstream's 100 is
/// dropped, its chunked body arrives de-chunked and ends with the connection.
#[tokio::test]
async fn http10_client_gets_no_interim_response_and_a_dechunked_body() {
    for keep_alive in [false, true] {
        let up = RawUpstream::bind().await;
        let harness = Harness::start().await;
        let mut client = harness.connect(up.addr).await;
        let connection = if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            ""
        };
        client
            .send(
                format!("POST /old HTTP/1.0\r\n{connection}Content-Length: 2\r\n\r\nhi").as_bytes(),
            )
            .await;
        let mut server = up.accept().await;
        let req = server.read_request().await.expect("request");
        assert_eq!(req.body, b"hi");
        server
            .send(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                  X-A: 1\r\n\r\n5\r\nhello\r\n6;e=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
            )
            .await;
        let all = client.until_eof().await;
        let text = lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
        let head_end = find(&all, b"\r\n\r\n").expect("a head") + 4;
        let head = Head::parse(&all[..head_end]);
        assert!(!head.has("transfer-encoding"), "{head:?}");
        assert_eq!(head.get("x-a"), Some("1"));
        assert_eq!(&all[head_end..], b"hello world", "keep_alive={keep_alive}");
        drop(server);
    }
}

/// Dribbled one byte per write, the head still parses (the relay looks for its end in the new
/// bytes only and parses once).
#[tokio::test]
async fn a_request_head_dribbled_byte_by_byte_is_parsed() {
    let up = AutoUpstream::start(|_, req| Reply::send(ok(req.head.target().as_bytes()))).await;
    let harness = Harness::start().await;
    let mut client = harness.connect(up.addr).await;
    client.stream.set_nodelay(true).unwrap();
    for byte in b"GET /drip HTTP/1.1\r\nHost: svc.test\r\nX-A: 1\r\n\r\n" {
        client.send(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let resp = client.read_response("GET").await;
    assert_eq!(resp.head.status(), 200);
    assert_eq!(resp.body, b"/drip");
}

/// A keep-alive client connection that sends nothing after its response is closed after the
/// client idle timeout, not held forever.
#[tokio::test]
async fn an_idle_keep_alive_client_connection_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(400);
    let up = AutoUpstream::start(|_, _| Reply::send(ok(b"ok"))).await;
    let config = ProxyConfig {
        http_idle_timeout: IDLE,
        ..test_config()
    };
    let relay = Http1Relay::new(&config, Arc::new(PassthroughRouter));
    let addr = start_relay(relay, up.addr).await;
    let mut client = connect_to(addr).await;
    let resp = client
        .exchange(b"GET /a HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    assert_eq!(resp.body, b"ok");
    let idle_from = tokio::time::Instant::now();
    client.expect_closed().await;
    let waited = idle_from.elapsed();
    assert!(
        waited >= IDLE - Duration::from_millis(50),
        "closed after {waited:?}"
    );
}

/// A request body that stops arriving: the client gets 408 and both connections end.
#[tokio::test]
async fn a_stalled_request_body_ends_the_exchange() {
    let up = RawUpstream::bind().await;
    let config = ProxyConfig {
        body_idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let relay = Http1Relay::new(&config, Arc::new(PassthroughRouter));
    let addr = start_relay(relay, up.addr).await;
    let mut client = connect_to(addr).await;
    client
        .send(b"POST /stall HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let mut server = up.accept().await;
    let head = server.head().await;
    assert_eq!(head.target(), "/stall");
    let resp = client.read_response("POST").await;
    assert_eq!(resp.head.status(), 408, "{resp:?}");
    assert_eq!(
        resp.head.get("x-lanemesh-error"),
        Some("request_body_timeout")
    );
    client.expect_closed().await;
    // The upstream got the 3 bytes there were, then its connection ended.
    assert_eq!(server.until_eof().await, b"abc");
}

/// A response body that stops arriving: the client gets what there was, then the close.
#[tokio::test]
async fn a_stalled_response_body_ends_the_exchange() {
    let up = RawUpstream::bind().await;
    let config = ProxyConfig {
        body_idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let relay = Http1Relay::new(&config, Arc::new(PassthroughRouter));
    let addr = start_relay(relay, up.addr).await;
    let mut client = connect_to(addr).await;
    client
        .send(b"GET /stall HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await;
    let mut server = up.accept().await;
    server.read_request().await.expect("request");
    server
        .send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let head = client.head().await;
    assert_eq!(head.status(), 200);
    assert_eq!(client.until_eof().await, b"abc");
    assert!(server.until_eof().await.is_empty());
}
