//! A hostile HTTP/2 client at the frame level, over cleartext prior
//! knowledge: it writes whatever frames a test builds (including the floods
//! no real client library would send) and reads frame headers back. Header
//! blocks are HPACK literals without Huffman coding, enough to make any
//! request; responses are recognised by frame type, not decoded.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// `SETTINGS_INITIAL_WINDOW_SIZE`.
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// GOAWAY / RST_STREAM error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's or RST_STREAM's error code.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, value) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A literal field without indexing, new name (RFC 7541 §6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    hpack_string(out, name.as_bytes());
    hpack_string(out, value);
}

/// A literal field with incremental indexing, new name (§6.2.1): it enters
/// the dynamic table at index 62.
pub fn literal_indexed(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x40);
    hpack_string(out, name.as_bytes());
    hpack_string(out, value);
}

/// A request's header block: pseudo-fields, then `extra`.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", method.as_bytes());
    literal(&mut b, ":scheme", b"http");
    literal(&mut b, ":authority", b"h2.test");
    literal(&mut b, ":path", path.as_bytes());
    for (n, v) in extra {
        literal(&mut b, n, v.as_bytes());
    }
    b
}

/// One client connection: the preface and an empty SETTINGS are sent on
/// connect.
pub struct H2Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl H2Client {
    pub fn connect(port: u16) -> H2Client {
        H2Client::connect_with(port, &[])
    }

    pub fn connect_with(port: u16, settings_pairs: &[(u16, u32)]) -> H2Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        stream.set_nodelay(true).ok();
        let mut c = H2Client {
            stream,
            buf: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(settings_pairs));
        c.send(&hello).expect("send the preface");
        c
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame, `Ok(None)` at end of stream; fails after `within`.
    pub fn read_frame(&mut self, within: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + within;
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Ok(Some(f));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads frames until the connection ends, answering PINGs as a client
    /// does (a graceful GOAWAY waits for one); returns the last GOAWAY
    /// error code seen, if any. Fails if it is still open after
    /// `within`.
    pub fn until_closed(&mut self, within: Duration) -> Result<Option<u32>, String> {
        let deadline = Instant::now() + within;
        let mut goaway = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(None) => return Ok(goaway),
                Ok(Some(f)) if f.kind == GOAWAY => goaway = f.error_code(),
                Ok(Some(f)) if f.kind == PING && f.flags & ACK == 0 => {
                    let _ = self.send(&frame(PING, ACK, 0, &f.payload));
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    return Err(format!(
                        "connection still open after {within:?} ({e}); GOAWAY {goaway:?}"
                    ))
                }
            }
        }
    }

    /// Reads until a frame of `kind` on `stream` arrives.
    pub fn until_frame(
        &mut self,
        kind: u8,
        stream: u32,
        within: Duration,
    ) -> Result<Frame, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(Some(f)) if f.kind == kind && f.stream == stream => return Ok(f),
                Ok(Some(f)) if f.kind == GOAWAY => {
                    return Err(format!(
                        "GOAWAY {:?} before frame type {kind}",
                        f.error_code()
                    ))
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(format!(
                        "closed before frame type {kind} on stream {stream}"
                    ))
                }
                Err(e) => return Err(format!("no frame type {kind} on stream {stream}: {e}")),
            }
        }
    }
}
