//! HTTP/1.1 message heads (RFC 9112): parsing over `httparse`, the meaning-level
//! checks `httparse` leaves to us, body framing, and hop-by-hop handling.
//!
//! Parsing never copies: a head is described by byte ranges into the read
//! buffer (like hyper's `HeaderIndices`), so the caller can keep moving that
//! buffer through io_uring operations. Forwarding a head means writing the
//! kept ranges, then a small patch (`write_request_patch`), then CRLF.
//!
//! Everything ambiguous is refused here, before a byte goes upstream:
//! CL with TE, differing or malformed Content-Length, TE in HTTP/1.0,
//! unknown or repeated transfer codings, obs-fold, bare LF, CTLs in values,
//! whitespace before the colon, missing or repeated Host. No I/O here.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;

/// Hard ceiling on `max_headers`, so the parser's header array lives on the
/// stack (32 KiB) and is never allocated per request.
pub const MAX_HEADERS_CEILING: usize = 1024;

/// A head may name at most this many headers in `Connection`; more is refused
/// rather than tracked in an unbounded list.
pub const MAX_CONNECTION_OPTIONS: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a request body is delimited (RFC 9112 §6.3). Requests are never
/// close-delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    Empty,
    Length(u64),
    Chunked,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Why a head was refused. `status()` is what a client gets for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    Malformed(&'static str),
    TooLarge,
    /// The start line alone does not end within the head limit: for a
    /// request, a target longer than the proxy parses (RFC 9112 §3: 414).
    StartLineTooLong,
    TooManyHeaders,
    UnsupportedTransferCoding,
    UnsupportedMethod,
    /// An `Expect` other than `100-continue`.
    UnsupportedExpectation,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::StartLineTooLong => 414,
            HeadError::UnsupportedTransferCoding | HeadError::UnsupportedMethod => 501,
            HeadError::UnsupportedExpectation => 417,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HeadError::Malformed(why) => why,
            HeadError::TooLarge => "header section too large",
            HeadError::StartLineTooLong => "request-target too long",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::UnsupportedTransferCoding => "unsupported transfer coding",
            HeadError::UnsupportedMethod => "method not supported by this proxy",
            HeadError::UnsupportedExpectation => "only Expect: 100-continue is supported",
        }
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

/// A parsed request head: offsets into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head including the blank line; the body starts here.
    pub head_len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// Path used for routing: the origin-form target, or the path of an
    /// absolute-form target.
    pub path: Range<usize>,
    /// Host header value, or the authority of an absolute-form target
    /// (RFC 9112 §3.2.2: then Host is ignored).
    pub authority: Option<Range<usize>>,
    pub version: Version,
    pub body: RequestBody,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` from an HTTP/1.1 client (RFC 9110 §10.1.1: a
    /// 1.0 client's expectation is ignored and it never gets a 100).
    pub expect_continue: bool,
    pub is_head_method: bool,
    /// The target was in absolute-form: the request line must go upstream
    /// in origin-form ([`write_request_line`]) and Host is the target's
    /// authority (RFC 9112 §3.2.2), which the patch writes.
    pub absolute_form: bool,
    /// [`normalize_path`] rewrote the path in the buffer: the request line
    /// must go upstream as the proxy writes it ([`write_request_line`]).
    pub path_normalized: bool,
    /// An OPTIONS request's one well-formed `Max-Forwards` (RFC 9110
    /// §7.6.2): at 0 the proxy answers it as the final recipient, otherwise
    /// it goes up one less (the line read is not forwarded).
    pub max_forwards: Option<u64>,
}

/// A framing field the proxy writes itself instead of forwarding what was
/// read, because what was read could be read two ways (a list, a repeat, an
/// odd case) or must not be there at all. The lines it replaces are left out
/// of `forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingLine {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Nothing: the message has no body and must not claim one
    /// (RFC 9110 §8.6: no Content-Length in a 1xx or 204).
    Omitted,
}

/// Per-connection scratch space reused for every head, so the keep-alive
/// fast path allocates nothing once warm.
#[derive(Debug, Default)]
pub struct HeadScratch {
    /// Ranges of the head to forward verbatim, in order; the request or
    /// status line first. The final blank line is not included.
    pub forward: Vec<Range<usize>>,
    /// Values of the `X-Forwarded-For` / `Forwarded` / `X-Forwarded-Proto` /
    /// `X-Forwarded-Host` lines the client sent. None of them is forwarded as
    /// read: the patch writes our own, re-emitting these only for a trusted
    /// peer ([`ForwardedClient::trusted_peer`]).
    pub forwarded_for: Vec<Range<usize>>,
    pub forwarded: Vec<Range<usize>>,
    pub forwarded_proto: Vec<Range<usize>>,
    pub forwarded_host: Vec<Range<usize>>,
    /// Values of the request's `Via` lines, which are forwarded as read: a
    /// proxy finds its own name there when a request loops back to it.
    pub via: Vec<Range<usize>>,
    /// The host the client asked for (Host, or an absolute-form target's
    /// authority): our `X-Forwarded-Host`.
    pub requested_host: Option<Range<usize>>,
    connection_options: Vec<Range<usize>>,
    /// Set when the framing fields read are not forwarded as they are.
    pub framing: Option<FramingLine>,
    /// The Host value to write (a range of the head), when the Host line
    /// read is replaced by an absolute-form target's authority.
    pub host: Option<Range<usize>>,
    /// Where [`HeadScratch::retain_lines`] builds the new `forward`.
    spare: Vec<Range<usize>>,
}

impl HeadScratch {
    fn clear(&mut self) {
        self.forward.clear();
        self.forwarded_for.clear();
        self.forwarded.clear();
        self.forwarded_proto.clear();
        self.forwarded_host.clear();
        self.via.clear();
        self.requested_host = None;
        self.connection_options.clear();
        self.framing = None;
        self.host = None;
    }

    fn keep(&mut self, range: Range<usize>) {
        match self.forward.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.forward.push(range),
        }
    }

    /// Narrows `forward` (ranges of `buf`, the head it was parsed from) to
    /// the lines that stay: the start line when `keep_start_line`, and each
    /// field line whose name `keep_field` accepts. For a proxy's route edits;
    /// allocates nothing once the spare vector has grown.
    pub fn retain_lines(
        &mut self,
        buf: &[u8],
        keep_start_line: bool,
        mut keep_field: impl FnMut(&[u8]) -> bool,
    ) {
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        let mut start_line = true;
        for range in &self.forward {
            let mut start = range.start;
            while start < range.end {
                let end = memchr::memchr(b'\n', &buf[start..range.end])
                    .map_or(range.end, |i| start + i + 1);
                let line = &buf[start..end];
                let keep = if std::mem::take(&mut start_line) {
                    keep_start_line
                } else {
                    let name_end = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                    keep_field(&line[..name_end])
                };
                if keep {
                    match out.last_mut() {
                        Some(last) if last.end == start => last.end = end,
                        _ => out.push(start..end),
                    }
                }
                start = end;
            }
        }
        self.spare = std::mem::replace(&mut self.forward, out);
    }
}

fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// RFC 9112 §2.2: we do not accept a bare LF as a line terminator anywhere in
/// a head, so forwarded heads are always CRLF and no peer can read them
/// differently from us.
fn has_bare_lf(head: &[u8]) -> bool {
    // Every LF of a head is checked; memchr finds them a word at a time.
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// The protocol an `Upgrade` value names, without its `/version` and the
/// whitespace around it: `WebSocket` of `WebSocket/13`.
pub fn upgrade_protocol_name(value: &[u8]) -> &[u8] {
    value
        .split(|&b| b == b'/')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Checks a `101 Switching Protocols` head (through its blank line) before
/// it is relayed and its connection becomes a tunnel: CRLF line ends, a head
/// httparse reads, and one `Upgrade` naming one protocol, `protocol` (a
/// version after `/` allowed): RFC 9110 §7.8 lets a server switch only to a
/// protocol the client asked for, and a client handed another (`h2c`, say)
/// would read a stream it cannot parse.
pub fn check_switching_head(head: &[u8], protocol: &[u8]) -> Result<(), &'static str> {
    if has_bare_lf(head) {
        return Err("bare LF line terminator in a 101");
    }
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut fields);
    match res.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() && res.code == Some(101) => {}
        _ => return Err("malformed 101 head"),
    }
    let mut upgrades = res
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let named = match (upgrades.next(), upgrades.next()) {
        (Some(one), None) if !one.value.contains(&b',') => upgrade_protocol_name(one.value),
        _ => return Err("101 to a protocol the client did not ask for"),
    };
    if named.eq_ignore_ascii_case(protocol) {
        Ok(())
    } else {
        Err("101 to a protocol the client did not ask for")
    }
}

/// End (exclusive) of the field line whose value ends at `value_end`: just past
/// its LF.
fn line_end(buf: &[u8], value_end: usize) -> usize {
    buf[value_end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |p| value_end + p + 1)
}

fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' |
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' |
        b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Iterates the elements of a comma-separated list field (RFC 9110 §5.6.1),
/// trimmed of OWS; empty elements are yielded so callers can refuse them.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// Accumulates Content-Length values: every element of every line must be
/// 1*DIGIT and all must agree (RFC 9112 §6.3 rule 5).
fn merge_content_length(acc: &mut Option<u64>, value: &[u8]) -> Result<(), HeadError> {
    for element in list_elements(value) {
        if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        let mut n: u64 = 0;
        for &d in element {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(HeadError::Malformed("Content-Length overflows"))?;
        }
        match *acc {
            Some(prev) if prev != n => {
                return Err(HeadError::Malformed("conflicting Content-Length values"))
            }
            _ => *acc = Some(n),
        }
    }
    Ok(())
}

