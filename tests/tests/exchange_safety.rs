//! The exchange made safe (issue 8): no response reaches a client it was not
//! meant for, no request is replayed unless RFC 9110 §9.2.2 allows it, every
//! wait has a deadline, and the protocol points found by the same attack.
//! Each test is named after the finding it reproduces.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use ringgate_tests::procfs::socket_fds;
use ringgate_tests::{assert_refused, eventually, show, Backend, Behaviour, Client, ProxyConfig};

const STRAY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nnot-for-you\n";

fn ok(backend: &Backend, c: &mut Client, target: &str) {
    let r = c.get(target);
    assert_eq!(r.status, 200, "{target}: {r:?}");
    assert_eq!(
        r.body_str(),
        backend.ok_body(target),
        "{target}: body of another request"
    );
}

#[test]
fn unsolicited_response_on_a_pooled_connection_never_reaches_the_next_client() {
    let backend = Backend::start(
        "b",
        Behaviour::ThenUnsolicited {
            delay: Duration::from_millis(100),
            bytes: STRAY.to_vec(),
        },
    );
    let proxy = ProxyConfig::new(backend.addr()).start();
    ok(&backend, &mut Client::connect(proxy.port), "/first");
    // The stray response arrives while the connection idles in the pool.
    thread::sleep(Duration::from_millis(300));
    ok(&backend, &mut Client::connect(proxy.port), "/second");
}

#[test]
fn a_backend_that_sent_a_stray_response_gets_no_connection_reuse() {
    let backend = Backend::builder("b")
        .route(
            "/stray",
            Behaviour::ThenUnsolicited {
                delay: Duration::from_millis(100),
                bytes: STRAY.to_vec(),
            },
        )
        .start();
    let proxy = ProxyConfig::new(backend.addr()).start();
    ok(&backend, &mut Client::connect(proxy.port), "/stray");
    thread::sleep(Duration::from_millis(300));
    // The stray is found on the idle connection: a new one for /a, and
    // then none is reused, though the backend now behaves.
    for (i, target) in ["/a", "/b", "/c"].into_iter().enumerate() {
        ok(&backend, &mut Client::connect(proxy.port), target);
        assert_eq!(backend.connections(), 2 + i, "{target}");
    }
    // Written within a gossip tick: workers buffer their error-log lines.
    ringgate_tests::eventually(Duration::from_secs(2), || {
        let log = proxy.stderr();
        log.contains("sent a response nobody asked for")
            .then_some(())
            .ok_or(log)
    })
    .unwrap_or_else(|log| panic!("no stray line:\n{log}"));
}

#[test]
fn a_tainted_backend_gets_connection_reuse_back_after_the_stray_cooldown() {
    let backend = Backend::builder("b")
        .route(
            "/stray",
            Behaviour::ThenUnsolicited {
                delay: Duration::from_millis(50),
                bytes: STRAY.to_vec(),
            },
        )
        .start();
    let proxy = ProxyConfig::new(backend.addr())
        .pool("stray_cooldown = \"400ms\"")
        .start();
    ok(&backend, &mut Client::connect(proxy.port), "/stray");
    thread::sleep(Duration::from_millis(150));
    ok(&backend, &mut Client::connect(proxy.port), "/a");
    ok(&backend, &mut Client::connect(proxy.port), "/b");
    assert_eq!(backend.connections(), 3, "no reuse while tainted");
    thread::sleep(Duration::from_millis(500));
    ok(&backend, &mut Client::connect(proxy.port), "/c");
    ok(&backend, &mut Client::connect(proxy.port), "/d");
    assert_eq!(backend.connections(), 4, "reuse is back after the cooldown");
}

