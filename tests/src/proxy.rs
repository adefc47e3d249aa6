//! Starting the real `ringgate` binary: locating it, writing its config to a
//! temporary file, waiting for its listener, and killing it on drop.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the proxy gets to start accepting on its listener.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `ringgate` binary: `$RINGGATE_BIN`, else `ringgate` next to
/// the target profile directory this test binary runs from
/// (`target/debug/deps/x-hash` → `target/debug/ringgate`).
pub fn ringgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGGATE_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RINGGATE_BIN={} does not exist; build it first: cargo build -p ringgate",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a directory")
        .to_path_buf();
    if dir.file_name().map(|n| n == "deps").unwrap_or(false) {
        dir.pop();
    }
    let bin = dir.join("ringgate");
    assert!(
        bin.is_file(),
        "ringgate binary not found at {}; build it first: cargo build -p ringgate",
        bin.display()
    );
    bin
}

/// Path of the `ringload` binary (the load generator, crate
/// `ringgate-loadgen`): `$RINGLOAD_BIN`, else `ringload` beside `ringgate`.
pub fn ringload_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGLOAD_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RINGLOAD_BIN={} does not exist; build it first: cargo build -p ringgate-loadgen",
            p.display()
        );
        return p;
    }
    let bin = ringgate_bin().with_file_name("ringload");
    assert!(
        bin.is_file(),
        "ringload binary not found at {}; build it first: cargo build -p ringgate-loadgen",
        bin.display()
    );
    bin
}

/// A unique path (`prefix-PID-N-NANOS.ext`) in this test process's own
/// directory of the temp directory (see [`run_dir`]).
pub fn temp_path(prefix: &str, ext: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    run_dir().join(format!(
        "{prefix}-{}-{}-{nanos}.{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Where this test process's files go: `ringgate-tests-PID` in the temp
/// directory. A test cannot clean up after itself when it fails, and a
/// process cannot when it is killed, so each process removes the
/// directories of earlier ones whose process is gone: the files of one
/// suite run (17 MB of configs, logs and request bodies) do not pile up
/// run after run.
fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::temp_dir();
        if let Ok(entries) = fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(RUN_DIR_PREFIX))
                    .and_then(|pid| pid.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    })
}

const RUN_DIR_PREFIX: &str = "ringgate-tests-";

/// Writes `contents` to a fresh temp file and returns its path.
pub fn write_temp(prefix: &str, ext: &str, contents: &[u8]) -> PathBuf {
    let p = temp_path(prefix, ext);
    fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// A loopback port nothing is listening on right now.
///
/// Binds 127.0.0.1 and drops the socket. Candidates come from below the
/// kernel's ephemeral range first, so the port is not handed out again as
/// the source port of some test connection before the proxy binds it;
/// falls back to port 0 if none of those is free.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, _) = ephemeral_range();
    // Spread test processes apart by PID; a per-process counter keeps
    // concurrent tests in one process from ever picking the same port.
    let base = 20_000u32;
    let span = low.saturating_sub(base).max(1);
    let start = (std::process::id().wrapping_mul(7919)) % span;
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = base + (start + n * 13) % span;
        if port >= low || port > u16::MAX as u32 {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            drop(l);
            return port as u16;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

fn ephemeral_range() -> (u32, u32) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .filter_map(|s| s.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) if a > 20_100 => (a, b),
        _ => (32_768, 60_999),
    }
}

/// Builds the config most tests use: one listener on a free port, one route
/// to one upstream.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub port: u16,
    pub workers: u32,
    pub server_extra: Vec<String>,
    pub limits: Vec<String>,
    pub backends: Vec<SocketAddr>,
    /// `weights[i]` is backend i's `weight` (none written when absent).
    pub weights: Vec<Option<u32>>,
    pub route_prefix: String,
    /// Extra `key = value` lines of the route.
    pub route_extra: Vec<String>,
    pub timeouts: Option<String>,
    pub pool: Option<String>,
    /// Extra `key = value` lines of the upstream (`balance`, `health_check`...).
    pub upstream_extra: Vec<String>,
    /// Extra `key = value` lines of the listener (`tls`).
    pub listener_extra: Vec<String>,
    /// `key = value` lines of `[http2]`.
    pub http2: Vec<String>,
}

