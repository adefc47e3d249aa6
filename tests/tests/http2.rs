//! HTTP/2 to clients: ALPN `h2` with curl, prior knowledge on a cleartext
//! listener, bodies both ways through the HTTP/1.1 exchange, many streams
//! multiplexed by h2load, and the known floods and stalls from a
//! frame-level client (`h2wire`), each ending with the attacker's
//! connection closed while other clients are still served.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ringgate_tests::h2wire::{self, frame, request_block, H2Client};
use ringgate_tests::pki::TestCa;
use ringgate_tests::proxy::{
    body_before_status, curl, curl_status, run_with_timeout, status_line, temp_path, write_temp,
    CommandOutput,
};
use ringgate_tests::{eventually, Backend, Behaviour, Pattern, Proxy, ProxyConfig};

/// A cleartext listener that accepts HTTP/2 with prior knowledge.
fn h2c(backend: &Backend) -> ProxyConfig {
    ProxyConfig::new(backend.addr()).listener_extra("http2", "true")
}

fn prior_knowledge(port: u16, path: &str, extra: &[&str]) -> CommandOutput {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args = vec!["--http2-prior-knowledge"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl_status(&args)
}

/// A legitimate client is still served while (or after) an attack runs.
fn still_serves(proxy: &Proxy) {
    let out = prior_knowledge(proxy.port, "/ok", &["-o", "/dev/null"]);
    assert_eq!(status_line(&out), "200 2", "{}", out.stderr);
}

#[test]
fn curl_negotiates_h2_over_tls_and_the_backend_gets_http11() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .listener_extra("tls", &format!("{{ certificates = [{}] }}", cert.toml()))
        .start();
    let resolve = format!("site.test:{}:127.0.0.1", proxy.port);
    let url = format!("https://site.test:{}/hello?x=1", proxy.port);
    let ca_path = ca.cert.to_string_lossy().into_owned();
    let out = curl_status(&[
        "--http2",
        "-v",
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
        "-H",
        "cookie: a=1",
        "-H",
        "cookie: b=2",
        &url,
    ]);
    assert_eq!(status_line(&out), "200 2", "{}", out.stderr);
    assert!(
        out.stderr.contains("ALPN: server accepted h2"),
        "{}",
        out.stderr
    );
    assert!(
        body_before_status(&out).starts_with(&backend.ok_body("/hello?x=1")),
        "{}",
        out.stdout
    );
    let rec = backend
        .records()
        .pop()
        .expect("the backend saw the request");
    assert_eq!(
        rec.header("host").as_deref(),
        Some(&*format!("site.test:{}", proxy.port))
    );
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("https"));
    // RFC 9113 §8.2.3: the cookie fields are one again for HTTP/1.1.
    assert_eq!(rec.header("cookie").as_deref(), Some("a=1; b=2"));
}

#[test]
fn a_tls_listener_with_http2_off_offers_only_http11() {
    let mut ca = TestCa::new("ringgate test CA");
    let cert = ca.server("site", &["site.test"]);
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .listener_extra("tls", &format!("{{ certificates = [{}] }}", cert.toml()))
        .listener_extra("http2", "false")
        .start();
    let resolve = format!("site.test:{}:127.0.0.1", proxy.port);
    let url = format!("https://site.test:{}/", proxy.port);
    let ca_path = ca.cert.to_string_lossy().into_owned();
    let out = curl_status(&[
        "--http2",
        "-v",
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
        &url,
    ]);
    assert_eq!(status_line(&out), "200 1.1", "{}", out.stderr);
    assert!(
        out.stderr.contains("ALPN: server accepted http/1.1"),
        "{}",
        out.stderr
    );
}

