//! The error log: one line per event an operator should hear of (upstream
//! failures, 5xx the proxy answered and why, refusals, health transitions,
//! ejections, breaker changes, reloads, start and stop), each with the time,
//! the worker, the level and what happened:
//!
//! ```text
//! 2026-12-02T15:45:49.123Z error worker=0 proxy_5xx: status=502 reason="upstream connect failed" ...
//! ```
//!
//! Each worker has its own [`ErrorLog`] over a [`LogBuffer`] (the access
//! log's buffered, whole-line writes), flushed by the worker's ticker. A
//! level below the configured one costs one compare. Each [`Kind`] may write
//! `lines_per_second` lines a second per worker; past that an event costs a
//! compare and a counter, and when the second is over one line says how
//! many were suppressed, so a flood cannot fill a disk. Formatting writes
//! into the worker's buffer and allocates nothing once it has grown.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd as _;
use std::time::{SystemTime, UNIX_EPOCH};

use ringgate_config::{ErrorLog as ErrorLogConfig, LogLevel};

use ringgate_core::http::RequestHead;

use crate::log_buffer::{escape, LogBuffer, Stamp};

/// A worker writes its buffered lines at every tick, or sooner past this:
/// a few dozen lines, far more than one tick's worth unless in a flood.
const ERROR_LOG_FLUSH_BYTES: usize = 16 * 1024;

/// What an event is about: each kind is rate-limited on its own, so a flood
/// of one cannot hide the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A 5xx the proxy answered itself, with its cause.
    Proxy5xx,
    /// A try that failed and was retried on another backend or connection.
    AttemptFailed,
    /// The upstream failed after part of the response had gone out: the
    /// client connection is closed.
    ResponseCut,
    /// A 4xx the proxy answered itself (bad request, no route, rate limit).
    Refused,
    Health,
    Ejection,
    Breaker,
    Reload,
    /// Start, drain, stop, the I/O driver.
    Lifecycle,
    Accept,
    ConnectionLimit,
    Gossip,
    /// A backend sent bytes nobody asked for.
    Stray,
    /// Writing the access log failed.
    AccessLog,
    /// A TLS handshake that did not finish (info: it is the client's doing).
    TlsHandshake,
    /// An HTTP/2 connection closed for breaking a limit, or a protocol error.
    Http2,
    /// A connection refused for its PROXY protocol header, or for having none
    /// (info: it is the peer's doing).
    ProxyProtocol,
    /// Redis for fleet-scoped rate limits lost and found again.
    Fleet,
    /// A backend name's addresses changed, or its lookups failed or
    /// recovered.
    Dns,
}

impl Kind {
    const COUNT: usize = 19;

    pub fn name(self) -> &'static str {
        match self {
            Kind::Proxy5xx => "proxy_5xx",
            Kind::AttemptFailed => "attempt_failed",
            Kind::ResponseCut => "response_cut",
            Kind::Refused => "refused",
            Kind::Health => "health",
            Kind::Ejection => "ejection",
            Kind::Breaker => "breaker",
            Kind::Reload => "reload",
            Kind::Lifecycle => "lifecycle",
            Kind::Accept => "accept",
            Kind::ConnectionLimit => "connection_limit",
            Kind::Gossip => "gossip",
            Kind::Fleet => "fleet",
            Kind::Dns => "dns",
            Kind::Stray => "stray",
            Kind::AccessLog => "access_log",
            Kind::TlsHandshake => "tls_handshake",
            Kind::Http2 => "http2",
            Kind::ProxyProtocol => "proxy_protocol",
        }
    }

    const ALL: [Kind; Kind::COUNT] = [
        Kind::Proxy5xx,
        Kind::AttemptFailed,
        Kind::ResponseCut,
        Kind::Refused,
        Kind::Health,
        Kind::Ejection,
        Kind::Breaker,
        Kind::Reload,
        Kind::Lifecycle,
        Kind::Accept,
        Kind::ConnectionLimit,
        Kind::Gossip,
        Kind::Stray,
        Kind::AccessLog,
        Kind::TlsHandshake,
        Kind::Http2,
        Kind::ProxyProtocol,
        Kind::Fleet,
        Kind::Dns,
    ];
}

const _: () = {
    let mut i = 0;
    while i < Kind::COUNT {
        assert!(Kind::ALL[i] as usize == i);
        i += 1;
    }
};

/// One kind's lines in the current second.
struct Window {
    written: Cell<u32>,
    suppressed: Cell<u64>,
    /// The most severe level among the suppressed events.
    worst: Cell<LogLevel>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            written: Cell::new(0),
            suppressed: Cell::new(0),
            worst: Cell::new(LogLevel::Debug),
        }
    }
}

pub struct ErrorLog {
    out: LogBuffer,
    stamp: Stamp,
    level: LogLevel,
    /// `Err`: a thread that is not a worker (`main`, `admin`).
    worker: Result<usize, &'static str>,
    lines_per_second: u32,
    windows: [Window; Kind::COUNT],
    /// The wall-clock second the windows count.
    second: Cell<u64>,
    /// The main thread has no ticker: every line is written at once, and
    /// the window is rolled at each event.
    immediate: bool,
}

