//! `ringgate check --bind` refuses what start-up refuses, and passes what
//! starts: generated broken configs (logs that cannot be written,
//! addresses that cannot be bound, overlapping listeners, bad values) are
//! each refused by `check` with file:line:col and key, and refused by
//! start-up too; every config `check` passes starts and serves.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use ringgate_tests::proxy::{run_ringgate, run_with_timeout, temp_path, write_temp};
use ringgate_tests::{free_port, ringgate_bin, Backend, Behaviour, Client, Proxy};

/// A config built from parts, so each case changes one thing.
#[derive(Clone)]
struct Parts {
    server: Vec<String>,
    admin: Option<String>,
    access_log: Option<String>,
    listeners: Vec<String>,
    backend: SocketAddr,
}

impl Parts {
    fn new(backend: SocketAddr) -> Parts {
        Parts {
            server: vec!["workers = 1".into()],
            admin: None,
            access_log: None,
            listeners: vec![format!("127.0.0.1:{}", free_port())],
            backend,
        }
    }

    fn toml(&self) -> String {
        let mut s = format!("[server]\n{}\n", self.server.join("\n"));
        if let Some(a) = &self.admin {
            s += &format!("\n[admin]\naddress = \"{a}\"\n");
        }
        if let Some(p) = &self.access_log {
            s += &format!("\n[access_log]\npath = \"{p}\"\n");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            s += &format!("\n[[listeners]]\nname = \"l{i}\"\naddress = \"{l}\"\n");
        }
        for i in 0..self.listeners.len() {
            s += &format!("\n[[routes]]\nlistener = \"l{i}\"\nupstream = \"app\"\n");
        }
        s += &format!(
            "\n[[upstreams]]\nname = \"app\"\nbackends = [{{ address = \"{}\" }}]\n",
            self.backend
        );
        s
    }
}

/// One broken config: `marker` is text on the line `check` must point at,
/// `key` the key it must name.
struct Broken {
    what: &'static str,
    parts: Parts,
    marker: String,
    key: &'static str,
    /// Run check and start-up as `nobody`, as a service user would run.
    as_nobody: bool,
}

fn check(path: &std::path::Path) -> ringgate_tests::proxy::CommandOutput {
    run_ringgate(&[OsStr::new("check"), OsStr::new("--bind"), path.as_os_str()])
}

/// `ringgate`, or `ringgate` run as `nobody` through setpriv (util-linux).
fn ringgate(as_nobody: bool) -> Command {
    if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(ringgate_bin());
        c
    } else {
        Command::new(ringgate_bin())
    }
}

/// Root may write anywhere, so an unwritable directory needs another user:
/// possible when the tests run as root and setpriv is installed.
fn can_run_as_nobody() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    root && setpriv
}

