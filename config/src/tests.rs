use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A valid config that each test breaks in one place.
const BASE: &str = r#"[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[routes]]
listener = "web"
upstream = "api"

[[upstreams]]
name = "api"
backends = [{ address = "127.0.0.1:9000" }]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, "test.toml") {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty(), "Err must never be empty");
            errors
        }
    }
}

/// Asserts that `text` yields an error at `line`:`column` on `key` whose
/// message contains `fragment`.
#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, key: &str, fragment: &str) {
    let errors = errors(text);
    let found = errors.iter().find(|e| e.key == key);
    let Some(e) = found else {
        panic!("no error on key {key:?}; got {errors:#?}")
    };
    assert_eq!((e.line, e.column), (line, column), "position of {e}");
    assert!(e.message.contains(fragment), "{e} lacks {fragment:?}");
    assert_eq!(e.file, "test.toml");
    assert!(!e.message.contains('\n'), "message must be one line: {e}");
}

fn ok(text: &str) -> Config {
    match parse(text, "test.toml") {
        Ok(config) => config,
        Err(e) => panic!("expected Ok, got:\n{e}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

// ---- examples and defaults ----

#[test]
fn every_example_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = load(&path) {
                panic!("{} does not parse:\n{e}", path.display());
            }
            count += 1;
        }
    }
    assert!(
        count >= 3,
        "expected at least minimal, full and multi-route examples, found {count}"
    );
}

#[test]
fn minimal_config_takes_every_default() {
    let c = ok(BASE);
    assert_eq!(c.server.workers, Workers::Auto);
    assert!(c.server.pin);
    assert_eq!(c.server.backlog, 1024);
    assert_eq!(c.server.max_connections_per_worker, 10_000);
    assert_eq!(c.limits.max_head_bytes, 16 * 1024);
    assert_eq!(c.limits.max_headers, 100);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.keepalive_timeout, Duration::from_secs(75));
    assert_eq!(c.limits.body_read_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_chunk_line_bytes, 4 * 1024);
    let r = &c.routes[0];
    assert_eq!((r.listener, r.upstream), (0, Some(0)));
    assert_eq!(r.host, None);
    assert_eq!(r.path_prefix, "/");
    assert!(r.methods.is_empty());
    let u = &c.upstreams[0];
    assert_eq!(u.balance, Balance::WeightedRoundRobin);
    assert_eq!(u.hash_key, None);
    assert_eq!(u.health_check, None);
    assert_eq!(u.outlier_detection, DEFAULT_OUTLIER_DETECTION);
    assert_eq!(u.retries, None);
    assert_eq!(u.circuit_breaker, None);
    assert_eq!(r.rate_limit, None);
    assert_eq!(c.server.gossip_interval, Duration::from_millis(10));
    assert_eq!(c.server.gossip_inbox, 1024);
    assert_eq!(c.server.rate_limit_max_keys, 100_000);
    assert_eq!(
        u.backends[0].target,
        BackendTarget::Address(addr("127.0.0.1:9000"))
    );
    assert_eq!(u.backends[0].weight, 1);
    assert_eq!(u.connect_timeout, Duration::from_secs(1));
    assert_eq!(u.response_timeout, Duration::from_secs(30));
    assert_eq!(u.idle_timeout, Duration::from_secs(60));
    assert_eq!(u.max_idle_per_backend, 64);
}

#[test]
fn full_example_sets_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/full.toml");
    let c = match load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.listeners[1].address, addr("[::1]:8081"));
    let pg = c.upstreams.iter().position(|u| u.name == "pg").expect("pg");
    assert_eq!(
        c.listeners[2].protocol,
        ListenerProtocol::Tcp { upstream: pg }
    );
    assert_eq!(c.listeners[2].max_connections_per_worker, Some(2000));
    assert!(c.listeners[0].defer_accept && !c.listeners[0].delayed_ack);
    assert_eq!(
        c.upstreams[pg].tunnel_idle_timeout,
        Duration::from_secs(1800)
    );
    assert_eq!(
        c.upstreams[pg]
            .health_check
            .as_ref()
            .map(|h| h.path.clone()),
        Some(None)
    );
    let from = c.listeners[1]
        .proxy_protocol_from
        .as_ref()
        .expect("proxy_protocol");
    assert!(from.contains("::1".parse().unwrap()));
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(c.routes[0].path_prefix, "/v1/");
    assert_eq!(c.routes[0].methods, ["GET", "POST"]);
    assert_eq!(c.routes[0].checks.max_body, Some(1 << 20));
    assert_eq!(c.routes[0].checks.content_types, ["application/json"]);
    assert_eq!(c.routes[0].checks.required_headers, ["x-tenant"]);
    assert_eq!(c.routes[1].upstream, Some(1));
    assert_eq!(c.routes[2].listener, 1);
    assert_eq!(
        c.routes[4].headers,
        [("x-canary".to_owned(), "1".to_owned())]
    );
    assert_eq!(c.routes[4].rewrite_prefix.as_deref(), Some("/canary/v1/"));
    assert_eq!(c.routes[4].request_headers.remove, ["x-debug"]);
    assert_eq!(c.routes[4].response_headers.remove, ["server"]);
    assert_eq!(c.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.admin.map(|a| a.address), Some(addr("127.0.0.1:9901")));
    let log = c.access_log.as_ref().expect("access_log");
    assert_eq!(
        (log.path.to_str(), log.buffer),
        (Some("/var/log/ringgate/access.log"), 64 * 1024)
    );
    assert_eq!(c.upstreams[0].backends[0].weight, 3);
    assert_eq!(c.server.gossip_interval, Duration::from_millis(10));
    assert_eq!(c.server.gossip_inbox, 1024);
    assert_eq!(c.server.rate_limit_max_keys, 100_000);
    let api = &c.upstreams[0];
    assert_eq!(api.balance, Balance::WeightedRoundRobin);
    let hc = api.health_check.as_ref().expect("health_check");
    assert_eq!(
        (hc.path.as_deref().unwrap_or(""), hc.interval, hc.timeout),
        ("/health", Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((hc.rise, hc.fall, hc.expect_status), (2, 3, 200));
    assert_eq!(api.outlier_detection, DEFAULT_OUTLIER_DETECTION);
    let retries = api.retries.expect("retries");
    assert_eq!((retries.attempts, retries.budget_percent), (2, 20));
    assert!(retries.on.connect_failure && retries.on.reset);
    assert!(retries.on.timeout && retries.on.status_5xx);
    let cb = api.circuit_breaker.expect("circuit_breaker");
    assert_eq!(
        (
            cb.max_pending,
            cb.max_connections,
            cb.consecutive_failures,
            cb.open_for
        ),
        (1024, 1024, 5, Duration::from_secs(10))
    );
    let sticky = &c.upstreams[2];
    assert_eq!(sticky.balance, Balance::MaglevHash);
    let grpc = c
        .upstreams
        .iter()
        .find(|u| u.name == "grpc")
        .expect("the grpc upstream");
    assert_eq!(
        (grpc.name.as_str(), grpc.protocol),
        ("grpc", UpstreamProtocol::H2)
    );
    assert_eq!(sticky.hash_key, Some(HashKey::Cookie("session".into())));
    let rl = c.routes[0].rate_limit.as_ref().expect("rate_limit");
    assert_eq!(rl.key, RateLimitKey::ClientIp);
    assert_eq!(
        (rl.requests, rl.per, rl.burst),
        (100, Duration::from_secs(1), 200)
    );
    let rl = c.routes[2].rate_limit.as_ref().expect("rate_limit");
    assert_eq!(rl.key, RateLimitKey::Header("x-api-key".into()));
    assert_eq!(
        (rl.requests, rl.per, rl.burst),
        (600, Duration::from_secs(60), 10)
    );
    assert!((rl.rate_per_sec() - 10.0).abs() < 1e-9);
    assert_eq!(
        c.routes[3].rate_limit.as_ref().map(|r| &r.key),
        Some(&RateLimitKey::Route)
    );
    assert_eq!(c.upstreams[0].backends[1].weight, 1);
    assert!(!c.listeners[0].http2);
    assert_eq!(c.http2, Http2::default());
}

#[test]
fn multi_route_example_lowercases_hosts_and_keeps_wildcards() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/multi-route.toml");
    let c = match load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let hosts: Vec<_> = c.routes.iter().map(|r| r.host.as_deref()).collect();
    assert!(hosts.contains(&Some("shop.example.com")));
    assert!(hosts.contains(&Some("*.example.com")));
    assert!(hosts.contains(&None));
    assert_eq!(c.routes[2].methods, ["POST", "PUT", "PATCH", "DELETE"]);
    assert_eq!(c.upstreams[c.routes[0].upstream.unwrap()].name, "api-v2");
    assert_eq!(c.upstreams[2].max_idle_per_backend, 0);
}

#[test]
fn limits_and_server_defaults_match_the_constants() {
    let l = Limits::default();
    assert_eq!(l.max_head_bytes, DEFAULT_MAX_HEAD_BYTES);
    assert_eq!(l.max_chunk_line_bytes, DEFAULT_MAX_CHUNK_LINE_BYTES);
    assert_eq!(Server::default().workers, DEFAULT_WORKERS);
    assert_eq!(Server::default().backlog, DEFAULT_BACKLOG);
}

#[test]
fn lingering_close_is_on_by_default_and_zero_turns_it_off() {
    let c = ok(BASE);
    assert_eq!(c.limits.lingering_time, DEFAULT_LINGERING_TIME);
    assert_eq!(c.limits.lingering_timeout, DEFAULT_LINGERING_TIMEOUT);
    let c = ok(&format!(
        "[limits]\nlingering_time = \"0s\"\nlingering_timeout = \"250ms\"\n{BASE}"
    ));
    assert_eq!(c.limits.lingering_time, Duration::ZERO);
    assert_eq!(c.limits.lingering_timeout, Duration::from_millis(250));
    let text = format!("[limits]\nlingering_time = \"2h\"\nlingering_timeout = \"0s\"\n{BASE}");
    assert_error(&text, 2, 18, "limits.lingering_time", "must be in 0s..=1h");
    assert_error(
        &text,
        3,
        21,
        "limits.lingering_timeout",
        "must be in 1ms..=1h",
    );
}

#[test]
fn sizes_accept_integers_bare_strings_and_binary_units() {
    let c = ok(&format!(
        "[limits]\nmax_head_size = 2048\nmax_chunk_line_size = \"512\"\n{BASE}"
    ));
    assert_eq!(
        (c.limits.max_head_bytes, c.limits.max_chunk_line_bytes),
        (2048, 512)
    );
    let c = ok(&format!(
        "[limits]\nmax_head_size = \"1MiB\"\nmax_chunk_line_size = \"64B\"\n{BASE}"
    ));
    assert_eq!(
        (c.limits.max_head_bytes, c.limits.max_chunk_line_bytes),
        (1 << 20, 64)
    );
}

#[test]
fn workers_accepts_a_count() {
    let c = ok(&format!("[server]\nworkers = 4\npin = false\n{BASE}"));
    assert_eq!(c.server.workers, Workers::Count(4));
    assert!(!c.server.pin);
}

#[test]
fn port_zero_may_repeat() {
    let text = BASE.replace("127.0.0.1:8080", "127.0.0.1:0")
        + "[[listeners]]\nname = \"web2\"\naddress = \"127.0.0.1:0\"\n";
    assert_eq!(ok(&text).listeners.len(), 2);
}

#[test]
fn same_prefix_with_disjoint_methods_is_not_ambiguous() {
    let text = format!(
        "{BASE}[[routes]]\nlistener = \"web\"\nmatch = {{ methods = [\"GET\"] }}\nupstream = \"api\"\n\
         [[routes]]\nlistener = \"web\"\nmatch = {{ methods = [\"POST\"] }}\nupstream = \"api\"\n"
    );
    assert_eq!(ok(&text).routes.len(), 3);
}

#[test]
fn host_trailing_dot_is_dropped() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { host = \"Example.com.\" }\nupstream = \"api\"\n\n",
    );
    assert_eq!(ok(&text).routes[0].host.as_deref(), Some("example.com"));
}

// ---- syntax and schema errors (from the TOML deserializer) ----

#[test]
fn toml_syntax_error_is_located() {
    assert_error(
        "[server]\nworkers = \n",
        2,
        11,
        "server.workers",
        "invalid string",
    );
}

#[test]
fn syntax_error_in_a_header_names_the_table() {
    assert_error(
        "[server\nworkers = 1\n",
        1,
        8,
        "server",
        "invalid table header",
    );
}

#[test]
fn syntax_error_in_an_array_of_tables_counts_the_index() {
    assert_error(
        "[[routes]]\nlistener = \"a\"\n[[routes]]\nlistener = 'b\n",
        4,
        14,
        "routes[1].listener",
        "invalid literal string",
    );
}

#[test]
fn unknown_key_points_at_the_key() {
    assert_error(
        &format!("[server]\nbogus = 1\n{BASE}"),
        2,
        1,
        "server.bogus",
        "unknown key `bogus`",
    );
}

#[test]
fn unknown_key_in_an_inline_table_points_at_the_key() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { paht = \"/\" }\nupstream = \"api\"\n\n",
    );
    assert_error(&text, 7, 11, "routes[0].match.paht", "unknown key `paht`");
}

#[test]
fn unknown_key_in_a_backend_names_its_index() {
    let text = BASE.replace("\"127.0.0.1:9000\" }", "\"127.0.0.1:9000\", wieght = 2 }");
    assert_error(
        &text,
        11,
        43,
        "upstreams[0].backends[0].wieght",
        "unknown key `wieght`",
    );
}

#[test]
fn wrong_type_points_at_the_value() {
    assert_error(
        &format!("[server]\npin = \"yes\"\n{BASE}"),
        2,
        7,
        "server.pin",
        "expected a boolean",
    );
}

