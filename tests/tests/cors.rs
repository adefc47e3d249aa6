//! CORS on a route: preflights answered by the proxy (allowed, and refused
//! for an origin, method or header the policy does not list) without
//! reaching the backend, even when the route's methods leave OPTIONS out;
//! an allowed origin's responses carry the policy's fields in place of the
//! backend's own; another origin's carry none; a stale field never carries
//! over to the next request on the connection.

use ringgate_tests::{Backend, Behaviour, Client, Proxy, ProxyConfig};

fn cors_proxy(backend: &Backend) -> Proxy {
    let toml = ProxyConfig::new(backend.addr())
        .route_prefix("/api/")
        .route_extra(
            "cors",
            "{ origins = [\"https://app.test\", \"https://*.example.test\"], methods = [\"GET\", \"PUT\"], \
             headers = [\"content-type\", \"x-token\"], expose_headers = [\"x-total\"], credentials = true, max_age = \"10m\" }",
        )
        .to_toml()
        // The route's methods leave OPTIONS out: preflights still reach
        // its policy.
        .replace(
            "path_prefix = \"/api/\" }",
            "path_prefix = \"/api/\", methods = [\"GET\", \"PUT\", \"DELETE\"] }",
        );
    Proxy::start(&toml)
}

fn send(c: &mut Client, raw: &str) -> ringgate_tests::Response {
    c.try_send(raw.as_bytes()).unwrap();
    c.read_final().expect("a response")
}

#[test]
fn preflights_are_answered_here_and_origins_get_their_fields() {
    let backend = Backend::start(
        "b",
        Behaviour::Raw(
            b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nX-Total: 3\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        ),
    );
    let proxy = cors_proxy(&backend);
    let mut c = Client::connect(proxy.port);
    let r = send(
        &mut c,
        "OPTIONS /api/items HTTP/1.1\r\nHost: t\r\nOrigin: https://a.example.test\r\n\
         Access-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: content-type, x-token\r\n\r\n",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://a.example.test")
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET, PUT")
    );
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("600"));
    for (what, origin, method, headers) in [
        ("origin", "https://evil.test", "PUT", ""),
        ("method", "https://app.test", "DELETE", ""),
        (
            "header",
            "https://app.test",
            "PUT",
            "Access-Control-Request-Headers: x-other\r\n",
        ),
    ] {
        let r = send(
            &mut c,
            &format!(
                "OPTIONS /api/items HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: {method}\r\n{headers}\r\n"
            ),
        );
        assert_eq!(r.status, 403, "{what}: {}", r.body_str());
        assert!(r.body_str().contains(what), "{what}: {}", r.body_str());
        assert!(!r.has_header("access-control-allow-origin"), "{what}");
    }
    assert!(
        backend.records().is_empty(),
        "a preflight reached the backend"
    );

    // The real request: the policy's fields replace the backend's `*`.
    let r = send(
        &mut c,
        "PUT /api/items HTTP/1.1\r\nHost: t\r\nOrigin: https://app.test\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.test")
    );
    assert_eq!(
        r.header("access-control-expose-headers").as_deref(),
        Some("x-total")
    );
    assert_eq!(r.header("vary").as_deref(), Some("Origin"));
    // Another origin: the backend's answer as it is, no policy fields.
    let r = send(
        &mut c,
        "GET /api/items HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.test\r\n\r\n",
    );
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(!r.has_header("access-control-allow-credentials"));
    // No Origin on the next request: nothing carried over.
    let r = send(&mut c, "GET /api/items HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(!r.has_header("access-control-expose-headers"));
    assert!(!r.has_header("vary"));
}
