//! How the proxy closes a client connection it answered before reading the
//! whole request (RFC 9112 §9.6): it half-closes, then reads and discards
//! what the client still sends, up to `limits.lingering_time`, so that a
//! client busy sending a body it was refused still gets its response
//! instead of a reset. A closing time bounds the discarding.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ringgate_tests::pki::TestCa;
use ringgate_tests::proxy::run_with_timeout;
use ringgate_tests::{Backend, Behaviour, Client, ProxyConfig};

const BODY: usize = 8 << 20;

/// Writes `head` then `BODY` bytes, as a client that sends its whole
/// request before it reads (Python's urllib, curl without Expect), then
/// reads everything until the proxy closes. Returns how many body bytes
/// went out, the write error if one cut the upload, and what was read.
fn send_all_then_read(port: u16, head: &[u8]) -> (usize, Option<std::io::Error>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    let mut failed = None;
    while sent < BODY {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got) {
        failed.get_or_insert(e);
    }
    (sent, failed, got)
}

/// [`send_all_then_read`], then: the whole body went out and the answer
/// read was `status`.
fn assert_answered_whole_upload(port: u16, head: &str, status: u16) {
    let (sent, failed, got) = send_all_then_read(port, head.as_bytes());
    let line = status_line(&got);
    assert!(
        failed.is_none(),
        "the upload was cut after {sent} bytes: {failed:?}; read {line:?}"
    );
    assert!(line.starts_with(&format!("HTTP/1.1 {status}")), "{line}");
}

fn status_line(got: &[u8]) -> String {
    String::from_utf8_lossy(got)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn a_client_that_sends_its_whole_refused_body_before_reading_gets_the_413() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .start();
    let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n");
    assert_answered_whole_upload(proxy.port, &head, 413);
    assert!(backend.records().is_empty(), "nothing goes upstream");
}

#[test]
fn a_client_whose_head_is_refused_while_its_body_follows_gets_the_400() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    // A space before the colon: refused by the parser (RFC 9112 §5.1).
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nX-Bad : 1\r\nContent-Length: {BODY}\r\n\r\n");
    assert_answered_whole_upload(proxy.port, &head, 400);
}

#[test]
fn a_client_still_sending_when_the_backend_answers_early_gets_that_answer() {
    let backend = Backend::start(
        "b",
        Behaviour::AnswerBeforeBody(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n".to_vec(),
        ),
    );
    let proxy = ProxyConfig::new(backend.addr()).start();
    let head = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n");
    assert_answered_whole_upload(proxy.port, &head, 413);
}

#[test]
fn a_streamed_chunked_body_cut_at_max_body_still_gets_its_413() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "\"2MiB\"")
        .start();
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sent = 0;
    let mut write = |bytes: &[u8]| -> std::io::Result<()> {
        s.write_all(bytes)?;
        sent += bytes.len();
        Ok(())
    };
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    // 8 MiB in 64 KiB chunks, the 33rd crossing max_body, then the end.
    let upload = write(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .and_then(|()| (0..128).try_for_each(|_| write(chunk.as_bytes())))
        .and_then(|()| write(b"0\r\n\r\n"));
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got);
    assert!(
        upload.is_ok() && read.is_ok(),
        "upload {upload:?} after {sent} bytes, read {read:?}"
    );
    assert!(
        status_line(&got).starts_with("HTTP/1.1 413"),
        "{}",
        status_line(&got)
    );
}

#[test]
fn a_client_that_never_stops_sending_is_closed_after_the_lingering_time() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .limit("lingering_time", "\"1s\"")
        .start();
    let mut c = Client::connect(proxy.port);
    c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n");
    let mut w = c.writer();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 16 * 1024];
        // Far past the lingering time, if nothing stops it.
        while started.elapsed() < Duration::from_secs(20) {
            if w.write_all(&chunk).is_err() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    });
    let r = c.read_final().expect("the 413 while the body still comes");
    assert_eq!(r.status, 413);
    let cut = writer.join().unwrap().expect("the proxy never closed");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(5),
        "closed after {cut:?}, lingering_time is 1s"
    );
}

