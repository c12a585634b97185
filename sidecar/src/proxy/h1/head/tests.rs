#![allow(clippy::unwrap_used)]
use super::*;
use crate::proxy::headers::strip_hop_by_hop;

fn request(raw: &str) -> Result<Option<RequestHead>, HeadError> {
    parse_request(&mut BytesMut::from(raw))
}

fn client() -> ClientSide {
    ClientSide {
        keep_alive: true,
        http10: false,
        head_request: false,
        upgrade: false,
    }
}

fn response(raw: &str, side: ClientSide) -> (ResponseHead, String, usize) {
    let mut buf = BytesMut::from(raw);
    let mut out = BytesMut::new();
    let head = parse_response(&mut buf, side, &mut out).unwrap().unwrap();
    (head, String::from_utf8(out.to_vec()).unwrap(), buf.len())
}

#[test]
fn request_head_is_parsed_and_removed_from_the_buffer() {
    let mut buf = BytesMut::from(
        "POST /a?b=1 HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nabcGET",
    );
    let head = parse_request(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..], b"abcGET");
    assert_eq!(head.parts.method, Method::POST);
    assert_eq!(head.parts.uri, "/a?b=1");
    assert_eq!(head.framing, Framing::Length(3));
    assert!(head.keep_alive && !head.upgrade);
    let two: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
    assert_eq!(two, ["1", "2"]);
    // Framing fields are kept aside, not in the router's view.
    assert!(head.parts.headers.get(header::CONTENT_LENGTH).is_none());
}

#[test]
fn incomplete_head_leaves_the_buffer_alone() {
    let mut buf = BytesMut::from("GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(parse_request(&mut buf).unwrap().is_none());
    assert_eq!(buf.len(), 25);
}

#[test]
fn ambiguous_or_invalid_framing_is_refused() {
    let cases = [
        (
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Ambiguous,
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            HeadError::ContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            HeadError::ContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            HeadError::ContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            HeadError::TransferEncoding,
        ),
    ];
    for (raw, error) in cases {
        assert_eq!(request(raw).unwrap_err(), error, "{raw:?}");
    }
    // Repeating the same length is allowed.
    let same = request("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").unwrap();
    assert_eq!(same.unwrap().framing, Framing::Length(3));
    assert!(matches!(
        request("GET / HTTP/1.1\r\nbad header\r\n\r\n"),
        Err(HeadError::Syntax(_))
    ));
}

#[test]
fn keep_alive_and_upgrade_follow_version_and_connection() {
    let h10 = request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h10.keep_alive);
    let h10_keep = request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h10_keep.keep_alive);
    let close = request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!close.keep_alive);
    let ws =
        request("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
    assert!(ws.upgrade);
}

#[test]
fn request_is_encoded_in_origin_form_with_its_framing() {
    let mut head = request(
        "PUT http://svc.ns:80/x?y=1 HTTP/1.1\r\nHost: svc.ns\r\nTransfer-Encoding:  ChUnKeD \r\n\r\n",
    )
    .unwrap()
    .unwrap();
    head.parts
        .headers
        .insert("x-lanemesh-tag", HeaderValue::from_static("gray"));
    let mut out = BytesMut::new();
    encode_request(&head, &mut out);
    assert_eq!(
        &out[..],
        b"PUT /x?y=1 HTTP/1.1\r\nhost: svc.ns\r\nx-lanemesh-tag: gray\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[test]
fn response_head_is_relayed_without_hop_by_hop_fields() {
    let (head, out, left) = response(
        "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nConnection: x-private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nX-Kept:  a b \r\n\r\nok",
        client(),
    );
    assert_eq!(left, 2, "the body stays in the buffer");
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.framing, Framing::Length(2));
    assert!(head.upstream_keep_alive && head.client_keep_alive);
    assert_eq!(
        out,
        "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nX-Kept: a b\r\n\r\n"
    );
}

#[test]
fn response_framing_depends_on_request_and_status() {
    let head_req = ClientSide {
        head_request: true,
        ..client()
    };
    let (head, _, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head_req);
    assert_eq!(head.framing, Framing::Empty);
    for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
        let (head, _, _) = response(&format!("HTTP/1.1 {status}\r\n\r\n"), client());
        assert_eq!(head.framing, Framing::Empty, "{status}");
    }
    let (interim, _, _) = response("HTTP/1.1 100 Continue\r\n\r\n", client());
    assert!(interim.is_interim());
    // Transfer-Encoding wins and the Content-Length is not relayed.
    let (chunked, out, _) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        client(),
    );
    assert_eq!(chunked.framing, Framing::Chunked);
    assert!(!out.to_ascii_lowercase().contains("content-length"));
    // No length: the body ends with the connection, and so does the client's.
    let (until_close, out, _) = response("HTTP/1.1 200 OK\r\n\r\n", client());
    assert_eq!(until_close.framing, Framing::UntilClose);
    assert!(!until_close.upstream_keep_alive && !until_close.client_keep_alive);
    assert!(out.ends_with("connection: close\r\n\r\n"));
}