#[test]
fn early_response_then_hidden_request_in_the_body_never_reaches_a_later_client() {
    let backend = Backend::builder("b")
        .route(
            "/upload",
            Behaviour::AnswerBeforeBody(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ),
        )
        .start();
    let proxy = ProxyConfig::new(backend.addr()).start();
    let hidden = b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        hidden.len()
    );
    // (a) The body goes with the head; (b) the body follows the early answer.
    for body_after_answer in [false, true] {
        let mut attacker = Client::connect(proxy.port);
        if body_after_answer {
            attacker.send(head.as_bytes());
            let r = attacker.read_final().expect("early answer");
            assert_eq!(r.status, 401, "{r:?}");
            let _ = attacker.try_send(hidden);
        } else {
            attacker.send(&[head.as_bytes(), hidden].concat());
            let r = attacker.read_final().expect("early answer");
            assert_eq!(r.status, 401, "{r:?}");
        }
        thread::sleep(Duration::from_millis(200));
        for i in 0..3 {
            ok(
                &backend,
                &mut Client::connect(proxy.port),
                &format!("/victim{i}"),
            );
        }
    }
}

#[test]
fn post_is_sent_once_when_a_reused_connection_closes_without_answering() {
    for retries in [false, true] {
        let backend = Backend::builder("b")
            .route("/p", Behaviour::CloseWithoutResponse)
            .start();
        let mut cfg = ProxyConfig::new(backend.addr());
        if retries {
            cfg = cfg.upstream_extra(
                "retries",
                "{ attempts = 2, on = [\"connect_failure\", \"reset\"] }",
            );
        }
        let proxy = cfg.start();
        let mut c = Client::connect(proxy.port);
        ok(&backend, &mut c, "/warm");
        let r = c.request(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(r.status, 502, "retries {retries}: {r:?}");
        thread::sleep(Duration::from_millis(200));
        let posts = backend.targets().iter().filter(|t| *t == "/p").count();
        assert_eq!(
            posts, 1,
            "retries {retries}: the POST reached the backend {posts} times"
        );
    }
}

#[test]
fn idempotent_get_is_still_retried_once_on_a_fresh_connection() {
    // The replay rule must not lose the safe case: a GET whose reused
    // connection was closed under it is sent again, once.
    let backend = Backend::builder("b")
        .idle_timeout(Duration::from_millis(100))
        .start();
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    ok(&backend, &mut c, "/one");
    thread::sleep(Duration::from_millis(300));
    ok(&backend, &mut c, "/two");
}

/// Sends a `len`-byte POST body from a thread and returns the client's
/// outcome: the response, or the error that ended it.
fn upload(port: u16, target: &str, len: usize) -> Result<ringgate_tests::Response, String> {
    let mut c = Client::connect(port);
    let mut w = c.writer();
    let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    let writer = thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let chunk = vec![b'u'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if w.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    let r = c.read_final().map_err(|e| e.to_string());
    drop(writer);
    r
}

#[test]
fn large_upload_on_a_stale_pooled_connection_gets_a_response() {
    // The backend closes idle connections after 100 ms (Node's default is 5 s).
    let backend = Backend::builder("b")
        .idle_timeout(Duration::from_millis(100))
        .start();
    let proxy = ProxyConfig::new(backend.addr()).start();
    ok(&backend, &mut Client::connect(proxy.port), "/warm");
    thread::sleep(Duration::from_millis(300));
    let r = upload(proxy.port, "/up", 8 << 20).expect("a response, not a silent close");
    assert!(matches!(r.status, 200 | 502), "{r:?}");
}

#[test]
fn upload_cut_by_the_backend_gets_a_502_not_a_silent_close() {
    let backend = Backend::builder("b")
        .route("/up", Behaviour::CloseBeforeBody)
        .start();
    let proxy = ProxyConfig::new(backend.addr()).start();
    let baseline = settled_sockets(proxy.pid());
    // Which half notices the cut first is a race; ten rounds cover both.
    for round in 0..10 {
        ok(&backend, &mut Client::connect(proxy.port), "/warm");
        let r = upload(proxy.port, "/up", 8 << 20)
            .unwrap_or_else(|e| panic!("round {round}: no response, a silent close: {e}"));
        assert_eq!(r.status, 502, "round {round}: {r:?}");
    }
    let took = connections_drop_to(proxy.pid(), baseline, 0, Duration::from_secs(3));
    assert!(took <= Duration::from_secs(2), "closed after {took:?}");
}

/// The proxy's socket count once start-up's own connections (the harness's
/// readiness probe) are gone: the least seen over a short while.
fn settled_sockets(pid: u32) -> usize {
    (0..15)
        .map(|_| {
            thread::sleep(Duration::from_millis(20));
            socket_fds(pid)
        })
        .min()
        .unwrap_or(0)
}

/// Socket descriptors the proxy holds beyond its listeners, sampled until
/// they drop to `want` or `within` passes; returns how long it took.
fn connections_drop_to(pid: u32, baseline: usize, want: usize, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, || {
        let open = socket_fds(pid).saturating_sub(baseline);
        if open <= want {
            Ok(())
        } else {
            Err(format!("{open} connections still open"))
        }
    })
    .unwrap_or_else(|e| panic!("after {:?}: {e}", started.elapsed()));
    started.elapsed()
}

fn one_second_deadlines(backend: &Backend) -> ringgate_tests::Proxy {
    ProxyConfig::new(backend.addr())
        .limit("send_timeout", "\"1s\"")
        .timeouts("response = \"1s\", send = \"1s\"")
        .start()
}

#[test]
fn client_that_never_reads_its_response_is_closed_by_send_timeout() {
    let backend = Backend::start("b", Behaviour::Large(256 << 20));
    let proxy = one_second_deadlines(&backend);
    let baseline = settled_sockets(proxy.pid());
    let s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    (&s).write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    eventually(Duration::from_secs(2), || backend.reached("/big")).unwrap();
    eventually(Duration::from_secs(2), || {
        let open = socket_fds(proxy.pid()).saturating_sub(baseline);
        if open >= 2 {
            Ok(())
        } else {
            Err(format!("{open} connections open, want client and upstream"))
        }
    })
    .unwrap();
    // Neither side reads: the client never, the proxy's write stalls.
    let took = connections_drop_to(proxy.pid(), baseline, 0, Duration::from_secs(3));
    assert!(took <= Duration::from_secs(2), "closed after {took:?}");
    drop(s);
}

#[test]
fn backend_that_stops_reading_a_body_is_closed_by_send_timeout() {
    let backend = Backend::start("b", Behaviour::IgnoreBody(Duration::from_secs(30)));
    let proxy = one_second_deadlines(&backend);
    let baseline = settled_sockets(proxy.pid());
    let port = proxy.port;
    let client = thread::spawn(move || upload(port, "/up", 256 << 20));
    eventually(Duration::from_secs(2), || backend.reached("/up")).unwrap();
    let took = connections_drop_to(proxy.pid(), baseline, 0, Duration::from_secs(4));
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(500),
        "closed after {took:?}"
    );
    let r = client.join().unwrap();
    if let Ok(r) = r {
        assert!(matches!(r.status, 502 | 504), "{r:?}");
    }
}

