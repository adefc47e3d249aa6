//! `tcp` listeners: raw TCP relayed to an upstream's backends through its
//! balancer, both ways, with half-closes passed on, an idle timeout, a
//! per-listener connection cap, retries on connect failure, the drain, an
//! access-log line and counters per connection, and a PROXY header to the
//! backend when asked.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ringgate_tests::proxy::{metrics, sample, temp_path};
use ringgate_tests::tcp_backend::{fnv1a64, TcpBackend, TcpBehaviour, FNV_OFFSET};
use ringgate_tests::{eventually, free_port, Pattern, Proxy};

/// A node with one `tcp` listener (`l4`) relaying to upstream `app`.
struct TcpConfig {
    port: u16,
    backends: Vec<SocketAddr>,
    listener: Vec<String>,
    upstream: Vec<String>,
    top: String,
}

impl TcpConfig {
    fn new(backends: &[SocketAddr]) -> TcpConfig {
        TcpConfig {
            port: free_port(),
            backends: backends.to_vec(),
            listener: Vec::new(),
            upstream: Vec::new(),
            top: String::new(),
        }
    }

    fn listener(mut self, line: &str) -> Self {
        self.listener.push(line.to_owned());
        self
    }

    fn upstream(mut self, line: &str) -> Self {
        self.upstream.push(line.to_owned());
        self
    }

    /// Tables before the listener (`[server]`, `[admin]`, `[access_log]`).
    fn top(mut self, text: &str) -> Self {
        self.top.push_str(text);
        self.top.push('\n');
        self
    }

    fn toml(&self) -> String {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        format!(
            "{top}\n[[listeners]]\nname = \"l4\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"tcp\"\nupstream = \"app\"\n{listener}\n\n[[upstreams]]\nname = \"app\"\nbackends = [{backends}]\n{upstream}\n",
            top = if self.top.is_empty() { "[server]\nworkers = 1\n" } else { &self.top },
            port = self.port,
            listener = self.listener.join("\n"),
            backends = backends.join(", "),
            upstream = self.upstream.join("\n"),
        )
    }

    fn start(&self) -> Proxy {
        Proxy::start(&self.toml())
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!("reading a line: {e} (so far {line:?})"),
        }
    }
    String::from_utf8_lossy(&line).trim_end().to_owned()
}

/// Reads until end of stream (or a reset), within the socket's timeout.
fn read_to_eof(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(format!("no end of stream: {e}")),
    }
}

#[test]
fn an_echo_of_100_mib_both_ways_keeps_every_byte() {
    const LEN: u64 = 100 << 20;
    let backend = TcpBackend::start("echo", TcpBehaviour::Echo);
    let proxy = TcpConfig::new(&[backend.addr()]).start();
    let s = connect(proxy.port);
    let mut w = s.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        let pattern = Pattern::new(7);
        let mut hash = FNV_OFFSET;
        let mut at = 0u64;
        while at < LEN {
            let piece = pattern.at(at);
            let n = piece.len().min((LEN - at) as usize);
            w.write_all(&piece[..n]).expect("write");
            hash = fnv1a64(hash, &piece[..n]);
            at += n as u64;
        }
        w.shutdown(Shutdown::Write).expect("half-close");
        hash
    });
    let pattern = Pattern::new(7);
    let mut r = s;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut got, mut hash) = (0u64, FNV_OFFSET);
    loop {
        let n = r.read(&mut buf).expect("read the echo");
        if n == 0 {
            break;
        }
        assert!(
            pattern.matches(got, &buf[..n]),
            "echo differs at byte {got}"
        );
        hash = fnv1a64(hash, &buf[..n]);
        got += n as u64;
    }
    let sent_hash = writer.join().expect("writer");
    assert_eq!(got, LEN, "echoed bytes");
    assert_eq!(hash, sent_hash, "checksums of what went and came back");
    let sessions = eventually(Duration::from_secs(5), || {
        let s = backend.sessions();
        (!s.is_empty())
            .then_some(s)
            .ok_or("no session yet".to_owned())
    })
    .expect("the backend's session ended");
    let session = sessions
        .iter()
        .find(|s| s.received > 0)
        .expect("the echo session");
    assert_eq!(session.received, LEN);
    assert!(
        session.saw_eof,
        "the client's half-close reached the backend"
    );
}

#[test]
fn a_half_close_from_the_client_reaches_the_backend_which_still_answers() {
    let backend = TcpBackend::start("count", TcpBehaviour::CountThenReply);
    let proxy = TcpConfig::new(&[backend.addr()]).start();
    let mut s = connect(proxy.port);
    let data = Pattern::new(3).take(1 << 20);
    s.write_all(&data).expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let reply = read_line(&mut s);
    assert_eq!(
        reply,
        format!("{} {:016x}", data.len(), fnv1a64(FNV_OFFSET, &data))
    );
    assert_eq!(read_to_eof(&mut s), Ok(Vec::new()));
}

