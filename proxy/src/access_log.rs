//! The access log. Each worker formats its lines into its own buffer (no
//! allocation once the buffer and the per-connection scratch have grown)
//! and appends whole lines to the shared file with one `write(2)` at a time
//! on an `O_APPEND` descriptor, so workers share nothing but the file and
//! their lines never interleave.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringgate_core::http::{header_value, ForwardedClient, RequestHead};

/// What went back to the client for one request, filled in along the way
/// by whichever path answered it.
#[derive(Default)]
pub struct Sent {
    /// Status of the final response head sent (0: none was).
    pub status: Cell<u16>,
    /// Body bytes sent after that head, as framed.
    pub body_bytes: Cell<u64>,
    /// The backend of the last attempt, if one was made.
    pub upstream: Cell<Option<SocketAddr>>,
}

impl Sent {
    pub fn reset(&self) {
        self.status.set(0);
        self.body_bytes.set(0);
        self.upstream.set(None);
    }

    /// A response the proxy wrote itself: `status` with a body of `body_len`.
    pub fn local(&self, status: u16, body_len: usize) {
        self.status.set(status);
        self.body_bytes.set(body_len as u64);
    }

    pub fn add_body(&self, n: usize) {
        self.body_bytes.set(self.body_bytes.get() + n as u64);
    }
}

/// The parts of a line taken from the request head before it is consumed:
/// `"request line" ` and `"referer" "user-agent"`, escaped. Per connection.
#[derive(Default)]
pub struct Captured {
    request: Vec<u8>,
    agents: Vec<u8>,
}

pub struct AccessLog {
    file: File,
    buf: RefCell<Vec<u8>>,
    flush_at: usize,
    /// `[dd/Mon/yyyy:hh:mm:ss +0000]` of `clock_second`.
    clock_text: RefCell<Vec<u8>>,
    clock_second: Cell<u64>,
    /// Write failures not reported yet, so a full disk is said once per
    /// episode, not per line.
    failing: Cell<bool>,
}

impl AccessLog {
    /// `file` must be open for appending.
    pub fn new(file: File, flush_at: usize) -> Self {
        AccessLog {
            file,
            buf: RefCell::new(Vec::with_capacity(flush_at + 4096)),
            flush_at,
            clock_text: RefCell::new(Vec::with_capacity(32)),
            clock_second: Cell::new(u64::MAX),
            failing: Cell::new(false),
        }
    }

    /// Copies what the line needs from `src` (the buffer `head` was parsed
    /// from) before the request is forwarded and its bytes dropped.
    pub fn capture(into: &mut Captured, src: &[u8], head: &RequestHead) {
        let head_bytes = &src[..head.head_len];
        let line_end = memchr::memchr(b'\r', head_bytes).unwrap_or(head_bytes.len());
        into.request.clear();
        into.request.push(b'"');
        escape(&mut into.request, &head_bytes[..line_end]);
        into.request.push(b'"');
        into.agents.clear();
        for (i, name) in [&b"referer"[..], b"user-agent"].into_iter().enumerate() {
            if i > 0 {
                into.agents.push(b' ');
            }
            into.agents.push(b'"');
            match header_value(head_bytes, name) {
                Some(v) => escape(&mut into.agents, v),
                None => into.agents.push(b'-'),
            }
            into.agents.push(b'"');
        }
    }

    /// Appends one line; `captured` is `None` for a request whose head
    /// could not be parsed (written as `"-"`).
    pub fn write(
        &self,
        client: &ForwardedClient,
        captured: Option<&Captured>,
        sent: &Sent,
        took: Duration,
        tls_version: &str,
    ) {
        let mut buf = self.buf.borrow_mut();
        buf.extend_from_slice(client.ip_bytes());
        buf.extend_from_slice(b" - - ");
        self.stamp(&mut buf);
        buf.push(b' ');
        match captured {
            Some(c) => buf.extend_from_slice(&c.request),
            None => buf.extend_from_slice(b"\"-\""),
        }
        let ms = took.as_millis();
        let _ = write!(buf, " {} {} ", sent.status.get(), sent.body_bytes.get());
        match captured {
            Some(c) => buf.extend_from_slice(&c.agents),
            None => buf.extend_from_slice(b"\"-\" \"-\""),
        }
        let _ = write!(buf, " {}.{:03} ", ms / 1000, ms % 1000);
        match sent.upstream.get() {
            Some(addr) => {
                let _ = write!(buf, "{addr}");
            }
            None => buf.push(b'-'),
        }
        buf.push(b' ');
        buf.extend_from_slice(tls_version.as_bytes());
        buf.push(b'\n');
        if buf.len() >= self.flush_at {
            drop(buf);
            self.flush();
        }
    }

    /// Writes the buffered lines. A failed write drops them (the log must
    /// never stall or grow without bound) and is reported once.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        match (&self.file).write_all(&buf) {
            Ok(()) => self.failing.set(false),
            Err(e) => {
                if !self.failing.replace(true) {
                    eprintln!("ringgate: access log write failed ({e}); dropping lines until it works again");
                }
            }
        }
        buf.clear();
    }

    /// `[dd/Mon/yyyy:hh:mm:ss +0000]`, reformatted once per second.
    fn stamp(&self, out: &mut Vec<u8>) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut text = self.clock_text.borrow_mut();
        if self.clock_second.replace(secs) != secs {
            text.clear();
            write_clf_time(&mut text, secs);
        }
        out.extend_from_slice(&text);
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Common Log Format time in UTC: `[26/Nov/2026:14:40:00 +0000]`.
fn write_clf_time(out: &mut Vec<u8>, unix_secs: u64) {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "[{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000]",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// nginx's log escaping: `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clf(secs: u64) -> String {
        let mut out = Vec::new();
        write_clf_time(&mut out, secs);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn clf_time_matches_known_dates() {
        assert_eq!(clf(0), "[01/Jan/1970:00:00:00 +0000]");
        assert_eq!(clf(951_782_400), "[29/Feb/2000:00:00:00 +0000]");
        assert_eq!(clf(1_764_115_200), "[26/Nov/2025:00:00:00 +0000]");
        assert_eq!(clf(4_107_542_399), "[28/Feb/2100:23:59:59 +0000]");
    }

    #[test]
    fn escape_follows_nginx() {
        let mut out = Vec::new();
        escape(&mut out, b"a\"b\\c\x01\xffd e");
        assert_eq!(out, b"a\\x22b\\x5Cc\\x01\\xFFd e");
    }
}
