//! Byte-level HTTP/1.1 reading shared by the test backends and the test
//! client: a buffered reader over a socket, a head splitter, and a strict
//! chunked decoder. Deliberately independent of `ringgate-core` so that the
//! tests never share a bug with the code under test.

use std::io::{self, Read};

/// Largest head the test backends and clients accept. Far above any limit the
/// proxy is configured with in these tests, so a head the proxy forwards is
/// always seen (and recorded) by a backend.
pub const HEAD_SIZE_MAX: usize = 1024 * 1024;

/// Longest chunk-size line (size + extensions + CRLF) the strict decoder
/// accepts.
pub const CHUNK_LINE_SIZE_MAX: usize = 4096;

/// Read unit for streaming bodies.
pub const READ_SIZE: usize = 64 * 1024;

/// A buffered reader that hands out borrowed slices of its own buffer, so
/// that bodies can be streamed without being held whole.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {what}"),
    )
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: vec![0; 2 * READ_SIZE],
            start: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes read from the socket but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a head: everything up to and including the empty line that ends
    /// it. Accepts CRLF and bare-LF line ends (the callers decide whether a
    /// bare LF is acceptable). `Ok(None)` on a clean EOF before any byte.
    pub fn read_head(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(len) = find_head_end(avail, scanned) {
                let head = avail[..len].to_vec();
                self.start += len;
                return Ok(Some(head));
            }
            scanned = avail.len().saturating_sub(2);
            if avail.len() > max {
                return Err(invalid(format!("head larger than {max} bytes")));
            }
            if self.fill()? == 0 {
                if self.start == self.end {
                    return Ok(None);
                }
                return Err(eof("in the middle of a head"));
            }
        }
    }

    /// Reads one line including its `\n`, at most `max` bytes.
    pub fn read_line(&mut self, max: usize) -> io::Result<Vec<u8>> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                let line = avail[..=i].to_vec();
                self.start += i + 1;
                return Ok(line);
            }
            if avail.len() > max {
                return Err(invalid(format!("line longer than {max} bytes")));
            }
            if self.fill()? == 0 {
                return Err(eof("in the middle of a line"));
            }
        }
    }

    /// Returns between 1 and `max` bytes; EOF is an error.
    pub fn read_some(&mut self, max: usize) -> io::Result<&[u8]> {
        if self.start == self.end && self.fill()? == 0 {
            return Err(eof("in the middle of a body"));
        }
        let n = (self.end - self.start).min(max);
        let s = self.start;
        self.start += n;
        Ok(&self.buf[s..s + n])
    }

    /// Like `read_some`, but `Ok(None)` on EOF.
    pub fn read_some_or_eof(&mut self, max: usize) -> io::Result<Option<&[u8]>> {
        if self.start == self.end && self.fill()? == 0 {
            return Ok(None);
        }
        let n = (self.end - self.start).min(max);
        let s = self.start;
        self.start += n;
        Ok(Some(&self.buf[s..s + n]))
    }

    pub fn read_exact_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let piece = self.read_some(n - out.len())?;
            out.extend_from_slice(piece);
        }
        Ok(out)
    }

    /// Expects exactly `\r\n` next.
    pub fn expect_crlf(&mut self) -> io::Result<()> {
        let got = self.read_exact_vec(2)?;
        if got != b"\r\n" {
            return Err(invalid(format!("expected CRLF, got {:?}", got)));
        }
        Ok(())
    }
}

/// Index just past the empty line ending a head, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // An empty line is "\n" or "\r\n" right after the previous "\n".
            if i + 1 < buf.len() && buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if i + 2 < buf.len() && buf[i + 1] == b'\r' && buf[i + 2] == b'\n' {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// A parsed head (request or response): the start line split in three and
/// the header fields in order.
#[derive(Clone, Debug)]
pub struct Head {
    /// Request: method / target / version. Response: version / status / reason.
    pub start: [String; 3],
    pub headers: Vec<(String, String)>,
}

/// Splits a head into start line and header fields. Tolerant on purpose
/// (bare LF, odd whitespace): a backend must record whatever a proxy lets
/// through, not refuse it.
pub fn parse_head(raw: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().ok_or_else(|| invalid("empty head"))?;
    let mut parts = start_line.splitn(3, ' ');
    let a = parts.next().unwrap_or("").to_string();
    let b = parts.next().unwrap_or("").to_string();
    let c = parts.next().unwrap_or("").to_string();
    if a.is_empty() || b.is_empty() {
        return Err(invalid(format!("bad start line {start_line:?}")));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line without colon {line:?}")))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Head {
        start: [a, b, c],
        headers,
    })
}

