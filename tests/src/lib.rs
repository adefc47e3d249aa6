//! ringgate-tests: the harness for the integration tests in `tests/`.
//!
//! It owns the pieces every test needs to drive the real `ringgate` binary
//! over loopback: starting the process from a config ([`proxy`]), recording
//! backends ([`backend`]), a raw-socket client ([`client`]), a small strict
//! HTTP/1.1 reader of its own ([`wire`]), /proc inspection ([`procfs`]) and
//! the certificates of the TLS tests ([`pki`]), the keys and tokens of the
//! authentication tests ([`jws`]), and raw-TCP backends for the `tcp`
//! listener tests ([`tcp_backend`]).
//! It must not depend on the proxy's crates: a bug shared between the code
//! under test and its tests would hide itself.
//!
//! Run: `cargo build -p ringgate -p ringgate-loadgen && cargo test -p
//! ringgate-tests`. The binary is `$RINGGATE_BIN` if set, else `ringgate` in
//! the same target directory as the test binaries (`ringload` likewise,
//! `$RINGLOAD_BIN`); `RINGGATE_STREAM_MIB` sets the size of
//! the streaming test's body (default 1024). The curl tests need `curl` on
//! PATH, the open-file limit tests `prlimit` (util-linux).
#![forbid(unsafe_code)]

pub mod backend;
pub mod client;
pub mod dns;
pub mod h2wire;
pub mod jws;
pub mod pki;
pub mod procfs;
pub mod proxy;
pub mod refusal;
pub mod tcp_backend;
pub mod wire;

pub use backend::{Backend, Behaviour, ConnFault, Recorded};
pub use client::{exchange, show, Client, Exchange, Response, IO_TIMEOUT};
pub use proxy::{free_port, ringgate_bin, ringload_bin, Proxy, ProxyConfig};
pub use refusal::assert_refused;

use std::time::Duration;

/// Repeats `check` until it returns `Ok` or `within` passes; returns the last
/// error. For state that settles shortly after an event (thread names,
/// records written after a response was sent).
pub fn eventually<T>(
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A deterministic pseudo-random byte pattern whose length is prime, so that
/// read and chunk boundaries never line up with its period. Byte `i` of a
/// generated stream is `PATTERN[i % len]`.
pub struct Pattern {
    bytes: Vec<u8>,
}

/// Length of [`Pattern`]: a prime just under 64 KiB.
pub const PATTERN_LEN: usize = 65_521;

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed | 1;
        let bytes = (0..PATTERN_LEN)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Pattern { bytes }
    }

    /// The first `len` bytes of the stream as one Vec.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(PATTERN_LEN);
            out.extend_from_slice(&self.bytes[..n]);
        }
        out
    }

    /// The slice of the stream starting at `offset`, at most up to the end of
    /// one period.
    pub fn at(&self, offset: u64) -> &[u8] {
        &self.bytes[(offset % PATTERN_LEN as u64) as usize..]
    }

    /// Does `piece` equal the stream at `offset`? (memcmp-speed, for GiBs.)
    pub fn matches(&self, mut offset: u64, mut piece: &[u8]) -> bool {
        while !piece.is_empty() {
            let want = self.at(offset);
            let n = want.len().min(piece.len());
            if piece[..n] != want[..n] {
                return false;
            }
            piece = &piece[n..];
            offset += n as u64;
        }
        true
    }
}

/// The harness against itself: the client talking straight to a backend,
/// so a failing integration test points at the proxy, not at the harness.
#[cfg(test)]
mod harness_tests {
    use super::*;
    use std::io::Write;

    fn direct(b: &Backend) -> Client {
        Client::connect(b.addr().port())
    }

    #[test]
    fn ok_keepalive_and_pipelining() {
        let b = Backend::start("b", Behaviour::Ok);
        let mut c = direct(&b);
        c.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(c.read_final().unwrap().body_str(), b.ok_body("/1"));
        assert_eq!(c.read_final().unwrap().body_str(), b.ok_body("/2"));
        assert_eq!(c.get("/3").header("x-backend").as_deref(), Some("b"));
        assert_eq!(b.connections(), 1);
        assert_eq!(b.targets(), ["/1", "/2", "/3"]);
    }

