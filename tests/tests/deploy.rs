//! docs/DEPLOY.md as written: its install steps, run in a temporary root;
//! its systemd unit (deploy/ringgate.service, which DEPLOY.md includes
//! verbatim), checked by `systemd-analyze verify` and run the way systemd
//! runs it; and the sd_notify messages the unit's `Type=notify` relies on,
//! received on real unix datagram sockets.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringgate_tests::proxy::{run_with_timeout, temp_path, CommandOutput};
use ringgate_tests::{eventually, ringgate_bin, Backend, Behaviour, Client, Proxy, ProxyConfig};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The first ```sh block under `## Build and install` in DEPLOY.md, one
/// command per line, comments dropped.
fn install_steps(deploy_md: &str) -> Vec<String> {
    let section = deploy_md
        .split("## Build and install")
        .nth(1)
        .expect("DEPLOY.md has a `## Build and install` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A directory standing in for `/`: the absolute paths of the documented
/// steps and of the unit are moved under it. Removed on drop.
struct Root(PathBuf);

impl Root {
    fn new() -> Root {
        let dir = temp_path("ringgate-deploy-root", "d");
        for sub in [
            "usr/local/bin",
            "etc/systemd/system",
            "var/log",
            "run/systemd",
            "bin",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("create root dirs");
        }
        // ExecReload's /bin/kill, as a real root has it.
        let kill = ["/bin/kill", "/usr/bin/kill"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .expect("kill is installed");
        std::fs::copy(kill, dir.join("bin/kill")).expect("copy kill");
        Root(dir)
    }

    /// `text` with every absolute path of a root file system moved under
    /// this root, and `target/release/` pointing at the binaries under test.
    fn rewrite(&self, text: &str) -> String {
        let bin_dir = ringgate_bin()
            .parent()
            .expect("binary dir")
            .display()
            .to_string();
        let root = self.0.display().to_string();
        // A leading space, so a path at the very start is moved too.
        let mut out = format!(" {text}").replace("target/release/", &format!("{bin_dir}/"));
        for top in ["/usr/", "/etc/", "/var/", "/run/", "/bin/"] {
            for before in [" ", "=", "\""] {
                out = out.replace(&format!("{before}{top}"), &format!("{before}{root}{top}"));
            }
        }
        out[1..].to_owned()
    }

    fn path(&self, absolute: &str) -> PathBuf {
        self.0.join(absolute.trim_start_matches('/'))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bash(line: &str, root: &Root) -> CommandOutput {
    let mut path = OsString::from(root.path("/usr/local/bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    run_with_timeout(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", line])
            .current_dir(repo_root())
            .env("PATH", path),
        Duration::from_secs(20),
    )
}

fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file())
}

/// `systemd-analyze verify --root=ROOT UNIT`: the unit must load with no
/// warning at all (an unknown or misspelt key is only a warning), and its
/// commands must exist inside the root. The root gets the host's system
/// units (sysinit.target, ...), as a real root has them.
fn verify_unit(root: &Root, unit: &str) {
    let Some(analyze) = systemd_analyze() else {
        println!("skipped `systemd-analyze verify {unit}`: systemd-analyze is not installed here");
        return;
    };
    std::fs::create_dir_all(root.path("/usr/lib/systemd")).expect("mkdir");
    let copy = run_with_timeout(
        Command::new("cp")
            .arg("-r")
            .arg("/usr/lib/systemd/system")
            .arg(root.path("/usr/lib/systemd/")),
        Duration::from_secs(20),
    );
    assert!(copy.success, "copy the host's units: {}", copy.stderr);
    let out = run_with_timeout(
        Command::new(analyze)
            .arg("verify")
            .arg(format!("--root={}", root.0.display()))
            .arg(unit),
        Duration::from_secs(30),
    );
    assert!(
        out.success && out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
        "systemd-analyze verify {unit} (exit {:?}):\n{}{}",
        out.code,
        out.stdout,
        out.stderr
    );
}

/// `[Service]` keys of a unit file, each with every value it is given.
fn service_keys(unit: &str) -> HashMap<String, Vec<String>> {
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                keys.entry(k.to_owned()).or_default().push(v.to_owned());
            }
        }
    }
    keys
}

fn one<'a>(keys: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match keys.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("the unit must set {key}= once, has {other:?}"),
    }
}

