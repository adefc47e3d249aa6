//! Routes that answer themselves: `respond` (status, body, headers) and
//! `redirect` (with `$path` and `$query`), without an upstream; the
//! connection stays open for the next request, and a request with a body
//! is answered and closed.

use ringgate_tests::{Backend, Behaviour, Client, Proxy, ProxyConfig};

fn proxy_with(backend: &Backend, routes: &str) -> Proxy {
    let base = ProxyConfig::new(backend.addr())
        .route_prefix("/app/")
        .to_toml();
    Proxy::start(&format!("{base}\n{routes}"))
}

const ROUTES: &str = r#"
[[routes]]
listener = "web"
match = { path_prefix = "/health" }
respond = { status = 200, body = "ok\n", headers = { content-type = "text/plain", cache-control = "no-store" } }

[[routes]]
listener = "web"
match = { path_prefix = "/gone" }
respond = { status = 410 }

[[routes]]
listener = "web"
match = { path_prefix = "/old/" }
redirect = { to = "https://example.com/new$path$query" }

[[routes]]
listener = "web"
match = { path_prefix = "/form" }
redirect = { to = "/done", status = 303 }
"#;

#[test]
fn direct_responses_and_redirects_need_no_upstream() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = proxy_with(&backend, ROUTES);
    let mut c = Client::connect(proxy.port);
    let mut get = |target: &str| {
        c.try_send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        c.read_final().expect("a response")
    };
    let r = get("/health");
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok\n"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let r = get("/gone/x");
    assert_eq!((r.status, r.body.len()), (410, 0));
    let r = get("/old/a/b?x=1&y=2");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.com/new/old/a/b?x=1&y=2")
    );
    let r = get("/old/plain");
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.com/new/old/plain")
    );
    let r = get("/form");
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (303, Some("/done"))
    );
    // All on one connection, and the backend saw none of them.
    let r = get("/app/x");
    assert_eq!(r.status, 200);
    assert_eq!(backend.targets(), ["/app/x"]);
}

#[test]
fn a_request_with_a_body_is_answered_and_closed() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = proxy_with(&backend, ROUTES);
    let mut c = Client::connect(proxy.port);
    c.try_send(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    let r = c.read_final().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.says_close());
    c.wait_closed(std::time::Duration::from_secs(2))
        .expect("closed: the body was not read");
    // HEAD gets the head only.
    let mut c = Client::connect(proxy.port);
    c.try_send(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = c.read_head().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.head.header("content-length").as_deref(), Some("3"));
    // No body follows: the next response starts right after the head.
    c.try_send(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_final().unwrap().status, 410);
}

/// A relative redirect built from the path must not send a browser to
/// another host: `//evil.example` (or `///evil.example`) is
/// protocol-relative to a browser, so the leading slashes of a relative
/// Location collapse to one (`to = "/$path"` with `/evil.example`).
#[test]
fn a_relative_redirect_to_the_path_cannot_name_another_host() {
    let backend = Backend::start("b", Behaviour::Ok);
    let routes = r#"
[[routes]]
listener = "web"
match = { path_prefix = "/" }
redirect = { to = "/$path$query", status = 308 }
"#;
    let base = ProxyConfig::new(backend.addr())
        .route_prefix("/app/")
        .to_toml();
    let proxy = Proxy::start(&format!("{base}\n{routes}"));
    let mut c = Client::connect(proxy.port);
    for (target, want) in [
        ("//evil.example/x", "/evil.example/x"),
        ("/evil.example?q=1", "/evil.example?q=1"),
        ("/a/b", "/a/b"),
    ] {
        c.try_send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let r = c.read_final().expect("a response");
        assert_eq!(
            (r.status, r.header("location").as_deref()),
            (308, Some(want)),
            "{target}"
        );
    }
}