/// Transfer-Encoding across all its lines: only the exact list `chunked` is
/// understood. Returns Ok(()) after checking syntax; the caller knows a TE
/// header was present.
#[derive(Default)]
struct TransferCodings {
    seen: bool,
    chunked_count: usize,
    last_is_chunked: bool,
    other_codings: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) -> Result<(), HeadError> {
        self.seen = true;
        for element in list_elements(value) {
            // Parameters (";q=...") are not allowed on any coding we know.
            if element.is_empty() || !element.iter().all(|&b| is_tchar(b)) {
                return Err(HeadError::Malformed("invalid Transfer-Encoding"));
            }
            if element.eq_ignore_ascii_case(b"chunked") {
                self.chunked_count += 1;
                self.last_is_chunked = true;
            } else {
                self.other_codings = true;
                self.last_is_chunked = false;
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.1 and §6.3: chunked must be final and appear once; any
    /// other coding is one we do not implement.
    fn check(&self) -> Result<(), HeadError> {
        if self.chunked_count > 1 {
            return Err(HeadError::Malformed("chunked applied more than once"));
        }
        if !self.last_is_chunked {
            return Err(HeadError::Malformed(
                "chunked is not the final transfer coding",
            ));
        }
        if self.other_codings {
            return Err(HeadError::UnsupportedTransferCoding);
        }
        Ok(())
    }
}

/// RFC 9110 §7.2 / RFC 3986 §3.2: uri-host [":" port], port = *DIGIT (at
/// most 65535). Refuses anything that could be read as a different
/// authority (userinfo, paths, spaces, a second colon, a port that is not a
/// number).
fn valid_authority(value: &[u8]) -> bool {
    // What follows the host: empty, or ":" and the port.
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        // IP-literal: an IPv6 address in brackets.
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        &rest[close + 1..]
    } else {
        let colon = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let host = &value[..colon];
        // No escape and no empty label (one trailing dot, the root, is
        // allowed): routes compare the name as written, so it must have
        // one spelling a backend cannot read as another (nginx refuses
        // empty labels too).
        let name = host.strip_suffix(b".").unwrap_or(host);
        if name.is_empty()
            || !host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~'))
            || name.split(|&b| b == b'.').any(<[u8]>::is_empty)
        {
            return false;
        }
        &value[colon..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && (digits.is_empty()
                    || digits
                        .iter()
                        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
                        <= 65_535)
        }
        _ => false,
    }
}

/// RFC 3986 §5.2.4: a path with a `.` or `..` segment means something else
/// once normalised, so a prefix route or rewrite could be escaped
/// (`/files/../admin`). Percent-encoded dots (`%2e`) count as dots, and
/// encoded slashes and backslashes (`%2f`, `\`, `%5c`) as separators,
/// since backends decode them before they resolve segments. A segment's
/// `;parameters` do not count: Tomcat and Jetty drop them first, so `..;x`
/// climbs as `..` does. The query is not part of the path. The same pass
/// finds a `%` that begins no escape ([`has_stray_percent`]) and an
/// encoded NUL (`%00`).
fn path_fault(target: &[u8]) -> Option<PathFault> {
    let path = &target[..memchr::memchr(b'?', target).unwrap_or(target.len())];
    let mut dots = 0usize;
    let mut other = false;
    // Past a `;` in this segment: its parameters.
    let mut params = false;
    let mut i = 0;
    let dot_segment = |dots: usize, other: bool| !other && (dots == 1 || dots == 2);
    while i < path.len() {
        let (unit, len) = match path[i] {
            b'%' => {
                let hex = |at: usize| path.get(at).copied().and_then(hex_digit);
                match (hex(i + 1), hex(i + 2)) {
                    (Some(h), Some(l)) => (h << 4 | l, 3),
                    // See `has_stray_percent`.
                    _ => return Some(PathFault::StrayPercent),
                }
            }
            b => (b, 1),
        };
        match unit {
            // An encoded NUL names no resource; a backend in C may read
            // the path only up to it.
            0 if len == 3 => return Some(PathFault::EncodedNul),
            b'/' | b'\\' => {
                if dot_segment(dots, other) {
                    return Some(PathFault::DotSegment);
                }
                dots = 0;
                other = false;
                params = false;
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots += 1,
            _ => other = true,
        }
        i += len;
    }
    dot_segment(dots, other).then_some(PathFault::DotSegment)
}

/// Why [`path_fault`] refuses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathFault {
    DotSegment,
    StrayPercent,
    EncodedNul,
}

#[cfg(test)]
fn has_dot_segment(target: &[u8]) -> bool {
    path_fault(target) == Some(PathFault::DotSegment)
}

/// The length of a separator that some backends read at the start of
/// `rest` where a route sees none (0 when there is none): `%2F`, which
/// nginx and most frameworks decode before they map a path, and `\` and
/// `%5C`, which IIS reads as `/`.
fn backend_separator_len(rest: &[u8]) -> usize {
    match rest {
        [b'\\', ..] => 1,
        [b'%', b'2', b'f' | b'F', ..] | [b'%', b'5', b'c' | b'C', ..] => 3,
        _ => 0,
    }
}

/// The path of `target` (up to its query) as backends may read it when
/// they map it, into `out`: each separator [`backend_separator_len`]
/// names read as `/`, each segment's `;parameters` dropped (Tomcat and
/// Jetty: `/admin;x/secret` is their `/admin/secret`), and runs of `/`
/// merged, as in the normal form routes match. `false`, and `out`
/// untouched, when the path holds none of these: backends read it as it
/// was routed. A path without `;`, `\` or `%` costs one `memchr3`.
pub fn path_as_backends_read(target: &[u8], out: &mut Vec<u8>) -> bool {
    let path = &target[..memchr::memchr(b'?', target).unwrap_or(target.len())];
    let Some(first) = memchr::memchr3(b';', b'\\', b'%', path) else {
        return false;
    };
    let read_otherwise = memchr::memchr3_iter(b';', b'\\', b'%', &path[first..])
        .any(|i| path[first + i] == b';' || backend_separator_len(&path[first + i..]) > 0);
    if !read_otherwise {
        return false;
    }
    out.clear();
    let mut i = 0;
    let mut in_parameters = false;
    while i < path.len() {
        let separator = if path[i] == b'/' {
            1
        } else {
            backend_separator_len(&path[i..])
        };
        if separator > 0 {
            if out.last() != Some(&b'/') {
                out.push(b'/');
            }
            in_parameters = false;
            i += separator;
            continue;
        }
        in_parameters |= path[i] == b';';
        if !in_parameters {
            out.push(path[i]);
        }
        i += 1;
    }
    true
}

/// Whether the path (the target up to its query) holds a `%` that does not
/// begin an escape: `%` and two hex digits (RFC 3986 §2.1). Besides being
/// invalid, such a `%` would let [`normalize_path`] make an escape out of
/// what it decodes (`%%361` becomes `%61`), which the backend would decode
/// again into a path the route never saw. The query is the backend's to
/// read, stray `%` included.
pub fn has_stray_percent(target: &[u8]) -> bool {
    let path = &target[..memchr::memchr(b'?', target).unwrap_or(target.len())];
    let mut at = 0;
    while let Some(found) = memchr::memchr(b'%', &path[at..]) {
        let i = at + found;
        let hex = |at: usize| path.get(at).copied().and_then(hex_digit);
        if hex(i + 1).is_none() || hex(i + 2).is_none() {
            return true;
        }
        at = i + 3;
    }
    false
}

fn connection_has(options: &[Range<usize>], buf: &[u8], name: &[u8]) -> bool {
    options
        .iter()
        .any(|r| buf[r.clone()].eq_ignore_ascii_case(name))
}

/// Fields a `Connection` option may never remove from a request: framing,
/// Host, and the forwarding fields the proxy writes itself. A client naming
/// one is trying to make the proxy and the backend disagree on where the
/// message ends or whom it is for (RFC 9110 §7.6.1 forbids listing framing
/// fields, and no client has a reason to); the request is refused.
const REQUEST_FIELDS_CONNECTION_MAY_NOT_NAME: [&[u8]; 7] = [
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
];

/// The same rule for responses: only the framing fields matter there.
const RESPONSE_FIELDS_CONNECTION_MAY_NOT_NAME: [&[u8]; 2] =
    [b"content-length", b"transfer-encoding"];

fn names_any(options: &[Range<usize>], buf: &[u8], names: &[&[u8]]) -> bool {
    names.iter().any(|n| connection_has(options, buf, n))
}

/// Framing fields as read, to decide whether they can go on as they are:
/// only one line with one plain value can; anything else (a repeat, a list,
/// a leading zero, an odd case) is rewritten as one canonical line, so no
/// peer after us can count it differently.
#[derive(Default)]
struct FramingFields {
    length_lines: usize,
    length_canonical: bool,
    coding_lines: usize,
    coding_canonical: bool,
}

impl FramingFields {
    fn length_line(&mut self, value: &[u8]) {
        self.length_lines += 1;
        self.length_canonical = !value.is_empty()
            && value.iter().all(u8::is_ascii_digit)
            && (value.len() == 1 || value[0] != b'0');
    }

    fn coding_line(&mut self, value: &[u8]) {
        self.coding_lines += 1;
        self.coding_canonical = value == b"chunked";
    }

    fn as_read(&self) -> bool {
        self.length_lines <= 1
            && self.coding_lines <= 1
            && (self.length_lines == 0 || self.length_canonical)
            && (self.coding_lines == 0 || self.coding_canonical)
    }
}

/// `Content_Length` or `Transfer_Encoding` in any case: a backend that
/// reads `_` as `-` (CGI and WSGI servers map both to one variable)
/// would frame the body by a field the proxy did not, which is a request
/// smuggled; nginx ignores such fields by default, ringgate refuses them.
fn spells_a_framing_field_with_underscores(name: &[u8]) -> bool {
    (same_field_name(name, b"content-length") || same_field_name(name, b"transfer-encoding"))
        && name.contains(&b'_')
}

/// Whether `name` is the field `field` as a backend that reads `_` as `-`
/// sees it (CGI and WSGI servers map both to one variable): equal ignoring
/// ASCII case, an `_` in `name` matching a `-` in `field`. A field the
/// proxy drops, replaces or writes itself is dropped in that spelling too,
/// or a client's `X_Forwarded_For` would sit beside the proxy's own.
#[inline]
pub fn same_field_name(name: &[u8], field: &[u8]) -> bool {
    // One byte map for both: ASCII case folded, `_` read as `-`.
    let fold = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    name.len() == field.len() && name.iter().zip(field).all(|(&n, &f)| fold(n) == fold(f))
}

fn is_framing_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Headers a proxy consumes itself (RFC 9110 §7.6.1) plus the ones the patch
/// re-emits, and the path overrides a client has no reason to send:
/// IIS's URL Rewrite and the frameworks of CVE-2018-14773 serve the path
/// `X-Original-URL` or `X-Rewrite-URL` names, not the one that was routed.
/// Transfer-Encoding is not among them: chunked bodies are forwarded as
/// they are, so the framing header goes with them.
fn is_request_header_replaced(name: &[u8]) -> bool {
    const DROPPED: [&[u8]; 11] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    ];
    DROPPED.iter().any(|d| same_field_name(name, d)) || is_path_override(name)
}

