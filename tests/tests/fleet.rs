//! Fleet-wide rate limits: several ringgate processes (nodes) sharing one
//! real `redis-server`, started here on a free loopback port, under load
//! from ringload.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ringgate_tests::pki::TestCa;
use ringgate_tests::proxy::{
    curl_status, metrics, run_ringgate, sample, status_line, temp_path, write_temp, LoadOutcome,
};
use ringgate_tests::{eventually, free_port, ringload_bin, Proxy};

/// A redis-server of the test's own, without persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    password: Option<String>,
}

impl Redis {
    fn start(port: u16, password: Option<&str>) -> Redis {
        Redis::start_with(port, password, &[])
    }

    /// `extra`: more redis-server arguments (a TLS port beside the plain
    /// one the test's own commands use).
    fn start_with(port: u16, password: Option<&str>, extra: &[String]) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra);
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; .ci/run installs it)");
        let redis = Redis {
            child,
            port,
            password: password.map(str::to_owned),
        };
        eventually(Duration::from_secs(10), || match redis.command(&["PING"]) {
            Ok(r) if r.starts_with("+PONG") => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .expect("redis-server answers PING");
        redis
    }

    /// Sends one command (after AUTH when the server has a password) and
    /// returns the raw reply.
    fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = Vec::new();
        if let Some(p) = &self.password {
            out.extend(resp(&["AUTH", p]));
        }
        out.extend(resp(args));
        out.extend(resp(&["QUIT"]));
        s.write_all(&out)?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        // Skip AUTH's +OK.
        Ok(match &self.password {
            Some(_) => reply
                .split_once("\r\n")
                .map_or(reply.clone(), |(_, r)| r.to_owned()),
            None => reply,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

/// A node: one worker, a route the proxy answers itself (no backend to
/// measure), limited to `rate` fleet-wide.
fn node(redis: &str, fleet: &str, rate_limit: &str) -> (Proxy, u16) {
    node_of(1, redis, fleet, rate_limit)
}

fn node_of(workers: u32, redis: &str, fleet: &str, rate_limit: &str) -> (Proxy, u16) {
    let port = free_port();
    let admin = free_port();
    let config = format!(
        r#"[server]
workers = {workers}
pin = false

[fleet]
redis = "{redis}"
{fleet}

[admin]
address = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
address = "127.0.0.1:{port}"

[[routes]]
listener = "web"
respond = {{ status = 200, body = "ok" }}
rate_limit = {{ {rate_limit} }}

[[upstreams]]
name = "unused"
backends = [{{ address = "127.0.0.1:9" }}]
"#
    );
    (Proxy::start(&config), admin)
}

/// Waits up to 2 s for `want` of the nodes to say they reach Redis.
fn nodes_up_becomes(admins: &[u16], want: u64) -> Result<(), String> {
    eventually(Duration::from_secs(2), || {
        let up = admins
            .iter()
            .map(|&a| sample(&metrics(a), "ringgate_fleet_redis_up"))
            .sum::<u64>();
        if up == want {
            Ok(())
        } else {
            Err(format!("{up} node(s) up"))
        }
    })
}

/// No client saw an error or a status other than 2xx and the limit's 429.
fn assert_only_limited(outcomes: &[LoadOutcome]) {
    for o in outcomes {
        assert_eq!(o.errors, 0, "{o:?}");
        assert!(o.non_2xx.iter().all(|s| s == "429"), "{o:?}");
    }
}

fn admitted(admins: &[u16]) -> u64 {
    admins
        .iter()
        .map(|&a| sample(&metrics(a), "ringgate_responses_total{class=\"2xx\"}"))
        .sum()
}

/// Starts ringload at `rate` requests/s on `port` for `secs`, with a JSON
/// report.
fn load(port: u16, rate: u32, secs: u32) -> (Child, PathBuf) {
    let report = temp_path("fleet-load", "json");
    let child = Command::new(ringload_bin())
        .args([
            "-r",
            &rate.to_string(),
            "-c",
            "4",
            "--cores",
            "1",
            "--no-pin",
        ])
        .args(["-d", &format!("{secs}s"), "--json"])
        .arg(&report)
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ringload");
    (child, report)
}

fn finish(loads: Vec<(Child, PathBuf)>) -> Vec<LoadOutcome> {
    loads
        .into_iter()
        .map(|(mut child, report)| {
            let status = child.wait().expect("ringload ran");
            assert!(status.success(), "ringload failed: {status}");
            LoadOutcome::from_report(&std::fs::read_to_string(&report).expect("report"))
        })
        .collect()
}

/// Admitted requests per second over the nodes between `from` and `to`
/// seconds after `start`.
fn rate_between(admins: &[u16], start: Instant, from: f64, to: f64) -> f64 {
    let wait_until = |t: f64| {
        let at = start + Duration::from_secs_f64(t);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    };
    wait_until(from);
    let a = admitted(admins);
    let t0 = Instant::now();
    wait_until(to);
    let b = admitted(admins);
    (b - a) as f64 / t0.elapsed().as_secs_f64()
}

#[test]
fn three_nodes_admit_one_fleet_limit_whatever_the_split() {
    let redis = Redis::start(free_port(), None);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let limit = r#"key = "route", rate = "300/s", burst = 30, scope = "fleet""#;
    let nodes: Vec<(Proxy, u16)> = (0..3)
        .map(|_| node(&url, "sync_interval = \"20ms\"\nnodes = 3", limit))
        .collect();
    let admins: Vec<u16> = nodes.iter().map(|n| n.1).collect();
    let start = Instant::now();
    // 3× the limit, split 80/15/5: per node, limits would admit 300 + 135 + 45.
    let loads = [720, 135, 45]
        .iter()
        .zip(&nodes)
        .map(|(&rate, (proxy, _))| load(proxy.port, rate, 5))
        .collect();
    let rate = rate_between(&admins, start, 1.5, 4.5);
    assert_only_limited(&finish(loads));
    assert!(
        (270.0..=330.0).contains(&rate),
        "fleet admitted {rate:.0}/s; the fleet limit is 300/s"
    );
    let key = redis.command(&["GET", "ringgate:route0:"]).expect("GET");
    let total: u64 = key
        .lines()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the fleet counter in Redis: {key:?}"));
    assert!(total >= 900, "Redis counted {total}");
}

/// Each node's workers gossip their consumption to the worker that syncs,
/// and it passes the other nodes' back to them.
#[test]
fn nodes_of_several_workers_count_every_worker() {
    let redis = Redis::start(free_port(), None);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let limit = r#"key = "client_ip", rate = "300/s", burst = 30, scope = "fleet""#;
    let nodes: Vec<(Proxy, u16)> = (0..2)
        .map(|_| node_of(2, &url, "sync_interval = \"20ms\"\nnodes = 2", limit))
        .collect();
    let admins: Vec<u16> = nodes.iter().map(|n| n.1).collect();
    let start = Instant::now();
    // Per node, limits would admit 300 + 150.
    let loads = [450, 150]
        .iter()
        .zip(&nodes)
        .map(|(&rate, (proxy, _))| load(proxy.port, rate, 5))
        .collect();
    let rate = rate_between(&admins, start, 1.5, 4.5);
    let outcomes = finish(loads);
    for o in &outcomes {
        assert_eq!(o.errors, 0, "{o:?}");
    }
    assert!(
        (270.0..=330.0).contains(&rate),
        "fleet admitted {rate:.0}/s; the fleet limit is 300/s"
    );
}

#[test]
fn redis_lost_falls_back_to_a_local_share_and_the_limit_returns_with_it() {
    let port = free_port();
    let redis = Redis::start(port, None);
    let url = format!("redis://127.0.0.1:{port}");
    let limit = r#"key = "route", rate = "300/s", burst = 30, scope = "fleet""#;
    let nodes: Vec<(Proxy, u16)> = (0..3)
        .map(|_| {
            node(
                &url,
                "sync_interval = \"20ms\"\nnodes = 3\ntimeout = \"100ms\"",
                limit,
            )
        })
        .collect();
    let admins: Vec<u16> = nodes.iter().map(|n| n.1).collect();
    let start = Instant::now();
    // Fleet-wide 300/s; each node's share is 100/s: 100 + 60 + 30 = 190/s.
    let loads = [600, 60, 30]
        .iter()
        .zip(&nodes)
        .map(|(&rate, (proxy, _))| load(proxy.port, rate, 9))
        .collect();
    let before = rate_between(&admins, start, 1.0, 3.0);
    drop(redis);
    let down = nodes_up_becomes(&admins, 0);
    assert!(down.is_ok(), "every node says Redis is down: {down:?}");
    let gap = rate_between(&admins, start, 3.5, 5.5);
    let _redis = Redis::start(port, None);
    let back_at = Instant::now();
    nodes_up_becomes(&admins, 3).expect("every node reaches Redis again");
    let found_again = back_at.elapsed();
    let after = rate_between(&admins, start, 6.5, 8.5);
    assert_only_limited(&finish(loads));
    assert!((270.0..=330.0).contains(&before), "before: {before:.0}/s");
    assert!(
        (171.0..=209.0).contains(&gap),
        "without Redis: {gap:.0}/s, the shares sum to 190/s"
    );
    assert!((270.0..=330.0).contains(&after), "after: {after:.0}/s");
    assert!(found_again < Duration::from_secs(1), "{found_again:?}");
    for (proxy, _) in &nodes {
        let log = proxy.stderr();
        assert_eq!(log.matches("unreachable").count(), 1, "said once:\n{log}");
        assert!(log.contains("reachable again"), "{log}");
    }
}

#[test]
fn closed_and_open_fallbacks_refuse_or_admit_everything_while_redis_is_away() {
    // Nothing listens on this port.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limit = |fallback: &str| {
        format!(
            r#"key = "route", rate = "1/s", burst = 1, scope = "fleet", fleet_fallback = "{fallback}""#
        )
    };
    let (closed, closed_admin) = node(&url, "sync_interval = \"10ms\"", &limit("closed"));
    let (open, open_admin) = node(&url, "sync_interval = \"10ms\"", &limit("open"));
    for admin in [closed_admin, open_admin] {
        eventually(Duration::from_secs(2), || {
            let page = metrics(admin);
            let away = page.contains("ringgate_fleet_redis_up 0")
                && sample(&page, "ringgate_fleet_sync_failures_total") > 0;
            if away {
                Ok(())
            } else {
                Err(page)
            }
        })
        .expect("the syncer finds Redis away");
    }
    let statuses = |port: u16| -> Vec<String> {
        (0..5)
            .map(|_| {
                let out = curl_status(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/")]);
                status_line(&out).split(' ').next().unwrap_or("").to_owned()
            })
            .collect()
    };
    assert_eq!(statuses(closed.port), vec!["429"; 5]);
    assert_eq!(
        statuses(open.port),
        vec!["200"; 5],
        "1/s would have refused 4"
    );
    assert!(
        closed.stderr().contains("unreachable (connect:"),
        "{}",
        closed.stderr()
    );
}

#[test]
fn the_syncer_authenticates_and_selects_its_database() {
    let redis = Redis::start(free_port(), Some("s3cret"));
    let limit = r#"key = "route", rate = "100/s", scope = "fleet", name = "api""#;
    let good = format!("redis://:s3cret@127.0.0.1:{}/3", redis.port);
    let (proxy, admin) = node(&good, "key_prefix = \"edge:\"", limit);
    let bad = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let (refused, refused_admin) = node(&bad, "", limit);
    for p in [&proxy, &refused] {
        for _ in 0..3 {
            let _ = curl_status(&["-o", "/dev/null", &format!("http://127.0.0.1:{}/", p.port)]);
        }
    }
    let counted = eventually(Duration::from_secs(3), || {
        match redis_get_in(&redis, 3, "edge:api:") {
            Some(n) if n >= 3 => Ok(n),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(
        counted.is_ok(),
        "the counter edge:api: in database 3: {counted:?}"
    );
    assert_eq!(sample(&metrics(admin), "ringgate_fleet_redis_up"), 1);
    let refused_seen = eventually(Duration::from_secs(2), || {
        let page = metrics(refused_admin);
        if page.contains("ringgate_fleet_redis_up 0") && refused.stderr().contains("WRONGPASS") {
            Ok(())
        } else {
            Err(format!("{page}\n{}", refused.stderr()))
        }
    });
    assert!(
        refused_seen.is_ok(),
        "a wrong password is a failed sync: {refused_seen:?}"
    );
}

#[test]
fn the_syncer_speaks_tls_to_rediss_and_refuses_a_certificate_for_another_name() {
    let mut ca = TestCa::new("fleet test CA");
    let server = ca.server("redis", &["redis.test"]);
    let client = ca.client("node", "node-1");
    let tls_port = free_port();
    let path = |p: &PathBuf| p.display().to_string();
    // Clients must present a certificate from the CA: mTLS to Redis.
    let redis = Redis::start_with(
        free_port(),
        None,
        &[
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&server.cert),
            "--tls-key-file".into(),
            path(&server.key),
            "--tls-ca-cert-file".into(),
            path(&ca.cert),
            "--tls-auth-clients".into(),
            "yes".into(),
        ],
    );
    let limit = r#"key = "route", rate = "100/s", scope = "fleet", name = "tls""#;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let tls = |name: &str| {
        format!(
            "tls = {{ server_name = \"{name}\", ca = \"{}\", client_certificate = {} }}",
            path(&ca.cert),
            client.toml()
        )
    };
    let (proxy, admin) = node(&url, &tls("redis.test"), limit);
    let (wrong, wrong_admin) = node(&url, &tls("other.test"), limit);
    for p in [&proxy, &wrong] {
        for _ in 0..3 {
            let _ = curl_status(&["-o", "/dev/null", &format!("http://127.0.0.1:{}/", p.port)]);
        }
    }
    // Only the node that verified Redis's certificate counted.
    let counted = eventually(Duration::from_secs(3), || {
        match redis_get_in(&redis, 0, "ringgate:tls:") {
            Some(3) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(counted.is_ok(), "the counter over TLS: {counted:?}");
    // /metrics shows the workers' snapshot of every 100 ms: it may lag
    // the counter in Redis.
    let synced = eventually(Duration::from_secs(2), || {
        let page = metrics(admin);
        let syncs = sample(&page, "ringgate_fleet_syncs_total");
        if syncs > 0 && sample(&page, "ringgate_fleet_redis_up") == 1 {
            Ok(())
        } else {
            Err(page)
        }
    });
    assert!(synced.is_ok(), "{synced:?}");
    let refused = eventually(Duration::from_secs(2), || {
        let page = metrics(wrong_admin);
        if page.contains("ringgate_fleet_redis_up 0") && wrong.stderr().contains("TLS handshake") {
            Ok(())
        } else {
            Err(format!("{page}\n{}", wrong.stderr()))
        }
    });
    assert!(
        refused.is_ok(),
        "a certificate for another name is a failed sync: {refused:?}"
    );
    // Without the client certificate, Redis refuses the handshake.
    let anonymous = format!(
        "tls = {{ server_name = \"redis.test\", ca = \"{}\" }}",
        path(&ca.cert)
    );
    let (anon, anon_admin) = node(&url, &anonymous, limit);
    // TLS 1.3 clients finish before the server checks them: the refusal
    // arrives as the answer to the first sync that carries consumption.
    for _ in 0..3 {
        let _ = curl_status(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{}/", anon.port),
        ]);
    }
    let down = eventually(Duration::from_secs(2), || {
        match sample(&metrics(anon_admin), "ringgate_fleet_sync_failures_total") {
            0 => Err("no failed sync yet".to_owned()),
            _ => Ok(()),
        }
    });
    assert!(
        down.is_ok(),
        "Redis requires a client certificate: {down:?}"
    );
    assert_eq!(sample(&metrics(anon_admin), "ringgate_fleet_redis_up"), 0);
}

#[test]
fn check_reads_the_fleets_tls_files() {
    let toml = format!(
        "[fleet]\nredis = \"rediss://127.0.0.1:6380\"\ntls = {{ ca = \"/nonexistent/redis-ca.pem\" }}\n\n[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{}\"\n\n[[routes]]\nlistener = \"web\"\nrespond = {{ status = 200 }}\nrate_limit = {{ key = \"route\", rate = \"10/s\", scope = \"fleet\" }}\n\n[[upstreams]]\nname = \"unused\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n",
        free_port()
    );
    let path = write_temp("ringgate-fleet-check", "toml", toml.as_bytes());
    let out = run_ringgate(&[std::ffi::OsStr::new("check"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.success, "check passed a missing CA file");
    assert!(
        out.stderr.contains("fleet.tls.ca") && out.stderr.contains("cannot read"),
        "{}",
        out.stderr
    );
}

/// GET `key` in database `db`, as a number.
fn redis_get_in(redis: &Redis, db: u32, key: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", redis.port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut out = Vec::new();
    if let Some(p) = &redis.password {
        out.extend(resp(&["AUTH", p]));
    }
    out.extend(resp(&["SELECT", &db.to_string()]));
    out.extend(resp(&["GET", key]));
    out.extend(resp(&["QUIT"]));
    s.write_all(&out).ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    // +OK (AUTH), +OK (SELECT), $n, value, +OK (QUIT).
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let at = lines.iter().position(|l| l.starts_with('$'))?;
    lines.get(at + 1)?.parse().ok()
}