#[test]
fn wrong_type_for_a_table_says_table() {
    assert_error(
        &format!("server = 5\n{BASE}"),
        1,
        10,
        "server",
        "expected a table",
    );
}

#[test]
fn bad_duration_is_refused() {
    let text = format!("[limits]\nheader_read_timeout = \"5 parsecs\"\n{BASE}");
    assert_error(
        &text,
        2,
        23,
        "limits.header_read_timeout",
        "invalid duration \"5 parsecs\"",
    );
}

#[test]
fn decimal_size_unit_is_refused() {
    let text = format!("[limits]\nmax_head_size = \"16KB\"\n{BASE}");
    assert_error(&text, 2, 17, "limits.max_head_size", "unknown unit \"KB\"");
}

#[test]
fn negative_size_is_refused() {
    let text = format!("[limits]\nmax_head_size = -1\n{BASE}");
    assert_error(&text, 2, 17, "limits.max_head_size", "must not be negative");
}

#[test]
fn zero_workers_is_refused() {
    assert_error(
        &format!("[server]\nworkers = 0\n{BASE}"),
        2,
        11,
        "server.workers",
        "invalid worker count 0",
    );
}

#[test]
fn non_auto_worker_string_is_refused() {
    let text = format!("[server]\nworkers = \"many\"\n{BASE}");
    assert_error(
        &text,
        2,
        11,
        "server.workers",
        "invalid worker count \"many\"",
    );
}

#[test]
fn unknown_balance_is_refused() {
    let text = BASE.replace(
        "name = \"api\"\n",
        "name = \"api\"\nbalance = \"fastest\"\n",
    );
    assert_error(
        &text,
        11,
        11,
        "upstreams[0].balance",
        "unknown value `fastest`",
    );
}

#[test]
fn missing_required_key_names_the_key() {
    let text = BASE.replace("address = \"127.0.0.1:8080\"\n", "");
    assert_error(
        &text,
        1,
        1,
        "listeners[0].address",
        "missing field `address`",
    );
}

#[test]
fn column_counts_characters_not_bytes() {
    let text = format!("[server]\n# é\nworkers = \"ünf\"\n{BASE}");
    assert_error(&text, 3, 11, "server.workers", "invalid worker count");
}

// ---- semantic errors (all reported together) ----

#[test]
fn route_to_a_missing_upstream_is_refused() {
    let text = BASE.replace("upstream = \"api\"", "upstream = \"nope\"");
    assert_error(
        &text,
        7,
        12,
        "routes[0].upstream",
        "no upstream named \"nope\" (defined: api)",
    );
}

#[test]
fn route_on_a_missing_listener_is_refused() {
    let text = BASE.replace("listener = \"web\"", "listener = \"nope\"");
    assert_error(
        &text,
        6,
        12,
        "routes[0].listener",
        "no listener named \"nope\"",
    );
}

#[test]
fn duplicate_listener_name_is_refused() {
    let text = format!("{BASE}[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8081\"\n");
    assert_error(
        &text,
        13,
        8,
        "listeners[1].name",
        "duplicate name \"web\"; first defined on line 2",
    );
}

#[test]
fn duplicate_upstream_name_is_refused() {
    let text = format!(
        "{BASE}[[upstreams]]\nname = \"api\"\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n"
    );
    assert_error(
        &text,
        13,
        8,
        "upstreams[1].name",
        "duplicate name \"api\"; first defined on line 10",
    );
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let text = format!("{BASE}[[listeners]]\nname = \"web2\"\naddress = \"127.0.0.1:8080\"\n");
    assert_error(
        &text,
        14,
        11,
        "listeners[1].address",
        "already used by the listener on line 3",
    );
}

#[test]
fn unparsable_address_is_refused() {
    let text = BASE.replace("127.0.0.1:8080", "localhost:8080");
    assert_error(
        &text,
        3,
        11,
        "listeners[0].address",
        "invalid socket address \"localhost:8080\"",
    );
}

#[test]
fn upstream_without_backends_is_refused() {
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:9000\" }]",
        "backends = []",
    );
    assert_error(
        &text,
        11,
        12,
        "upstreams[0].backends",
        "at least one backend",
    );
    let text = BASE.replace("backends = [{ address = \"127.0.0.1:9000\" }]", "");
    assert_error(
        &text,
        10,
        8,
        "upstreams[0].backends",
        "at least one backend",
    );
}

#[test]
fn duplicate_backend_is_refused() {
    let text = BASE.replace("}]", "}, { address = \"127.0.0.1:9000\" }]");
    assert_error(
        &text,
        11,
        57,
        "upstreams[0].backends[1].address",
        "already listed on line 11",
    );
}

#[test]
fn weight_out_of_range_is_refused() {
    let text = BASE.replace("\"127.0.0.1:9000\" }", "\"127.0.0.1:9000\", weight = 0 }");
    assert_error(
        &text,
        11,
        52,
        "upstreams[0].backends[0].weight",
        "must be in 1..=1000",
    );
}

#[test]
fn path_prefix_must_start_with_a_slash() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { path_prefix = \"v1/\" }\nupstream = \"api\"\n\n",
    );
    assert_error(
        &text,
        7,
        25,
        "routes[0].match.path_prefix",
        "must start with \"/\"",
    );
}

#[test]
fn bad_method_token_is_refused() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { methods = [\"GET\", \"BAD METHOD\"] }\nupstream = \"api\"\n\n",
    );
    assert_error(
        &text,
        7,
        29,
        "routes[0].match.methods[1]",
        "not a valid HTTP method token",
    );
}

#[test]
fn lowercase_method_is_refused_with_a_hint() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { methods = [\"get\"] }\nupstream = \"api\"\n\n",
    );
    assert_error(&text, 7, 22, "routes[0].match.methods[0]", "write \"GET\"");
}

#[test]
fn duplicate_method_is_refused() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { methods = [\"GET\", \"GET\"] }\nupstream = \"api\"\n\n",
    );
    assert_error(&text, 7, 29, "routes[0].match.methods[1]", "listed twice");
}

#[test]
fn host_with_port_or_inner_wildcard_is_refused() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { host = \"a.com:80\" }\nupstream = \"api\"\n\n",
    );
    assert_error(
        &text,
        7,
        18,
        "routes[0].match.host",
        "must not contain a port",
    );
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { host = \"a.*.com\" }\nupstream = \"api\"\n\n",
    );
    assert_error(
        &text,
        7,
        18,
        "routes[0].match.host",
        "\"*.\" only at the start",
    );
}

#[test]
fn identical_routes_are_ambiguous() {
    let text = format!("{BASE}[[routes]]\nlistener = \"web\"\nupstream = \"api\"\n");
    assert_error(
        &text,
        13,
        12,
        "routes[1]",
        "matches the same requests as routes[0]",
    );
}

#[test]
fn limits_out_of_range_are_refused() {
    let text = format!(
        "[server]\nbacklog = 0\nmax_connections_per_worker = 0\n\
         [limits]\nmax_head_size = \"512\"\nmax_headers = 2000\nheader_read_timeout = \"0s\"\n\
         keepalive_timeout = \"2h\"\nmax_chunk_line_size = \"1MiB\"\n{BASE}"
    );
    let errors = errors(&text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.backlog",
            "server.max_connections_per_worker",
            "limits.max_head_size",
            "limits.max_headers",
            "limits.header_read_timeout",
            "limits.keepalive_timeout",
            "limits.max_chunk_line_size",
        ]
    );
    assert_error(&text, 2, 11, "server.backlog", "must be in 1..=65535");
    assert_error(
        &text,
        5,
        17,
        "limits.max_head_size",
        "must be in 1024..=1048576 bytes (1KiB..=1MiB)",
    );
    assert_error(&text, 6, 15, "limits.max_headers", "must be in 1..=1024");
    assert_error(
        &text,
        7,
        23,
        "limits.header_read_timeout",
        "must be in 1ms..=1h",
    );
    assert_error(&text, 9, 23, "limits.max_chunk_line_size", "(16B..=64KiB)");
}

#[test]
fn upstream_timeout_and_pool_out_of_range_are_refused() {
    let text = BASE.to_owned()
        + "timeouts = { connect = \"0ms\" }\npool = { max_idle_per_backend = -1 }\n";
    assert_error(
        &text,
        12,
        24,
        "upstreams[0].timeouts.connect",
        "out of range",
    );
    assert_error(
        &text,
        13,
        33,
        "upstreams[0].pool.max_idle_per_backend",
        "must be in 0..=65535",
    );
}

#[test]
fn empty_file_reports_every_missing_section() {
    let keys: Vec<String> = errors("").into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["listeners", "upstreams", "routes"]);
}

#[test]
fn empty_arrays_point_at_the_array() {
    assert_error(
        "listeners = []\nroutes = []\nupstreams = []\n",
        2,
        10,
        "routes",
        "at least one [[routes]]",
    );
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let text = r#"[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[routes]]
listener = "nope"
match = { path_prefix = "x", methods = ["g t"] }
upstream = "missing"

[[upstreams]]
name = "api"
backends = []
"#;
    let errors = errors(text);
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (6, "listeners[1].name"),
            (7, "listeners[1].address"),
            (10, "routes[0].listener"),
            (11, "routes[0].match.path_prefix"),
            (11, "routes[0].match.methods[0]"),
            (12, "routes[0].upstream"),
            (16, "upstreams[0].backends"),
        ]
    );
}

// ---- presentation and I/O ----

#[test]
fn errors_display_as_file_line_column_key_message_one_per_line() {
    let text = BASE
        .replace("upstream = \"api\"", "upstream = \"x\"")
        .replace("listener = \"web\"", "listener = \"y\"");
    let e = match parse(&text, "ringgate.toml") {
        Ok(_) => panic!("expected errors"),
        Err(e) => e,
    };
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with("ringgate.toml:6:12: routes[0].listener: no listener named \"y\""),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("ringgate.toml:7:12: routes[0].upstream: no upstream named \"x\""),
        "{shown}"
    );
}

#[test]
fn unreadable_file_is_a_config_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/does-not-exist.toml");
    let ConfigErrors(errors) = load(&path).expect_err("missing file");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].line, errors[0].column, errors[0].key.as_str()),
        (1, 1, "(file)")
    );
    assert!(errors[0].message.contains("cannot read config file"));
    assert!(errors[0].file.ends_with("does-not-exist.toml"));
}

// ---- balancing, health, outliers, retries, breakers, rate limits, gossip ----

/// Like `assert_error`, with the position taken from the first occurrence of
/// `at` in `text`.
#[track_caller]
fn assert_error_at(text: &str, at: &str, key: &str, fragment: &str) {
    assert_error_after(text, at, 0, key, fragment);
}

/// Like `assert_error_at`, `skip` characters into the first `at`.
#[track_caller]
fn assert_error_after(text: &str, at: &str, skip: usize, key: &str, fragment: &str) {
    let offset = text.find(at).expect("needle in text") + skip;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    assert_error(text, line, column, key, fragment);
}

fn upstream_with(extra: &str) -> String {
    BASE.to_owned() + extra + "\n"
}

fn route_with(extra: &str) -> String {
    BASE.replace(
        "upstream = \"api\"\n",
        &format!("upstream = \"api\"\n{extra}\n"),
    )
}

const TWO_BACKENDS: &str = "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n\n[[routes]]\nlistener = \"web\"\nupstream = \"api\"\n\n[[upstreams]]\nname = \"api\"\nbackends = [{ address = \"127.0.0.1:9000\", weight = 3 }, { address = \"127.0.0.1:9001\" }]\n";

#[test]
fn every_balance_name_parses() {
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("weighted_round_robin", Balance::WeightedRoundRobin),
        ("least_conn", Balance::LeastConn),
        ("p2c_ewma", Balance::P2cEwma),
        ("random", Balance::Random),
    ] {
        let c = ok(&upstream_with(&format!("balance = \"{name}\"")));
        assert_eq!(c.upstreams[0].balance, balance, "{name}");
    }
    let c = ok(&upstream_with(
        "balance = \"maglev_hash\"\nhash_key = \"client_ip\"",
    ));
    assert_eq!(c.upstreams[0].balance, Balance::MaglevHash);
    assert_eq!(c.upstreams[0].hash_key, Some(HashKey::ClientIp));
}

#[test]
fn weights_are_honoured_by_default() {
    let c = ok(TWO_BACKENDS);
    assert_eq!(c.upstreams[0].balance, Balance::WeightedRoundRobin);
}

#[test]
fn round_robin_with_unequal_weights_is_refused() {
    let text = TWO_BACKENDS.to_owned() + "balance = \"round_robin\"\n";
    assert_error_at(
        &text,
        "\"round_robin\"",
        "upstreams[0].balance",
        "write \"weighted_round_robin\"",
    );
    let equal = upstream_with("balance = \"round_robin\"");
    assert_eq!(ok(&equal).upstreams[0].balance, Balance::RoundRobin);
}

#[test]
fn hash_key_forms_parse_and_header_names_are_lowercased() {
    for (text, key) in [
        ("header:X-User", HashKey::Header("x-user".into())),
        ("cookie:Session_ID", HashKey::Cookie("Session_ID".into())),
    ] {
        let c = ok(&upstream_with(&format!(
            "balance = \"maglev_hash\"\nhash_key = \"{text}\""
        )));
        assert_eq!(c.upstreams[0].hash_key, Some(key));
    }
}

#[test]
fn maglev_without_hash_key_is_refused() {
    let text = upstream_with("balance = \"maglev_hash\"");
    assert_error_at(
        &text,
        "\"maglev_hash\"",
        "upstreams[0].hash_key",
        "required with balance = \"maglev_hash\"",
    );
}

