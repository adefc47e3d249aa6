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
