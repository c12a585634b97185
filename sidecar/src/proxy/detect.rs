//! Protocol detection: read the client's first bytes (bounded in time and
//! size), classify them, and hand them back so they can be replayed.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1 request line seen.
    Http1,
    /// HTTP/2 prior-knowledge connection preface seen (h2c, gRPC).
    Http2,
    /// Anything else, including clients that stay silent: forwarded byte for byte.
    Opaque,
}

/// Verdict on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The protocol is known.
    Known(Protocol),
    /// Still a valid prefix of HTTP/1 or HTTP/2; more bytes are needed.
    NeedMore,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest method token accepted in a request line; real methods are short,
/// and a bound stops a long run of capitals being mistaken for HTTP.
const MAX_METHOD_LEN: usize = 24;

/// Classifies a buffer that starts at the first byte of a connection.
/// Returns [`Verdict::NeedMore`] only while `buf` can still become HTTP.
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Verdict::Known(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    // RFC 9112 §2.2: empty lines before the request line are ignored, so they must not make
    // an HTTP request opaque (and so ungoverned). A few are enough for any real client.
    let blank = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if blank > MAX_LEADING_BLANK {
        return Verdict::Known(Protocol::Opaque);
    }
    classify_http1(&buf[blank..])
}

/// Most CR/LF bytes accepted before a request line.
const MAX_LEADING_BLANK: usize = 8;

