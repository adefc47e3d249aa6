//! TLS listeners with real clients: curl and `openssl s_client` against
//! certificates a test CA issues per run. SNI choice, ALPN, refused old
//! versions, stalled handshakes, plain HTTP to a TLS port, mTLS, the
//! forwarding headers, bodies both ways, reload of certificates under load,
//! and `check` naming what is wrong with a certificate.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ringgate_tests::pki::{Issued, TestCa};
use ringgate_tests::proxy::{
    curl, metrics, run_ringgate, run_with_timeout, sample, write_temp, CommandOutput, LoadOutcome,
};
use ringgate_tests::{eventually, ringload_bin, Backend, Behaviour, Proxy, ProxyConfig};

fn tls_table(certs: &[&Issued], extra: &str) -> String {
    let list: Vec<String> = certs.iter().map(|c| c.toml()).collect();
    format!("{{ certificates = [{}]{extra} }}", list.join(", "))
}

fn tls_proxy(backend: &Backend, certs: &[&Issued], extra: &str) -> Proxy {
    ProxyConfig::new(backend.addr())
        .listener_extra("tls", &tls_table(certs, extra))
        .start()
}

/// `curl` to `https://{host}:{port}{path}` resolved to loopback, trusting
/// `ca`; `-w` prints the status and the TLS details curl saw.
fn curl_https(port: u16, host: &str, path: &str, ca: &Path, extra: &[&str]) -> CommandOutput {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    run_with_timeout(
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
            .arg(ca)
            .args(["-w", "\n%{http_code}"])
            .args(extra)
            .arg(&url),
        Duration::from_secs(15),
    )
}

fn status_of(out: &CommandOutput) -> &str {
    out.stdout.lines().last().unwrap_or("")
}

/// `openssl s_client` with `args`; stdin closed at once, so it prints the
/// handshake and exits.
fn s_client(port: u16, args: &[&str]) -> CommandOutput {
    run_with_timeout(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(args),
        Duration::from_secs(15),
    )
}

#[test]
fn curl_gets_through_and_the_backend_is_told_https() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = tls_proxy(&backend, &[&cert], "");
    let out = curl_https(proxy.port, "site.test", "/hello", &ca.cert, &["-v"]);
    assert_eq!(status_of(&out), "200", "curl: {}", out.stderr);
    assert!(
        out.stdout.starts_with(&backend.ok_body("/hello")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("ALPN: server accepted http/1.1"),
        "ALPN not agreed: {}",
        out.stderr
    );
    let rec = backend.records().pop().expect("backend saw the request");
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("https"));
    assert!(
        rec.header("forwarded")
            .is_some_and(|f| f.ends_with("proto=https")),
        "{:?}",
        rec.header("forwarded")
    );
}

