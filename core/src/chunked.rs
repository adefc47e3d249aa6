//! Strict, incremental validator and decoder for the chunked transfer coding
//! (RFC 9112 §7.1).
//!
//! The proxy forwards a chunked body byte-for-byte once it has been checked, so
//! the decoder never rewrites or buffers its input: [`ChunkedDecoder::feed`]
//! reports how many bytes of each read belong to the message and hands the
//! chunk payload to a callback as borrowed slices. All state lives in a few
//! counters, so a decoder costs no heap allocation and can be fed reads of any
//! size, split anywhere.
//!
//! The grammar accepted is deliberately stricter than common proxies (nginx
//! tolerates bare LF and stray whitespace): every deviation is a request
//! smuggling vector between us and the backend, so it is refused.
//!
//! No I/O here.

use std::fmt;

/// Size limits for the framing lines a chunked body may carry.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Longest chunk-size line accepted, extensions included, CRLF excluded.
    pub max_line_bytes: usize,
    /// Longest trailer section accepted: every field line with its CRLF,
    /// excluding the empty line that ends the body.
    pub max_trailer_bytes: usize,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk-size is empty or holds a non-hex byte.
    InvalidSize,
    /// The chunk-size does not fit in a `u64`.
    SizeOverflow,
    /// A chunk extension breaks the RFC 9112 §7.1.1 grammar, or the line holds
    /// a control byte.
    InvalidExtension,
    /// The chunk-size line is longer than [`ChunkLimits::max_line_bytes`].
    LineTooLong,
    /// A line ended in LF without the CR before it.
    BareLf,
    /// The chunk data was not followed by exactly CRLF.
    MissingCrlfAfterData,
    /// A trailer field line breaks the RFC 9112 §5 field-line grammar.
    InvalidTrailer,
    /// The trailer section is longer than [`ChunkLimits::max_trailer_bytes`].
    TrailerTooLarge,
    /// A trailer field that must not be sent in a trailer section (framing,
    /// routing, credentials, request modifiers, content format: see
    /// [`FORBIDDEN_IN_TRAILERS`]).
    ForbiddenTrailer,
    /// The chunk data add up to more than [`ChunkedDecoder::with_max_body`].
    BodyTooLarge,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size overflows 64 bits",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::LineTooLong => "chunk size line too long",
            ChunkError::BareLf => "bare LF in chunked framing",
            ChunkError::MissingCrlfAfterData => "chunk data not followed by CRLF",
            ChunkError::InvalidTrailer => "invalid trailer field",
            ChunkError::TrailerTooLarge => "trailer section too large",
            ChunkError::ForbiddenTrailer => "field not allowed in a trailer section",
            ChunkError::BodyTooLarge => "body larger than allowed",
        };
        f.write_str(msg)
    }
}

impl std::error::Error for ChunkError {}

/// Fields refused in a trailer section (RFC 9110 §6.5.1: a field that
/// frames, routes, authenticates, modifies the request or describes the
/// content cannot be processed after the content). The body is forwarded
/// byte for byte, so such a trailer cannot be dropped on the way: it is
/// refused, so that no recipient that merges trailers into the header
/// section takes a `Host` or `Content-Length` the proxy never routed or
/// framed by. The list is Go's `net/http` one, plus cookies and `Upgrade`.
/// Names are matched with `_` read as `-`, as CGI-style backends read them.
pub const FORBIDDEN_IN_TRAILERS: [&str; 24] = [
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "host",
    "keep-alive",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "realm",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
];

/// Longer than every name in [`FORBIDDEN_IN_TRAILERS`].
const TRAILER_NAME_KEPT: usize = 20;

/// The outcome of one [`ChunkedDecoder::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Bytes of the input that belong to the chunked body.
    pub consumed: usize,
    /// The body ended at `input[consumed]`; later bytes are the next message.
    pub done: bool,
}