/// The service's process, killed if the test ends early: a process left
/// running would keep the ports, and whatever file descriptors the test
/// runner inherited, for as long as it lives.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next notification datagram, as text.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the socket's read timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

/// RELOADING=1 with a MONOTONIC_USEC, then READY=1.
fn expect_reload_notifications(socket: &UnixDatagram) -> (String, String) {
    let reloading = next_notification(socket);
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without a MONOTONIC_USEC number: {reloading:?}"));
    assert!(usec > 0, "{reloading:?}");
    let ready = next_notification(socket);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    (reloading, ready)
}

#[test]
fn deploy_md_install_steps_and_unit_work_as_written() {
    let deploy_md = read(&repo_root().join("docs/DEPLOY.md"));
    let unit_text = read(&repo_root().join("deploy/ringgate.service"));
    assert!(
        deploy_md.contains(&format!("```ini\n{unit_text}```")),
        "DEPLOY.md must include deploy/ringgate.service verbatim in an ```ini block"
    );
    let root = Root::new();
    let steps = install_steps(&deploy_md);
    let mut ran = Vec::new();
    for step in &steps {
        if step.starts_with("cargo build") {
            println!("skipped `{step}`: the test runs the binaries under test");
            continue;
        }
        if step.starts_with("systemctl") {
            println!("skipped `{step}`: no systemd manager here; the unit's commands are run below as systemd would");
            continue;
        }
        if let Some(unit) = step.strip_prefix("systemd-analyze verify ") {
            verify_unit(&root, unit.trim());
            ran.push(step.clone());
            continue;
        }
        let out = bash(&root.rewrite(step), &root);
        assert!(
            out.success,
            "documented step `{step}` failed (exit {:?}):\n{}{}",
            out.code, out.stdout, out.stderr
        );
        // The example config logs to /var/log/ringgate: inside the root.
        let config = root.path("/etc/ringgate/ringgate.toml");
        if config.is_file() {
            std::fs::write(&config, root.rewrite(&read(&config))).expect("rewrite config");
        }
        if step.starts_with("ringgate check") {
            assert!(out.stdout.contains(": ok"), "{}", out.stdout);
        }
        ran.push(step.clone());
    }
    for wanted in ["install", "ringgate check", "systemd-analyze verify"] {
        assert!(
            ran.iter().any(|s| s.starts_with(wanted)),
            "the documented steps lack `{wanted} ...`: {steps:?}"
        );
    }
    for bin in ["ringgate", "ringload"] {
        assert!(
            root.path(&format!("/usr/local/bin/{bin}")).is_file(),
            "{bin} not installed"
        );
    }
    assert_eq!(
        read(&root.path("/etc/systemd/system/ringgate.service")),
        unit_text
    );

    // The unit, as systemd runs it.
    let keys = service_keys(&unit_text);
    assert_eq!(one(&keys, "Type"), "notify");
    assert!(one(&keys, "AmbientCapabilities").contains("CAP_NET_BIND_SERVICE"));
    let nofile: u64 = one(&keys, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    assert!(nofile >= 65_536, "LimitNOFILE={nofile}");
    let logs = root.path(&format!("/var/log/{}", one(&keys, "LogsDirectory")));
    let runtime = root.path(&format!("/run/{}", one(&keys, "RuntimeDirectory")));
    std::fs::create_dir_all(&logs).expect("LogsDirectory");
    std::fs::create_dir_all(&runtime).expect("RuntimeDirectory");

    // The installed example's backends are private-range addresses that a
    // test must never contact: the running part puts a loopback config at
    // the same path, logging into the LogsDirectory.
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr());
    let access_log = logs.join("access.log");
    let toml = format!(
        "{}\n[access_log]\npath = \"{}\"\n",
        cfg.to_toml(),
        access_log.display()
    );
    std::fs::write(root.path("/etc/ringgate/ringgate.toml"), &toml).expect("write config");

    let pre = bash(&root.rewrite(one(&keys, "ExecStartPre")), &root);
    assert!(pre.success, "ExecStartPre failed: {}", pre.stderr);

    let notify_path = root.path("/run/systemd/notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notification socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let exec_start = root.rewrite(one(&keys, "ExecStart"));
    let mut argv = exec_start.split_whitespace();
    let stderr_path = temp_path("ringgate-deploy-stderr", "log");
    let mut child = KillOnDrop(
        Command::new(argv.next().expect("ExecStart has a command"))
            .args(argv)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn ExecStart"),
    );
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    let ready = next_notification(&notify);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}; {}", stderr());
    // READY=1 promises a bound listener: no retry needed.
    let r = Client::connect(cfg.port).get("/after-ready");
    assert_eq!(r.status, 200, "{r:?}");
    eventually(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        if log.contains("/after-ready") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .unwrap_or_else(|log| panic!("no access log line in the LogsDirectory: {log:?}"));

    let reload = one(&keys, "ExecReload").replace("$MAINPID", &child.0.id().to_string());
    let out = bash(&root.rewrite(&reload), &root);
    assert!(out.success, "ExecReload failed: {}", out.stderr);
    let (_, ready) = expect_reload_notifications(&notify);
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("generation 1")),
        "{ready:?}"
    );
    assert_eq!(Client::connect(cfg.port).get("/after-reload").status, 200);

    // systemd stops a unit with SIGTERM (KillSignal's default).
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let stopping = next_notification(&notify);
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let stop_timeout: u64 = one(&keys, "TimeoutStopSec").parse().expect("seconds");
    let exit = eventually(Duration::from_secs(stop_timeout), || {
        match child.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            _ => Err(String::new()),
        }
    })
    .unwrap_or_else(|_| {
        panic!(
            "did not exit within TimeoutStopSec={stop_timeout}: {}",
            stderr()
        )
    });
    assert!(exit.success(), "exit {exit}: {}", stderr());
    let _ = std::fs::remove_file(&stderr_path);
}

