//! The HTTP/1 request head as the relay reads it: `find_head_end` over whatever has arrived,
//! then `parse_request` once a head is complete, then `strip_hop_by_hop` and `encode_request`
//! for the upstream.
//!
//! Input: one byte choosing how the rest is cut into reads, then the bytes a client sends.
//! Invariants:
//! - how the bytes are cut into reads changes nothing (the head and bytes consumed, or the
//!   refusal's status): a client must not get a different parse by pacing its writes;
//! - the head written upstream passes the relay's own checks and parses back to the same
//!   head (method, target, version, fields, framing, keep-alive, upgrade), and encoding that
//!   gives the same bytes: the upstream sees the request the proxy routed;
//! - after `strip_hop_by_hop` no connection-scoped field is left but `TE: trailers` and, for an
//!   upgrade, `Connection: upgrade` with its `Upgrade`.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, Version};
use lanemesh_sidecar::proxy::h1::body::Framing;
use lanemesh_sidecar::proxy::h1::head::{
    HeadError, RequestHead, encode_request, find_head_end, parse_request,
};
use lanemesh_sidecar::proxy::headers::strip_hop_by_hop;

use super::split_point;

/// What the relay's head-reading loop concludes from a sequence of reads.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// No complete head yet: the relay would read more.
    Incomplete,
    /// The status of the relay's refusal: which error it was does not reach the client, and
    /// may depend on which check saw the bad bytes first.
    Refused(u16),
    Head {
        consumed: usize,
        head: Summary,
    },
}

/// The parts of a [`RequestHead`] the upstream sees, comparable.
#[derive(Debug, PartialEq)]
struct Summary {
    method: Method,
    /// The request-target as `encode_request` writes it.
    target: String,
    version: Version,
    fields: Vec<(String, Vec<u8>)>,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
}

fn summary(head: &RequestHead) -> Summary {
    let parts = &head.parts;
    let target = if parts.method == Method::CONNECT {
        parts.uri.authority().map_or("", |a| a.as_str()).to_owned()
    } else {
        // The origin form the request goes upstream in: an absolute-form target may have no
        // path (`http://host?q` is `/?q`).
        let path = match parts.uri.path() {
            "" => "/",
            path => path,
        };
        match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        }
    };
    Summary {
        method: parts.method.clone(),
        target,
        version: parts.version,
        fields: fields(&parts.headers),
        framing: head.framing,
        keep_alive: head.keep_alive,
        upgrade: head.upgrade,
    }
}

fn fields(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The status `Http1Relay` answers a refused head with.
fn refusal(error: &HeadError) -> u16 {
    match error {
        HeadError::TooManyHeaders => 431,
        _ => 400,
    }
}

/// The loop of `Http1Relay::read_request_head`, fed `reads` one after the other.
fn relay_read<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> (Verdict, Option<RequestHead>) {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut scanned = 0;
    for read in reads {
        buf.extend_from_slice(read);
        fed += read.len();
        loop {
            match find_head_end(&buf, &mut scanned) {
                Err(error) => return (Verdict::Refused(refusal(&error)), None),
                Ok(None) => break,
                // Only empty lines before the request line so far: look for the next end.
                Ok(Some(_)) => match parse_request(&mut buf) {
                    Err(error) => return (Verdict::Refused(refusal(&error)), None),
                    Ok(None) => {}
                    Ok(Some(head)) => {
                        let consumed = fed - buf.len();
                        let verdict = Verdict::Head {
                            consumed,
                            head: summary(&head),
                        };
                        return (verdict, Some(head));
                    }
                },
            }
        }
    }
    (Verdict::Incomplete, None)
}

pub fn run(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let (whole, head) = relay_read([input]);

    let (a, b) = input.split_at(split_point(selector, input.len()));
    let (split, _) = relay_read([a, b]);
    assert_eq!(whole, split, "cut at {}", a.len());

    let step = usize::from(selector % 16) + 1;
    let (pieces, _) = relay_read(input.chunks(step));
    assert_eq!(whole, pieces, "read {step} bytes at a time");

    if let Some(head) = head {
        round_trip(head);
    }
}

/// Encodes `head` for the upstream and checks it reads back the same, before and after the
/// hop-by-hop fields are removed.
fn round_trip(mut head: RequestHead) {
    reencode(&head, true);
    strip_hop_by_hop(&mut head.parts.headers, head.upgrade);
    let headers = &head.parts.headers;
    for name in [
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        assert!(!headers.contains_key(&name), "{name} left after stripping");
    }
    let connection: Vec<_> = headers.get_all(header::CONNECTION).iter().collect();
    if head.upgrade {
        assert_eq!(connection, ["upgrade"], "Connection of an upgrade");
    } else {
        assert!(connection.is_empty(), "Connection left: {connection:?}");
        assert!(!headers.contains_key(header::UPGRADE), "Upgrade left");
    }
    let te: Vec<_> = headers.get_all(header::TE).iter().collect();
    assert!(te.is_empty() || te == ["trailers"], "TE left: {te:?}");
    // Keep-alive is the client connection's; without `Connection` the upstream reads its own.
    reencode(&head, false);
}

fn reencode(head: &RequestHead, same_connection: bool) {
    let mut out = BytesMut::new();
    encode_request(head, &mut out);
    let mut scanned = 0;
    assert_eq!(
        find_head_end(&out, &mut scanned),
        Ok(Some(out.len())),
        "encoded head {:?} is not one complete head",
        String::from_utf8_lossy(&out)
    );
    let mut again = out.clone();
    let reparsed = match parse_request(&mut again) {
        Ok(Some(reparsed)) => reparsed,
        other => panic!(
            "encoded head {:?} does not parse: {other:?}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert!(again.is_empty(), "encoded head parsed short");
    let (mut sent, seen) = (summary(head), summary(&reparsed));
    if !same_connection {
        sent.keep_alive = seen.keep_alive;
    }
    assert_eq!(seen, sent, "head changed on the way out");
    let mut twice = BytesMut::new();
    encode_request(&reparsed, &mut twice);
    assert_eq!(twice, out, "encoding is not stable");
}
