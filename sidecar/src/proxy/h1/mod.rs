//! HTTP/1.1 proxying without an HTTP library's connection machinery in between: one task per
//! client connection reads a request head, asks the [`Router`], writes the head to a pooled
//! upstream connection and relays the bodies verbatim, framing-aware, in that same task.
//!
//! Why not hyper here (it still serves HTTP/2): hyper's server and client each run their own
//! state machine, the client in a separate connection task fed through channels, and every
//! head is rebuilt field by field on the way out. For a proxy that only routes on the request
//! head that is most of the CPU a request costs besides its syscalls. Here the response head is
//! copied through line by line, body bytes are written as they were read, and a small
//! response goes out in one write.
//!
//! What the relay guarantees (RFC 9110/9112): requests with ambiguous framing (both
//! `Content-Length` and `Transfer-Encoding`, conflicting lengths, a transfer coding that does
//! not end in `chunked`) get 400 and never reach the upstream; chunked bodies are checked chunk
//! by chunk; hop-by-hop fields are removed both ways; interim `1xx` responses
//! (`100 Continue`) are relayed; HEAD, 204 and 304 responses have no body; a response without a
//! length ends the client connection after it; an accepted upgrade (`101`, WebSocket) turns
//! the connection into a byte tunnel; pipelined requests are answered in order. The request
//! head must arrive within the header-read timeout of its first byte (else 408) and fit in
//! the configured size (else 431).

pub mod body;
pub mod head;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ProxyConfig;

use super::http::{error_local, strip_hop_by_hop};
use super::pool::{Http1Pool, PoolError, Upstream};
use super::router::{
    ConnContext, HttpOutcome, LocalResponse, RequestState, ResponseEnd, RouteDecision, Routed,
    Router, UpstreamFailure,
};
use super::shutdown::ShutdownSignal;
use body::{Chunked, ChunkedError, Framing};
use head::{ClientSide, HeadError, RequestHead, ResponseHead};

/// Smallest free space a read buffer gets before a read.
const READ_CHUNK: usize = 16 * 1024;

/// The HTTP/1 relay of one data-plane worker.
#[derive(Debug)]
pub struct Http1Relay {
    router: Arc<dyn Router>,
    pool: Http1Pool,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

/// Why an exchange with the upstream produced no response head.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Connect(#[from] PoolError),
    #[error("upstream {target}: {source}")]
    Io {
        target: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {target} closed the connection before a response")]
    Closed { target: SocketAddr },
    #[error("upstream {target} sent an invalid response: {source}")]
    Response {
        target: SocketAddr,
        source: HeadError,
    },
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The client's request body broke off or was malformed: the client's fault, not the
    /// upstream's.
    #[error("request body: {0}")]
    Client(BodyError),
}

/// A body that could not be relayed.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("connection closed before the body ended")]
    Truncated,
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] ChunkedError),
    #[error("reading: {0}")]
    Read(std::io::Error),
    #[error("writing: {0}")]
    Write(std::io::Error),
}

/// How much of a body is still to come.
#[derive(Debug)]
enum Remaining {
    Done,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Remaining {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunked::new()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// How many bytes at the front of `buf` belong to the body; updates what remains.
    fn take(&mut self, buf: &[u8]) -> Result<usize, ChunkedError> {
        let n = match self {
            Self::Done => 0,
            Self::Length(left) => {
                // Fits: bounded by buf.len().
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *self = Self::Done;
                }
                n
            }
            Self::Chunked(scanner) => {
                let n = scanner.scan(buf)?;
                if scanner.is_done() {
                    *self = Self::Done;
                }
                n
            }
            Self::UntilClose => buf.len(),
        };
        Ok(n)
    }
}

/// A request head answered by the proxy itself: status, `x-lanemesh-error` reason, text.
struct Refusal(StatusCode, &'static str, &'static str);

/// The request body still to relay, in a form that survives being cancelled between steps:
/// every await in [`BodyRelay::run`] either completes or changes nothing, and the bytes already
/// counted against the framing but not yet written are remembered in `pending`.
#[derive(Debug)]
struct BodyRelay {
    remaining: Remaining,
    pending: usize,
}

impl BodyRelay {
    fn is_done(&self) -> bool {
        self.pending == 0 && self.remaining.is_done()
    }

