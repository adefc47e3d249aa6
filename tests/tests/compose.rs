//! API composition (`compose` on a route): three upstreams answering in 10,
//! 20 and 30 ms are called at once and merged into one JSON object in about
//! 30 ms, not 60; a failed call fails the answer (502 naming it) or, with
//! `on_failure = "partial"`, leaves its key null and says so; a call past
//! the timeout is cut.

use std::time::{Duration, Instant};

use ringgate_tests::{Backend, Behaviour, Client, Proxy, ProxyConfig};

fn json_after(name: &str, ms: u64, json: &str) -> Backend {
    let bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    Backend::start(
        name,
        Behaviour::StallThenRaw(Duration::from_millis(ms), bytes.into_bytes()),
    )
}

/// A proxy with upstreams `a`, `b`, `c` (one backend each) and a route
/// `/all` composing them.
fn composing(backends: [&Backend; 3], extra: &str) -> Proxy {
    let mut toml = ProxyConfig::new(backends[0].addr())
        .route_prefix("/direct/")
        .to_toml();
    for (name, b) in ["a", "b", "c"].iter().zip(backends) {
        toml += &format!(
            "\n[[upstreams]]\nname = \"{name}\"\nbackends = [{{ address = \"{}\" }}]\n",
            b.addr()
        );
    }
    toml += &format!(
        "\n[[routes]]\nlistener = \"web\"\nmatch = {{ path_prefix = \"/all\" }}\n\
         compose = {{ calls = [{{ upstream = \"a\", path = \"/user/7\", key = \"user\" }}, \
         {{ upstream = \"b\", path = \"/orders?user=7\", key = \"orders\" }}, \
         {{ upstream = \"c\", path = \"/prefs\", key = \"prefs\" }}]{extra} }}\n"
    );
    Proxy::start(&toml)
}

fn get_all(port: u16) -> (ringgate_tests::Response, Duration) {
    let mut c = Client::connect(port);
    let started = Instant::now();
    c.try_send(b"GET /all HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = c.read_final().expect("a response");
    (r, started.elapsed())
}

#[test]
fn calls_run_at_once_and_merge_into_one_object() {
    let a = json_after("a", 10, "{\"id\":7,\"name\":\"Ada\"}");
    let b = json_after("b", 20, "[{\"id\":1},{\"id\":2}]");
    let c = json_after("c", 30, "{\"theme\":\"dark\"}");
    let proxy = composing([&a, &b, &c], "");
    // The answer takes as long as the slowest call, not the sum.
    let mut took = Vec::new();
    for _ in 0..5 {
        let (r, t) = get_all(proxy.port);
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("x-compose-completed").as_deref(), Some("true"));
        assert_eq!(
            r.body_str(),
            "{\"user\":{\"id\":7,\"name\":\"Ada\"},\"orders\":[{\"id\":1},{\"id\":2}],\"prefs\":{\"theme\":\"dark\"}}"
        );
        took.push(t);
    }
    took.sort();
    let median = took[2];
    eprintln!("composed answers took {took:?}");
    assert!(
        median >= Duration::from_millis(30) && median < Duration::from_millis(55),
        "median {median:?} of {took:?}: the calls did not run at once"
    );
    assert_eq!(
        b.targets().last().map(String::as_str),
        Some("/orders?user=7")
    );
}

#[test]
fn a_failed_call_fails_the_answer_unless_partial() {
    let a = json_after("a", 0, "{\"id\":7}");
    let b = Backend::start("b", Behaviour::Status(503));
    let c = json_after("c", 0, "not json");
    let proxy = composing([&a, &b, &c], "");
    let (r, _) = get_all(proxy.port);
    assert_eq!(r.status, 502);
    assert!(
        r.body_str()
            .contains("\"orders\" failed: upstream answered 503"),
        "{}",
        r.body_str()
    );

    let partial = composing([&a, &b, &c], ", on_failure = \"partial\"");
    let (r, _) = get_all(partial.port);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-compose-completed").as_deref(), Some("false"));
    assert_eq!(
        r.body_str(),
        "{\"user\":{\"id\":7},\"orders\":null,\"prefs\":null}"
    );
}

#[test]
fn a_call_past_the_timeout_is_cut() {
    let a = json_after("a", 0, "{}");
    let b = json_after("b", 2000, "{}");
    let c = json_after("c", 0, "{}");
    let proxy = composing([&a, &b, &c], ", timeout = \"200ms\"");
    let (r, took) = get_all(proxy.port);
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(
        r.body_str().contains("no answer within"),
        "{}",
        r.body_str()
    );
    assert!(took < Duration::from_millis(1000), "{took:?}");
}