#[test]
fn a_client_that_goes_quiet_after_its_refusal_is_closed_after_the_lingering_timeout() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .limit("lingering_timeout", "\"300ms\"")
        .start();
    let mut c = Client::connect(proxy.port);
    c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    c.send(&[b'x'; 1000]);
    let r = c.read_final().expect("the 413");
    assert_eq!(r.status, 413);
    // The client neither sends more nor closes: the proxy stops waiting.
    let started = Instant::now();
    c.wait_closed(Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}, lingering_timeout is 300ms",
        started.elapsed()
    );
}

#[test]
fn a_connection_closed_after_a_request_read_whole_does_not_linger() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let pid = proxy.pid();
    // Warm the upstream pool, so that only client sockets change below.
    let mut warm = Client::connect(proxy.port);
    assert_eq!(warm.get("/").status, 200);
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let before = ringgate_tests::procfs::socket_fds(pid);
    // Clients that read their answers and keep their ends open: one
    // proxied request, one answered by the proxy.
    let mut kept = Vec::new();
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"GET /x HTTP/1.0\r\nHost: t\r\n\r\n",
    ] {
        let mut c = Client::connect(proxy.port);
        c.send(raw);
        let r = c.read_final().unwrap();
        assert_eq!(r.status, 200);
        c.wait_closed(Duration::from_secs(5)).unwrap();
        kept.push(c);
    }
    // The proxy let go of each socket at once rather than lingering on it.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ringgate_tests::procfs::socket_fds(pid), before);
    drop(kept);
}

/// Python's `http.client` (under urllib and requests) sends the whole
/// body before it reads: a reset while it sends loses the response.
const PYTHON_UPLOAD: &str = r#"
import http.client, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
if ca:
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection("site.test", port, context=ctx, timeout=10)
    c.sock = ctx.wrap_socket(__import__("socket").create_connection(("127.0.0.1", port)), server_hostname="site.test")
else:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
c.request("POST", "/upload", body=b"x" * (8 << 20))
r = c.getresponse()
print(r.status)
"#;

#[test]
fn pythons_http_client_gets_the_413_for_a_refused_upload_over_plain_and_tls() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("b", Behaviour::Ok);
    let plain = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .start();
    let tls = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .listener_extra("tls", &format!("{{ certificates = [{}] }}", cert.toml()))
        .start();
    let ca_path = ca.cert.to_string_lossy().into_owned();
    for (port, ca) in [(plain.port, ""), (tls.port, ca_path.as_str())] {
        let out = run_with_timeout(
            std::process::Command::new("python3").args([
                "-c",
                PYTHON_UPLOAD,
                &port.to_string(),
                ca,
            ]),
            Duration::from_secs(30),
        );
        assert_eq!(
            out.stdout.trim(),
            "413",
            "{} listener: {}",
            if ca.is_empty() { "plain" } else { "TLS" },
            out.stderr
        );
    }
}

#[test]
fn a_drain_does_not_wait_for_a_lingering_connection() {
    let backend = Backend::start("b", Behaviour::Ok);
    let mut proxy = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .start();
    let mut c = Client::connect(proxy.port);
    c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n");
    let r = c.read_final().expect("the 413");
    assert_eq!(r.status, 413);
    // The client keeps sending its body: the connection lingers.
    let mut w = c.writer();
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if w.write_all(&[b'x'; 1024]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    proxy.signal("-TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits");
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the drain waited {:?} for a lingering connection",
        asked.elapsed()
    );
    writer.join().unwrap();
}

#[test]
fn a_lingering_connection_holds_no_exchange_buffers() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let pid = proxy.pid();
    // Warm the worker's pools, so what grows below is per connection.
    for _ in 0..20 {
        assert_eq!(Client::connect(proxy.port).get("/").status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = ringgate_tests::procfs::vm_rss_kib(pid);
    // One at a time, clients whose heads are refused and who then neither
    // send nor close: each connection lingers for lingering_timeout (5 s).
    const CLIENTS: u64 = 300;
    let mut lingering = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = Client::connect(proxy.port);
        c.send(b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n");
        assert_eq!(c.read_final().expect("the 400").status, 400);
        lingering.push(c);
    }
    let per_connection =
        (ringgate_tests::procfs::vm_rss_kib(pid).saturating_sub(before)) * 1024 / CLIENTS;
    // Holding its exchange buffers, a connection that read only a head kept
    // that 16 KiB head buffer (15.1 KB each, measured); its socket and
    // task are about 3 KB.
    assert!(
        per_connection < 8 * 1024,
        "{per_connection} bytes of RSS per lingering connection"
    );
    drop(lingering);
}