impl ErrorLog {
    /// Opens the log `config` names (for appending), or a duplicate of
    /// stderr.
    pub fn open(config: &ErrorLogConfig) -> io::Result<File> {
        match &config.path {
            None => io::stderr().as_fd().try_clone_to_owned().map(File::from),
            Some(path) => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("error_log.path {}: {e}", path.display()))
                }),
        }
    }

    /// A worker's log, flushed by its ticker ([`Self::tick`]).
    pub fn for_worker(target: File, config: &ErrorLogConfig, worker: usize) -> Self {
        ErrorLog::new(target, config, Ok(worker), false)
    }

    /// The main thread's log: every line is written at once.
    pub fn for_main(target: File, config: &ErrorLogConfig) -> Self {
        ErrorLog::for_thread(target, config, "main")
    }

    /// The log of a thread that is not a worker, named `thread` in its
    /// lines: every line is written at once.
    pub fn for_thread(target: File, config: &ErrorLogConfig, thread: &'static str) -> Self {
        ErrorLog::new(target, config, Err(thread), true)
    }

    fn new(
        target: File,
        config: &ErrorLogConfig,
        worker: Result<usize, &'static str>,
        immediate: bool,
    ) -> Self {
        ErrorLog {
            out: LogBuffer::new(target, ERROR_LOG_FLUSH_BYTES),
            stamp: Stamp::rfc3339(),
            level: config.level,
            worker,
            lines_per_second: config.lines_per_second,
            windows: Default::default(),
            second: Cell::new(unix_secs(SystemTime::now())),
            immediate,
        }
    }

    /// Where the lines go (for another thread's log on the same file).
    pub fn file(&self) -> &File {
        self.out.file()
    }

    /// Would an event at `level` be written (rate limit aside)? For callers
    /// that must do work to describe an event.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level <= self.level
    }

    /// Writes one line, `TIME LEVEL worker=N KIND: ` then what `message`
    /// appends, unless the level is filtered out or the kind is over its
    /// rate this second.
    pub fn event(&self, level: LogLevel, kind: Kind, message: impl FnOnce(&mut Vec<u8>)) {
        if level > self.level {
            return;
        }
        if self.immediate {
            self.roll(SystemTime::now());
        }
        let window = &self.windows[kind as usize];
        if window.written.get() >= self.lines_per_second {
            window.suppressed.set(window.suppressed.get() + 1);
            window.worst.set(window.worst.get().min(level));
            return;
        }
        window.written.set(window.written.get() + 1);
        let mut buf = self.out.line();
        self.head(&mut buf, level, kind);
        message(&mut buf);
        buf.push(b'\n');
        let failed = self.out.done(buf);
        self.after_write(failed);
    }

    /// The ticker's call, every `gossip_interval`: once a second is over,
    /// says how many lines of each kind it suppressed; then writes what is
    /// buffered.
    pub fn tick(&self) {
        self.roll(SystemTime::now());
        self.flush();
    }

    pub fn flush(&self) {
        if let Some(e) = self.out.flush() {
            report_own_failure(&e);
        }
    }

    fn after_write(&self, failed: Option<io::Error>) {
        if let Some(e) = failed {
            report_own_failure(&e);
        }
        if self.immediate {
            self.flush();
        }
    }

    fn head(&self, buf: &mut Vec<u8>, level: LogLevel, kind: Kind) {
        let now = SystemTime::now();
        self.stamp.write(buf, now);
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_millis());
        let _ = write!(buf, ".{millis:03}Z {} worker=", level.name());
        match self.worker {
            Ok(id) => {
                let _ = write!(buf, "{id}");
            }
            Err(thread) => buf.extend_from_slice(thread.as_bytes()),
        }
        buf.push(b' ');
        buf.extend_from_slice(kind.name().as_bytes());
        buf.extend_from_slice(b": ");
    }

    /// Starts a new second: the count of what the last one suppressed goes
    /// out first, at the most severe level suppressed.
    fn roll(&self, now: SystemTime) {
        let second = unix_secs(now);
        if self.second.replace(second) == second {
            return;
        }
        for kind in Kind::ALL {
            let window = &self.windows[kind as usize];
            window.written.set(0);
            let suppressed = window.suppressed.replace(0);
            if suppressed > 0 {
                let level = window.worst.replace(LogLevel::Debug);
                let mut buf = self.out.line();
                self.head(&mut buf, level, kind);
                let _ = writeln!(
                    buf,
                    "{suppressed} more {} line(s) suppressed (over lines_per_second = {})",
                    kind.name(),
                    self.lines_per_second
                );
                let failed = self.out.done(buf);
                self.after_write(failed);
            }
        }
    }
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Enough of a request-target to recognise it; a log line stays short.
const TARGET_LOGGED_BYTES: usize = 256;