/// `X-Original-URL` or `X-Rewrite-URL`, in any spelling. Apart from the
/// list above and gated on their lengths: in one list of thirteen names
/// the compiler stopped comparing lengths first, and parsing request heads
/// took 12% more instructions (callgrind, docs/BENCHMARKS.md).
fn is_path_override(name: &[u8]) -> bool {
    match name.len() {
        13 => same_field_name(name, b"x-rewrite-url"),
        14 => same_field_name(name, b"x-original-url"),
        _ => false,
    }
}

fn is_response_hop_by_hop(name: &[u8]) -> bool {
    const DROPPED: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    ];
    DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d))
}

/// Collects the options of every `Connection` line (RFC 9110 §7.6.1).
fn collect_connection_options(
    buf: &[u8],
    value: &[u8],
    options: &mut Vec<Range<usize>>,
) -> Result<(), HeadError> {
    for element in list_elements(value) {
        if element.is_empty() {
            continue;
        }
        if !element.iter().all(|&b| is_tchar(b)) {
            return Err(HeadError::Malformed("invalid Connection option"));
        }
        if options.len() == MAX_CONNECTION_OPTIONS {
            return Err(HeadError::Malformed("too many Connection options"));
        }
        options.push(offset_in(buf, element));
    }
    Ok(())
}

fn map_parse_error(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
        httparse::Error::Token => HeadError::Malformed("invalid token"),
        httparse::Error::Version => HeadError::Malformed("invalid HTTP version"),
    }
}

/// The length of a complete head from httparse's verdict on the first
/// `max_head_bytes` of `buf`; `None` when more bytes may complete it.
fn complete_head(
    parsed: httparse::Result<usize>,
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<usize>, HeadError> {
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            // Past the empty lines a head may start with (RFC 9112 §2.2).
            let window = &buf[..limits.max_head_bytes];
            let start = window.iter().position(|&b| b != b'\r' && b != b'\n');
            let line_ends = start.is_some_and(|s| memchr::memchr(b'\n', &window[s..]).is_some());
            return Err(if line_ends {
                HeadError::TooLarge
            } else {
                HeadError::StartLineTooLong
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_parse_error(e)),
    };
    if has_bare_lf(&buf[..head_len]) {
        return Err(HeadError::Malformed("bare LF line terminator"));
    }
    Ok(Some(head_len))
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. On success `scratch.forward` holds the ranges to forward.
pub fn parse_request(
    buf: &[u8],
    limits: HeadLimits,
    scratch: &mut HeadScratch,
) -> Result<Option<RequestHead>, HeadError> {
    scratch.clear();
    let max_headers = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut storage =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let mut req = httparse::Request::new(&mut []);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        window,
        &mut storage[..max_headers],
    );
    let Some(head_len) = complete_head(parsed, buf, limits)? else {
        return Ok(None);
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let method_range = offset_in(buf, method.as_bytes());
    let target_range = offset_in(buf, target.as_bytes());
    let line_start = method_range.start;
    let request_line_end = line_end(buf, target_range.end);
    scratch.keep(line_start..request_line_end);

    // Methods are case-sensitive (RFC 9110 §9.1), every registered one is
    // uppercase, and routes name them so: `post` would miss a POST route
    // for another while a backend that folds case runs it as POST, and
    // `connect` would slip past the check below. nginx refuses them too.
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(HeadError::Malformed("a method with a lowercase letter"));
    }
    // CONNECT would open a tunnel; TRACE echoes the request, credentials
    // included, back to whoever can make a browser send it.
    if method == "CONNECT" || method == "TRACE" {
        return Err(HeadError::UnsupportedMethod);
    }
    // RFC 9112 §3.2, RFC 3986 §2: a target is ASCII (clients percent-encode
    // the rest; httparse lets bytes above 0x7F through). Backends decode raw
    // UTF-8 differently, so a route could match one path and the backend
    // serve another.
    if !target.is_ascii() {
        return Err(HeadError::Malformed("non-ASCII byte in request-target"));
    }
    // RFC 9112 §3.2: a fragment is never part of a request-target.
    if target.contains('#') {
        return Err(HeadError::Malformed("fragment in request-target"));
    }
    // RFC 9112 §3.2: origin-form, absolute-form, or "*" for OPTIONS.
    let origin_or_asterisk = target.starts_with('/') || (target == "*" && method == "OPTIONS");
    let (path_range, target_authority) = if origin_or_asterisk {
        (target_range.clone(), None)
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if authority.is_empty() || !valid_authority(authority.as_bytes()) {
            return Err(HeadError::Malformed("invalid request-target authority"));
        }
        let auth_range = offset_in(buf, authority.as_bytes());
        (auth_range.end..target_range.end, Some(auth_range))
    } else {
        return Err(HeadError::Malformed("invalid request-target"));
    };
    match path_fault(&buf[path_range.clone()]) {
        None => {}
        Some(PathFault::DotSegment) => {
            return Err(HeadError::Malformed("dot segment in request path"))
        }
        Some(PathFault::StrayPercent) => {
            return Err(HeadError::Malformed(
                "a % in the request path that begins no %XX escape",
            ))
        }
        Some(PathFault::EncodedNul) => return Err(HeadError::Malformed("%00 in the request path")),
    }

    let mut content_length: Option<u64> = None;
    let mut codings = TransferCodings::default();
    let mut host: Option<Range<usize>> = None;
    let mut host_count = 0usize;
    let mut expect_continue = false;
    let mut framing = FramingFields::default();
    // RFC 9110 §7.6.2: OPTIONS's hop limit (TRACE is refused above).
    let is_options = method == "OPTIONS";
    let mut max_forwards_seen = 0usize;
    let mut max_forwards: Option<u64> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            merge_content_length(&mut content_length, h.value)?;
            framing.length_line(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.add(h.value)?;
            framing.coding_line(h.value);
        } else if is_options && name.eq_ignore_ascii_case(b"max-forwards") {
            max_forwards_seen += 1;
            max_forwards = (!h.value.is_empty()
                && h.value.len() <= 18
                && h.value.iter().all(u8::is_ascii_digit))
            .then(|| {
                h.value
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
            });
        } else if name.eq_ignore_ascii_case(b"host") {
            host_count += 1;
            if !valid_authority(h.value) {
                return Err(HeadError::Malformed("invalid Host"));
            }
            host = Some(offset_in(buf, h.value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            collect_connection_options(buf, h.value, &mut scratch.connection_options)?;
        } else if spells_a_framing_field_with_underscores(name) {
            return Err(HeadError::Malformed(
                "Content-Length or Transfer-Encoding spelt with '_'",
            ));
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                // RFC 9110 §10.1.1: ignored in an HTTP/1.0 request.
                expect_continue = version == Version::Http11;
            } else {
                // RFC 9110 §10.1.1: the one expectation defined is all we meet.
                return Err(HeadError::UnsupportedExpectation);
            }
        }
    }
    // One well-formed value is honoured; anything else goes up as sent.
    let max_forwards = max_forwards.filter(|_| max_forwards_seen == 1);
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
    if host_count > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    if host_count == 0 && version == Version::Http11 {
        return Err(HeadError::Malformed("missing Host"));
    }
    let body = if codings.seen {
        // RFC 9112 §6.1: TE in a 1.0 request, or with CL, is a smuggling
        // attempt until proven otherwise; refuse and close.
        if version == Version::Http10 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if content_length.is_some() {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        codings.check()?;
        RequestBody::Chunked
    } else {
        match content_length {
            None | Some(0) => RequestBody::Empty,
            Some(n) => RequestBody::Length(n),
        }
    };

    let opts = &scratch.connection_options;
    if names_any(opts, buf, &REQUEST_FIELDS_CONNECTION_MAY_NOT_NAME) {
        return Err(HeadError::Malformed(
            "Connection names a framing, Host or forwarding field",
        ));
    }
    let keep_alive = match version {
        Version::Http11 => !connection_has(opts, buf, b"close"),
        Version::Http10 => {
            connection_has(opts, buf, b"keep-alive") && !connection_has(opts, buf, b"close")
        }
    };
    let framing_as_read = framing.as_read();
    if !framing_as_read {
        scratch.framing = Some(match body {
            RequestBody::Chunked => FramingLine::Chunked,
            // An empty body keeps its explicit zero: the backend then knows
            // a body-less POST is complete.
            RequestBody::Length(n) => FramingLine::Length(n),
            RequestBody::Empty => FramingLine::Length(0),
        });
    }
    if let Some(authority) = &target_authority {
        scratch.host = Some(authority.clone());
    }
    scratch.requested_host = target_authority.clone().or_else(|| host.clone());

    for i in 0..req.headers.len() {
        let h = &req.headers[i];
        let name = h.name.as_bytes();
        let name_range = offset_in(buf, name);
        let value_range = offset_in(buf, h.value);
        let line = name_range.start..line_end(buf, value_range.end);
        if name.eq_ignore_ascii_case(b"via") {
            scratch.via.push(value_range.clone());
        }
        if (!framing_as_read && is_framing_field(name))
            || (target_authority.is_some() && name.eq_ignore_ascii_case(b"host"))
        {
            // Written by the patch instead.
        } else if max_forwards.is_some() && name.eq_ignore_ascii_case(b"max-forwards") {
            // Written by the patch, one less.
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            scratch.forwarded_for.push(value_range);
        } else if name.eq_ignore_ascii_case(b"forwarded") {
            scratch.forwarded.push(value_range);
        } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            scratch.forwarded_proto.push(value_range);
        } else if name.eq_ignore_ascii_case(b"x-forwarded-host") {
            scratch.forwarded_host.push(value_range);
        } else if is_request_header_replaced(name)
            || connection_has(&scratch.connection_options, buf, name)
        {
            // dropped
        } else {
            scratch.keep(line);
        }
    }

    Ok(Some(RequestHead {
        head_len,
        method: method_range,
        target: target_range,
        path: path_range,
        absolute_form: target_authority.is_some(),
        path_normalized: false,
        authority: target_authority.or(host),
        version,
        body,
        keep_alive,
        expect_continue,
        is_head_method: method == "HEAD",
        max_forwards,
    }))
}

/// Longest text of an IP address: an IPv4-mapped IPv6 address,
/// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const IP_TEXT_MAX: usize = 45;

/// An IP address with its text, formatted into a fixed array so that
/// changing it per request allocates nothing.
#[derive(Clone, Copy)]
struct ClientAddr {
    ip: IpAddr,
    text: [u8; IP_TEXT_MAX],
    len: u8,
}

impl ClientAddr {
    fn new(ip: IpAddr) -> Self {
        use std::io::Write as _;
        let mut text = [0u8; IP_TEXT_MAX];
        let mut cursor = &mut text[..];
        // Never fails: every address fits in IP_TEXT_MAX.
        let _ = write!(cursor, "{ip}");
        let len = IP_TEXT_MAX - cursor.len();
        ClientAddr {
            ip,
            text,
            len: len as u8,
        }
    }

    fn text(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ip)
    }
}