#[test]
fn hash_key_without_maglev_is_refused() {
    let text = upstream_with("balance = \"least_conn\"\nhash_key = \"client_ip\"");
    assert_error_at(
        &text,
        "\"client_ip\"",
        "upstreams[0].hash_key",
        "only used with balance = \"maglev_hash\"",
    );
}

#[test]
fn bad_hash_keys_are_refused() {
    for (value, fragment) in [
        ("ip", "unknown hash key \"ip\""),
        ("header:", "invalid header name \"\""),
        ("header:x y", "invalid header name \"x y\""),
        ("cookie:a=b", "invalid cookie name \"a=b\""),
    ] {
        let text = upstream_with(&format!(
            "balance = \"maglev_hash\"\nhash_key = \"{value}\""
        ));
        assert_error_at(
            &text,
            &format!("\"{value}\""),
            "upstreams[0].hash_key",
            fragment,
        );
    }
}

#[test]
fn health_check_defaults_rise_fall_and_status() {
    let c = ok(&upstream_with(
        "health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"200ms\" }",
    ));
    let hc = c.upstreams[0].health_check.clone().expect("health_check");
    assert_eq!(
        hc,
        HealthCheck {
            path: Some("/healthz".into()),
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 3,
            expect_status: 200,
        }
    );
}

#[test]
fn health_check_requires_path_interval_and_timeout() {
    let text = upstream_with("health_check = { path = \"/h\", interval = \"1s\" }");
    assert_error_at(
        &text,
        "{ path",
        "upstreams[0].health_check.timeout",
        "missing field `timeout`",
    );
}

#[test]
fn health_check_values_are_checked() {
    let text = upstream_with(
        "health_check = { path = \"health\", interval = \"1s\", timeout = \"2s\", rise = 0, fall = 101, expect_status = 700 }",
    );
    let e = errors(&text);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "upstreams[0].health_check.path",
            "upstreams[0].health_check.timeout",
            "upstreams[0].health_check.rise",
            "upstreams[0].health_check.fall",
            "upstreams[0].health_check.expect_status",
        ]
    );
    assert!(e[1].message.contains("longer than interval 1s"), "{}", e[1]);
    assert!(e[4].message.contains("must be in 100..=599"), "{}", e[4]);
    let text =
        upstream_with("health_check = { path = \"/a b\", interval = \"1s\", timeout = \"1s\" }");
    assert_error_at(
        &text,
        "\"/a b\"",
        "upstreams[0].health_check.path",
        "visible ASCII",
    );
}

#[test]
fn outlier_detection_fills_in_defaults_per_field() {
    let c = ok(&upstream_with(
        "outlier_detection = { consecutive_failures = 3, max_ejection_percent = 0 }",
    ));
    let o = c.upstreams[0].outlier_detection;
    assert_eq!((o.consecutive_failures, o.max_ejection_percent), (3, 0));
    assert_eq!(o.base_ejection_time, Duration::from_secs(30));
    assert_eq!(o.max_ejection_time, Duration::from_secs(300));
}

#[test]
fn outlier_detection_values_are_checked() {
    let text = upstream_with(
        "outlier_detection = { consecutive_failures = 0, base_ejection_time = \"1m\", max_ejection_time = \"10s\", max_ejection_percent = 101 }",
    );
    let e = errors(&text);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "upstreams[0].outlier_detection.consecutive_failures",
            "upstreams[0].outlier_detection.max_ejection_time",
            "upstreams[0].outlier_detection.max_ejection_percent",
        ]
    );
    assert!(
        e[1].message.contains("shorter than base_ejection_time 1m"),
        "{}",
        e[1]
    );
}

#[test]
fn retries_default_inside_the_table_and_parse_every_condition() {
    let c = ok(&upstream_with("retries = {}"));
    assert_eq!(
        c.upstreams[0].retries,
        Some(Retries {
            attempts: 2,
            on: DEFAULT_RETRY_ON,
            budget_percent: 20
        })
    );
    let c = ok(&upstream_with(
        "retries = { attempts = 3, on = [\"timeout\", \"5xx\"], budget = \"5%\" }",
    ));
    let r = c.upstreams[0].retries.expect("retries");
    assert_eq!((r.attempts, r.budget_percent), (3, 5));
    assert_eq!(
        r.on,
        RetryOn {
            connect_failure: false,
            reset: false,
            timeout: true,
            status_5xx: true
        }
    );
}

#[test]
fn retry_values_are_checked() {
    let text =
        upstream_with("retries = { attempts = 9, on = [\"reset\", \"reset\"], budget = \"20\" }");
    let e = errors(&text);
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "upstreams[0].retries.attempts",
            "upstreams[0].retries.on[1]",
            "upstreams[0].retries.budget",
        ]
    );
    assert!(e[2].message.contains("whole percentage"), "{}", e[2]);
    for budget in ["101%", "-1%", "12.5%", "%"] {
        let text = upstream_with(&format!("retries = {{ budget = \"{budget}\" }}"));
        assert_error_at(
            &text,
            &format!("\"{budget}\""),
            "upstreams[0].retries.budget",
            "invalid budget",
        );
    }
    let text = upstream_with("retries = { on = [] }");
    assert_error_at(&text, "[]", "upstreams[0].retries.on", "at least one");
}

#[test]
fn unknown_retry_condition_is_a_schema_error() {
    let text = upstream_with("retries = { on = [\"4xx\"] }");
    assert_error_at(
        &text,
        "\"4xx\"",
        "upstreams[0].retries.on[0]",
        "unknown value `4xx`",
    );
}

#[test]
fn circuit_breaker_defaults_and_ranges() {
    let c = ok(&upstream_with("circuit_breaker = { max_pending = 10 }"));
    let cb = c.upstreams[0].circuit_breaker.expect("circuit_breaker");
    assert_eq!(
        (
            cb.max_pending,
            cb.max_connections,
            cb.consecutive_failures,
            cb.open_for
        ),
        (10, 1024, 5, Duration::from_secs(10))
    );
    let cb = ok(&upstream_with("circuit_breaker = { max_connections = 2 }")).upstreams[0]
        .circuit_breaker
        .expect("circuit_breaker");
    assert_eq!((cb.max_pending, cb.max_connections), (1024, 2));
    let text = upstream_with(
        "circuit_breaker = { max_pending = 0, max_connections = 1000001, consecutive_failures = 1001, open_for = \"2h\" }",
    );
    let keys: Vec<String> = errors(&text).into_iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        [
            "upstreams[0].circuit_breaker.max_pending",
            "upstreams[0].circuit_breaker.max_connections",
            "upstreams[0].circuit_breaker.consecutive_failures",
            "upstreams[0].circuit_breaker.open_for",
        ]
    );
}

#[test]
fn unknown_key_in_a_new_table_points_at_the_key() {
    let text = upstream_with("circuit_breaker = { max_pendng = 1 }");
    assert_error_at(
        &text,
        "max_pendng",
        "upstreams[0].circuit_breaker.max_pendng",
        "unknown key `max_pendng`",
    );
}

#[test]
fn rate_limit_burst_defaults_to_the_per_second_rate() {
    for (rate, requests, per_secs, burst) in [
        ("100/s", 100, 1, 100),
        ("600/m", 600, 60, 10),
        ("30/m", 30, 60, 1),
        (" 5 / s ", 5, 1, 5),
    ] {
        let c = ok(&route_with(&format!(
            "rate_limit = {{ key = \"route\", rate = \"{rate}\" }}"
        )));
        let rl = c.routes[0].rate_limit.clone().expect("rate_limit");
        assert_eq!(
            (rl.requests, rl.per, rl.burst),
            (requests, Duration::from_secs(per_secs), burst),
            "{rate}"
        );
    }
}

#[test]
fn rate_limit_key_forms_parse() {
    for (text, key) in [
        ("client_ip", RateLimitKey::ClientIp),
        ("route", RateLimitKey::Route),
        ("header:X-Api-Key", RateLimitKey::Header("x-api-key".into())),
    ] {
        let c = ok(&route_with(&format!(
            "rate_limit = {{ key = \"{text}\", rate = \"1/s\", burst = 5 }}"
        )));
        let rl = c.routes[0].rate_limit.clone().expect("rate_limit");
        assert_eq!((rl.key, rl.burst), (key, 5));
    }
}

#[test]
fn bad_rate_limits_are_refused() {
    for (value, field, fragment) in [
        ("\"1/h\"", "rate", "unknown unit \"h\""),
        ("\"100\"", "rate", "write \"N/s\" or \"N/m\""),
        ("\"0/s\"", "rate", "must be in 1..=1000000000"),
        ("\"1.5/s\"", "rate", "not a whole number"),
        ("\"cookie:a\"", "key", "unknown key \"cookie:a\""),
        ("\"header:\"", "key", "invalid header name"),
        ("0", "burst", "must be in 1..=1000000000"),
    ] {
        let fields = match field {
            "rate" => format!("key = \"route\", rate = {value}"),
            "key" => format!("key = {value}, rate = \"1/s\""),
            _ => format!("key = \"route\", rate = \"1/s\", burst = {value}"),
        };
        let text = route_with(&format!("rate_limit = {{ {fields} }}"));
        assert_error_after(
            &text,
            &format!("{field} = {value}"),
            field.len() + 3,
            &format!("routes[0].rate_limit.{field}"),
            fragment,
        );
    }
}

#[test]
fn rate_limit_needs_key_and_rate() {
    let text = route_with("rate_limit = { rate = \"1/s\" }");
    assert_error_at(
        &text,
        "{ rate",
        "routes[0].rate_limit.key",
        "missing field `key`",
    );
}

#[test]
fn gossip_and_key_table_settings_are_checked() {
    let c = ok(&format!(
        "[server]\ngossip_interval = \"1ms\"\ngossip_inbox = 16\nrate_limit_max_keys = 10\n\n{BASE}"
    ));
    assert_eq!(c.server.gossip_interval, Duration::from_millis(1));
    assert_eq!(
        (c.server.gossip_inbox, c.server.rate_limit_max_keys),
        (16, 10)
    );
    let text = format!(
        "[server]\ngossip_interval = \"2s\"\ngossip_inbox = 0\nrate_limit_max_keys = 0\n\n{BASE}"
    );
    let e = errors(&text);
    let got: Vec<(usize, usize, &str)> = e
        .iter()
        .map(|e| (e.line, e.column, e.key.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, 19, "server.gossip_interval"),
            (3, 16, "server.gossip_inbox"),
            (4, 23, "server.rate_limit_max_keys"),
        ]
    );
    assert!(e[0].message.contains("must be in 1ms..=1s"), "{}", e[0]);
    let text = format!("[server]\ngossip_interval = \"500us\"\n\n{BASE}");
    assert_error(&text, 2, 19, "server.gossip_interval", "out of range");
}

#[test]
fn access_log_is_optional_and_checked() {
    assert_eq!(ok(BASE).access_log, None);
    let c = ok(&format!(
        "[access_log]\npath = \"/var/log/rg.log\"\n\n{BASE}"
    ));
    let log = c.access_log.expect("access_log");
    assert_eq!(log.path, std::path::PathBuf::from("/var/log/rg.log"));
    assert_eq!(log.buffer, 64 * 1024);
    let c = ok(&format!(
        "[access_log]\npath = \"a.log\"\nbuffer = \"1MiB\"\n\n{BASE}"
    ));
    assert_eq!(c.access_log.map(|l| l.buffer), Some(1 << 20));
    let text = format!("[access_log]\npath = \" \"\nbuffer = \"1KiB\"\n\n{BASE}");
    assert_error(&text, 2, 8, "access_log.path", "must name a file");
    assert_error(&text, 3, 10, "access_log.buffer", "out of range");
    let text = format!("[access_log]\nbuffer = \"8KiB\"\n\n{BASE}");
    assert!(errors(&text)[0].message.contains("missing field `path`"));
}

#[test]
fn admin_address_is_parsed_and_must_not_be_a_listeners() {
    assert_eq!(ok(BASE).admin, None);
    let c = ok(&format!("[admin]\naddress = \"127.0.0.1:9901\"\n\n{BASE}"));
    assert_eq!(
        c.admin.map(|a| a.address),
        Some("127.0.0.1:9901".parse().unwrap())
    );
    let text = format!("[admin]\naddress = \"localhost:9901\"\n\n{BASE}");
    assert_error(&text, 2, 11, "admin.address", "invalid socket address");
    let listener = BASE
        .lines()
        .find_map(|l| l.trim().strip_prefix("address = "))
        .expect("BASE has a listener address");
    let text = format!("[admin]\naddress = {listener}\n\n{BASE}");
    assert_error(
        &text,
        2,
        11,
        "admin.address",
        "already used by the listener",
    );
}