#[test]
fn prior_knowledge_works_only_where_the_listener_allows_it_and_http11_still_does() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).start();
    let out = prior_knowledge(proxy.port, "/a", &[]);
    assert_eq!(status_line(&out), "200 2", "{}", out.stderr);
    let out = curl_status(&[&format!("http://127.0.0.1:{}/b", proxy.port)]);
    assert_eq!(
        status_line(&out),
        "200 1.1",
        "HTTP/1.1 beside h2c: {}",
        out.stderr
    );

    let plain = ProxyConfig::new(backend.addr()).start();
    let out = prior_knowledge(plain.port, "/c", &[]);
    assert!(
        !status_line(&out).ends_with(" 2"),
        "h2c on a listener without http2: {}",
        out.stdout
    );
    assert!(
        backend.reached("/c").is_err(),
        "the preface must not reach a backend"
    );
}

#[test]
fn curl_uploading_a_body_it_was_refused_gets_the_413() {
    // The answer comes before the body: a stream reset with NO_ERROR at
    // that point is allowed (RFC 9113 §8.1), but curl 7.88 then reports
    // error 92 and no status, so the proxy reads the rest and drops it.
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).route_extra("max_body", "1000").start();
    let body = write_temp("h2-upload", "bin", &vec![b'x'; 8 << 20]);
    let data = format!("@{}", body.display());
    for framing in [
        &["-H", "Expect:"][..],
        &["-H", "Expect:", "-H", "Content-Length:"],
    ] {
        let mut args = vec!["-o", "/dev/null", "-X", "POST", "--data-binary", &data];
        args.extend_from_slice(framing);
        let out = prior_knowledge(proxy.port, "/upload", &args);
        assert_eq!(status_line(&out), "413 2", "{framing:?}: {}", out.stderr);
    }
    still_serves(&proxy);
}

#[test]
fn a_refused_upload_that_never_ends_is_reset_after_the_lingering_time() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend)
        .route_extra("max_body", "1000")
        .limit("lingering_time", "\"1s\"")
        .start();
    let mut client = H2Client::connect(proxy.port);
    let block = request_block("POST", "/upload", &[("content-length", "1000000000000")]);
    client
        .send(&frame(h2wire::HEADERS, h2wire::END_HEADERS, 1, &block))
        .unwrap();
    let started = Instant::now();
    let mut w = client.stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let sender = std::thread::spawn(move || {
        let data = frame(h2wire::DATA, 0, 1, &[b'x'; 1024]);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed)
            && started.elapsed() < Duration::from_secs(8)
        {
            if std::io::Write::write_all(&mut w, &data).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let answer = client
        .until_frame(h2wire::HEADERS, 1, Duration::from_secs(5))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the 413 came only after {:?}",
        started.elapsed()
    );
    assert!(!answer.payload.is_empty());
    client
        .until_frame(h2wire::RST_STREAM, 1, Duration::from_secs(8))
        .unwrap();
    let reset_after = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        reset_after >= Duration::from_millis(900) && reset_after < Duration::from_secs(5),
        "reset after {reset_after:?}, lingering_time is 1s"
    );
    drop(client);
    sender.join().unwrap();
    still_serves(&proxy);
}

