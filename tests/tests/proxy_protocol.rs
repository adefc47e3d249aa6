//! The PROXY protocol on listeners (`proxy_protocol = true`): v1 and v2
//! headers from a trusted balancer make the carried client the client
//! everywhere (forwarding headers, access log, rate-limit keys, client-IP
//! hashing), before plain HTTP and before a TLS handshake; an untrusted
//! peer, a malformed header or a missing one closes the connection before
//! a byte is forwarded.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ringgate_tests::pki::TestCa;
use ringgate_tests::proxy::{curl, metrics, run_with_timeout, temp_path};
use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, ProxyConfig};

const FROM_LOOPBACK: &str = "[\"127.0.0.1/32\"]";

fn pp_config(backend: &Backend, from: &str) -> ProxyConfig {
    ProxyConfig::new(backend.addr())
        .listener_extra("proxy_protocol", "true")
        .listener_extra("proxy_protocol_from", from)
}

fn v1(src: &str, sport: u16, dport: u16) -> Vec<u8> {
    let family = if src.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if src.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {family} {src} {dst} {sport} {dport}\r\n").into_bytes()
}

/// A v2 `PROXY` header over TCP for `src` (IPv4 or IPv6), with one NOOP
/// TLV the proxy must skip.
fn v2(src: std::net::IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    let mut payload = Vec::new();
    match src {
        std::net::IpAddr::V4(ip) => {
            h.push(0x11);
            payload.extend_from_slice(&ip.octets());
            payload.extend_from_slice(&[127, 0, 0, 1]);
        }
        std::net::IpAddr::V6(ip) => {
            h.push(0x21);
            payload.extend_from_slice(&ip.octets());
            payload.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    payload.extend_from_slice(&sport.to_be_bytes());
    payload.extend_from_slice(&dport.to_be_bytes());
    payload.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&payload);
    h
}

fn get(host: &str) -> Vec<u8> {
    format!("GET /pp HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

fn with_access_log(config: &ProxyConfig) -> (String, std::path::PathBuf) {
    let log = temp_path("ringgate-pp-access", "log");
    let toml = config.to_toml()
        + &format!(
            "\n[access_log]\npath = {:?}\nbuffer = \"4KiB\"\n",
            log.display().to_string()
        );
    (toml, log)
}

fn log_lines(path: &std::path::Path, want: usize) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.len() >= want {
        Ok(lines)
    } else {
        Err(format!("{} lines, want {want}:\n{text}", lines.len()))
    }
}

#[test]
fn v1_and_v2_headers_from_a_trusted_peer_name_the_client_upstream_and_in_the_access_log() {
    let backend = Backend::start("b", Behaviour::Ok);
    let (toml, log) = with_access_log(&pp_config(&backend, FROM_LOOPBACK));
    let proxy = Proxy::start(&toml);
    let cases: [(Vec<u8>, &str); 4] = [
        (v1("198.51.100.7", 40000, proxy.port), "198.51.100.7"),
        (v1("2001:db8::7", 40001, proxy.port), "2001:db8::7"),
        (
            v2("203.0.113.9".parse().unwrap(), 40002, proxy.port),
            "203.0.113.9",
        ),
        (
            v2("2001:db8::9".parse().unwrap(), 40003, proxy.port),
            "2001:db8::9",
        ),
    ];
    for (i, (header, client)) in cases.iter().enumerate() {
        let mut c = Client::connect(proxy.port);
        // The header and the request in one write, as balancers send them.
        let mut bytes = header.clone();
        bytes.extend_from_slice(&get("pp.test"));
        let r = c.request(&bytes);
        assert_eq!(r.status, 200, "case {i}");
        // Keep-alive: the next request on the connection is the same client's.
        assert_eq!(c.request(&get("pp.test")).status, 200, "case {i}");
        let records = backend.records();
        for rec in &records[records.len() - 2..] {
            assert_eq!(rec.header("x-forwarded-for").as_deref(), Some(*client));
            let forwarded = rec.header("forwarded").unwrap_or_default();
            assert!(
                forwarded.contains(&client.replace("2001", "\"[2001")),
                "{forwarded}"
            );
        }
    }
    let lines = eventually(Duration::from_secs(3), || log_lines(&log, 8)).expect("8 lines");
    let clients: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let want: Vec<&str> = cases.iter().flat_map(|(_, c)| [*c, *c]).collect();
    assert_eq!(clients, want, "{lines:#?}");
}

#[test]
fn a_header_that_arrives_in_pieces_is_read_whole() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = pp_config(&backend, FROM_LOOPBACK).start();
    for header in [
        v1("198.51.100.8", 1234, proxy.port),
        v2("198.51.100.8".parse().unwrap(), 1234, proxy.port),
    ] {
        let mut c = Client::connect(proxy.port);
        for piece in header.chunks(5) {
            c.send(piece);
            thread::sleep(Duration::from_millis(20));
        }
        let r = c.request(&get("pp.test"));
        assert_eq!(r.status, 200);
        let rec = backend.records().pop().expect("a record");
        assert_eq!(
            rec.header("x-forwarded-for").as_deref(),
            Some("198.51.100.8")
        );
    }
}

#[test]
fn a_local_or_unknown_header_leaves_the_peer_as_the_client() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = pp_config(&backend, FROM_LOOPBACK).start();
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    for header in [b"PROXY UNKNOWN\r\n".to_vec(), local] {
        let mut c = Client::connect(proxy.port);
        let mut bytes = header;
        bytes.extend_from_slice(&get("pp.test"));
        assert_eq!(c.request(&bytes).status, 200);
        let rec = backend.records().pop().expect("a record");
        assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    }
}

