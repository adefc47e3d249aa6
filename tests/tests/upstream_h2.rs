//! HTTP/2 to backends (`[[upstreams]] protocol = "h2"`): requests and bodies
//! from HTTP/1.1 and HTTP/2 clients cross to an HTTP/2 backend on one
//! multiplexed connection, trailers come back, a connection that idles out
//! is replaced, health checks speak HTTP/2, and gRPC (a real `grpcio`
//! server and client) works end to end: unary, server streaming, client
//! streaming, and an error status carried in trailers.
//!
//! The HTTP/2 backend of the first tests is a second ringgate with a
//! prior-knowledge listener in front of an HTTP/1.1 test backend.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringgate_tests::proxy::{
    body_before_status, curl_status, free_port, metrics, run_with_timeout, sample, status_line,
    CommandOutput,
};
use ringgate_tests::{eventually, Backend, Behaviour, Proxy, ProxyConfig};

/// An HTTP/2-only hop: a ringgate whose listener takes HTTP/2 with prior
/// knowledge, in front of `backend`, with `/metrics` on `admin`.
fn h2_hop(backend: &Backend, admin: u16) -> Proxy {
    let toml = ProxyConfig::new(backend.addr())
        .listener_extra("http2", "true")
        .to_toml()
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    Proxy::start(&toml)
}

/// A proxy whose upstream speaks HTTP/2 to `to`.
fn via_h2(to: SocketAddr) -> ProxyConfig {
    ProxyConfig::new(to)
        .upstream_extra("protocol", "\"h2\"")
        .listener_extra("http2", "true")
}

fn hop_addr(hop: &Proxy) -> SocketAddr {
    format!("127.0.0.1:{}", hop.port).parse().unwrap()
}