    /// Relays from `buf` and the client until the body has ended; `buf` keeps whatever follows
    /// the body (the next pipelined request).
    async fn run<R, W>(
        &mut self,
        client: &mut R,
        buf: &mut BytesMut,
        upstream: &mut W,
    ) -> Result<(), BodyError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.pending > 0 {
                let n = upstream
                    .write(&buf[..self.pending])
                    .await
                    .map_err(BodyError::Write)?;
                if n == 0 {
                    return Err(BodyError::Write(std::io::ErrorKind::WriteZero.into()));
                }
                buf.advance(n);
                self.pending -= n;
                continue;
            }
            if self.remaining.is_done() {
                return Ok(());
            }
            if buf.is_empty() {
                reserve(buf);
                match client.read_buf(buf).await {
                    Ok(0) => return Err(BodyError::Truncated),
                    Ok(_) => {}
                    Err(error) => return Err(BodyError::Read(error)),
                }
            }
            self.pending = self.remaining.take(buf)?;
        }
    }
}

/// What the client connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
}

/// The upstream's answer, ready to relay.
struct Answer {
    upstream: Upstream,
    head: ResponseHead,
    /// The rest of the request body, when the response began before it ended (a full-duplex
    /// stream, or an early answer such as 413).
    body: BodyRelay,
}

impl Http1Relay {
    /// A relay with its own (empty) upstream pool.
    pub fn new(config: &ProxyConfig, router: Arc<dyn Router>) -> Self {
        Self {
            router,
            pool: Http1Pool::new(config.into()),
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
        }
    }