#[test]
fn match_headers_are_lowercased_sorted_and_checked() {
    let two_routes = |a: &str, b: &str| {
        format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n\n\
             [[routes]]\nlistener = \"web\"\nupstream = \"api\"\n{a}\n\n\
             [[routes]]\nlistener = \"web\"\nupstream = \"api\"\n{b}\n\n\
             [[upstreams]]\nname = \"api\"\nbackends = [{{ address = \"127.0.0.1:9000\" }}]\n"
        )
    };
    let c = ok(&two_routes(
        "",
        "match = { headers = { X-Tier = \"gold\", x-canary = \"1\" } }",
    ));
    assert!(c.routes[0].headers.is_empty());
    assert_eq!(
        c.routes[1].headers,
        [
            ("x-canary".to_owned(), "1".to_owned()),
            ("x-tier".to_owned(), "gold".to_owned())
        ]
    );
    // Same path, same headers: ambiguous.
    let text = two_routes(
        "match = { headers = { x-a = \"1\" } }",
        "match = { headers = { X-A = \"1\" } }",
    );
    assert!(
        errors(&text).iter().any(|e| e.key == "routes[1]"),
        "{:?}",
        errors(&text)
    );
    for (bad, fragment) in [
        ("\"bad name\" = \"1\"", "not a valid header name"),
        ("host = \"a\"", "match.host"),
        ("x-a = \" 1\"", "surrounding whitespace"),
        ("x-a = \"1\", X-A = \"2\"", "listed twice"),
    ] {
        let text = two_routes("", &format!("match = {{ headers = {{ {bad} }} }}"));
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|e| e.key == "routes[1].match.headers" && e.message.contains(fragment)),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn rewrite_and_request_headers_are_checked() {
    let route = |extra: &str| {
        format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n\n\
             [[routes]]\nlistener = \"web\"\nupstream = \"api\"\n{extra}\n\n\
             [[upstreams]]\nname = \"api\"\nbackends = [{{ address = \"127.0.0.1:9000\" }}]\n"
        )
    };
    let c = ok(&route(
        "rewrite = { prefix = \"/v2/\" }\nrequest_headers = { set = { X-Env = \"prod\", Host = \"internal\" }, remove = [\"X-Debug\"] }",
    ));
    let r = &c.routes[0];
    assert_eq!(r.rewrite_prefix.as_deref(), Some("/v2/"));
    assert_eq!(
        r.request_headers.set,
        [
            ("host".to_owned(), "internal".to_owned()),
            ("x-env".to_owned(), "prod".to_owned())
        ]
    );
    assert_eq!(r.request_headers.remove, ["x-debug"]);
    assert!(r.request_headers.drops(b"X-DEBUG") && r.request_headers.drops(b"Host"));
    assert!(!r.request_headers.drops(b"accept"));
    assert!(ok(&route("")).routes[0].request_headers.is_empty());
    let c = ok(&route(
        "response_headers = { set = { X-Frame-Options = \"DENY\" }, remove = [\"Server\"] }",
    ));
    let edits = &c.routes[0].response_headers;
    assert_eq!(
        edits.set,
        [("x-frame-options".to_owned(), "DENY".to_owned())]
    );
    assert_eq!(edits.remove, ["server"]);
    let e = errors(&route(
        "response_headers = { remove = [\"Content-Length\"] }",
    ));
    assert!(
        e.iter()
            .any(|e| e.key == "routes[0].response_headers.remove[0]"),
        "{e:?}"
    );
    for (extra, key, fragment) in [
        (
            "rewrite = { prefix = \"v2\" }",
            "routes[0].rewrite.prefix",
            "must start with",
        ),
        (
            "request_headers = { set = { Content-Length = \"1\" } }",
            "routes[0].request_headers.set",
            "managed by the proxy",
        ),
        (
            "request_headers = { remove = [\"x-forwarded-for\"] }",
            "routes[0].request_headers.remove[0]",
            "managed by the proxy",
        ),
        (
            "request_headers = { remove = [\"Host\"] }",
            "routes[0].request_headers.remove[0]",
            "Host cannot be removed",
        ),
        (
            "request_headers = { set = { x-a = \"1\" }, remove = [\"X-A\"] }",
            "routes[0].request_headers.remove[0]",
            "also in set",
        ),
        (
            "request_headers = { set = { \"bad name\" = \"1\" } }",
            "routes[0].request_headers.set",
            "not a valid header name",
        ),
    ] {
        let e = errors(&route(extra));
        assert!(
            e.iter()
                .any(|e| e.key == key && e.message.contains(fragment)),
            "{extra}: {e:?}"
        );
    }
}

#[test]
fn drain_timeout_default_and_range() {
    assert_eq!(ok(BASE).server.drain_timeout, Duration::from_secs(30));
    let c = ok(&format!("[server]\ndrain_timeout = \"250ms\"\n\n{BASE}"));
    assert_eq!(c.server.drain_timeout, Duration::from_millis(250));
    let text = format!("[server]\ndrain_timeout = \"2h\"\n\n{BASE}");
    assert_error(&text, 2, 17, "server.drain_timeout", "out of range");
}

#[test]
fn config_md_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
    let doc = std::fs::read_to_string(&path).expect("docs/CONFIG.md");
    // The full example under "## Example"; other sections have snippets.
    let section = doc.find("\n## Example").expect("an Example section");
    let start =
        section + doc[section..].find("```toml\n").expect("a toml example") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("closing fence");
    let c = ok(&doc[start..end]);
    assert_eq!(c.upstreams[0].balance, Balance::P2cEwma);
    assert!(c.routes[0].rate_limit.is_some());
}

#[test]
fn io_uring_setup_defaults_to_auto_and_names_its_choices() {
    assert_eq!(ok(BASE).server.io_uring_setup, RingSetup::Auto);
    let set = |v: &str| format!("[server]\nio_uring_setup = \"{v}\"\n{BASE}");
    assert_eq!(ok(&set("plain")).server.io_uring_setup, RingSetup::Plain);
    assert_eq!(
        ok(&set("defer_taskrun")).server.io_uring_setup,
        RingSetup::DeferTaskrun
    );
    assert_eq!(
        ok(&set("coop_taskrun")).server.io_uring_setup,
        RingSetup::CoopTaskrun
    );
    assert_error(
        &set("fast"),
        2,
        18,
        "server.io_uring_setup",
        "unknown value",
    );
}

#[test]
fn send_timeouts_and_stray_cooldown_have_defaults_and_ranges() {
    let c = ok(BASE);
    assert_eq!(c.limits.send_timeout, Duration::from_secs(60));
    assert_eq!(c.upstreams[0].send_timeout, Duration::from_secs(60));
    assert_eq!(c.upstreams[0].stray_cooldown, Duration::from_secs(30));
    let text = format!(
        "[limits]\nsend_timeout = \"0ms\"\n{BASE}timeouts = {{ send = \"2h\" }}\npool = {{ stray_cooldown = \"1s\" }}\n"
    );
    let errs = errors(&text);
    for key in ["limits.send_timeout", "upstreams[0].timeouts.send"] {
        assert!(
            errs.iter().any(|e| e.key == key),
            "no error on {key}: {errs:#?}"
        );
    }
}

#[test]
fn a_wildcard_and_a_specific_listener_on_one_port_are_refused() {
    let text = r#"[[listeners]]
name = "all"
address = "0.0.0.0:8080"

[[listeners]]
name = "local"
address = "127.0.0.1:8080"

[[routes]]
listener = "all"
upstream = "api"

[[upstreams]]
name = "api"
backends = [{ address = "127.0.0.1:9000" }]
"#;
    assert_error(text, 7, 11, "listeners[1].address", "overlaps 0.0.0.0:8080");
    // Other ports, or the other family, do not overlap.
    ok(&text.replace("127.0.0.1:8080", "127.0.0.1:8081"));
    ok(&text.replace("127.0.0.1:8080", "[::1]:8080"));
}

// ---- trusted_proxies ----

#[test]
fn trusted_proxies_default_to_none_and_take_networks_and_addresses() {
    assert!(ok(BASE).server.trusted_proxies.is_empty());
    let c = ok(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::1/8\"]\n{BASE}"
    ));
    let t = &c.server.trusted_proxies;
    assert_eq!(t.0.len(), 3);
    assert!(t.contains("10.200.0.1".parse().unwrap()));
    assert!(t.contains("127.0.0.1".parse().unwrap()));
    assert!(!t.contains("127.0.0.2".parse().unwrap()));
    // Host bits of a network are dropped, not an error.
    assert!(t.contains("fd12::5".parse().unwrap()));
    // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
    assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!t.contains("11.0.0.1".parse().unwrap()));
}

#[test]
fn a_trusted_proxy_that_is_not_a_network_is_an_error() {
    let text = format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n{BASE}");
    assert_error(
        &text,
        2,
        34,
        "server.trusted_proxies[1]",
        "is not an IP network",
    );
    let text = format!("[server]\ntrusted_proxies = [\"proxy.example\"]\n{BASE}");
    assert_error(
        &text,
        2,
        20,
        "server.trusted_proxies[0]",
        "is not an IP network",
    );
}

// ---- PROXY protocol ----

fn listener_with(extra: &str) -> String {
    BASE.replace(
        "address = \"127.0.0.1:8080\"\n",
        &format!("address = \"127.0.0.1:8080\"\n{extra}\n"),
    )
}

#[test]
fn proxy_protocol_is_off_by_default_and_takes_its_networks() {
    assert!(ok(BASE).listeners[0].proxy_protocol_from.is_none());
    let c = ok(&listener_with(
        "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"127.0.0.1\"]",
    ));
    let from = c.listeners[0].proxy_protocol_from.as_ref().expect("on");
    assert!(from.contains("10.9.9.9".parse().unwrap()));
    assert!(from.contains("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!from.contains("127.0.0.2".parse().unwrap()));
    assert!(ok(&listener_with("proxy_protocol = false")).listeners[0]
        .proxy_protocol_from
        .is_none());
}

#[test]
fn proxy_protocol_without_its_networks_is_refused() {
    let text = listener_with("proxy_protocol = true");
    assert_error_at(
        &text,
        "true",
        "listeners[0].proxy_protocol",
        "proxy_protocol = true needs proxy_protocol_from",
    );
}

#[test]
fn proxy_protocol_from_without_proxy_protocol_is_refused() {
    for extra in [
        "proxy_protocol_from = [\"10.0.0.0/8\"]",
        "proxy_protocol = false\nproxy_protocol_from = [\"10.0.0.0/8\"]",
    ] {
        let text = listener_with(extra);
        assert_error_at(
            &text,
            "[\"10.",
            "listeners[0].proxy_protocol_from",
            "is only read with proxy_protocol = true",
        );
    }
}

#[test]
fn proxy_protocol_from_must_hold_networks() {
    let text = listener_with("proxy_protocol = true\nproxy_protocol_from = []");
    assert_error_at(
        &text,
        "[]",
        "listeners[0].proxy_protocol_from",
        "must list at least one network",
    );
    let text = listener_with(
        "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"lb.example\"]",
    );
    assert_error_at(
        &text,
        "\"lb.example",
        "listeners[0].proxy_protocol_from[1]",
        "\"lb.example\" is not an IP network",
    );
}

#[test]
fn proxy_protocol_prints_and_reads_back() {
    let c = ok(&listener_with(
        "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"fd00::/8\"]",
    ));
    let printed = to_toml(&c);
    assert!(
        printed.contains(
            "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"fd00::/8\"]\n"
        ),
        "{printed}"
    );
    let again = ok(&printed);
    assert_eq!(
        again.listeners[0].proxy_protocol_from,
        c.listeners[0].proxy_protocol_from
    );
    assert!(to_toml(&ok(BASE)).contains("proxy_protocol = false\n"));
}

#[test]
fn send_proxy_protocol_takes_v1_or_v2_and_prints_back() {
    assert_eq!(ok(BASE).upstreams[0].send_proxy_protocol, None);
    for (text, want) in [
        ("v1", ProxyProtocolVersion::V1),
        ("v2", ProxyProtocolVersion::V2),
    ] {
        let c = ok(&upstream_with(&format!("send_proxy_protocol = \"{text}\"")));
        assert_eq!(c.upstreams[0].send_proxy_protocol, Some(want));
        let printed = to_toml(&c);
        assert!(
            printed.contains(&format!("send_proxy_protocol = \"{text}\"\n")),
            "{printed}"
        );
        assert_eq!(ok(&printed).upstreams[0].send_proxy_protocol, Some(want));
    }
    let text = upstream_with("send_proxy_protocol = \"v3\"");
    assert_error_at(
        &text,
        "\"v3\"",
        "upstreams[0].send_proxy_protocol",
        "unknown value `v3` (expected one of `v1`, `v2`)",
    );
}

// ---- tcp listeners ----

const TCP_ONLY: &str = r#"[[listeners]]
name = "db"
address = "127.0.0.1:5432"
protocol = "tcp"
upstream = "pg"

[[upstreams]]
name = "pg"
backends = [{ address = "10.0.0.1:5432" }]
"#;

#[test]
fn a_tcp_listener_relays_to_its_upstream_and_needs_no_routes() {
    let c = ok(TCP_ONLY);
    assert_eq!(
        c.listeners[0].protocol,
        ListenerProtocol::Tcp { upstream: 0 }
    );
    assert!(!c.listeners[0].http2);
    assert!(c.routes.is_empty());
    assert_eq!(
        c.upstreams[0].tunnel_idle_timeout,
        DEFAULT_TUNNEL_IDLE_TIMEOUT
    );
    assert_eq!(c.listeners[0].max_connections_per_worker, None);
    assert_eq!(ok(BASE).listeners[0].protocol, ListenerProtocol::Http);
    let c = ok(&TCP_ONLY
        .replace(
            "upstream = \"pg\"\n",
            "upstream = \"pg\"\nmax_connections_per_worker = 100\n",
        )
        .replace(
            "5432\" }]",
            "5432\" }]\ntimeouts = { tunnel_idle = \"30s\" }",
        ));
    assert_eq!(c.listeners[0].max_connections_per_worker, Some(100));
    assert_eq!(c.upstreams[0].tunnel_idle_timeout, Duration::from_secs(30));
    let printed = to_toml(&c);
    let again = ok(&printed);
    assert_eq!(
        again.listeners[0].protocol,
        ListenerProtocol::Tcp { upstream: 0 }
    );
    assert_eq!(again.listeners[0].max_connections_per_worker, Some(100));
    assert_eq!(
        again.upstreams[0].tunnel_idle_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(to_toml(&again), printed);
}

/// Deferred accepts and a delayed first ACK where the client speaks first
/// (http), not where the server may (tcp); either way on request.
#[test]
fn accepts_are_deferred_on_http_listeners_and_not_on_tcp_ones_by_default() {
    let http = &ok(BASE).listeners[0];
    assert!(http.defer_accept && http.delayed_ack);
    let tcp = &ok(TCP_ONLY).listeners[0];
    assert!(!tcp.defer_accept && !tcp.delayed_ack);

    let off = ok(&BASE.replace(
        "address = \"127.0.0.1:8080\"\n",
        "address = \"127.0.0.1:8080\"\ndefer_accept = false\ndelayed_ack = false\n",
    ));
    assert!(!off.listeners[0].defer_accept && !off.listeners[0].delayed_ack);
    let on = ok(&TCP_ONLY.replace(
        "upstream = \"pg\"\n",
        "upstream = \"pg\"\ndefer_accept = true\ndelayed_ack = true\n",
    ));
    assert!(on.listeners[0].defer_accept && on.listeners[0].delayed_ack);
    for c in [off, on] {
        let printed = to_toml(&c);
        let again = &ok(&printed).listeners[0];
        assert_eq!(
            (again.defer_accept, again.delayed_ack),
            (c.listeners[0].defer_accept, c.listeners[0].delayed_ack),
            "{printed}"
        );
    }
    assert_error(
        &BASE.replace(
            "address = \"127.0.0.1:8080\"\n",
            "address = \"127.0.0.1:8080\"\ndefer_accept = 1\n",
        ),
        4,
        16,
        "listeners[0].defer_accept",
        "expected a boolean",
    );
}

#[test]
fn a_tcp_listener_without_an_upstream_is_refused() {
    let text = TCP_ONLY.replace("upstream = \"pg\"\n", "");
    assert_error_at(
        &text,
        "\"tcp\"",
        "listeners[0].protocol",
        "needs upstream = \"NAME\"",
    );
    let text = TCP_ONLY.replace("upstream = \"pg\"", "upstream = \"pq\"");
    assert_error_at(
        &text,
        "\"pq\"",
        "listeners[0].upstream",
        "no upstream named \"pq\"",
    );
}

#[test]
fn keys_of_the_other_kind_of_listener_are_refused() {
    let text = listener_with("upstream = \"api\"");
    assert_error_at(
        &text,
        "\"api\"\n\n",
        "listeners[0].upstream",
        "is only read with protocol = \"tcp\"",
    );
    let text = TCP_ONLY.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nhttp2 = true");
    assert_error_at(
        &text,
        "\"tcp\"",
        "listeners[0].http2",
        "is only read on an http listener",
    );
    let text = TCP_ONLY.replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\ntls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }",
    );
    assert_error_at(
        &text,
        "{ certificates",
        "listeners[0].tls",
        "TLS termination on it is not built",
    );
    let text = TCP_ONLY.replace("\"tcp\"", "\"udp\"");
    assert_error_at(
        &text,
        "\"udp\"",
        "listeners[0].protocol",
        "unknown value `udp`",
    );
    let text = TCP_ONLY.replace(
        "upstream = \"pg\"\n",
        "upstream = \"pg\"\nmax_connections_per_worker = 0\n",
    );
    assert_error_at(
        &text,
        "0\n",
        "listeners[0].max_connections_per_worker",
        "0 is out of range; must be in 1..=1000000",
    );
    let text = TCP_ONLY.replace(
        "5432\" }]",
        "5432\" }]\ntimeouts = { tunnel_idle = \"2h\" }",
    );
    assert_error_at(
        &text,
        "\"2h\"",
        "upstreams[0].timeouts.tunnel_idle",
        "out of range",
    );
}

#[test]
fn a_route_on_a_tcp_listener_is_refused() {
    let text = format!("{TCP_ONLY}\n[[routes]]\nlistener = \"db\"\nupstream = \"pg\"\n");
    assert_error_at(
        &text,
        "\"db\"\nupstream",
        "routes[0].listener",
        "has protocol = \"tcp\"",
    );
}

#[test]
fn a_tcp_listener_cannot_hash_on_what_only_http_carries() {
    let text = TCP_ONLY.replace(
        "5432\" }]",
        "5432\" }]\nbalance = \"maglev_hash\"\nhash_key = \"header:x-user\"",
    );
    assert_error_at(
        &text,
        "\"pg\"\n",
        "listeners[0].upstream",
        "use hash_key = \"client_ip\"",
    );
    let text = TCP_ONLY.replace(
        "5432\" }]",
        "5432\" }]\nbalance = \"maglev_hash\"\nhash_key = \"client_ip\"",
    );
    assert!(ok(&text).upstreams[0].hash_key.is_some());
}

#[test]
fn routes_are_still_required_beside_an_http_listener() {
    let text = TCP_ONLY.replace(
        "[[upstreams]]",
        "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n\n[[upstreams]]",
    );
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.key == "routes"), "{errs:?}");
}