#[test]
fn requests_and_bodies_cross_an_http2_upstream_on_one_connection() {
    let backend = Backend::start("echo", Behaviour::Echo);
    let admin = free_port();
    let hop = h2_hop(&backend, admin);
    let proxy = via_h2(hop_addr(&hop)).start();
    let url = format!("http://127.0.0.1:{}/echo", proxy.port);

    // Sequential HTTP/1.1 requests, with bodies framed both ways.
    for i in 0..10 {
        let body = format!("body number {i}");
        let out = curl_status(&["--http1.1", "--data-binary", &body, &url]);
        assert_eq!(status_line(&out), "200 1.1", "{}", out.stderr);
        assert_eq!(body_before_status(&out), body);
    }
    let big = ringgate_tests::proxy::write_temp("ringgate-h2up-body", "bin", &vec![b'z'; 3 << 20]);
    let big = format!("@{}", big.display());
    let out = curl_status(&[
        "--http1.1",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        &big,
        &url,
    ]);
    assert_eq!(status_line(&out), "200 1.1", "{}", out.stderr);
    assert_eq!(body_before_status(&out).len(), 3 << 20);
    assert!(body_before_status(&out).bytes().all(|b| b == b'z'));
    let out = curl_status(&["--http1.1", "--data-binary", &big, &url]);
    assert_eq!(body_before_status(&out).len(), 3 << 20, "{}", out.stderr);
    // HTTP/2 clients too, many streams at once.
    let out = run_with_timeout(
        Command::new("h2load").args(["-n", "400", "-c", "4", "-m", "20", &url]),
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("400 succeeded, 0 failed"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // HEAD has no body, whatever the backend's length says.
    let out = curl_status(&["--http1.1", "-I", &url]);
    assert!(out.stdout.starts_with("HTTP/1.1 200"), "{}", out.stdout);

    // The backend hop saw every request over one HTTP/2 connection.
    http2_connections_become(admin, 1);
    assert!(backend.records().len() >= 413);
}

#[test]
fn a_connection_that_idles_out_is_replaced() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let admin = free_port();
    let hop = h2_hop(&backend, admin);
    let proxy = via_h2(hop_addr(&hop)).timeouts("idle = \"300ms\"").start();
    let url = format!("http://127.0.0.1:{}/a", proxy.port);
    let out = curl_status(&[&url]);
    assert_eq!(status_line(&out), "200 1.1", "{}", out.stderr);
    std::thread::sleep(Duration::from_millis(900));
    let out = curl_status(&[&url]);
    assert_eq!(status_line(&out), "200 1.1", "{}", out.stderr);
    assert!(body_before_status(&out).starts_with(&backend.ok_body("/a")));
    http2_connections_become(admin, 2);
}

/// The hop's count of HTTP/2 connections reaches `n` (its `/metrics` is a
/// snapshot a tick old) and stays there.
fn http2_connections_become(admin: u16, n: u64) {
    let series = "ringgate_http2_connections_total";
    eventually(Duration::from_secs(3), || {
        let seen = sample(&metrics(admin), series);
        (seen == n)
            .then_some(())
            .ok_or(format!("{seen} connections"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sample(&metrics(admin), series), n);
}

/// A `grpcio` echo server, killed on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let port = free_port();
        let mut child = Command::new(python())
            .args([script(), "serve".into(), port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with grpcio (Debian python3-grpcio)");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the gRPC server did not start");
        GrpcServer {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's interpreter, where `python3-grpcio` installs.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn script() -> String {
    format!("{}/grpc/echo.py", env!("CARGO_MANIFEST_DIR"))
}

fn grpc_calls(port: u16) -> String {
    let out = run_with_timeout(
        Command::new(python()).args([script(), "call".into(), format!("127.0.0.1:{port}")]),
        Duration::from_secs(60),
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    out.stdout
}

#[test]
fn grpc_unary_and_streaming_calls_keep_their_trailers() {
    let server = GrpcServer::start();
    // Health checks speak HTTP/2 too: an HTTP/1.1 probe of this server
    // fails, and the calls below would find no healthy backend.
    let proxy = via_h2(server.addr)
        .upstream_extra(
            "health_check",
            "{ path = \"/\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 1 }",
        )
        .start();
    std::thread::sleep(Duration::from_millis(400));
    let out = grpc_calls(proxy.port);
    for expected in [
        "\"unary_ok\": true",
        "\"unary_trailer\": \"unary\"",
        "\"stream_count\": 200",
        "\"stream_ok\": true",
        "\"stream_trailer\": \"stream\"",
        "\"fail_code\": \"NOT_FOUND\"",
        "\"fail_details\": \"no such thing: widget\"",
        "\"upload\": \"500000\"",
    ] {
        assert!(out.contains(expected), "{expected} missing from {out}");
    }
}

#[test]
fn grpc_status_reaches_an_http11_client_as_chunked_trailers() {
    let server = GrpcServer::start();
    let proxy = via_h2(server.addr).start();
    // A gRPC message: uncompressed flag, 4-byte length, payload.
    let mut message = vec![0u8, 0, 0, 0, 5];
    message.extend_from_slice(b"hello");
    let body = ringgate_tests::proxy::write_temp("ringgate-grpc-msg", "bin", &message);
    let out = eventually(Duration::from_secs(5), || {
        let out = curl_status(&[
            "--http1.1",
            "--raw",
            "-i",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("http://127.0.0.1:{}/ringgate.test.Echo/Unary", proxy.port),
        ]);
        if out.stdout.contains("grpc-status: 0") {
            Ok(out)
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    })
    .unwrap();
    let text = &out.stdout;
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("x-echo-trailer: unary"), "{text}");
    // The trailers follow the last chunk.
    let last_chunk = text.find("\r\n0\r\n").expect("a last chunk");
    assert!(text[last_chunk..].contains("grpc-status: 0"), "{text}");
}

#[test]
fn a_backend_stream_limit_spreads_streams_over_more_connections() {
    let backend = Backend::start("slow", Behaviour::Stall(Duration::from_millis(300)));
    let admin = free_port();
    let toml = ProxyConfig::new(backend.addr())
        .listener_extra("http2", "true")
        .http2("max_concurrent_streams", "2")
        .to_toml()
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let hop = Proxy::start(&toml);
    let proxy = via_h2(hop_addr(&hop)).start();
    let url = format!("http://127.0.0.1:{}/slow", proxy.port);
    // Eight requests at once on one client connection; the backend takes
    // two streams per connection.
    let out = run_with_timeout(
        Command::new("h2load").args(["-n", "8", "-c", "1", "-m", "8", &url]),
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("8 succeeded, 0 failed"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let series = "ringgate_http2_connections_total";
    let opened = eventually(Duration::from_secs(3), || {
        let n = sample(&metrics(admin), series);
        (n >= 4).then_some(n).ok_or(format!("{n} connections"))
    })
    .unwrap();
    assert!(opened <= 5, "{opened} connections for 8 streams of 2 each");
}

#[test]
fn a_backend_that_vanishes_mid_response_is_a_502_and_is_reconnected() {
    let backend = Backend::start("slow", Behaviour::Stall(Duration::from_millis(800)));
    let admin = free_port();
    let hop = h2_hop(&backend, admin);
    let hop_port = hop.port;
    let proxy = via_h2(hop_addr(&hop)).start();
    let url = format!("http://127.0.0.1:{}/slow", proxy.port);
    let waiting = std::thread::spawn(move || curl_status(&[&url]));
    std::thread::sleep(Duration::from_millis(300));
    drop(hop);
    let out = waiting.join().unwrap();
    assert_eq!(status_line(&out), "502 1.1", "{}{}", out.stdout, out.stderr);
    // The same address comes back: the next request opens a new connection.
    let mut config = ProxyConfig::new(backend.addr()).listener_extra("http2", "true");
    config.port = hop_port;
    let _hop = Proxy::start(&config.to_toml());
    let url = format!("http://127.0.0.1:{}/again", proxy.port);
    let out = curl_status(&[&url]);
    assert_eq!(status_line(&out), "200 1.1", "{}{}", out.stdout, out.stderr);
}

#[test]
fn a_backend_that_does_not_answer_in_time_is_a_504() {
    let backend = Backend::start("slow", Behaviour::Stall(Duration::from_secs(3)));
    let admin = free_port();
    let hop = h2_hop(&backend, admin);
    let proxy = via_h2(hop_addr(&hop))
        .timeouts("response = \"300ms\"")
        .start();
    let started = std::time::Instant::now();
    let out = curl_status(&[&format!("http://127.0.0.1:{}/slow", proxy.port)]);
    assert_eq!(status_line(&out), "504 1.1", "{}{}", out.stdout, out.stderr);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The stream was reset, the connection serves on.
    let out = curl_status(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/slow", proxy.port),
    ]);
    assert_eq!(status_line(&out), "504 2", "{}{}", out.stdout, out.stderr);
    http2_connections_become(admin, 1);
}

#[test]
fn a_backend_that_does_not_speak_http2_is_a_502_before_any_request_is_sent() {
    let backend = Backend::start("h1", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .upstream_extra("protocol", "\"h2\"")
        .start();
    let started = std::time::Instant::now();
    let out = curl_status(&[
        "--data-binary",
        "not twice",
        &format!("http://127.0.0.1:{}/post", proxy.port),
    ]);
    assert_eq!(status_line(&out), "502 1.1", "{}{}", out.stdout, out.stderr);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        backend.targets().iter().all(|t| t != "/post"),
        "{:?}",
        backend.targets()
    );
}

/// What a [`ScriptedH2`] backend does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Answer {
    /// `200` with body `ok`, once the request has ended.
    Ok,
    /// RST_STREAM REFUSED_STREAM: not processed (RFC 9113 §8.7).
    Refuse,
    /// GOAWAY naming the stream before this one as the last processed
    /// (this one was not), then the connection closes.
    GoAwayBefore,
    /// GOAWAY naming this stream as processed, then the connection closes
    /// without an answer: the backend may have acted on it.
    GoAwayAfter,
}

/// A raw HTTP/2 backend (prior knowledge) that answers each request as
/// `script(connection, request on it)` says, both counted from 0, and
/// records every request stream it saw as `(connection, stream id)`.
struct ScriptedH2 {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(usize, u32)>>>,
}

impl ScriptedH2 {
    fn start(script: fn(usize, usize) -> H2Answer) -> ScriptedH2 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (conn_no, stream) in listener.incoming().enumerate() {
                let Ok(mut s) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut preface = [0u8; 24];
                    if s.read_exact(&mut preface).is_err() {
                        return;
                    }
                    let _ = s.write_all(&h2_frame(4, 0, 0, &[]));
                    let mut requests = 0;
                    let mut header = [0u8; 9];
                    let mut pending = Vec::new();
                    while s.read_exact(&mut header).is_ok() {
                        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        let (kind, flags) = (header[3], header[4]);
                        let id = u32::from_be_bytes(header[5..9].try_into().unwrap()) & !(1 << 31);
                        let mut payload = vec![0u8; len as usize];
                        if s.read_exact(&mut payload).is_err() {
                            return;
                        }
                        let ended = flags & 0x1 != 0;
                        let out = match kind {
                            4 if flags & 0x1 == 0 => h2_frame(4, 1, 0, &[]),
                            1 => {
                                log.lock().unwrap().push((conn_no, id));
                                let answer = script(conn_no, requests);
                                requests += 1;
                                match answer {
                                    H2Answer::Ok if ended => ok_answer(id),
                                    H2Answer::Ok => {
                                        pending.push(id);
                                        continue;
                                    }
                                    H2Answer::Refuse => h2_frame(3, 0, id, &7u32.to_be_bytes()),
                                    H2Answer::GoAwayBefore | H2Answer::GoAwayAfter => {
                                        let last = if answer == H2Answer::GoAwayAfter {
                                            id
                                        } else {
                                            id.saturating_sub(2)
                                        };
                                        let mut body = last.to_be_bytes().to_vec();
                                        body.extend_from_slice(&0u32.to_be_bytes());
                                        let _ = s.write_all(&h2_frame(7, 0, 0, &body));
                                        std::thread::sleep(Duration::from_millis(100));
                                        return;
                                    }
                                }
                            }
                            0 if ended && pending.contains(&id) => {
                                pending.retain(|&p| p != id);
                                ok_answer(id)
                            }
                            _ => continue,
                        };
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedH2 { addr, seen }
    }

    fn seen(&self) -> Vec<(usize, u32)> {
        self.seen.lock().unwrap().clone()
    }
}

/// One frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS `:status: 200` (HPACK static index 8) and DATA `ok`, ending
/// stream `id`.
fn ok_answer(id: u32) -> Vec<u8> {
    let mut out = h2_frame(1, 0x4, id, &[0x88]);
    out.extend_from_slice(&h2_frame(0, 0x1, id, b"ok"));
    out
}

/// RFC 9113 §8.7: a stream a GOAWAY leaves out was not processed, so even a
/// POST goes again, on a new connection (a backend shutting down
/// gracefully, as at every deploy, loses no request). A stream the GOAWAY
/// counts as processed is never sent twice.
#[test]
fn a_post_a_goaway_left_unprocessed_is_sent_again_on_a_new_connection() {
    // Connection 0: the first request is answered, the second is left out
    // by a GOAWAY. Connection 1 answers.
    let (backend, out) = a_post_after_a_get(|conn, req| match (conn, req) {
        (0, 1) => H2Answer::GoAwayBefore,
        _ => H2Answer::Ok,
    });
    assert_eq!(status_line(&out), "200 1.1", "{}{}", out.stdout, out.stderr);
    assert_eq!(body_before_status(&out), "ok");
    assert_eq!(backend.seen(), [(0, 1), (0, 3), (1, 1)]);

    // The same, but the GOAWAY says the POST's stream was processed.
    let (backend, out) = a_post_after_a_get(|conn, req| match (conn, req) {
        (0, 1) => H2Answer::GoAwayAfter,
        _ => H2Answer::Ok,
    });
    assert_eq!(status_line(&out), "502 1.1", "{}{}", out.stdout, out.stderr);
    assert_eq!(backend.seen(), [(0, 1), (0, 3)], "the POST went twice");
}

/// Through a proxy to a [`ScriptedH2`] backend playing `script`: a GET
/// (answered), then a POST on the same upstream connection; the backend
/// and what the POST's client got.
fn a_post_after_a_get(script: fn(usize, usize) -> H2Answer) -> (ScriptedH2, CommandOutput) {
    let backend = ScriptedH2::start(script);
    let proxy = ProxyConfig::new(backend.addr)
        .upstream_extra("protocol", "\"h2\"")
        .start();
    let url = format!("http://127.0.0.1:{}/p", proxy.port);
    let out = curl_status(&[&url]);
    assert_eq!(status_line(&out), "200 1.1", "{}{}", out.stdout, out.stderr);
    let out = curl_status(&["--data-binary", "once", &url]);
    (backend, out)
}

/// RST_STREAM REFUSED_STREAM says the same of one stream: with retries on
/// connect failures (the backend did nothing), a refused POST goes to the
/// next backend; any other reset of a POST is never replayed.
#[test]
fn a_post_refused_unprocessed_goes_to_another_backend() {
    let refusing = ScriptedH2::start(|_, _| H2Answer::Refuse);
    let answering = ScriptedH2::start(|_, _| H2Answer::Ok);
    let proxy = ProxyConfig::with_backends(&[refusing.addr, answering.addr])
        .upstream_extra("protocol", "\"h2\"")
        .upstream_extra("retries", "{ attempts = 1, on = [\"connect_failure\"] }")
        .start();
    let url = format!("http://127.0.0.1:{}/p", proxy.port);
    for _ in 0..4 {
        let out = curl_status(&["--data-binary", "once", &url]);
        assert_eq!(status_line(&out), "200 1.1", "{}{}", out.stdout, out.stderr);
        assert_eq!(body_before_status(&out), "ok");
    }
    assert_eq!(answering.seen().len(), 4);
    assert!(
        !refusing.seen().is_empty(),
        "round robin tried the refusing backend"
    );
}
