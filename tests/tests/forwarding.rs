//! Requests and responses going through the proxy intact: bodies, keep-alive,
//! pipelining, HTTP/1.0, `Expect: 100-continue`, real curl.

use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::Duration;

use ringgate_tests::proxy::{curl, run_with_timeout, write_temp};
use ringgate_tests::{wire, Backend, Behaviour, Client, Pattern, ProxyConfig};

const BODY_3MB: usize = 3 * 1024 * 1024;

/// Sends `head` + `body` from a writer thread while this thread reads the
/// response, as a streaming client must.
fn send_concurrently(c: &mut Client, head: String, body: Vec<u8>) -> ringgate_tests::Response {
    let mut w = c.writer();
    let writer = thread::spawn(move || {
        w.write_all(head.as_bytes())?;
        w.write_all(&body)
    });
    let r = c
        .read_final()
        .unwrap_or_else(|e| panic!("reading the echoed response: {e}"));
    writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("writing the request body: {e}"));
    r
}

#[test]
fn body_of_3_mb_round_trips_with_content_length() {
    let backend = Backend::start("echo", Behaviour::Echo);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let data = Pattern::new(1).take(BODY_3MB);
    let mut c = Client::connect(proxy.port);
    let head = format!("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {BODY_3MB}\r\n\r\n");
    let r = send_concurrently(&mut c, head, data.clone());
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len(), "echoed length");
    assert!(r.body == data, "echoed bytes differ");
    let rec = &backend.records()[0];
    assert_eq!(rec.body_len, BODY_3MB as u64);
    assert!(rec.body == data, "backend received different bytes");
}

#[test]
fn body_of_3_mb_round_trips_chunked() {
    let backend = Backend::start("echo", Behaviour::Echo);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let data = Pattern::new(2).take(BODY_3MB);
    // Irregular chunk sizes, so no chunk boundary lines up with a read.
    let mut body = Vec::new();
    let sizes = [1usize, 100, 8192, 65_536, 100_003, 7];
    let (mut off, mut i) = (0, 0);
    while off < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - off);
        body.extend_from_slice(&wire::chunk(&data[off..off + n]));
        off += n;
        i += 1;
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut c = Client::connect(proxy.port);
    let head =
        "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_string();
    let r = send_concurrently(&mut c, head, body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len(), "echoed length");
    assert!(r.body == data, "echoed bytes differ");
    let rec = &backend.records()[0];
    assert!(
        rec.body_complete,
        "backend saw an incomplete body: {:?}",
        rec.error
    );
    assert!(rec.body == data, "backend received different bytes");
}

#[test]
fn fifty_keepalive_requests_share_one_client_connection_and_pooled_upstreams() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    for i in 0..50 {
        let path = format!("/k{i}");
        let r = c.get(&path);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body_str(), backend.ok_body(&path), "request {i}");
    }
    assert_eq!(backend.records().len(), 50);
    let conns = backend.connections();
    assert!(
        conns < 50,
        "backend saw {conns} TCP connections for 50 requests: upstream connections are not pooled"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    c.send(
        b"GET /p1 HTTP/1.1\r\nHost: test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: test\r\n\r\nGET /p3 HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    for p in ["/p1", "/p2", "/p3"] {
        let r = c
            .read_final()
            .unwrap_or_else(|e| panic!("response for {p}: {e}"));
        assert_eq!(r.status, 200, "{p}: {r:?}");
        assert_eq!(r.body_str(), backend.ok_body(p), "responses out of order");
    }
}

#[test]
fn http10_client_is_served_and_the_connection_closes() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(b"GET /old HTTP/1.0\r\nHost: test\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), backend.ok_body("/old"));
    assert!(
        r.header("transfer-encoding").is_none(),
        "chunked response sent to an HTTP/1.0 client: {r:?}"
    );
    c.wait_closed(Duration::from_secs(5))
        .expect("HTTP/1.0 connection without keep-alive must close after the response");
}

#[test]
fn http10_keepalive_client_keeps_its_connection_and_the_upstream_one() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).route_prefix("/o").start();
    let mut c = Client::connect(proxy.port);
    // What `ab -k` sends.
    let req = b"GET /old HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n";
    for i in 0..5 {
        let r = c.request(req);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body_str(), backend.ok_body("/old"));
        assert!(r.header("transfer-encoding").is_none(), "{r:?}");
        assert_eq!(
            r.header("connection").map(|v| v.to_ascii_lowercase()),
            Some("keep-alive".to_owned()),
            "a 1.0 client keeps the connection only when told: {r:?}"
        );
    }
    assert_eq!(backend.records().len(), 5);
    assert_eq!(backend.connections(), 1, "upstream connection reused");
    // A refusal the proxy makes itself keeps the connection too.
    let r = c.request(b"GET /nowhere HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        r.header("connection").as_deref(),
        Some("keep-alive"),
        "{r:?}"
    );
    // A request without keep-alive gets the last response on the connection.
    let r = c.request(b"GET /old/last HTTP/1.0\r\nHost: test\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection").as_deref(), Some("close"), "{r:?}");
    c.wait_closed(Duration::from_secs(5))
        .expect("1.0 request without keep-alive must close after the response");
}

