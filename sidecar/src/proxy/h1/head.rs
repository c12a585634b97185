//! HTTP/1 message heads. A request head is parsed into `http::request::Parts`, which the router
//! reads and edits, and is encoded again from them; its framing headers are kept aside so
//! nothing the router or the hop-by-hop rules do can change where its body ends. A response
//! head is parsed only as far as relaying needs (status, framing, connection handling) and
//! copied to the client line by line, minus hop-by-hop fields, without being rebuilt.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::body::Framing;
use crate::proxy::headers::list_tokens as tokens;

/// Most header fields in one head; more get 431.
pub const MAX_HEADERS: usize = 128;

/// A head the proxy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1 syntax.
    #[error("malformed message head: {0}")]
    Syntax(httparse::Error),
    /// More than [`MAX_HEADERS`] fields.
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// A method, target or field httparse accepted but the `http` types do not.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// `Content-Length` that is not one non-negative number.
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    /// Both `Content-Length` and `Transfer-Encoding` on a request: one side of the proxy might
    /// read the body by one and the other side by the other (request smuggling).
    #[error("both Content-Length and Transfer-Encoding")]
    Ambiguous,
    /// A request `Transfer-Encoding` other than one field saying exactly `chunked`. Other
    /// codings, repeated fields or empty list members are read differently by different
    /// parsers; with upstream connections shared between clients, a disagreement about where a
    /// body ends would hand one client's response to another.
    #[error("Transfer-Encoding must be exactly chunked")]
    TransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 message, whose framing is then faulty (RFC 9112 §6.1).
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    Http10TransferEncoding,
    /// A line ending in LF without CR: httparse would accept it, a stricter parser behind the
    /// proxy might not see the same fields.
    #[error("line ending without CR")]
    BareLf,
}

impl From<httparse::Error> for HeadError {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::TooManyHeaders => Self::TooManyHeaders,
            other => Self::Syntax(other),
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and every header field except the framing ones.
    pub parts: http::request::Parts,
    /// How the body is delimited (a chunked request goes out as `transfer-encoding: chunked`,
    /// whatever case the client used).
    pub framing: Framing,
    /// The client lets the connection carry another request after this one.
    pub keep_alive: bool,
    /// An HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`), e.g. WebSocket.
    pub upgrade: bool,
}

/// Most CR/LF bytes accepted before a request line (four empty lines).
const MAX_LEADING_EMPTY: usize = 8;

/// Finds the end of a request head (one past the LF of its empty line) in `buf`, looking only
/// at the bytes from `*scanned` on and moving `*scanned` past them: a head that arrives in many
/// small reads is searched once in total, and httparse runs only on a complete head.
/// Every LF must follow a CR (RFC 9112 §2.2 lets a recipient choose; the stricter choice keeps
/// the proxy and whatever parses the request after it in agreement).
pub fn find_head_end(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, HeadError> {
    // Empty lines before the request line (RFC 9112 §2.2 lets a server ignore them) are not
    // the end of a head: counted as one, httparse would parse the rest of the buffer past the
    // bare-LF check. Few are tolerated, so counting them stays cheap on every read.
    let lead = buf
        .iter()
        .take(MAX_LEADING_EMPTY + 1)
        .take_while(|&&b| matches!(b, b'\r' | b'\n'))
        .count();
    if lead > MAX_LEADING_EMPTY {
        return Err(HeadError::Invalid(
            "request: too many empty lines before it",
        ));
    }
    let from = (*scanned).min(buf.len());
    let mut at = from;
    while let Some(offset) = buf[at..].iter().position(|&b| b == b'\n') {
        let lf = at + offset;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(HeadError::BareLf);
        }
        if lf >= 3 && lf - 3 >= lead && buf[lf - 3] == b'\r' && buf[lf - 2] == b'\n' {
            *scanned = lf + 1;
            return Ok(Some(lf + 1));
        }
        at = lf + 1;
    }
    *scanned = buf.len();
    Ok(None)
}

/// Parses a complete request head from the front of `buf` and removes it, or returns `None`
/// (leaving `buf` alone) when the head is still incomplete.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    // httparse borrows `buf`; remember where things are, then take the head out as `Bytes` so
    // header values and the target can share it instead of being copied.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base)..(s.as_ptr() as usize - base + s.len());
    // httparse::Status::Complete guarantees these are present.
    let method = offset(req.method.unwrap_or_default().as_bytes());
    let path = offset(req.path.unwrap_or_default().as_bytes());
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut fields: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        fields.push((offset(field.name.as_bytes()), offset(field.value)));
    }
    let head = buf.split_to(len).freeze();

    let method = Method::from_bytes(&head[method]).map_err(|_| HeadError::Invalid("method"))?;
    let uri = Uri::from_maybe_shared(head.slice(path)).map_err(|_| HeadError::Invalid("target"))?;
    // CONNECT takes exactly `host:port` (RFC 9110 §9.3.6): anything else would go upstream
    // as a request line without a target.
    if method == Method::CONNECT
        && (uri.scheme().is_some()
            || uri.path_and_query().is_some_and(|p| !p.as_str().is_empty())
            || uri.authority().is_none_or(|a| a.port_u16().is_none()))
    {
        return Err(HeadError::Invalid("CONNECT target (must be host:port)"));
    }
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for (name, value) in fields {
        let name =
            HeaderName::from_bytes(&head[name]).map_err(|_| HeadError::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| HeadError::Invalid("header value"))?;
        if name == header::CONTENT_LENGTH {
            length = Some(merge_length(length, &value)?);
        } else if name == header::TRANSFER_ENCODING {
            if chunked
                || !value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked")
            {
                return Err(HeadError::TransferEncoding);
            }
            chunked = true;
        } else {
            headers.append(name, value);
        }
    }
    if chunked && version == Version::HTTP_10 {
        return Err(HeadError::Http10TransferEncoding);
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(HeadError::Ambiguous),
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Empty,
    };
    let keep_alive = keep_alive(version, &headers);
    let upgrade = version == Version::HTTP_11 && is_upgrade(&headers);

    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        upgrade,
    }))
}