#[test]
fn bodies_stream_both_ways_and_framing_is_converted() {
    let backend = Backend::builder("echo")
        .route("/echo", Behaviour::Echo)
        .route("/large", Behaviour::Large(3 << 20))
        .route("/chunked", Behaviour::Chunked)
        .route("/close", Behaviour::CloseDelimited)
        .start();
    let proxy = h2c(&backend).start();
    let pattern = Pattern::new(7);
    let upload = pattern.take(1 << 20);
    let file = write_temp("h2-upload", "bin", &upload);
    let file_arg = format!("@{}", file.display());

    let cksum = |cmd: String| {
        run_with_timeout(
            Command::new("sh").arg("-c").arg(cmd),
            Duration::from_secs(25),
        )
    };
    let expected = cksum(format!("cksum < {}", file.display()));
    // A body with content-length.
    let out = cksum(format!(
        "{} -sS --http2-prior-knowledge --max-time 20 --data-binary {file_arg} http://127.0.0.1:{}/echo | cksum",
        curl().display(),
        proxy.port
    ));
    assert_eq!(out.stdout, expected.stdout, "{}", out.stderr);
    // A body without content-length (stdin): chunked for the backend.
    let out = cksum(format!(
        "{} -sS --http2-prior-knowledge --max-time 20 -T - http://127.0.0.1:{}/echo < {} | cksum",
        curl().display(),
        proxy.port,
        file.display()
    ));
    assert_eq!(out.stdout, expected.stdout, "{}", out.stderr);
    let rec = backend
        .records()
        .into_iter()
        .rev()
        .find(|r| r.target == "/echo")
        .expect("recorded");
    assert_eq!(rec.header("transfer-encoding").as_deref(), Some("chunked"));

    let sizes = |path: &str| {
        let out = prior_knowledge(
            proxy.port,
            path,
            &["-o", "/dev/null", "-w", "%{size_download}\n"],
        );
        out.stdout.lines().next().unwrap_or("").to_string()
    };
    assert_eq!(sizes("/large"), (3u64 << 20).to_string());
    let chunked = prior_knowledge(proxy.port, "/chunked", &[]);
    assert_eq!(status_line(&chunked), "200 2", "{}", chunked.stderr);
    let close = prior_knowledge(proxy.port, "/close", &[]);
    assert_eq!(status_line(&close), "200 2", "{}", close.stderr);
    assert!(!body_before_status(&close).is_empty());
    let _ = std::fs::remove_file(file);
}

#[test]
fn h2load_multiplexes_streams_and_every_one_is_answered() {
    if !Path::new("/usr/bin/h2load").exists() && which("h2load").is_none() {
        panic!("h2load not found: CI installs nghttp2-client");
    }
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).start();
    let out = run_with_timeout(
        Command::new("h2load")
            .args(["-c", "4", "-m", "10", "-n", "4000"])
            .arg(format!("http://127.0.0.1:{}/", proxy.port)),
        Duration::from_secs(60),
    );
    assert!(out.stdout.contains("4000 succeeded"), "{}", out.stdout);
    assert!(out.stdout.contains("4000 2xx"), "{}", out.stdout);
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// HEADERS + RST_STREAM in a loop (CVE-2023-44487).
#[test]
fn rapid_reset_closes_the_attacker_with_enhance_your_calm() {
    let backend = Backend::start("ok", Behaviour::Stall(Duration::from_millis(200)));
    let proxy = h2c(&backend).start();
    let mut attacker = H2Client::connect(proxy.port);
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(
            h2wire::HEADERS,
            h2wire::END_HEADERS | h2wire::END_STREAM,
            id,
            &request_block("GET", "/x", &[]),
        ));
        burst.extend(frame(h2wire::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = attacker.send(&burst);
    let goaway = attacker.until_closed(Duration::from_secs(10)).unwrap();
    assert_eq!(goaway, Some(h2wire::ENHANCE_YOUR_CALM));
    still_serves(&proxy);
    eventually(Duration::from_secs(3), || {
        proxy
            .stderr()
            .contains("rapid reset")
            .then_some(())
            .ok_or_else(|| proxy.stderr())
    })
    .unwrap();
    // Far fewer than the 1000 streams ever reached the backend.
    assert!(
        backend.records().len() < 300,
        "{} requests reached the backend",
        backend.records().len()
    );
}

/// A header block that never ends (CVE-2024-27316).
#[test]
fn a_continuation_flood_is_cut_at_the_limit() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).http2("max_continuation_frames", "8").start();
    let mut attacker = H2Client::connect(proxy.port);
    let mut flood = frame(
        h2wire::HEADERS,
        h2wire::END_STREAM,
        1,
        &request_block("GET", "/x", &[]),
    );
    for i in 0..10_000 {
        let mut field = Vec::new();
        h2wire::literal(&mut field, &format!("x-filler-{i}"), b"v");
        flood.extend(frame(h2wire::CONTINUATION, 0, 1, &field));
    }
    let _ = attacker.send(&flood);
    let goaway = attacker.until_closed(Duration::from_secs(10)).unwrap();
    assert_eq!(goaway, Some(h2wire::ENHANCE_YOUR_CALM));
    assert!(backend.reached("/x").is_err());
    still_serves(&proxy);
}

