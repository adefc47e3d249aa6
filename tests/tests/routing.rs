//! Routing on header values, end to end: a canary route that only requests
//! carrying `x-canary: 1` take, next to the default route for the same path.

use ringgate_tests::{free_port, Backend, Behaviour, Client, Proxy};

#[test]
fn a_header_condition_sends_matching_requests_to_their_own_upstream() {
    let stable = Backend::start("stable", Behaviour::Ok);
    let canary = Backend::start("canary", Behaviour::Ok);
    let port = free_port();
    let toml = format!(
        r#"[server]
workers = 2

[[listeners]]
name = "web"
address = "127.0.0.1:{port}"

[[routes]]
listener = "web"
upstream = "stable"

[[routes]]
listener = "web"
match = {{ headers = {{ x-canary = "1" }} }}
upstream = "canary"

[[upstreams]]
name = "stable"
backends = [{{ address = "{}" }}]

[[upstreams]]
name = "canary"
backends = [{{ address = "{}" }}]
"#,
        stable.addr(),
        canary.addr()
    );
    let proxy = Proxy::start(&toml);
    let mut c = Client::connect(proxy.port);
    let cases: [(&str, &str); 4] = [
        ("", "stable"),
        ("X-Canary: 1\r\n", "canary"),
        ("x-canary: 0\r\n", "stable"),
        ("x-other: 1\r\nx-canary:   1  \r\n", "canary"),
    ];
    for (fields, want) in cases {
        let r = c.request(format!("GET /p HTTP/1.1\r\nHost: test\r\n{fields}\r\n").as_bytes());
        assert_eq!(r.status, 200, "{fields:?}: {r:?}");
        assert_eq!(
            r.header("x-backend").as_deref(),
            Some(want),
            "request with {fields:?}"
        );
    }
    assert_eq!(stable.records().len(), 2);
    assert_eq!(canary.records().len(), 2);
}