#[test]
fn a_health_check_without_a_path_is_a_connect_probe_with_no_status() {
    let c = ok(&upstream_with(
        "health_check = { interval = \"1s\", timeout = \"500ms\" }",
    ));
    let hc = c.upstreams[0].health_check.clone().expect("health_check");
    assert_eq!(hc.path, None);
    let printed = to_toml(&c);
    assert!(
        printed.contains(
            "health_check = { interval = \"1s\", timeout = \"500ms\", rise = 2, fall = 3 }\n"
        ),
        "{printed}"
    );
    assert_eq!(ok(&printed).upstreams[0].health_check, Some(hc));
    let text = upstream_with(
        "health_check = { interval = \"1s\", timeout = \"500ms\", expect_status = 204 }",
    );
    assert_error_at(
        &text,
        "204",
        "upstreams[0].health_check.expect_status",
        "is only read with path",
    );
}

// ---- error_log ----

#[test]
fn error_log_defaults_to_stderr_at_info_and_is_checked() {
    assert_eq!(ok(BASE).error_log, ErrorLog::default());
    assert_eq!(ok(BASE).error_log.path, None);
    assert_eq!(ok(BASE).error_log.level, LogLevel::Info);
    let c = ok(&format!(
        "[error_log]\npath = \"/var/log/rg-error.log\"\nlevel = \"warn\"\nlines_per_second = 3\n\n{BASE}"
    ));
    assert_eq!(
        c.error_log,
        ErrorLog {
            path: Some("/var/log/rg-error.log".into()),
            level: LogLevel::Warn,
            lines_per_second: 3,
        }
    );
    assert!(LogLevel::Error < LogLevel::Warn && LogLevel::Info < LogLevel::Debug);
    let text = format!("[error_log]\npath = \"\"\nlines_per_second = 0\n\n{BASE}");
    assert_error(&text, 2, 8, "error_log.path", "must name a file");
    assert_error(&text, 3, 20, "error_log.lines_per_second", "out of range");
    let text = format!("[error_log]\nlevel = \"verbose\"\n\n{BASE}");
    assert_error(&text, 2, 9, "error_log.level", "verbose");
}

// ---- messages for people ----

/// The one error `text` yields; a mistake must not bring follow-on errors.
#[track_caller]
fn only_error(text: &str) -> ConfigError {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "one mistake, one error: {errors:#?}");
    errors.into_iter().next().expect("one error")
}

#[test]
fn type_errors_name_toml_types_not_rust_types() {
    for (snippet, key, want) in [
        (
            "[server]\nbacklog = \"x\"",
            "server.backlog",
            "expected an integer",
        ),
        ("[server]\npin = 3", "server.pin", "expected a boolean"),
        (
            "[server]\ngossip_inbox = 1.5",
            "server.gossip_inbox",
            "expected an integer",
        ),
        (
            "[limits]\nmax_headers = [1]",
            "limits.max_headers",
            "invalid type: array, expected an integer",
        ),
        (
            "[limits]\nmax_head_size = true",
            "limits.max_head_size",
            "expected a byte count such as",
        ),
        (
            "[limits]\nkeepalive_timeout = 5",
            "limits.keepalive_timeout",
            "expected a duration string",
        ),
        ("server = 3", "server", "expected a table"),
        (
            "[admin]\naddress = 9901",
            "admin.address",
            "expected a string",
        ),
    ] {
        let e = only_error(&format!("{snippet}\n{BASE}"));
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(want), "{e} lacks {want:?}");
        for rust in [
            "i64", "u32", "usize", "f64", "struct", "sequence", "map", "variant", "field",
        ] {
            assert!(
                !e.message
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == rust),
                "{e} speaks Rust ({rust})"
            );
        }
    }
}

#[test]
fn unknown_keys_and_values_suggest_the_close_one() {
    for (text, key, want) in [
        (
            format!("[server]\nbacklgo = 3\n{BASE}"),
            "server.backlgo",
            "unknown key `backlgo`; did you mean `backlog`?",
        ),
        (
            format!("[server]\nio_uring_setup = \"defer\"\n{BASE}"),
            "server.io_uring_setup",
            "did you mean `defer_taskrun`?",
        ),
        (
            upstream_with("balance = \"least_con\""),
            "upstreams[0].balance",
            "unknown value `least_con`; did you mean `least_conn`?",
        ),
        (
            upstream_with("retries = { on = [\"timeuot\"] }"),
            "upstreams[0].retries.on[0]",
            "did you mean `timeout`?",
        ),
        (
            upstream_with("balance = \"maglev_hash\"\nhash_key = \"client-ip\""),
            "upstreams[0].hash_key",
            "did you mean \"client_ip\"?",
        ),
        (
            format!("[server]\nworkers = \"atuo\"\n{BASE}"),
            "server.workers",
            "write \"auto\"",
        ),
        (
            format!("[limits]\nmax_head_size = \"16Kib\"\n{BASE}"),
            "limits.max_head_size",
            "did you mean \"16KiB\"?",
        ),
        (
            BASE.replace("upstream = \"api\"", "upstream = \"apo\""),
            "routes[0].upstream",
            "no upstream named \"apo\"; did you mean \"api\"?",
        ),
        (
            BASE.replace("listener = \"web\"", "listener = \"wbe\""),
            "routes[0].listener",
            "did you mean \"web\"?",
        ),
    ] {
        let e = only_error(&text);
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(want), "{e} lacks {want:?}");
    }
}

#[test]
fn unknown_key_lists_what_is_allowed_and_guesses_nothing_when_nothing_is_close() {
    let e = only_error(&format!("[server]\nzzz = 3\n{BASE}"));
    assert!(!e.message.contains("did you mean"), "{e}");
    assert!(
        e.message.contains("expected one of `workers`, `pin`"),
        "{e}"
    );
    let e = only_error(&upstream_with("balance = \"fastest\""));
    assert!(!e.message.contains("did you mean"), "{e}");
    assert!(e.message.contains("`round_robin`"), "{e}");
}

#[test]
fn a_quoted_worker_count_says_to_drop_the_quotes() {
    let e = only_error(&format!("[server]\nworkers = \"4\"\n{BASE}"));
    assert!(
        e.message.contains("without quotes, such as workers = 4"),
        "{e}"
    );
}

#[test]
fn a_bad_listener_address_brings_no_error_on_the_routes_naming_it() {
    let e = only_error(&BASE.replace("127.0.0.1:8080", "localhost:8080"));
    assert_eq!(e.key, "listeners[0].address", "{e}");
}

#[test]
fn missing_upstreams_bring_no_error_on_the_routes_naming_them() {
    let text = BASE.split("[[upstreams]]").next().expect("base");
    let e = only_error(text);
    assert_eq!(e.key, "upstreams", "{e}");
}

#[test]
fn a_weight_out_of_range_is_not_reported_again_as_unequal_weights() {
    let text = BASE.replace(
        "backends = [{ address = \"127.0.0.1:9000\" }]",
        "balance = \"round_robin\"\nbackends = [{ address = \"127.0.0.1:9000\", weight = 0 }, { address = \"127.0.0.1:9001\" }]",
    );
    let e = only_error(&text);
    assert_eq!(e.key, "upstreams[0].backends[0].weight", "{e}");
    // Unequal valid weights are still refused.
    let text = text.replace("weight = 0", "weight = 2");
    assert_eq!(only_error(&text).key, "upstreams[0].balance");
}

// ---- printing the effective config ----

/// print → parse gives the same config, and printing that gives the same text.
#[track_caller]
fn assert_round_trip(text: &str) {
    let config = ok(text);
    let printed = to_toml(&config);
    let again = match parse(&printed, "printed.toml") {
        Ok(c) => c,
        Err(e) => panic!("the printed config does not parse:\n{e}\n--- printed ---\n{printed}"),
    };
    assert_eq!(
        format!("{again:#?}"),
        format!("{config:#?}"),
        "printed:\n{printed}"
    );
    assert_eq!(to_toml(&again), printed);
}

#[test]
fn every_example_round_trips_through_print() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            assert_round_trip(&std::fs::read_to_string(&path).expect("read example"));
        }
    }
}

#[test]
fn printed_config_fills_in_every_default() {
    let printed = to_toml(&ok(BASE));
    for line in [
        "workers = \"auto\"",
        "backlog = 1024",
        "drain_timeout = \"30s\"",
        "io_uring_setup = \"auto\"",
        "max_head_size = 16384",
        "keepalive_timeout = \"1m 15s\"",
        "balance = \"weighted_round_robin\"",
        "backends = [{ address = \"127.0.0.1:9000\", weight = 1 }]",
        "timeouts = { connect = \"1s\", response = \"30s\", send = \"1m\", idle = \"1m\", tunnel_idle = \"10m\" }",
        "outlier_detection = { consecutive_failures = 5,",
        "match = { path_prefix = \"/\" }",
        "http2 = false",
        "[http2]\nmax_concurrent_streams = 128\nmax_header_list_size = 32768\nheader_table_size = 4096\n\
         initial_window_size = 65536\nconnection_window_size = 1048576\nmax_frame_size = 16384\n\
         max_send_buffer = 262144\nmax_frames_per_second = 50000\nmax_resets_per_second = 200\n\
         max_control_frames_per_second = 200\nmax_continuation_frames = 16\n",
    ] {
        assert!(printed.contains(line), "no {line:?} in:\n{printed}");
    }
}