#[test]
fn connection_reuse_follows_both_sides() {
    let (closing, _, _) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        client(),
    );
    assert!(!closing.upstream_keep_alive);
    assert!(
        closing.client_keep_alive,
        "the client connection is separate"
    );
    let (old, _, _) = response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", client());
    assert!(!old.upstream_keep_alive);
    let h10_client = ClientSide {
        http10: true,
        ..client()
    };
    let (_, out, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", h10_client);
    assert!(out.ends_with("connection: keep-alive\r\n\r\n"), "{out}");
    let (upgrade, out, _) = response(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ClientSide {
            upgrade: true,
            ..client()
        },
    );
    assert!(upgrade.is_upgrade());
    assert!(out.contains("Upgrade: websocket\r\n") && out.contains("connection: upgrade\r\n"));
}

#[test]
fn local_response_has_length_and_connection() {
    let mut out = BytesMut::new();
    let mut headers = HeaderMap::new();
    headers.insert("x-lanemesh-error", HeaderValue::from_static("no_endpoint"));
    encode_local(
        StatusCode::SERVICE_UNAVAILABLE,
        &headers,
        &Bytes::from_static(b"gone\n"),
        ClientSide {
            keep_alive: false,
            ..client()
        },
        &mut out,
    );
    assert_eq!(
        &out[..],
        b"HTTP/1.1 503 Service Unavailable\r\nx-lanemesh-error: no_endpoint\r\ncontent-length: 5\r\nconnection: close\r\n\r\ngone\n"
    );
}

/// A body behind the head of a HEAD answer would be read as the next response.
#[test]
fn local_response_to_head_announces_its_length_but_has_no_body() {
    let mut out = BytesMut::new();
    let head_request = ClientSide {
        head_request: true,
        ..client()
    };
    encode_local(
        StatusCode::TOO_MANY_REQUESTS,
        &HeaderMap::new(),
        &Bytes::from_static(b"limited\n"),
        head_request,
        &mut out,
    );
    assert_eq!(
        &out[..],
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 8\r\n\r\n"
    );
    out.clear();
    let http10 = ClientSide {
        http10: true,
        ..client()
    };
    encode_local(
        StatusCode::NO_CONTENT,
        &HeaderMap::new(),
        &Bytes::from_static(b"ignored"),
        http10,
        &mut out,
    );
    assert_eq!(
        &out[..],
        b"HTTP/1.1 204 No Content\r\nconnection: keep-alive\r\n\r\n"
    );
}

