//! Header rewriting between client and backend: X-Forwarded-*, Forwarded,
//! and hop-by-hop fields in both directions (RFC 9110 §7.6.1).

use ringgate_tests::{Backend, Behaviour, Client, ProxyConfig};

fn last_element(v: &str) -> String {
    v.rsplit(',').next().unwrap_or("").trim().to_string()
}

#[test]
fn forwarding_headers_are_added() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).get("/h");
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{rec:?}"
    );
    assert_eq!(
        rec.header("x-forwarded-proto").as_deref(),
        Some("http"),
        "{rec:?}"
    );
    let fwd = rec
        .header("forwarded")
        .unwrap_or_else(|| panic!("no Forwarded header: {rec:?}"));
    assert!(
        last_element(&fwd).eq_ignore_ascii_case("for=127.0.0.1;proto=http"),
        "Forwarded is {fwd:?}"
    );
}

#[test]
fn forwarding_headers_are_appended_to_client_values() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).request(
        b"GET /h HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    let xff = rec.header("x-forwarded-for");
    assert_eq!(xff.as_deref(), Some("1.2.3.4, 127.0.0.1"), "{rec:?}");
    let fwd = rec.header("forwarded").unwrap_or_default();
    let elems: Vec<String> = fwd
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(
        elems,
        ["for=1.2.3.4", "for=127.0.0.1;proto=http"],
        "Forwarded is {fwd:?}"
    );
}

#[test]
fn hop_by_hop_request_headers_are_stripped() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).request(
        b"GET /h HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\n\
Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-t\r\nProxy-Connection: keep-alive\r\n\
Upgrade: foo/1\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    for h in [
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !rec.has_header(h),
            "backend received hop-by-hop `{h}`: {:?}",
            rec.headers
        );
    }
    if let Some(c) = rec.header("connection") {
        // The proxy may set its own Connection for its upstream hop, but
        // must not pass on the client's tokens.
        for token in c.split(',').map(|t| t.trim().to_ascii_lowercase()) {
            assert!(
                token == "keep-alive" || token == "close",
                "client's Connection tokens reached the backend: {c:?}"
            );
        }
    }
    assert_eq!(
        rec.header("x-kept").as_deref(),
        Some("yes"),
        "end-to-end header lost"
    );
}

#[test]
fn hop_by_hop_response_headers_are_stripped() {
    let backend = Backend::start("b", Behaviour::HopByHopHeaders);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).get("/h");
    assert_eq!(r.status, 200, "{r:?}");
    for h in ["keep-alive", "x-resp-secret", "proxy-connection"] {
        assert!(
            !r.has_header(h),
            "client received hop-by-hop `{h}`: {:?}",
            r.headers
        );
    }
    if let Some(c) = r.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-resp-secret"),
            "backend's Connection tokens reached the client: {c:?}"
        );
    }
    assert_eq!(r.header("x-backend").as_deref(), Some("b"));
    assert_eq!(r.body_str(), backend.ok_body("/h"));
}