/// ` request="GET /path"`: the method and (the start of) the target of a
/// parsed head in `src`, escaped.
pub fn write_request(b: &mut Vec<u8>, src: &[u8], head: &RequestHead) {
    b.extend_from_slice(b" request=\"");
    if let Some(method) = src.get(head.method.clone()) {
        escape(b, method);
        b.push(b' ');
    }
    if let Some(target) = src.get(head.target.clone()) {
        escape(b, &target[..target.len().min(TARGET_LOGGED_BYTES)]);
    }
    b.push(b'"');
}

/// The error log itself cannot be written: stderr is all that is left.
fn report_own_failure(e: &io::Error) {
    eprintln!("ringgate: error log write failed ({e}); dropping lines until it works again");
}

/// `ECONNREFUSED(111)`: the symbolic name of the errnos a connect or a
/// socket read or write can end with, without `strerror`'s allocation.
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ECONNRESET => "ECONNRESET",
            libc::ECONNABORTED => "ECONNABORTED",
            libc::EHOSTUNREACH => "EHOSTUNREACH",
            libc::ENETUNREACH => "ENETUNREACH",
            libc::ENETDOWN => "ENETDOWN",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
            libc::EADDRINUSE => "EADDRINUSE",
            libc::EMFILE => "EMFILE",
            libc::ENFILE => "ENFILE",
            libc::ENOBUFS => "ENOBUFS",
            libc::ENOMEM => "ENOMEM",
            libc::EPIPE => "EPIPE",
            libc::EACCES => "EACCES",
            libc::EPERM => "EPERM",
            libc::EINVAL => "EINVAL",
            libc::EAGAIN => "EAGAIN",
            libc::ECANCELED => "ECANCELED",
            _ => "errno",
        };
        write!(f, "{name}({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_at(
        name: &str,
        level: LogLevel,
        lines_per_second: u32,
    ) -> (ErrorLog, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("ringgate-elog-{}-{name}", std::process::id()));
        let config = ErrorLogConfig {
            path: Some(path.clone()),
            level,
            lines_per_second,
        };
        let target = ErrorLog::open(&config).unwrap();
        (ErrorLog::for_worker(target, &config, 3), path)
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_line_has_time_level_worker_kind_and_message() {
        let (log, path) = log_at("line", LogLevel::Info, 10);
        log.event(LogLevel::Error, Kind::Proxy5xx, |b| {
            b.extend_from_slice(b"status=502")
        });
        log.flush();
        let lines = lines(&path);
        assert_eq!(lines.len(), 1);
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert_eq!(rest, "error worker=3 proxy_5xx: status=502");
        // 2026-12-02T15:45:49.123Z
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn levels_below_the_configured_one_are_not_written() {
        let (log, path) = log_at("levels", LogLevel::Warn, 10);
        for level in [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ] {
            log.event(level, Kind::Health, |b| {
                b.extend_from_slice(level.name().as_bytes())
            });
        }
        log.flush();
        let lines = lines(&path);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].ends_with("warn worker=3 health: warn"),
            "{lines:?}"
        );
        assert!(
            lines[1].ends_with("error worker=3 health: error"),
            "{lines:?}"
        );
        assert!(!log.enabled(LogLevel::Info) && log.enabled(LogLevel::Error));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_flood_of_one_kind_is_cut_and_counted_without_silencing_the_others() {
        let (log, path) = log_at("flood", LogLevel::Info, 3);
        let mut formatted = 0;
        for _ in 0..50 {
            log.event(LogLevel::Error, Kind::Proxy5xx, |b| {
                formatted += 1;
                b.extend_from_slice(b"flood")
            });
        }
        log.event(LogLevel::Warn, Kind::Health, |b| {
            b.extend_from_slice(b"other")
        });
        assert_eq!(formatted, 3, "a suppressed line is never formatted");
        // The next second: the count comes out, at the level suppressed.
        log.second.set(log.second.get() - 1);
        log.tick();
        let lines = lines(&path);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert_eq!(lines.iter().filter(|l| l.ends_with("flood")).count(), 3);
        assert!(lines[3].ends_with("health: other"), "{lines:#?}");
        assert!(
            lines[4].ends_with(
                "error worker=3 proxy_5xx: 47 more proxy_5xx line(s) suppressed (over lines_per_second = 3)"
            ),
            "{lines:#?}"
        );
        // A new second writes again.
        log.event(LogLevel::Error, Kind::Proxy5xx, |b| {
            b.extend_from_slice(b"again")
        });
        log.flush();
        assert!(super::tests::lines(&path)[5].ends_with("again"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn errnos_are_named() {
        assert_eq!(
            Errno(libc::ECONNREFUSED).to_string(),
            format!("ECONNREFUSED({})", libc::ECONNREFUSED)
        );
        assert_eq!(Errno(4095).to_string(), "errno(4095)");
    }
}