#[test]
fn response_timeout_runs_while_the_body_uploads() {
    // The client sends half its body and stops (well within
    // body_read_timeout); the backend waits for the rest and never answers.
    let backend = Backend::start("b", Behaviour::Stall(Duration::from_secs(30)));
    let proxy = one_second_deadlines(&backend);
    let baseline = settled_sockets(proxy.pid());
    let mut c = Client::connect(proxy.port);
    c.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello");
    eventually(Duration::from_secs(2), || backend.reached("/slow")).unwrap();
    let started = Instant::now();
    let r = c.read_final().expect("a 504, not a hang");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(c);
    connections_drop_to(proxy.pid(), baseline, 0, Duration::from_secs(2));
}

#[test]
fn endless_interim_responses_end_at_the_response_timeout() {
    let backend = Backend::start("b", Behaviour::EndlessInterim);
    let proxy = one_second_deadlines(&backend);
    let baseline = settled_sockets(proxy.pid());
    let mut c = Client::connect(proxy.port);
    c.set_read_timeout(Duration::from_secs(4));
    c.send(b"GET /interim HTTP/1.1\r\nHost: x\r\n\r\n");
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(4) {
        match c.read_head() {
            Ok(h) if h.status == 102 => continue,
            Ok(h) => {
                last = Some(h.status);
                break;
            }
            Err(_) => break,
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "still going after {:?}",
        started.elapsed()
    );
    assert!(matches!(last, None | Some(502) | Some(504)), "{last:?}");
    drop(c);
    connections_drop_to(proxy.pid(), baseline, 0, Duration::from_secs(2));
}

#[test]
fn absolute_form_target_replaces_host_upstream() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port)
        .request(b"GET http://admin.example/x?y=1 HTTP/1.1\r\nHost: public.example\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    assert_eq!(rec.target, "/x?y=1", "{}", show(&rec.raw_head));
    assert_eq!(
        rec.header("host").as_deref(),
        Some("admin.example"),
        "{}",
        show(&rec.raw_head)
    );
}