/// Sends `bytes`, then expects the proxy to close without a byte back.
fn assert_closed_unanswered(port: u16, bytes: &[u8], within: Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(within)).expect("timeout");
    // The proxy may close before taking everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let started = Instant::now();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "no close within {within:?} ({e}) after {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
    assert!(
        got.is_empty(),
        "answered {:?} to {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(bytes)
    );
    assert!(started.elapsed() < within);
}

#[test]
fn a_peer_outside_proxy_protocol_from_is_closed_before_a_byte_is_forwarded() {
    let backend = Backend::start("b", Behaviour::Ok);
    let admin = ringgate_tests::free_port();
    let toml = pp_config(&backend, "[\"10.0.0.0/8\", \"::1/128\"]").to_toml()
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let proxy = Proxy::start(&toml);
    let mut bytes = v1("198.51.100.7", 40000, proxy.port);
    bytes.extend_from_slice(&get("pp.test"));
    assert_closed_unanswered(proxy.port, &bytes, Duration::from_secs(3));
    assert_closed_unanswered(proxy.port, &get("pp.test"), Duration::from_secs(3));
    assert_eq!(backend.connections(), 0, "the backend was reached");
    // Two here, and the start-up check's probe connection.
    eventually(Duration::from_secs(3), || {
        let page = metrics(admin);
        let series = "ringgate_proxy_protocol_refused_total{reason=\"untrusted\"} ";
        let n: u64 = page
            .lines()
            .find_map(|l| l.strip_prefix(series)?.parse().ok())
            .unwrap_or(0);
        (n >= 2).then_some(()).ok_or(page)
    })
    .expect("counted as untrusted");
}

#[test]
fn a_malformed_header_closes_the_connection_without_forwarding_a_byte() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = pp_config(&backend, FROM_LOOPBACK).start();
    let mut bad_version = v2("198.51.100.7".parse().unwrap(), 1, 2);
    bad_version[12] = 0x31;
    let mut too_long = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    too_long.extend_from_slice(&60000u16.to_be_bytes());
    let mut endless = b"PROXY TCP4 ".to_vec();
    endless.resize(300, b'1');
    for header in [
        get("pp.test"),
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000\r\n".to_vec(),
        b"PROXY TCP4 198.51.100.777 127.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 198.51.100.7 127.0.0.1 1 2\n".to_vec(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
        bad_version,
        too_long,
        endless,
    ] {
        let mut bytes = header;
        bytes.extend_from_slice(&get("pp.test"));
        assert_closed_unanswered(proxy.port, &bytes, Duration::from_secs(3));
    }
    assert_eq!(
        backend.connections(),
        0,
        "a malformed header reached the backend"
    );
}

#[test]
fn a_header_that_does_not_arrive_within_header_read_timeout_closes() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = pp_config(&backend, FROM_LOOPBACK)
        .limit("header_read_timeout", "\"300ms\"")
        .start();
    for start in [&b""[..], b"PROXY TCP4 198.51.100.7"] {
        assert_closed_unanswered(proxy.port, start, Duration::from_secs(3));
    }
    assert_eq!(backend.connections(), 0);
}