/// One 4 KiB field in the HPACK table, referenced a thousand times: 4 MB
/// once decoded from 5 KB on the wire.
#[test]
fn an_hpack_bomb_is_refused_before_it_is_decoded_in_full() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).start();
    let mut attacker = H2Client::connect(proxy.port);
    let mut block = request_block("GET", "/bomb", &[]);
    h2wire::literal_indexed(&mut block, "x-bomb", &[b'a'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, 1000));
    let _ = attacker.send(&frame(
        h2wire::HEADERS,
        h2wire::END_HEADERS | h2wire::END_STREAM,
        1,
        &block,
    ));
    // A 431, a reset or a GOAWAY; never the request upstream.
    // Settings and window updates are the connection's, not the answer.
    let answered = loop {
        match attacker.read_frame(Duration::from_secs(5)) {
            Ok(Some(f)) if f.kind == h2wire::SETTINGS || f.kind == h2wire::WINDOW_UPDATE => {}
            Ok(Some(f)) => break Some(f.kind),
            _ => break None,
        }
    };
    assert!(
        matches!(
            answered,
            Some(h2wire::HEADERS | h2wire::RST_STREAM | h2wire::GOAWAY) | None
        ),
        "{answered:?}"
    );
    assert!(
        backend.reached("/bomb").is_err(),
        "the bomb reached the backend"
    );
    still_serves(&proxy);
}

/// PING and SETTINGS floods from a client that never reads what they ask
/// for: the proxy neither queues without bound nor keeps the connection.
#[test]
fn ping_and_settings_floods_from_a_client_that_never_reads_are_closed() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).limit("send_timeout", "\"2s\"").start();
    for kind in [h2wire::PING, h2wire::SETTINGS] {
        let mut attacker = H2Client::connect(proxy.port);
        let payload: &[u8] = if kind == h2wire::PING { &[7; 8] } else { &[] };
        let one = frame(kind, 0, 0, payload);
        let writer = attacker.stream.try_clone().unwrap();
        let started = Instant::now();
        let flood = std::thread::spawn(move || {
            let mut writer = writer;
            let block: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
            use std::io::Write;
            while started.elapsed() < Duration::from_secs(15) {
                if writer.write_all(&block).is_err() {
                    return true;
                }
            }
            false
        });
        // Not reading: the writes fail once the proxy closes.
        let closed = flood.join().unwrap();
        assert!(
            closed,
            "kind {kind}: the proxy kept a flooding connection open for 15 s"
        );
        let _ = attacker.until_closed(Duration::from_secs(5));
        still_serves(&proxy);
    }
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("too many control frames per second"),
        "{stderr}"
    );
}

/// A client that opens no window for the response: the stream is reset
/// after the send timeout instead of waiting (and holding the upstream
/// connection) for ever.
#[test]
fn a_zero_window_client_is_reset_after_the_send_timeout() {
    let backend = Backend::start("large", Behaviour::Large(1 << 20));
    let proxy = h2c(&backend).limit("send_timeout", "\"1s\"").start();
    let mut client = H2Client::connect_with(proxy.port, &[(h2wire::INITIAL_WINDOW_SIZE, 0)]);
    let _ = client.send(&frame(
        h2wire::HEADERS,
        h2wire::END_HEADERS | h2wire::END_STREAM,
        1,
        &request_block("GET", "/big", &[]),
    ));
    let started = Instant::now();
    let reset = client
        .until_frame(h2wire::RST_STREAM, 1, Duration::from_secs(8))
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "reset before the send timeout"
    );
    assert!(reset.error_code().is_some());
    still_serves(&proxy);
}

