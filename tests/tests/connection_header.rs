//! Hop-by-hop handling must never touch framing (issue 17): a `Connection`
//! header cannot remove Content-Length, Transfer-Encoding, Host or the
//! forwarding fields, framing goes upstream as exactly one field, and the
//! smaller points of the same request corpus (100-continue to HTTP/1.0, a
//! port that is not digits).

use std::time::Duration;

use ringgate_tests::{assert_refused, show, Backend, Behaviour, Client, ProxyConfig};

/// A 400, a close, and not one request at the backend (the smuggled one
/// included), through the harness's refusal check.
fn assert_refused_before_upstream(raw: &[u8]) {
    assert_refused(400, &[("request", raw)]);
}

#[test]
fn connection_naming_content_length_cannot_smuggle_a_request() {
    let body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let raw = [
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    assert_refused_before_upstream(&raw);
}

#[test]
fn connection_naming_transfer_encoding_cannot_smuggle_a_request() {
    assert_refused_before_upstream(
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
         23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    );
}

#[test]
fn connection_naming_host_is_refused() {
    assert_refused_before_upstream(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Host\r\n\r\n");
}

#[test]
fn connection_naming_a_forwarding_field_is_refused() {
    for field in [
        "X-Forwarded-For",
        "x-forwarded-proto",
        "X-Forwarded-Host",
        "Forwarded",
    ] {
        assert_refused_before_upstream(
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: {field}\r\n\r\n")
                .as_bytes(),
        );
    }
}

#[test]
fn connection_naming_an_ordinary_field_still_drops_it() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port)
        .request(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    assert!(!rec.has_header("x-secret"), "{}", show(&rec.raw_head));
}

/// The head the backend saw for one request sent through a fresh proxy.
fn forwarded_head(raw: &[u8]) -> ringgate_tests::Recorded {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(raw);
    assert_eq!(r.status, 200, "{} -> {r:?}", show(raw));
    let recs = backend.records();
    assert_eq!(recs.len(), 1, "backend saw {:?}", backend.targets());
    recs[0].clone()
}

fn count_fields(rec: &ringgate_tests::Recorded, name: &str) -> usize {
    rec.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// The backend got `hello` framed by exactly one `Content-Length: 5`.
fn assert_one_content_length_of_hello(raw: &[u8]) {
    let rec = forwarded_head(raw);
    assert_eq!(
        count_fields(&rec, "content-length"),
        1,
        "{}",
        show(&rec.raw_head)
    );
    assert_eq!(rec.header("content-length").as_deref(), Some("5"));
    assert_eq!(rec.body, b"hello");
}

#[test]
fn repeated_identical_content_length_goes_upstream_once() {
    assert_one_content_length_of_hello(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    );
}

#[test]
fn content_length_list_of_identical_values_is_normalised() {
    assert_one_content_length_of_hello(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    );
}

#[test]
fn transfer_encoding_in_odd_case_goes_upstream_as_chunked() {
    let rec = forwarded_head(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(rec.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(count_fields(&rec, "transfer-encoding"), 1);
    assert_eq!(rec.body, b"hello");
}

#[test]
fn host_with_a_port_that_is_not_digits_is_refused() {
    for host in ["x:8o", "x:abc", "x:1:2", "x:99999", "[::1]x"] {
        assert_refused_before_upstream(
            format!("GET /a HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
    }
    let rec = forwarded_head(b"GET /a HTTP/1.1\r\nHost: x:8080\r\n\r\n");
    assert_eq!(rec.header("host").as_deref(), Some("x:8080"));
    let rec = forwarded_head(b"GET /a HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
    assert_eq!(rec.header("host").as_deref(), Some("[::1]:80"));
}

#[test]
fn http10_client_gets_no_100_continue() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    c.send(b"POST /a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    c.set_read_timeout(Duration::from_millis(500));
    if let Ok(head) = c.read_head() {
        panic!("an HTTP/1.0 client got a response before sending its body: {head:?}");
    }
    c.set_read_timeout(Duration::from_secs(5));
    c.send(b"hello");
    let r = c.read_final().expect("final response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(backend.records()[0].body, b"hello");
}

#[test]
fn response_whose_connection_names_content_length_is_not_relayed_unframed() {
    let backend = Backend::start(
        "b",
        Behaviour::Raw(
            b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        ),
    );
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 502, "{r:?}");
}

#[test]
fn response_framing_goes_to_the_client_as_one_field() {
    let backend = Backend::start(
        "b",
        Behaviour::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
    );
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let r = c.request(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let lengths = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .count();
    assert_eq!(lengths, 1, "{}", show(&r.raw_head));
    assert_eq!(r.body, b"hello");
}