#[test]
fn notifications_reach_an_abstract_socket_and_a_refused_reload_still_ends_ready() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ringgate-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let notify = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr());
    let socket_env = format!("@{name}");
    let proxy = Proxy::start_with_env(&cfg.to_toml(), &[("NOTIFY_SOCKET", socket_env.as_str())]);
    let ready = next_notification(&notify);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");

    std::fs::write(&proxy.config_path, "[server]\nworkers = 0\n").expect("break the config");
    proxy.signal("-HUP");
    let (_, ready) = expect_reload_notifications(&notify);
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.contains("reload refused")),
        "{ready:?}"
    );
    assert_eq!(Client::connect(proxy.port).get("/still").status, 200);
}

#[test]
fn a_notify_socket_that_is_no_socket_name_is_reported_and_the_proxy_serves() {
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr());
    let proxy = Proxy::start_with_env(&cfg.to_toml(), &[("NOTIFY_SOCKET", "relative/path")]);
    assert_eq!(Client::connect(proxy.port).get("/x").status, 200);
    assert!(
        proxy.stderr().contains("NOTIFY_SOCKET=relative/path"),
        "{}",
        proxy.stderr()
    );
}

/// README's "Running it" starts minimal.toml with a backend the reader can
/// run: the backend command listens where minimal.toml sends requests, and
/// the curl goes where minimal.toml listens.
#[test]
fn readme_minimal_example_has_a_backend_where_minimal_toml_points() {
    let readme = read(&repo_root().join("README.md"));
    let block = readme
        .split("## Running it")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has a ```sh block under ## Running it");
    let minimal = read(&repo_root().join("config/examples/minimal.toml"));
    let addresses: Vec<&str> = minimal
        .lines()
        .filter_map(|l| l.split("address = \"").nth(1)?.split('"').next())
        .collect();
    let [listener, backend] = addresses[..] else {
        panic!("minimal.toml should have one listener and one backend address: {addresses:?}")
    };
    let (backend_ip, backend_port) = backend.rsplit_once(':').expect("ip:port");
    let server = block
        .lines()
        .find(|l| l.contains("http.server"))
        .expect("a backend command");
    assert!(
        server.contains(&format!("http.server {backend_port} --bind {backend_ip}")),
        "{server:?} does not serve minimal.toml's backend {backend}"
    );
    assert!(
        block.contains(&format!("curl -i http://{listener}/")),
        "no curl to minimal.toml's listener {listener} in:\n{block}"
    );
    assert!(
        block
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("cargo build --release ")),
        "the block starts with the plain release build: {block}"
    );
}