#[test]
fn the_carried_client_is_the_rate_limit_key_and_the_hash_key() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = pp_config(&backend, FROM_LOOPBACK)
        .route_extra(
            "rate_limit",
            "{ key = \"client_ip\", rate = \"1/m\", burst = 1 }",
        )
        .start();
    let status = |ip: &str| {
        let mut c = Client::connect(proxy.port);
        let mut bytes = v1(ip, 1000, proxy.port);
        bytes.extend_from_slice(&get("pp.test"));
        c.request(&bytes).status
    };
    // Every connection comes from 127.0.0.1: only the carried address
    // tells these clients apart.
    assert_eq!(status("198.51.100.1"), 200);
    assert_eq!(status("198.51.100.2"), 200);
    assert_eq!(status("198.51.100.1"), 429);
    assert_eq!(status("198.51.100.3"), 200);
    drop(proxy);

    let a = Backend::start("a", Behaviour::Ok);
    let b = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::with_backends(&[a.addr(), b.addr()])
        .listener_extra("proxy_protocol", "true")
        .listener_extra("proxy_protocol_from", FROM_LOOPBACK)
        .upstream_extra("balance", "\"maglev_hash\"")
        .upstream_extra("hash_key", "\"client_ip\"")
        .start();
    let served_by = |ip: &str| {
        let mut c = Client::connect(proxy.port);
        let mut bytes = v1(ip, 1000, proxy.port);
        bytes.extend_from_slice(&get("pp.test"));
        let r = c.request(&bytes);
        assert_eq!(r.status, 200);
        r.header("x-backend").unwrap_or_default()
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

/// A balancer between `curl` and the proxy: for each connection it accepts,
/// it connects to `port`, writes a PROXY v1 header naming `client`, then
/// relays bytes both ways until either side closes.
fn balancer(port: u16, client: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let front = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for downstream in listener.incoming().flatten() {
            let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let header = format!("PROXY TCP4 {client} 127.0.0.1 50000 {port}\r\n");
            if upstream.write_all(header.as_bytes()).is_err() {
                continue;
            }
            let (mut d2, mut u2) = match (downstream.try_clone(), upstream.try_clone()) {
                (Ok(d), Ok(u)) => (d, u),
                _ => continue,
            };
            let mut d1 = downstream;
            thread::spawn(move || {
                let _ = std::io::copy(&mut d1, &mut upstream);
                let _ = upstream.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
                let _ = d2.shutdown(Shutdown::Write);
            });
        }
    });
    front
}

#[test]
fn the_header_comes_before_the_tls_handshake_on_a_tls_listener() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = pp_config(&backend, FROM_LOOPBACK)
        .listener_extra("tls", &format!("{{ certificates = [{}] }}", cert.toml()))
        .start();
    let front = balancer(proxy.port, "198.51.100.44");
    let resolve = format!("site.test:{front}:127.0.0.1");
    let out = run_with_timeout(
        Command::new(curl())
            .args([
                "-sS",
                "--http1.1",
                "--max-time",
                "10",
                "--resolve",
                &resolve,
            ])
            .arg("--cacert")
            .arg(&ca.cert)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://site.test:{front}/pp")),
        Duration::from_secs(15),
    );
    assert_eq!(
        out.stdout.lines().last(),
        Some("200"),
        "curl: {}",
        out.stderr
    );
    let rec = backend.records().pop().expect("a record");
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("198.51.100.44")
    );
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("https"));
}

// ---- send_proxy_protocol ----

/// What a PROXY header a backend received names: (version, source, destination).
fn decode(header: &[u8]) -> (u8, std::net::SocketAddr, std::net::SocketAddr) {
    if let Some(line) = header.strip_prefix(b"PROXY ") {
        let line = std::str::from_utf8(line).expect("v1 is text");
        let f: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(f.len(), 5, "{line:?}");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let port = |s: &str| s.parse::<u16>().expect("port");
        return (
            1,
            (ip(f[1]), port(f[3])).into(),
            (ip(f[2]), port(f[4])).into(),
        );
    }
    assert_eq!(header[12], 0x21, "v2 PROXY command");
    let a = &header[16..];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    match header[13] {
        0x11 => {
            let ip = |i: usize| std::net::Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
            (2, (ip(0), port(8)).into(), (ip(4), port(10)).into())
        }
        0x21 => {
            let ip = |i: usize| {
                let b: [u8; 16] = a[i..i + 16].try_into().expect("16 bytes");
                std::net::Ipv6Addr::from(b)
            };
            (2, (ip(0), port(32)).into(), (ip(16), port(34)).into())
        }
        f => panic!("family {f:#x}"),
    }
}