#[test]
fn expect_100_continue_gets_interim_response_then_final() {
    let backend = Backend::start("echo", Behaviour::Echo);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c
        .read_response()
        .unwrap_or_else(|e| panic!("no `100 Continue` before the body was sent: {e}"));
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue, got {interim:?}"
    );
    assert_eq!(interim.version, "HTTP/1.1");
    c.send(b"hello world");
    let r = c.read_final().expect("final response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "hello world");
    let recs = backend.records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].body, b"hello world", "backend did not get the body");
}

#[test]
fn curl_post_with_expect_100_continue_round_trips() {
    let curl = curl();
    let backend = Backend::start("echo", Behaviour::Echo);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let data = Pattern::new(3).take(64 * 1024);
    let file = write_temp("ringgate-curl-body", "bin", &data);
    let out_file = ringgate_tests::proxy::temp_path("ringgate-curl-out", "bin");
    // curl adds `Expect: 100-continue` by itself for bodies over 1 KiB (or
    // 1 MiB in newer versions); the explicit header makes it version-proof.
    let out = run_with_timeout(
        Command::new(&curl)
            .args([
                "-sS",
                "-v",
                "--max-time",
                "10",
                "-H",
                "Expect: 100-continue",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg("-o")
            .arg(&out_file)
            .args(["-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{}/echo", proxy.port)),
        Duration::from_secs(15),
    );
    let got = std::fs::read(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&out_file);
    assert!(out.success, "curl failed ({:?}): {}", out.code, out.stderr);
    assert_eq!(out.stdout, "200", "curl status; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("HTTP/1.1 100 Continue"),
        "curl never saw `100 Continue` (it sends the body anyway after 1 s):\n{}",
        out.stderr
    );
    assert_eq!(got.len(), data.len(), "echoed length");
    assert!(got == data, "echoed bytes differ");
    let recs = backend.records();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].body == data, "backend got different bytes");
}

#[test]
fn curl_get_works() {
    let curl = curl();
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let out_file = ringgate_tests::proxy::temp_path("ringgate-curl-out", "txt");
    let out = run_with_timeout(
        Command::new(&curl)
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(&out_file)
            .args(["-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{}/hello", proxy.port)),
        Duration::from_secs(15),
    );
    let body = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    assert!(out.success, "curl failed ({:?}): {}", out.code, out.stderr);
    assert_eq!(out.stdout, "200");
    assert_eq!(body, backend.ok_body("/hello"));
}

#[test]
fn chunked_response_is_relayed() {
    let backend = Backend::start("b", Behaviour::Chunked);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.get("/c");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), backend.ok_body("/c"));
    // The connection stays usable.
    let r = c.get("/c2");
    assert_eq!(r.body_str(), backend.ok_body("/c2"));
}

#[test]
fn close_delimited_response_is_relayed() {
    let backend = Backend::start("b", Behaviour::CloseDelimited);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.get("/cd");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), backend.ok_body("/cd"));
}

/// RFC 9110 §7.6.3: a gateway names itself in `Via` on each request it
/// forwards, after what earlier proxies said.
#[test]
fn a_forwarded_request_names_the_proxy_in_via_after_earlier_proxies() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    assert_eq!(
        c.request(b"GET /a HTTP/1.1\r\nHost: x\r\nVia: 1.0 corp-proxy\r\n\r\n")
            .status,
        200
    );
    assert_eq!(
        c.request(b"GET /b HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .status,
        200
    );
    let records = backend.records();
    let first = records[0].header("via").expect("a Via");
    let ours = first.strip_prefix("1.0 corp-proxy, 1.1 ").expect(&first);
    assert!(
        ours.starts_with("ringgate-") && ours.len() == 21,
        "the process's pseudonym: {first:?}"
    );
    assert_eq!(
        records[1].header("via").as_deref(),
        Some(&*format!("1.0 {ours}"))
    );

    let backend = Backend::start("b", Behaviour::Ok);
    let named = ProxyConfig::new(backend.addr())
        .server("via", "\"edge-7\"")
        .start();
    Client::connect(named.port).get("/c");
    assert_eq!(
        backend.records()[0].header("via").as_deref(),
        Some("1.1 edge-7")
    );

    let backend = Backend::start("b", Behaviour::Ok);
    let off = ProxyConfig::new(backend.addr())
        .server("via", "\"off\"")
        .start();
    Client::connect(off.port).get("/d");
    assert_eq!(backend.records()[0].header("via"), None);
}

