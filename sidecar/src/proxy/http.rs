//! HTTP/2 (incl. gRPC) proxying: a hyper server per captured connection, a pooled hyper
//! HTTP/2 client upstream, bodies and trailers streamed through frame by frame (never
//! collected). HTTP/1 connections go to [`super::h1`] instead; [`HttpProxy`] holds both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::config::ProxyConfig;

use super::grpc;
use super::h1::Http1Relay;
use super::headers::strip_hop_by_hop;
use super::local::NoResponse;
use super::pool::Http2Pool;
use super::replay::UpstreamBody;
use super::router::{
    ConnContext, HttpOutcome, LocalResponse, RequestState, ResponseEnd, RouteDecision, Routed,
    Router, UpstreamFailure,
};
use super::shutdown::ShutdownSignal;

/// Body of every response the proxy sends downstream: streamed from the
/// upstream, or produced locally. It carries the router's per-request state
/// and drops it when the last frame has been read (or an error ended the
/// stream, or hyper dropped the body because the client went away).
pub struct ProxyBody {
    inner: Either<Incoming, Full<Bytes>>,
    state: Option<Box<dyn RequestState>>,
    /// `RequestState::on_end` has been called.
    ended: bool,
}

impl ProxyBody {
    fn new(inner: Either<Incoming, Full<Bytes>>, state: Option<Box<dyn RequestState>>) -> Self {
        Self {
            inner,
            state,
            ended: false,
        }
    }

