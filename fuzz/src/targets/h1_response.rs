//! The HTTP/1 response head as the relay reads it from an upstream: `parse_response`, which
//! also writes the head the client gets, over interim `1xx` heads up to the final one.
//!
//! Input: one byte of flags (bits 0-3: the client's keep-alive, HTTP/1.0, HEAD request and
//! upgrade; bits 4-7: where the rest is cut in two), then the bytes an upstream sends.
//! Invariants:
//! - an incomplete head consumes and writes nothing, and cutting the bytes in two gives the
//!   same heads as reading them at once;
//! - the head written for the client is one complete head that parses again with the same
//!   status, tells the client the framing the relay uses for the body (close-delimited when it
//!   de-chunks for an HTTP/1.0 client) and whether the connection stays open, and parsing it
//!   again writes the same bytes.

use bytes::BytesMut;
use lanemesh_sidecar::proxy::h1::body::Framing;
use lanemesh_sidecar::proxy::h1::head::{
    ClientSide, HeadError, ResponseHead, find_head_end, parse_response,
};

use super::split_point;

/// Interim heads read before giving up on an input (the relay reads any number, but a few
/// reach every path).
const MAX_HEADS: usize = 8;

/// One parsed head: what the relay decided, what the client gets, bytes consumed.
type Parsed = (ResponseHead, BytesMut, usize);

/// The heads the relay parses from `reads`, and how it stopped (`None`: needs more bytes).
fn relay_read<'a>(
    reads: impl IntoIterator<Item = &'a [u8]>,
    client: ClientSide,
) -> (Vec<Parsed>, Option<HeadError>) {
    let mut buf = BytesMut::new();
    let mut heads = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        while heads.len() < MAX_HEADS {
            let before = buf.clone();
            let mut out = BytesMut::new();
            match parse_response(&mut buf, client, &mut out) {
                Err(error) => return (heads, Some(error)),
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete head consumed bytes");
                    assert!(out.is_empty(), "an incomplete head wrote {out:?}");
                    break;
                }
                Ok(Some(head)) => {
                    let consumed = before.len() - buf.len();
                    let interim = head.is_interim();
                    heads.push((head, out, consumed));
                    if !interim {
                        return (heads, None);
                    }
                }
            }
        }
    }
    (heads, None)
}

pub fn run(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let client = ClientSide {
        keep_alive: flags & 1 != 0,
        http10: flags & 2 != 0,
        head_request: flags & 4 != 0,
        upgrade: flags & 8 != 0,
    };
    let whole = relay_read([input], client);
    let (a, b) = input.split_at(split_point((flags >> 4) * 17, input.len()));
    let split = relay_read([a, b], client);
    assert_eq!(whole, split, "cut at {}", a.len());
    for (head, out, _) in &whole.0 {
        client_view(head, out, client);
    }
}

/// Checks the head written for the client says what the relay does.
fn client_view(head: &ResponseHead, out: &BytesMut, client: ClientSide) {
    let shown = || String::from_utf8_lossy(out).into_owned();
    let mut scanned = 0;
    assert_eq!(
        find_head_end(out, &mut scanned),
        Ok(Some(out.len())),
        "head for the client {:?} is not one complete head",
        shown()
    );
    let mut again = out.clone();
    let mut twice = BytesMut::new();
    let seen = match parse_response(&mut again, client, &mut twice) {
        Ok(Some(seen)) => seen,
        other => panic!(
            "head for the client {:?} does not parse: {other:?}",
            shown()
        ),
    };
    assert!(again.is_empty(), "head for the client parsed short");
    assert_eq!(seen.status, head.status, "status changed");
    let framing = if head.dechunk {
        Framing::UntilClose
    } else {
        head.framing
    };
    assert_eq!(
        seen.framing,
        framing,
        "client reads another framing: {:?}",
        shown()
    );
    if !client.http10 && !head.status.is_informational() {
        // `upstream_keep_alive` of the re-parse is what an HTTP/1.1 client concludes.
        assert_eq!(
            seen.upstream_keep_alive,
            head.client_keep_alive,
            "client and relay disagree about reuse: {:?}",
            shown()
        );
    }
    assert_eq!(twice, out, "head for the client is not stable");
}
