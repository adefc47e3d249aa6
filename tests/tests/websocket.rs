//! WebSocket through a route with `upgrade = ["websocket"]`: a real
//! server and client (Debian's python3-websockets) exchange 10 000
//! messages of mixed sizes, text and binary, through the proxy; pings keep
//! a tunnel past `timeouts.tunnel_idle` and silence ends it; the server's
//! close reaches the client; a route without `upgrade` drops the header, so
//! the handshake fails instead of being forwarded. A tunnel opened by hand
//! over a raw socket shows its counts in `/metrics` and its access-log
//! line, and outlives a graceful stop until `drain_timeout`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringgate_tests::eventually;
use ringgate_tests::proxy::{free_port, metrics, run_with_timeout, sample, temp_path};
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

/// A WebSocket opened by hand on a raw socket through the proxy: the
/// handshake's 101, then one short masked text frame at a time, which the
/// echo server sends back unmasked.
struct RawSocket(TcpStream);

impl RawSocket {
    fn open(port: u16) -> RawSocket {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /raw HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("101 head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        RawSocket(s)
    }

    /// Sends `text` (under 126 bytes) and reads its echo.
    fn echo(&mut self, text: &[u8]) {
        assert!(text.len() < 126);
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).expect("frame");
        let mut back = vec![0u8; 2 + text.len()];
        self.0.read_exact(&mut back).expect("echo");
        assert_eq!(&back[..2], &[0x81, text.len() as u8]);
        assert_eq!(&back[2..], text);
    }
}

/// Bytes of one `echo` of an `n`-byte text: a masked frame up, a plain one down.
fn frame_bytes(n: u64) -> (u64, u64) {
    (6 + n, 2 + n)
}

#[test]
fn a_tunnel_is_counted_in_metrics_while_open_and_logged_with_bytes_each_way() {
    let server = Server::start();
    let admin = free_port();
    let log = temp_path("ringgate-ws-access", "log");
    let proxy = ProxyConfig::new(format!("127.0.0.1:{}", server.1).parse().unwrap())
        .timeouts("tunnel_idle = \"10s\"")
        .route_extra("upgrade", "[\"websocket\"]")
        .to_toml()
        + &format!(
            "\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\n[access_log]\npath = {:?}\nbuffer = \"4KiB\"\n",
            log.display().to_string()
        );
    let proxy = Proxy::start(&proxy);
    let mut ws = RawSocket::open(proxy.port);
    let texts: [&[u8]; 3] = [b"hello", b"a somewhat longer message", b"x"];
    let (mut up, mut down) = (0, 0);
    for text in texts {
        ws.echo(text);
        let (u, d) = frame_bytes(text.len() as u64);
        up += u;
        down += d;
    }
    let series = |page: &str, name: &str, labels: &str| {
        sample(page, &format!("{name}{{kind=\"websocket\"{labels}}}"))
    };
    let bytes = |page: &str, direction: &str| {
        let labels = format!(",direction=\"{direction}\"");
        series(page, "ringgate_tunnel_bytes_total", &labels)
    };
    eventually(Duration::from_secs(3), || {
        let page = metrics(admin);
        let open = series(&page, "ringgate_tunnels_open", "");
        let total = series(&page, "ringgate_tunnels_total", "");
        (open == 1
            && total == 1
            && bytes(&page, "from_client") == up
            && bytes(&page, "to_client") == down)
            .then_some(())
            .ok_or(page)
    })
    .expect("the open tunnel and its bytes counted");

    ws.0.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    let _ = ws.0.read_to_end(&mut rest);
    drop(ws);
    eventually(Duration::from_secs(3), || {
        let page = metrics(admin);
        let open = series(&page, "ringgate_tunnels_open", "");
        let total = series(&page, "ringgate_tunnels_total", "");
        let tcp = sample(&page, "ringgate_tunnels_total{kind=\"tcp\"}");
        (open == 0 && total == 1 && tcp == 0 && bytes(&page, "from_client") == up)
            .then_some(())
            .ok_or(page)
    })
    .expect("the closed tunnel no longer open, its bytes kept");
    let line = eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        text.lines()
            .find(|l| l.contains("\"GET /raw HTTP/1.1\" 101 "))
            .map(str::to_owned)
            .ok_or(text)
    })
    .expect("the tunnel's line");
    // ... "GET /raw HTTP/1.1" 101 SENT "-" "-" SECONDS BACKEND - RECEIVED
    let tail: Vec<&str> = line.rsplitn(5, ' ').collect();
    assert_eq!(tail[0], up.to_string(), "received: {line}");
    assert_eq!(tail[1], "-", "{line}");
    assert_eq!(tail[2], format!("127.0.0.1:{}", server.1), "{line}");
    let sent: u64 = line
        .split("\" 101 ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("bytes sent");
    assert_eq!(sent, down + rest.len() as u64, "{line}");
}