/// A tcp listener does not defer its accepts by default: the backend may
/// speak first (SMTP, MySQL, SSH), so a client that has sent nothing must
/// be relayed at once. A deferred accept hands it over only after a second
/// and a retransmitted SYN-ACK.
#[test]
fn a_silent_client_of_a_tcp_listener_gets_the_backends_greeting_at_once() {
    let backend = TcpBackend::start("greeter", TcpBehaviour::Greet);
    let proxy = TcpConfig::new(&[backend.addr()]).start();
    let started = Instant::now();
    let mut s = connect(proxy.port);
    assert_eq!(read_line(&mut s), "greeter");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "the greeting took {waited:?}: the accept waited for the client to speak"
    );
}

#[test]
fn a_half_close_from_the_backend_reaches_the_client_which_still_sends() {
    let greeting = b"all of it, then EOF".to_vec();
    let backend = TcpBackend::start("send", TcpBehaviour::SendThenRead(greeting.clone()));
    let proxy = TcpConfig::new(&[backend.addr()]).start();
    let mut s = connect(proxy.port);
    assert_eq!(
        read_to_eof(&mut s),
        Ok(greeting),
        "the backend's data, then its end"
    );
    // The other way is still open.
    let data = Pattern::new(4).take(1 << 20);
    s.write_all(&data)
        .expect("write after the backend's half-close");
    s.shutdown(Shutdown::Write).expect("half-close");
    let session = eventually(Duration::from_secs(5), || {
        backend
            .sessions()
            .into_iter()
            .find(|s| s.received > 0)
            .ok_or("no session yet".to_owned())
    })
    .expect("the backend's session ended");
    assert_eq!(session.received, data.len() as u64);
    assert!(session.saw_eof);
}

#[test]
fn a_backend_that_sends_then_closes_at_once_reaches_a_slow_client_whole() {
    // The backend's last bytes and its FIN arrive together: the relay sends
    // them on held for the FIN. Every byte must reach a client that reads
    // slowly, in order, then the end. (On loopback the socket has so far
    // taken the held bytes whole; the branch for a part is not forced.)
    let body = Pattern::new(5).take((16 << 20) + 1000);
    let backend = TcpBackend::start("send", TcpBehaviour::SendThenRead(body.clone()));
    let proxy = TcpConfig::new(&[backend.addr()]).start();
    let mut s = connect(proxy.port);
    thread::sleep(Duration::from_millis(200));
    // Read slowly, so the relay's send buffer is full when the last bytes
    // and the FIN reach it.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
        thread::sleep(Duration::from_micros(300));
    }
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the bytes arrived changed or out of order");
}

#[test]
fn a_tunnel_idle_past_tunnel_idle_is_closed_and_traffic_either_way_keeps_it() {
    let backend = TcpBackend::start("echo", TcpBehaviour::Echo);
    let proxy = TcpConfig::new(&[backend.addr()])
        .upstream("timeouts = { tunnel_idle = \"400ms\" }")
        .start();
    let mut s = connect(proxy.port);
    // Two seconds of a byte every 100 ms: never idle for 400 ms.
    let mut byte = [0u8; 1];
    for i in 0..20u8 {
        s.write_all(&[i]).expect("write");
        s.read_exact(&mut byte).expect("echo");
        assert_eq!(byte[0], i);
        thread::sleep(Duration::from_millis(100));
    }
    let quiet = Instant::now();
    assert_eq!(read_to_eof(&mut s), Ok(Vec::new()));
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed after {waited:?} of silence"
    );
}

#[test]
fn connections_are_balanced_across_backends_and_hashed_on_the_carried_client() {
    let a = TcpBackend::start("a", TcpBehaviour::Greet);
    let b = TcpBackend::start("b", TcpBehaviour::Greet);
    let proxy = TcpConfig::new(&[a.addr(), b.addr()])
        .upstream("balance = \"round_robin\"")
        .start();
    let mut names = Vec::new();
    for _ in 0..10 {
        let mut s = connect(proxy.port);
        names.push(read_line(&mut s));
    }
    let on_a = names.iter().filter(|n| *n == "a").count();
    assert_eq!((on_a, names.len() - on_a), (5, 5), "{names:?}");
    drop(proxy);

    let proxy = TcpConfig::new(&[a.addr(), b.addr()])
        .listener("proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]")
        .upstream("balance = \"maglev_hash\"\nhash_key = \"client_ip\"")
        .start();
    let served_by = |ip: &str| {
        let mut s = connect(proxy.port);
        s.write_all(format!("PROXY TCP4 {ip} 127.0.0.1 1000 {}\r\n", proxy.port).as_bytes())
            .expect("header");
        read_line(&mut s)
    };
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..32 {
        let ip = format!("198.51.100.{i}");
        let first = served_by(&ip);
        assert_eq!(served_by(&ip), first, "{ip} moved between backends");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "32 carried clients all hashed to {seen:?}");
}