/// An upstream that points back at the proxy's own listener: the request
/// comes back naming this proxy in `Via` and is answered 508 there, instead
/// of being forwarded to itself until every connection is spent.
#[test]
fn a_request_that_loops_back_to_the_proxy_gets_508() {
    let port = ringgate_tests::free_port();
    let proxy = ringgate_tests::Proxy::start(&format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{port}\"\n\n\
         [[routes]]\nlistener = \"web\"\nupstream = \"self\"\n\n\
         [[upstreams]]\nname = \"self\"\nbackends = [{{ address = \"127.0.0.1:{port}\" }}]\n"
    ));
    let started = std::time::Instant::now();
    let mut c = Client::connect(proxy.port);
    let r = c.request(b"GET /loop HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 508, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The connection and the proxy serve on.
    assert_eq!(
        c.request(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n").status,
        508
    );
}

/// RFC 9110 §7.6.2: an OPTIONS request with `Max-Forwards: 0` is answered
/// by the proxy as its final recipient; with more hops it goes up with one
/// less. Other methods' Max-Forwards pass untouched.
#[test]
fn max_forwards_on_options_is_answered_at_zero_and_decremented_otherwise() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(b"OPTIONS /a HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        backend.targets().is_empty(),
        "the backend saw {:?}",
        backend.targets()
    );
    assert_eq!(
        c.request(b"OPTIONS /b HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\n\r\n")
            .status,
        200
    );
    assert_eq!(
        c.request(b"GET /c HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n")
            .status,
        200
    );
    let records = backend.records();
    let targets: Vec<_> = records.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/b", "/c"]);
    assert_eq!(records[0].header("max-forwards").as_deref(), Some("4"));
    assert_eq!(records[1].header("max-forwards").as_deref(), Some("0"));
}

/// A backend that reads `_` as `-` (CGI and WSGI servers map both to one
/// variable) must not find a client's `X_Forwarded_For` beside the proxy's
/// own X-Forwarded-For, nor its own spelling of a field the route removes,
/// sets or the proxy writes (the request id): the proxy drops those
/// spellings as it drops the fields themselves.
#[test]
fn a_clients_underscore_spelling_of_a_field_the_proxy_writes_or_removes_is_dropped() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .server("request_id", "\"X-Request-Id\"")
        .route_extra(
            "request_headers",
            "{ set = { X-Env = \"prod\" }, remove = [\"x-internal-user\"] }",
        )
        .start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(
        b"GET /a HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 6.6.6.6\r\nX_FORWARDED_PROTO: https\r\n\
          x_forwarded_host: evil.example\r\nKeep_Alive: 1\r\nProxy_Connection: x\r\nX_Env: dev\r\n\
          X_Internal_User: admin\r\nX_Request_Id: forged\r\nX_Unrelated: kept\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let rec = backend
        .records()
        .pop()
        .expect("the backend got the request");
    let underscored: Vec<&str> = rec
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.contains('_'))
        .collect();
    assert_eq!(underscored, ["X_Unrelated"], "{:?}", rec.headers);
    assert_eq!(rec.header("x-env").as_deref(), Some("prod"));
    assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

/// IIS's URL Rewrite, Symfony and Zend before CVE-2018-14773, and the
/// applications built on them take `X-Original-URL` or `X-Rewrite-URL` as
/// the path they serve: a client's `GET /public` with `X-Original-URL:
/// /admin/secret` would take the public route and be served the admin
/// page. At the edge no client has a reason to send them: they are
/// dropped, in any spelling.
#[test]
fn a_clients_path_override_fields_never_reach_the_backend() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(
        b"GET /public HTTP/1.1\r\nHost: t\r\nX-Original-URL: /admin/secret\r\n\
          x-rewrite-url: /admin/secret\r\nX_Original_Url: /admin/x\r\nX-Original-Method: GET\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let rec = backend
        .records()
        .pop()
        .expect("the backend got the request");
    let names: Vec<String> = rec
        .headers
        .iter()
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect();
    for dropped in ["x-original-url", "x-rewrite-url", "x_original_url"] {
        assert!(
            !names.iter().any(|n| n == dropped),
            "{dropped}: {:?}",
            rec.headers
        );
    }
    assert!(
        names.iter().any(|n| n == "x-original-method"),
        "{:?}",
        rec.headers
    );
}
