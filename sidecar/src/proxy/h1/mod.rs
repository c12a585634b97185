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
//! `Content-Length` and `Transfer-Encoding`, conflicting lengths, a `Transfer-Encoding` other
//! than one `chunked`, one under HTTP/1.0, a bare LF or obs-fold in the head) get 400 and never
//! reach the upstream; chunked bodies are checked chunk by chunk against the RFC grammar; a
//! chunked request goes out as `transfer-encoding: chunked` whatever its spelling; hop-by-hop
//! fields are removed both ways, on requests before the router sees them; interim `1xx`
//! responses (`100 Continue`) are relayed to HTTP/1.1 clients only, and an HTTP/1.0 client gets
//! a chunked response de-chunked and close-delimited; HEAD, 204 and 304 responses (local ones
//! too) have no body; a response without a length ends the client connection after it; an
//! upstream connection whose response had both framings is not reused; an accepted upgrade
//! (`101`, WebSocket) turns the connection into a byte tunnel; pipelined requests are answered
//! in order. The request head must arrive within the header-read timeout of its first byte
//! (else 408) and fit in the configured size (else 431); an idle keep-alive connection is
//! closed after the client idle timeout; a body (either way) or a response head that makes no
//! progress for the body idle timeout ends the exchange.

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

use super::config::ProxyConfig;

use super::headers::strip_hop_by_hop;
use super::local::{self, NoResponse};
use super::pool::{Http1Pool, PoolError, Upstream};
use super::replay::MAX_REPLAY_BYTES;
use super::router::{
    ConnContext, HttpOutcome, LocalResponse, RequestState, ResponseEnd, RouteDecision, Routed,
    Router,
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
    client_idle_timeout: Duration,
    body_idle_timeout: Duration,
    /// `--upgrade-protocols`, lower case.
    upgrade_protocols: Vec<String>,
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
    /// Writing the request head made no progress: the upstream does not read.
    #[error("upstream {target} did not take the request within {limit:?}")]
    Unread { target: SocketAddr, limit: Duration },
    /// The client's request body broke off or was malformed: the client's fault, not the
    /// upstream's.
    #[error("request body: {0}")]
    Client(BodyError),
}

impl Failure {
    /// What the router and the client are told.
    fn no_response(&self) -> NoResponse {
        match self {
            Self::Connect(_) => NoResponse::Connect,
            Self::Timeout(limit) | Self::Unread { limit, .. } => NoResponse::Timeout(*limit),
            Self::Io { .. } | Self::Closed { .. } | Self::Response { .. } | Self::Client(_) => {
                NoResponse::Reset
            }
        }
    }
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
    /// Nothing was read for the body idle timeout.
    #[error("no progress within {0:?}")]
    Stalled(Duration),
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

    /// [`Remaining::take`] that appends the body's data to `out` without the chunked coding.
    fn take_decoded(&mut self, buf: &[u8], out: &mut BytesMut) -> Result<usize, ChunkedError> {
        let Self::Chunked(scanner) = self else {
            let n = self.take(buf)?;
            out.extend_from_slice(&buf[..n]);
            return Ok(n);
        };
        let n = scanner.scan_with(buf, |data| out.extend_from_slice(data))?;
        if scanner.is_done() {
            *self = Self::Done;
        }
        Ok(n)
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
        idle: Duration,
    ) -> Result<(), BodyError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.pending > 0 {
                // `write` (not `write_all`): a timed-out write has written nothing, so
                // `pending` stays exact.
                let n = match tokio::time::timeout(idle, upstream.write(&buf[..self.pending])).await
                {
                    Ok(written) => written.map_err(BodyError::Write)?,
                    Err(_) => return Err(BodyError::Write(std::io::ErrorKind::TimedOut.into())),
                };
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
            if buf.is_empty() && read_within(client, buf, idle).await? == 0 {
                return Err(BodyError::Truncated);
            }
            self.pending = self.remaining.take(buf)?;
        }
    }
}

/// One client connection with its scratch buffers, reused by every exchange on it.
struct ClientConn {
    conn: ConnContext,
    stream: TcpStream,
    /// Bytes read from the client and not consumed yet (detection's bytes first).
    buf: BytesMut,
    out: Scratch,
}