    fn end(&mut self, end: ResponseEnd<'_>) {
        if !self.ended {
            self.ended = true;
            if let Some(state) = self.state.as_mut() {
                state.on_end(end);
            }
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("inner", &self.inner)
            .field("state", &self.state.is_some())
            .finish()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Either::Left(incoming) => Pin::new(incoming).poll_frame(cx),
            // Local responses have no upstream: `on_end` is for forwarded ones.
            Either::Right(full) => {
                let polled = Pin::new(full)
                    .poll_frame(cx)
                    .map(|frame| frame.map(|r| r.map_err(|never| match never {})));
                if matches!(polled, Poll::Ready(None)) {
                    this.state = None;
                }
                return polled;
            }
        };
        if this.state.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        this.end(ResponseEnd::Trailers(trailers));
                    } else if this.inner.is_end_stream() {
                        // hyper stops polling a body that says it is done (e.g. the last
                        // bytes of a Content-Length body), so this may be the last call.
                        this.end(ResponseEnd::Complete);
                    }
                }
                Poll::Ready(None) => {
                    this.end(ResponseEnd::Complete);
                    this.state = None;
                }
                Poll::Ready(Some(Err(_))) => {
                    this.end(ResponseEnd::Error);
                    this.state = None;
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A worker's HTTP machinery: the HTTP/1 relay and the HTTP/2 server settings and client pool.
#[derive(Debug)]
pub struct HttpProxy {
    server: hyper::server::conn::http2::Builder<TokioExecutor>,
    http2: Http2Pool,
    http1: Http1Relay,
    router: Arc<dyn Router>,
}

impl HttpProxy {
    /// Builds the server settings and the two (empty) upstream pools.
    pub fn new(config: &ProxyConfig, router: Arc<dyn Router>) -> Self {
        let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        server
            .timer(TokioTimer::new())
            // Validated in ProxyConfig::validate to fit in u32.
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(config.http2_max_concurrent_streams)
            // A client that vanished, or stopped reading, is noticed and its connection closed.
            .keep_alive_interval(Some(config.http2_keepalive))
            .keep_alive_timeout(config.http2_keepalive);

        Self {
            server,
            http2: Http2Pool::new(config.into()),
            http1: Http1Relay::new(config, Arc::clone(&router)),
            router,
        }
    }

    /// Serves one HTTP/1 connection (see [`super::h1`]); `prefix` holds the bytes protocol
    /// detection read.
    pub async fn serve_http1(
        &self,
        conn: ConnContext,
        stream: TcpStream,
        prefix: bytes::BytesMut,
        signal: ShutdownSignal,
    ) {
        self.http1.serve(conn, stream, prefix, signal).await;
    }

    /// Serves one HTTP/2 connection until it ends or, after the shutdown, until its in-flight
    /// streams finish.
    pub async fn serve<S>(self: &Arc<Self>, conn: ConnContext, io: S, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = Arc::clone(self);
        let service = service_fn(move |req| {
            let this = Arc::clone(&this);
            async move { Ok::<_, Infallible>(this.handle(conn, req).await) }
        });
        let connection = self.server.serve_connection(TokioIo::new(io), service);
        if let Err(error) = watcher.watch(connection).await {
            // Protocol errors and resets land here; hyper has sent GOAWAY where it could.
            tracing::debug!(%error, "http/2 connection ended with error");
        }
    }

    async fn handle(&self, conn: ConnContext, req: Request<Incoming>) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let grpc = grpc::is_grpc(&parts.headers);
        let head = parts.method == http::Method::HEAD;
        let Routed {
            decision,
            mut state,
            delay,
            timeout,
            retries,
        } = self.router.route_http(&conn, &mut parts);
        let mut target = match decision {
            RouteDecision::Passthrough => conn.default_target,
            RouteDecision::Forward(addr) => addr,
            RouteDecision::Respond(local) => return respond(local, state, grpc, head),
        };
        // The h2 client takes `:scheme` and `:authority` from the URI; the connection is chosen
        // by `target`, so the caller's authority travels on unchanged.
        if parts.uri.authority().is_none() {
            match absolute_uri(&parts.uri, &parts.headers, target) {
                Ok(uri) => parts.uri = uri,
                Err(error) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid_uri",
                        &format!("cannot complete request target: {error}"),
                        grpc,
                        head,
                    );
                }
            }
        }
        strip_hop_by_hop(&mut parts.headers, false);
        // What a retry sends again: the head (copied only for requests that may be retried)
        // and the recorded body.
        let again = retries.map(|_| Again {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        });
        let (body, recorder) = UpstreamBody::from_client(body, retries.is_some());
        let mut upstream_req = Request::from_parts(parts, body);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let started = tokio::time::Instant::now();
        let deadline = timeout.map(|t| started + t);
        let (result, failure, outcome) = loop {
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let limit = match retries {
                Some(attempts) => attempts.limit(left),
                None => left,
            };
            let attempt_started = tokio::time::Instant::now();
            let sent = self.http2.send(target, upstream_req);
            let result = match limit {
                None => sent.await.map_err(Some),
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(result) => result.map_err(Some),
                    Err(_) => Err(None),
                },
            };
            // `None`: the attempt's limit passed.
            let failure = result.as_ref().err().map(|error| match error {
                Some(error) if error.is_connect() => NoResponse::Connect,
                Some(_) => NoResponse::Reset,
                None => NoResponse::Timeout(limit.unwrap_or_default()),
            });
            let response_grpc = result.as_ref().is_ok_and(|r| grpc::is_grpc(r.headers()));
            let outcome = HttpOutcome {
                target,
                result: match (&result, failure) {
                    (Ok(resp), _) => Ok(resp.status()),
                    (Err(_), Some(failure)) => Err(failure.outcome()),
                    (Err(_), None) => Err(UpstreamFailure::Reset),
                },
                elapsed: attempt_started.elapsed(),
                grpc: response_grpc,
                grpc_status: match &result {
                    Ok(resp) if response_grpc => grpc::status(resp.headers()),
                    _ => None,
                },
            };
            self.router.on_http_outcome(&conn, &outcome);
            let (Some(again), Some(recorder), Some(state)) =
                (again.as_ref(), recorder.as_ref(), state.as_mut())
            else {
                break (result, failure, outcome);
            };
            let time_left = deadline.is_none_or(|d| d > tokio::time::Instant::now());
            let replay = if time_left { recorder.replay() } else { None };
            let Some(retry) = state.retry(&outcome, replay.is_some()) else {
                break (result, failure, outcome);
            };
            let Some(replay) = replay else {
                break (result, failure, outcome);
            };
            // The abandoned response (if any) is dropped here: hyper resets its stream.
            drop(result);
            match deadline {
                Some(d) => {
                    tokio::time::sleep(
                        retry
                            .backoff
                            .min(d.saturating_duration_since(tokio::time::Instant::now())),
                    )
                    .await
                }
                None => tokio::time::sleep(retry.backoff).await,
            }
            target = retry.target;
            upstream_req = again.request(replay);
        };
        if let Some(state) = state.as_mut() {
            state.on_outcome(&outcome);
        }
        let mut resp = match (result, failure) {
            (Ok(ok), _) => ok,
            (Err(error), failure) => {
                let failure = failure.unwrap_or(NoResponse::Reset);
                match error {
                    Some(error) => {
                        tracing::warn!(%target, error = %error_chain(&error), "upstream request failed");
                    }
                    None => tracing::debug!(%target, ?timeout, "upstream request timed out"),
                }
                return respond(failure.local(target), None, grpc, head);
            }
        };
        strip_hop_by_hop(resp.headers_mut(), false);
        let mut resp = resp.map(|body| ProxyBody::new(Either::Left(body), state));
        // hyper never polls a body that is empty from the start (204, `Content-Length: 0`).
        if resp.body().inner.is_end_stream() {
            resp.body_mut().end(ResponseEnd::Complete);
        }
        resp
    }
}