/// Writes the request head for the upstream: origin-form target, the router's headers, the
/// original framing.
pub fn encode_request(head: &RequestHead, dst: &mut BytesMut) {
    let parts = &head.parts;
    dst.put_slice(parts.method.as_str().as_bytes());
    dst.put_u8(b' ');
    if parts.method == Method::CONNECT {
        let authority = parts.uri.authority().map_or("", |a| a.as_str());
        dst.put_slice(authority.as_bytes());
    } else {
        // Origin form: an absolute-form target (`http://host?q`) may have no path at all, and
        // `?q` alone is no request target.
        let path = parts.uri.path();
        dst.put_slice(if path.is_empty() {
            b"/"
        } else {
            path.as_bytes()
        });
        if let Some(query) = parts.uri.query() {
            dst.put_u8(b'?');
            dst.put_slice(query.as_bytes());
        }
    }
    dst.put_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &parts.headers {
        put_field(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    match head.framing {
        Framing::Length(n) => {
            put_field(
                dst,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        Framing::Chunked => put_field(dst, b"transfer-encoding", b"chunked"),
        Framing::Empty | Framing::UntilClose => {}
    }
    dst.put_slice(b"\r\n");
}

/// What the client connection does after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSide {
    /// The client asked to keep the connection open, and the proxy is not shutting down.
    pub keep_alive: bool,
    /// The client speaks HTTP/1.0 (keep-alive must then be confirmed in the response).
    pub http10: bool,
    /// The request was HEAD: the response has no body whatever its headers say.
    pub head_request: bool,
    /// The request asked for an upgrade.
    pub upgrade: bool,
}

/// A parsed response head, already re-encoded for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: StatusCode,
    /// How the body is delimited.
    pub framing: Framing,
    /// The upstream connection may carry another request after this response's body.
    pub upstream_keep_alive: bool,
    /// The client connection stays open after this response.
    pub client_keep_alive: bool,
    /// A gRPC(-Web) response (`content-type: application/grpc...`).
    pub grpc: bool,
    /// Its `grpc-status`, when the head carries one (trailers-only responses).
    pub grpc_status: Option<u32>,
    /// A chunked body for an HTTP/1.0 client, which cannot read chunked: relayed with the
    /// coding removed and ended by closing the client connection.
    pub dechunk: bool,
}

impl ResponseHead {
    /// A `1xx` other than `101`: an interim response, the final one follows.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// The upstream agreed to the client's upgrade: the connection becomes a byte tunnel.
    pub fn is_upgrade(&self) -> bool {
        self.status == StatusCode::SWITCHING_PROTOCOLS
    }
}

/// Parses a complete response head from the front of `buf`, removes it and writes what the
/// client should get into `out`; `None` (nothing consumed or written) while incomplete.
pub fn parse_response(
    buf: &mut BytesMut,
    client: ClientSide,
    out: &mut BytesMut,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let len = match resp.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or_default())
        .map_err(|_| HeadError::Invalid("status"))?;
    let http10 = resp.version == Some(0);
    let mut transfer_encoding = false;

    // First pass: the connection options and the framing.
    let mut close = false;
    let mut keep_alive_token = false;
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut named_len = 0;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut grpc = false;
    let mut grpc_status = None;
    for field in resp.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if token.eq_ignore_ascii_case(b"upgrade")
                    || token.eq_ignore_ascii_case(b"content-length")
                    || token.eq_ignore_ascii_case(b"transfer-encoding")
                {
                    // `Upgrade` is relayed or dropped by the upgrade rule below; the framing
                    // fields by the framing rules, or the client could not find the body's end.
                } else if named_len < named.len() {
                    named[named_len] = token;
                    named_len += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| HeadError::Invalid("header value"))?;
            length = Some(merge_length(length, &value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // Several fields: the last one holds the last coding.
            chunked = Some(
                tokens(field.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if name.eq_ignore_ascii_case(b"content-type") {
            grpc = field.value.starts_with(b"application/grpc");
        } else if name.eq_ignore_ascii_case(b"grpc-status") {
            grpc_status = std::str::from_utf8(field.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
    }
    if http10 && transfer_encoding {
        return Err(HeadError::Http10TransferEncoding);
    }
    let named = &named[..named_len];
    let no_body = client.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), which is then dropped.
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => Framing::UntilClose,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };
    // Both framings: Transfer-Encoding decides this body, but an upstream that sends both may
    // disagree with itself about where the next response starts, so its connection ends here
    // (RFC 9112 §6.3).
    let ambiguous = chunked.is_some() && length.is_some();
    let upstream_keep_alive = framing != Framing::UntilClose
        && !ambiguous
        && if http10 { keep_alive_token } else { !close };
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS && client.upgrade;
    let dechunk = framing == Framing::Chunked && client.http10;
    // A Transfer-Encoding whose last coding is not chunked means "until close" to any reader,
    // also where this response has no body (HEAD): the client cannot reuse the connection.
    let close_delimited = chunked == Some(false);
    let client_keep_alive = client.keep_alive
        && framing != Framing::UntilClose
        && !upgrade
        && !dechunk
        && !close_delimited;

    // Second pass: the head for the client.
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(itoa::Buffer::new().format(status.as_u16()).as_bytes());
    out.put_u8(b' ');
    out.put_slice(resp.reason.unwrap_or_default().as_bytes());
    out.put_slice(b"\r\n");
    for field in resp.headers.iter() {
        let name = field.name.as_bytes();
        let hop_by_hop = name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"keep-alive")
            || name.eq_ignore_ascii_case(b"proxy-connection")
            || (name.eq_ignore_ascii_case(b"upgrade") && !upgrade)
            // A sender must not send both (RFC 9112 §6.1): with Transfer-Encoding present,
            // Content-Length goes, whatever the framing (a HEAD answer has no body either way).
            || (name.eq_ignore_ascii_case(b"content-length")
                && (framing == Framing::Chunked || transfer_encoding))
            || (name.eq_ignore_ascii_case(b"transfer-encoding") && dechunk)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name));
        if !hop_by_hop {
            put_field(out, name, field.value);
        }
    }
    if upgrade {
        out.put_slice(b"connection: upgrade\r\n");
    } else if !status.is_informational() {
        if !client_keep_alive && !client.http10 {
            out.put_slice(b"connection: close\r\n");
        } else if client_keep_alive && client.http10 {
            out.put_slice(b"connection: keep-alive\r\n");
        }
    }
    out.put_slice(b"\r\n");
    let _ = buf.split_to(len);
    Ok(Some(ResponseHead {
        status,
        framing,
        upstream_keep_alive,
        client_keep_alive,
        grpc,
        grpc_status,
        dechunk,
    }))
}

/// Writes a locally generated response (the router's answer, or a proxy error). `client`
/// says whether the connection stays open (`keep_alive`), whether an HTTP/1.0 client must be
/// told so, and whether the request was HEAD: then the head announces the body's length but the
/// body stays behind, or the client would read it as the next response.
pub fn encode_local(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    client: ClientSide,
    dst: &mut BytesMut,
) {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.put_slice(b"\r\n");
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::CONNECTION {
            put_field(dst, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !bodiless {
        put_field(
            dst,
            b"content-length",
            itoa::Buffer::new().format(body.len()).as_bytes(),
        );
    }
    if !client.keep_alive {
        dst.put_slice(b"connection: close\r\n");
    } else if client.http10 {
        dst.put_slice(b"connection: keep-alive\r\n");
    }
    dst.put_slice(b"\r\n");
    if !bodiless && !client.head_request {
        dst.put_slice(body);
    }
}

fn put_field(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.reserve(name.len() + value.len() + 4);
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// Folds one `Content-Length` field into what earlier fields said: every value in every field
/// must be the same number (RFC 9112 §6.3 allows `5, 5`; anything else is an error).
fn merge_length(seen: Option<u64>, value: &HeaderValue) -> Result<u64, HeadError> {
    let mut result = seen;
    for token in value.as_bytes().split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::ContentLength);
        }
        let n = std::str::from_utf8(token)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or(HeadError::ContentLength)?;
        match result {
            Some(previous) if previous != n => return Err(HeadError::ContentLength),
            _ => result = Some(n),
        }
    }
    result.ok_or(HeadError::ContentLength)
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when told `keep-alive`.
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in tokens(value.as_bytes()) {
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if version == Version::HTTP_10 {
        keep && !close
    } else {
        !close
    }
}

/// Whether every protocol the request's `Upgrade` names (`websocket`, `h2c`, `TLS/1.0`, by its
/// name before any `/version`) is in `allowed` (lower case).
pub fn upgrade_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut named = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .map(|t| t.split(|&b| b == b'/').next().unwrap_or(t))
        .peekable();
    named.peek().is_some()
        && named.all(|name| {
            allowed
                .iter()
                .any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
        })
}

/// `Connection: upgrade` plus an `Upgrade` field (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| tokens(v.as_bytes()))
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

#[cfg(test)]
mod tests;
