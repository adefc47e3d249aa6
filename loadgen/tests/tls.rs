//! ringload over https against a loopback TLS server: rustls on std threads
//! (one per connection) with a self-signed certificate made per server by
//! rcgen, so every test runs a real handshake. `--insecure` gets 200s with
//! no errors, the same certificate without it is a clear connect error and
//! a non-zero exit, and keep-alive carries many requests per TLS connection.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod common;

use common::{next_head, ringload, stderr};
use ringgate_loadgen::{run, RunConfig, RunOptions};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

struct TlsServer {
    addr: SocketAddr,
    /// TCP connections accepted, handshake or not.
    accepted: Arc<AtomicU64>,
    /// Requests answered (complete heads read over TLS), all connections.
    requests: Arc<AtomicU64>,
}

impl TlsServer {
    fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }
}

/// A certificate for 127.0.0.1 signed by nobody the client trusts, served
/// with the ring provider ringload's client uses.
fn server_config() -> Arc<ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("generate a self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("certificate and key");
    Arc::new(config)
}

/// Binds 127.0.0.1:0 and answers every request with `200 ok` until the test
/// process exits.
fn start() -> TlsServer {
    let config = server_config();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (acc, req) = (accepted.clone(), requests.clone());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            acc.fetch_add(1, Ordering::SeqCst);
            let (config, req) = (config.clone(), req.clone());
            thread::spawn(move || serve(stream, config, &req));
        }
    });
    TlsServer {
        addr,
        accepted,
        requests,
    }
}

fn serve(tcp: TcpStream, config: Arc<ServerConfig>, requests: &AtomicU64) {
    let _ = tcp.set_nodelay(true);
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    // The first read drives the handshake; a client that rejects the
    // certificate makes it fail and the connection ends here.
    let mut tls = StreamOwned::new(conn, tcp);
    let mut buf = Vec::with_capacity(4096);
    // One complete head per iteration (the tests send no bodies).
    while next_head(&mut tls, &mut buf) {
        requests.fetch_add(1, Ordering::SeqCst);
        if tls.write_all(OK).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

#[test]
fn insecure_closed_loop_over_tls_gets_only_200s() {
    let server = start();
    let dir = std::env::temp_dir().join(format!("ringload-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("r.json");
    let (out, took) = ringload(&[
        &server.url(),
        "--insecure",
        "-c",
        "2",
        "-d",
        "500ms",
        "--timeout",
        "2s",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let requests = doc["requests"].as_u64().unwrap();
    assert!(requests >= 20, "{requests} requests in 500 ms");
    assert_eq!(doc["status"]["200"], requests, "{doc}");
    for k in ["connect", "timeout", "reset", "parse"] {
        assert_eq!(doc["errors"][k], 0, "errors.{k} in {doc}");
    }
    // Every request the server answered, except the probe, was measured.
    assert_eq!(server.requests.load(Ordering::SeqCst), requests + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_self_signed_certificate_without_insecure_is_a_certificate_error() {
    let server = start();
    let (out, took) = ringload(&[&server.url(), "-d", "5s", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let want = format!("ringload: cannot connect to {}", server.url());
    // The error is the last line (a line about sharing CPUs with this
    // test's server may come first).
    assert!(
        err.trim_end().lines().last().unwrap().starts_with(&want),
        "{err}"
    );
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Refused at the probe's handshake: no load, no request reached it.
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn keep_alive_sends_many_requests_per_tls_connection() {
    let server = start();
    let connections = 2;
    let report = run(&RunConfig::new(RunOptions {
        urls: vec![server.url()],
        connections,
        duration: Duration::from_millis(300),
        cores: Some(1),
        pin: false,
        timeout: Duration::from_secs(2),
        insecure: true,
        // No probe: its connection would be one more than `connections`.
        probe: false,
        ..RunOptions::default()
    })
    .unwrap())
    .unwrap();
    let m = &report.measured;
    assert_eq!(m.errors.total(), 0, "{:?}", m.errors);
    assert_eq!(m.status.get(&200), Some(&m.requests));
    assert_eq!(server.requests.load(Ordering::SeqCst), m.requests);
    let accepted = server.accepted.load(Ordering::SeqCst);
    assert!(
        (1..=connections as u64).contains(&accepted),
        "{accepted} connections for {connections}"
    );
    assert!(
        m.requests >= 10 * accepted,
        "{} requests over {accepted} connections",
        m.requests
    );
}

/// A plain HTTP server's answer to a TLS ClientHello, as nginx gives it: a
/// `400` in plain text, then a close.
fn start_plain_http_rejecting_non_http() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            thread::spawn(move || {
                let mut first = [0u8; 512];
                let _ = std::io::Read::read(&mut s, &mut first);
                let _ = s.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    addr
}

#[test]
fn an_https_url_to_a_plain_http_port_says_so_in_plain_words() {
    let addr = start_plain_http_rejecting_non_http();
    let (out, _) = ringload(&[&format!("https://{addr}/x"), "-d", "1", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{addr} is a plain HTTP port, use http://{addr}/x")),
        "{err}"
    );
    assert!(!err.contains("InvalidContentType"), "{err}");
}

#[test]
fn an_https_url_to_a_silent_plain_port_names_the_likely_mistake() {
    // A plain server that waits for the end of a request head, which a
    // ClientHello never brings.
    let server = common::start(common::Behaviour::Fixed(Duration::ZERO));
    let (out, _) = ringload(&[
        &format!("https://{}/", server.addr),
        "-d",
        "1",
        "--timeout",
        "500ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no answer to the TLS handshake within --timeout")
            && err.contains(&format!("use http://{}/", server.addr)),
        "{err}"
    );
}