#[test]
fn transfer_encoding_must_be_one_chunked_field() {
    for raw in [
        "POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
    ] {
        assert_eq!(
            request(raw).unwrap_err(),
            HeadError::TransferEncoding,
            "{raw:?}"
        );
    }
    assert_eq!(
        request("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
        HeadError::Http10TransferEncoding
    );
    let upper = request("POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(upper.framing, Framing::Chunked);
    assert!(upper.parts.headers.get(header::TRANSFER_ENCODING).is_none());
}

/// httparse accepts bare LF line endings; the end-of-head scan refuses them. Obs-fold and a
/// space before the colon are refused by httparse itself for requests.
#[test]
fn bare_lf_obs_fold_and_space_before_colon_are_refused() {
    for raw in [
        &b"GET / HTTP/1.1\nHost: x\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        b"\nGET / HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            find_head_end(raw, &mut 0),
            Err(HeadError::BareLf),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    for raw in [
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
    ] {
        assert!(
            matches!(request(raw), Err(HeadError::Syntax(_))),
            "{raw:?}: {:?}",
            request(raw)
        );
    }
}

/// Dribbled byte by byte, a head is searched once in total and found at its last byte.
#[test]
fn end_of_head_scan_looks_at_each_byte_once() {
    let raw = b"GET /x HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\n\r\nNEXT";
    let end = raw.len() - 4;
    let mut scanned = 0;
    for len in 1..end {
        assert_eq!(find_head_end(&raw[..len], &mut scanned), Ok(None), "{len}");
        assert_eq!(scanned, len, "only the new byte is looked at");
    }
    assert_eq!(find_head_end(&raw[..end], &mut scanned), Ok(Some(end)));
    let mut scanned = 0;
    assert_eq!(find_head_end(raw, &mut scanned), Ok(Some(end)));
    assert_eq!(scanned, end, "the body behind the head is not scanned");
    // The CRLF CRLF can straddle reads at any point.
    for split in 1..end {
        let mut scanned = 0;
        assert_eq!(find_head_end(&raw[..split], &mut scanned), Ok(None));
        assert_eq!(find_head_end(raw, &mut scanned), Ok(Some(end)), "{split}");
    }
}

#[test]
fn connection_cannot_strip_host_and_upgrades_keep_only_upgrade() {
    let mut head = request(
        "GET / HTTP/1.1\r\nHost: svc\r\nConnection: host, X-Private, x-mse-tag\r\n\
         Connection: te\r\nx-private: 1\r\nx-mse-tag: blue\r\nTE: trailers\r\nx-kept: 1\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    strip_hop_by_hop(&mut head.parts.headers, false);
    let mut names: Vec<_> = head.parts.headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", "x-kept"]);

    let mut ws = request(
        "GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, x-private, host\r\n\
         Upgrade: websocket\r\nx-private: 1\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert!(ws.upgrade);
    strip_hop_by_hop(&mut ws.parts.headers, true);
    assert_eq!(ws.parts.headers["connection"], "upgrade");
    assert_eq!(ws.parts.headers["upgrade"], "websocket");
    assert_eq!(ws.parts.headers["host"], "svc");
    assert!(ws.parts.headers.get("x-private").is_none());
}

/// Both framings in a response: Transfer-Encoding decides, the connection is not reused.
#[test]
fn response_with_both_framings_ends_its_upstream_connection() {
    let (head, out, _) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        client(),
    );
    assert_eq!(head.framing, Framing::Chunked);
    assert!(!head.upstream_keep_alive);
    assert!(head.client_keep_alive);
    assert!(
        !out.to_ascii_lowercase().contains("content-length"),
        "{out}"
    );
    let mut buf =
        BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(
        parse_response(&mut buf, client(), &mut BytesMut::new()),
        Err(HeadError::ContentLength)
    );
    let mut buf = BytesMut::from("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(
        parse_response(&mut buf, client(), &mut BytesMut::new()),
        Err(HeadError::Http10TransferEncoding)
    );
    // Naming a framing field in `Connection` does not hide it from the client.
    let (_, out, _) = response(
        "HTTP/1.1 200 OK\r\nConnection: transfer-encoding, content-length\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        client(),
    );
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
}

#[test]
fn chunked_response_to_an_http10_client_is_dechunked_and_closed() {
    let h10 = ClientSide {
        http10: true,
        ..client()
    };
    let (head, out, _) = response(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
        h10,
    );
    assert!(head.dechunk);
    assert!(head.upstream_keep_alive && !head.client_keep_alive);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n");
    let (plain, _, _) = response(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        client(),
    );
    assert!(!plain.dechunk);
}

#[test]
fn an_absolute_form_target_without_a_path_goes_out_in_origin_form() {
    // Found by the h1-request fuzz target: `GET http://host?q` went upstream as `GET ?q`.
    for (raw, sent) in [
        (
            "GET http://example.test?y=1 HTTP/1.1\r\nHost: example.test\r\n\r\n",
            "GET /?y=1 HTTP/1.1\r\n",
        ),
        (
            "GET http://example.test HTTP/1.1\r\nHost: example.test\r\n\r\n",
            "GET / HTTP/1.1\r\n",
        ),
        (
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.test\r\n\r\n",
            "GET /a/b?c=d HTTP/1.1\r\n",
        ),
    ] {
        let head = request(raw).unwrap().unwrap();
        let mut out = BytesMut::new();
        encode_request(&head, &mut out);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(out.starts_with(sent), "{raw:?} -> {out:?}");
    }
}

#[test]
fn empty_lines_before_the_request_line_do_not_end_the_head() {
    // Found by the h1-request fuzz target: leading empty lines counted as the end of the head
    // let httparse parse the rest past the bare-LF check, so the verdict depended on how the
    // bytes were split into reads.
    let raw = b"\r\n\r\nGET /a HTTP/1.1\r\nHost: svc.test-\nX-A: 1\r\n\r\n";
    let mut scanned = 0;
    assert_eq!(find_head_end(raw, &mut scanned), Err(HeadError::BareLf));
    let raw = b"\r\n\r\nGET /a HTTP/1.1\r\nHost: svc.test\r\n\r\n";
    let mut scanned = 0;
    assert_eq!(find_head_end(&raw[..4], &mut scanned), Ok(None));
    assert_eq!(find_head_end(raw, &mut scanned), Ok(Some(raw.len())));
    let mut scanned = 0;
    assert!(find_head_end(&[b'\r', b'\n'].repeat(5), &mut scanned).is_err());
}

#[test]
fn a_response_with_transfer_encoding_never_carries_content_length_to_the_client() {
    // Found by the h1-response fuzz target: to a HEAD request the framing is "no body", and the
    // head went out with both fields (RFC 9112 §6.1: a sender must not send both).
    let head_request = ClientSide {
        head_request: true,
        ..client()
    };
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"[..],
    );
    let mut out = BytesMut::new();
    let head = parse_response(&mut buf, head_request, &mut out)
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out.to_vec())
        .unwrap()
        .to_ascii_lowercase();
    assert!(!text.contains("content-length"), "{text}");
    assert!(
        !head.upstream_keep_alive,
        "both framings end the upstream connection"
    );
    // A coding other than chunked means "until close" to the client, body or not.
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"[..]);
    let mut out = BytesMut::new();
    let head = parse_response(&mut buf, head_request, &mut out)
        .unwrap()
        .unwrap();
    assert!(!head.client_keep_alive);
}

#[test]
fn connect_takes_only_host_and_port() {
    // Found by the h1-request fuzz target: `CONNECT /x` went upstream as `CONNECT  HTTP/1.1`.
    for bad in ["/x", "example.test", "http://example.test:443/"] {
        let raw = format!("CONNECT {bad} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            matches!(request(&raw), Err(HeadError::Invalid(_))),
            "{bad} accepted"
        );
    }
    let head = request("CONNECT example.test:443 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .unwrap();
    let mut out = BytesMut::new();
    encode_request(&head, &mut out);
    assert!(out.starts_with(b"CONNECT example.test:443 HTTP/1.1\r\n"));
}
