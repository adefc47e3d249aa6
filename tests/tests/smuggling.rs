//! Request smuggling: a request hidden in another's body must never reach a
//! backend, and a properly pipelined one must be routed on its own.

use std::time::Duration;

use ringgate_tests::{exchange, show, Backend, Behaviour, Client, ProxyConfig};

fn assert_not_smuggled(raw: &[u8]) {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).route_prefix("/a").start();
    let ex = exchange(proxy.port, raw);
    std::thread::sleep(Duration::from_millis(200));
    let targets = backend.targets();
    assert!(
        !targets.iter().any(|t| t.starts_with("/other")),
        "smuggled request reached the backend; it saw {targets:?} for {}",
        show(raw)
    );
    match ex.response {
        Ok(r) => assert_eq!(r.status, 400, "want 400 for {}; got {r:?}", show(raw)),
        Err(e) => panic!("no response for {}: {e}", show(raw)),
    }
    ex.closed.expect("connection must close after the refusal");
}

#[test]
fn cl_zero_with_chunked_cannot_smuggle_a_request() {
    assert_not_smuggled(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n",
    );
}

#[test]
fn request_after_a_chunked_body_with_bad_framing_is_not_smuggled() {
    // CL covers the "smuggled" request too: a CL-first parser would forward
    // it as body, a TE-first one as a second request.
    let tail = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = [&b"5\r\nhello\r\n0\r\n\r\n"[..], tail].concat();
    let raw = [
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        &body,
    ]
    .concat();
    assert_not_smuggled(&raw);
}

#[test]
fn request_after_a_chunked_body_with_obfuscated_te_is_not_smuggled() {
    // Two TE fields whose combination ends in `identity`: a parser looking
    // only at the first field would read the body as chunked.
    let body = b"5\r\nhello\r\n0\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n";
    let raw = [
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        &body[..],
    ]
    .concat();
    assert_not_smuggled(&raw);
}

#[test]
fn properly_pipelined_unrouted_request_gets_404_and_never_reaches_the_backend() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).route_prefix("/a").start();
    for (name, first) in [
        ("content-length", &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..]),
        (
            "chunked",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ] {
        let mut c = Client::connect(proxy.port);
        c.send(&[first, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"].concat());
        let r1 = c.read_final().unwrap_or_else(|e| panic!("{name}: first response: {e}"));
        assert_eq!(r1.status, 200, "{name}: {r1:?}");
        let r2 = c.read_final().unwrap_or_else(|e| panic!("{name}: second response: {e}"));
        assert_eq!(r2.status, 404, "{name}: unrouted pipelined request: {r2:?}");
    }
    std::thread::sleep(Duration::from_millis(100));
    let recs = backend.records();
    let targets: Vec<&str> = recs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/a", "/a"], "backend saw {targets:?}");
    for r in &recs {
        assert_eq!(r.body, b"hello", "body of {} {}", r.method, r.target);
    }
}

/// RFC 9110 §6.5.1: framing, routing and authentication fields have no
/// place in a trailer section. A backend that merges trailers into the
/// header section would take a `Host` or `Content-Length` the proxy never
/// routed or framed by, so such a request is refused before its body
/// completes upstream.
#[test]
fn a_trailer_carrying_a_framing_routing_or_credential_field_is_refused() {
    for field in [
        "Host: evil.example",
        "Content-Length: 5",
        "transfer-encoding: chunked",
        "Authorization: Basic YTpi",
        "Connection: close",
    ] {
        let backend = Backend::start("b", Behaviour::Ok);
        let proxy = ProxyConfig::new(backend.addr()).start();
        let raw = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n{field}\r\n\r\n"
        );
        let ex = exchange(proxy.port, raw.as_bytes());
        match ex.response {
            Ok(r) => assert_eq!(r.status, 400, "trailer {field:?}: {r:?}"),
            Err(e) => panic!("trailer {field:?}: no response: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
        let complete: Vec<_> = backend
            .records()
            .into_iter()
            .filter(|r| r.body_complete)
            .map(|r| r.target)
            .collect();
        assert!(
            complete.is_empty(),
            "trailer {field:?}: the backend received a complete request: {complete:?}"
        );
    }
}

/// A trailer a backend may legitimately send, or a client, passes.
#[test]
fn an_ordinary_trailer_still_passes() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let raw = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nServer-Timing: db;dur=53\r\nX-Checksum: 9a\r\n\r\n";
    let mut c = Client::connect(proxy.port);
    c.send(raw);
    let r = c.read_response().expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    let records = backend.records();
    assert!(
        records.iter().any(|r| r.body_complete && r.body == b"ab"),
        "{records:?}"
    );
}
