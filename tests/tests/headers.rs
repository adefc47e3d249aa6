//! Header rewriting between client and backend: X-Forwarded-*, Forwarded,
//! and hop-by-hop fields in both directions (RFC 9110 §7.6.1).

use std::time::Duration;

use ringgate_tests::proxy::temp_path;
use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, ProxyConfig};

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

/// A client that is not a trusted proxy can claim any address in its
/// forwarding headers: the backend must see only the real peer.
#[test]
fn untrusted_client_forwarding_headers_are_replaced_not_appended() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let r = Client::connect(proxy.port).request(
        b"GET /h HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n\
X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{rec:?}"
    );
    assert_eq!(
        rec.header("forwarded")
            .map(|f| f.to_ascii_lowercase())
            .as_deref(),
        Some("for=127.0.0.1;proto=http"),
        "{rec:?}"
    );
    assert_eq!(
        rec.header("x-forwarded-proto").as_deref(),
        Some("http"),
        "{rec:?}"
    );
    assert_eq!(
        rec.header("x-forwarded-host").as_deref(),
        Some("test"),
        "{rec:?}"
    );
}

/// The tests' client connects from 127.0.0.1: this makes it a trusted
/// proxy, with an access log and a per-client rate limit of one request a
/// minute.
fn behind_trust(backend: &Backend, trusted: &str, log: &std::path::Path) -> Proxy {
    let toml = ProxyConfig::new(backend.addr())
        .server("trusted_proxies", trusted)
        .route_extra(
            "rate_limit",
            r#"{ key = "client_ip", rate = "1/m", burst = 1 }"#,
        )
        .to_toml()
        + &format!("\n[access_log]\npath = {:?}\n", log.display().to_string());
    Proxy::start(&toml)
}

fn request_as(port: u16, xff: &str) -> ringgate_tests::Response {
    Client::connect(port).request(
        format!("GET /h HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: {xff}\r\nX-Forwarded-Proto: https\r\n\r\n")
            .as_bytes(),
    )
}

