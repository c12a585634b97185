//! The chunked body scanner, which decides where a chunked body ends and so where the next
//! message on a shared connection starts.
//!
//! Input: one byte choosing how the rest is cut into reads, then body bytes.
//! Invariants:
//! - fed in two parts or in small pieces, the scanner reaches the same verdict (end position,
//!   incomplete, or the same error) and yields the same chunk data as fed at once; it never
//!   stops inside a read unless the body ended there;
//! - the data of a complete body, sent again as one chunk, scans back to the same data.

use lanemesh_sidecar::proxy::h1::body::{Chunked, ChunkedError};

use super::split_point;

#[derive(Debug, PartialEq)]
enum Verdict {
    /// The body ends after this many bytes.
    Done(usize),
    /// Every byte belongs to a body that has not ended.
    Incomplete,
    Refused(ChunkedError),
}

/// Scans `reads` one after the other as the relay does; the verdict and the chunk data.
fn scan<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> (Verdict, Vec<u8>) {
    let mut scanner = Chunked::new();
    let mut data = Vec::new();
    let mut at = 0;
    for read in reads {
        match scanner.scan_with(read, |d| data.extend_from_slice(d)) {
            Err(error) => return (Verdict::Refused(error), data),
            Ok(n) => {
                assert!(n <= read.len(), "consumed {n} of {} bytes", read.len());
                at += n;
                if scanner.is_done() {
                    return (Verdict::Done(at), data);
                }
                assert_eq!(n, read.len(), "stopped inside a read without ending");
            }
        }
    }
    (Verdict::Incomplete, data)
}

pub fn run(input: &[u8]) {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    let whole = scan([body]);

    let (a, b) = body.split_at(split_point(selector, body.len()));
    assert_eq!(scan([a, b]), whole, "cut at {}", a.len());

    let step = usize::from(selector % 16) + 1;
    assert_eq!(
        scan(body.chunks(step)),
        whole,
        "read {step} bytes at a time"
    );

    if let (Verdict::Done(_), data) = &whole {
        let mut rechunked = Vec::with_capacity(data.len() + 32);
        if !data.is_empty() {
            rechunked.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            rechunked.extend_from_slice(data);
            rechunked.extend_from_slice(b"\r\n");
        }
        rechunked.extend_from_slice(b"0\r\n\r\n");
        let again = scan([rechunked.as_slice()]);
        assert_eq!(again.0, Verdict::Done(rechunked.len()), "one chunk");
        assert_eq!(&again.1, data, "data changed when sent as one chunk");
    }
}