/// Where the decoder is in the chunked-body grammar. Each variant is a
/// position between two bytes, so a read may end in any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk-size; `digits` is false until the first HEXDIG.
    Size { digits: bool },
    /// BWS that must be followed by ";" (after the size or an ext-val).
    BwsBeforeSemi,
    /// After ";", BWS then an ext-name.
    BeforeExtName,
    /// In an ext-name token.
    ExtName,
    /// BWS after an ext-name: ";" or "=" must follow.
    AfterExtName,
    /// After "=", BWS then an ext-val.
    BeforeExtVal,
    /// In a token ext-val.
    ExtValToken,
    /// Inside a quoted-string ext-val.
    ExtValQuoted,
    /// After a backslash inside a quoted-string.
    ExtValQuotedPair,
    /// Just after the closing DQUOTE of a quoted-string.
    AfterQuoted,
    /// After the CR ending a chunk-size line; `ext` says whether the line
    /// carried extensions, to pick the error if no LF follows.
    LineLf { ext: bool },
    /// In chunk data.
    Data { remaining: u64 },
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// At the start of a trailer field line or the final empty line.
    TrailerLineStart,
    /// In a trailer field-name.
    TrailerName,
    /// In a trailer field-value (OWS included).
    TrailerValue,
    /// After the CR ending a trailer field line.
    TrailerLf,
    /// After the CR of the final empty line.
    FinalLf,
    /// The body has ended.
    Done,
    /// The body was refused; the error repeats on every later call.
    Failed(ChunkError),
}

/// Incremental chunked-body decoder. Feed it the bytes after the request or
/// response head, in reads of any size.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    limits: ChunkLimits,
    state: State,
    /// The chunk-size being read.
    size: u64,
    /// Bytes of the current chunk-size line, CRLF excluded.
    line_bytes: usize,
    /// Bytes of the trailer section so far.
    trailer_bytes: usize,
    /// The trailer field-name being read, lowercased, `_` as `-`; only its
    /// length counts once it outgrows the buffer (no forbidden name is
    /// that long).
    trailer_name: [u8; TRAILER_NAME_KEPT],
    trailer_name_len: usize,
    /// Chunk data bytes still allowed.
    body_left: u64,
}