/// Who sent a request: the connection's peer, whether it is a trusted
/// proxy, and the client address the request is accounted to (rate-limit
/// keys, client-IP hashing, logs). For an untrusted peer that is the peer;
/// for a trusted one, the right-most address of `X-Forwarded-For` that is
/// not itself a trusted proxy ([`ForwardedClient::resolve`]).
#[derive(Debug, Clone)]
pub struct ForwardedClient {
    peer: ClientAddr,
    trusted_peer: bool,
    client: ClientAddr,
}

impl ForwardedClient {
    /// A connection from `peer`, trusted by nobody until [`Self::resolve`].
    pub fn new(peer: IpAddr) -> Self {
        let peer = ClientAddr::new(peer);
        ForwardedClient {
            peer,
            trusted_peer: false,
            client: peer,
        }
    }

    /// Decides, for the request whose head `buf` was parsed into `scratch`,
    /// whether the peer is a trusted proxy (`trusts`) and so whom the request
    /// is from. Walks `X-Forwarded-For` right to left, skipping trusted
    /// proxies; a malformed element met before an untrusted address makes
    /// the chain unusable, and the peer is taken instead. Allocates nothing.
    pub fn resolve(&mut self, buf: &[u8], scratch: &HeadScratch, trusts: impl Fn(IpAddr) -> bool) {
        self.trusted_peer = trusts(self.peer.ip);
        self.client = self.peer;
        if !self.trusted_peer {
            return;
        }
        let mut leftmost = None;
        for value in scratch.forwarded_for.iter().rev() {
            for element in buf[value.clone()].rsplit(|&b| b == b',') {
                let element = trim_ows(element);
                if element.is_empty() {
                    // RFC 9110 §5.6.1: empty list elements are allowed.
                    continue;
                }
                let Some(ip) = parse_forwarded_ip(element) else {
                    return;
                };
                if !trusts(ip) {
                    self.client = ClientAddr::new(ip);
                    return;
                }
                leftmost = Some(ip);
            }
        }
        // Every hop is a trusted proxy: the first of them is the client.
        if let Some(ip) = leftmost {
            self.client = ClientAddr::new(ip);
        }
    }

    /// Forgets what the last request said: the peer is the client again.
    pub fn reset_to_peer(&mut self) {
        self.trusted_peer = false;
        self.client = self.peer;
    }

    /// The connection's peer.
    pub fn peer(&self) -> IpAddr {
        self.peer.ip
    }

    /// The address the request is accounted to, as text: the key of
    /// per-client rate limits and hashes, and the access log's client.
    pub fn ip_bytes(&self) -> &[u8] {
        self.client.text()
    }

    /// Whether the current request came from a trusted proxy, whose
    /// forwarding headers are kept and appended to.
    pub fn trusted_peer(&self) -> bool {
        self.trusted_peer
    }
}

/// One `X-Forwarded-For` element: an IP address, IPv6 optionally in
/// brackets (as some proxies write it). Ports and obfuscated names are not
/// addresses and make the chain unusable.
fn parse_forwarded_ip(element: &[u8]) -> Option<IpAddr> {
    let element = match element {
        [b'[', inner @ .., b']'] => inner,
        _ => element,
    };
    std::str::from_utf8(element).ok()?.parse().ok()
}

/// The value of the first field named `name` (case-insensitive) in a head
/// already accepted by `parse_request` (so every line ends in CRLF and no
/// value is folded). Only used by features that key on a header, never on
/// the plain forwarding path.
pub fn header_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field_lines(head).find_map(|(n, value)| n.eq_ignore_ascii_case(name).then_some(value))
}

/// Each field line of a head accepted by `parse_request` (the request or
/// status line skipped), as its name and its value without surrounding
/// whitespace. The one walk of a head's fields for the features that read
/// them after parsing.
pub fn field_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        Some((&line[..colon], trim_ows(&line[colon + 1..])))
    })
}

/// Fields that frameworks take as the method of the request that carries
/// them (Rack's MethodOverride and Symfony on a POST, Laravel, ASP.NET's
/// override handlers, Google's APIs).
const METHOD_OVERRIDE_FIELDS: [&[u8]; 3] = [
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
];

/// Calls `each` with the value of every method-override field in `head`
/// (in any spelling with `_` for `-`), uppercased as the frameworks read
/// it, until `each` returns `true`; returns whether one did. A value longer
/// than any method is passed as it is (it names no route's method).
pub fn any_method_override(head: &[u8], mut each: impl FnMut(&[u8]) -> bool) -> bool {
    const LONGEST_METHOD: usize = 32;
    field_lines(head).any(|(name, value)| {
        if !METHOD_OVERRIDE_FIELDS
            .iter()
            .any(|f| same_field_name(name, f))
        {
            return false;
        }
        if value.len() > LONGEST_METHOD {
            return each(value);
        }
        let mut upper = [0u8; LONGEST_METHOD];
        let upper = &mut upper[..value.len()];
        upper.copy_from_slice(value);
        upper.make_ascii_uppercase();
        each(upper)
    })
}

/// The value of cookie `name` (RFC 6265 §5.4: `name=value` pairs separated
/// by `; `), searched in every `Cookie` field.
pub fn cookie_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field_lines(head).find_map(|(field, value)| {
        if !field.eq_ignore_ascii_case(b"cookie") {
            return None;
        }
        value.split(|&b| b == b';').find_map(|pair| {
            let pair = trim_ows(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name).then(|| &pair[eq + 1..])
        })
    })
}

