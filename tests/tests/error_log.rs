//! The error log: one line per operator-relevant event, written to
//! `[error_log] path`, filtered by level and rate-limited per kind.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringgate_tests::proxy::{run_ringgate, temp_path, write_temp};
use ringgate_tests::{eventually, free_port, Backend, Behaviour, Client, Proxy, ProxyConfig};

/// The lines of `path` once `ready` accepts them (written within a gossip
/// tick of the event).
fn lines_when(path: &Path, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    eventually(Duration::from_secs(3), || {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if ready(&lines) {
            Ok(lines)
        } else {
            Err(text)
        }
    })
    .unwrap_or_else(|text| panic!("error log never got there:\n{text}"))
}

fn with_error_log(toml: String, log: &Path, extra: &str) -> String {
    toml + &format!(
        "\n[error_log]\npath = {:?}\n{extra}",
        log.display().to_string()
    )
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    free_port()
}

/// Issue 14's must-show: the minimal example with no backend running; its
/// 502 is matched by one error-log line naming the backend, the errno and
/// the route.
#[test]
fn the_minimal_example_without_a_backend_logs_one_line_per_502() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/minimal.toml"),
    )
    .expect("config/examples/minimal.toml");
    // The example as shipped, on ports free on this machine.
    let port = free_port();
    let backend = format!("127.0.0.1:{}", dead_port());
    let toml = example
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9000", &backend);
    assert_ne!(toml, example, "the example's addresses changed");
    let log = temp_path("ringgate-error", "log");
    let proxy = Proxy::start(&with_error_log(toml, &log, ""));

    for i in 0..3 {
        let r = Client::connect(proxy.port).get(&format!("/x{i}"));
        assert_eq!(r.status, 502, "{r:?}");
    }
    let is_5xx = |l: &String| l.contains(" proxy_5xx: ");
    let lines = lines_when(&log, |l| l.iter().filter(|l| is_5xx(l)).count() >= 3);
    let failures: Vec<&String> = lines.iter().filter(|l| is_5xx(l)).collect();
    assert_eq!(failures.len(), 3, "one line per 502:\n{lines:#?}");
    // The example runs a worker per CPU: any of them may have served each.
    for i in 0..3 {
        let target = format!(" request=\"GET /x{i}\"");
        let line = failures
            .iter()
            .find(|l| l.contains(&target))
            .unwrap_or_else(|| panic!("no line for /x{i}:\n{lines:#?}"));
        for want in [
            " error worker=",
            " proxy_5xx: status=502 reason=\"upstream connect failed\"",
            " route=routes[0] listener=web host=* prefix=/ client=127.0.0.1",
            &target,
            " upstream=app",
            &format!(" backend={backend} cause=connect_failed errno=ECONNREFUSED(111)"),
            " tries=1",
        ] {
            assert!(line.contains(want), "{want:?} not in\n{line}");
        }
    }
    // The process's own events go to the same file, not stderr.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" info worker=main lifecycle: ringgate ")),
        "{lines:#?}"
    );
    assert!(!proxy.stderr().contains("lifecycle"), "{}", proxy.stderr());
    let _ = std::fs::remove_file(&log);
}

/// The count in a `N more KIND line(s) suppressed` line.
fn suppressed(line: &str, kind: &str) -> Option<u64> {
    let (_, rest) = line.split_once(&format!(" {kind}: "))?;
    let (n, rest) = rest.split_once(' ')?;
    rest.starts_with(&format!("more {kind} line(s) suppressed"))
        .then(|| n.parse().ok())
        .flatten()
}