impl ProxyConfig {
    pub fn new(backend: SocketAddr) -> Self {
        ProxyConfig {
            port: free_port(),
            workers: 1,
            server_extra: Vec::new(),
            limits: Vec::new(),
            backends: vec![backend],
            weights: vec![None],
            route_prefix: "/".into(),
            route_extra: Vec::new(),
            timeouts: None,
            pool: None,
            upstream_extra: Vec::new(),
            listener_extra: Vec::new(),
            http2: Vec::new(),
        }
    }

    /// Adds `key = value` (value in TOML syntax) to `[http2]`.
    pub fn http2(mut self, key: &str, value: &str) -> Self {
        self.http2.push(format!("{key} = {value}"));
        self
    }

    /// Adds `key = value` (value in TOML syntax) to the listener, e.g.
    /// `listener_extra("tls", "{ certificates = [...] }")`.
    pub fn listener_extra(mut self, key: &str, value: &str) -> Self {
        self.listener_extra.push(format!("{key} = {value}"));
        self
    }

    /// A config whose upstream has these backends, each with the default
    /// weight.
    pub fn with_backends(backends: &[SocketAddr]) -> Self {
        assert!(!backends.is_empty(), "an upstream needs a backend");
        let mut c = ProxyConfig::new(backends[0]);
        c.backends = backends.to_vec();
        c.weights = vec![None; backends.len()];
        c
    }

    /// A config whose upstream has these `(backend, weight)` pairs.
    pub fn with_weighted_backends(backends: &[(SocketAddr, u32)]) -> Self {
        let addrs: Vec<SocketAddr> = backends.iter().map(|(a, _)| *a).collect();
        let mut c = ProxyConfig::with_backends(&addrs);
        c.weights = backends.iter().map(|(_, w)| Some(*w)).collect();
        c
    }

    /// Adds `key = value` (value in TOML syntax) to the upstream, e.g.
    /// `upstream_extra("balance", "\"least_conn\"")`.
    pub fn upstream_extra(mut self, key: &str, value: &str) -> Self {
        self.upstream_extra.push(format!("{key} = {value}"));
        self
    }

    /// Adds `key = value` (value in TOML syntax) to the route, e.g.
    /// `route_extra("rate_limit", "{ key = \"route\", rate = \"10/s\" }")`.
    pub fn route_extra(mut self, key: &str, value: &str) -> Self {
        self.route_extra.push(format!("{key} = {value}"));
        self
    }

    /// The upstream's inline `pool` table body, e.g. `max_idle_per_backend = 0`.
    pub fn pool(mut self, inline: &str) -> Self {
        self.pool = Some(inline.into());
        self
    }