#[test]
fn every_optional_feature_round_trips_through_print() {
    let text = format!(
        "[server]\nworkers = 3\npin = false\ngossip_interval = \"2ms 500us\"\ndrain_timeout = \"1m 30s\"\nio_uring_setup = \"plain\"\nshare_ports = true\n\
         trusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n\
         [limits]\ntls_handshake_timeout = \"3s\"\n\
         [error_log]\npath = \"/tmp/err.log\"\nlevel = \"debug\"\nlines_per_second = 5\n\
         [admin]\naddress = \"[::1]:9901\"\n[access_log]\npath = \"/tmp/a \\\"quoted\\\" log\"\nbuffer = \"1MiB\"\n\
         {}",
        BASE.replace(
            "address = \"127.0.0.1:8080\"\n",
            "address = \"127.0.0.1:8080\"\ntls = { certificates = [{ cert = \"/c/a.pem\", key = \"/c/a.key\" }, { cert = \"b.pem\", key = \"b.key\" }], \
             versions = [\"1.3\"], cipher_suites = [\"TLS13_AES_128_GCM_SHA256\"], client_ca = \"/c/ca.pem\", client_certificate = \"optional\", \
             client_subject_header = \"X-Client-Subject\", session_cache = 0, session_tickets = false }\n",
        )
        .replace(
            "upstream = \"api\"\n",
            "upstream = \"api\"\nmatch = { host = \"*.Example.COM.\", path_prefix = \"/v1/\", methods = [\"POST\", \"GET\"], headers = { X-B = \"2\", a = \"1\" } }\n\
             rate_limit = { key = \"header:X-Key\", rate = \"600/m\" }\nrewrite = { prefix = \"/v2/\" }\n\
             request_headers = { set = { X-B = \"2\", a = \" 1 \" }, remove = [\"X-Debug\"] }\nresponse_headers = { remove = [\"server\"] }\n",
        )
    ) + "balance = \"maglev_hash\"\nhash_key = \"cookie:Sess\"\n\
         health_check = { path = \"/h\", interval = \"2s\", timeout = \"1s\" }\n\
         retries = { on = [\"5xx\", \"timeout\"], budget = \"5%\" }\n\
         circuit_breaker = { max_pending = 7 }\npool = { max_idle_per_backend = 0 }\n\
         tls = { server_name = \"Backend.Example.\", ca = \"/etc/ca.pem\", client_certificate = { cert = \"/c/me.pem\", key = \"/c/me.key\" } }\n\
         protocol = \"h2\"\n";
    assert_round_trip(&text);
}

#[test]
fn a_header_set_twice_in_different_case_is_refused() {
    let text = route_with("request_headers = { set = { X-A = \"1\", x-a = \"2\" } }");
    assert_error_at(
        &text,
        "{ X-A",
        "routes[0].request_headers.set",
        "listed twice",
    );
}

#[test]
fn dual_stack_wildcard_overlaps_ipv4_listeners_on_its_port() {
    let text = BASE.replace("127.0.0.1:8080", "[::]:8080").replace(
        "[[routes]]",
        "[[listeners]]\nname = \"v4\"\naddress = \"127.0.0.1:8080\"\n\n[[routes]]",
    );
    let e = only_error(&text);
    assert_eq!(e.key, "listeners[1].address", "{e}");
    assert!(e.message.contains("dual-stack"), "{e}");
    ok(&text.replace("127.0.0.1:8080", "127.0.0.1:8081"));
    ok(&text.replace("127.0.0.1:8080", "[::1]:8081"));
}

#[test]
fn admin_overlapping_a_listener_is_refused() {
    for (listener, admin) in [
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("127.0.0.1:8080", "[::]:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
    ] {
        let text = format!(
            "[admin]\naddress = \"{admin}\"\n{}",
            BASE.replace("127.0.0.1:8080", listener)
        );
        let e = only_error(&text);
        assert_eq!((e.key.as_str(), e.line), ("admin.address", 2), "{e}");
        assert!(e.message.contains("listener on line 5"), "{e}");
    }
    ok(&format!("[admin]\naddress = \"127.0.0.1:9901\"\n{BASE}"));
}

#[test]
fn locate_finds_the_value_of_a_dotted_key() {
    let text = format!("[admin]\naddress = \"127.0.0.1:9901\"\n{BASE}");
    assert_eq!(locate(&text, "admin.address"), Some((2, 11)));
    assert_eq!(locate(&text, "listeners[0].address"), Some((5, 11)));
    assert_eq!(locate(&text, "listeners[1].address"), None);
    assert_eq!(locate(&text, "access_log.path"), None);
}

// ---- TLS listeners ----

fn with_tls(table: &str) -> String {
    BASE.replace(
        "address = \"127.0.0.1:8080\"\n",
        &format!("address = \"127.0.0.1:8080\"\ntls = {table}\n"),
    )
}

#[test]
fn a_tls_listener_takes_its_defaults() {
    let c = ok(&with_tls(
        "{ certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }",
    ));
    let t = c.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(t.versions, [TlsVersion::Tls12, TlsVersion::Tls13]);
    assert!(t.cipher_suites.is_empty() && t.client_ca.is_none() && t.session_tickets);
    assert_eq!(t.session_cache, DEFAULT_TLS_SESSION_CACHE);
    assert!(ok(BASE).listeners[0].tls.is_none());
}

#[test]
fn tls_mistakes_are_each_named() {
    let cases = [
        ("{ certificates = [] }", "listeners[0].tls.certificates", "at least one"),
        (
            "{ certificates = [{ cert = \"a\", key = \"b\" }], versions = [\"1.1\"] }",
            "listeners[0].tls.versions",
            "RFC 8996",
        ),
        (
            "{ certificates = [{ cert = \"a\", key = \"b\" }], versions = [\"1.4\"] }",
            "listeners[0].tls.versions",
            "unknown TLS version",
        ),
        (
            "{ certificates = [{ cert = \"a\", key = \"b\" }], cipher_suites = [\"RC4-MD5\"] }",
            "listeners[0].tls.cipher_suites",
            "unknown cipher suite",
        ),
        (
            "{ certificates = [{ cert = \"a\", key = \"b\" }], client_certificate = \"optional\" }",
            "listeners[0].tls.client_certificate",
            "needs client_ca",
        ),
        (
            "{ certificates = [{ cert = \"a\", key = \"b\" }], client_ca = \"ca\", client_subject_header = \"X-Forwarded-For\" }",
            "listeners[0].tls.client_subject_header",
            "manages itself",
        ),
        (
            "{ certificates = [{ cert = \"\", key = \"b\" }] }",
            "listeners[0].tls.certificates[0].cert",
            "must name a file",
        ),
    ];
    for (table, key, why) in cases {
        let e = only_error(&with_tls(table));
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(why), "{e}");
    }
}

// ---- HTTP/2 ----

#[test]
fn http2_is_on_for_tls_listeners_and_off_for_plain_ones_unless_set() {
    let tls = "{ certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }";
    assert!(ok(&with_tls(tls)).listeners[0].http2);
    assert!(!ok(BASE).listeners[0].http2);
    let set = |text: &str, value: bool| {
        text.replace(
            "address = \"127.0.0.1:8080\"\n",
            &format!("address = \"127.0.0.1:8080\"\nhttp2 = {value}\n"),
        )
    };
    assert!(!ok(&set(&with_tls(tls), false)).listeners[0].http2);
    assert!(ok(&set(BASE, true)).listeners[0].http2);
    let e = only_error(&set(BASE, true).replace("http2 = true", "http2 = \"yes\""));
    assert_eq!(
        (e.key.as_str(), e.line, e.column),
        ("listeners[0].http2", 4, 9),
        "{e}"
    );
    assert!(e.message.contains("expected a boolean"), "{e}");
}

#[test]
fn http2_section_defaults_match_the_documented_values() {
    let h = ok(BASE).http2;
    assert_eq!(h, Http2::default());
    assert_eq!(h.max_concurrent_streams, 128);
    assert_eq!(h.max_header_list_bytes, 32 * 1024);
    assert_eq!(h.header_table_bytes, 4096);
    assert_eq!(h.initial_window_bytes, 64 * 1024);
    assert_eq!(h.connection_window_bytes, 1024 * 1024);
    assert_eq!(h.max_frame_bytes, 16_384);
    assert_eq!(h.max_send_buffer_bytes, 256 * 1024);
    assert_eq!(h.max_frames_per_second, 50_000);
    assert_eq!(h.max_resets_per_second, 200);
    assert_eq!(h.max_control_frames_per_second, 200);
    assert_eq!(h.max_continuation_frames, 16);
    // An empty table takes the same defaults.
    assert_eq!(ok(&format!("[http2]\n{BASE}")).http2, Http2::default());
}

#[test]
fn http2_keys_take_counts_and_sizes() {
    let text = format!(
        "[http2]\nmax_concurrent_streams = 1\nmax_header_list_size = \"1MiB\"\nheader_table_size = 0\n\
         initial_window_size = \"16MiB\"\nconnection_window_size = \"64KiB\"\nmax_frame_size = 16777215\n\
         max_send_buffer = \"16KiB\"\nmax_frames_per_second = 100\nmax_resets_per_second = 1000000\n\
         max_control_frames_per_second = 1\nmax_continuation_frames = 1024\n{BASE}"
    );
    assert_eq!(
        ok(&text).http2,
        Http2 {
            max_concurrent_streams: 1,
            max_header_list_bytes: 1 << 20,
            header_table_bytes: 0,
            initial_window_bytes: 16 << 20,
            connection_window_bytes: 64 << 10,
            max_frame_bytes: 16_777_215,
            max_send_buffer_bytes: 16 << 10,
            max_frames_per_second: 100,
            max_resets_per_second: 1_000_000,
            max_control_frames_per_second: 1,
            max_continuation_frames: 1024,
        }
    );
}

#[test]
fn each_http2_value_out_of_range_names_its_key_and_place() {
    // (key, a value just outside its range, the range the message states)
    let cases = [
        ("max_concurrent_streams", "0", "must be in 1..=10000"),
        ("max_concurrent_streams", "10001", "must be in 1..=10000"),
        ("max_header_list_size", "\"1023\"", "(1KiB..=1MiB)"),
        ("max_header_list_size", "1048577", "(1KiB..=1MiB)"),
        (
            "header_table_size",
            "65537",
            "must be in 0..=65536 bytes (0B..=64KiB)",
        ),
        ("initial_window_size", "1023", "(1KiB..=16MiB)"),
        ("initial_window_size", "\"17MiB\"", "(1KiB..=16MiB)"),
        ("connection_window_size", "65535", "(64KiB..=64MiB)"),
        ("connection_window_size", "\"65MiB\"", "(64KiB..=64MiB)"),
        (
            "max_frame_size",
            "16383",
            "must be in 16384..=16777215 bytes",
        ),
        (
            "max_frame_size",
            "\"16MiB\"",
            "must be in 16384..=16777215 bytes",
        ),
        ("max_send_buffer", "\"15KiB\"", "(16KiB..=16MiB)"),
        ("max_send_buffer", "\"1GiB\"", "(16KiB..=16MiB)"),
        ("max_frames_per_second", "99", "must be in 100..=10000000"),
        (
            "max_frames_per_second",
            "10000001",
            "must be in 100..=10000000",
        ),
        ("max_resets_per_second", "0", "must be in 1..=1000000"),
        ("max_resets_per_second", "1000001", "must be in 1..=1000000"),
        (
            "max_control_frames_per_second",
            "0",
            "must be in 1..=1000000",
        ),
        (
            "max_control_frames_per_second",
            "-1",
            "must be in 1..=1000000",
        ),
        ("max_continuation_frames", "0", "must be in 1..=1024"),
        ("max_continuation_frames", "1025", "must be in 1..=1024"),
    ];
    for (key, value, range) in cases {
        let text = format!("[limits]\n[http2]\n{key} = {value}\n{BASE}");
        let e = only_error(&text);
        assert_eq!(e.key, format!("http2.{key}"), "{e}");
        // The value's own line and column: after "key = ".
        assert_eq!((e.line, e.column), (3, key.len() + 4), "{e}");
        assert!(e.message.contains("out of range"), "{e}");
        assert!(e.message.contains(range), "{key} = {value}: {e}");
    }
}

