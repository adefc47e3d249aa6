//! WebSocket through a route with `upgrade = ["websocket"]`: a real
//! server and client (Debian's python3-websockets) exchange 10 000
//! messages of mixed sizes, text and binary, through the proxy; pings keep
//! a tunnel past `timeouts.tunnel_idle` and silence ends it; the server's
//! close reaches the client; a route without `upgrade` drops the header, so
//! the handshake fails instead of being forwarded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringgate_tests::proxy::{free_port, run_with_timeout};
use ringgate_tests::{Proxy, ProxyConfig};

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn script() -> String {
    format!("{}/websocket/ws.py", env!("CARGO_MANIFEST_DIR"))
}

/// The echo server, killed on drop.
struct Server(Child, u16);

impl Server {
    fn start() -> Server {
        let port = free_port();
        let mut child = Command::new(python())
            .args([script(), "serve".into(), port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with websockets (Debian python3-websockets)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Server(child, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(args: &[&str]) -> String {
    let out = run_with_timeout(
        Command::new(python()).arg(script()).args(args),
        Duration::from_secs(120),
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    out.stdout
}

fn proxy_to(server: &Server, upgrade: bool, idle: &str) -> Proxy {
    let mut config = ProxyConfig::new(format!("127.0.0.1:{}", server.1).parse().unwrap())
        .timeouts(&format!("tunnel_idle = \"{idle}\""));
    if upgrade {
        config = config.route_extra("upgrade", "[\"websocket\"]");
    }
    config.start()
}

#[test]
fn ten_thousand_messages_cross_both_ways() {
    let server = Server::start();
    let proxy = proxy_to(&server, true, "10s");
    let url = format!("ws://127.0.0.1:{}/chat", proxy.port);
    let out = client(&["echo", &url, "10000"]);
    assert!(
        out.contains("\"sent\": 10000, \"echoed\": 10000") && out.contains("\"close_code\": 1000"),
        "{out}"
    );
}

#[test]
fn pings_keep_a_tunnel_past_its_idle_timeout_and_silence_ends_it() {
    let server = Server::start();
    let proxy = proxy_to(&server, true, "1s");
    let url = format!("ws://127.0.0.1:{}/", proxy.port);
    // 2.5 s of pings every 0.2 s across a 1 s idle timeout, then 3 s quiet.
    let out = client(&["idle", &url, "2.5", "3"]);
    assert!(out.contains("\"alive_after_pings\": true"), "{out}");
    assert!(out.contains("\"closed_when_quiet\": true"), "{out}");
}

#[test]
fn the_servers_close_reaches_the_client() {
    let server = Server::start();
    let proxy = proxy_to(&server, true, "10s");
    let out = client(&["server-close", &format!("ws://127.0.0.1:{}/", proxy.port)]);
    assert!(
        out.contains("\"close_code\": 4001") && out.contains("asked"),
        "{out}"
    );
}

#[test]
fn a_route_without_upgrade_does_not_forward_it() {
    let server = Server::start();
    let proxy = proxy_to(&server, false, "10s");
    let out = run_with_timeout(
        Command::new(python()).args([
            script(),
            "echo".into(),
            format!("ws://127.0.0.1:{}/", proxy.port),
            "1".into(),
        ]),
        Duration::from_secs(30),
    );
    assert!(!out.success, "the handshake went through: {}", out.stdout);
}

#[test]
fn an_upgrade_the_backend_declines_is_an_ordinary_exchange() {
    let backend = ringgate_tests::Backend::start("b", ringgate_tests::Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("upgrade", "[\"websocket\"]")
        .start();
    let mut c = ringgate_tests::Client::connect(proxy.port);
    c.try_send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let r = c.read_final().unwrap();
    assert_eq!(r.status, 200);
    let seen = backend.records().pop().unwrap();
    assert_eq!(seen.header("upgrade").as_deref(), Some("websocket"));
    assert!(seen
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    // Still HTTP on the same connection.
    c.try_send(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_final().unwrap().status, 200);
    // h2c is never forwarded, whatever the route allows.
    c.try_send(b"GET /h2c HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_final().unwrap().status, 200);
    assert!(!backend.records().pop().unwrap().has_header("upgrade"));
}