    /// Adds `key = value` (value in TOML syntax) to `[limits]`.
    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.push(format!("{key} = {value}"));
        self
    }

    /// Adds `key = value` (value in TOML syntax) to `[server]`.
    pub fn server(mut self, key: &str, value: &str) -> Self {
        self.server_extra.push(format!("{key} = {value}"));
        self
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    pub fn route_prefix(mut self, p: &str) -> Self {
        self.route_prefix = p.into();
        self
    }

    /// The upstream's inline `timeouts` table body, e.g. `response = "300ms"`.
    pub fn timeouts(mut self, inline: &str) -> Self {
        self.timeouts = Some(inline.into());
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::from("[server]\n");
        s += &format!("workers = {}\n", self.workers);
        // The suite runs on every ring set-up the proxy offers:
        // RINGGATE_TEST_RING_SETUP=defer_taskrun|coop_taskrun|plain.
        if let Some(setup) = std::env::var("RINGGATE_TEST_RING_SETUP")
            .ok()
            .filter(|s| !s.is_empty())
        {
            s += &format!("io_uring_setup = \"{setup}\"\n");
        }
        for l in &self.server_extra {
            s += l;
            s += "\n";
        }
        if !self.http2.is_empty() {
            s += "\n[http2]\n";
            for l in &self.http2 {
                s += l;
                s += "\n";
            }
        }
        if !self.limits.is_empty() {
            s += "\n[limits]\n";
            for l in &self.limits {
                s += l;
                s += "\n";
            }
        }
        s += &format!(
            "\n[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{}\"\n",
            self.port
        );
        for l in &self.listener_extra {
            s += l;
            s += "\n";
        }
        s += &format!(
            "\n[[routes]]\nlistener = \"web\"\nmatch = {{ path_prefix = \"{}\" }}\nupstream = \"app\"\n",
            self.route_prefix
        );
        for l in &self.route_extra {
            s += l;
            s += "\n";
        }
        let backends: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, a)| match self.weights.get(i).copied().flatten() {
                Some(w) => format!("{{ address = \"{a}\", weight = {w} }}"),
                None => format!("{{ address = \"{a}\" }}"),
            })
            .collect();
        s += &format!(
            "\n[[upstreams]]\nname = \"app\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        if let Some(t) = &self.timeouts {
            s += &format!("timeouts = {{ {t} }}\n");
        }
        if let Some(p) = &self.pool {
            s += &format!("pool = {{ {p} }}\n");
        }
        for l in &self.upstream_extra {
            s += l;
            s += "\n";
        }
        s
    }

    pub fn start(&self) -> Proxy {
        Proxy::start(&self.to_toml())
    }
}

/// A running `ringgate -c FILE`; killed on drop. When a test panics, its
/// stderr is printed so the failure shows what the proxy said.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
}

/// The port of the first `address = "..."` in the first `[[listeners]]`.
fn listener_port(toml: &str) -> Option<u16> {
    let mut in_listener = false;
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_listener {
                return None;
            }
            in_listener = t == "[[listeners]]";
            continue;
        }
        if in_listener {
            if let Some(rest) = t.strip_prefix("address") {
                let v = rest
                    .trim_start()
                    .strip_prefix('=')?
                    .trim()
                    .trim_matches('"');
                return v.parse::<SocketAddr>().ok().map(|a| a.port());
            }
        }
    }
    None
}

impl Proxy {
    /// Starts `ringgate -c FILE` with `config_toml` and waits (up to
    /// `START_TIMEOUT`) for the first listener to accept.
    pub fn start(config_toml: &str) -> Proxy {
        Proxy::start_with_args(config_toml, &["-c"])
    }

    /// Like `start`, with the flag naming the config file given explicitly
    /// (`-c` or `--config`).
    pub fn start_with_args(config_toml: &str, flag: &[&str]) -> Proxy {
        Proxy::spawn(config_toml, flag, &[])
    }

    /// Like `start`, with extra environment variables for the proxy.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::spawn(config_toml, &["-c"], env)
    }

    /// Like `start`, with the binary run by `wrapper` (a command that execs
    /// its arguments, e.g. `["prlimit", "--nofile=64:64", "--"]`), so the
    /// process keeps the pid the harness signals.
    pub fn start_under(config_toml: &str, wrapper: &[&str]) -> Proxy {
        Proxy::spawn_under(config_toml, &["-c"], &[], wrapper)
    }

    fn spawn(config_toml: &str, flag: &[&str], env: &[(&str, &str)]) -> Proxy {
        Proxy::spawn_under(config_toml, flag, env, &[])
    }

    fn spawn_under(
        config_toml: &str,
        flag: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Proxy {
        let port =
            listener_port(config_toml).expect("config has a [[listeners]] table with an address");
        let config_path = write_temp("ringgate-test", "toml", config_toml.as_bytes());
        let stderr_path = temp_path("ringgate-test-stderr", "log");
        let stderr = fs::File::create(&stderr_path).expect("create stderr file");
        let mut command = match wrapper.split_first() {
            None => Command::new(ringgate_bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(ringgate_bin());
                c
            }
        };
        let child = command
            .args(flag)
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", ringgate_bin().display()));
        let mut proxy = Proxy {
            child,
            port,
            config_path,
            stderr_path,
        };
        proxy.wait_listening();
        proxy
    }

    fn wait_listening(&mut self) {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ringgate exited ({status}) before listening on {addr}\nconfig:\n{}\nstderr:\n{}",
                    fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.stderr()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "ringgate did not accept on {addr} within {START_TIMEOUT:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the proxy wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (a `kill` option such as `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}: {status}", self.pid());
    }

    /// The exit status, if the process ends within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- ringgate stderr ({}) ---\n{}\n--- end ---",
                self.stderr_path.display(),
                self.stderr()
            );
        }
        let _ = fs::remove_file(&self.config_path);
        let _ = fs::remove_file(&self.stderr_path);
    }
}