#[test]
fn connect_probes_take_a_dead_backend_out_of_the_rotation() {
    let a = TcpBackend::start("a", TcpBehaviour::Greet);
    let b = TcpBackend::start("b", TcpBehaviour::Greet);
    let proxy = TcpConfig::new(&[a.addr(), b.addr()])
        .upstream("balance = \"round_robin\"")
        .upstream(
            "health_check = { interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }",
        )
        .start();
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..4 {
        names.insert(read_line(&mut connect(proxy.port)));
    }
    assert_eq!(names.len(), 2, "both backends serve: {names:?}");
    drop(b);
    // No retries: only the probes can keep connections off b.
    thread::sleep(Duration::from_millis(500));
    for i in 0..6 {
        assert_eq!(read_line(&mut connect(proxy.port)), "a", "connection {i}");
    }
}

#[test]
fn a_backend_that_refuses_is_retried_and_with_none_left_the_client_is_closed() {
    let live = TcpBackend::start("live", TcpBehaviour::Greet);
    // A port nothing listens on.
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log = temp_path("ringgate-tcp-access", "log");
    let top = format!(
        "[server]\nworkers = 1\n\n[access_log]\npath = {:?}\nbuffer = \"4KiB\"\n",
        log.display().to_string()
    );
    let proxy = TcpConfig::new(&[dead, live.addr()])
        .top(&top)
        .upstream("balance = \"round_robin\"")
        .upstream("retries = { attempts = 1 }")
        .upstream("outlier_detection = { max_ejection_percent = 0 }")
        .start();
    for _ in 0..4 {
        let mut s = connect(proxy.port);
        assert_eq!(read_line(&mut s), "live");
    }
    let relayed = "\"TCP l4\" 200 5 \"-\" \"-\"";
    eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        (text.lines().filter(|l| l.contains(relayed)).count() >= 4)
            .then_some(())
            .ok_or(text)
    })
    .expect("four relayed connections logged");
    drop(proxy);
    let proxy = TcpConfig::new(&[dead]).top(&top).start();
    let mut s = connect(proxy.port);
    let _ = s.write_all(b"hello?");
    assert_eq!(read_to_eof(&mut s), Ok(Vec::new()), "closed without a byte");
    let refused = "\"TCP l4\" 502 0 \"-\" \"-\" 0.";
    eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        text.lines()
            .any(|l| l.contains(refused) && l.contains(&format!(" {dead} - ")))
            .then_some(())
            .ok_or(text)
    })
    .expect("a 502 line naming the backend that refused");
}

#[test]
fn each_connection_gets_an_access_log_line_and_counts_its_bytes() {
    let backend = TcpBackend::start("echo", TcpBehaviour::Echo);
    let log = temp_path("ringgate-tcp-access", "log");
    let admin = free_port();
    let top = format!(
        "[server]\nworkers = 1\n\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\n[access_log]\npath = {:?}\nbuffer = \"4KiB\"\n",
        log.display().to_string()
    );
    let proxy = TcpConfig::new(&[backend.addr()]).top(&top).start();
    let mut s = connect(proxy.port);
    s.write_all(&[7u8; 1000]).expect("write");
    let mut echo = [0u8; 1000];
    s.read_exact(&mut echo).expect("echo");
    thread::sleep(Duration::from_millis(100));
    s.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut s), Ok(Vec::new()));
    let line = eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        text.lines()
            .find(|l| l.contains(" 200 1000 "))
            .map(str::to_owned)
            .ok_or(text)
    })
    .expect("the connection's line");
    // CLIENT - - [TIME] "TCP LISTENER" STATUS SENT "-" "-" SECONDS BACKEND - RECEIVED
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    let tail: Vec<&str> = line.rsplitn(6, ' ').collect();
    assert_eq!(tail[0], "1000", "received: {line}");
    assert_eq!(tail[1], "-", "{line}");
    assert_eq!(tail[2], backend.addr().to_string(), "{line}");
    let secs: f64 = tail[3].parse().expect("seconds");
    assert!((0.1..5.0).contains(&secs), "{line}");
    assert!(line.contains("\"TCP l4\" 200 1000 \"-\" \"-\" "), "{line}");
    eventually(Duration::from_secs(3), || {
        let page = metrics(admin);
        let bytes = |d: &str| {
            sample(
                &page,
                &format!("ringgate_tunnel_bytes_total{{kind=\"tcp\",direction=\"{d}\"}}"),
            )
        };
        let (from, to) = (bytes("from_client"), bytes("to_client"));
        let open = sample(&page, "ringgate_tunnels_open{kind=\"tcp\"}");
        let total = sample(&page, "ringgate_tunnels_total{kind=\"tcp\"}");
        (from >= 1000 && to >= 1000 && open == 0 && total >= 1)
            .then_some(())
            .ok_or(page)
    })
    .expect("bytes and connections counted");
}

