//! A route's request validation (`max_body`, `content_types`,
//! `required_headers`, `required_query`): each rule refuses with its status
//! and a reason naming what is wrong, before any byte goes upstream (the
//! backend's records prove it), a chunked body that crosses `max_body`
//! mid-stream included; requests that pass reach the backend whole.

use std::time::Duration;

use ringgate_tests::proxy::metrics;
use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, ProxyConfig};

/// A proxy whose route requires all four rules, and its admin port.
fn validated(backend: &Backend) -> (Proxy, u16) {
    let admin = ringgate_tests::free_port();
    let toml = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "100")
        .route_extra("content_types", "[\"application/json\", \"text/*\"]")
        .route_extra("required_headers", "[\"X-Tenant\"]")
        .route_extra("required_query", "[\"page\"]")
        .to_toml()
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    (Proxy::start(&toml), admin)
}

/// One request on a new connection: status and body.
fn send(port: u16, raw: &[u8]) -> (u16, String) {
    let mut c = Client::connect(port);
    let _ = c.try_send(raw);
    let r = c.read_final().expect("a response");
    (r.status, r.body_str())
}

fn post(target: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const GOOD: &str = "X-Tenant: acme\r\nContent-Type: application/json; charset=utf-8\r\n";

#[test]
fn each_rule_refuses_before_anything_goes_upstream() {
    let backend = Backend::start("b", Behaviour::Echo);
    let (proxy, admin) = validated(&backend);
    let port = proxy.port;

    let (status, body) = send(port, &post("/x?page=1", GOOD, "{\"a\":1}"));
    assert_eq!((status, body.as_str()), (200, "{\"a\":1}"));
    assert_eq!(backend.records().len(), 1);

    let cases: [(&str, Vec<u8>, u16, &str); 8] = [
        (
            // An allowed type first, another after it: the backend may
            // parse the body by the last.
            "two content types",
            post(
                "/x?page=1",
                "X-Tenant: acme\r\nContent-Type: application/json\r\nContent-Type: application/xml\r\n",
                "{}",
            ),
            400,
            "more than one Content-Type",
        ),
        (
            "a content type and its _ spelling",
            post(
                "/x?page=1",
                "X-Tenant: acme\r\nContent-Type: application/json\r\nContent_Type: application/xml\r\n",
                "{}",
            ),
            400,
            "more than one Content-Type",
        ),
        (
            "no tenant header",
            post("/x?page=1", "Content-Type: application/json\r\n", "{}"),
            400,
            "missing header x-tenant",
        ),
        (
            "no page parameter",
            post("/x?pages=1", GOOD, "{}"),
            400,
            "missing query parameter page",
        ),
        (
            "wrong content type",
            post(
                "/x?page=1",
                "X-Tenant: acme\r\nContent-Type: application/xml\r\n",
                "<a/>",
            ),
            415,
            "content type must be one of application/json, text/*",
        ),
        (
            "no content type with a body",
            post("/x?page=1", "X-Tenant: acme\r\n", "{}"),
            415,
            "content type must be one of",
        ),
        (
            "Content-Length over max_body",
            post("/x?page=1", GOOD, &"a".repeat(101)),
            413,
            "request body of 101 bytes is larger than 100",
        ),
        (
            "chunked body crossing max_body mid-stream",
            format!(
                "POST /x?page=1 HTTP/1.1\r\nHost: t\r\n{GOOD}Transfer-Encoding: chunked\r\n\r\n\
                 32\r\n{}\r\n32\r\n{}\r\n1\r\nz\r\n0\r\n\r\n",
                "a".repeat(50),
                "b".repeat(50)
            )
            .into_bytes(),
            413,
            "request body larger than max_body",
        ),
    ];
    for (what, raw, want_status, want_reason) in cases {
        let (status, body) = send(port, &raw);
        assert_eq!(status, want_status, "{what}: {body}");
        assert!(body.contains(want_reason), "{what}: {body}");
    }
    assert_eq!(
        backend.records().len(),
        1,
        "a refused request reached the backend: {:?}",
        backend.targets()
    );
    // A chunked body within max_body is read whole, then forwarded.
    let raw = format!(
        "POST /x?page=1 HTTP/1.1\r\nHost: t\r\n{GOOD}Transfer-Encoding: chunked\r\n\r\n\
         32\r\n{}\r\n32\r\n{}\r\n0\r\n\r\n",
        "a".repeat(50),
        "b".repeat(50)
    );
    let (status, body) = send(port, raw.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "a".repeat(50) + &"b".repeat(50));
    // GET without a body needs no content type.
    let (status, _) = send(
        port,
        b"GET /x?page=2 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\r\n\r\n",
    );
    assert_eq!(status, 200);

    for (rule, n) in [
        ("max_body", 2),
        ("content_types", 4),
        ("required_headers", 1),
        ("required_query", 1),
    ] {
        let line = format!("ringgate_validation_refusals_total{{rule=\"{rule}\"}} {n}");
        eventually(Duration::from_secs(3), || {
            let m = metrics(admin);
            m.contains(&line).then_some(()).ok_or(m)
        })
        .unwrap_or_else(|m| panic!("{line} missing from {m}"));
    }
}

#[test]
fn a_refused_request_without_a_body_keeps_the_connection() {
    let backend = Backend::start("b", Behaviour::Ok);
    let (proxy, _) = validated(&backend);
    let mut c = Client::connect(proxy.port);
    c.try_send(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Tenant: a\r\n\r\n")
        .unwrap();
    let r = c.read_final().unwrap();
    assert_eq!(r.status, 400);
    c.try_send(b"GET /x?page=1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\r\n\r\n")
        .unwrap();
    let r = c.read_final().unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
}

#[test]
fn expect_continue_is_answered_before_a_chunked_body_is_read_whole() {
    let backend = Backend::start("b", Behaviour::Echo);
    let (proxy, _) = validated(&backend);
    let mut c = Client::connect(proxy.port);
    c.try_send(
        format!(
            "POST /x?page=1 HTTP/1.1\r\nHost: t\r\n{GOOD}Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let interim = c.read_response().expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.try_send(b"5\r\nhello\r\n0\r\n\r\n").unwrap();
    let r = c.read_final().unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello"));
}

#[test]
fn a_large_chunked_body_is_cut_where_it_crosses_max_body() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra("max_body", "\"2MiB\"")
        .start();
    let mut c = Client::connect(proxy.port);
    c.try_send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    // 48 chunks of 64 KiB: 3 MiB, the 33rd crosses 2 MiB.
    for _ in 0..48 {
        if c.try_send(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = c.try_send(b"0\r\n\r\n");
    let r = c.read_final().expect("a response");
    assert_eq!(r.status, 413, "{}", r.body_str());
    // Above 1 MiB the body streams: the backend saw the head, then a body
    // that never ended, never a whole request.
    let records = backend.records();
    assert!(
        records
            .iter()
            .all(|r| !r.body_complete && r.body_len <= 2 << 20),
        "{:?}",
        records
            .iter()
            .map(|r| (r.body_complete, r.body_len))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_body_is_checked_against_its_json_schema_before_it_goes_upstream() {
    let backend = Backend::start("b", Behaviour::Echo);
    let schema = ringgate_tests::proxy::write_temp(
        "ringgate-schema",
        "json",
        br#"{
            "type": "object",
            "required": ["name", "items"],
            "properties": {
                "name": { "type": "string", "minLength": 1 },
                "items": { "type": "array", "items": { "type": "integer", "minimum": 0 } }
            }
        }"#,
    );
    let proxy = ProxyConfig::new(backend.addr())
        .route_extra(
            "body_schema",
            &format!("{:?}", schema.display().to_string()),
        )
        .route_extra("max_body", "\"64KiB\"")
        .start();
    let good = r#"{"name":"a","items":[1,2,3]}"#;
    let (status, body) = send(proxy.port, &post("/x", "", good));
    assert_eq!((status, body.as_str()), (200, good));
    let chunked = format!(
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{good}\r\n0\r\n\r\n",
        good.len()
    );
    let (status, body) = send(proxy.port, chunked.as_bytes());
    assert_eq!((status, body.as_str()), (200, good), "chunked");
    for (bad, at) in [
        (r#"{"name":"a","items":[1,-2]}"#, "/items/1"),
        (r#"{"name":"","items":[]}"#, "/name"),
        (r#"{"items":[]}"#, "at /:"),
        (r#"{"name":"a","items":[1]"#, "not JSON"),
    ] {
        let (status, body) = send(proxy.port, &post("/x", "", bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(at), "{bad}: {body}");
    }
    assert_eq!(
        backend.records().len(),
        2,
        "a refused body reached the backend"
    );
    let big = format!("{{\"name\":\"{}\",\"items\":[]}}", "n".repeat(70_000));
    let (status, _) = send(proxy.port, &post("/x", "", &big));
    assert_eq!(status, 413);
}

#[test]
fn check_names_a_schema_file_that_is_not_a_schema() {
    let schema =
        ringgate_tests::proxy::write_temp("ringgate-schema-bad", "json", br#"{"type": 12}"#);
    let toml = ProxyConfig::new("127.0.0.1:9".parse().unwrap())
        .route_extra(
            "body_schema",
            &format!("{:?}", schema.display().to_string()),
        )
        .to_toml();
    let path = ringgate_tests::proxy::write_temp("ringgate-schema-config", "toml", toml.as_bytes());
    let out =
        ringgate_tests::proxy::run_ringgate(&["check".as_ref(), "-c".as_ref(), path.as_os_str()]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("routes[0].body_schema")
            && out.stderr.contains("not a valid JSON Schema"),
        "{}",
        out.stderr
    );
}