#[test]
fn check_refuses_each_broken_config_with_file_line_col_and_start_up_refuses_it_too() {
    let backend = Backend::start("b", Behaviour::Ok);
    let base = Parts::new(backend.addr());
    // Held for the whole test: "another process" listening.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr");
    let a_file = write_temp("ringgate-not-a-dir", "txt", b"x");
    let mut cases: Vec<Broken> = Vec::new();

    // Logs that cannot be written.
    for (what, path) in [
        (
            "access log in a missing directory",
            format!("/nonexistent-{}/access.log", std::process::id()),
        ),
        (
            "access log under a regular file",
            format!("{}/access.log", a_file.display()),
        ),
        (
            "access log that is a directory",
            std::env::temp_dir().display().to_string(),
        ),
    ] {
        let mut parts = base.clone();
        parts.access_log = Some(path.clone());
        cases.push(Broken {
            what,
            parts,
            marker: format!("path = \"{path}\""),
            key: "access_log.path",
            as_nobody: false,
        });
    }
    // A log directory the service user cannot write (root-owned, 0755).
    let root_only = temp_path("ringgate-root-only", "d");
    std::fs::create_dir_all(&root_only).expect("mkdir");
    if can_run_as_nobody() {
        let path = root_only.join("access.log").display().to_string();
        let mut parts = base.clone();
        parts.access_log = Some(path.clone());
        cases.push(Broken {
            what: "access log in a directory the user cannot write",
            parts,
            marker: format!("path = \"{path}\""),
            key: "access_log.path",
            as_nobody: true,
        });
    } else {
        println!("skipped the unwritable log directory case: it needs root (to switch to nobody) and setpriv");
    }
    // Addresses that cannot be bound.
    for (what, address, admin) in [
        (
            "listener address another process holds",
            taken.to_string(),
            false,
        ),
        (
            "listener address not on this host",
            "192.0.2.1:8080".to_owned(),
            false,
        ),
        (
            "admin address another process holds",
            taken.to_string(),
            true,
        ),
        (
            "admin address not on this host",
            "192.0.2.1:9901".to_owned(),
            true,
        ),
    ] {
        let mut parts = base.clone();
        if admin {
            parts.admin = Some(address.clone());
        } else {
            parts.listeners.push(address.clone());
        }
        let key = if admin {
            "admin.address"
        } else {
            "listeners[1].address"
        };
        cases.push(Broken {
            what,
            parts,
            marker: format!("address = \"{address}\""),
            key,
            as_nobody: false,
        });
    }
    // Addresses of one config that collide with each other.
    let port = free_port();
    for (what, first, second) in [
        (
            "wildcard and specific listener",
            format!("0.0.0.0:{port}"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "specific and wildcard listener",
            format!("127.0.0.1:{port}"),
            format!("0.0.0.0:{port}"),
        ),
        (
            "dual-stack [::] and an IPv4 listener",
            format!("[::]:{port}"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "one address twice",
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
        ),
    ] {
        let mut parts = base.clone();
        parts.listeners = vec![first, second.clone()];
        // The second listener is the one refused; the marker is its line,
        // the last line with that text.
        cases.push(Broken {
            what,
            parts,
            marker: format!("address = \"{second}\""),
            key: "listeners[1].address",
            as_nobody: false,
        });
    }
    for (what, admin, listener) in [
        (
            "admin on a listener's wildcard port",
            format!("127.0.0.1:{port}"),
            format!("0.0.0.0:{port}"),
        ),
        (
            "admin wildcard over a listener",
            format!("0.0.0.0:{port}"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "admin [::] over an IPv4 listener",
            format!("[::]:{port}"),
            format!("127.0.0.1:{port}"),
        ),
        (
            "admin on a listener's address",
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{port}"),
        ),
    ] {
        let mut parts = base.clone();
        parts.admin = Some(admin.clone());
        parts.listeners = vec![listener];
        cases.push(Broken {
            what,
            parts,
            marker: format!("[admin]\naddress = \"{admin}\""),
            key: "admin.address",
            as_nobody: false,
        });
    }
    // Bad values.
    for (what, line, key) in [
        ("zero workers", "workers = 0", "server.workers"),
        ("backlog out of range", "backlog = 0", "server.backlog"),
        (
            "drain timeout without a unit",
            "drain_timeout = 30",
            "server.drain_timeout",
        ),
        ("misspelt key", "backlgo = 10", "server.backlgo"),
        (
            "unknown ring set-up",
            "io_uring_setup = \"fast\"",
            "server.io_uring_setup",
        ),
    ] {
        let mut parts = base.clone();
        parts.server = vec![line.to_owned()];
        cases.push(Broken {
            what,
            parts,
            marker: line.to_owned(),
            key,
            as_nobody: false,
        });
    }

    let mut failures = Vec::new();
    for case in &cases {
        let toml = case.parts.toml();
        let path = write_temp("ringgate-broken", "toml", toml.as_bytes());
        // 1-based line of the last occurrence of the marker's last line.
        let marker_start = toml
            .rfind(&case.marker)
            .unwrap_or_else(|| panic!("{}: no marker", case.what));
        let line =
            toml[..marker_start].matches('\n').count() + 1 + case.marker.matches('\n').count();
        let out = run_with_timeout(
            ringgate(case.as_nobody).args([
                OsStr::new("check"),
                OsStr::new("--bind"),
                path.as_os_str(),
            ]),
            Duration::from_secs(10),
        );
        let located = format!("{}:{line}:", path.display());
        let keyed = out.stderr.lines().any(|l| {
            l.strip_prefix(&located).is_some_and(|rest| {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                digits > 0 && rest[digits..].starts_with(&format!(": {}: ", case.key))
            })
        });
        if out.success || out.code != Some(2) || !keyed {
            failures.push(format!(
                "{}: check --bind (exit {:?}) did not refuse it at {located}COL: {}:\n{}\n{toml}",
                case.what, out.code, case.key, out.stderr
            ));
        }
        let started = run_with_timeout(
            ringgate(case.as_nobody).arg("-c").arg(&path),
            Duration::from_secs(10),
        );
        if started.success {
            failures.push(format!("{}: start-up did not refuse it", case.what));
        }
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_file(&a_file);
    let _ = std::fs::remove_dir_all(&root_only);
    assert!(
        failures.is_empty(),
        "{} of {} broken configs:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn each_config_that_check_passes_starts() {
    let backend = Backend::start("b", Behaviour::Ok);
    // A fresh port each: a killed proxy's io_uring may hold its listening
    // socket for a moment after the process is gone.
    let base = || Parts::new(backend.addr());
    let log_dir = temp_path("ringgate-good-logs", "d");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let mut cases: Vec<(&str, Parts)> = Vec::new();
    cases.push(("the base config", base()));
    let mut p = base();
    p.admin = Some(format!("127.0.0.1:{}", free_port()));
    cases.push(("with an admin address", p));
    let mut p = base();
    p.access_log = Some(log_dir.join("new.log").display().to_string());
    cases.push(("with an access log to create", p));
    let mut p = base();
    p.listeners = vec![
        format!("0.0.0.0:{}", free_port()),
        format!("[::1]:{}", free_port()),
    ];
    cases.push(("a wildcard IPv4 listener and an IPv6 one", p));
    let mut p = base();
    let port = free_port();
    p.listeners = vec![format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
    cases.push(("one port on IPv4 and IPv6 loopback", p));
    let mut p = base();
    p.listeners.push("127.0.0.1:0".into());
    cases.push(("with a port-0 listener", p));
    let mut p = base();
    p.server = vec![
        "workers = 2".into(),
        "io_uring_setup = \"plain\"".into(),
        "pin = false".into(),
    ];
    cases.push(("two unpinned workers on a plain ring", p));

    for (what, parts) in &cases {
        let toml = parts.toml();
        let path = write_temp("ringgate-good", "toml", toml.as_bytes());
        let out = check(&path);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.success,
            "{what}: check --bind refused it:\n{}\n{toml}",
            out.stderr
        );
        let proxy = Proxy::start(&toml);
        let r = Client::connect(proxy.port).get("/started");
        assert_eq!(r.status, 200, "{what}: {r:?}");
    }
    let _ = std::fs::remove_dir_all(&log_dir);
}