#[test]
fn a_listener_at_its_connection_cap_closes_new_connections() {
    let backend = TcpBackend::start("g", TcpBehaviour::Greet);
    let proxy = TcpConfig::new(&[backend.addr()])
        .listener("max_connections_per_worker = 2")
        .start();
    // The start-up probe's connection may still be closing: wait for two
    // to be held.
    let held = eventually(Duration::from_secs(3), || {
        let mut a = connect(proxy.port);
        let mut b = connect(proxy.port);
        let greeted = read_line(&mut a) == "g" && read_line(&mut b) == "g";
        greeted
            .then_some((a, b))
            .ok_or("not both greeted".to_owned())
    })
    .expect("two connections held");
    let mut third = connect(proxy.port);
    assert_eq!(
        read_to_eof(&mut third),
        Ok(Vec::new()),
        "over the cap: closed"
    );
    drop(held);
    let mut again = eventually(Duration::from_secs(3), || {
        let mut s = connect(proxy.port);
        (read_line(&mut s) == "g")
            .then_some(s)
            .ok_or("not greeted".to_owned())
    })
    .expect("room again once one closed");
    again.write_all(b"x").expect("write");
}

#[test]
fn a_drain_lets_open_tunnels_finish_then_exits_and_cuts_them_at_drain_timeout() {
    let backend = TcpBackend::start("echo", TcpBehaviour::Echo);
    let mut proxy = TcpConfig::new(&[backend.addr()]).start();
    let mut s = connect(proxy.port);
    s.write_all(b"before").expect("write");
    let mut got = [0u8; 6];
    s.read_exact(&mut got).expect("echo");
    proxy.signal("-TERM");
    thread::sleep(Duration::from_millis(200));
    // Still relaying after the signal.
    s.write_all(b"during").expect("write");
    s.read_exact(&mut got).expect("echo while draining");
    assert_eq!(&got, b"during");
    s.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(read_to_eof(&mut s), Ok(Vec::new()));
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("exits once the tunnel is gone");
    assert!(status.success(), "{status}");

    let mut proxy = TcpConfig::new(&[backend.addr()])
        .top("[server]\nworkers = 1\ndrain_timeout = \"500ms\"\n")
        .start();
    let mut s = connect(proxy.port);
    s.write_all(b"x").expect("write");
    s.read_exact(&mut got[..1]).expect("echo");
    let signalled = Instant::now();
    proxy.signal("-TERM");
    assert!(read_to_eof(&mut s).is_ok(), "cut at drain_timeout");
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn send_proxy_protocol_names_the_client_to_a_tcp_backend() {
    for (version, first) in [
        ("v1", &b"PROXY TCP4 127.0.0.1 127.0.0.1 "[..]),
        ("v2", b"\r\n\r\n\0\r\nQUIT\n"),
    ] {
        let backend = TcpBackend::start_with("pp", TcpBehaviour::Echo, true);
        let proxy = TcpConfig::new(&[backend.addr()])
            .upstream(&format!("send_proxy_protocol = \"{version}\""))
            .start();
        let mut s = connect(proxy.port);
        let client_port = s.local_addr().expect("addr").port();
        s.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        s.read_exact(&mut got).expect("echo");
        assert_eq!(&got, b"ping");
        drop(s);
        let session = eventually(Duration::from_secs(5), || {
            backend
                .sessions()
                .into_iter()
                .find(|s| s.received == 4)
                .ok_or("no session yet".to_owned())
        })
        .expect("the session");
        let header = session.proxy_header.expect("a PROXY header");
        assert!(header.starts_with(first), "{version}: {header:?}");
        let ports = if version == "v1" {
            let line = String::from_utf8_lossy(&header).into_owned();
            let f: Vec<&str> = line.trim_end().split(' ').collect();
            (f[4].parse::<u16>().unwrap(), f[5].parse::<u16>().unwrap())
        } else {
            let a = &header[16..];
            (
                u16::from_be_bytes([a[8], a[9]]),
                u16::from_be_bytes([a[10], a[11]]),
            )
        };
        assert_eq!(ports, (client_port, proxy.port), "{version}");
    }
}