impl ChunkedDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        ChunkedDecoder {
            limits,
            state: State::Size { digits: false },
            size: 0,
            line_bytes: 0,
            trailer_bytes: 0,
            trailer_name: [0; TRAILER_NAME_KEPT],
            trailer_name_len: 0,
            body_left: u64::MAX,
        }
    }

    /// Refuses a body whose chunk data add up to more than `max` bytes,
    /// as soon as a chunk-size line says so (before its data is read).
    pub fn with_max_body(mut self, max: u64) -> Self {
        self.body_left = max;
        self
    }

    /// Consumes a prefix of `input`. Calls `payload` with each slice of chunk
    /// data. Returns consumed bytes; when `done` is true the message ended at
    /// `input[consumed]` (bytes after belong to the next message). When
    /// `!done`, `consumed == input.len()`.
    ///
    /// After an error the decoder stays failed and returns the same error.
    pub fn feed(
        &mut self,
        input: &[u8],
        payload: &mut impl FnMut(&[u8]),
    ) -> Result<Feed, ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Done => {
                    return Ok(Feed {
                        consumed: pos,
                        done: true,
                    })
                }
                _ if pos == input.len() => {
                    return Ok(Feed {
                        consumed: pos,
                        done: false,
                    })
                }
                State::Data { remaining } => {
                    // Payload is passed through in one slice per read rather
                    // than byte by byte: this is the hot loop of a body.
                    let avail = input.len() - pos;
                    let n = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    payload(&input[pos..pos + n]);
                    pos += n;
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                }
                _ => {
                    let byte = input[pos];
                    pos += 1;
                    if let Err(e) = self.step(byte) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The whole body, trailers and final CRLF included, has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Advances the framing state by one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        match self.state {
            Size { .. }
            | BwsBeforeSemi
            | BeforeExtName
            | ExtName
            | AfterExtName
            | BeforeExtVal
            | ExtValToken
            | ExtValQuoted
            | ExtValQuotedPair
            | AfterQuoted => self.state = self.step_size_line(b)?,
            LineLf { ext } => {
                if b != b'\n' {
                    return Err(if ext {
                        ChunkError::InvalidExtension
                    } else {
                        ChunkError::InvalidSize
                    });
                }
                if self.size > self.body_left {
                    return Err(ChunkError::BodyTooLarge);
                }
                self.body_left -= self.size;
                self.state = if self.size == 0 {
                    // RFC 9112 §7.1: last-chunk, then the trailer section.
                    TrailerLineStart
                } else {
                    Data {
                        remaining: self.size,
                    }
                };
                self.size = 0;
                self.line_bytes = 0;
            }
            DataCr if b == b'\r' => self.state = DataLf,
            DataLf if b == b'\n' => self.state = Size { digits: false },
            DataCr | DataLf => return Err(ChunkError::MissingCrlfAfterData),
            TrailerLineStart if b == b'\r' => self.state = FinalLf,
            FinalLf if b == b'\n' => self.state = Done,
            FinalLf => return Err(ChunkError::InvalidTrailer),
            TrailerLineStart | TrailerName | TrailerValue | TrailerLf => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.limits.max_trailer_bytes {
                    return Err(ChunkError::TrailerTooLarge);
                }
                let next = step_trailer(self.state, b)?;
                match (self.state, next) {
                    (TrailerLineStart | TrailerName, TrailerName) => self.keep_trailer_name(b),
                    (TrailerName, TrailerValue) => {
                        if self.trailer_is_forbidden() {
                            return Err(ChunkError::ForbiddenTrailer);
                        }
                        self.trailer_name_len = 0;
                    }
                    _ => {}
                }
                self.state = next;
            }
            Data { .. } | Done | Failed(_) => {
                debug_assert!(false, "step called in {:?}", self.state);
            }
        }
        Ok(())
    }

    fn keep_trailer_name(&mut self, b: u8) {
        if let Some(slot) = self.trailer_name.get_mut(self.trailer_name_len) {
            *slot = if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
        }
        self.trailer_name_len += 1;
    }

    fn trailer_is_forbidden(&self) -> bool {
        self.trailer_name
            .get(..self.trailer_name_len)
            .is_some_and(|name| FORBIDDEN_IN_TRAILERS.iter().any(|f| f.as_bytes() == name))
    }

    /// One byte of a chunk-size line (RFC 9112 §7.1, §7.1.1):
    ///
    /// ```text
    /// chunk-size = 1*HEXDIG
    /// chunk-ext  = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    /// ```
    fn step_size_line(&mut self, b: u8) -> Result<State, ChunkError> {
        use State::*;
        if b == b'\n' {
            return Err(ChunkError::BareLf);
        }
        if b == b'\r' {
            return match self.state {
                Size { digits: true } => Ok(LineLf { ext: false }),
                Size { digits: false } => Err(ChunkError::InvalidSize),
                ExtName | ExtValToken | AfterQuoted => Ok(LineLf { ext: true }),
                // BWS is only allowed before ";" or "=", never before CRLF.
                _ => Err(ChunkError::InvalidExtension),
            };
        }
        self.line_bytes += 1;
        if self.line_bytes > self.limits.max_line_bytes {
            return Err(ChunkError::LineTooLong);
        }
        if is_ctl(b) && b != b'\t' {
            return Err(ChunkError::InvalidExtension);
        }
        let next = match self.state {
            Size { digits } => match b {
                _ if b.is_ascii_hexdigit() => {
                    let digit = u64::from(hex_value(b));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or(ChunkError::SizeOverflow)?;
                    Size { digits: true }
                }
                b';' if digits => BeforeExtName,
                b' ' | b'\t' if digits => BwsBeforeSemi,
                _ => return Err(ChunkError::InvalidSize),
            },
            BwsBeforeSemi => match b {
                b' ' | b'\t' => BwsBeforeSemi,
                b';' => BeforeExtName,
                _ => return Err(ChunkError::InvalidExtension),
            },
            BeforeExtName => match b {
                b' ' | b'\t' => BeforeExtName,
                _ if is_tchar(b) => ExtName,
                _ => return Err(ChunkError::InvalidExtension),
            },
            ExtName => match b {
                _ if is_tchar(b) => ExtName,
                b' ' | b'\t' => AfterExtName,
                b';' => BeforeExtName,
                b'=' => BeforeExtVal,
                _ => return Err(ChunkError::InvalidExtension),
            },
            AfterExtName => match b {
                b' ' | b'\t' => AfterExtName,
                b';' => BeforeExtName,
                b'=' => BeforeExtVal,
                _ => return Err(ChunkError::InvalidExtension),
            },
            BeforeExtVal => match b {
                b' ' | b'\t' => BeforeExtVal,
                b'"' => ExtValQuoted,
                _ if is_tchar(b) => ExtValToken,
                _ => return Err(ChunkError::InvalidExtension),
            },
            ExtValToken => match b {
                _ if is_tchar(b) => ExtValToken,
                b' ' | b'\t' => BwsBeforeSemi,
                b';' => BeforeExtName,
                _ => return Err(ChunkError::InvalidExtension),
            },
            // RFC 9110 §5.6.4: qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E
            // / obs-text. Controls other than HTAB were refused above.
            ExtValQuoted => match b {
                b'"' => AfterQuoted,
                b'\\' => ExtValQuotedPair,
                _ => ExtValQuoted,
            },
            // RFC 9110 §5.6.4: quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ).
            ExtValQuotedPair => ExtValQuoted,
            AfterQuoted => match b {
                b' ' | b'\t' => BwsBeforeSemi,
                b';' => BeforeExtName,
                _ => return Err(ChunkError::InvalidExtension),
            },
            _ => {
                debug_assert!(false, "not a chunk-size line state: {:?}", self.state);
                return Err(ChunkError::InvalidSize);
            }
        };
        Ok(next)
    }
}