/// A request that promises a body and never sends it gets an answer (or a
/// reset) after the body read timeout.
#[test]
fn a_stream_that_never_sends_its_body_is_ended_after_the_body_timeout() {
    // A backend that answers once the whole body is in.
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).limit("body_read_timeout", "\"1s\"").start();
    let mut client = H2Client::connect(proxy.port);
    let block = request_block("POST", "/upload", &[("content-length", "100")]);
    let _ = client.send(&frame(h2wire::HEADERS, h2wire::END_HEADERS, 1, &block));
    let started = Instant::now();
    let ended = loop {
        match client.read_frame(Duration::from_secs(8)) {
            Ok(Some(f))
                if f.stream == 1 && (f.kind == h2wire::HEADERS || f.kind == h2wire::RST_STREAM) =>
            {
                break f.kind
            }
            Ok(Some(_)) => continue,
            other => panic!(
                "stream 1 never ended: {:?}",
                other.map(|f| f.map(|f| f.kind))
            ),
        }
    };
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended before the body timeout ({ended})"
    );
    still_serves(&proxy);
}

/// A drain says GOAWAY to an idle HTTP/2 connection and closes it.
#[test]
fn a_drain_sends_goaway_to_http2_connections() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = h2c(&backend).start();
    let mut client = H2Client::connect(proxy.port);
    let _ = client.send(&frame(
        h2wire::HEADERS,
        h2wire::END_HEADERS | h2wire::END_STREAM,
        1,
        &request_block("GET", "/one", &[]),
    ));
    client
        .until_frame(h2wire::HEADERS, 1, Duration::from_secs(5))
        .unwrap();
    proxy.signal("-TERM");
    let goaway = client.until_closed(Duration::from_secs(10)).unwrap();
    assert_eq!(goaway, Some(h2wire::NO_ERROR));
}

/// A drain with a stream in flight: GOAWAY first, the stream's response
/// still arrives, then the connection closes.
#[test]
fn a_drain_lets_an_open_stream_finish_after_goaway() {
    let backend = Backend::start("slow", Behaviour::Stall(Duration::from_millis(1500)));
    let proxy = h2c(&backend).start();
    let mut client = H2Client::connect(proxy.port);
    let _ = client.send(&frame(
        h2wire::HEADERS,
        h2wire::END_HEADERS | h2wire::END_STREAM,
        1,
        &request_block("GET", "/slow", &[]),
    ));
    eventually(Duration::from_secs(5), || backend.reached("/slow")).unwrap();
    proxy.signal("-TERM");
    let mut saw_goaway = false;
    let mut saw_response = false;
    loop {
        match client.read_frame(Duration::from_secs(10)) {
            Ok(Some(f)) if f.kind == h2wire::GOAWAY => {
                assert!(!saw_response, "GOAWAY came after the response");
                saw_goaway = true;
            }
            Ok(Some(f)) if f.kind == h2wire::HEADERS && f.stream == 1 => saw_response = true,
            Ok(Some(f)) if f.kind == h2wire::PING && f.flags & h2wire::ACK == 0 => {
                let _ = client.send(&frame(h2wire::PING, h2wire::ACK, 0, &f.payload));
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("still open: {e}"),
        }
    }
    assert!(
        saw_goaway && saw_response,
        "goaway {saw_goaway}, response {saw_response}"
    );
}

/// The access log says what the client spoke.
#[test]
fn the_access_log_shows_http2_requests_as_http2() {
    let backend = Backend::start("ok", Behaviour::Ok);
    let log_path = temp_path("ringgate-h2-access", "log");
    let toml = h2c(&backend).to_toml()
        + &format!(
            "\n[access_log]\npath = {:?}\n",
            log_path.display().to_string()
        );
    let proxy = Proxy::start(&toml);
    let out = prior_knowledge(proxy.port, "/logged?x=1", &[]);
    assert_eq!(status_line(&out), "200 2", "{}", out.stderr);
    let line = eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log_path).map_err(|e| e.to_string())?;
        text.lines()
            .next()
            .map(str::to_owned)
            .ok_or("no line yet".to_string())
    })
    .unwrap();
    assert!(line.contains("\"GET /logged?x=1 HTTP/2.0\" 200 "), "{line}");
    let _ = std::fs::remove_file(log_path);
}
