//! Failures mapped to statuses: upstream trouble (502, 504), routing (404),
//! limits (431, 408), unsupported codings (501).

use std::time::{Duration, Instant};

use ringgate_tests::{free_port, Backend, Behaviour, Client, ProxyConfig};

#[test]
fn stopped_backend_gives_502() {
    let dead = ([127, 0, 0, 1], free_port()).into();
    let proxy = ProxyConfig::new(dead).start();
    let r = Client::connect(proxy.port).get("/x");
    assert_eq!(r.status, 502, "{r:?}");
}

#[test]
fn backend_closing_without_a_response_gives_502() {
    let backend = Backend::start("b", Behaviour::CloseWithoutResponse);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).get("/x");
    assert_eq!(r.status, 502, "{r:?}");
}

#[test]
fn backend_slower_than_response_timeout_gives_504() {
    let backend = Backend::start("b", Behaviour::Stall(Duration::from_secs(3)));
    let proxy = ProxyConfig::new(backend.addr())
        .timeouts("response = \"300ms\"")
        .start();
    let t = Instant::now();
    let r = Client::connect(proxy.port).get("/x");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took < Duration::from_secs(2),
        "504 took {took:?} with a 300ms response timeout"
    );
}

#[test]
fn response_with_both_content_length_and_transfer_encoding_gives_502() {
    let backend = Backend::start("b", Behaviour::AmbiguousFraming);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).get("/x");
    assert_eq!(r.status, 502, "{r:?}");
}

#[test]
fn unrouted_path_gives_404_and_reaches_no_backend() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).route_prefix("/a").start();
    let r = Client::connect(proxy.port).get("/b");
    assert_eq!(r.status, 404, "{r:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        backend.targets().is_empty(),
        "backend saw {:?}",
        backend.targets()
    );
    // The route itself works.
    let r = Client::connect(proxy.port).get("/a");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend.targets(), ["/a"]);
}

#[test]
fn head_larger_than_max_head_size_gives_431() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .limit("max_head_size", "\"1KiB\"")
        .start();
    let big = "v".repeat(2000);
    let r = Client::connect(proxy.port)
        .request(format!("GET /x HTTP/1.1\r\nHost: test\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert_eq!(r.status, 431, "{r:?}");
    assert!(
        backend.targets().is_empty(),
        "backend saw {:?}",
        backend.targets()
    );
}

/// RFC 9112 §3: a request-target longer than the server will parse gets
/// 414 (URI Too Long), not the 431 of a header section too large.
#[test]
fn a_request_line_longer_than_max_head_size_gives_414() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .limit("max_head_size", "\"1KiB\"")
        .start();
    let long = "a".repeat(2000);
    let r = Client::connect(proxy.port)
        .request(format!("GET /{long} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    assert_eq!(r.status, 414, "{r:?}");
    assert!(
        backend.targets().is_empty(),
        "backend saw {:?}",
        backend.targets()
    );
}

#[test]
fn more_headers_than_max_headers_gives_431() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .limit("max_headers", "5")
        .start();
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: test\r\n");
    for i in 0..10 {
        req += &format!("X-H{i}: {i}\r\n");
    }
    req += "\r\n";
    let r = Client::connect(proxy.port).request(req.as_bytes());
    assert_eq!(r.status, 431, "{r:?}");
    assert!(
        backend.targets().is_empty(),
        "backend saw {:?}",
        backend.targets()
    );
}

#[test]
fn unknown_transfer_coding_gives_501() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).request(
        b"POST /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 501, "{r:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        backend.targets().is_empty(),
        "backend saw {:?}",
        backend.targets()
    );
}

#[test]
fn slow_head_gets_408_and_close() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .limit("header_read_timeout", "\"500ms\"")
        .start();
    let mut c = Client::connect(proxy.port);
    let t = Instant::now();
    c.send(b"GET /x HTTP/1.1\r\nHost: test\r\n");
    c.set_read_timeout(Duration::from_secs(2));
    match c.read_final() {
        Ok(r) => {
            assert_eq!(r.status, 408, "half a head got {r:?}");
            let left = Duration::from_secs(2).saturating_sub(t.elapsed());
            c.wait_closed(left.max(Duration::from_millis(100)))
                .expect("connection must close after the 408");
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ),
            "neither 408 nor a close within 2 s of half a head: {e}"
        ),
    }
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        backend.targets().is_empty(),
        "backend saw {:?}",
        backend.targets()
    );
}

/// A backend's trailer that repeats a framing field reaches no client: a
/// downstream that merges trailers would reframe or reroute by it.
#[test]
fn a_response_trailer_carrying_a_framing_field_gives_502() {
    for field in [
        "Content-Length: 99",
        "Transfer-Encoding: chunked",
        "Set-Cookie: session=evil",
    ] {
        let backend = Backend::start(
            "b",
            Behaviour::Raw(
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n{field}\r\n\r\n")
                    .into_bytes(),
            ),
        );
        let proxy = ProxyConfig::new(backend.addr()).start();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        use std::io::{Read as _, Write as _};
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains(field),
            "trailer {field:?} reached the client: {text:?}"
        );
        assert!(
            text.starts_with("HTTP/1.1 502"),
            "trailer {field:?}: {text:?}"
        );
    }
}

/// RFC 9110 §15: a status code outside 100-599 is invalid. A 0xx reaches
/// no client as if it were a response (a client may take it for an
/// interim one and wait for another, or misframe what follows).
#[test]
fn a_status_code_outside_100_to_599_gives_502() {
    for status in ["000", "099", "600", "999"] {
        let backend = Backend::start(
            "b",
            Behaviour::Raw(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nab").into_bytes(),
            ),
        );
        let proxy = ProxyConfig::new(backend.addr()).start();
        let r = Client::connect(proxy.port).get("/x");
        assert_eq!(r.status, 502, "status {status}: {r:?}");
    }
}