/// The client fields of the access log's first `want` lines.
fn logged_clients(log: &std::path::Path, want: usize) -> Vec<String> {
    eventually(Duration::from_secs(2), || {
        let text = std::fs::read_to_string(log).map_err(|e| e.to_string())?;
        let clients: Vec<String> = text
            .lines()
            .map(|l| l.split(' ').next().unwrap_or("").to_owned())
            .collect();
        if clients.len() == want {
            Ok(clients)
        } else {
            Err(format!("want {want} lines:\n{text}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_trusted_proxy_chain_is_appended_to_and_names_the_client() {
    let backend = Backend::start("b", Behaviour::Ok);
    let log = temp_path("ringgate-xff", "log");
    let proxy = behind_trust(&backend, r#"["127.0.0.1/32", "10.0.0.0/8"]"#, &log);
    // 10.1.1.1 is a trusted hop too: the client is 1.2.3.4.
    let r = request_as(proxy.port, "9.9.9.9, 1.2.3.4, 10.1.1.1");
    assert_eq!(r.status, 200, "{r:?}");
    let rec = &backend.records()[0];
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("9.9.9.9, 1.2.3.4, 10.1.1.1, 127.0.0.1"),
        "{rec:?}"
    );
    assert_eq!(
        rec.header("x-forwarded-proto").as_deref(),
        Some("https"),
        "a trusted proxy's protocol is kept: {rec:?}"
    );
    // The rate limit counts per client, not per trusted proxy: 1.2.3.4 has
    // spent its one request, 5.6.7.8 has not.
    assert_eq!(request_as(proxy.port, "1.2.3.4").status, 429);
    assert_eq!(request_as(proxy.port, "5.6.7.8").status, 200);
    // An IPv6 client behind the proxy.
    assert_eq!(request_as(proxy.port, "2001:db8::7").status, 200);
    let clients = logged_clients(&log, 4);
    assert_eq!(clients, ["1.2.3.4", "1.2.3.4", "5.6.7.8", "2001:db8::7"]);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_malformed_chain_from_a_trusted_proxy_counts_as_the_proxy() {
    let backend = Backend::start("b", Behaviour::Ok);
    let log = temp_path("ringgate-xff", "log");
    let proxy = behind_trust(&backend, r#"["127.0.0.1/32"]"#, &log);
    let r = request_as(proxy.port, "1.2.3.4, not-an-address");
    assert_eq!(r.status, 200, "{r:?}");
    // The peer's own budget is now spent, whatever address the next claims.
    assert_eq!(request_as(proxy.port, "1.2.3.4:80").status, 429);
    let clients = logged_clients(&log, 2);
    assert_eq!(clients, ["127.0.0.1", "127.0.0.1"]);
    let rec = &backend.records()[0];
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("1.2.3.4, not-an-address, 127.0.0.1"),
        "the chain is still appended to: {rec:?}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn an_untrusted_client_cannot_choose_its_rate_limit_key_or_logged_address() {
    let backend = Backend::start("b", Behaviour::Ok);
    let log = temp_path("ringgate-xff", "log");
    // Trusts some other network, not the test client's 127.0.0.1.
    let proxy = behind_trust(&backend, r#"["10.0.0.0/8"]"#, &log);
    assert_eq!(request_as(proxy.port, "1.2.3.4").status, 200);
    assert_eq!(request_as(proxy.port, "5.6.7.8").status, 429);
    assert_eq!(logged_clients(&log, 2), ["127.0.0.1", "127.0.0.1"]);
    let rec = &backend.records()[0];
    assert_eq!(
        rec.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{rec:?}"
    );
    assert_eq!(rec.header("x-forwarded-proto").as_deref(), Some("http"));
    let _ = std::fs::remove_file(&log);
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

/// Client-IP hashing keys on the client a trusted proxy names, and on the
/// peer otherwise: 20 claimed clients spread over both backends only when
/// the claim is believed.
#[test]
fn client_ip_hashing_uses_the_client_a_trusted_proxy_names() {
    let backends = [
        Backend::start("a", Behaviour::Ok),
        Backend::start("b", Behaviour::Ok),
    ];
    let addrs: Vec<std::net::SocketAddr> = backends.iter().map(Backend::addr).collect();
    let hashing = |trusted: &str| {
        ProxyConfig::with_backends(&addrs)
            .server("trusted_proxies", trusted)
            .upstream_extra("balance", "\"maglev_hash\"")
            .upstream_extra("hash_key", "\"client_ip\"")
            .start()
    };
    let backends_used = |port: u16| {
        let before: Vec<usize> = backends.iter().map(|b| b.records().len()).collect();
        for client in 0..20 {
            // Twice per client: a client stays on its backend.
            for _ in 0..2 {
                let r = request_as(port, &format!("203.0.113.{client}"));
                assert_eq!(r.status, 200, "{r:?}");
            }
        }
        backends
            .iter()
            .zip(before)
            .filter(|(b, n)| b.records().len() > *n)
            .count()
    };
    let trusting = hashing(r#"["127.0.0.1/32"]"#);
    assert_eq!(backends_used(trusting.port), 2, "20 clients on one backend");
    drop(trusting);
    let untrusting = hashing("[]");
    assert_eq!(
        backends_used(untrusting.port),
        1,
        "an untrusted peer's claims moved its requests"
    );
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
/// GMT`), `None` when `v` is not one.
fn imf_fixdate(v: &str) -> Option<i64> {
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = v.split(' ').collect();
    if v.len() != 29 || parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let weekday = days.iter().position(|d| format!("{d},") == parts[0])? as i64;
    let day: i64 = parts[1].parse().ok()?;
    let month = months.iter().position(|m| *m == parts[2])? as i64 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // Days from civil (Howard Hinnant), 1970-01-01 = 0, a Thursday.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days_since = era * 146_097 + doe - 719_468;
    if (days_since + 3).rem_euclid(7) != weekday {
        return None;
    }
    Some(days_since * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// RFC 9110 §6.6.1: a response forwarded without `Date` gets one (the
/// time it was received), a backend's own is kept, and the proxy's own
/// answers (404, 502, a route's `respond`) carry one as an origin's must.
#[test]
fn every_response_carries_one_date() {
    let with_date = Backend::start(
        "b",
        Behaviour::Raw(
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        ),
    );
    let proxy = ProxyConfig::new(with_date.addr()).start();
    let r = Client::connect(proxy.port).get("/x");
    let dates: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
        .collect();
    assert_eq!(dates.len(), 1, "{r:?}");
    assert_eq!(dates[0].1, "Sun, 06 Nov 1994 08:49:37 GMT");

    let without = Backend::start("b", Behaviour::Ok);
    let base = ProxyConfig::new(without.addr())
        .route_prefix("/app/")
        .to_toml();
    let proxy = Proxy::start(&format!(
        "{base}\n[[routes]]\nlistener = \"web\"\nmatch = {{ path_prefix = \"/health\" }}\nrespond = {{ status = 200, body = \"ok\" }}\n"
    ));
    let mut stopped = Backend::start("gone", Behaviour::Ok);
    let gone = ProxyConfig::new(stopped.addr()).start();
    stopped.stop();
    for (port, target, status) in [
        (proxy.port, "/app/x", 200),
        (proxy.port, "/health", 200),
        (proxy.port, "/nowhere", 404),
        (gone.port, "/x", 502),
    ] {
        let r = Client::connect(port).get(target);
        assert_eq!(r.status, status, "{target}: {r:?}");
        let dates: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
            .collect();
        assert_eq!(dates.len(), 1, "{target}: {r:?}");
        let at = imf_fixdate(&dates[0].1)
            .unwrap_or_else(|| panic!("{target}: not an IMF-fixdate: {:?}", dates[0].1));
        assert!(
            (at - now_secs()).abs() <= 5,
            "{target}: {:?} is not now",
            dates[0].1
        );
    }
}