/// The protocol of a buffer [`classify`] could not decide when no more bytes come in time:
/// a started HTTP/1 request line stays HTTP/1 (the relay answers 408 or 431 for it, and a
/// client cannot make it opaque by pausing); anything else, including nothing, is opaque.
fn undecided(buf: &[u8]) -> Protocol {
    let n = buf.len().min(H2_PREFACE.len());
    if buf.is_empty() || buf[..n] == H2_PREFACE[..n] {
        Protocol::Opaque
    } else {
        Protocol::Http1
    }
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`.
fn classify_http1(buf: &[u8]) -> Verdict {
    const OPAQUE: Verdict = Verdict::Known(Protocol::Opaque);
    // Method: upper-case token.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len > MAX_METHOD_LEN {
        return OPAQUE;
    }
    let rest = &buf[method_len..];
    let Some((&sp, rest)) = rest.split_first() else {
        return Verdict::NeedMore;
    };
    if method_len == 0 || sp != b' ' {
        return OPAQUE;
    }
    // Target: visible ASCII up to the next space.
    let target_len = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    let after = &rest[target_len..];
    let Some((&sp, version)) = after.split_first() else {
        return Verdict::NeedMore;
    };
    if target_len == 0 || sp != b' ' {
        return OPAQUE;
    }
    for (i, expected) in b"HTTP/1.".iter().enumerate() {
        match version.get(i) {
            None => return Verdict::NeedMore,
            Some(b) if b == expected => {}
            Some(_) => return OPAQUE,
        }
    }
    match version.get(7) {
        None => return Verdict::NeedMore,
        Some(b'0' | b'1') => {}
        Some(_) => return OPAQUE,
    }
    match version.get(8..) {
        None | Some([] | [b'\r']) => Verdict::NeedMore,
        Some([b'\n', ..] | [b'\r', b'\n', ..]) => Verdict::Known(Protocol::Http1),
        Some(_) => OPAQUE,
    }
}

/// Reads from `io` until [`classify`] decides, `max_bytes` are buffered, the
/// peer closes its side, or `timeout` passes. Returns the protocol and every
/// byte read, which the caller must replay.
///
/// A buffer that is still a valid HTTP/1 prefix when it reaches `max_bytes`
/// counts as HTTP/1 (a long URI), so the HTTP server can answer 414/431 instead
/// of the bytes going to the destination raw.
pub async fn detect<R>(io: &mut R, timeout: Duration, max_bytes: usize) -> (Protocol, BytesMut)
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(max_bytes.min(1024));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match classify(&buf) {
            Verdict::Known(protocol) => return (protocol, buf),
            Verdict::NeedMore if buf.len() >= max_bytes => return (undecided(&buf), buf),
            Verdict::NeedMore => {}
        }
        let room = max_bytes - buf.len();
        let mut limited = (&mut *io).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await {
            // Silent client (server-first protocol, or one waiting out detection: the caller
            // sees the empty buffer), or half a request line in time.
            Err(_elapsed) => return (undecided(&buf), buf),
            // EOF or a read error: nothing more will come; let the TCP path deal with it.
            Ok(Ok(0)) | Ok(Err(_)) => return (Protocol::Opaque, buf),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(line), Verdict::Known(Protocol::Http1), "{line:?}");
        }
    }

    #[test]
    fn prefixes_need_more() {
        for prefix in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"GET /index",
            b"GET / HTTP/1",
            b"GET / HTTP/1.1",
            b"PRI * HTTP/2.0\r\n",
        ] {
            assert_eq!(classify(prefix), Verdict::NeedMore, "{prefix:?}");
        }
    }

    #[test]
    fn h2_preface() {
        assert_eq!(classify(H2_PREFACE), Verdict::Known(Protocol::Http2));
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_frames), Verdict::Known(Protocol::Http2));
    }

    #[test]
    fn garbage_is_opaque_immediately() {
        for junk in [
            &b"\x16\x03\x01\x02\x00"[..], // TLS ClientHello
            b"\x00\x00\x00",
            b"get / HTTP/1.1\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / FTP/1.1\r\n",
            b"GET / HTTP/1.1 extra\r\n",
            b"*3\r\n$3\r\nSET\r\n", // Redis
            b"PRI * HTTP/2.0\r\n\r\nXX",
        ] {
            assert_eq!(classify(junk), Verdict::Known(Protocol::Opaque), "{junk:?}");
        }
        let long_caps = vec![b'A'; MAX_METHOD_LEN + 1];
        assert_eq!(classify(&long_caps), Verdict::Known(Protocol::Opaque));
    }

    #[tokio::test]
    async fn detect_replays_bytes_and_honours_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HT")
            .await
            .unwrap_or_default();
        let started = std::time::Instant::now();
        let (protocol, bytes) = detect(&mut server, Duration::from_millis(100), 4096).await;
        assert_eq!(
            protocol,
            Protocol::Http1,
            "a paused request line stays HTTP"
        );
        assert_eq!(&bytes[..], b"GET / HT");
        assert!(started.elapsed() >= Duration::from_millis(90));

        tokio::io::AsyncWriteExt::write_all(&mut client, b"TP/1.1\r\n")
            .await
            .unwrap_or_default();
        let mut replay = bytes;
        let (mut c2, mut s2) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut c2, &replay.split()[..])
            .await
            .unwrap_or_default();
        tokio::io::AsyncWriteExt::write_all(&mut c2, b"TP/1.1\r\n")
            .await
            .unwrap_or_default();
        let (protocol, bytes) = detect(&mut s2, Duration::from_secs(5), 4096).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn empty_lines_before_the_request_line_are_http() {
        assert_eq!(classify(b"\r\n"), Verdict::NeedMore);
        assert_eq!(
            classify(b"\r\n\r\nGET / HTTP/1.1\r\n"),
            Verdict::Known(Protocol::Http1)
        );
        let mut many = b"\r\n".repeat(MAX_LEADING_BLANK);
        many.extend_from_slice(b"\r\n");
        assert_eq!(classify(&many), Verdict::Known(Protocol::Opaque));
    }

    #[tokio::test]
    async fn a_silent_client_or_a_partial_preface_is_opaque_at_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (protocol, bytes) = detect(&mut server, Duration::from_millis(20), 4096).await;
        assert_eq!((protocol, bytes.len()), (Protocol::Opaque, 0));
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n")
            .await
            .unwrap_or_default();
        let (protocol, _) = detect(&mut server, Duration::from_millis(20), 4096).await;
        assert_eq!(protocol, Protocol::Opaque);
    }

    #[tokio::test]
    async fn detect_stops_at_max_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10_000));
        tokio::io::AsyncWriteExt::write_all(&mut client, &long)
            .await
            .unwrap_or_default();
        let (protocol, bytes) = detect(&mut server, Duration::from_secs(5), 512).await;
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(bytes.len(), 512);
    }
}