#[test]
fn every_http2_value_out_of_range_is_reported_at_once() {
    let text = format!(
        "[http2]\nmax_concurrent_streams = 0\nmax_header_list_size = 0\nheader_table_size = \"1MiB\"\n\
         initial_window_size = 0\nconnection_window_size = 0\nmax_frame_size = 0\nmax_send_buffer = 0\n\
         max_frames_per_second = 0\nmax_resets_per_second = 0\nmax_control_frames_per_second = 0\n\
         max_continuation_frames = 0\n{BASE}"
    );
    let got: Vec<(usize, String)> = errors(&text).into_iter().map(|e| (e.line, e.key)).collect();
    let want: Vec<(usize, String)> = [
        "max_concurrent_streams",
        "max_header_list_size",
        "header_table_size",
        "initial_window_size",
        "connection_window_size",
        "max_frame_size",
        "max_send_buffer",
        "max_frames_per_second",
        "max_resets_per_second",
        "max_control_frames_per_second",
        "max_continuation_frames",
    ]
    .iter()
    .enumerate()
    .map(|(i, key)| (i + 2, format!("http2.{key}")))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn an_unknown_key_in_http2_is_refused_with_a_suggestion() {
    let text = format!("[http2]\nmax_concurent_streams = 64\n{BASE}");
    assert_error(
        &text,
        2,
        1,
        "http2.max_concurent_streams",
        "unknown key `max_concurent_streams`; did you mean `max_concurrent_streams`?",
    );
    // Settings are sizes with units where the protocol counts bytes.
    let e = only_error(&format!("[http2]\nmax_frame_size = \"16KB\"\n{BASE}"));
    assert_eq!((e.key.as_str(), e.line), ("http2.max_frame_size", 2), "{e}");
    assert!(e.message.contains("unknown unit \"KB\""), "{e}");
}

#[test]
fn http2_settings_round_trip_through_print() {
    let text = format!(
        "[http2]\nmax_concurrent_streams = 7\nmax_header_list_size = \"48KiB\"\nheader_table_size = 0\n\
         initial_window_size = \"1MiB\"\nconnection_window_size = \"8MiB\"\nmax_frame_size = \"32KiB\"\n\
         max_send_buffer = \"1MiB\"\nmax_frames_per_second = 1000\nmax_resets_per_second = 10\n\
         max_control_frames_per_second = 20\nmax_continuation_frames = 3\n{}",
        with_tls("{ certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }")
            .replace("tls = {", "http2 = false\ntls = {")
            .replace(
                "[[routes]]",
                "[[listeners]]\nname = \"h2c\"\naddress = \"127.0.0.1:8081\"\nhttp2 = true\n\n[[routes]]",
            )
    );
    let config = ok(&text);
    assert_eq!(
        (config.listeners[0].http2, config.listeners[1].http2),
        (false, true)
    );
    assert_round_trip(&text);
    let printed = to_toml(&config);
    for line in [
        "[http2]\n",
        "max_concurrent_streams = 7\n",
        "max_header_list_size = 49152\n",
        "header_table_size = 0\n",
        "initial_window_size = 1048576\n",
        "connection_window_size = 8388608\n",
        "max_frame_size = 32768\n",
        "max_send_buffer = 1048576\n",
        "max_frames_per_second = 1000\n",
        "max_resets_per_second = 10\n",
        "max_control_frames_per_second = 20\n",
        "max_continuation_frames = 3\n",
        "address = \"127.0.0.1:8080\"\nhttp2 = false\n",
        "address = \"127.0.0.1:8081\"\nhttp2 = true\n",
    ] {
        assert!(printed.contains(line), "no {line:?} in:\n{printed}");
    }
}

#[test]
fn an_upstream_speaks_http11_unless_told_h2() {
    let c = ok(BASE);
    assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::Http1);
    let c = ok(&format!("{BASE}protocol = \"h2\"\n"));
    assert_eq!(c.upstreams[0].protocol, UpstreamProtocol::H2);
    let e = only_error(&format!("{BASE}protocol = \"h3\"\n"));
    assert_eq!(e.key, "upstreams[0].protocol", "{e}");
}

#[test]
fn request_checks_are_read_normalised_and_round_trip() {
    let text = route_with(
        "max_body = \"1MiB\"\ncontent_types = [\"Application/JSON\", \"text/*\"]\n\
         required_headers = [\"X-Tenant\"]\nrequired_query = [\"page\"]",
    );
    let c = ok(&text);
    let checks = &c.routes[0].checks;
    assert_eq!(checks.max_body, Some(1 << 20));
    assert_eq!(checks.content_types, ["application/json", "text/*"]);
    assert_eq!(checks.required_headers, ["x-tenant"]);
    assert_eq!(checks.required_query, ["page"]);
    assert_round_trip(&text);
    assert!(ok(BASE).routes[0].checks.is_empty());
}

#[test]
fn bad_request_checks_are_refused_where_they_are_written() {
    let e = only_error(&route_with("content_types = [\"json\"]"));
    assert_eq!(e.key, "routes[0].content_types", "{e}");
    assert!(e.message.contains("not a media type"), "{e}");
    let e = only_error(&route_with(
        "content_types = [\"text/plain; charset=utf-8\"]",
    ));
    assert_eq!(e.key, "routes[0].content_types", "{e}");
    let e = only_error(&route_with("required_headers = [\"bad header\"]"));
    assert_eq!(e.key, "routes[0].required_headers", "{e}");
    let e = only_error(&route_with("required_query = [\"a&b\"]"));
    assert_eq!(e.key, "routes[0].required_query", "{e}");
    let e = only_error(&route_with("required_query = []"));
    assert!(e.message.contains("must not be empty"), "{e}");
    let e = only_error(&route_with("required_headers = [\"x-a\", \"X-A\"]"));
    assert!(e.message.contains("listed twice"), "{e}");
    let e = only_error(&route_with("max_body = 0"));
    assert_eq!(e.key, "routes[0].max_body", "{e}");
}

#[test]
fn a_path_prefix_must_be_in_the_normal_form_requests_are_routed_in() {
    for (prefix, normal) in [
        ("/%61dmin/", "/admin/"),
        ("//api/", "/api/"),
        ("/a//b/%7Eu", "/a/b/~u"),
    ] {
        let e = only_error(&route_with(&format!(
            "match = {{ path_prefix = \"{prefix}\" }}"
        )));
        assert_eq!(e.key, "routes[0].match.path_prefix", "{prefix}: {e}");
        assert!(e.message.contains(&format!("{normal:?}")), "{prefix}: {e}");
    }
    let e = only_error(&route_with("match = { path_prefix = \"/caf\u{e9}/\" }"));
    assert_eq!(e.key, "routes[0].match.path_prefix", "{e}");
    for fine in ["/%20x", "/api/", "/p%25/", "/a%2Cb/"] {
        ok(&route_with(&format!(
            "match = {{ path_prefix = \"{fine}\" }}"
        )));
    }
    for read_otherwise in ["/app;v=1/", "/a%2Fb/", "/a%2fb/", "/a%5Cb/", "/a\\\\b/"] {
        let e = only_error(&route_with(&format!(
            "match = {{ path_prefix = \"{read_otherwise}\" }}"
        )));
        assert!(e.message.contains("as backends read it"), "{e}");
    }
    // Requests with such a path are refused, so the route could never match.
    for stray in ["/%zz", "/x%4", "/%%361dmin/", "/100%/"] {
        let e = only_error(&route_with(&format!(
            "match = {{ path_prefix = \"{stray}\" }}"
        )));
        assert_eq!(e.key, "routes[0].match.path_prefix", "{stray}: {e}");
        assert!(e.message.contains("%25"), "{stray}: {e}");
    }
    let e = only_error(&route_with("match = { path_prefix = \"/a%00/\" }"));
    assert!(e.message.contains("encoded NUL"), "{e}");
}

#[test]
fn via_is_auto_off_or_a_token() {
    assert_eq!(ok(BASE).server.via, Via::Auto);
    for (value, want) in [
        ("auto", Via::Auto),
        ("off", Via::Off),
        ("edge-1.example", Via::Named("edge-1.example".into())),
    ] {
        let toml = format!("[server]\nvia = \"{value}\"\n\n{BASE}");
        assert_eq!(ok(&toml).server.via, want, "{value}");
        assert_round_trip(&toml);
    }
    for bad in ["", "a b", "x,y", "1.1 edge"] {
        let e = only_error(&format!("[server]\nvia = \"{bad}\"\n\n{BASE}"));
        assert_eq!(e.key, "server.via", "{bad:?}: {e}");
    }
}

#[test]
fn request_ids_name_a_header_the_proxy_does_not_manage() {
    let c = ok(&format!(
        "[server]\nrequest_id = \"X-Request-Id\"\n\n{BASE}"
    ));
    assert_eq!(c.server.request_id.as_deref(), Some("x-request-id"));
    assert_round_trip(&format!("[server]\nrequest_id = \"x-trace\"\n\n{BASE}"));
    assert_eq!(ok(BASE).server.request_id, None);
    let e = only_error(&format!("[server]\nrequest_id = \"connection\"\n\n{BASE}"));
    assert_eq!(e.key, "server.request_id", "{e}");
    let e = only_error(&format!("[server]\nrequest_id = \"a b\"\n\n{BASE}"));
    assert_eq!(e.key, "server.request_id", "{e}");
}

#[test]
fn a_route_answers_itself_with_respond_or_redirect() {
    let direct = BASE.replace(
        "upstream = \"api\"\n",
        "respond = { status = 204, headers = { Cache-Control = \"no-store\" } }\n",
    );
    let c = ok(&direct);
    assert_eq!(c.routes[0].upstream, None);
    let d = c.routes[0].respond.as_ref().expect("respond");
    assert_eq!((d.status, d.body.as_str()), (204, ""));
    assert_eq!(
        d.headers,
        [("cache-control".to_owned(), "no-store".to_owned())]
    );
    assert_round_trip(&direct);
    let redirect = BASE.replace(
        "upstream = \"api\"\n",
        "redirect = { to = \"https://x.test$path$query\", status = 308 }\n",
    );
    let c = ok(&redirect);
    let r = c.routes[0].redirect.as_ref().expect("redirect");
    assert_eq!(
        (r.to.as_str(), r.status),
        ("https://x.test$path$query", 308)
    );
    assert_round_trip(&redirect);

    let both = route_with("redirect = { to = \"/x\" }");
    assert!(only_error(&both)
        .message
        .contains("exactly one of upstream, respond, redirect or compose"));
    let none = BASE.replace("upstream = \"api\"\n", "");
    assert!(only_error(&none).message.contains("exactly one"));
    let e = only_error(&BASE.replace(
        "upstream = \"api\"\n",
        "redirect = { to = \"/x\", status = 200 }\n",
    ));
    assert_eq!(e.key, "routes[0].redirect.status", "{e}");
    let e = only_error(&BASE.replace("upstream = \"api\"\n", "redirect = { to = \"/$host\" }\n"));
    assert_eq!(e.key, "routes[0].redirect.to", "{e}");
    let e = only_error(&BASE.replace(
        "upstream = \"api\"\n",
        "respond = { status = 200, headers = { content-length = \"1\" } }\n",
    ));
    assert_eq!(e.key, "routes[0].respond.headers", "{e}");
    let e = only_error(&BASE.replace("upstream = \"api\"\n", "respond = { status = 101 }\n"));
    assert_eq!(e.key, "routes[0].respond.status", "{e}");
    let e = only_error(&BASE.replace(
        "upstream = \"api\"\n",
        "respond = { status = 200 }\nrewrite = { prefix = \"/\" }\n",
    ));
    assert_eq!(e.key, "routes[0].rewrite", "{e}");
}

#[test]
fn cors_policies_are_checked_and_round_trip() {
    let text = route_with(
        "cors = { origins = [\"https://App.test/\", \"https://*.example.test\"], headers = [\"X-Token\"], credentials = true, max_age = \"10m\" }",
    );
    let c = ok(&text);
    let cors = c.routes[0].cors.as_ref().expect("cors");
    assert_eq!(cors.origins, ["https://app.test", "https://*.example.test"]);
    assert_eq!(cors.methods, ["GET", "HEAD", "POST"]);
    assert_eq!(cors.headers, ["x-token"]);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert_round_trip(&text);
    let e = only_error(&route_with(
        "cors = { origins = [\"*\"], credentials = true }",
    ));
    assert_eq!(e.key, "routes[0].cors.origins", "{e}");
    let e = only_error(&route_with("cors = { origins = [\"app.test\"] }"));
    assert!(e.message.contains("not an origin"), "{e}");
    let e = only_error(&route_with("cors = { origins = [\"https://a.*.test\"] }"));
    assert_eq!(e.key, "routes[0].cors.origins", "{e}");
    let e = only_error(&route_with("cors = { origins = [] }"));
    assert_eq!(e.key, "routes[0].cors.origins", "{e}");
    let e = only_error(&route_with(
        "cors = { origins = [\"*\"], methods = [\"G T\"] }",
    ));
    assert_eq!(e.key, "routes[0].cors.methods", "{e}");
}

#[test]
fn compose_calls_name_upstreams_and_unique_keys() {
    let text = BASE.replace(
        "upstream = \"api\"\n",
        "compose = { calls = [{ upstream = \"api\", path = \"/a\", key = \"a\" }, { upstream = \"api\", path = \"/b?x=1\", key = \"b\" }], timeout = \"300ms\", on_failure = \"partial\" }\n",
    );
    let c = ok(&text);
    let compose = c.routes[0].compose.as_ref().expect("compose");
    assert_eq!(compose.calls.len(), 2);
    assert_eq!(
        (
            compose.calls[1].path.as_str(),
            compose.calls[1].key.as_str()
        ),
        ("/b?x=1", "b")
    );
    assert_eq!(compose.timeout, Duration::from_millis(300));
    assert!(compose.partial);
    assert_eq!(compose.max_body, DEFAULT_COMPOSE_MAX_BODY);
    assert_round_trip(&text);
    let e = only_error(&text.replace("key = \"b\"", "key = \"a\""));
    assert!(e.message.contains("used by another call"), "{e}");
    let e = only_error(&text.replace(
        "upstream = \"api\", path = \"/a\"",
        "upstream = \"nope\", path = \"/a\"",
    ));
    assert_eq!(e.key, "routes[0].compose.calls[0].upstream", "{e}");
    let e = only_error(&text.replace("\"partial\"", "\"maybe\""));
    assert_eq!(e.key, "routes[0].compose.on_failure", "{e}");
    let e = only_error(&text.replace("path = \"/a\"", "path = \"a\""));
    assert_eq!(e.key, "routes[0].compose.calls[0].path", "{e}");
}

