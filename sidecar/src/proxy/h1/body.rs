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
    /// A chunk-size line that does not start with hexadecimal digits, or too many of them.
    #[error("invalid chunk size")]
    Size,
    /// Something after the size digits other than `BWS ; name [ BWS = BWS value ]` groups
    /// (RFC 9112 §7.1.1): `0x5` or `5 5` mean different sizes to different parsers.
    #[error("malformed chunk extension")]
    Extension,
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
/// Most hex digits in a chunk size (leading zeros included): 15 digits stay below 2^60, so
/// no size can overflow, and nobody needs a chunk of an exabyte.
const MAX_DIGITS: u8 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk-size digits.
    Size,
    /// Whitespace after the size or an extension value: only `;` may follow.
    BwsSemi,
    /// After `;`: optional whitespace, then an extension name.
    ExtNameStart,
    /// Inside an extension name.
    ExtName,
    /// Whitespace after an extension name: only `=` may follow.
    BwsEq,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ExtValueStart,
    /// Inside a token value.
    ExtValue,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedPair,
    /// Right after the closing quote.
    ExtQuotedEnd,
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
        self.scan_with(buf, |_| {})
    }

    /// [`Chunked::scan`] that also hands every piece of chunk data to `data`, in order: the
    /// body with the chunked coding removed (for a client that cannot read chunked).
    pub fn scan_with(
        &mut self,
        buf: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    // Skip chunk data in one step: this is where a large body spends its time.
                    let avail = (buf.len() - i) as u64;
                    let take = left.min(avail);
                    // `take` <= buf.len() - i, so it fits in usize.
                    let end = i + take as usize;
                    data(&buf[i..end]);
                    i = end;
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
                        if self.digits > MAX_DIGITS {
                            return Err(ChunkedError::Size);
                        }
                        self.size = (self.size << 4) | u64::from(digit);
                        State::Size
                    }
                    None if self.digits == 0 => return Err(ChunkedError::Size),
                    None => {
                        self.line = 0;
                        match byte {
                            b'\r' => State::SizeLf,
                            b' ' | b'\t' => State::BwsSemi,
                            b';' => State::ExtNameStart,
                            b'\n' => return Err(ChunkedError::Line),
                            _ => return Err(ChunkedError::Size),
                        }
                    }
                },
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
                extension => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkedError::TooLong);
                    }
                    extension_byte(extension, byte)?
                }
            };
            if self.state == State::Done {
                break;
            }
        }
        Ok(i)
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkedError::TooLong);
        }
        Ok(())
    }
}

/// One byte of the chunk extensions (RFC 9112 §7.1.1):
/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`, then CR.
fn extension_byte(state: State, byte: u8) -> Result<State, ChunkedError> {
    let ws = byte == b' ' || byte == b'\t';
    let next = match state {
        State::BwsSemi if ws => State::BwsSemi,
        State::BwsSemi if byte == b';' => State::ExtNameStart,
        State::ExtNameStart if ws => State::ExtNameStart,
        State::ExtNameStart if is_tchar(byte) => State::ExtName,
        State::ExtName if is_tchar(byte) => State::ExtName,
        State::ExtName if ws => State::BwsEq,
        State::ExtName | State::BwsEq if byte == b'=' => State::ExtValueStart,
        State::BwsEq if ws => State::BwsEq,
        State::ExtValueStart if ws => State::ExtValueStart,
        State::ExtValueStart if byte == b'"' => State::ExtQuoted,
        State::ExtValueStart if is_tchar(byte) => State::ExtValue,
        State::ExtValue if is_tchar(byte) => State::ExtValue,
        State::ExtValue | State::ExtQuotedEnd if ws => State::BwsSemi,
        State::ExtName | State::ExtValue | State::ExtQuotedEnd if byte == b';' => {
            State::ExtNameStart
        }
        State::ExtName | State::ExtValue | State::ExtQuotedEnd if byte == b'\r' => State::SizeLf,
        State::ExtQuoted => match byte {
            b'"' => State::ExtQuotedEnd,
            b'\\' => State::ExtQuotedPair,
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => State::ExtQuoted,
            _ => return Err(ChunkedError::Extension),
        },
        State::ExtQuotedPair => match byte {
            b'\t' | b' '..=b'~' | 0x80..=0xff => State::ExtQuoted,
            _ => return Err(ChunkedError::Extension),
        },
        _ if byte == b'\n' => return Err(ChunkedError::Line),
        _ => return Err(ChunkedError::Extension),
    };
    Ok(next)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
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

    /// What a lenient parser reads as another size (`0x5` as 0 or 5, `5 5` as 5 or 0x55) must
    /// not pass; extensions pass only in their RFC 9112 §7.1.1 form.
    #[test]
    fn chunk_size_lines_follow_the_grammar() {
        let refused: [(&[u8], ChunkedError); 14] = [
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkedError::Size),
            (b"5 5\r\nhello\r\n", ChunkedError::Extension),
            (b"+5\r\nhello\r\n", ChunkedError::Size),
            (b"-0\r\n\r\n", ChunkedError::Size),
            (b"5 \r\nhello\r\n", ChunkedError::Extension),
            (b"5;\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a b\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=\"x\"y\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=\"x\ny\"\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=b\nhello\r\n", ChunkedError::Line),
            (b"5;a=b\r0\r\n", ChunkedError::Line),
            (b"0000000000000005\r\nhello\r\n", ChunkedError::Size),
            (b"5;a=\"\" \r\nhello\r\n", ChunkedError::Extension),
        ];
        for (body, error) in refused {
            assert_eq!(
                Chunked::new().scan(body),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let accepted: [&[u8]; 6] = [
            b"5;a\r\nhello\r\n0\r\n\r\n",
            b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
            b"5\t; a = b ;c\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"q \\\" ;\" ; b=c\r\nhello\r\n0\r\n\r\n",
            b"00000000000005\r\nhello\r\n0\r\n\r\n",
            b"5;a=b;c=\"\"\r\nhello\r\n0;last\r\n\r\n",
        ];
        for body in accepted {
            assert_eq!(
                end_of(body),
                Ok(Some(body.len())),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn scan_with_yields_the_data_without_the_coding() {
        let body = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nt: 1\r\n\r\nNEXT";
        for split in 0..=body.len() {
            let mut scanner = Chunked::new();
            let mut data = Vec::new();
            let a = scanner
                .scan_with(&body[..split], |d| data.extend_from_slice(d))
                .unwrap();
            let end = if scanner.is_done() {
                a
            } else {
                split
                    + scanner
                        .scan_with(&body[split..], |d| data.extend_from_slice(d))
                        .unwrap()
            };
            assert!(scanner.is_done());
            assert_eq!(end, body.len() - 4, "split at {split}");
            assert_eq!(data, b"hello world", "split at {split}");
        }
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