#[test]
fn a_drain_lets_an_open_tunnel_go_on_until_drain_timeout() {
    let server = Server::start();
    let mut proxy = ProxyConfig::new(format!("127.0.0.1:{}", server.1).parse().unwrap())
        .timeouts("tunnel_idle = \"10s\"")
        .route_extra("upgrade", "[\"websocket\"]")
        .server("drain_timeout", "\"1500ms\"")
        .start();
    let mut ws = RawSocket::open(proxy.port);
    ws.echo(b"before");
    proxy.signal("-TERM");
    std::thread::sleep(Duration::from_millis(500));
    ws.echo(b"while draining");
    assert!(proxy.is_running(), "a drain waits for the open tunnel");
    let mut rest = Vec::new();
    let _ = ws.0.read_to_end(&mut rest);
    proxy
        .wait_exit(Duration::from_secs(5))
        .expect("the process exits once drain_timeout cuts the tunnel");
    assert!(
        proxy
            .stderr()
            .contains("drain_timeout reached, closing 1 connection(s)"),
        "{}",
        proxy.stderr()
    );
}

/// A WebSocket handshake through a proxy whose backend answers `answer`:
/// the backend and proxy (kept alive) and the client's socket.
fn handshake_against(answer: &[u8]) -> (ringgate_tests::Backend, Proxy, TcpStream) {
    handshake_in(b"HTTP/1.1", answer)
}

/// [`handshake_against`] with the request line's `version`.
fn handshake_in(version: &[u8], answer: &[u8]) -> (ringgate_tests::Backend, Proxy, TcpStream) {
    let backend =
        ringgate_tests::Backend::start("b", ringgate_tests::Behaviour::Raw(answer.to_vec()));
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("upgrade", "[\"websocket\"]")
        .start();
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let request = [
        &b"GET /ws "[..],
        version,
        b"\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ]
    .concat();
    s.write_all(&request).unwrap();
    (backend, proxy, s)
}

/// RFC 9110 §7.8: a 101 names the protocol it switches to, one the client
/// asked for. A backend that switches a WebSocket request to `h2c`, or
/// says no protocol at all, gets a 502 and no tunnel: the client would
/// otherwise be handed a byte stream it cannot read, and `h2c` is never
/// tunnelled.
#[test]
fn a_101_to_a_protocol_the_client_did_not_ask_for_is_a_502() {
    for answer in [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nRAW"[..],
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\nRAW",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket, h2c\r\nConnection: Upgrade\r\n\r\nRAW",
        b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\nRAW",
    ] {
        let (_backend, _proxy, mut s) = handshake_against(answer);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 502 "),
            "{:?}: got {text:?}",
            String::from_utf8_lossy(answer)
        );
        assert!(!text.contains("RAW"), "{text:?}");
    }
    // A 101 that names the protocol asked for, in another case, tunnels.
    let (_backend, _proxy, mut s) = handshake_against(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\nRAW",
    );
    let mut got = [0u8; 200];
    let mut n = 0;
    while !got[..n].ends_with(b"RAW") {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let text = String::from_utf8_lossy(&got[..n]);
    assert!(
        text.starts_with("HTTP/1.1 101 ") && text.ends_with("RAW"),
        "{text:?}"
    );
}

/// RFC 9110 §7.8: a server must ignore `Upgrade` in an HTTP/1.0 request,
/// and HTTP/1.0 has no 101. The proxy does not ask for the switch on
/// such a client's behalf, so a backend that answers 101 anyway is a 502,
/// and no tunnel carries what the client sends next.
#[test]
fn an_http10_request_is_never_upgraded() {
    let (backend, _proxy, mut s) = handshake_in(
        b"HTTP/1.0",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW",
    );
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 502 "), "{text:?}");
    assert!(!text.contains("RAW"), "{text:?}");
    let records = backend.records();
    assert_eq!(records.len(), 1, "one request upstream");
    assert!(
        !records[0].has_header("upgrade"),
        "Upgrade went upstream for an HTTP/1.0 client: {:?}",
        records[0]
    );
}