/// Runs `ringgate ARGS` to completion (with a time limit) and returns
/// (exit success, exit code, stdout, stderr).
pub fn run_ringgate(args: &[&std::ffi::OsStr]) -> CommandOutput {
    run_with_timeout(
        Command::new(ringgate_bin()).args(args),
        Duration::from_secs(10),
    )
}

pub struct CommandOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command, killing it if it outlives `limit`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> CommandOutput {
    let out_path = temp_path("ringgate-test-out", "log");
    let err_path = temp_path("ringgate-test-err", "log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?}; stderr:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Lossy: a tool may print bytes that are not UTF-8 (s_client prints what
    // the server sent, such as an HTTP/2 SETTINGS frame), and the rest of
    // its output must not be lost with them.
    let read =
        |path: &PathBuf| String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    let out = CommandOutput {
        success: status.success(),
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    out
}

/// `curl` on PATH; panics with a clear message when it is missing.
pub fn curl() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let c = dir.join("curl");
        if c.is_file() {
            return c;
        }
    }
    panic!("curl not found on PATH: these tests drive the proxy with the real curl (CI installs it; apt-get install curl)");
}

/// What a ringload `--json` report says of a run: requests answered, the
/// errors of each class, and every status that is not 2xx.
#[derive(Debug)]
pub struct LoadOutcome {
    pub requests: u64,
    pub errors: u64,
    pub non_2xx: Vec<String>,
}

impl LoadOutcome {
    /// Reads the report without a JSON library (the harness stays
    /// dependency-light): serde_json sorts keys, so the top-level
    /// `requests` comes before the timeline's.
    pub fn from_report(report: &str) -> LoadOutcome {
        let number_after = |key: &str| -> u64 {
            let key = format!("\"{key}\"");
            let at = report
                .find(&key)
                .unwrap_or_else(|| panic!("{key} in ringload's report: {report}"));
            let rest = report[at + key.len()..].trim_start_matches([':', ' ', '\n']);
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{key} is not a number in: {report}"))
        };
        let statuses = report.find("\"status\"").map_or("", |at| {
            let s = &report[at..];
            &s[..s.find('}').unwrap_or(s.len())]
        });
        let non_2xx = statuses
            .split('"')
            .filter(|t| {
                t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) && !t.starts_with('2')
            })
            .map(str::to_string)
            .collect();
        LoadOutcome {
            requests: number_after("requests"),
            errors: ["connect", "timeout", "reset", "parse"]
                .iter()
                .map(|k| number_after(k))
                .sum(),
            non_2xx,
        }
    }
}

/// `GET /metrics` on the admin port `admin`: the whole response (an error's
/// text when the port does not answer), read within 2 s.
pub fn metrics(admin: u16) -> String {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", admin)) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The value of the Prometheus series `series` (name and labels as written)
/// in `page`; 0 when absent.
pub fn sample(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// curl with `args`, its last stdout line the status and HTTP version it
/// got (`-w`); 20 s at most.
pub fn curl_status(args: &[&str]) -> CommandOutput {
    run_with_timeout(
        Command::new(curl())
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(args),
        Duration::from_secs(25),
    )
}

/// The last line of a [`curl_status`] run: `"200 2"`.
pub fn status_line(out: &CommandOutput) -> &str {
    out.stdout.lines().last().unwrap_or("")
}

/// What a [`curl_status`] run printed before its status line.
pub fn body_before_status(out: &CommandOutput) -> &str {
    out.stdout
        .rsplit_once('\n')
        .map(|(body, _)| body)
        .unwrap_or("")
}