#[test]
fn sni_chooses_the_certificate_and_no_sni_gets_the_first() {
    let mut ca = TestCa::new("ringgate test CA");
    let first = ca.server("first", &["first.test"]);
    let wild = ca.server("wild", &["*.wild.test"]);
    let exact = ca.server("exact", &["exact.test", "other.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = tls_proxy(&backend, &[&first, &wild, &exact], "");
    // curl verifies the name, so each success proves the right choice.
    for host in ["first.test", "a.wild.test", "exact.test", "other.test"] {
        let out = curl_https(proxy.port, host, "/", &ca.cert, &[]);
        assert_eq!(status_of(&out), "200", "{host}: {}", out.stderr);
    }
    // One label only: *.wild.test does not cover a.b.wild.test, which gets
    // the first certificate and fails verification.
    let out = curl_https(proxy.port, "a.b.wild.test", "/", &ca.cert, &[]);
    assert_ne!(status_of(&out), "200", "{}", out.stdout);
    let out = s_client(proxy.port, &["-noservername"]);
    assert!(
        out.stdout.contains("CN=first.test") || out.stdout.contains("CN = first.test"),
        "no SNI should get the first certificate: {}",
        out.stdout
    );
}

#[test]
fn old_versions_and_foreign_alpn_are_refused_and_counted() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = tls_proxy(&backend, &[&cert], "");
    let out = s_client(proxy.port, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    assert!(!out.success, "TLS 1.1 was accepted: {}", out.stdout);
    let out = s_client(proxy.port, &["-tls1_2"]);
    assert!(
        out.success && out.stdout.contains("TLSv1.2"),
        "TLS 1.2: {}{}",
        out.stdout,
        out.stderr
    );
    let out = s_client(proxy.port, &["-tls1_3"]);
    assert!(
        out.success && out.stdout.contains("TLSv1.3"),
        "TLS 1.3: {}{}",
        out.stdout,
        out.stderr
    );
    // A client that offers ALPN, but nothing the listener speaks, is refused
    // (RFC 7301 §3.2) rather than spoken to in a protocol it did not ask for.
    let out = s_client(proxy.port, &["-alpn", "spdy/3"]);
    assert!(!out.success, "a foreign ALPN was accepted: {}", out.stdout);
    assert!(
        !out.stdout.contains("ALPN protocol: spdy/3"),
        "{}",
        out.stdout
    );
    // h2 is offered by default on a TLS listener.
    let out = s_client(proxy.port, &["-alpn", "h2"]);
    assert!(out.stdout.contains("ALPN protocol: h2"), "{}", out.stdout);
}

#[test]
fn limited_versions_and_suites_are_what_is_offered() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = tls_proxy(
        &backend,
        &[&cert],
        ", versions = [\"1.3\"], cipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\"]",
    );
    let out = s_client(proxy.port, &["-tls1_2"]);
    assert!(!out.success, "TLS 1.2 was accepted: {}", out.stdout);
    let out = s_client(proxy.port, &["-tls1_3"]);
    assert!(
        out.success && out.stdout.contains("TLS_CHACHA20_POLY1305_SHA256"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn a_stalled_handshake_is_closed_at_its_deadline() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .listener_extra("tls", &tls_table(&[&cert], ""))
        .limit("tls_handshake_timeout", "\"300ms\"")
        .start();
    // Half a ClientHello record header, then silence.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(&[22, 3, 1]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected a close, got {:?}", &buf[..n]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // The proxy still serves a real client.
    let out = curl_https(proxy.port, "site.test", "/", &ca.cert, &[]);
    assert_eq!(status_of(&out), "200", "{}", out.stderr);
}

#[test]
fn plain_http_to_a_tls_port_gets_a_plain_400() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = tls_proxy(&backend, &[&cert], "");
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.contains("plain HTTP request sent to an HTTPS port"),
        "{text}"
    );
    assert!(
        backend.records().is_empty(),
        "nothing may reach the backend"
    );
}

#[test]
fn client_certificates_are_required_when_a_client_ca_is_set() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let mut client_ca = TestCa::new("client CA");
    let good = client_ca.client("alice", "alice");
    let mut stranger_ca = TestCa::new("stranger CA");
    let stranger = stranger_ca.client("mallory", "mallory");
    let backend = Backend::start("ok", Behaviour::Ok);
    let extra = format!(
        ", client_ca = \"{}\", client_subject_header = \"X-Client-Subject\"",
        client_ca.cert.display()
    );
    let proxy = tls_proxy(&backend, &[&cert], &extra);
    let with = |c: &Issued| {
        let (cert, key) = (c.cert.to_string_lossy(), c.key.to_string_lossy());
        // A client's own copy of the header must not reach the backend.
        curl_https(
            proxy.port,
            "site.test",
            "/",
            &ca.cert,
            &[
                "--cert",
                &cert,
                "--key",
                &key,
                "-H",
                "X-Client-Subject: CN=admin",
            ],
        )
    };
    assert_eq!(status_of(&with(&good)), "200");
    let rec = backend.records().pop().expect("alice's request");
    let subjects: Vec<&String> = rec
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-client-subject"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(subjects, ["CN=alice"], "{:?}", rec.headers);
    assert_ne!(
        status_of(&with(&stranger)),
        "200",
        "a certificate from another CA passed"
    );
    let none = curl_https(proxy.port, "site.test", "/", &ca.cert, &[]);
    assert_ne!(
        status_of(&none),
        "200",
        "no certificate passed: {}",
        none.stdout
    );
    assert_eq!(
        backend.records().len(),
        1,
        "only alice's request may reach the backend"
    );
}

