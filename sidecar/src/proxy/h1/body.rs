//! HTTP/1 message framing (RFC 9112 §6): where a body ends. Bodies are relayed verbatim (a
//! chunked body stays chunked on the wire), so the proxy only has to know how many of the bytes
//! it reads still belong to the current message; [`Chunked`] finds that out incrementally for
//! chunked bodies, validating the framing as it goes so a malformed body cannot make the two
//! sides of the proxy disagree about where the next message starts.

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a request without length headers, HEAD/1xx/204/304 responses).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: ...chunked`: chunks up to the last chunk and its trailer section.
    Chunked,
    /// A response without length: everything until the upstream closes.
    UntilClose,
}

/// A chunked body the proxy refuses to relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// A chunk-size line that is not hexadecimal, or too large.
    #[error("invalid chunk size")]
    Size,
    /// A chunk's data not followed by CRLF.
    #[error("chunk data not terminated by CRLF")]
    DataEnd,
    /// A bare CR or LF, or a control character, where a line was expected.
    #[error("malformed chunk line")]
    Line,
    /// A chunk-size line (with extensions) or the trailer section grew past its limit.
    #[error("chunk extensions or trailers too long")]
    TooLong,
}

/// Longest chunk-size line (with extensions) and longest trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Chunk sizes above this are refused (2^60: 15 hex digits, no overflow when added up).
const MAX_CHUNK: u64 = 1 << 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk-size digits.
    Size,
    /// After the digits: optional whitespace and `;ext` up to CR.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Incremental scanner of a chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }

    /// Whether the last chunk and the trailer section have been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of the body from the front of `buf` and returns how many belong to it:
    /// all of `buf`, or fewer when the body ends inside it (the rest is the next message).
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    // Skip chunk data in one step: this is where a large body spends its time.
                    let avail = (buf.len() - i) as u64;
                    let take = left.min(avail);
                    // `take` <= buf.len() - i, so it fits in usize.
                    i += take as usize;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                _ => {}
            }
            let byte = buf[i];
            i += 1;
            self.state = match self.state {
                State::Size => match hex(byte) {
                    Some(digit) => {
                        self.digits += 1;
                        self.size = (self.size << 4) | u64::from(digit);
                        if self.digits > 15 || self.size > MAX_CHUNK {
                            return Err(ChunkedError::Size);
                        }
                        State::Size
                    }
                    None if self.digits == 0 => return Err(ChunkedError::Size),
                    None => {
                        self.line = 0;
                        self.after_size(byte)?
                    }
                },
                State::Extension => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkedError::TooLong);
                    }
                    self.after_size(byte)?
                }
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::Line);
                    }
                    let size = std::mem::take(&mut self.size);
                    self.digits = 0;
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr => expect(byte, b'\r', ChunkedError::DataEnd, State::DataLf)?,
                State::DataLf => expect(byte, b'\n', ChunkedError::DataEnd, State::Size)?,
                State::TrailerStart => match byte {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(ChunkedError::Line),
                    _ => {
                        self.trailer_byte()?;
                        State::TrailerLine
                    }
                },
                State::TrailerLine => {
                    self.trailer_byte()?;
                    match byte {
                        b'\r' => State::TrailerLf,
                        b'\n' => return Err(ChunkedError::Line),
                        _ => State::TrailerLine,
                    }
                }
                State::TrailerLf => expect(byte, b'\n', ChunkedError::Line, State::TrailerStart)?,
                State::EndLf => expect(byte, b'\n', ChunkedError::Line, State::Done)?,
                // Proven: both are handled above before a byte is read.
                State::Data(_) | State::Done => unreachable!("handled before reading a byte"),
            };
            if self.state == State::Done {
                break;
            }
        }
        Ok(i)
    }

    /// A byte after the size digits: extensions (anything printable or tab) until CR.
    fn after_size(&mut self, byte: u8) -> Result<State, ChunkedError> {
        match byte {
            b'\r' => Ok(State::SizeLf),
            b'\n' => Err(ChunkedError::Line),
            b'\t' | b' '..=b'~' | 0x80..=0xff => Ok(State::Extension),
            _ => Err(ChunkedError::Line),
        }
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkedError::TooLong);
        }
        Ok(())
    }
}

/// `next` if `byte` is the delimiter the framing requires here.
fn expect(byte: u8, want: u8, error: ChunkedError, next: State) -> Result<State, ChunkedError> {
    if byte == want { Ok(next) } else { Err(error) }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Scans `body` split at every possible point and returns where each split run says it ends.
    fn end_of(body: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut whole = Chunked::new();
        let n = whole.scan(body)?;
        let whole_end = whole.is_done().then_some(n);
        for split in 0..=body.len() {
            let mut parts = Chunked::new();
            let a = parts.scan(&body[..split])?;
            let end = if parts.is_done() {
                Some(a)
            } else {
                let b = parts.scan(&body[split..])?;
                parts.is_done().then_some(split + b)
            };
            assert_eq!(end, whole_end, "split at {split}");
        }
        Ok(whole_end)
    }

    #[test]
    fn finds_the_end_of_a_chunked_body_and_leaves_the_next_message() {
        let body =
            b"5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nGET /next";
        assert_eq!(end_of(body).unwrap(), Some(body.len() - 9));
    }

    #[test]
    fn trailers_belong_to_the_body() {
        let body = b"3\r\nabc\r\n0\r\nx-checksum: 1\r\nx-other: 2\r\n\r\n";
        assert_eq!(end_of(body).unwrap(), Some(body.len()));
    }

    #[test]
    fn incomplete_bodies_are_not_done() {
        for body in [&b"5\r\nhel"[..], b"5\r\nhello\r\n0\r\n", b"0\r\nx: y\r\n"] {
            assert_eq!(
                end_of(body).unwrap(),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        let cases: [(&[u8], ChunkedError); 6] = [
            (b"z\r\n", ChunkedError::Size),
            (b"\r\n", ChunkedError::Size),
            (b"1234567890abcdef0\r\n", ChunkedError::Size),
            (b"3\r\nabcX\r\n", ChunkedError::DataEnd),
            (b"3\nabc\r\n", ChunkedError::Line),
            (b"0\r\nx: y\n\r\n", ChunkedError::Line),
        ];
        for (body, error) in cases {
            assert_eq!(Chunked::new().scan(body), Err(error), "{body:?}");
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_LINE + 1]].concat();
        assert_eq!(Chunked::new().scan(&long_ext), Err(ChunkedError::TooLong));
    }

    #[test]
    fn a_large_chunk_is_skipped_without_looking_at_its_bytes() {
        let mut scanner = Chunked::new();
        assert_eq!(scanner.scan(b"100000\r\n").unwrap(), 8);
        let data = vec![b'\r'; 0x100000];
        assert_eq!(scanner.scan(&data).unwrap(), data.len());
        assert!(!scanner.is_done());
        assert_eq!(scanner.scan(b"\r\n0\r\n\r\n").unwrap(), 7);
        assert!(scanner.is_done());
    }
}