#[test]
fn a_body_schema_bounds_the_body_it_reads_whole() {
    let c = ok(&route_with("body_schema = \"/etc/s.json\""));
    assert_eq!(
        c.routes[0].checks.body_schema.as_deref(),
        Some(Path::new("/etc/s.json"))
    );
    assert_eq!(
        c.routes[0].checks.schema_body_max(),
        DEFAULT_SCHEMA_BODY_MAX
    );
    assert_round_trip(&route_with(
        "body_schema = \"/etc/s.json\"\nmax_body = \"2MiB\"",
    ));
    let e = only_error(&route_with(
        "body_schema = \"/etc/s.json\"\nmax_body = \"17MiB\"",
    ));
    assert_eq!(e.key, "routes[0].body_schema", "{e}");
    let e = only_error(&route_with("body_schema = \" \""));
    assert_eq!(e.key, "routes[0].body_schema", "{e}");
}

#[test]
fn an_h2_upstream_sends_no_proxy_protocol_header() {
    let e = only_error(&format!(
        "{BASE}protocol = \"h2\"\nsend_proxy_protocol = \"v2\"\n"
    ));
    assert_eq!(e.key, "upstreams[0].protocol", "{e}");
    assert!(e.message.contains("many clients"), "{e}");
}

#[test]
fn a_route_may_allow_protocol_upgrades_but_never_h2c() {
    let c = ok(&route_with("upgrade = [\"WebSocket\"]"));
    assert_eq!(c.routes[0].upgrade, ["websocket"]);
    assert_round_trip(&route_with("upgrade = [\"websocket\"]"));
    let e = only_error(&route_with("upgrade = [\"h2c\"]"));
    assert_eq!(e.key, "routes[0].upgrade", "{e}");
    let e = only_error(&route_with("upgrade = [\"web socket\"]"));
    assert_eq!(e.key, "routes[0].upgrade", "{e}");
}

// ---- fleet-wide rate limits ----

const FLEET_ROUTES: &str = r#"[[listeners]]
name = "web"
address = "127.0.0.1:8080"

[[routes]]
listener = "web"
upstream = "api"
rate_limit = { key = "client_ip", rate = "1000/s", scope = "fleet" }

[[routes]]
listener = "web"
match = { path_prefix = "/admin" }
upstream = "api"
rate_limit = { key = "route", rate = "10/s", scope = "fleet", name = "admin", fleet_fallback = "closed" }

[[upstreams]]
name = "api"
backends = [{ address = "127.0.0.1:9000" }]
"#;

#[test]
fn fleet_scope_reads_its_section_and_names_its_counters() {
    let c = ok(&format!(
        "[fleet]\nredis = \"redis://:s3cret@127.0.0.1:6380/2\"\nsync_interval = \"10ms\"\nnodes = 3\n\n{FLEET_ROUTES}"
    ));
    let f = c.fleet.as_ref().expect("[fleet]");
    assert_eq!(f.redis, addr("127.0.0.1:6380"));
    assert_eq!(
        (f.username.as_deref(), f.password.as_deref()),
        (None, Some("s3cret"))
    );
    assert_eq!((f.database, f.nodes), (2, 3));
    assert_eq!(f.sync_interval, Duration::from_millis(10));
    assert_eq!(f.timeout, DEFAULT_FLEET_TIMEOUT);
    assert_eq!(f.key_prefix, "ringgate:");
    let scope = |r: usize| {
        c.routes[r]
            .rate_limit
            .as_ref()
            .and_then(|rl| rl.fleet.clone())
    };
    assert_eq!(
        scope(0),
        Some(FleetScope {
            counter: "route0".into(),
            fallback: FleetFallback::LocalShare
        })
    );
    assert_eq!(
        scope(1),
        Some(FleetScope {
            counter: "admin".into(),
            fallback: FleetFallback::Closed
        })
    );
    assert_round_trip(&format!(
        "[fleet]\nredis = \"redis://ops:pw@127.0.0.1:6379\"\n\n{FLEET_ROUTES}"
    ));
}

#[test]
fn fleet_over_tls_is_rediss_with_an_upstream_style_tls_table() {
    let c = ok(&format!(
        "[fleet]\nredis = \"rediss://127.0.0.1:6380\"\n\n{FLEET_ROUTES}"
    ));
    let tls = c.fleet.as_ref().and_then(|f| f.tls.clone());
    assert_eq!(
        tls,
        Some(UpstreamTls {
            server_name: None,
            ca: None,
            client_certificate: None
        })
    );
    let text = format!(
        "[fleet]\nredis = \"rediss://127.0.0.1:6380\"\ntls = {{ server_name = \"redis.internal\", ca = \"ca.pem\", client_certificate = {{ cert = \"c.pem\", key = \"c.key\" }} }}\n\n{FLEET_ROUTES}"
    );
    let c = ok(&text);
    let tls = c.fleet.as_ref().and_then(|f| f.tls.clone()).expect("tls");
    assert_eq!(tls.server_name.as_deref(), Some("redis.internal"));
    assert_eq!(tls.ca, Some(std::path::PathBuf::from("ca.pem")));
    assert_round_trip(&text);
    let plain = ok(&format!(
        "[fleet]\nredis = \"redis://127.0.0.1:6380\"\n\n{FLEET_ROUTES}"
    ));
    assert_eq!(plain.fleet.and_then(|f| f.tls), None);
}

#[test]
fn fleet_mistakes_are_pointed_at() {
    assert_error_at(
        FLEET_ROUTES,
        "\"fleet\" }",
        "routes[0].rate_limit.scope",
        "needs a [fleet] section",
    );
    let with = |fleet: &str| format!("[fleet]\n{fleet}\n\n{FLEET_ROUTES}");
    assert_error_at(
        &with("redis = \"redis://localhost:6379\""),
        "\"redis://localhost",
        "fleet.redis",
        "host names are not resolved",
    );
    assert_error_at(
        &with("redis = \"redis://127.0.0.1:6379\"\ntls = { ca = \"ca.pem\" }"),
        "{ ca",
        "fleet.tls",
        "needs a rediss:// URL",
    );
    assert_error_at(
        &with("redis = \"rediss://127.0.0.1:6379\"\ntls = { server_name = \"*.x\" }"),
        "\"*.x\"",
        "fleet.tls.server_name",
        "not a host name",
    );
    assert_error_at(
        &with("redis = \"127.0.0.1:6379\""),
        "\"127.0.0.1:6379\"",
        "fleet.redis",
        "not a redis:// URL",
    );
    assert_error_at(
        &with("redis = \"redis://127.0.0.1:6379\"\nsync_interval = \"20s\""),
        "\"20s\"",
        "fleet.sync_interval",
        "out of range",
    );
    assert_error_at(
        &with("redis = \"redis://127.0.0.1:6379\"\nnodes = 0"),
        "0\n",
        "fleet.nodes",
        "out of range",
    );
    assert_error_at(
        &with("redis = \"redis://:a@127.0.0.1:6379\"\npassword = \"b\""),
        "\"b\"",
        "fleet.password",
        "in one place",
    );
    let base = with("redis = \"redis://127.0.0.1:6379\"");
    assert_error_at(
        &base.replace("fleet_fallback = \"closed\"", "fleet_fallback = \"shut\""),
        "\"shut\"",
        "routes[1].rate_limit.fleet_fallback",
        "unknown fallback",
    );
    assert_error_at(
        &base.replace("scope = \"fleet\" }", "scope = \"world\" }"),
        "\"world\"",
        "routes[0].rate_limit.scope",
        "unknown scope",
    );
    assert_error_at(
        &base.replace("name = \"admin\"", "name = \"a b\""),
        "\"a b\"",
        "routes[1].rate_limit.name",
        "Redis key",
    );
    assert_error_at(
        &base.replace(
            "rate = \"10/s\", scope = \"fleet\",",
            "rate = \"10/s\", scope = \"node\",",
        ),
        "\"admin\"",
        "routes[1].rate_limit.name",
        "only read with scope = \"fleet\"",
    );
}

// ---- backends found through DNS ----

fn with_backends(backends: &str) -> String {
    BASE.replace(
        "backends = [{ address = \"127.0.0.1:9000\" }]",
        &format!("backends = [{backends}]"),
    )
}

#[test]
fn host_and_srv_backends_parse_into_slots() {
    let c = ok(&with_backends(
        "{ address = \"127.0.0.1:9000\" }, { address = \"Api.Internal.:9001\", weight = 3 }, \
         { srv = \"_http._tcp.api.internal\", max_addresses = 2 }",
    ));
    let u = &c.upstreams[0];
    assert_eq!(
        u.backends[1].target,
        BackendTarget::Host {
            name: "api.internal".to_owned(),
            port: 9001
        }
    );
    assert_eq!(u.backends[1].max_addresses, DEFAULT_MAX_ADDRESSES);
    assert_eq!(
        u.backends[2].target,
        BackendTarget::Srv {
            name: "_http._tcp.api.internal".to_owned()
        }
    );
    assert_eq!(u.slot_count(), 1 + DEFAULT_MAX_ADDRESSES + 2);
    assert_eq!(u.first_slots(), vec![0, 1, 1 + DEFAULT_MAX_ADDRESSES]);
    let slots = u.slots();
    assert_eq!(slots[0], (Some(addr("127.0.0.1:9000")), 1));
    assert_eq!(slots[1], (None, 3));
    assert!(c.has_dns_backends());
    assert!(!ok(BASE).has_dns_backends());
}

#[test]
fn bad_backend_names_are_refused() {
    for (backend, key, fragment) in [
        ("{ address = \"api.internal\" }", "address", "has no port"),
        (
            "{ address = \"api.internal:0\" }",
            "address",
            "not in 1..=65535",
        ),
        (
            "{ address = \"api.internal:http\" }",
            "address",
            "not in 1..=65535",
        ),
        (
            "{ address = \"-api.internal:80\" }",
            "address",
            "is not a DNS label",
        ),
        (
            "{ address = \"api..internal:80\" }",
            "address",
            "is not a DNS label",
        ),
        (
            "{ address = \"api_x.internal:80\" }",
            "address",
            "is not a DNS label",
        ),
        (
            "{ address = \"10.0.0.300:80\" }",
            "address",
            "not a valid IPv4",
        ),
        ("{ address = \"[::1:80\" }", "address", "not a valid IPv6"),
        // An IP:port as strictly as a host name:port: port 0 is not a
        // port a backend listens on, and a connect to the unspecified
        // address reaches this host (HAProxy reads 0.0.0.0 as "the
        // client's destination", so the mistake is easy to make).
        (
            "{ address = \"127.0.0.1:0\" }",
            "address",
            "not in 1..=65535",
        ),
        ("{ address = \"[::1]:0\" }", "address", "not in 1..=65535"),
        ("{ address = \"0.0.0.0:80\" }", "address", "unspecified"),
        ("{ address = \"[::]:80\" }", "address", "unspecified"),
        ("{ address = \"224.0.0.1:80\" }", "address", "multicast"),
        ("{ address = \"[ff02::1]:80\" }", "address", "multicast"),
        (
            "{ address = \"255.255.255.255:80\" }",
            "address",
            "broadcast",
        ),
        ("{ srv = \"api.internal\" }", "srv", "is not a SRV name"),
        ("{ srv = \"_http.api\" }", "srv", "is not a SRV name"),
        ("{ srv = \"_http._tcp.a b\" }", "srv", "is not a DNS label"),
        ("{ weight = 2 }", "address", "a backend needs address"),
        (
            "{ address = \"a.b:1\", srv = \"_h._tcp.b\" }",
            "srv",
            "not both",
        ),
        (
            "{ srv = \"_h._tcp.b\", weight = 2 }",
            "weight",
            "weights of its SRV records",
        ),
        (
            "{ address = \"127.0.0.1:1\", max_addresses = 2 }",
            "max_addresses",
            "only read for a host name",
        ),
        (
            "{ address = \"a.b:1\", max_addresses = 65 }",
            "max_addresses",
            "out of range",
        ),
    ] {
        let errors = errors(&with_backends(backend));
        let want = format!("upstreams[0].backends[0].{key}");
        assert!(
            errors
                .iter()
                .any(|e| e.key == want && e.message.contains(fragment)),
            "{backend}: no {want} error with {fragment:?} in {errors:#?}"
        );
    }
    let long = format!("{{ address = \"{}.b:1\" }}", "a".repeat(64));
    assert!(errors(&with_backends(&long))
        .iter()
        .any(|e| e.message.contains("is not a DNS label")));
}

#[test]
fn a_name_listed_twice_is_refused() {
    let text = with_backends("{ address = \"a.b:1\" }, { address = \"A.b.:1\" }");
    assert_error_at(
        &text,
        "\"A.b.:1\"",
        "upstreams[0].backends[1].address",
        "already listed",
    );
}

#[test]
fn dns_section_is_checked_and_round_trips() {
    let text = format!(
        "[dns]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\nmin_interval = \"500ms\"\nmax_interval = \"10s\"\ntimeout = \"300ms\"\n{}",
        with_backends("{ address = \"api.internal:9000\", max_addresses = 3 }, { srv = \"_http._tcp.api.internal\" }")
    );
    let c = ok(&text);
    assert_eq!(
        c.dns.nameservers,
        vec![addr("127.0.0.1:5353"), addr("[::1]:53")]
    );
    assert_eq!(c.dns.min_interval, Duration::from_millis(500));
    assert_round_trip(&text);
    assert_error_at(
        &format!("[dns]\nmin_interval = \"5s\"\nmax_interval = \"2s\"\n{BASE}"),
        "\"2s\"",
        "dns.max_interval",
        "at least min_interval",
    );
    assert_error_at(
        &format!("[dns]\nnameservers = [\"ns1:53\"]\n{BASE}"),
        "\"ns1:53\"",
        "dns.nameservers[0]",
        "invalid socket address",
    );
    assert_error_at(
        &format!("[dns]\nmin_interval = \"1ms\"\n{BASE}"),
        "\"1ms\"",
        "dns.min_interval",
        "out of range",
    );
    assert_error_at(
        &format!("[dns]\ntimeout = \"1m\"\n{BASE}"),
        "\"1m\"",
        "dns.timeout",
        "out of range",
    );
}