#[test]
fn an_optional_client_certificate_still_strips_the_subject_header() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let client_ca = TestCa::new("client CA");
    let backend = Backend::start("ok", Behaviour::Ok);
    let extra = format!(
        ", client_ca = \"{}\", client_certificate = \"optional\", client_subject_header = \"X-Client-Subject\"",
        client_ca.cert.display()
    );
    let proxy = tls_proxy(&backend, &[&cert], &extra);
    let out = curl_https(
        proxy.port,
        "site.test",
        "/",
        &ca.cert,
        &[
            "-H",
            "X-Client-Subject: CN=admin",
            "-H",
            "X_Client_Subject: CN=admin",
        ],
    );
    assert_eq!(status_of(&out), "200", "{}", out.stderr);
    let rec = backend.records().pop().expect("the request");
    assert!(
        !rec.has_header("x-client-subject") && !rec.has_header("x_client_subject"),
        "a forged subject went up: {:?}",
        rec.headers
    );
}

#[test]
fn bodies_of_a_few_megabytes_cross_both_ways() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("echo", Behaviour::Echo);
    let proxy = tls_proxy(&backend, &[&cert], "");
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let file = write_temp("ringgate-tls-body", "bin", &body);
    let data = format!("@{}", file.display());
    let echoed = ringgate_tests::proxy::temp_path("ringgate-tls-echoed", "bin");
    let out = run_with_timeout(
        Command::new(curl())
            .args(["-sS", "--http1.1", "--max-time", "20", "--resolve"])
            .arg(format!("site.test:{}:127.0.0.1", proxy.port))
            .arg("--cacert")
            .arg(&ca.cert)
            .args(["--data-binary", &data, "-w", "%{http_code}", "-o"])
            .arg(&echoed)
            .arg(format!("https://site.test:{}/echo", proxy.port)),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_file(&file);
    let got = std::fs::read(&echoed).unwrap_or_default();
    let _ = std::fs::remove_file(&echoed);
    assert!(
        out.success && out.stdout == "200",
        "{} {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the echoed body differs");
}

