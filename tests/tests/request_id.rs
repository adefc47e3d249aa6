//! Request ids (`[server] request_id`): a client's well-formed id is kept,
//! any other request gets one made by the proxy; the backend, the client
//! (local answers included) and the access log all see the same one, and
//! neither a malformed client id nor a backend's own reaches the other side.

use std::time::Duration;

use ringgate_tests::proxy::temp_path;
use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, ProxyConfig};

fn with_ids(backend: &Backend, log: &std::path::Path) -> Proxy {
    let toml = ProxyConfig::new(backend.addr())
        .server("request_id", "\"X-Request-Id\"")
        .route_prefix("/app/")
        .to_toml()
        + &format!(
            "\n[access_log]\npath = {:?}\nbuffer = \"4KiB\"\n",
            log.display().to_string()
        );
    Proxy::start(&toml)
}

fn get(port: u16, target: &str, extra: &str) -> ringgate_tests::Response {
    let mut c = Client::connect(port);
    c.try_send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes())
        .unwrap();
    c.read_final().expect("a response")
}

fn is_made(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn ids_are_kept_or_made_and_everyone_sees_the_same_one() {
    let backend = Backend::start("b", Behaviour::Ok);
    let log = temp_path("ringgate-request-id", "log");
    let proxy = with_ids(&backend, &log);

    // None sent: one is made.
    let r = get(proxy.port, "/app/1", "");
    let made = r.header("x-request-id").expect("an id");
    assert!(is_made(&made), "{made}");
    let seen = backend.records().pop().unwrap();
    assert_eq!(seen.header("x-request-id").as_deref(), Some(&*made));

    // A well-formed one is kept.
    let r = get(proxy.port, "/app/2", "X-Request-Id: 7d3c-a1:b2\r\n");
    assert_eq!(r.header("x-request-id").as_deref(), Some("7d3c-a1:b2"));
    let seen = backend.records().pop().unwrap();
    assert_eq!(seen.header("x-request-id").as_deref(), Some("7d3c-a1:b2"));

    // A malformed one never reaches the backend: a made one replaces it.
    let r = get(proxy.port, "/app/3", "X-Request-Id: a\"b c\r\n");
    let replaced = r.header("x-request-id").expect("an id");
    assert!(is_made(&replaced) && replaced != made, "{replaced}");
    let seen = backend.records().pop().unwrap();
    assert_eq!(seen.header("x-request-id").as_deref(), Some(&*replaced));

    // A local answer (no route) carries one too.
    let r = get(proxy.port, "/elsewhere", "");
    assert_eq!(r.status, 404);
    let local = r.header("x-request-id").expect("an id on a 404");
    assert!(is_made(&local), "{local}");

    let text = eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        (text.lines().count() >= 4)
            .then_some(text.clone())
            .ok_or(text)
    })
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(&format!(" \"{made}\"")), "{}", lines[0]);
    assert!(lines[1].ends_with(" \"7d3c-a1:b2\""), "{}", lines[1]);
    assert!(
        lines[2].ends_with(&format!(" \"{replaced}\"")),
        "{}",
        lines[2]
    );
    assert!(lines[3].ends_with(&format!(" \"{local}\"")), "{}", lines[3]);
    let _ = std::fs::remove_file(log);
}

#[test]
fn a_backends_own_id_is_replaced_by_the_requests() {
    let backend = Backend::start(
        "b",
        Behaviour::Raw(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: from-backend\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        ),
    );
    let log = temp_path("ringgate-request-id-b", "log");
    let proxy = with_ids(&backend, &log);
    let r = get(proxy.port, "/app/x", "X-Request-Id: mine\r\n");
    assert_eq!(r.header("x-request-id").as_deref(), Some("mine"));
    let _ = std::fs::remove_file(log);
}