    /// Serves one HTTP/1 client connection; `buf` holds the bytes protocol detection read.
    /// Ends when the client closes, on an error, or after the shutdown once no request is in
    /// flight.
    pub async fn serve(
        &self,
        conn: ConnContext,
        mut client: TcpStream,
        mut buf: BytesMut,
        mut signal: ShutdownSignal,
    ) {
        let mut req_out = BytesMut::with_capacity(1024);
        let mut resp_out = BytesMut::with_capacity(1024);
        loop {
            let head = match self.read_head(&mut client, &mut buf, &mut signal).await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(Refusal(status, reason, text)) => {
                    tracing::debug!(%status, reason, "refusing request head");
                    let local = error_local(status, reason, text);
                    write_local(&mut client, &mut resp_out, &local, false).await;
                    return;
                }
            };
            let next = self
                .exchange(
                    &conn,
                    &mut client,
                    &mut buf,
                    &mut req_out,
                    &mut resp_out,
                    head,
                    &signal,
                )
                .await;
            match next {
                Next::KeepAlive if !signal.is_triggered() => {}
                _ => return,
            }
        }
    }

    /// The next request head; `None` when the client closed or the shutdown came while idle.
    async fn read_head(
        &self,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        signal: &mut ShutdownSignal,
    ) -> Result<Option<RequestHead>, Refusal> {
        let mut deadline = None;
        loop {
            if !buf.is_empty() {
                match head::parse_request(buf) {
                    Ok(Some(head)) => return Ok(Some(head)),
                    Ok(None) if buf.len() >= self.max_header_bytes => {
                        return Err(Refusal(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request_head_too_large",
                            "request head too large",
                        ));
                    }
                    Ok(None) => {}
                    Err(HeadError::TooManyHeaders) => {
                        return Err(Refusal(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request_head_too_large",
                            "too many header fields",
                        ));
                    }
                    Err(error) => {
                        tracing::debug!(%error, "malformed request head");
                        return Err(Refusal(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "malformed request head",
                        ));
                    }
                }
            }
            reserve(buf);
            let read = if buf.is_empty() {
                // Idle between requests: no deadline, but the shutdown ends the wait.
                tokio::select! {
                    () = signal.triggered() => return Ok(None),
                    read = client.read_buf(buf) => read,
                }
            } else {
                // The head has begun: it must be complete within the header-read timeout
                // (slowloris guard).
                let until =
                    *deadline.get_or_insert_with(|| Instant::now() + self.header_read_timeout);
                match tokio::time::timeout_at(until, client.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        return Err(Refusal(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_head_timeout",
                            "request head not complete within the header-read timeout",
                        ));
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// One request/response exchange.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        conn: &ConnContext,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        req_out: &mut BytesMut,
        resp_out: &mut BytesMut,
        mut head: RequestHead,
        signal: &ShutdownSignal,
    ) -> Next {
        let Routed {
            decision,
            mut state,
            delay,
            timeout,
        } = self.router.route_http(conn, &mut head.parts);
        let client_keep_alive = head.keep_alive && !signal.is_triggered();
        let target = match decision {
            RouteDecision::Passthrough => conn.default_target,
            RouteDecision::Forward(addr) => addr,
            RouteDecision::Respond(local) => {
                // The request body is not read: the connection can only go on without one.
                let keep = client_keep_alive && Remaining::new(head.framing).is_done();
                let written = write_local(client, resp_out, &local, keep).await;
                drop(state);
                return if keep && written {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
        };
        strip_hop_by_hop(&mut head.parts.headers, head.upgrade);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let client_side = ClientSide {
            keep_alive: client_keep_alive,
            http10: head.parts.version == http::Version::HTTP_10,
            head_request: head.parts.method == Method::HEAD,
            upgrade: head.upgrade,
        };
        let started = Instant::now();
        let sent = self.send(target, client, buf, req_out, resp_out, &head, client_side);
        let result = match timeout {
            None => sent.await,
            Some(limit) => tokio::time::timeout(limit, sent)
                .await
                .unwrap_or(Err(Failure::Timeout(limit))),
        };
        if let Err(Failure::Client(error)) = &result {
            tracing::debug!(%error, "client request body failed");
            if matches!(error, BodyError::Chunked(_)) {
                let local = error_local(
                    StatusCode::BAD_REQUEST,
                    "bad_request_body",
                    "malformed chunked request body",
                );
                write_local(client, resp_out, &local, false).await;
            }
            return Next::Close;
        }
        let outcome = HttpOutcome {
            target,
            result: match &result {
                Ok(answer) => Ok(answer.head.status),
                Err(Failure::Connect(_)) => Err(UpstreamFailure::Connect),
                Err(Failure::Timeout(_)) => Err(UpstreamFailure::Timeout),
                Err(_) => Err(UpstreamFailure::Reset),
            },
            elapsed: started.elapsed(),
            grpc: result.as_ref().is_ok_and(|a| a.head.grpc),
            grpc_status: result.as_ref().ok().and_then(|a| a.head.grpc_status),
        };
        if let Some(state) = state.as_mut() {
            state.on_outcome(&outcome);
        }
        self.router.on_http_outcome(conn, &outcome);
        let Answer {
            mut upstream,
            head: response,
            body: mut request_body,
        } = match result {
            Ok(answer) => answer,
            Err(failure) => {
                let local = match &failure {
                    Failure::Timeout(limit) => {
                        tracing::debug!(%target, ?limit, "upstream request timed out");
                        error_local(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            &format!("no response from {target} within {limit:?}"),
                        )
                    }
                    Failure::Connect(_) => {
                        tracing::warn!(%target, error = %failure, "upstream request failed");
                        error_local(
                            StatusCode::BAD_GATEWAY,
                            "upstream_connect",
                            &format!("upstream connect error ({target})"),
                        )
                    }
                    _ => {
                        tracing::warn!(%target, error = %failure, "upstream request failed");
                        error_local(
                            StatusCode::BAD_GATEWAY,
                            "upstream_reset",
                            &format!("upstream connection failed before a response ({target})"),
                        )
                    }
                };
                // Whether the request body was read to its end is unknown here: close.
                let keep = client_keep_alive
                    && Remaining::new(head.framing).is_done()
                    && !matches!(failure, Failure::Timeout(_));
                let written = write_local(client, resp_out, &local, keep).await;
                return if keep && written {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
        };
        drop(head);

        if response.is_upgrade() {
            if !client_side.upgrade {
                // A 101 nobody asked for: the upstream now speaks something else.
                end(&mut state, ResponseEnd::Error);
                return Next::Close;
            }
            end(&mut state, ResponseEnd::Complete);
            drop(state);
            tunnel(client, buf, resp_out, upstream).await;
            return Next::Close;
        }

        let relayed = if request_body.is_done() {
            let Upstream { stream, buf, .. } = &mut upstream;
            relay_response(stream, buf, client, resp_out, response.framing).await
        } else {
            relay_duplex(
                client,
                buf,
                &mut upstream,
                resp_out,
                response.framing,
                &mut request_body,
            )
            .await
        };
        let request_done = request_body.is_done();
        match relayed {
            Ok(()) => {
                end(&mut state, ResponseEnd::Complete);
                if response.upstream_keep_alive && request_done && upstream.buf.is_empty() {
                    self.pool.give_back(target, upstream);
                }
                if response.client_keep_alive && request_done {
                    Next::KeepAlive
                } else {
                    Next::Close
                }
            }
            Err(error) => {
                tracing::debug!(%target, %error, "response body relay ended early");
                end(&mut state, ResponseEnd::Error);
                Next::Close
            }
        }
    }

    /// Sends the request (head, then body) and reads the response head, relaying interim
    /// responses to the client meanwhile. A request that fails on a reused connection before any
    /// response byte, and could be sent again in full, is retried on another connection.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        target: SocketAddr,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        req_out: &mut BytesMut,
        resp_out: &mut BytesMut,
        head: &RequestHead,
        client_side: ClientSide,
    ) -> Result<Answer, Failure> {
        req_out.clear();
        head::encode_request(head, req_out);
        let mut remaining = Remaining::new(head.framing);
        let n = remaining
            .take(buf)
            .map_err(|e| Failure::Client(BodyError::Chunked(e)))?;
        req_out.extend_from_slice(&buf[..n]);
        buf.advance(n);
        // Everything the upstream needs is in `req_out`: a retry can send it again.
        let resendable = remaining.is_done();
        let mut relay = BodyRelay {
            remaining,
            pending: 0,
        };
        let idempotent = matches!(
            head.parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        loop {
            let mut upstream = match self.pool.checkout(target) {
                Some(upstream) => upstream,
                None => self.pool.connect(target).await?,
            };
            let reused = upstream.reused;
            if let Err(source) = upstream.stream.write_all(req_out).await {
                if reused && resendable {
                    continue;
                }
                return Err(Failure::Io { target, source });
            }
            let body_done = AtomicBool::new(relay.is_done());
            let result = {
                let (mut client_read, mut client_write) = client.split();
                let Upstream {
                    stream,
                    buf: upstream_buf,
                    ..
                } = &mut upstream;
                let (mut upstream_read, mut upstream_write) = stream.split();
                let body = async {
                    relay
                        .run(&mut client_read, buf, &mut upstream_write)
                        .await?;
                    body_done.store(true, Ordering::Relaxed);
                    Ok::<(), BodyError>(())
                };
                let response = read_response_head(
                    &mut upstream_read,
                    upstream_buf,
                    &mut client_write,
                    resp_out,
                    client_side,
                    &body_done,
                );
                tokio::pin!(body, response);
                let mut body_running = !body_done.load(Ordering::Relaxed);
                loop {
                    tokio::select! {
                        relayed = &mut body, if body_running => {
                            body_running = false;
                            match relayed {
                                Ok(()) => {}
                                Err(BodyError::Write(_)) => {
                                    // The upstream stopped reading; its response (often an
                                    // error) may still come.
                                }
                                Err(error) => break Err(ReadHead::Client(error)),
                            }
                        }
                        head = &mut response => break head,
                    }
                }
            };
            match result {
                Ok(head) => {
                    return Ok(Answer {
                        upstream,
                        head,
                        body: relay,
                    });
                }
                Err(ReadHead::Client(error)) => return Err(Failure::Client(error)),
                Err(ReadHead::Closed { any_bytes }) => {
                    if reused && resendable && idempotent && !any_bytes {
                        continue;
                    }
                    return Err(Failure::Closed { target });
                }
                Err(ReadHead::Io { source, any_bytes }) => {
                    if reused && resendable && idempotent && !any_bytes {
                        continue;
                    }
                    return Err(Failure::Io { target, source });
                }
                Err(ReadHead::Invalid(source)) => return Err(Failure::Response { target, source }),
                Err(ReadHead::ClientGone(source)) => {
                    return Err(Failure::Client(BodyError::Write(source)));
                }
            }
        }
    }
}

/// Why no final response head was read.
enum ReadHead {
    /// The upstream closed the connection; `any_bytes`: after sending part of a response.
    Closed {
        any_bytes: bool,
    },
    /// Reading failed (reset); `any_bytes` as for `Closed`.
    Io {
        source: std::io::Error,
        any_bytes: bool,
    },
    Invalid(HeadError),
    /// Relaying an interim response to the client failed.
    ClientGone(std::io::Error),
    /// The request body from the client failed.
    Client(BodyError),
}

/// Reads the final response head into `out` (re-encoded for the client), relaying interim
/// `1xx` responses to the client first.
async fn read_response_head<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    out: &mut BytesMut,
    client_side: ClientSide,
    body_done: &AtomicBool,
) -> Result<ResponseHead, ReadHead>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut any_bytes = false;
    loop {
        if !buf.is_empty() {
            out.clear();
            let side = ClientSide {
                // A client whose request body is not through yet cannot send another request.
                keep_alive: client_side.keep_alive && body_done.load(Ordering::Relaxed),
                ..client_side
            };
            match head::parse_response(buf, side, out) {
                Ok(Some(head)) if head.is_interim() => {
                    client.write_all(out).await.map_err(ReadHead::ClientGone)?;
                    continue;
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(error) => return Err(ReadHead::Invalid(error)),
            }
            if buf.len() > 64 * 1024 {
                return Err(ReadHead::Invalid(HeadError::Invalid("response head size")));
            }
        }
        reserve(buf);
        match upstream.read_buf(buf).await {
            Ok(0) => return Err(ReadHead::Closed { any_bytes }),
            Ok(_) => any_bytes = true,
            Err(source) => return Err(ReadHead::Io { source, any_bytes }),
        }
    }
}

/// Writes the response head in `head` and relays the body behind it; a small body that came
/// with the head goes out in the same write.
async fn relay_response<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    head: &mut BytesMut,
    framing: Framing,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut remaining = Remaining::new(framing);
    let n = remaining.take(buf)?;
    head.extend_from_slice(&buf[..n]);
    buf.advance(n);
    client.write_all(head).await.map_err(BodyError::Write)?;
    while !remaining.is_done() {
        reserve(buf);
        match upstream.read_buf(buf).await {
            Ok(0) if matches!(remaining, Remaining::UntilClose) => break,
            Ok(0) => return Err(BodyError::Truncated),
            Ok(_) => {}
            Err(error) => return Err(BodyError::Read(error)),
        }
        let n = remaining.take(buf)?;
        client
            .write_all(&buf[..n])
            .await
            .map_err(BodyError::Write)?;
        buf.advance(n);
    }
    Ok(())
}

/// Relays the response while the rest of the request body still flows the other way. Returns
/// whether the response was relayed in full; the request body may be left unfinished when the
/// response ended first (the connections are then not reused).
async fn relay_duplex(
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    upstream: &mut Upstream,
    head: &mut BytesMut,
    framing: Framing,
    body: &mut BodyRelay,
) -> Result<(), BodyError> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.stream.split();
    let request = body.run(&mut client_read, client_buf, &mut upstream_write);
    let response = relay_response(
        &mut upstream_read,
        &mut upstream.buf,
        &mut client_write,
        head,
        framing,
    );
    tokio::pin!(request, response);
    let mut request_running = true;
    loop {
        tokio::select! {
            sent = &mut request, if request_running => {
                request_running = false;
                match sent {
                    // The upstream no longer reads; its response may still be on its way.
                    Ok(()) | Err(BodyError::Write(_)) => {}
                    Err(error) => return Err(error),
                }
            }
            relayed = &mut response => return relayed,
        }
    }
}

/// After a `101`: the response head to the client, then bytes both ways until either side
/// is done.
async fn tunnel(
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    head: &mut BytesMut,
    mut upstream: Upstream,
) {
    // Bytes the upstream sent right behind its 101 already belong to the new protocol, as do
    // the client's bytes behind its request.
    head.extend_from_slice(&upstream.buf);
    upstream.buf.clear();
    if client.write_all(head).await.is_err() {
        return;
    }
    if !client_buf.is_empty() {
        if upstream.stream.write_all(client_buf).await.is_err() {
            return;
        }
        client_buf.clear();
    }
    if let Err(error) = tokio::io::copy_bidirectional(client, &mut upstream.stream).await {
        tracing::debug!(%error, "upgraded connection ended with error");
    }
}

fn end(state: &mut Option<Box<dyn RequestState>>, how: ResponseEnd<'_>) {
    if let Some(state) = state.as_mut() {
        state.on_end(how);
    }
}

/// Writes a local response; false when the client is gone.
async fn write_local(
    client: &mut TcpStream,
    out: &mut BytesMut,
    local: &LocalResponse,
    keep_alive: bool,
) -> bool {
    out.clear();
    head::encode_local(local.status, &local.headers, &local.body, keep_alive, out);
    client.write_all(out).await.is_ok()
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