/// One byte of a trailer field line (RFC 9112 §5, §7.1.2):
///
/// ```text
/// field-line = field-name ":" OWS field-value OWS
/// ```
///
/// No obs-fold (RFC 9112 §5.2 lets a recipient refuse it), no whitespace
/// between name and colon (RFC 9112 §5.1 requires refusing it).
fn step_trailer(state: State, b: u8) -> Result<State, ChunkError> {
    use State::*;
    if b == b'\n' && state != TrailerLf {
        return Err(ChunkError::BareLf);
    }
    let next = match state {
        TrailerLineStart if is_tchar(b) => TrailerName,
        TrailerName if is_tchar(b) => TrailerName,
        TrailerName if b == b':' => TrailerValue,
        TrailerValue if b == b'\r' => TrailerLf,
        // RFC 9110 §5.5: field-vchar, SP and HTAB; no other control.
        TrailerValue if b == b'\t' || !is_ctl(b) => TrailerValue,
        TrailerLf if b == b'\n' => TrailerLineStart,
        _ => return Err(ChunkError::InvalidTrailer),
    };
    Ok(next)
}

/// RFC 9110 §5.6.2: tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 5234 Appendix B.1: CTL = %x00-1F / %x7F.
fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ChunkLimits = ChunkLimits {
        max_line_bytes: 256,
        max_trailer_bytes: 1024,
    };

    /// Feeds `input` in one read; returns payload and the feed result.
    fn decode(input: &[u8]) -> (Vec<u8>, Result<Feed, ChunkError>) {
        decode_with(LIMITS, input)
    }

    fn decode_with(limits: ChunkLimits, input: &[u8]) -> (Vec<u8>, Result<Feed, ChunkError>) {
        let mut dec = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let r = dec.feed(input, &mut |s: &[u8]| out.extend_from_slice(s));
        (out, r)
    }

    fn err(input: &[u8]) -> ChunkError {
        match decode(input).1 {
            Err(e) => e,
            Ok(f) => panic!("accepted {:?}: {f:?}", String::from_utf8_lossy(input)),
        }
    }

    /// Decodes a complete body and returns its payload.
    fn ok(input: &[u8]) -> Vec<u8> {
        let (out, r) = decode(input);
        assert_eq!(
            r,
            Ok(Feed {
                consumed: input.len(),
                done: true
            }),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        out
    }

    #[test]
    fn simple_body_is_decoded() {
        assert_eq!(
            ok(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
    }

    #[test]
    fn empty_body_is_accepted() {
        assert_eq!(ok(b"0\r\n\r\n"), b"");
    }

    #[test]
    fn hex_digits_of_both_cases_and_leading_zeros_are_accepted() {
        let body = [
            &b"0000A\r\n"[..],
            &[b'x'; 10],
            b"\r\na\r\n",
            &[b'y'; 10],
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(ok(&body).len(), 20);
        assert_eq!(ok(b"00000000000000000000001\r\nz\r\n0\r\n\r\n"), b"z");
    }

    #[test]
    fn extensions_are_accepted() {
        assert_eq!(ok(b"1;a\r\nx\r\n0\r\n\r\n"), b"x");
        assert_eq!(ok(b"1;a=b;c\r\nx\r\n0;last\r\n\r\n"), b"x");
        assert_eq!(ok(b"1 ; a = b\t;\tc\r\nx\r\n0\r\n\r\n"), b"x");
    }

    #[test]
    fn quoted_extension_values_are_accepted() {
        assert_eq!(ok(b"1;a=\"hello world\"\r\nx\r\n0\r\n\r\n"), b"x");
        assert_eq!(ok(b"1;a=\"q\\\"uote\\\\\" ;b=\"\"\r\nx\r\n0\r\n\r\n"), b"x");
        assert_eq!(ok(b"1;a=\"tab\there; semi=\"\r\nx\r\n0\r\n\r\n"), b"x");
    }

    #[test]
    fn framing_routing_and_credential_fields_are_refused_in_trailers() {
        for name in FORBIDDEN_IN_TRAILERS.iter().map(|n| n.to_string()).chain([
            "Content-Length".into(),
            "HOST".into(),
            "Transfer_Encoding".into(),
        ]) {
            let body = format!("2\r\nab\r\n0\r\nX-Ok: 1\r\n{name}: v\r\n\r\n");
            assert_eq!(
                decode(body.as_bytes()).1,
                Err(ChunkError::ForbiddenTrailer),
                "{name}"
            );
            // The same, one byte per read: the name is matched across reads.
            let mut d = ChunkedDecoder::new(LIMITS);
            let refused = body
                .as_bytes()
                .chunks(1)
                .map(|b| d.feed(b, &mut |_: &[u8]| {}))
                .find_map(Result::err);
            assert_eq!(
                refused,
                Some(ChunkError::ForbiddenTrailer),
                "{name} bytewise"
            );
        }
    }

    #[test]
    fn trailers_whose_names_only_resemble_forbidden_ones_pass() {
        for name in [
            "Hos",
            "X-Host",
            "Content-Lengthy",
            "Content-MD5",
            "Server-Timing",
            "Tea",
            "a-field-name-longer-than-any-forbidden-one",
            "proxy-authorization-x",
        ] {
            let body = format!("2\r\nab\r\n0\r\n{name}: v\r\nTe-Ok: 1\r\n\r\n");
            assert_eq!(ok(body.as_bytes()), b"ab", "{name}");
        }
    }

    #[test]
    fn trailers_are_accepted() {
        assert_eq!(
            ok(b"1\r\nx\r\n0\r\nExpires: never\r\nX-Sum:abc \t\r\nEmpty:\r\n\r\n"),
            b"x"
        );
    }

    #[test]
    fn pipelined_bytes_after_the_end_are_left_alone() {
        let body = b"3\r\nabc\r\n0\r\n\r\n";
        let input = [&body[..], b"GET / HTTP/1.1\r\n"].concat();
        let end = Ok(Feed {
            consumed: body.len(),
            done: true,
        });
        let (out, r) = decode(&input);
        assert_eq!(out, b"abc");
        assert_eq!(r, end);
        // Ending exactly at the read boundary.
        let mut dec = ChunkedDecoder::new(LIMITS);
        assert_eq!(dec.feed(body, &mut |_: &[u8]| {}), end);
        assert!(dec.is_done());
        // A finished decoder takes nothing more.
        let r = dec.feed(&input[body.len()..], &mut |_: &[u8]| {
            panic!("payload after end")
        });
        assert_eq!(
            r,
            Ok(Feed {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn partial_body_consumes_everything_and_is_not_done() {
        let mut dec = ChunkedDecoder::new(LIMITS);
        let r = dec.feed(b"5\r\nhel", &mut |_: &[u8]| {});
        assert_eq!(
            r,
            Ok(Feed {
                consumed: 6,
                done: false
            })
        );
        assert!(!dec.is_done());
        let r = dec.feed(b"", &mut |_: &[u8]| {});
        assert_eq!(
            r,
            Ok(Feed {
                consumed: 0,
                done: false
            })
        );
    }

    #[test]
    fn empty_chunk_size_is_refused() {
        assert_eq!(err(b"\r\nx\r\n0\r\n\r\n"), ChunkError::InvalidSize);
        assert_eq!(err(b";a\r\n"), ChunkError::InvalidSize);
    }

    #[test]
    fn non_hex_chunk_size_is_refused() {
        assert_eq!(err(b"1g\r\n"), ChunkError::InvalidSize);
        assert_eq!(err(b"+1\r\n"), ChunkError::InvalidSize);
        assert_eq!(err(b"0x1\r\n"), ChunkError::InvalidSize);
    }

    #[test]
    fn size_overflow_is_refused() {
        assert_eq!(err(b"10000000000000000\r\n"), ChunkError::SizeOverflow);
        assert_eq!(err(b"fffffffffffffffff\r\n"), ChunkError::SizeOverflow);
    }

    #[test]
    fn largest_chunk_size_is_accepted() {
        let mut dec = ChunkedDecoder::new(LIMITS);
        let r = dec.feed(b"ffffffffffffffff\r\nab", &mut |_: &[u8]| {});
        assert_eq!(
            r,
            Ok(Feed {
                consumed: 20,
                done: false
            })
        );
    }

    #[test]
    fn bare_lf_after_size_is_refused() {
        assert_eq!(err(b"1\nx\r\n0\r\n\r\n"), ChunkError::BareLf);
        assert_eq!(err(b"1;a=b\n"), ChunkError::BareLf);
    }

    #[test]
    fn bare_lf_after_last_chunk_is_refused() {
        assert_eq!(err(b"0\n\r\n"), ChunkError::BareLf);
        assert_eq!(err(b"0\r\n\n"), ChunkError::BareLf);
    }

    #[test]
    fn cr_without_lf_after_size_is_refused() {
        assert_eq!(err(b"1\rx"), ChunkError::InvalidSize);
        assert_eq!(err(b"1;a\rx"), ChunkError::InvalidExtension);
    }

    #[test]
    fn whitespace_before_crlf_is_refused() {
        // RFC 9112 §7.1.1: BWS only sits next to ";" and "=".
        assert_eq!(err(b"1 \r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1;a \r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1;a=b \r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1;a=\"b\" \r\n"), ChunkError::InvalidExtension);
    }

    #[test]
    fn nul_in_extension_is_refused() {
        assert_eq!(err(b"1;a\0\r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1;a=\"\0\"\r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1\0\r\n"), ChunkError::InvalidExtension);
    }

    #[test]
    fn control_bytes_in_extension_are_refused() {
        assert_eq!(err(b"1;a=\"\x7f\"\r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1;a=\"\\\x01\"\r\n"), ChunkError::InvalidExtension);
        assert_eq!(err(b"1;a=\"\r\n"), ChunkError::InvalidExtension);
    }

    #[test]
    fn malformed_extensions_are_refused() {
        for bad in [
            &b"1;\r\n"[..],
            b"1;=b\r\n",
            b"1;a=\r\n",
            b"1;a=b=c\r\n",
            b"1;a b\r\n",
            b"1;a=\"b\"c\r\n",
            b"1;a=b\"c\"\r\n",
            b"1;a@b\r\n",
            b"1 x\r\n",
        ] {
            assert_eq!(
                err(bad),
                ChunkError::InvalidExtension,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_size_line_is_refused() {
        let limits = ChunkLimits {
            max_line_bytes: 8,
            max_trailer_bytes: 64,
        };
        assert_eq!(
            decode_with(limits, b"1;abcdef\r\nx\r\n0\r\n\r\n")
                .1
                .map(|f| f.done),
            Ok(true)
        );
        assert_eq!(
            decode_with(limits, b"1;abcdefg\r\n").1,
            Err(ChunkError::LineTooLong)
        );
        // The count spans reads.
        let mut dec = ChunkedDecoder::new(limits);
        assert!(dec.feed(b"1;abc", &mut |_: &[u8]| {}).is_ok());
        assert_eq!(
            dec.feed(b"defg", &mut |_: &[u8]| {}),
            Err(ChunkError::LineTooLong)
        );
    }

    #[test]
    fn zero_padded_size_counts_toward_line_limit() {
        let limits = ChunkLimits {
            max_line_bytes: 4,
            max_trailer_bytes: 64,
        };
        assert_eq!(
            decode_with(limits, b"00001\r\n").1,
            Err(ChunkError::LineTooLong)
        );
    }

    #[test]
    fn missing_crlf_after_data_is_refused() {
        assert_eq!(err(b"1\r\nxy\r\n"), ChunkError::MissingCrlfAfterData);
        assert_eq!(err(b"1\r\nx\n0\r\n\r\n"), ChunkError::MissingCrlfAfterData);
        assert_eq!(err(b"1\r\nx\rx"), ChunkError::MissingCrlfAfterData);
    }

    #[test]
    fn obs_fold_in_trailer_is_refused() {
        assert_eq!(err(b"0\r\nA: b\r\n c\r\n\r\n"), ChunkError::InvalidTrailer);
        assert_eq!(err(b"0\r\n\tA: b\r\n\r\n"), ChunkError::InvalidTrailer);
    }

    #[test]
    fn whitespace_before_trailer_colon_is_refused() {
        assert_eq!(err(b"0\r\nA : b\r\n\r\n"), ChunkError::InvalidTrailer);
    }

    #[test]
    fn malformed_trailers_are_refused() {
        for bad in [
            &b"0\r\nA\r\n\r\n"[..],
            b"0\r\n: b\r\n\r\n",
            b"0\r\nA: b\0\r\n\r\n",
            b"0\r\nA: b\x7f\r\n\r\n",
            b"0\r\nA: b\rx",
            b"0\r\n\rx",
            b"0\r\nA(: b\r\n\r\n",
        ] {
            assert_eq!(
                err(bad),
                ChunkError::InvalidTrailer,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bare_lf_in_trailer_is_refused() {
        assert_eq!(err(b"0\r\nA: b\n\r\n"), ChunkError::BareLf);
        assert_eq!(err(b"0\r\nA\n"), ChunkError::BareLf);
    }

    #[test]
    fn large_trailer_section_is_refused() {
        let limits = ChunkLimits {
            max_line_bytes: 64,
            max_trailer_bytes: 8,
        };
        // "A: 1234\r\n" is 9 bytes; "A: 123\r\n" is 8.
        assert_eq!(
            decode_with(limits, b"0\r\nA: 123\r\n\r\n")
                .1
                .map(|f| f.done),
            Ok(true)
        );
        assert_eq!(
            decode_with(limits, b"0\r\nA: 1234\r\n\r\n").1,
            Err(ChunkError::TrailerTooLarge)
        );
        let none = ChunkLimits {
            max_line_bytes: 64,
            max_trailer_bytes: 0,
        };
        assert_eq!(decode_with(none, b"0\r\n\r\n").1.map(|f| f.done), Ok(true));
        assert_eq!(
            decode_with(none, b"0\r\nA:\r\n\r\n").1,
            Err(ChunkError::TrailerTooLarge)
        );
    }

    #[test]
    fn error_is_sticky() {
        let mut dec = ChunkedDecoder::new(LIMITS);
        assert_eq!(
            dec.feed(b"z", &mut |_: &[u8]| {}),
            Err(ChunkError::InvalidSize)
        );
        assert_eq!(
            dec.feed(b"0\r\n\r\n", &mut |_: &[u8]| {}),
            Err(ChunkError::InvalidSize)
        );
        assert_eq!(
            dec.feed(b"", &mut |_: &[u8]| {}),
            Err(ChunkError::InvalidSize)
        );
    }

    // --- property tests: any split of the input gives the same result ---

    const EXTENSIONS: &[&str] = &[
        "",
        ";a",
        ";name=value",
        " ; n = v",
        ";q=\"quoted \\\" string\"",
        "\t;x;y=\"\";z=1",
    ];
    const TRAILERS: &[&str] = &["", "A: b\r\n", "X-Checksum: abc \t\r\nEmpty:\r\n"];

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Outcome {
        payload: Vec<u8>,
        result: Result<usize, ChunkError>,
    }

    /// Feeds `input` split at `cuts`, stopping at the end of the body.
    /// `result` is the offset where the body ended, or the error.
    fn decode_split(input: &[u8], cuts: &[usize]) -> Outcome {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut dec = ChunkedDecoder::new(LIMITS);
        let mut payload = Vec::new();
        let mut start = 0;
        for end in cuts {
            let read = &input[start..end];
            match dec.feed(read, &mut |s: &[u8]| payload.extend_from_slice(s)) {
                Err(e) => {
                    return Outcome {
                        payload,
                        result: Err(e),
                    }
                }
                Ok(f) if f.done => {
                    return Outcome {
                        payload,
                        result: Ok(start + f.consumed),
                    }
                }
                Ok(f) => assert_eq!(f.consumed, read.len()),
            }
            start = end;
        }
        Outcome {
            payload,
            result: Ok(usize::MAX), // incomplete
        }
    }

    fn encode(chunks: &[(Vec<u8>, usize)], last_ext: usize, trailer: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (data, ext) in chunks {
            let ext = EXTENSIONS[ext % EXTENSIONS.len()];
            out.extend_from_slice(format!("{:x}{ext}\r\n", data.len()).as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        let ext = EXTENSIONS[last_ext % EXTENSIONS.len()];
        out.extend_from_slice(format!("0{ext}\r\n").as_bytes());
        out.extend_from_slice(TRAILERS[trailer % TRAILERS.len()].as_bytes());
        out.extend_from_slice(b"\r\n");
        out
    }

    fn body_strategy() -> impl Strategy<Value = (Vec<(Vec<u8>, usize)>, usize, usize)> {
        (
            prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..40), any::<usize>()),
                0..6,
            ),
            any::<usize>(),
            any::<usize>(),
        )
    }

    proptest! {
        #[test]
        fn any_split_of_a_valid_body_decodes_the_same(
            (chunks, last_ext, trailer) in body_strategy(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let body = encode(&chunks, last_ext, trailer);
            let mut input = body.clone();
            input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let expected: Vec<u8> = chunks.iter().flat_map(|(d, _)| d.iter().copied()).collect();

            let whole = decode_split(&input, &[]);
            prop_assert_eq!(&whole.payload, &expected);
            prop_assert_eq!(whole.result, Ok(body.len()));
            prop_assert_eq!(decode_split(&input, &cuts), whole);
            // Byte-at-a-time is the harshest split.
            let every: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(decode_split(&input, &every), decode_split(&input, &[]));
        }

        #[test]
        fn any_split_of_a_corrupted_body_fails_the_same(
            (chunks, last_ext, trailer) in body_strategy(),
            at in any::<usize>(),
            byte in any::<u8>(),
            insert in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut input = encode(&chunks, last_ext, trailer);
            let at = at % input.len();
            if insert {
                input.insert(at, byte);
            } else {
                input[at] = byte;
            }
            let whole = decode_split(&input, &[]);
            prop_assert_eq!(decode_split(&input, &cuts), whole.clone());
            let every: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(decode_split(&input, &every), whole);
        }
    }
}

#[cfg(test)]
mod max_body_tests {
    use super::*;

    const LIMITS: ChunkLimits = ChunkLimits {
        max_line_bytes: 64,
        max_trailer_bytes: 64,
    };

    #[test]
    fn a_body_over_its_maximum_is_refused_at_the_chunk_that_crosses_it() {
        let mut d = ChunkedDecoder::new(LIMITS).with_max_body(10);
        let mut data = Vec::new();
        let feed = d.feed(b"6\r\nabcdef\r\n", &mut |p| data.extend_from_slice(p));
        assert!(matches!(feed, Ok(Feed { done: false, .. })));
        // The next size line says 5 more: refused before its data is read.
        assert_eq!(
            d.feed(b"5\r\nghijk\r\n0\r\n\r\n", &mut |_| {}),
            Err(ChunkError::BodyTooLarge)
        );
        assert_eq!(data, b"abcdef");
        let mut exact = ChunkedDecoder::new(LIMITS).with_max_body(10);
        let feed = exact.feed(b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n", &mut |_| {});
        assert!(matches!(feed, Ok(Feed { done: true, .. })));
    }
}