#[test]
fn a_flood_of_502s_is_cut_per_second_and_the_suppressed_count_written_after() {
    let dead = ([127, 0, 0, 1], dead_port()).into();
    let log = temp_path("ringgate-error", "log");
    let toml = with_error_log(
        ProxyConfig::new(dead).to_toml(),
        &log,
        "lines_per_second = 2\n",
    );
    let proxy = Proxy::start(&toml);
    const SENT: u64 = 40;
    for _ in 0..SENT {
        assert_eq!(Client::connect(proxy.port).get("/flood").status, 502);
    }
    let written = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains(" proxy_5xx: status=502"))
            .count() as u64
    };
    let counted = |lines: &[String]| {
        lines
            .iter()
            .filter_map(|l| suppressed(l, "proxy_5xx"))
            .sum::<u64>()
    };
    // Every 502 is either written or counted, once its second is over.
    let lines = lines_when(&log, |l| written(l) + counted(l) >= SENT);
    assert_eq!(written(&lines) + counted(&lines), SENT, "{lines:#?}");
    assert!(counted(&lines) > 0, "nothing was suppressed:\n{lines:#?}");
    let seconds = lines
        .iter()
        .filter(|l| suppressed(l, "proxy_5xx").is_some())
        .count() as u64;
    assert!(
        written(&lines) <= 2 * (seconds + 1),
        "more than 2 lines a second:\n{lines:#?}"
    );
    let line = lines
        .iter()
        .find(|l| suppressed(l, "proxy_5xx").is_some())
        .expect("a suppressed-count line");
    assert!(
        line.contains(" error worker=0 proxy_5xx: ")
            && line.ends_with("(over lines_per_second = 2)"),
        "the count is written at the level it stands for: {line}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn refused_requests_are_logged_at_info_with_their_reason() {
    let backend = Backend::start("b", Behaviour::Ok);
    let log = temp_path("ringgate-error", "log");
    let toml = with_error_log(
        ProxyConfig::new(backend.addr())
            .route_prefix("/a")
            .to_toml(),
        &log,
        "",
    );
    let proxy = Proxy::start(&toml);
    assert_eq!(Client::connect(proxy.port).get("/nowhere").status, 404);
    let r = Client::connect(proxy.port).request(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n");
    assert_eq!(r.status, 400);
    let lines = lines_when(&log, |l| {
        l.iter().filter(|l| l.contains(" refused: ")).count() >= 2
    });
    let refused: Vec<&String> = lines.iter().filter(|l| l.contains(" refused: ")).collect();
    assert_eq!(refused.len(), 2, "{lines:#?}");
    assert!(
        refused[0].contains(
            " info worker=0 refused: status=404 reason=\"no route\" client=127.0.0.1 request=\"GET /nowhere\""
        ),
        "{}",
        refused[0]
    );
    assert!(
        refused[1].contains(
            " info worker=0 refused: status=400 reason=\"more than one Host\" client=127.0.0.1"
        ),
        "{}",
        refused[1]
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn events_below_the_level_are_not_written() {
    let dead = ([127, 0, 0, 1], dead_port()).into();
    let log = temp_path("ringgate-error", "log");
    let toml = with_error_log(
        ProxyConfig::new(dead).route_prefix("/a").to_toml(),
        &log,
        "level = \"error\"\n",
    );
    let proxy = Proxy::start(&toml);
    // An info event (a refusal), then an error (a 502).
    assert_eq!(Client::connect(proxy.port).get("/nowhere").status, 404);
    assert_eq!(Client::connect(proxy.port).get("/a").status, 502);
    let lines = lines_when(&log, |l| l.iter().any(|l| l.contains(" proxy_5xx: ")));
    // Workers write in order: the 404's line would be before the 502's.
    assert_eq!(lines.len(), 1, "only the error is written:\n{lines:#?}");
    assert!(
        lines[0].contains(" error worker=0 proxy_5xx: status=502"),
        "{lines:#?}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn health_transitions_go_to_the_error_log() {
    let log = temp_path("ringgate-error", "log");
    let dead = ([127, 0, 0, 1], dead_port()).into();
    let toml = with_error_log(
        ProxyConfig::new(dead)
            .upstream_extra(
                "health_check",
                r#"{ path = "/health", interval = "50ms", timeout = "50ms", rise = 1, fall = 1 }"#,
            )
            .to_toml(),
        &log,
        "",
    );
    let _proxy = Proxy::start(&toml);
    let lines = lines_when(&log, |l| l.iter().any(|l| l.contains(" health: ")));
    let line = lines.iter().find(|l| l.contains(" health: ")).unwrap();
    assert!(
        line.contains(&format!(
            " warn worker=0 health: upstream app backend {dead} is unhealthy (health check /health)"
        )),
        "{line}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn check_refuses_an_error_log_whose_directory_cannot_be_written() {
    let cfg = ProxyConfig::new("127.0.0.1:9".parse().unwrap());
    let missing = PathBuf::from("/nonexistent-dir/ringgate/error.log");
    let toml = with_error_log(cfg.to_toml(), &missing, "");
    let path = write_temp("ringgate-check-elog", "toml", toml.as_bytes());
    let out = run_ringgate(&[OsStr::new("check"), path.as_os_str()]);
    assert!(!out.success, "check accepted an error log it cannot open");
    assert!(
        out.stderr.contains(
            ":18:8: error_log.path: cannot open /nonexistent-dir/ringgate/error.log for appending"
        ),
        "{}",
        out.stderr
    );
    // And start-up refuses it the same way.
    let out = run_ringgate(&[OsStr::new("-c"), path.as_os_str()]);
    assert!(!out.success);
    assert!(out.stderr.contains("error_log.path"), "{}", out.stderr);
}

/// With retries, each failed try that is retried gets an `attempt_failed`
/// line and the 502 still gets exactly one `proxy_5xx` line, naming the
/// last backend tried and the number of tries.
#[test]
fn a_retried_502_gets_one_line_with_its_tries() {
    let dead: Vec<std::net::SocketAddr> = (0..2)
        .map(|_| ([127, 0, 0, 1], dead_port()).into())
        .collect();
    let log = temp_path("ringgate-error", "log");
    let toml = with_error_log(
        ProxyConfig::with_backends(&dead)
            .upstream_extra("retries", r#"{ attempts = 1, on = ["connect_failure"] }"#)
            .upstream_extra("outlier_detection", "{ max_ejection_percent = 0 }")
            .to_toml(),
        &log,
        "",
    );
    let proxy = Proxy::start(&toml);
    assert_eq!(Client::connect(proxy.port).get("/r").status, 502);
    let lines = lines_when(&log, |l| l.iter().any(|l| l.contains(" proxy_5xx: ")));
    let of = |kind: &str| -> Vec<&String> { lines.iter().filter(|l| l.contains(kind)).collect() };
    let failed = of(" proxy_5xx: ");
    let retried = of(" attempt_failed: ");
    assert_eq!((failed.len(), retried.len()), (1, 1), "{lines:#?}");
    assert!(
        retried[0].contains(
            " warn worker=0 attempt_failed: retrying on another backend upstream=app backend="
        ) && retried[0].contains(" cause=connect_failed errno=ECONNREFUSED(111) tries=1"),
        "{}",
        retried[0]
    );
    assert!(failed[0].contains(" tries=2"), "{}", failed[0]);
    // The two lines name the two backends.
    let backend_of = |l: &str| {
        l.split(" backend=")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned)
    };
    let mut named = vec![backend_of(failed[0]), backend_of(retried[0])];
    named.sort();
    let mut want: Vec<Option<String>> = dead.iter().map(|a| Some(a.to_string())).collect();
    want.sort();
    assert_eq!(named, want);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_circuit_breaker_opening_is_logged() {
    let dead = ([127, 0, 0, 1], dead_port()).into();
    let log = temp_path("ringgate-error", "log");
    let toml = with_error_log(
        ProxyConfig::new(dead)
            .upstream_extra(
                "circuit_breaker",
                r#"{ consecutive_failures = 2, open_for = "10s" }"#,
            )
            .upstream_extra("outlier_detection", "{ max_ejection_percent = 0 }")
            .to_toml(),
        &log,
        "",
    );
    let proxy = Proxy::start(&toml);
    assert_eq!(Client::connect(proxy.port).get("/b").status, 502);
    assert_eq!(Client::connect(proxy.port).get("/b").status, 502);
    // Open: refused without a try.
    assert_eq!(Client::connect(proxy.port).get("/b").status, 503);
    let lines = lines_when(&log, |l| {
        l.iter().filter(|l| l.contains(" proxy_5xx: ")).count() == 3
    });
    let breaker: Vec<&String> = lines.iter().filter(|l| l.contains(" breaker: ")).collect();
    assert_eq!(breaker.len(), 1, "{lines:#?}");
    assert!(
        breaker[0].contains(&format!(
            " warn worker=0 breaker: upstream=app backend={dead} circuit breaker closed -> open"
        )),
        "{}",
        breaker[0]
    );
    let refused = lines.iter().find(|l| l.contains(" status=503 ")).unwrap();
    assert!(
        refused.contains("reason=\"no healthy backend available\"")
            && refused.contains(" upstream=app backend=- tries=0"),
        "{refused}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn an_ejection_is_logged() {
    // Passive detection never ejects the last backend serving: a live one
    // stands beside the dead one.
    let live = Backend::start("live", Behaviour::Ok);
    let dead = ([127, 0, 0, 1], dead_port()).into();
    let log = temp_path("ringgate-error", "log");
    let toml = with_error_log(
        ProxyConfig::with_backends(&[dead, live.addr()])
            .upstream_extra("balance", "\"round_robin\"")
            .upstream_extra(
                "outlier_detection",
                r#"{ consecutive_failures = 2, max_ejection_percent = 50 }"#,
            )
            .to_toml(),
        &log,
        "",
    );
    let proxy = Proxy::start(&toml);
    for _ in 0..4 {
        Client::connect(proxy.port).get("/e");
    }
    let lines = lines_when(&log, |l| l.iter().any(|l| l.contains(" ejection: ")));
    let ejected: Vec<&String> = lines.iter().filter(|l| l.contains(" ejection: ")).collect();
    assert_eq!(ejected.len(), 1, "{lines:#?}");
    assert!(
        ejected[0].contains(&format!(
            " warn worker=0 ejection: upstream=app backend={dead} ejected after consecutive failures"
        )),
        "{}",
        ejected[0]
    );
    let _ = std::fs::remove_file(&log);
}