    #[test]
    fn echo_streams_cl_and_chunked() {
        let b = Backend::start("e", Behaviour::Echo);
        let data = Pattern::new(9).take(3 << 20);
        let mut c = direct(&b);
        let mut w = c.writer();
        let d = data.clone();
        let t = std::thread::spawn(move || {
            w.write_all(
                format!(
                    "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                    d.len()
                )
                .as_bytes(),
            )
            .unwrap();
            w.write_all(&d).unwrap();
            w.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            w.write_all(&wire::chunked_body(&d, 10_007)).unwrap();
        });
        let r = c.read_final().unwrap();
        assert!(r.body == data);
        let r = c.read_final().unwrap();
        assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
        assert!(r.body == data);
        t.join().unwrap();
        let recs = b.records();
        assert_eq!(recs[1].body_len, data.len() as u64);
        assert!(recs[1].body_complete);
    }

    #[test]
    fn expect_continue_chunked_and_close_delimited() {
        let b = Backend::builder("m")
            .route("/echo", Behaviour::Echo)
            .route("/chunked", Behaviour::Chunked)
            .route("/close", Behaviour::CloseDelimited)
            .start();
        let mut c = direct(&b);
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        );
        assert_eq!(c.read_response().unwrap().status, 100);
        c.send(b"hi");
        assert_eq!(c.read_final().unwrap().body_str(), "hi");
        assert_eq!(c.get("/chunked").body_str(), b.ok_body("/chunked"));
        assert_eq!(c.get("/close").body_str(), b.ok_body("/close"));
        c.wait_closed(IO_TIMEOUT).unwrap();
    }

    #[test]
    fn unparseable_bytes_are_recorded() {
        let b = Backend::start("b", Behaviour::Ok);
        let mut c = direct(&b);
        c.send(b"GARBAGE\r\n\r\n");
        c.wait_closed(IO_TIMEOUT).unwrap();
        eventually(std::time::Duration::from_secs(1), || {
            (b.records().len() == 1)
                .then_some(())
                .ok_or("no record".to_string())
        })
        .unwrap();
        let smuggle = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut c = direct(&b);
        c.send(smuggle);
        c.read_final().unwrap();
        c.read_final().unwrap();
        assert!(
            b.targets().contains(&"/other".to_string()),
            "a lenient backend sees the smuggled request"
        );
    }

    #[test]
    fn stopped_backend_refuses_and_restarts_on_the_same_port() {
        let mut b = Backend::start("b", Behaviour::Ok);
        let addr = b.addr();
        let mut c = direct(&b);
        assert_eq!(c.get("/1").status, 200);
        b.stop();
        let stopped = std::time::Instant::now();
        assert!(
            c.try_send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").is_err() || c.read_final().is_err()
        );
        assert!(
            Client::try_connect(addr).is_err(),
            "a stopped backend accepts"
        );
        b.restart();
        assert_eq!(b.addr(), addr);
        assert_eq!(direct(&b).get("/3").status, 200);
        assert_eq!(b.targets(), ["/1", "/3"]);
        assert!(b.records()[1].at > stopped);
    }

    #[test]
    fn fault_plan_fails_3_of_10_connections_in_a_fixed_pattern() {
        for fault in [ConnFault::CloseAfterAccept, ConnFault::ResetOnData] {
            let b = Backend::builder("f").fail_connections(3, 10, fault).start();
            let failed: Vec<usize> = (0..20)
                .filter(|_| {
                    let mut c = direct(&b);
                    let _ = c.try_send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
                    c.read_final().is_err()
                })
                .collect();
            assert_eq!(failed, [0, 4, 7, 10, 14, 17], "{fault:?}");
            assert_eq!(b.faulted(), 6);
            assert_eq!(b.connections(), 20);
        }
    }

    #[test]
    fn pattern_matches_itself() {
        let p = Pattern::new(5);
        let v = p.take(200_000);
        assert!(p.matches(0, &v));
        assert!(p.matches(70_000, &v[70_000..]));
        assert!(!p.matches(1, &v[..10]));
    }

    #[test]
    fn listener_port_is_found() {
        let cfg = ProxyConfig::new(([127, 0, 0, 1], 1).into());
        assert!(cfg.to_toml().contains(&format!("127.0.0.1:{}", cfg.port)));
    }
}
