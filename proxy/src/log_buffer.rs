//! What the access log and the error log share: a per-worker buffer of
//! whole lines written to a file opened with `O_APPEND` (or a duplicate of
//! stderr: no lock is taken, unlike `std::io::stderr`) by one `write(2)` at
//! a time, so workers share nothing but the file and their
//! lines never interleave; and the wall-clock stamps both put on a line,
//! reformatted once per second. No allocation once the buffer has grown.

use std::cell::{Cell, RefCell, RefMut};
use std::fs::File;
use std::io::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// One worker's buffered lines for one log.
pub struct LogBuffer {
    /// Opened for appending, or stderr.
    file: File,
    buf: RefCell<Vec<u8>>,
    flush_at: usize,
    /// Write failures not reported yet, so a full disk is said once per
    /// episode, not per line.
    failing: Cell<bool>,
}

impl LogBuffer {
    pub fn new(file: File, flush_at: usize) -> Self {
        LogBuffer {
            file,
            buf: RefCell::new(Vec::with_capacity(flush_at + 4096)),
            flush_at,
            failing: Cell::new(false),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The buffer to append one whole line to; hand it back to [`Self::done`].
    pub fn line(&self) -> RefMut<'_, Vec<u8>> {
        self.buf.borrow_mut()
    }

    /// A line was appended: writes the buffer once it is over `flush_at`.
    /// `Some` when a write failure begins (see [`Self::flush`]).
    pub fn done(&self, buf: RefMut<'_, Vec<u8>>) -> Option<io::Error> {
        let full = buf.len() >= self.flush_at;
        drop(buf);
        if full {
            self.flush()
        } else {
            None
        }
    }

    /// Writes the buffered lines. A failed write drops them (a log must
    /// never stall or grow without bound); the error is returned when a
    /// failure episode begins, `None` while it lasts or when all is well.
    pub fn flush(&self) -> Option<io::Error> {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return None;
        }
        let res = (&self.file).write_all(&buf);
        buf.clear();
        match res {
            Ok(()) => {
                self.failing.set(false);
                None
            }
            Err(e) => (!self.failing.replace(true)).then_some(e),
        }
    }
}

/// A wall-clock stamp, reformatted only when the second changes.
pub struct Stamp {
    second: Cell<u64>,
    text: RefCell<Vec<u8>>,
    format: fn(&mut Vec<u8>, u64),
}

impl Stamp {
    /// Common Log Format: `[26/Nov/2026:14:40:00 +0000]`.
    pub fn clf() -> Self {
        Stamp::with(write_clf_time)
    }

    /// RFC 3339 in UTC to the second: `2026-11-26T14:40:00` (the caller adds
    /// the fraction and the `Z`).
    pub fn rfc3339() -> Self {
        Stamp::with(write_rfc3339_seconds)
    }

    /// An HTTP date (RFC 9110 §5.6.7 IMF-fixdate): `Sun, 06 Nov 1994
    /// 08:49:37 GMT`.
    pub fn http_date() -> Self {
        Stamp::with(write_http_date)
    }

    fn with(format: fn(&mut Vec<u8>, u64)) -> Self {
        Stamp {
            second: Cell::new(u64::MAX),
            text: RefCell::new(Vec::with_capacity(32)),
            format,
        }
    }

    /// Appends the stamp for `now`.
    pub fn write(&self, out: &mut Vec<u8>, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut text = self.text.borrow_mut();
        if self.second.replace(secs) != secs {
            text.clear();
            (self.format)(&mut text, secs);
        }
        out.extend_from_slice(&text);
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Common Log Format time in UTC: `[26/Nov/2026:14:40:00 +0000]`.
pub fn write_clf_time(out: &mut Vec<u8>, unix_secs: u64) {
    let t = Utc::of(unix_secs);
    let month = MONTHS[(t.month - 1) as usize];
    let _ = write!(
        out,
        "[{:02}/{month}/{}:{:02}:{:02}:{:02} +0000]",
        t.day, t.year, t.hour, t.minute, t.second
    );
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn write_http_date(out: &mut Vec<u8>, unix_secs: u64) {
    let t = Utc::of(unix_secs);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(unix_secs / 86_400 % 7) as usize];
    let month = MONTHS[(t.month - 1) as usize];
    let _ = write!(
        out,
        "{weekday}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
        t.day, t.year, t.hour, t.minute, t.second
    );
}

/// `2026-11-26T14:40:00`, UTC.
pub fn write_rfc3339_seconds(out: &mut Vec<u8>, unix_secs: u64) {
    let t = Utc::of(unix_secs);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
}

/// A Unix time as UTC calendar fields.
struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Utc {
    fn of(unix_secs: u64) -> Utc {
        let (year, month, day) = civil_from_days((unix_secs / 86_400) as i64);
        let rem = unix_secs % 86_400;
        Utc {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
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
pub fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
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
    fn rfc3339_time_matches_known_dates() {
        let text = |secs| {
            let mut out = Vec::new();
            write_rfc3339_seconds(&mut out, secs);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(0), "1970-01-01T00:00:00");
        assert_eq!(text(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(text(4_107_542_399), "2100-02-28T23:59:59");
    }

    #[test]
    fn http_date_matches_known_dates() {
        let text = |secs| {
            let mut out = Vec::new();
            write_http_date(&mut out, secs);
            String::from_utf8(out).unwrap()
        };
        // RFC 9110 §5.6.7's own example.
        assert_eq!(text(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(text(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(text(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(text(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
    }

    #[test]
    fn escape_follows_nginx() {
        let mut out = Vec::new();
        escape(&mut out, b"a\"b\\c\x01\xffd e");
        assert_eq!(out, b"a\\x22b\\x5Cc\\x01\\xFFd e");
    }

    #[test]
    fn lines_are_written_whole_when_the_buffer_fills_and_on_flush() {
        let path = std::env::temp_dir().join(format!("ringgate-logbuf-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let log = LogBuffer::new(file, 16);
        let mut buf = log.line();
        buf.extend_from_slice(b"short\n");
        assert!(log.done(buf).is_none());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let mut buf = log.line();
        buf.extend_from_slice(b"a longer line\n");
        assert!(log.done(buf).is_none());
        assert_eq!(std::fs::read(&path).unwrap(), b"short\na longer line\n");
        let mut buf = log.line();
        buf.extend_from_slice(b"last\n");
        drop(buf);
        assert!(log.flush().is_none());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"short\na longer line\nlast\n"
        );
        let _ = std::fs::remove_file(&path);
    }
}
