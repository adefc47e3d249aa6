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
