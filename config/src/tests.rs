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
    assert_eq!((r.listener, r.upstream), (0, 0));
    assert_eq!(r.host, None);
    assert_eq!(r.path_prefix, "/");
    assert!(r.methods.is_empty());
    let u = &c.upstreams[0];
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.backends[0].address, addr("127.0.0.1:9000"));
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
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[1].address, addr("[::1]:8081"));
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    assert_eq!(c.routes[0].path_prefix, "/v1/");
    assert_eq!(c.routes[0].methods, ["GET", "POST"]);
    assert_eq!(c.routes[1].upstream, 1);
    assert_eq!(c.routes[2].listener, 1);
    assert_eq!(c.upstreams[0].backends[0].weight, 3);
    assert_eq!(c.upstreams[0].backends[1].weight, 1);
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
    assert_eq!(c.upstreams[c.routes[0].upstream].name, "api-v2");
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
        "unknown field `bogus`",
    );
}

#[test]
fn unknown_key_in_an_inline_table_points_at_the_key() {
    let text = BASE.replace(
        "upstream = \"api\"\n\n",
        "match = { paht = \"/\" }\nupstream = \"api\"\n\n",
    );
    assert_error(&text, 7, 11, "routes[0].match.paht", "unknown field `paht`");
}

#[test]
fn unknown_key_in_a_backend_names_its_index() {
    let text = BASE.replace("\"127.0.0.1:9000\" }", "\"127.0.0.1:9000\", wieght = 2 }");
    assert_error(
        &text,
        11,
        43,
        "upstreams[0].backends[0].wieght",
        "unknown field `wieght`",
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
    let text = BASE.replace("name = \"api\"\n", "name = \"api\"\nbalance = \"random\"\n");
    assert_error(
        &text,
        11,
        11,
        "upstreams[0].balance",
        "unknown variant `random`",
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
        "no upstream named \"nope\"; defined: api",
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