/// The head of a request that may be sent again (extensions are not kept).
struct Again {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
}

impl Again {
    fn request(&self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Answers locally; a gRPC caller gets a trailers-only gRPC response (HTTP 200 with
/// `grpc-status` and `grpc-message`) instead of an HTTP error page, which gRPC clients would
/// report as a protocol error. `head`: the request was HEAD (see [`local_response`]).
fn respond(
    local: LocalResponse,
    state: Option<Box<dyn RequestState>>,
    grpc: bool,
    head: bool,
) -> Response<ProxyBody> {
    if !grpc {
        return local_response(local, state, head);
    }
    let code = local
        .grpc_status
        .unwrap_or_else(|| grpc::code_for_http(local.status));
    let mut headers = local.headers;
    headers.remove(header::LOCATION);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    headers.insert(
        "grpc-message",
        grpc::message(&String::from_utf8_lossy(&local.body)),
    );
    local_response(
        LocalResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
            grpc_status: Some(code),
        },
        state,
        head,
    )
}

/// An absolute request target for a request that came without `:authority`: the `Host` header
/// if the caller sent one, else the endpoint address.
fn absolute_uri(
    original: &Uri,
    headers: &HeaderMap,
    target: SocketAddr,
) -> Result<Uri, http::Error> {
    let path = original
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let builder = Uri::builder()
        .scheme(original.scheme_str().unwrap_or("http"))
        .path_and_query(path);
    match headers.get(header::HOST).map(HeaderValue::as_bytes) {
        Some(host) => builder.authority(host),
        None => builder.authority(target.to_string()),
    }
    .build()
}

/// A local answer as a response. To a HEAD request it carries the length its body would have
/// and no body: hyper's HTTP/2 server sends whatever body it is given, even after HEAD.
fn local_response(
    local: LocalResponse,
    state: Option<Box<dyn RequestState>>,
    head: bool,
) -> Response<ProxyBody> {
    let LocalResponse {
        status,
        mut headers,
        mut body,
        ..
    } = local;
    if head {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        body = Bytes::new();
    }
    let mut resp = Response::new(ProxyBody::new(Either::Right(Full::new(body)), state));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn error_response(
    status: StatusCode,
    reason: &'static str,
    text: &str,
    grpc: bool,
    head: bool,
) -> Response<ProxyBody> {
    respond(super::local::error(status, reason, text), None, grpc, head)
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        headers.insert("x-lanemesh-tag", HeaderValue::from_static("gray"));
        strip_hop_by_hop(&mut headers, false);
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("x-private").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert_eq!(headers.get(header::TE).unwrap(), "trailers");
        assert_eq!(headers.get("x-lanemesh-tag").unwrap(), "gray");
    }

    #[test]
    fn headers_of_the_end_to_end_kind_are_left_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("svc"));
        headers.insert("x-keep-alive-ish", HeaderValue::from_static("1"));
        headers.append(header::ACCEPT, HeaderValue::from_static("a"));
        headers.append(header::ACCEPT, HeaderValue::from_static("b"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers, before);
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers, before);
    }

    #[test]
    fn a_target_without_authority_takes_host_else_the_endpoint() {
        let target: SocketAddr = "10.0.0.7:9090".parse().unwrap();
        let mut headers = HeaderMap::new();
        let uri = absolute_uri(&"/a/b?c=d".parse().unwrap(), &headers, target).unwrap();
        assert_eq!(uri, "http://10.0.0.7:9090/a/b?c=d");
        headers.insert(header::HOST, HeaderValue::from_static("svc.ns:8080"));
        let uri = absolute_uri(&"/x".parse().unwrap(), &headers, target).unwrap();
        assert_eq!(uri, "http://svc.ns:8080/x");
    }
}