/// Buffers for what the relay writes, kept across exchanges so a connection allocates them once.
struct Scratch {
    /// The request head re-encoded for the upstream, plus the body bytes already in hand.
    req_out: BytesMut,
    /// Response heads and local answers on their way to the client.
    resp_out: BytesMut,
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
    /// A relay with its own (empty) upstream pool and `config`'s limits.
    pub fn new(config: &ProxyConfig, router: Arc<dyn Router>) -> Self {
        Self {
            router,
            pool: Http1Pool::new(config.into()),
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
            client_idle_timeout: config.http_idle_timeout,
            body_idle_timeout: config.body_idle_timeout,
            upgrade_protocols: config.upgrade_protocols.clone(),
        }
    }

    /// Serves one HTTP/1 client connection; `buf` holds the bytes protocol detection read.
    /// Ends when the client closes, on an error, or after the shutdown once no request is in
    /// flight.
    pub async fn serve(
        &self,
        conn: ConnContext,
        client: TcpStream,
        buf: BytesMut,
        mut signal: ShutdownSignal,
    ) {
        let mut c = ClientConn {
            conn,
            stream: client,
            buf,
            out: Scratch {
                req_out: BytesMut::with_capacity(1024),
                resp_out: BytesMut::with_capacity(1024),
            },
        };
        loop {
            let head = match self.read_head(&mut c.stream, &mut c.buf, &mut signal).await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(Refusal(status, reason, text)) => {
                    tracing::debug!(%status, reason, "refusing request head");
                    let local = local::error(status, reason, text);
                    write_local(&mut c.stream, &mut c.out.resp_out, &local, CLOSING).await;
                    return;
                }
            };
            match self.exchange(&mut c, head, &signal).await {
                Next::KeepAlive if !signal.is_triggered() => {}
                _ => return,
            }
        }
    }

    /// The next request head; `None` when the client closed, stayed idle past the client idle
    /// timeout, or the shutdown came while idle.
    async fn read_head(
        &self,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        signal: &mut ShutdownSignal,
    ) -> Result<Option<RequestHead>, Refusal> {
        const TOO_LARGE: Refusal = Refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_head_too_large",
            "request head too large",
        );
        let mut deadline = None;
        let mut scanned = 0;
        loop {
            let parsed = match head::find_head_end(buf, &mut scanned) {
                Ok(Some(end)) if end > self.max_header_bytes => return Err(TOO_LARGE),
                Ok(Some(_)) => head::parse_request(buf),
                Ok(None) if buf.len() >= self.max_header_bytes => return Err(TOO_LARGE),
                Ok(None) => Ok(None),
                Err(error) => Err(error),
            };
            match parsed {
                Ok(Some(head)) => return Ok(Some(head)),
                // Incomplete, or only empty lines before the request line so far.
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
            reserve(buf);
            let read = if buf.is_empty() {
                // Idle between requests: the shutdown or the idle timeout ends the wait.
                tokio::select! {
                    () = signal.triggered() => return Ok(None),
                    () = tokio::time::sleep(self.client_idle_timeout) => return Ok(None),
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
    async fn exchange(
        &self,
        c: &mut ClientConn,
        mut head: RequestHead,
        signal: &ShutdownSignal,
    ) -> Next {
        let ClientConn {
            conn,
            stream: client,
            buf,
            out,
        } = c;
        let conn = &*conn;
        // Only allowed upgrades switch protocols: any other (h2c above all) would turn the
        // connection into a tunnel past routing and governance, so it goes out as a plain
        // request whose upgrade headers the stripping below removes.
        if head.upgrade && !head::upgrade_allowed(&head.parts.headers, &self.upgrade_protocols) {
            tracing::debug!("upgrade not allowed; forwarding as a plain request");
            head.upgrade = false;
        }
        // Before routing: a field the client names in `Connection` must not take away what the
        // router adds (the lane tag).
        strip_hop_by_hop(&mut head.parts.headers, head.upgrade);
        let client_side = ClientSide {
            keep_alive: head.keep_alive && !signal.is_triggered() && !self.router.closing(conn),
            http10: head.parts.version == http::Version::HTTP_10,
            head_request: head.parts.method == Method::HEAD,
            upgrade: head.upgrade,
        };
        let client_keep_alive = client_side.keep_alive;
        // For local answers: whether the connection goes on is decided per answer.
        let local_side = |keep_alive| ClientSide {
            keep_alive,
            ..client_side
        };
        let Routed {
            decision,
            mut state,
            delay,
            timeout,
            retries,
        } = self.router.route_http(conn, &mut head.parts);
        let mut target = match decision {
            RouteDecision::Passthrough => conn.default_target,
            RouteDecision::Forward(addr) => addr,
            RouteDecision::Respond(local) => {
                // The request body is not read: the connection can only go on without one.
                let keep = client_keep_alive && Remaining::new(head.framing).is_done();
                let written =
                    write_local(client, &mut out.resp_out, &local, local_side(keep)).await;
                drop(state);
                return if keep && written {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        // A request that may be retried is sent again only when it is in hand in full. A client
        // that sent `Expect: 100-continue` waits for the upstream's 100 before its body: its
        // body is not waited for (it is not replayable unless it came with the head).
        let expects_continue = head
            .parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let in_hand = retries.is_some()
            && !client_side.upgrade
            && if expects_continue {
                body_in_hand_now(buf, head.framing)
            } else {
                body_in_hand(client, buf, head.framing, self.body_idle_timeout).await
            };
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
        let mut again = false;
        let (result, outcome) = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let limit = match retries {
                Some(attempts) => attempts.limit(left),
                None => left,
            };
            let request = if again {
                Ok(Prepared::again(&head))
            } else {
                Prepared::new(&head, buf, &mut out.req_out)
            };
            let attempt_started = Instant::now();
            let result = match request {
                Err(failure) => Err(failure),
                Ok(request) => {
                    let sent = self.send(target, client, buf, out, request, client_side);
                    match limit {
                        None => sent.await,
                        Some(limit) => tokio::time::timeout(limit, sent)
                            .await
                            .unwrap_or(Err(Failure::Timeout(limit))),
                    }
                }
            };
            if let Err(Failure::Client(error)) = &result {
                tracing::debug!(%error, "client request body failed");
                let local = match error {
                    BodyError::Chunked(_) => Some(local::error(
                        StatusCode::BAD_REQUEST,
                        "bad_request_body",
                        "malformed chunked request body",
                    )),
                    BodyError::Stalled(_) => Some(local::error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_body_timeout",
                        "request body made no progress within the body idle timeout",
                    )),
                    _ => None,
                };
                if let Some(local) = local {
                    write_local(client, &mut out.resp_out, &local, local_side(false)).await;
                }
                return Next::Close;
            }
            let failure = result.as_ref().err().map(Failure::no_response);
            let outcome = HttpOutcome {
                target,
                result: match (&result, failure) {
                    (Ok(answer), _) => Ok(answer.head.status),
                    (Err(_), failure) => Err(failure.unwrap_or(NoResponse::Reset).outcome()),
                },
                elapsed: attempt_started.elapsed(),
                grpc: result.as_ref().is_ok_and(|a| a.head.grpc),
                grpc_status: result.as_ref().ok().and_then(|a| a.head.grpc_status),
            };
            self.router.on_http_outcome(conn, &outcome);
            let (true, Some(state)) = (retries.is_some(), state.as_mut()) else {
                break (result, outcome);
            };
            let time_left = deadline.is_none_or(|d| d > Instant::now());
            let replayable = in_hand && time_left;
            match state.retry(&outcome, replayable) {
                Some(retry) if replayable => {
                    // The abandoned answer's connection is closed, not pooled: its response
                    // body was not read.
                    drop(result);
                    let wait = match deadline {
                        Some(d) => retry
                            .backoff
                            .min(d.saturating_duration_since(Instant::now())),
                        None => retry.backoff,
                    };
                    tokio::time::sleep(wait).await;
                    target = retry.target;
                    again = true;
                }
                _ => break (result, outcome),
            }
        };
        if let Some(state) = state.as_mut() {
            state.on_outcome(&outcome);
        }
        let Answer {
            mut upstream,
            head: response,
            body: mut request_body,
        } = match result {
            Ok(answer) => answer,
            Err(failure) => {
                let kind = failure.no_response();
                match kind {
                    NoResponse::Timeout(limit) => {
                        tracing::debug!(%target, ?limit, "upstream request timed out");
                    }
                    _ => tracing::warn!(%target, error = %failure, "upstream request failed"),
                }
                let local = kind.local(target);
                // Whether the request body was read to its end is unknown here: close.
                let keep = client_keep_alive
                    && Remaining::new(head.framing).is_done()
                    && !matches!(failure, Failure::Timeout(_) | Failure::Unread { .. });
                let written =
                    write_local(client, &mut out.resp_out, &local, local_side(keep)).await;
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
            tunnel(client, buf, &mut out.resp_out, upstream).await;
            return Next::Close;
        }

        let body = ResponseBody {
            framing: response.framing,
            dechunk: response.dechunk,
            idle: self.body_idle_timeout,
        };
        let relayed = if request_body.is_done() {
            let Upstream { stream, buf, .. } = &mut upstream;
            relay_response(stream, buf, client, &mut out.resp_out, body).await
        } else {
            relay_duplex(
                client,
                buf,
                &mut upstream,
                &mut out.resp_out,
                body,
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
    /// response byte is retried on another connection only when it is complete in hand and its
    /// method is safe to replay (see [`replayable`]): the upstream may have processed it before
    /// the connection broke.
    async fn send(
        &self,
        target: SocketAddr,
        client: &mut TcpStream,
        buf: &mut BytesMut,
        out: &mut Scratch,
        request: Prepared,
        client_side: ClientSide,
    ) -> Result<Answer, Failure> {
        let Scratch { req_out, resp_out } = out;
        let Prepared {
            remaining,
            safe_method,
        } = request;
        // Everything the upstream needs is in `req_out`: a retry could send it again.
        let retryable = remaining.is_done() && safe_method;
        let mut relay = BodyRelay {
            remaining,
            pending: 0,
        };
        let idle = self.body_idle_timeout;
        loop {
            let mut upstream = match self.pool.checkout(target) {
                Some(upstream) => upstream,
                None => self.pool.connect(target).await?,
            };
            let retry = upstream.reused && retryable;
            match tokio::time::timeout(idle, upstream.stream.write_all(req_out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) if retry => continue,
                Ok(Err(source)) => return Err(Failure::Io { target, source }),
                Err(_) => {
                    return Err(Failure::Unread {
                        target,
                        limit: idle,
                    });
                }
            }
            let body_done = AtomicBool::new(relay.is_done());
            // While the request body still flows, the upstream may rightly wait for all of it.
            let sending = AtomicBool::new(!relay.is_done());
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
                        .run(&mut client_read, buf, &mut upstream_write, idle)
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
                    Progress {
                        body_done: &body_done,
                        sending: &sending,
                        idle,
                    },
                );
                tokio::pin!(body, response);
                let mut body_running = !body_done.load(Ordering::Relaxed);
                loop {
                    tokio::select! {
                        relayed = &mut body, if body_running => {
                            body_running = false;
                            sending.store(false, Ordering::Relaxed);
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
                    if retry && !any_bytes {
                        continue;
                    }
                    return Err(Failure::Closed { target });
                }
                Err(ReadHead::Io { source, any_bytes }) => {
                    if retry && !any_bytes {
                        continue;
                    }
                    return Err(Failure::Io { target, source });
                }
                Err(ReadHead::Stalled) => return Err(Failure::Timeout(idle)),
                Err(ReadHead::Invalid(source)) => return Err(Failure::Response { target, source }),
                Err(ReadHead::ClientGone(source)) => {
                    return Err(Failure::Client(BodyError::Write(source)));
                }
            }
        }
    }
}

/// A request encoded into the scratch buffer, ready to send.
struct Prepared {
    /// What of the body is still to come from the client after what `req_out` holds.
    remaining: Remaining,
    /// The method may be sent again after a broken reused connection ([`replayable`]).
    safe_method: bool,
}

impl Prepared {
    /// Encodes `head` and the body bytes already in `buf` into `req_out`, taking them from `buf`.
    fn new(
        head: &RequestHead,
        buf: &mut BytesMut,
        req_out: &mut BytesMut,
    ) -> Result<Self, Failure> {
        req_out.clear();
        head::encode_request(head, req_out);
        let mut remaining = Remaining::new(head.framing);
        let n = remaining
            .take(buf)
            .map_err(|e| Failure::Client(BodyError::Chunked(e)))?;
        req_out.extend_from_slice(&buf[..n]);
        buf.advance(n);
        Ok(Self {
            remaining,
            safe_method: replayable(&head.parts.method),
        })
    }

    /// The request `req_out` still holds in full, to send again.
    fn again(head: &RequestHead) -> Self {
        Self {
            remaining: Remaining::Done,
            safe_method: replayable(&head.parts.method),
        }
    }
}

/// Whether the whole body of a request with `framing` is in `buf`, after reading at most
/// [`MAX_REPLAY_BYTES`] of a `Content-Length` body still on its way (each read within `idle`):
/// only such a request can be sent again. A chunked body counts only when it is in `buf`
/// already; reading fails quietly (the relay then meets the same failure and reports it).
async fn body_in_hand(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
    idle: Duration,
) -> bool {
    match framing {
        Framing::Empty | Framing::Length(0) => true,
        Framing::Length(n) => {
            let Ok(n) = usize::try_from(n) else {
                return false;
            };
            if n > MAX_REPLAY_BYTES {
                return false;
            }
            while buf.len() < n {
                buf.reserve(n - buf.len());
                match tokio::time::timeout(idle, client.read_buf(buf)).await {
                    Ok(Ok(read)) if read > 0 => {}
                    _ => return false,
                }
            }
            true
        }
        Framing::Chunked | Framing::UntilClose => body_in_hand_now(buf, framing),
    }
}

/// Whether the whole body of a request with `framing` is in `buf` already (within
/// [`MAX_REPLAY_BYTES`]).
fn body_in_hand_now(buf: &BytesMut, framing: Framing) -> bool {
    match framing {
        Framing::Empty | Framing::Length(0) => true,
        Framing::Length(n) => {
            usize::try_from(n).is_ok_and(|n| n <= MAX_REPLAY_BYTES && buf.len() >= n)
        }
        Framing::Chunked => {
            let mut scanner = Chunked::new();
            buf.len() <= MAX_REPLAY_BYTES && scanner.scan(buf).is_ok() && scanner.is_done()
        }
        Framing::UntilClose => false,
    }
}

/// Methods a proxy may send again after a connection broke before any response byte: the
/// safe ones (RFC 9110 §9.2.1), as Go's `net/http` transport does. PUT and DELETE are
/// idempotent by the RFC, but a replayed DELETE answers differently and many applications do
/// not make them idempotent; the caller, which knows, can retry them itself.
fn replayable(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
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
    /// Nothing came for the body idle timeout after the request was sent.
    Stalled,
}

/// What [`read_response_head`] knows of the request body running beside it.
#[derive(Clone, Copy)]
struct Progress<'a> {
    /// The request body has been relayed in full.
    body_done: &'a AtomicBool,
    /// The request body is still being relayed.
    sending: &'a AtomicBool,
    /// The body idle timeout.
    idle: Duration,
}

/// Reads the final response head into `out` (re-encoded for the client), relaying interim
/// `1xx` responses to an HTTP/1.1 client first (an HTTP/1.0 client does not know them,
/// RFC 9110 §15.2).
async fn read_response_head<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    out: &mut BytesMut,
    client_side: ClientSide,
    progress: Progress<'_>,
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
                keep_alive: client_side.keep_alive && progress.body_done.load(Ordering::Relaxed),
                ..client_side
            };
            match head::parse_response(buf, side, out) {
                Ok(Some(head)) if head.is_interim() => {
                    if !client_side.http10 {
                        client.write_all(out).await.map_err(ReadHead::ClientGone)?;
                    }
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
        // Sampled before the wait: a timer that ran out while the request body was still
        // flowing says nothing about the upstream, so it only counts when it covered a whole
        // idle period after the request was complete (the wait ends within 2x the timeout).
        let sending = progress.sending.load(Ordering::Relaxed);
        match tokio::time::timeout(progress.idle, upstream.read_buf(buf)).await {
            Ok(Ok(0)) => return Err(ReadHead::Closed { any_bytes }),
            Ok(Ok(_)) => any_bytes = true,
            Ok(Err(source)) => return Err(ReadHead::Io { source, any_bytes }),
            Err(_) if sending => {}
            Err(_) => return Err(ReadHead::Stalled),
        }
    }
}

/// How a response body travels to the client.
#[derive(Debug, Clone, Copy)]
struct ResponseBody {
    framing: Framing,
    /// Remove the chunked coding (HTTP/1.0 client).
    dechunk: bool,
    /// The body idle timeout, for every read and write.
    idle: Duration,
}

/// Writes the response head in `head` and relays the body behind it; a small body that came
/// with the head goes out in the same write.
async fn relay_response<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    head: &mut BytesMut,
    body: ResponseBody,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = body.idle;
    let mut remaining = Remaining::new(body.framing);
    if body.dechunk {
        // HTTP/1.0 clients only: the data is copied out of its chunks, so the copy is paid for
        // by them alone.
        let n = remaining.take_decoded(buf, head)?;
        buf.advance(n);
        write_within(client, head, idle).await?;
        let mut data = BytesMut::new();
        while !remaining.is_done() {
            if read_within(upstream, buf, idle).await? == 0 {
                return Err(BodyError::Truncated);
            }
            data.clear();
            let n = remaining.take_decoded(buf, &mut data)?;
            buf.advance(n);
            write_within(client, &data, idle).await?;
        }
        return Ok(());
    }
    let n = remaining.take(buf)?;
    head.extend_from_slice(&buf[..n]);
    buf.advance(n);
    write_within(client, head, idle).await?;
    while !remaining.is_done() {
        match read_within(upstream, buf, idle).await? {
            0 if matches!(remaining, Remaining::UntilClose) => break,
            0 => return Err(BodyError::Truncated),
            _ => {}
        }
        let n = remaining.take(buf)?;
        write_within(client, &buf[..n], idle).await?;
        buf.advance(n);
    }
    Ok(())
}

/// One read into `buf`, or [`BodyError::Stalled`] when nothing comes within `idle`.
async fn read_within<R>(io: &mut R, buf: &mut BytesMut, idle: Duration) -> Result<usize, BodyError>
where
    R: AsyncRead + Unpin,
{
    reserve(buf);
    match tokio::time::timeout(idle, io.read_buf(buf)).await {
        Ok(read) => read.map_err(BodyError::Read),
        Err(_) => Err(BodyError::Stalled(idle)),
    }
}

/// Writes all of `bytes`, failing when the peer takes none of it within `idle`.
async fn write_within<W>(io: &mut W, bytes: &[u8], idle: Duration) -> Result<(), BodyError>
where
    W: AsyncWrite + Unpin,
{
    match tokio::time::timeout(idle, io.write_all(bytes)).await {
        Ok(written) => written.map_err(BodyError::Write),
        Err(_) => Err(BodyError::Write(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Relays the response while the rest of the request body still flows the other way. Returns
/// whether the response was relayed in full; the request body may be left unfinished when the
/// response ended first (the connections are then not reused).
async fn relay_duplex(
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    upstream: &mut Upstream,
    head: &mut BytesMut,
    response_body: ResponseBody,
    body: &mut BodyRelay,
) -> Result<(), BodyError> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.stream.split();
    let request = body.run(
        &mut client_read,
        client_buf,
        &mut upstream_write,
        response_body.idle,
    );
    let response = relay_response(
        &mut upstream_read,
        &mut upstream.buf,
        &mut client_write,
        head,
        response_body,
    );
    tokio::pin!(request, response);
    let mut request_running = true;
    loop {
        tokio::select! {
            sent = &mut request, if request_running => {
                request_running = false;
                match sent {
                    // The upstream no longer reads, or the client paused its upload while the
                    // response flows (the response has its own idle timeout): the response may
                    // still end properly; the connections are then not reused.
                    Ok(()) | Err(BodyError::Write(_) | BodyError::Stalled(_)) => {}
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

/// For a local answer before any request head was understood: the connection ends after it.
const CLOSING: ClientSide = ClientSide {
    keep_alive: false,
    http10: false,
    head_request: false,
    upgrade: false,
};

/// Writes a local response; false when the client is gone. `side.keep_alive` says whether the
/// connection goes on after it.
async fn write_local(
    client: &mut TcpStream,
    out: &mut BytesMut,
    local: &LocalResponse,
    side: ClientSide,
) -> bool {
    out.clear();
    head::encode_local(local.status, &local.headers, &local.body, side, out);
    client.write_all(out).await.is_ok()
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
