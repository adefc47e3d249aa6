//! The command line: `ringgate -c FILE`, `--config FILE`, `check`, `--version`,
//! `demo`.

use std::ffi::{OsStr, OsString};
use std::process::Command;
use std::time::Duration;

use ringgate_tests::proxy::{ringgate_bin, run_ringgate, run_with_timeout, write_temp};
use ringgate_tests::{Backend, Behaviour, Client, Proxy, ProxyConfig};

#[test]
fn short_config_flag_runs_the_proxy() {
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr());
    let proxy = Proxy::start_with_args(&cfg.to_toml(), &["-c"]);
    let r = Client::connect(proxy.port).get("/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), backend.ok_body("/x"));
}

#[test]
fn long_config_flag_runs_the_proxy() {
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr());
    let proxy = Proxy::start_with_args(&cfg.to_toml(), &["--config"]);
    let r = Client::connect(proxy.port).get("/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), backend.ok_body("/x"));
}

#[test]
fn check_accepts_a_good_config() {
    let cfg = ProxyConfig::new(([127, 0, 0, 1], 9).into());
    let path = write_temp("ringgate-check-good", "toml", cfg.to_toml().as_bytes());
    let out = run_ringgate(&[OsStr::new("check"), OsStr::new("-c"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.success,
        "`ringgate check -c` refused a good config (exit {:?})\nconfig:\n{}\nstdout:\n{}\nstderr:\n{}",
        out.code,
        cfg.to_toml(),
        out.stdout,
        out.stderr
    );
}

#[test]
fn check_reports_file_line_col_and_key_for_a_route_naming_a_missing_upstream() {
    let toml = "[server]\nworkers = 1\n\n[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:18080\"\n\n[[routes]]\nlistener = \"web\"\nupstream = \"missing\"\n\n[[upstreams]]\nname = \"app\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n";
    let line = toml
        .lines()
        .position(|l| l.starts_with("upstream = \"missing\""))
        .expect("fixture has the line")
        + 1;
    let path = write_temp("ringgate-check-bad", "toml", toml.as_bytes());
    let out = run_ringgate(&[OsStr::new("check"), OsStr::new("-c"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        !out.success,
        "`ringgate check` accepted a route naming a missing upstream; stderr:\n{}",
        out.stderr
    );
    let prefix = format!("{}:{line}:", path.display());
    let located = out.stderr.match_indices(&prefix).any(|(i, _)| {
        let rest = &out.stderr[i + prefix.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    });
    assert!(
        located,
        "stderr lacks `{prefix}COL:` (the line of the bad `upstream` key):\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("upstream"),
        "stderr does not name the key `upstream`:\n{}",
        out.stderr
    );
}

#[test]
fn version_flag_prints_the_version() {
    let out = run_ringgate(&[OsStr::new("--version")]);
    assert!(
        out.success,
        "--version failed: {:?}\n{}",
        out.code, out.stderr
    );
    let version = env!("CARGO_PKG_VERSION"); // shared workspace version
    assert!(
        out.stdout.contains(version),
        "--version printed {:?}, expected it to contain {version}",
        out.stdout
    );
}

/// README's first command, shortened: embedded backends, the proxy and a
/// load run, ending with the latency table and no errors.
#[test]
fn demo_runs_and_prints_the_latency_table() {
    let out = run_ringgate(&[
        "demo".as_ref(),
        "--duration".as_ref(),
        "1s".as_ref(),
        "--workers".as_ref(),
        "1".as_ref(),
        "--connections".as_ref(),
        "4".as_ref(),
    ]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success, "{text}");
    assert!(
        text.contains("| requests | errors | req/s | p50 |"),
        "{text}"
    );
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("|---"))
        .nth(1)
        .unwrap_or_else(|| panic!("no table row in {text}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let requests: u64 = cells[1].parse().unwrap_or_else(|_| panic!("{row}"));
    assert!(requests > 100, "{row}");
    assert_eq!(cells[2], "0", "errors: {row}");
    assert!(text.contains("(round robin)"), "{text}");
}

/// README's first command on a 2-core machine whose open-file limit is
/// 20 000 (these build machines'): the demo sizes its own config to the
/// limit, so a new user's first run warns about nothing.
#[test]
fn the_demo_warns_about_nothing_under_a_20000_open_file_limit() {
    let out = run_with_timeout(
        Command::new("prlimit")
            .arg("--nofile=20000:20000")
            .arg("--")
            .arg(ringgate_bin())
            .args([
                "demo",
                "--duration",
                "1s",
                "--workers",
                "2",
                "--connections",
                "4",
            ]),
        Duration::from_secs(10),
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(out.success, "{text}");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" warn ") || l.contains(" error "))
        .collect();
    assert!(
        warnings.is_empty(),
        "the demo warned:\n{}",
        warnings.join("\n")
    );
}

#[test]
fn check_takes_the_file_in_every_place_a_user_would_put_it() {
    let cfg = ProxyConfig::new("127.0.0.1:9".parse().unwrap());
    let good = write_temp("ringgate-check-forms", "toml", cfg.to_toml().as_bytes());
    let bad = write_temp(
        "ringgate-check-forms-bad",
        "toml",
        b"[server]\nworkers = 0\n",
    );
    let forms = |p: &OsStr| -> Vec<Vec<OsString>> {
        vec![
            vec!["check".into(), p.into()],
            vec!["check".into(), "-c".into(), p.into()],
            vec!["-c".into(), p.into(), "check".into()],
        ]
    };
    for args in forms(good.as_os_str()) {
        let argv: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let out = run_ringgate(&argv);
        assert!(
            out.success,
            "{args:?} refused a good config: {}",
            out.stderr
        );
    }
    for args in forms(bad.as_os_str()) {
        let argv: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let out = run_ringgate(&argv);
        assert!(!out.success, "{args:?} accepted a bad config");
        assert!(
            out.stderr.contains("server.workers"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn check_refuses_an_access_log_start_up_could_not_open() {
    let cfg = ProxyConfig::new("127.0.0.1:9".parse().unwrap());
    let toml = cfg.to_toml() + "\n[access_log]\npath = \"/nonexistent-dir/ringgate/access.log\"\n";
    let path = write_temp("ringgate-check-log", "toml", toml.as_bytes());
    let out = run_ringgate(&[OsStr::new("check"), path.as_os_str()]);
    assert!(!out.success, "check accepted an access log it cannot open");
    assert!(
        out.stderr.contains(
            "access_log.path: cannot open /nonexistent-dir/ringgate/access.log for appending"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn check_bind_refuses_an_address_another_process_holds_and_plain_check_does_not_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = ProxyConfig::new("127.0.0.1:9".parse().unwrap());
    cfg.port = taken.local_addr().expect("addr").port();
    let path = write_temp("ringgate-check-bind", "toml", cfg.to_toml().as_bytes());
    let plain = run_ringgate(&[OsStr::new("check"), path.as_os_str()]);
    assert!(
        plain.success,
        "check without --bind binds: {}",
        plain.stderr
    );
    let out = run_ringgate(&[OsStr::new("check"), OsStr::new("--bind"), path.as_os_str()]);
    assert!(!out.success, "check --bind accepted a taken address");
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", cfg.port)) && out.stderr.contains("in use"),
        "{}",
        out.stderr
    );
    drop(taken);
    let free = run_ringgate(&[OsStr::new("check"), OsStr::new("--bind"), path.as_os_str()]);
    assert!(
        free.success,
        "check --bind refused a free address: {}",
        free.stderr
    );
}

#[test]
fn an_unknown_ringgate_driver_is_refused_by_check_and_start_up() {
    let cfg = ProxyConfig::new("127.0.0.1:9".parse().unwrap());
    let path = write_temp("ringgate-driver-env", "toml", cfg.to_toml().as_bytes());
    for args in [
        vec![OsStr::new("check"), path.as_os_str()],
        vec![OsStr::new("-c"), path.as_os_str()],
    ] {
        let out = run_with_timeout(
            Command::new(ringgate_bin())
                .args(&args)
                .env("RINGGATE_DRIVER", "legasy"),
            Duration::from_secs(10),
        );
        assert_eq!(
            out.code,
            Some(2),
            "{args:?} with RINGGATE_DRIVER=legasy: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("RINGGATE_DRIVER=\"legasy\" is not a driver")
                && out.stderr.contains("RINGGATE_DRIVER=legacy"),
            "{}",
            out.stderr
        );
    }
    for good in ["legacy", "auto", ""] {
        let out = run_with_timeout(
            Command::new(ringgate_bin())
                .arg("check")
                .arg(&path)
                .env("RINGGATE_DRIVER", good),
            Duration::from_secs(10),
        );
        assert!(
            out.success,
            "RINGGATE_DRIVER={good:?} refused: {}",
            out.stderr
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_bad_demo_flag_is_the_flags_error_and_names_no_file() {
    let out = run_ringgate(&["demo".as_ref(), "--workers".as_ref(), "0".as_ref()]);
    assert!(!out.success, "demo --workers 0 ran");
    assert!(
        out.stderr.contains("--workers") && out.stderr.contains("\"auto\" or a count"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(".toml"),
        "names a file the user never wrote: {}",
        out.stderr
    );
}

#[test]
fn check_says_did_you_mean_for_a_misspelt_key_with_file_line_col() {
    let cfg = ProxyConfig::new("127.0.0.1:9".parse().unwrap());
    let toml = cfg
        .to_toml()
        .replace("workers = 1", "workers = 1\nbacklgo = 10");
    let path = write_temp("ringgate-check-typo", "toml", toml.as_bytes());
    let out = run_ringgate(&[OsStr::new("check"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.success);
    let want = format!(
        "{}:3:1: server.backlgo: unknown key `backlgo`; did you mean `backlog`?",
        path.display()
    );
    assert!(
        out.stderr.contains(&want),
        "want {want:?} in:\n{}",
        out.stderr
    );
}

/// `--print-config` output without its first line, which names the file.
fn printed_config(path: &std::path::Path) -> String {
    let out = run_ringgate(&[
        OsStr::new("--print-config"),
        OsStr::new("-c"),
        path.as_os_str(),
    ]);
    assert!(
        out.success,
        "--print-config -c {}: {}",
        path.display(),
        out.stderr
    );
    let (first, rest) = out.stdout.split_once('\n').expect("more than one line");
    assert!(first.starts_with('#'), "{first}");
    rest.to_owned()
}

#[test]
fn print_config_round_trips_through_check_to_the_same_effective_config() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    for name in ["minimal.toml", "full.toml", "multi-route.toml"] {
        let source = examples.join(name);
        let printed = printed_config(&source);
        assert!(
            printed.contains("drain_timeout = ") && printed.contains("max_head_size = "),
            "{name}: defaults not filled in:\n{printed}"
        );
        let copy = write_temp("ringgate-printed", "toml", printed.as_bytes());
        let check = run_ringgate(&[OsStr::new("check"), copy.as_os_str()]);
        let again = printed_config(&copy);
        let _ = std::fs::remove_file(&copy);
        // full.toml logs to /var/log/ringgate, which need not exist here.
        assert!(
            check.success
                || check
                    .stderr
                    .contains("access_log.path: cannot open /var/log/ringgate"),
            "check refused the printed {name}:\n{}\n{printed}",
            check.stderr
        );
        assert_eq!(
            again, printed,
            "{name}: printing the printed config changed it"
        );
    }
}

#[test]
fn print_config_of_a_bad_file_prints_its_errors_and_nothing_else() {
    let bad = write_temp("ringgate-print-bad", "toml", b"[server]\nworkers = 0\n");
    let out = run_ringgate(&[
        OsStr::new("--print-config"),
        OsStr::new("-c"),
        bad.as_os_str(),
    ]);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("server.workers"), "{}", out.stderr);
}