#[test]
fn check_names_the_file_and_what_is_wrong_with_it() {
    let mut ca = TestCa::new("ringgate test CA");
    let good = ca.server("good", &["good.test"]);
    let other = ca.server("other", &["other.test"]);
    let expired = ca.expired_server("old", "old.test");
    let mismatched = Issued {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let missing = Issued {
        cert: ca.dir().join("nowhere.pem"),
        key: good.key.clone(),
    };
    let not_pem = Issued {
        cert: good.key.clone(),
        key: good.key.clone(),
    };
    let cases: [(&Issued, &str); 4] = [
        (&expired, "expired on"),
        (&mismatched, "does not match the certificate"),
        (&missing, "cannot read"),
        (&not_pem, "no CERTIFICATE block"),
    ];
    let backend = Backend::start("ok", Behaviour::Ok);
    for (issued, why) in cases {
        let toml = ProxyConfig::new(backend.addr())
            .listener_extra("tls", &tls_table(&[issued], ""))
            .to_toml();
        let path = write_temp("ringgate-tls-check", "toml", toml.as_bytes());
        let out = run_ringgate(&[OsStr::new("check"), path.as_os_str()]);
        let _ = std::fs::remove_file(&path);
        assert!(!out.success, "check passed a config with {why}");
        assert!(
            out.stderr.contains("listeners[0].tls.certificates[0]") && out.stderr.contains(why),
            "expected {why:?} in: {}",
            out.stderr
        );
    }
    let toml = ProxyConfig::new(backend.addr())
        .listener_extra("tls", &tls_table(&[&good], ""))
        .to_toml();
    let path = write_temp("ringgate-tls-check", "toml", toml.as_bytes());
    let out = run_ringgate(&[OsStr::new("check"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    assert!(out.success, "{}", out.stderr);
}

#[test]
fn a_reload_swaps_the_certificate_under_load_without_failed_requests() {
    let mut ca = TestCa::new("ringgate test CA");
    let old = ca.server("old", &["site.test"]);
    let new = ca.server("new", &["site.test", "new.test"]);
    let live = Issued {
        cert: ca.dir().join("live.pem"),
        key: ca.dir().join("live.key"),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .workers(2)
        .listener_extra("tls", &tls_table(&[&live], ""))
        .start();
    // new.test is only in the new certificate.
    let before = curl_https(proxy.port, "new.test", "/", &ca.cert, &[]);
    assert_ne!(status_of(&before), "200");
    let json = ringgate_tests::proxy::temp_path("ringgate-tls-load", "json");
    let mut load = Command::new(ringload_bin())
        .arg(format!("https://127.0.0.1:{}/", proxy.port))
        .args(["-k", "-c", "8", "-d", "3s", "--cores", "1", "-q", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ringload");
    std::thread::sleep(Duration::from_millis(800));
    std::fs::copy(&new.cert, &live.cert).unwrap();
    std::fs::copy(&new.key, &live.key).unwrap();
    proxy.signal("-HUP");
    let reloaded = eventually(Duration::from_secs(5), || {
        let out = curl_https(proxy.port, "new.test", "/", &ca.cert, &[]);
        (status_of(&out) == "200").then_some(()).ok_or(out.stderr)
    });
    assert!(
        reloaded.is_ok(),
        "the new certificate was not served: {reloaded:?}"
    );
    // Two more reloads while the load runs: each drains a generation whose
    // connections are busy.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        proxy.signal("-HUP");
    }
    let mut stderr = String::new();
    let status = load.wait().unwrap();
    let _ = load
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut stderr));
    assert!(status.success(), "ringload: {stderr}");
    let report = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let outcome = LoadOutcome::from_report(&report);
    assert!(outcome.requests > 100, "{outcome:?}");
    assert_eq!(
        outcome.errors, 0,
        "failed requests across the reloads: {outcome:?}"
    );
    assert!(outcome.non_2xx.is_empty(), "{outcome:?}");
}

#[test]
fn sessions_resume_on_any_worker_and_handshakes_are_counted_and_logged() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let admin = ringgate_tests::free_port();
    let log = ringgate_tests::proxy::temp_path("ringgate-tls-access", "log");
    let toml = ProxyConfig::new(backend.addr())
        .workers(2)
        .listener_extra("tls", &tls_table(&[&cert], ""))
        .to_toml()
        + &format!(
            "\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\n[access_log]\npath = {:?}\nbuffer = \"4KiB\"\n",
            log.display().to_string()
        );
    let proxy = Proxy::start(&toml);
    let session = ringgate_tests::proxy::temp_path("ringgate-tls-session", "pem");
    let session = session.to_string_lossy().to_string();
    // TLS 1.3 tickets come after the handshake: s_client must read them
    // before it quits, so it sends a request and waits for the answer.
    let first = s_client_request(proxy.port, &["-tls1_3", "-sess_out", &session]);
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    // Each try is a new connection that either worker may accept: every
    // one resumes, so the ticket keys are shared.
    for _ in 0..6 {
        let again = s_client_request(proxy.port, &["-tls1_3", "-sess_in", &session]);
        assert!(again.contains("Reused, TLSv1.3"), "not resumed: {again}");
    }
    let tls12 = s_client_request(proxy.port, &["-tls1_2"]);
    assert!(tls12.contains("HTTP/1.1 200"), "{tls12}");
    let _ = std::fs::remove_file(&session);
    let _ = TcpStream::connect(("127.0.0.1", proxy.port))
        .and_then(|mut s| s.write_all(b"GET / HTTP/1.1\r\n\r\n"));
    let body = eventually(Duration::from_secs(3), || {
        let body = metrics(admin);
        let full13 = sample(
            &body,
            "ringgate_tls_handshakes_total{version=\"1.3\",resumed=\"false\"}",
        );
        let resumed13 = sample(
            &body,
            "ringgate_tls_handshakes_total{version=\"1.3\",resumed=\"true\"}",
        );
        let full12 = sample(
            &body,
            "ringgate_tls_handshakes_total{version=\"1.2\",resumed=\"false\"}",
        );
        let plain = sample(
            &body,
            "ringgate_tls_handshake_failures_total{reason=\"plain_http\"}",
        );
        (full13 == 1 && resumed13 == 6 && full12 == 1 && plain == 1)
            .then_some(body.clone())
            .ok_or(body)
    });
    assert!(body.is_ok(), "{body:?}");
    let logged = eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let v13 = text.lines().filter(|l| l.ends_with(" TLSv1.3")).count();
        let v12 = text.lines().filter(|l| l.ends_with(" TLSv1.2")).count();
        (v13 == 7 && v12 == 1).then_some(()).ok_or(text)
    });
    let _ = std::fs::remove_file(&log);
    assert!(logged.is_ok(), "access log: {logged:?}");
}

/// `openssl s_client` that sends one GET and prints what came back, with
/// the handshake summary (`-ign_eof` waits for the response).
fn s_client_request(port: u16, args: &[&str]) -> String {
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "site.test",
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().expect("openssl output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Proxy B terminates TLS for `backend.test` in front of `backend`, with
/// an admin port for its handshake counters; proxy A goes to B over TLS
/// with `upstream_tls`.
fn tls_chain(ca: &mut TestCa, backend: &Backend, upstream_tls: &str) -> (Proxy, Proxy, u16) {
    let cert = ca.server("backend", &["backend.test"]);
    let admin = ringgate_tests::free_port();
    let b = Proxy::start(
        &(ProxyConfig::new(backend.addr())
            .listener_extra("tls", &tls_table(&[&cert], ""))
            .to_toml()
            + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n")),
    );
    let a = ProxyConfig::new(([127, 0, 0, 1], b.port).into())
        .upstream_extra("tls", upstream_tls)
        .start();
    (a, b, admin)
}

#[test]
fn upstream_tls_verifies_the_backend_and_pools_the_connection() {
    let mut ca = TestCa::new("ringgate test CA");
    let backend = Backend::start("ok", Behaviour::Ok);
    let upstream_tls = format!(
        "{{ server_name = \"backend.test\", ca = \"{}\" }}",
        ca.cert.display()
    );
    let (a, _b, admin) = tls_chain(&mut ca, &backend, &upstream_tls);
    let mut client = ringgate_tests::Client::connect(a.port);
    for i in 0..10 {
        let r = client.get(&format!("/r{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body_str());
    }
    assert_eq!(backend.records().len(), 10);
    // Ten requests, one handshake: the TLS connection went back to the pool.
    let handshakes = eventually(Duration::from_secs(3), || {
        let body = metrics(admin);
        let n = sample(
            &body,
            "ringgate_tls_handshakes_total{version=\"1.3\",resumed=\"false\"}",
        );
        (n >= 1).then_some(n).ok_or(body)
    });
    assert_eq!(handshakes, Ok(1));
    // B saw the hop as https.
    let rec = backend.records().pop().unwrap();
    let forwarded = rec.header("forwarded").unwrap_or_default();
    assert!(forwarded.ends_with("proto=https"), "{forwarded}");
}

#[test]
fn upstream_tls_refuses_a_wrong_name_or_an_unknown_ca_with_502() {
    let mut ca = TestCa::new("ringgate test CA");
    let backend = Backend::start("ok", Behaviour::Ok);
    let wrong_name = format!(
        "{{ server_name = \"other.test\", ca = \"{}\" }}",
        ca.cert.display()
    );
    // No ca: the built-in public roots, which do not include the test CA.
    for upstream_tls in [wrong_name.as_str(), "{ server_name = \"backend.test\" }"] {
        let (a, _b, _) = tls_chain(&mut ca, &backend, upstream_tls);
        let mut client = ringgate_tests::Client::connect(a.port);
        let r = client.get("/x");
        assert_eq!(r.status, 502, "{upstream_tls}: {}", r.body_str());
        let logged = eventually(Duration::from_secs(3), || {
            let log = a.stderr();
            log.contains("TLS handshake failed")
                .then_some(())
                .ok_or(log)
        });
        assert!(logged.is_ok(), "{upstream_tls}: {logged:?}");
    }
    assert!(
        backend.records().is_empty(),
        "nothing may reach the backend"
    );
}

#[test]
fn health_checks_of_a_tls_upstream_speak_tls() {
    // Probes sent in plain HTTP to B's TLS port would get its plain 400
    // and mark the backend down (fall = 2): requests would then get 503.
    let mut ca = TestCa::new("ringgate test CA");
    let backend = Backend::start("ok", Behaviour::Ok);
    let cert = ca.server("backend", &["backend.test"]);
    let b = tls_proxy(&backend, &[&cert], "");
    let a = ProxyConfig::new(([127, 0, 0, 1], b.port).into())
        .upstream_extra(
            "tls",
            &format!(
                "{{ server_name = \"backend.test\", ca = \"{}\" }}",
                ca.cert.display()
            ),
        )
        .upstream_extra(
            "health_check",
            "{ path = \"/health\", interval = \"50ms\", timeout = \"40ms\", fall = 2 }",
        )
        .start();
    let probed = eventually(Duration::from_secs(5), || {
        let n = backend.targets().iter().filter(|t| *t == "/health").count();
        (n >= 4).then_some(()).ok_or(format!("{n} probes so far"))
    });
    assert!(probed.is_ok(), "{probed:?}");
    let mut client = ringgate_tests::Client::connect(a.port);
    assert_eq!(client.get("/after-probes").status, 200);
    let probe = backend
        .records()
        .into_iter()
        .find(|r| r.target == "/health")
        .unwrap();
    assert_eq!(probe.header("host").as_deref(), Some("backend.test"));
}

#[test]
fn upstream_tls_presents_a_client_certificate_when_configured() {
    // B asks for client certificates from the test CA; A presents one.
    let mut ca = TestCa::new("ringgate test CA");
    let backend = Backend::start("ok", Behaviour::Ok);
    let cert = ca.server("backend", &["backend.test"]);
    let me = ca.client("proxy-a", "proxy-a");
    let extra = format!(
        ", client_ca = \"{}\", client_subject_header = \"X-Client-Subject\"",
        ca.cert.display()
    );
    let b = tls_proxy(&backend, &[&cert], &extra);
    let with_cert = format!(
        "{{ server_name = \"backend.test\", ca = \"{}\", client_certificate = {} }}",
        ca.cert.display(),
        me.toml()
    );
    let without = format!(
        "{{ server_name = \"backend.test\", ca = \"{}\" }}",
        ca.cert.display()
    );
    for (upstream_tls, status) in [(with_cert, 200), (without, 502)] {
        let a = ProxyConfig::new(([127, 0, 0, 1], b.port).into())
            .upstream_extra("tls", &upstream_tls)
            .start();
        let mut client = ringgate_tests::Client::connect(a.port);
        assert_eq!(client.get("/m").status, status, "{upstream_tls}");
    }
    let recs = backend.records();
    assert_eq!(recs.len(), 1, "only the request with a certificate arrives");
    assert_eq!(
        recs[0].header("x-client-subject").as_deref(),
        Some("CN=proxy-a")
    );
}