#[test]
fn send_proxy_protocol_v1_and_v2_name_the_client_on_each_new_upstream_connection() {
    for (version, number) in [("v1", 1), ("v2", 2)] {
        let backend = Backend::builder("pp").proxy_protocol().start();
        let proxy = ProxyConfig::new(backend.addr())
            .upstream_extra("send_proxy_protocol", &format!("\"{version}\""))
            .start();
        let mut a = Client::connect(proxy.port);
        for _ in 0..3 {
            assert_eq!(a.get("/a").status, 200);
        }
        let mut b = Client::connect(proxy.port);
        assert_eq!(b.get("/b").status, 200);
        // A's connection went back to the pool, but it names A: B gets its
        // own, and A's next request finds A's again.
        assert_eq!(a.get("/a").status, 200);
        let headers = backend.proxy_headers();
        assert_eq!(
            headers.len(),
            2,
            "{version}: one upstream connection per client"
        );
        let records = backend.records();
        assert_eq!(records.len(), 5);
        for (client, target) in [(&a, "/a"), (&b, "/b")] {
            let conn = records
                .iter()
                .find(|r| r.target == target)
                .expect("record")
                .conn;
            let (_, header) = headers.iter().find(|(c, _)| *c == conn).expect("header");
            let (v, src, dst) = decode(header);
            assert_eq!(v, number);
            assert_eq!(Some(src), client.writer().local_addr().ok(), "{version}");
            assert_eq!(dst, ([127, 0, 0, 1], proxy.port).into(), "{version}");
            assert!(records
                .iter()
                .filter(|r| r.target == target)
                .all(|r| r.conn == conn));
        }
    }
}

#[test]
fn a_carried_client_is_passed_on_before_tls_to_a_proxy_that_reads_it_and_probes_get_through() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("backend", &["backend.test"]);
    let backend = Backend::start("b", Behaviour::Ok);
    // B: TLS, expecting a PROXY header from A.
    let b = pp_config(&backend, FROM_LOOPBACK)
        .listener_extra("tls", &format!("{{ certificates = [{}] }}", cert.toml()))
        .start();
    // A: reads the balancer's header, sends one to B before its TLS
    // handshake; its health probes (fall = 1) must pass B's check too.
    let a = ProxyConfig::new(([127, 0, 0, 1], b.port).into())
        .listener_extra("proxy_protocol", "true")
        .listener_extra("proxy_protocol_from", FROM_LOOPBACK)
        .upstream_extra("send_proxy_protocol", "\"v2\"")
        .upstream_extra(
            "tls",
            &format!(
                "{{ server_name = \"backend.test\", ca = \"{}\" }}",
                ca.cert.display()
            ),
        )
        .upstream_extra(
            "health_check",
            "{ path = \"/health\", interval = \"100ms\", timeout = \"100ms\", fall = 1 }",
        )
        .start();
    eventually(Duration::from_secs(3), || backend.reached("/health")).expect("a probe got through");
    thread::sleep(Duration::from_millis(300));
    let mut c = Client::connect(a.port);
    let mut bytes = v1("198.51.100.9", 1234, a.port);
    bytes.extend_from_slice(&get("pp.test"));
    let r = c.request(&bytes);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let rec = backend
        .records()
        .into_iter()
        .rev()
        .find(|r| r.target == "/pp")
        .expect("the request");
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("198.51.100.9")
    );
    // The probes' headers named no client: B accounted them to A itself.
    let probes = backend
        .records()
        .iter()
        .filter(|r| r.target == "/health")
        .count();
    assert!(probes >= 3, "{probes} probes");
    assert!(backend
        .records()
        .iter()
        .filter(|r| r.target == "/health")
        .all(|r| r.header("x-forwarded-for").as_deref() == Some("127.0.0.1")));
}