/// Writes the headers the proxy adds to a forwarded request, then the blank
/// line. From an untrusted peer, whatever it claimed is replaced: the
/// client is the peer, the protocol `proto`, the host the one it asked for.
/// From a trusted proxy, `X-Forwarded-For` and `Forwarded` get the peer
/// appended to what it sent (RFC 7239 §4), and its `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, which describe the original request, are kept.
pub fn write_request_patch(
    out: &mut Vec<u8>,
    buf: &[u8],
    scratch: &HeadScratch,
    client: &ForwardedClient,
    proto: &str,
) {
    write_replaced_fields(out, buf, scratch);
    let trusted = client.trusted_peer;
    let peer = client.peer.text();
    out.extend_from_slice(b"X-Forwarded-For: ");
    if trusted {
        write_list_prefix(out, buf, &scratch.forwarded_for);
    }
    out.extend_from_slice(peer);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    if trusted && !scratch.forwarded_proto.is_empty() {
        write_list(out, buf, &scratch.forwarded_proto);
    } else {
        out.extend_from_slice(proto.as_bytes());
    }
    let host = if trusted && !scratch.forwarded_host.is_empty() {
        Some(&scratch.forwarded_host[..])
    } else {
        scratch.requested_host.as_ref().map(std::slice::from_ref)
    };
    if let Some(host) = host {
        out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
        write_list(out, buf, host);
    }
    out.extend_from_slice(b"\r\nForwarded: ");
    if trusted {
        write_list_prefix(out, buf, &scratch.forwarded);
    }
    // RFC 7239 §6: IPv6 node names are quoted and bracketed.
    out.extend_from_slice(b"for=");
    match client.peer.ip {
        IpAddr::V4(_) => out.extend_from_slice(peer),
        IpAddr::V6(_) => {
            out.extend_from_slice(b"\"[");
            out.extend_from_slice(peer);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Does a `Via` value of the request (RFC 9110 §7.6.3: a list of
/// `received-protocol RWS received-by [ RWS comment ]`) name `pseudonym`
/// as a proxy it passed? Compared ignoring case.
pub fn via_names(buf: &[u8], scratch: &HeadScratch, pseudonym: &[u8]) -> bool {
    scratch.via.iter().any(|r| {
        buf[r.clone()].split(|&b| b == b',').any(|element| {
            let mut words = element
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|w| !w.is_empty());
            let _received_protocol = words.next();
            words
                .next()
                .is_some_and(|by| by.eq_ignore_ascii_case(pseudonym))
        })
    })
}

/// The values of `ranges` joined as one list.
fn write_list(out: &mut Vec<u8>, buf: &[u8], ranges: &[Range<usize>]) {
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(&buf[r.clone()]);
    }
}

/// The values of `ranges`, each followed by `, `: what goes before an
/// element appended to the list.
fn write_list_prefix(out: &mut Vec<u8>, buf: &[u8], ranges: &[Range<usize>]) {
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        out.extend_from_slice(&buf[r.clone()]);
        out.extend_from_slice(b", ");
    }
}

/// Writes the framing and Host lines that replace the ones read (see
/// [`HeadScratch::framing`] and [`HeadScratch::host`]), if any.
pub fn write_replaced_fields(out: &mut Vec<u8>, buf: &[u8], scratch: &HeadScratch) {
    match scratch.framing {
        None | Some(FramingLine::Omitted) => {}
        Some(FramingLine::Chunked) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Some(FramingLine::Length(n)) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(host) = &scratch.host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(&buf[host.clone()]);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the request line of a forwarded request in origin-form (RFC 9112
/// §3.2.1): the method, the path (its first `replace.0` bytes replaced by
/// `replace.1`, for a prefix rewrite), and the version, then CRLF. An
/// absolute-form target without a path becomes `/`.
pub fn write_request_line(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    replace: Option<(usize, &[u8])>,
) {
    out.extend_from_slice(&buf[head.method.clone()]);
    out.push(b' ');
    let path = &buf[head.path.clone()];
    match replace {
        Some((len, with)) => {
            out.extend_from_slice(with);
            out.extend_from_slice(&path[len.min(path.len())..]);
        }
        None => {
            if !path.starts_with(b"/") && path != b"*" {
                out.push(b'/');
            }
            out.extend_from_slice(path);
        }
    }
    out.extend_from_slice(match head.version {
        Version::Http10 => b" HTTP/1.0\r\n",
        Version::Http11 => b" HTTP/1.1\r\n",
    });
}

/// Rewrites the path of `head`'s target in `buf`, in place, into the form a
/// backend that normalizes URIs reads (RFC 3986 §6.2.2): percent-encoded
/// unreserved characters decoded (`%61` is `a`), runs of `/` merged. Routes
/// match and rewrites apply to this form, and it is what goes upstream, so
/// `/%61dmin/` or `//admin/` cannot slip past a `/admin/` route to another
/// one while the backend serves `/admin/`. The query is left as sent. Only
/// shrinks: the query moves left, `path` and `target` end earlier and the
/// bytes after them are stale (the request line is then written by the
/// proxy). Returns whether anything changed. It reveals no dot segment:
/// [`parse_request`] has refused every one, escaped dots included, and
/// decoding never makes a `/`.
pub fn normalize_path(buf: &mut [u8], head: &mut RequestHead) -> bool {
    let path = &buf[head.path.clone()];
    let path_len = memchr::memchr(b'?', path).unwrap_or(path.len());
    let (start, query_start, end) = (head.path.start, head.path.start + path_len, head.path.end);
    let normal_len = normalize_path_bytes(&mut buf[start..query_start]);
    if normal_len == path_len {
        return false;
    }
    let write = start + normal_len;
    buf.copy_within(query_start..end, write);
    let new_end = write + (end - query_start);
    head.path.end = new_end;
    head.target.end = new_end;
    head.path_normalized = true;
    true
}

/// Rewrites `path` (a path without its query) in place into its normal
/// form (RFC 3986 §6.2.2: percent-encoded unreserved characters decoded,
/// runs of `/` merged) and returns its new length; what follows is stale.
/// The one definition of the form requests are routed in, which `check`
/// holds route prefixes to. A path already normal (nearly all) costs one
/// `memchr` and one `memmem`.
pub fn normalize_path_bytes(path: &mut [u8]) -> usize {
    if memchr::memchr(b'%', path).is_none() && memchr::memmem::find(path, b"//").is_none() {
        return path.len();
    }
    let (mut read, mut write) = (0, 0);
    while read < path.len() {
        let b = path[read];
        if b == b'/' && write > 0 && path[write - 1] == b'/' {
            read += 1;
            continue;
        }
        if b == b'%' && read + 2 < path.len() {
            if let (Some(hi), Some(lo)) = (hex_digit(path[read + 1]), hex_digit(path[read + 2])) {
                let decoded = hi << 4 | lo;
                if is_unreserved(decoded) {
                    path[write] = decoded;
                    write += 1;
                    read += 3;
                    continue;
                }
            }
        }
        path[write] = b;
        write += 1;
        read += 1;
    }
    write
}

/// RFC 3986 §2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A parsed response head: offsets into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub version: Version,
    pub body: ResponseBody,
    /// The upstream connection may be reused after this response.
    pub reusable: bool,
    /// The response has a `Date` field (RFC 9110 §6.6.1: one forwarded
    /// without gets the time it was received).
    pub has_date: bool,
}

impl ResponseHead {
    /// 1xx other than 101: an interim response, forwarded and followed by the
    /// final one (RFC 9110 §15.2).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a response head to a request (`request_was_head` tells whether the
/// request method was HEAD). Any ambiguity is an error: the caller answers the
/// client 502 and discards the upstream connection.
pub fn parse_response(
    buf: &[u8],
    limits: HeadLimits,
    request_was_head: bool,
    scratch: &mut HeadScratch,
) -> Result<Option<ResponseHead>, HeadError> {
    scratch.clear();
    let max_headers = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut storage =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let mut res = httparse::Response::new(&mut []);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        window,
        &mut storage[..max_headers],
    );
    // 414 is a request's status; a response's long status line is just
    // a head too large.
    let head = complete_head(parsed, buf, limits).map_err(|e| match e {
        HeadError::StartLineTooLong => HeadError::TooLarge,
        other => other,
    });
    let Some(head_len) = head? else {
        return Ok(None);
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    if status == 101 {
        return Err(HeadError::Malformed("protocol upgrade not supported"));
    }
    // RFC 9110 §15: codes outside 100-599 are invalid (httparse takes any
    // three digits). A client may read a 0xx as interim and wait on.
    if !(100..=599).contains(&status) {
        return Err(HeadError::Malformed("status code outside 100-599"));
    }
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    // The status line: from the start of the buffer past leading CRLFs that
    // httparse skipped, up to its LF.
    let first_line_start = buf[..head_len]
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let first_line_end = line_end(buf, first_line_start);
    scratch.keep(first_line_start..first_line_end);

    let mut content_length: Option<u64> = None;
    let mut codings = TransferCodings::default();
    let mut framing = FramingFields::default();
    let mut has_date = false;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            merge_content_length(&mut content_length, h.value)?;
            framing.length_line(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.add(h.value)?;
            framing.coding_line(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            collect_connection_options(buf, h.value, &mut scratch.connection_options)?;
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        }
    }
    let no_body =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    if codings.seen && content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if codings.seen {
        if version == Version::Http10 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        codings.check()?;
    }
    let body = if no_body {
        ResponseBody::Empty
    } else if codings.seen {
        ResponseBody::Chunked
    } else {
        match content_length {
            Some(0) => ResponseBody::Empty,
            Some(n) => ResponseBody::Length(n),
            None => ResponseBody::UntilClose,
        }
    };
    let opts = &scratch.connection_options;
    if names_any(opts, buf, &RESPONSE_FIELDS_CONNECTION_MAY_NOT_NAME) {
        return Err(HeadError::Malformed("Connection names a framing field"));
    }
    // RFC 9110 §8.6 and §6.4.1: a 1xx or 204 has no body and must not say
    // it has one. A 304 or a response to HEAD keeps its Content-Length,
    // which describes the representation, not this message.
    let omit_framing = (100..200).contains(&status) || status == 204;
    let framing_as_read = !omit_framing && framing.as_read();
    if omit_framing {
        scratch.framing = Some(FramingLine::Omitted);
    } else if !framing_as_read {
        scratch.framing = Some(if codings.seen {
            FramingLine::Chunked
        } else {
            FramingLine::Length(content_length.unwrap_or(0))
        });
    }
    let persistent = match version {
        Version::Http11 => !connection_has(opts, buf, b"close"),
        Version::Http10 => {
            connection_has(opts, buf, b"keep-alive") && !connection_has(opts, buf, b"close")
        }
    };
    let reusable = persistent && body != ResponseBody::UntilClose;

    for i in 0..res.headers.len() {
        let h = &res.headers[i];
        let name = h.name.as_bytes();
        let name_range = offset_in(buf, name);
        let line = name_range.start..line_end(buf, offset_in(buf, h.value).end);
        let replaced = !framing_as_read && is_framing_field(name);
        if !replaced
            && !is_response_hop_by_hop(name)
            && !connection_has(&scratch.connection_options, buf, name)
        {
            scratch.keep(line);
        }
    }
    Ok(Some(ResponseHead {
        head_len,
        status,
        version,
        body,
        reusable,
        has_date,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
    };

    fn req(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request(raw, LIMITS, &mut HeadScratch::default())
    }

    fn forwarded(raw: &[u8]) -> Vec<u8> {
        let mut scratch = HeadScratch::default();
        parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
        let mut out = Vec::new();
        for r in &scratch.forward {
            out.extend_from_slice(&raw[r.clone()]);
        }
        write_request_patch(
            &mut out,
            raw,
            &scratch,
            &ForwardedClient::new("10.0.0.1".parse().unwrap()),
            "http",
        );
        out
    }

    fn refused(raw: &[u8]) -> HeadError {
        req(raw).expect_err("must be refused")
    }

    #[test]
    fn simple_get_parses_with_offsets() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:80\r\n\r\nrest";
        let head = req(raw).unwrap().unwrap();
        assert_eq!(head.head_len, raw.len() - 4);
        assert_eq!(&raw[head.method.clone()], b"GET");
        assert_eq!(&raw[head.path.clone()], b"/a?b=1");
        assert_eq!(&raw[head.authority.clone().unwrap()], b"Example.com:80");
        assert_eq!(head.body, RequestBody::Empty);
        assert!(head.keep_alive);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(req(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn a_request_line_over_the_limit_is_414() {
        let mut raw = b"GET /".to_vec();
        raw.resize(LIMITS.max_head_bytes + 10, b'a');
        assert_eq!(refused(&raw), HeadError::StartLineTooLong);
        assert_eq!(HeadError::StartLineTooLong.status(), 414);
    }

    #[test]
    fn head_over_limit_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        raw.resize(LIMITS.max_head_bytes + 10, b'a');
        assert_eq!(refused(&raw), HeadError::TooLarge);
        assert_eq!(HeadError::TooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..LIMITS.max_headers {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(refused(&raw), HeadError::TooManyHeaders);
    }

    #[test]
    fn cl_and_te_together_is_refused() {
        let e = refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn framing_fields_spelt_with_underscores_are_refused() {
        for field in [
            "Transfer_Encoding: chunked",
            "content_length: 5",
            "CONTENT_length: 5",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\n{field}\r\n\r\nhello");
            assert_eq!(refused(raw.as_bytes()).status(), 400, "{field}");
        }
        // Other names with underscores, and near misses, are ordinary fields.
        for field in [
            "X_Request_Id: 1",
            "Content_Len: 5",
            "Transfer_Encodings: chunked",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{field}\r\n\r\n");
            assert!(req(raw.as_bytes()).unwrap().is_some(), "{field}");
        }
    }

    #[test]
    fn differing_content_lengths_are_refused() {
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n");
    }

    #[test]
    fn identical_content_lengths_are_merged() {
        let head = req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.body, RequestBody::Length(5));
    }

    #[test]
    fn malformed_content_lengths_are_refused() {
        for v in [
            "+5",
            "-1",
            "0x5",
            "5a",
            "",
            " ",
            "99999999999999999999999",
            "5 5",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(refused(raw.as_bytes()).status(), 400, "{v:?}");
        }
    }

    #[test]
    fn te_in_http10_is_refused() {
        refused(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
    }

    #[test]
    fn obfuscated_transfer_encodings_are_refused() {
        for v in [
            "xchunked",
            "chunked, identity",
            "chunked, chunked",
            "chunked;q=1",
            ",",
            "gzip",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {v}\r\n\r\n");
            assert_eq!(refused(raw.as_bytes()).status(), 400, "{v:?}");
        }
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0b\r\n\r\n");
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n");
    }

    #[test]
    fn unknown_coding_before_chunked_is_501() {
        let e = refused(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn chunked_is_recognised_in_any_case() {
        let head = req(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.body, RequestBody::Chunked);
    }

    #[test]
    fn obs_fold_is_refused() {
        refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n");
    }

    #[test]
    fn control_characters_in_values_are_refused() {
        refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n");
        refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n");
        refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n");
    }

    #[test]
    fn bare_lf_is_refused() {
        refused(b"GET /a HTTP/1.1\nHost: x\n\n");
        refused(b"GET /a HTTP/1.1\r\nHost: x\nX: y\r\n\r\n");
    }

    #[test]
    fn host_rules() {
        refused(b"GET / HTTP/1.1\r\n\r\n");
        refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        refused(b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n");
        assert!(req(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        let raw = b"GET http://api.example/x?y HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = req(raw).unwrap().unwrap();
        assert_eq!(&raw[head.authority.clone().unwrap()], b"api.example");
        assert_eq!(&raw[head.path.clone()], b"/x?y");
    }

    #[test]
    fn connect_is_501_and_bad_targets_400() {
        assert_eq!(
            refused(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").status(),
            501
        );
        assert_eq!(
            refused(b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n").status(),
            400
        );
        assert_eq!(refused(b"GARBAGE\r\n\r\n").status(), 400);
    }

    #[test]
    fn retain_lines_drops_fields_and_keeps_the_rest_as_ranges() {
        let raw = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Drop: 1\r\nAccept: */*\r\nx-drop: 2\r\n\r\n";
        let mut scratch = HeadScratch::default();
        parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
        let joined = |s: &HeadScratch| -> Vec<u8> {
            s.forward
                .iter()
                .flat_map(|r| raw[r.clone()].to_vec())
                .collect()
        };
        scratch.retain_lines(raw, true, |name| !name.eq_ignore_ascii_case(b"x-drop"));
        assert_eq!(
            joined(&scratch),
            b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n".to_vec()
        );
        assert_eq!(
            scratch.forward.len(),
            2,
            "adjacent kept lines stay one range"
        );
        scratch.retain_lines(raw, false, |_| true);
        assert_eq!(joined(&scratch), b"Host: x\r\nAccept: */*\r\n".to_vec());
    }

    #[test]
    fn only_100_continue_is_an_expectation_met() {
        let head =
            req(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.expect_continue, "case-insensitive");
        let e = refused(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n");
        assert_eq!((e, e.status()), (HeadError::UnsupportedExpectation, 417));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(
            !req(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn hop_by_hop_headers_and_connection_options_are_dropped() {
        let out = forwarded(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Kept: yes\r\n\r\n",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("GET / HTTP/1.1\r\nHost: x\r\nX-Kept: yes\r\n"),
            "{text}"
        );
        for gone in [
            "X-Secret",
            "Keep-Alive",
            "TE:",
            "Upgrade",
            "Proxy-Connection",
            "Connection",
        ] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn header_and_cookie_lookup() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-User:  alice \r\nCookie: a=1; session=abc\r\nCookie: b=2\r\n\r\n";
        assert_eq!(header_value(raw, b"x-user"), Some(&b"alice"[..]));
        assert_eq!(header_value(raw, b"x-none"), None);
        assert_eq!(cookie_value(raw, b"session"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(raw, b"b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(raw, b"Session"), None);
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut scratch = HeadScratch::default();
        parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
        let mut out = Vec::new();
        write_request_patch(
            &mut out,
            raw,
            &scratch,
            &ForwardedClient::new("::1".parse().unwrap()),
            "http",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Forwarded-For: ::1\r\n"), "{text}");
        assert!(
            text.contains("Forwarded: for=\"[::1]\";proto=http\r\n"),
            "{text}"
        );
    }

    /// What goes upstream for `raw` from peer `peer`, with `trusted` as
    /// the set of trusted proxies; and whom the request is accounted to.
    fn forwarded_from(raw: &[u8], peer: &str, trusted: &[&str]) -> (String, String) {
        let mut scratch = HeadScratch::default();
        parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
        let mut client = ForwardedClient::new(peer.parse().unwrap());
        let trusted: Vec<IpAddr> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client.resolve(raw, &scratch, |ip| trusted.contains(&ip));
        let mut out = Vec::new();
        write_request_patch(&mut out, raw, &scratch, &client, "http");
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(client.ip_bytes().to_vec()).unwrap(),
        )
    }

    const CLAIMS: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: a.example\r\n\r\n";

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
        let (text, client) = forwarded_from(CLAIMS, "10.0.0.1", &[]);
        assert!(text.contains("X-Forwarded-For: 10.0.0.1\r\n"), "{text}");
        assert!(
            text.contains("Forwarded: for=10.0.0.1;proto=http\r\n"),
            "{text}"
        );
        assert!(text.contains("X-Forwarded-Proto: http\r\n"), "{text}");
        assert!(text.contains("X-Forwarded-Host: x\r\n"), "{text}");
        assert!(!text.contains("1.2.3.4"), "{text}");
        assert!(
            !text.contains("https") && !text.contains("a.example"),
            "{text}"
        );
        assert_eq!(client, "10.0.0.1");
    }

    #[test]
    fn forwarding_headers_from_a_trusted_proxy_are_appended_to() {
        let (text, client) = forwarded_from(CLAIMS, "10.0.0.1", &["10.0.0.1"]);
        assert!(
            text.contains("X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Forwarded: for=1.2.3.4, for=10.0.0.1;proto=http\r\n"),
            "{text}"
        );
        assert!(text.contains("X-Forwarded-Proto: https\r\n"), "{text}");
        assert!(text.contains("X-Forwarded-Host: a.example\r\n"), "{text}");
        assert_eq!(client, "1.2.3.4");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 9.9.9.9, 1.2.3.4\r\nX-Forwarded-For: 10.0.0.2,, 10.0.0.3\r\n\r\n";
        let trusted = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
        let (text, client) = forwarded_from(raw, "10.0.0.1", &trusted);
        assert_eq!(client, "1.2.3.4");
        assert!(
            text.contains("X-Forwarded-For: 9.9.9.9, 1.2.3.4, 10.0.0.2,, 10.0.0.3, 10.0.0.1\r\n"),
            "{text}"
        );
        // Every hop trusted: the farthest one is the client.
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.3, 10.0.0.2\r\n\r\n";
        assert_eq!(forwarded_from(raw, "10.0.0.1", &trusted).1, "10.0.0.3");
        // No X-Forwarded-For at all: the trusted peer is the client.
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(forwarded_from(raw, "10.0.0.1", &trusted).1, "10.0.0.1");
    }

    #[test]
    fn a_malformed_chain_from_a_trusted_proxy_falls_back_to_the_peer() {
        let trusted = ["10.0.0.1", "10.0.0.2"];
        for xff in [
            "1.2.3.4, not-an-ip",
            "1.2.3.4:8080",
            "unknown",
            "1.2.3.4, 10.0.0.2 x",
            "[1.2.3.4",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {xff}\r\n\r\n");
            let (_, client) = forwarded_from(raw.as_bytes(), "10.0.0.1", &trusted);
            assert_eq!(client, "10.0.0.1", "{xff}");
        }
        // Garbage left of the right-most untrusted hop is never looked at.
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: junk, 1.2.3.4\r\n\r\n";
        assert_eq!(forwarded_from(raw, "10.0.0.1", &trusted).1, "1.2.3.4");
    }

    #[test]
    fn ipv6_hops_are_read_with_or_without_brackets() {
        let raw =
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 2001:db8::7, [2001:db8::1]\r\n\r\n";
        let (text, client) = forwarded_from(raw, "::1", &["::1", "2001:db8::1"]);
        assert_eq!(client, "2001:db8::7");
        assert!(
            text.contains("Forwarded: for=\"[::1]\";proto=http\r\n"),
            "{text}"
        );
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {longest}\r\n\r\n");
        let (_, client) = forwarded_from(raw.as_bytes(), "::1", &["::1"]);
        assert_eq!(
            client,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse::<IpAddr>()
                .unwrap()
                .to_string()
        );
    }

    fn res(raw: &[u8], head: bool) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(raw, LIMITS, head, &mut HeadScratch::default())
    }

    #[test]
    fn response_framing() {
        let r = res(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, ResponseBody::Length(3));
        assert!(r.reusable);
        let r = res(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, ResponseBody::Chunked);
        let r = res(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(r.body, ResponseBody::UntilClose);
        assert!(!r.reusable);
        let r = res(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, ResponseBody::Empty);
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 3\r\n\r\n");
            assert_eq!(
                res(raw.as_bytes(), false).unwrap().unwrap().body,
                ResponseBody::Empty
            );
        }
        let r = res(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!r.reusable);
    }

    #[test]
    fn ambiguous_responses_are_refused() {
        res(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap_err();
        res(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            false,
        )
        .unwrap_err();
        res(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).unwrap_err();
        res(b"HTTP/1.1 200 OK\nContent-Length: 3\n\n", false).unwrap_err();
    }

    #[test]
    fn status_codes_outside_100_to_599_are_refused() {
        for code in ["000", "099", "600", "999"] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            res(raw.as_bytes(), false).unwrap_err();
        }
        for code in ["100", "599"] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            res(raw.as_bytes(), false).unwrap().unwrap();
        }
    }

    #[test]
    fn response_hop_by_hop_headers_are_dropped() {
        let raw = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        let mut scratch = HeadScratch::default();
        parse_response(raw, LIMITS, false, &mut scratch)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for r in &scratch.forward {
            out.extend_from_slice(&raw[r.clone()]);
        }
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
    }

    #[test]
    fn connection_may_not_name_framing_host_or_forwarding_fields() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "Host",
            "X-Forwarded-For",
            "x-forwarded-proto",
            "X-Forwarded-Host",
            "Forwarded",
        ] {
            let raw = format!(
                "POST / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, {name}\r\nContent-Length: 1\r\n\r\n"
            );
            assert_eq!(refused(raw.as_bytes()).status(), 400, "{name}");
        }
        let resp = res(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(resp.is_err(), "{resp:?}");
    }

    #[test]
    fn framing_that_could_be_read_two_ways_is_rewritten_once() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\n",
        ] {
            let text = String::from_utf8(forwarded(raw)).unwrap();
            assert_eq!(text.matches("Content-Length").count(), 1, "{text}");
            assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        }
        let text = String::from_utf8(forwarded(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n",
        ))
        .unwrap();
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(!text.contains("Chunked"), "{text}");
        // A plain single field stays as read (zero-copy).
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n";
        let mut scratch = HeadScratch::default();
        parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
        assert_eq!(scratch.framing, None);
    }

    #[test]
    fn host_port_must_be_digits() {
        for host in [
            "x:8o", "x:abc", "x:1:2", "x:123456", "x:65536", ":80", "[::1", "[::1]x", "[zz]",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(req(raw.as_bytes()).is_err(), "{host} accepted");
        }
        for host in [
            "x",
            "x:80",
            "x:",
            "a.b-c_d:65535",
            "[::1]:8080",
            "[::ffff:1.2.3.4]",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(matches!(req(raw.as_bytes()), Ok(Some(_))), "{host} refused");
        }
        assert!(req(b"GET http://x:8o/ HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    }

    #[test]
    fn expect_100_continue_from_http10_is_ignored() {
        let head = req(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.expect_continue);
    }

    #[test]
    fn absolute_form_target_replaces_host_and_goes_in_origin_form() {
        let raw = b"GET http://admin.example HTTP/1.1\r\nHost: public.example\r\nX-A: 1\r\n\r\n";
        let mut scratch = HeadScratch::default();
        let head = parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
        assert!(head.absolute_form);
        let mut line = Vec::new();
        write_request_line(&mut line, raw, &head, None);
        assert_eq!(line, b"GET / HTTP/1.1\r\n");
        scratch.retain_lines(raw, false, |_| true);
        let mut out = Vec::new();
        for r in &scratch.forward {
            out.extend_from_slice(&raw[r.clone()]);
        }
        write_request_patch(
            &mut out,
            raw,
            &scratch,
            &ForwardedClient::new("10.0.0.1".parse().unwrap()),
            "http",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Host: admin.example\r\n"), "{text}");
        assert!(!text.contains("public.example"), "{text}");
    }

    #[test]
    fn dot_segments_are_refused() {
        for path in [
            "/files/../../echo",
            "/a/./b",
            "/a/..",
            "/a/.",
            "/..",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/files%2f..%2fecho",
            "/files%2F..%5Cecho",
            "/a\\..\\b",
            "/a/..;/b",
            "/a/.;x=1/b",
            "/a/..%3bjsessionid=1",
        ] {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(req(raw.as_bytes()).is_err(), "{path} accepted");
        }
        for path in [
            "/a/...",
            "/a/.b",
            "/a/b..",
            "/a?x=/../",
            "/%2e%2e%2e",
            "/.well-known/x",
            "/a;jsessionid=1/b",
            "/a/b;..",
            "/a/x..;/b",
        ] {
            let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(matches!(req(raw.as_bytes()), Ok(Some(_))), "{path} refused");
        }
    }

    #[test]
    fn trace_and_fragments_are_refused() {
        assert_eq!(
            refused(b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            501
        );
        assert_eq!(
            refused(b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            400
        );
    }

    /// The target after [`normalize_path`], as the request line carries it.
    fn normalized(raw: &str) -> (String, bool) {
        let mut buf = raw.as_bytes().to_vec();
        let mut scratch = HeadScratch::default();
        let mut head = parse_request(&buf, LIMITS, &mut scratch).unwrap().unwrap();
        let changed = normalize_path(&mut buf, &mut head);
        assert_eq!(changed, head.path_normalized);
        let mut line = Vec::new();
        write_request_line(&mut line, &buf, &head, None);
        (String::from_utf8(line).unwrap(), changed)
    }

    #[test]
    fn paths_are_normalized_for_routing_and_the_query_is_left_alone() {
        let req = |t: &str| format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
        for (target, want, changed) in [
            ("/plain/path?a=%61", "/plain/path?a=%61", false),
            ("/%61dmin/x", "/admin/x", true),
            ("/%7e%7Euser%2D%5f", "/~~user-_", true),
            ("//a///b/?q=//", "/a/b/?q=//", true),
            ("/a%2Fb%3F%20c", "/a%2Fb%3F%20c", false),
            ("/a%2Fb%41", "/a%2FbA", true),
            ("/pct?100%", "/pct?100%", false),
            ("/end%41?", "/endA?", true),
            ("http://h.example//x%79z?k", "/xyz?k", true),
        ] {
            assert_eq!(
                normalized(&req(target)),
                (format!("GET {want} HTTP/1.1\r\n"), changed),
                "{target}"
            );
        }
    }

    #[test]
    fn an_authority_has_one_spelling_no_empty_label_and_no_escape() {
        for good in [
            "a.example",
            "a.example.",
            "A.Example:80",
            "a_b.example:",
            "127.0.0.1:8080",
            "[::1]:443",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "a.example..",
            "a..example",
            ".a.example",
            ".",
            "..",
            "a%2eexample",
            ":80",
            "a.example.:x",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn a_path_is_read_as_backends_read_it_only_when_they_read_it_otherwise() {
        let mut out = Vec::new();
        for (target, want) in [
            ("/admin;x/secret", "/admin/secret"),
            ("/a;b;c/d;e?q=;x", "/a/d"),
            ("/;x/y", "/y"),
            ("/a/b;", "/a/b"),
            ("/admin%2Fsecret", "/admin/secret"),
            ("/admin%2f%2F/secret", "/admin/secret"),
            ("/admin%5Csecret", "/admin/secret"),
            ("/admin%5c", "/admin/"),
            ("/admin\\secret\\", "/admin/secret/"),
            ("/a;x%2Fb;y\\c", "/a/b/c"),
            ("/a%20b%2Fc?d%2Fe", "/a%20b/c"),
        ] {
            assert!(
                path_as_backends_read(target.as_bytes(), &mut out),
                "{target}"
            );
            assert_eq!(String::from_utf8_lossy(&out), want, "{target}");
        }
        for target in ["/plain?q=;", "/a%20b", "/a%2", "/x%25?q=%2F", "/%2"] {
            assert!(
                !path_as_backends_read(target.as_bytes(), &mut out),
                "{target}"
            );
        }
    }

    #[test]
    fn the_fields_the_proxy_replaces_are_found_in_every_spelling() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "expect",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-original-url",
            "x-rewrite-url",
        ] {
            let upper = name.to_ascii_uppercase();
            let underscored = name.replace('-', "_");
            for spelling in [name, upper.as_str(), underscored.as_str()] {
                assert!(
                    is_request_header_replaced(spelling.as_bytes()),
                    "{spelling}"
                );
            }
        }
        for name in [
            "t",
            "tee",
            "x-forwarded-fo",
            "x-original-uri",
            "host",
            "content-length",
        ] {
            assert!(!is_request_header_replaced(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn method_overrides_are_read_uppercased_in_every_spelling() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nx-http-method-override:  delete \r\n\
                     X_Method_Override: Put\r\nX-HTTP-Method: PATCH\r\nX-Other: GET\r\n\r\n";
        let mut seen = Vec::new();
        assert!(!any_method_override(head, |m| {
            seen.push(String::from_utf8_lossy(m).into_owned());
            false
        }));
        assert_eq!(seen, ["DELETE", "PUT", "PATCH"]);
        assert!(any_method_override(head, |m| m == b"PUT"));
        assert!(!any_method_override(
            b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
            |_| true
        ));
    }

    #[test]
    fn a_percent_that_begins_no_escape_in_the_path_is_refused() {
        let req = |t: &str| format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
        // `%%361` would normalize to `%61`, an escape the backend decodes.
        for target in [
            "/%%361dmin",
            "/bad%4",
            "/bad%zz",
            "/x%",
            "/a%4%61",
            "/%g0",
            "http://h/%",
            "/a%00b",
            "/a%00",
        ] {
            let mut scratch = HeadScratch::default();
            assert!(
                matches!(
                    parse_request(req(target).as_bytes(), LIMITS, &mut scratch),
                    Err(HeadError::Malformed(_))
                ),
                "{target}"
            );
        }
        for target in [
            "/a%2Fb%25?q=%",
            "/%41%7e",
            "/p?%%%",
            "/",
            "/a?q=%00",
            "/a%01",
        ] {
            let mut scratch = HeadScratch::default();
            assert!(
                parse_request(req(target).as_bytes(), LIMITS, &mut scratch)
                    .is_ok_and(|h| h.is_some()),
                "{target}"
            );
        }
    }

    #[test]
    fn only_an_options_requests_one_well_formed_max_forwards_is_taken() {
        let parse = |raw: &[u8]| {
            let mut scratch = HeadScratch::default();
            let head = parse_request(raw, LIMITS, &mut scratch).unwrap().unwrap();
            let kept = scratch.forward.iter().any(|r| {
                raw[r.clone()]
                    .windows(12)
                    .any(|w| w.eq_ignore_ascii_case(b"max-forwards"))
            });
            (head.max_forwards, kept)
        };
        assert_eq!(
            parse(b"OPTIONS / HTTP/1.1\r\nHost: x\r\nMax-Forwards: 3\r\n\r\n"),
            (Some(3), false)
        );
        assert_eq!(
            parse(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nmax-forwards: 0\r\n\r\n"),
            (Some(0), false)
        );
        assert_eq!(
            parse(b"OPTIONS / HTTP/1.1\r\nHost: x\r\nMax-Forwards: x\r\n\r\n"),
            (None, true)
        );
        assert_eq!(
            parse(b"OPTIONS / HTTP/1.1\r\nHost: x\r\nMax-Forwards: 1\r\nMax-Forwards: 2\r\n\r\n"),
            (None, true)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n"),
            (None, true)
        );
    }

    #[test]
    fn a_101_must_switch_to_the_protocol_asked_for() {
        let ok = |h: &[u8]| check_switching_head(h, b"websocket");
        ok(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        ok(b"HTTP/1.1 101 X\r\nupgrade: WebSocket/13\r\n\r\n").unwrap();
        for bad in [
            &b"HTTP/1.1 101 X\r\nUpgrade: h2c\r\n\r\n"[..],
            b"HTTP/1.1 101 X\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 X\r\nUpgrade: websocket, h2c\r\n\r\n",
            b"HTTP/1.1 101 X\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
            b"HTTP/1.1 101 X\r\nUpgrade: websocket\nX: y\r\n\r\n",
            b"HTTP/1.1 101 X\r\nUp grade: websocket\r\n\r\n",
        ] {
            ok(bad).unwrap_err();
        }
    }

    #[test]
    fn raw_non_ascii_bytes_in_the_target_are_refused() {
        assert_eq!(
            refused(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            400
        );
        assert_eq!(
            refused(b"GET /?q=\xff HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            400
        );
    }

    #[test]
    fn no_body_statuses_lose_their_framing_fields() {
        let raw = b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n";
        let mut scratch = HeadScratch::default();
        let head = parse_response(raw, LIMITS, false, &mut scratch)
            .unwrap()
            .unwrap();
        assert_eq!(head.body, ResponseBody::Empty);
        assert_eq!(scratch.framing, Some(FramingLine::Omitted));
        let kept: Vec<u8> = scratch
            .forward
            .iter()
            .flat_map(|r| raw[r.clone()].to_vec())
            .collect();
        assert_eq!(kept, b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n".to_vec());
        // 304 keeps it: it describes the representation.
        let raw = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n";
        parse_response(raw, LIMITS, false, &mut scratch)
            .unwrap()
            .unwrap();
        assert_eq!(scratch.framing, None);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// A request head mixing what smuggling corpora try: framing fields
        /// repeated, listed and in odd case, Connection naming anything,
        /// Host absent, repeated or replaced by an absolute-form target.
        fn hostile_head() -> impl Strategy<Value = Vec<u8>> {
            let method = prop::sample::select(vec!["GET", "POST", "PUT", "HEAD"]);
            let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
            let absolute = any::<bool>();
            let field = prop::sample::select(vec![
                "Content-Length: 5",
                "Content-Length: 5",
                "Content-Length: 5, 5",
                "Content-Length: 05",
                "Content-Length: 0",
                "Content-Length: 6",
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: Chunked",
                "Transfer-Encoding: identity, chunked",
                "Host: a.example",
                "Host: b.example:8080",
                "Connection: close",
                "Connection: keep-alive",
                "Connection: x-secret",
                "Connection: content-length",
                "Connection: Transfer-Encoding",
                "Connection: host",
                "Connection: te, upgrade",
                "Connection: x-forwarded-for",
                "Connection: forwarded",
                "Connection: keep-alive, x-other",
                "X-Secret: 1",
                "X-Other: 2",
                "Keep-Alive: timeout=5",
                "TE: trailers",
                "Upgrade: h2c",
                "X-Forwarded-For: 1.2.3.4",
                "Forwarded: for=1.2.3.4",
                "Expect: 100-continue",
            ]);
            let fields = prop::collection::vec(field, 0..8);
            (method, version, absolute, fields).prop_map(|(m, v, abs, fs)| {
                let target = if abs { "http://t.example/p" } else { "/p" };
                let mut head = format!("{m} {target} {v}\r\n");
                for f in fs {
                    head.push_str(f);
                    head.push_str("\r\n");
                }
                head.push_str("\r\n");
                head.into_bytes()
            })
        }

        /// What the proxy sends upstream for an accepted head (no route
        /// edits): the request line, the kept lines, then the patch.
        fn forwarded_upstream(
            raw: &[u8],
            head: &RequestHead,
            scratch: &mut HeadScratch,
        ) -> Vec<u8> {
            let mut out = Vec::new();
            if head.absolute_form {
                write_request_line(&mut out, raw, head, None);
                scratch.retain_lines(raw, false, |_| true);
            }
            for r in &scratch.forward {
                out.extend_from_slice(&raw[r.clone()]);
            }
            write_request_patch(
                &mut out,
                raw,
                scratch,
                &ForwardedClient::new("10.0.0.1".parse().unwrap()),
                "http",
            );
            out
        }

        fn field_lines(head: &[u8]) -> Vec<(String, String)> {
            let text = std::str::from_utf8(head).unwrap();
            text.split("\r\n")
                .skip(1)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_ascii_lowercase(), v.trim().to_string())
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// Issue 17's invariant: whatever the parser accepts goes
            /// upstream with exactly one framing, exactly one Host, and
            /// none of the fields its Connection named.
            #[test]
            fn forwarded_head_has_one_framing_one_host_and_nothing_connection_named(raw in hostile_head()) {
                let mut scratch = HeadScratch::default();
                let Ok(Some(head)) = parse_request(&raw, LIMITS, &mut scratch) else {
                    return Ok(());
                };
                let named: Vec<String> = field_lines(&raw)
                    .into_iter()
                    .filter(|(n, _)| n == "connection")
                    .flat_map(|(_, v)| v.split(',').map(|o| o.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                    .collect();
                let out = forwarded_upstream(&raw, &head, &mut scratch);
                let fields = field_lines(&out);
                let count = |name: &str| fields.iter().filter(|(n, _)| n == name).count();
                let lengths = count("content-length");
                let codings = count("transfer-encoding");
                match head.body {
                    RequestBody::Empty => prop_assert!(codings == 0 && lengths <= 1, "{}", String::from_utf8_lossy(&out)),
                    RequestBody::Length(n) => {
                        prop_assert_eq!((lengths, codings), (1, 0), "{}", String::from_utf8_lossy(&out));
                        let value = fields.iter().find(|(f, _)| f == "content-length").map(|(_, v)| v.clone());
                        prop_assert_eq!(value, Some(n.to_string()));
                    }
                    RequestBody::Chunked => {
                        prop_assert_eq!((lengths, codings), (0, 1), "{}", String::from_utf8_lossy(&out));
                        let value = fields.iter().find(|(f, _)| f == "transfer-encoding").map(|(_, v)| v.clone());
                        prop_assert_eq!(value.as_deref(), Some("chunked"));
                    }
                }
                let had_host = head.authority.is_some();
                prop_assert_eq!(count("host"), usize::from(had_host), "{}", String::from_utf8_lossy(&out));
                if head.absolute_form {
                    let host = fields.iter().find(|(f, _)| f == "host").map(|(_, v)| v.clone());
                    prop_assert_eq!(host.as_deref(), Some("t.example"));
                }
                const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "te", "upgrade", "close", "proxy-connection"];
                for name in &named {
                    if HOP_BY_HOP.contains(&name.as_str()) {
                        continue;
                    }
                    prop_assert_eq!(count(name), 0, "{} named in Connection went upstream: {}", name, String::from_utf8_lossy(&out));
                }
                // And the forwarded head reads the same way to us.
                let mut again = HeadScratch::default();
                let reparsed = parse_request(&out, LIMITS, &mut again);
                prop_assert!(matches!(&reparsed, Ok(Some(h)) if h.body == head.body), "{:?} for {}", reparsed, String::from_utf8_lossy(&out));
            }
        }

        /// A valid request head: method, path, Host, a few token headers,
        /// an optional Content-Length, then the blank line.
        fn valid_head() -> impl Strategy<Value = Vec<u8>> {
            let method = prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE"]);
            let path = "/[a-z0-9/._~-]{0,40}"
                .prop_filter("dot segments are refused", |p: &String| {
                    !has_dot_segment(p.as_bytes())
                });
            let header = ("x-[a-z]{1,12}", "[!-~]([ !-~]{0,30}[!-~])?");
            let headers = prop::collection::vec(header, 0..8);
            let length = prop::option::of(0u32..100_000);
            (method, path, headers, length).prop_map(|(m, p, hs, cl)| {
                let mut head = format!("{m} {p} HTTP/1.1\r\nHost: example.com\r\n");
                for (name, value) in hs {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                if let Some(n) = cl {
                    head.push_str(&format!("Content-Length: {n}\r\n"));
                }
                head.push_str("\r\n");
                head.into_bytes()
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
                let mut scratch = HeadScratch::default();
                let _ = parse_request(&bytes, LIMITS, &mut scratch);
                let _ = parse_response(&bytes, LIMITS, false, &mut scratch);
                let _ = parse_response(&bytes, LIMITS, true, &mut scratch);
            }

            #[test]
            fn every_prefix_of_a_valid_head_waits_for_more(head in valid_head()) {
                let full = req(&head).expect("valid").expect("complete");
                prop_assert_eq!(full.head_len, head.len());
                for cut in 0..head.len() {
                    let partial = req(&head[..cut]);
                    prop_assert!(
                        matches!(partial, Ok(None)),
                        "prefix of {} bytes gave {:?}", cut, partial
                    );
                }
            }

            #[test]
            fn a_bare_lf_or_nul_anywhere_in_the_head_is_refused(
                head in valid_head(),
                at in any::<prop::sample::Index>(),
                byte in prop::sample::select(vec![b'\n', b'\0']),
            ) {
                // Replace one byte of the head other than a line ending's.
                let positions: Vec<usize> = (0..head.len())
                    .filter(|&i| head[i] != b'\r' && head[i] != b'\n')
                    .collect();
                let i = positions[at.index(positions.len())];
                let mut bad = head.clone();
                bad[i] = byte;
                let res = req(&bad);
                prop_assert!(res.is_err(), "{:?} at {} accepted: {:?}", byte as char, i, res);
            }
        }
    }
}