impl Head {
    /// All values of a header (case-insensitive name), each field's value as sent.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The comma-joined value of every field with this name, `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let v = self.values(name);
        if v.is_empty() {
            None
        } else {
            Some(v.join(", "))
        }
    }

    /// Body framing the way a lenient recipient would see it: chunked when
    /// the last transfer coding is chunked, else Content-Length, else none.
    pub fn framing(&self) -> Framing {
        if let Some(te) = self.header("transfer-encoding") {
            let last = te
                .rsplit(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if last == "chunked" {
                return Framing::Chunked;
            }
            return Framing::UntilClose;
        }
        if let Some(cl) = self.values("content-length").first() {
            if let Ok(n) = cl.trim().parse::<u64>() {
                return Framing::Length(n);
            }
        }
        Framing::None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Strict chunk-size line parsing (RFC 9112 §7.1): 1..=16 hex digits, an
/// optional extension free of control characters, CRLF.
pub fn read_chunk_size<R: Read>(r: &mut Reader<R>) -> io::Result<u64> {
    let line = r.read_line(CHUNK_LINE_SIZE_MAX)?;
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or_else(|| invalid(format!("chunk line without CRLF: {:?}", line)))?;
    let (size, ext) = match line.iter().position(|&b| b == b';') {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, &line[line.len()..]),
    };
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid(format!("bad chunk size {:?}", size)));
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(invalid("control character in chunk extension"));
    }
    let s = std::str::from_utf8(size).map_err(|_| invalid("chunk size not ascii"))?;
    u64::from_str_radix(s, 16).map_err(|_| invalid("chunk size overflow"))
}

/// Streams a chunked body, handing each piece of data to `sink`. Consumes
/// the trailer section. Returns the decoded length.
pub fn read_chunked<R: Read>(
    r: &mut Reader<R>,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let size = read_chunk_size(r)?;
        if size == 0 {
            // Trailer section: field lines until an empty line.
            loop {
                let line = r.read_line(HEAD_SIZE_MAX)?;
                if line == b"\r\n" {
                    return Ok(total);
                }
                if !line.ends_with(b"\r\n") {
                    return Err(invalid("trailer line without CRLF"));
                }
            }
        }
        let mut left = size;
        while left > 0 {
            let piece = r.read_some(left.min(READ_SIZE as u64) as usize)?;
            left -= piece.len() as u64;
            total += piece.len() as u64;
            sink(piece)?;
        }
        r.expect_crlf()?;
    }
}

/// Streams a Content-Length body to `sink`.
pub fn read_length<R: Read>(
    r: &mut Reader<R>,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let piece = r.read_some(left.min(READ_SIZE as u64) as usize)?;
        left -= piece.len() as u64;
        sink(piece)?;
    }
    Ok(())
}

/// Encodes one chunk (size line, data, CRLF).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Encodes a whole body as chunks of at most `size` bytes plus the last chunk.
pub fn chunked_body(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / size.max(1) * 12 + 8);
    for c in data.chunks(size.max(1)) {
        out.extend_from_slice(&chunk(c));
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(b: &[u8]) -> Reader<&[u8]> {
        Reader::new(b)
    }

    #[test]
    fn chunked_round_trip() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let enc = chunked_body(&data, 777);
        let mut r = reader(&enc);
        let mut out = Vec::new();
        let n = read_chunked(&mut r, |p| {
            out.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(out, data);
    }

    #[test]
    fn bad_chunk_lines_are_errors() {
        for bad in [
            &b"\r\n"[..],
            b"zz\r\n",
            b"ffffffffffffffffff\r\n",
            b"5;\nhello\r\n",
            b"5;a\x00b\r\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
        ] {
            let mut r = reader(bad);
            assert!(read_chunked(&mut r, |_| Ok(())).is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn head_end_accepts_crlf_and_lf() {
        let mut r = reader(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest");
        assert_eq!(r.read_head(1000).unwrap().unwrap().len(), 27);
        assert_eq!(r.buffered(), b"rest");
        let mut r = reader(b"GET / HTTP/1.1\nHost: x\n\nrest");
        assert_eq!(r.read_head(1000).unwrap().unwrap().len(), 24);
    }
}