#[test]
fn dot_segments_cannot_escape_a_rewrite_prefix() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_prefix("/files/")
        .route_extra("rewrite", "{ prefix = \"/srv/files/\" }")
        .start();
    for target in [
        "/files/../../echo",
        "/files/%2e%2e/%2e%2e/echo",
        "/files/..%2f..%2fecho",
        // Tomcat and Jetty drop a segment's `;parameters` before they
        // resolve dots: `..;` climbs as `..` does ("Breaking Parser Logic").
        "/files/..;/..;/echo",
        "/files/..;jsessionid=1/echo",
        "/files/.;x/%2e%2e%3Bx/echo",
    ] {
        let r = Client::connect(proxy.port).get(target);
        assert_eq!(r.status, 400, "{target}: {r:?}");
    }
    thread::sleep(Duration::from_millis(100));
    assert!(
        backend.targets().is_empty(),
        "reached the backend: {:?}",
        backend.targets()
    );
    let r = Client::connect(proxy.port).get("/files/a.txt");
    assert_eq!(r.status, 200);
    assert_eq!(backend.targets(), ["/srv/files/a.txt"]);
}

#[test]
fn no_content_response_is_forwarded_without_content_length() {
    let backend = Backend::start(
        "b",
        Behaviour::Raw(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n".to_vec()),
    );
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).get("/nc");
    assert_eq!(r.status, 204);
    assert!(!r.has_header("content-length"), "{}", show(&r.raw_head));
    assert!(r.has_header("x-a"));
}

#[test]
fn early_error_response_says_connection_close_when_the_proxy_closes() {
    let backend = Backend::builder("b")
        .route(
            "/big",
            Behaviour::AnswerBeforeBody(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n".to_vec(),
            ),
        )
        .start();
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    c.send(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    let r = c.read_final().expect("the 413");
    assert_eq!(r.status, 413);
    assert!(
        r.says_close(),
        "the proxy closes after an early error without saying so: {}",
        show(&r.raw_head)
    );
    c.wait_closed(Duration::from_secs(2))
        .expect("closed after the 413");
}

#[test]
fn trace_and_fragments_are_refused() {
    assert_refused(501, &[("TRACE", b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n")]);
    assert_refused(
        400,
        &[
            ("fragment", b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("port not digits", b"GET /a HTTP/1.1\r\nHost: x:abc\r\n\r\n"),
        ],
    );
}

/// RFC 9110 §15.2: a server must not send a 1xx to an HTTP/1.0 client,
/// which takes the first status line it reads for the response: the real
/// one would follow as bytes it never asked for. An HTTP/1.1 client still
/// gets the interim response.
#[test]
fn interim_responses_reach_http11_clients_and_never_http10_ones() {
    use std::io::Read as _;
    let backend = Backend::start(
        "b",
        Behaviour::Raw(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                .to_vec(),
        ),
    );
    let proxy = ProxyConfig::new(backend.addr()).start();
    for (version, want_interim) in [("HTTP/1.0", false), ("HTTP/1.1", true)] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write!(
            s,
            "GET /x {version}\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        let statuses: Vec<&str> = text
            .split("\r\n")
            .filter(|l| l.starts_with("HTTP/1."))
            .collect();
        let want: &[&str] = if want_interim {
            &[
                "HTTP/1.1 103 Early Hints",
                "HTTP/1.1 100 Continue",
                "HTTP/1.1 200 OK",
            ]
        } else {
            &["HTTP/1.1 200 OK"]
        };
        assert_eq!(statuses, want, "{version} client got {text:?}");
        assert!(
            text.ends_with("\r\n\r\nok"),
            "{version} client got {text:?}"
        );
    }
}
