//! Load balancing, health, failover, retries and rate limits across workers
//! (issue 4): the real binary against loopback backends that count what
//! reaches them, can be killed and restarted on the same port, or sabotage a
//! fixed share of their connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringgate_tests::procfs::vm_hwm_kib;
use ringgate_tests::{
    eventually, Backend, Behaviour, Client, ConnFault, Proxy, ProxyConfig, Response,
};

const HEALTH_PATH: &str = "/health";
const HEALTH_CHECK: &str =
    r#"{ path = "/health", interval = "200ms", timeout = "200ms", rise = 2, fall = 2 }"#;
const RETRIES: &str = r#"{ attempts = 2, on = ["connect_failure", "reset"] }"#;
/// Passive ejection off, where a test is about something else (retries,
/// method safety) and an ejection would change where requests go.
const NO_EJECTION: &str = "{ max_ejection_percent = 0 }";

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// A keep-alive client connection to the proxy that reconnects when the
/// proxy closes it (after an error status) or an exchange fails. Never
/// panics: failures are the tests' data.
struct Session {
    addr: SocketAddr,
    client: Option<Client>,
}

impl Session {
    fn new(port: u16) -> Session {
        Session {
            addr: ([127, 0, 0, 1], port).into(),
            client: None,
        }
    }

    fn request(&mut self, raw: &[u8]) -> Result<Response, String> {
        if self.client.is_none() {
            let c = Client::try_connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            self.client = Some(c);
        }
        let c = self.client.as_mut().expect("connected");
        let res = match c.try_send(raw) {
            Ok(()) => c.read_final().map_err(|e| format!("read: {e}")),
            Err(e) => Err(format!("write: {e}")),
        };
        match &res {
            Ok(r) if !r.says_close() => {}
            _ => self.client = None,
        }
        res
    }

    fn get(&mut self, target: &str, extra_headers: &str) -> Result<Response, String> {
        self.request(
            format!("GET {target} HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n").as_bytes(),
        )
    }
}

/// Requests a backend served, health probes left out.
fn served(b: &Backend) -> Vec<ringgate_tests::Recorded> {
    b.records()
        .into_iter()
        .filter(|r| r.target != HEALTH_PATH)
        .collect()
}

fn probes(b: &Backend) -> usize {
    b.records()
        .iter()
        .filter(|r| r.target == HEALTH_PATH)
        .count()
}

/// `threads` client threads, each with its own keep-alive session, send
/// `per_thread` GETs each as fast as they are answered. Returns every result.
fn hammer(
    port: u16,
    threads: usize,
    per_thread: usize,
    headers: impl Fn(usize, usize) -> String + Send + Sync + 'static,
) -> Vec<Result<Response, String>> {
    let headers = Arc::new(headers);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let headers = headers.clone();
            thread::spawn(move || {
                let mut s = Session::new(port);
                (0..per_thread)
                    .map(|i| s.get(&format!("/r/{t}/{i}"), &headers(t, i)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

fn failures(results: &[Result<Response, String>]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match r {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!("{} {}", r.status, r.body_str().trim_end())),
            Err(e) => Some(e.clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. weighted round robin

fn weighted_split(workers: u32) {
    let a = Backend::start("a", Behaviour::Ok);
    let b = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::with_weighted_backends(&[(a.addr(), 3), (b.addr(), 1)])
        .workers(workers)
        .upstream_extra("balance", &quoted("weighted_round_robin"))
        .start();
    let results = hammer(proxy.port, 8, 250, |_, _| String::new());
    let failed = failures(&results);
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let (na, nb) = (served(&a).len(), served(&b).len());
    assert_eq!(na + nb, 2000, "backends saw {na} + {nb} requests, not 2000");
    let said_a = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_ok_and(|r| r.header("x-backend").as_deref() == Some("a"))
        })
        .count();
    assert_eq!(said_a, na, "responses from a disagree with a's records");
    let share_a = na as f64 * 100.0 / 2000.0;
    let share_b = nb as f64 * 100.0 / 2000.0;
    eprintln!("weighted_round_robin 3:1, {workers} worker(s): a {share_a:.1}% b {share_b:.1}%");
    assert!(
        (share_a - 75.0).abs() <= 3.0 && (share_b - 25.0).abs() <= 3.0,
        "split {share_a:.1}% / {share_b:.1}% is not within 3 points of 75/25 ({workers} workers)"
    );
}

#[test]
fn weighted_round_robin_3_to_1_splits_2000_requests_within_3_points() {
    weighted_split(1);
}

#[test]
fn weighted_round_robin_3_to_1_splits_2000_requests_within_3_points_on_2_workers() {
    weighted_split(2);
}

// ---------------------------------------------------------------------------
// 2. health checks: out of rotation and back

/// When `needle` first shows up in the proxy's stderr, polled every 2 ms
/// for at most `within`.
fn log_line_time(proxy: &Proxy, needle: &str, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    loop {
        if proxy.stderr().contains(needle) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

#[test]
fn killed_backend_leaves_rotation_within_1s_and_returns_within_1_5s() {
    let a = Backend::start("a", Behaviour::Ok);
    let mut b = Backend::start("b", Behaviour::Ok);
    let b_addr = b.addr();
    let proxy = ProxyConfig::with_backends(&[a.addr(), b_addr])
        .workers(2)
        .upstream_extra("health_check", HEALTH_CHECK)
        .upstream_extra("retries", RETRIES)
        .start();

    // Sequential requests a few ms apart, rotating over four keep-alive
    // connections so that both workers carry traffic.
    type Log = Vec<(Instant, Result<u16, String>)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (log, stop, port) = (log.clone(), stop.clone(), proxy.port);
        thread::spawn(move || {
            let mut sessions: Vec<Session> = (0..4).map(|_| Session::new(port)).collect();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let res = sessions[i % 4]
                    .get(&format!("/t/{i}"), "")
                    .map(|r| r.status);
                log.lock().unwrap().push((sent, res));
                i += 1;
                thread::sleep(Duration::from_millis(3));
            }
        })
    };

    eventually(Duration::from_secs(3), || {
        (served(&a).len() >= 20 && served(&b).len() >= 20)
            .then_some(())
            .ok_or_else(|| "traffic does not reach both backends".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // Kill B. T is when it is completely dead: listener closed, connections
    // cut; it records nothing read after its stop began.
    b.stop();
    let t_kill = Instant::now();
    let down_line = format!("backend {b_addr} is unhealthy");
    let t_down = log_line_time(&proxy, &down_line, Duration::from_secs(2));

    // From T+1s on, B's address is watched by a sentinel that fails every
    // health probe (so B stays down) and records any request routed there.
    sleep_until(t_kill + Duration::from_secs(1));
    let sentinel = Backend::builder("b-sentinel")
        .bind(b_addr)
        .route(HEALTH_PATH, Behaviour::Status(503))
        .default_behaviour(Behaviour::CloseWithoutResponse)
        .start();
    sleep_until(t_kill + Duration::from_millis(2500));
    let sentinel_requests = served(&sentinel);
    let sentinel_probes = probes(&sentinel);
    drop(sentinel);

    // Bring B back on the same port.
    let t_back = Instant::now();
    b.restart();
    let up_line = format!("backend {b_addr} is healthy");
    let t_up = log_line_time(&proxy, &up_line, Duration::from_secs(3));
    let first_back = eventually(Duration::from_secs(3), || {
        served(&b)
            .iter()
            .map(|r| r.at)
            .find(|&at| at > t_back)
            .ok_or_else(|| "B has received no request since it came back".to_string())
    });
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    traffic.join().expect("traffic thread");

    let log = log.lock().unwrap().clone();
    let last_b_before = served(&b)
        .iter()
        .map(|r| r.at)
        .filter(|&at| at < t_back)
        .max();
    let after_grace: Vec<_> = log
        .iter()
        .filter(|(sent, res)| *sent >= t_kill + Duration::from_secs(1) && *res != Ok(200))
        .map(|(sent, res)| format!("{:?} after the kill: {res:?}", sent.duration_since(t_kill)))
        .collect();
    let in_grace = log
        .iter()
        .filter(|(sent, res)| {
            *sent >= t_kill && *sent < t_kill + Duration::from_secs(1) && *res != Ok(200)
        })
        .count();
    let secs = |t: Option<Instant>, from: Instant| {
        t.map_or("never".to_string(), |t| {
            format!("{:.0} ms", t.duration_since(from).as_secs_f64() * 1000.0)
        })
    };
    eprintln!(
        "health check figures: {} requests in all; B marked unhealthy {} after the kill; \
         {in_grace} client errors in the first second; B marked healthy {} and got its first \
         request {} after coming back; sentinel saw {sentinel_probes} probes and {} requests",
        log.len(),
        secs(t_down, t_kill),
        secs(t_up, t_back),
        secs(first_back.as_ref().ok().copied(), t_back),
        sentinel_requests.len(),
    );

    assert!(
        last_b_before.is_some_and(|t| t < t_kill),
        "B's last request before the restart ({last_b_before:?}) is not before the kill"
    );
    assert!(
        t_down.is_some_and(|t| t < t_kill + Duration::from_secs(1)),
        "the proxy did not mark B unhealthy within 1 s of the kill"
    );
    assert!(
        sentinel_probes >= 2,
        "the sentinel on B's port saw {sentinel_probes} health probes: the watch proved nothing"
    );
    assert!(
        sentinel_requests.is_empty(),
        "requests still went to B's address more than 1 s after it was killed: {:?}",
        sentinel_requests
            .iter()
            .map(|r| (r.target.clone(), r.at.duration_since(t_kill)))
            .collect::<Vec<_>>()
    );
    assert!(
        after_grace.is_empty(),
        "clients saw errors more than 1 s after the kill: {after_grace:?}"
    );
    let first_back = first_back.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        first_back.duration_since(t_back) <= Duration::from_millis(1500),
        "B got requests again only {:?} after it came back",
        first_back.duration_since(t_back)
    );
}

// ---------------------------------------------------------------------------
// 3. all down

#[test]
fn all_backends_down_gives_503_with_a_clear_body() {
    let mut a = Backend::start("a", Behaviour::Ok);
    let mut b = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::with_backends(&[a.addr(), b.addr()])
        .workers(2)
        .upstream_extra("health_check", HEALTH_CHECK)
        .start();
    assert_eq!(Client::connect(proxy.port).get("/x").status, 200);
    a.stop();
    b.stop();
    let t = Instant::now();
    let r = eventually(Duration::from_secs(3), || {
        let mut s = Session::new(proxy.port);
        match s.get("/x", "") {
            Ok(r) if r.status == 503 => Ok(r),
            other => Err(format!("still {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("no 503 within 3 s of both backends dying: {e}"));
    eprintln!("first 503 {:?} after both backends died", t.elapsed());
    let body = r.body_str();
    assert!(
        body.contains("no healthy backend"),
        "503 body does not say why: {body:?}"
    );
    // Once every worker has heard (one gossip tick or so later), every
    // request gets the 503 at once, without trying the dead backends.
    eventually(Duration::from_secs(1), || {
        for i in 0..10 {
            let t = Instant::now();
            let r = Session::new(proxy.port).get(&format!("/y/{i}"), "")?;
            if r.status != 503 || !r.body_str().contains("no healthy backend") {
                return Err(format!("request {i}: {} {:?}", r.status, r.body_str()));
            }
            if t.elapsed() > Duration::from_millis(500) {
                return Err(format!("request {i}: 503 took {:?}", t.elapsed()));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("not every request gets a prompt 503: {e}"));
}

// ---------------------------------------------------------------------------
// 4. node-wide rate limit

struct Offered {
    admitted: usize,
    limited: usize,
    other: Vec<String>,
    elapsed: Duration,
    sample_429: Option<Response>,
}

/// `conns` connections together offer `rate` GETs per second for `dur`,
/// each on a fixed schedule (no catch-up bursts beyond one late slot).
fn offer(port: u16, conns: usize, rate: f64, dur: Duration) -> Offered {
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let per_conn = (dur.as_secs_f64() / period.as_secs_f64()).round() as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            thread::spawn(move || {
                let mut s = Session::new(port);
                // Connect before the clock starts.
                let _ = s.get("/warm-up-not-limited", "");
                let offset = period.mul_f64(c as f64 / conns as f64);
                let mut out = Vec::with_capacity(per_conn);
                let mut last = start;
                for i in 0..per_conn {
                    let slot = start + offset + period * i as u32;
                    sleep_until(slot);
                    last = Instant::now();
                    out.push(s.get(&format!("/limited/{c}/{i}"), ""));
                }
                (out, last)
            })
        })
        .collect();
    let mut o = Offered {
        admitted: 0,
        limited: 0,
        other: Vec::new(),
        elapsed: Duration::ZERO,
        sample_429: None,
    };
    for h in handles {
        let (results, last) = h.join().expect("client thread");
        o.elapsed = o.elapsed.max(last.duration_since(start));
        for r in results {
            match r {
                Ok(r) if r.status == 200 => o.admitted += 1,
                Ok(r) if r.status == 429 => {
                    o.limited += 1;
                    o.sample_429.get_or_insert(r);
                }
                Ok(r) => o.other.push(format!("{} {}", r.status, r.body_str())),
                Err(e) => o.other.push(e),
            }
        }
    }
    o
}

fn rate_limited_proxy(backend: &Backend, workers: u32) -> Proxy {
    ProxyConfig::new(backend.addr())
        .workers(workers)
        .server("gossip_interval", &quoted("10ms"))
        .route_prefix("/limited")
        .route_extra(
            "rate_limit",
            r#"{ key = "route", rate = "100/s", burst = 10 }"#,
        )
        .start()
}

fn check_node_wide_limit(conns: usize) {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = rate_limited_proxy(&backend, 2);
    let o = offer(proxy.port, conns, 300.0, Duration::from_secs(3));
    let expected = 100.0 * o.elapsed.as_secs_f64() + 10.0;
    let error = (o.admitted as f64 - expected) / expected * 100.0;
    eprintln!(
        "rate limit 100/s burst 10, 2 workers, {conns} connection(s), ~300/s offered for {:?}: \
         admitted {} refused {} (expected {expected:.0}, error {error:+.1}%)",
        o.elapsed, o.admitted, o.limited
    );
    assert!(o.other.is_empty(), "neither 200 nor 429: {:?}", o.other);
    assert!(
        error.abs() <= 10.0,
        "admitted {} over {:?}, expected {expected:.0} ± 10% (error {error:+.1}%)",
        o.admitted,
        o.elapsed
    );
    let r = o.sample_429.expect("no request was refused");
    for h in [
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
    ] {
        let v = r.header(h).unwrap_or_else(|| {
            panic!(
                "429 without {h}: {:?}",
                String::from_utf8_lossy(&r.raw_head)
            )
        });
        assert!(
            v.parse::<u64>().is_ok(),
            "{h}: {v:?} is not a whole number of seconds/requests"
        );
    }
    assert_eq!(r.header("ratelimit-limit").as_deref(), Some("10"));
    assert!(r.header("retry-after").is_some_and(|v| v != "0"), "{r:?}");
    let limited_served = served(&backend)
        .iter()
        .filter(|r| r.target.starts_with("/limited/"))
        .count();
    assert_eq!(
        limited_served, o.admitted,
        "the backend saw {limited_served} limited requests but {} were admitted",
        o.admitted
    );
}

#[test]
fn rate_limit_is_node_wide_across_workers() {
    check_node_wide_limit(8);
}

#[test]
fn rate_limit_is_node_wide_with_one_connection_on_one_worker() {
    check_node_wide_limit(1);
}

// ---------------------------------------------------------------------------
// 5. bounded key table

/// 200 keys to fill the table, then 20 000 more: enough that an unbounded
/// table would add about 6 MiB (measured with `rate_limit_max_keys` raised).
const FLOOD_END: usize = 20_200;

#[test]
fn rate_limit_key_table_is_bounded() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .workers(1)
        .server("rate_limit_max_keys", "100")
        .route_extra(
            "rate_limit",
            r#"{ key = "header:x-client", rate = "1/m", burst = 1 }"#,
        )
        .start();
    let mut s = Session::new(proxy.port);
    let mut get = |client: &str| {
        s.get("/k", &format!("x-client: {client}\r\n"))
            .unwrap_or_else(|e| panic!("request for {client}: {e}"))
            .status
    };
    // A 64-byte key is kept whole: the largest a slot stores.
    let key = |i: usize| format!("client-{i:0>57}");
    assert_eq!(get("first"), 200);
    assert_eq!(get("first"), 429, "the first key's only token is spent");
    for i in 0..200 {
        assert_eq!(get(&key(i)), 200, "new key {i} was refused");
    }
    let baseline = vm_hwm_kib(proxy.pid());
    let mut refused = Vec::new();
    for i in 200..FLOOD_END {
        if get(&key(i)) != 200 {
            refused.push(i);
        }
    }
    let grown = vm_hwm_kib(proxy.pid()).saturating_sub(baseline);
    eprintln!(
        "{} more distinct keys with max 100: VmHWM {baseline} KiB + {grown} KiB",
        FLOOD_END - 200
    );
    assert!(refused.is_empty(), "fresh keys refused: {refused:?}");
    assert_eq!(
        get(&key(FLOOD_END - 1)),
        429,
        "the latest key should still be tracked (and spent)"
    );
    assert_eq!(
        get("first"),
        200,
        "the first key was not evicted from a table bounded at 100 keys after {FLOOD_END} others"
    );
    assert!(
        grown < 2 * 1024,
        "peak memory grew by {grown} KiB over {} distinct keys",
        FLOOD_END - 200
    );
}

// ---------------------------------------------------------------------------
// 6. retries

fn flaky_run(retries: Option<&str>) -> (usize, usize, usize) {
    let a = Backend::builder("a")
        .fail_connections(3, 10, ConnFault::ResetOnData)
        .start();
    let b = Backend::start("b", Behaviour::Ok);
    let mut cfg = ProxyConfig::with_backends(&[a.addr(), b.addr()])
        .workers(2)
        .pool("max_idle_per_backend = 0")
        .upstream_extra("outlier_detection", NO_EJECTION);
    if let Some(r) = retries {
        cfg = cfg.upstream_extra("retries", r);
    }
    let proxy = cfg.start();
    let results = hammer(proxy.port, 4, 250, |_, _| String::new());
    let failed = failures(&results);
    (results.len(), failed.len(), a.faulted())
}

#[test]
fn retries_hide_a_backend_that_fails_30_percent_of_connections() {
    let (total, failed, faulted) = flaky_run(Some(
        r#"{ attempts = 2, on = ["connect_failure", "reset"], budget = "100%" }"#,
    ));
    let (c_total, c_failed, c_faulted) = flaky_run(None);
    eprintln!(
        "30% of a's connections reset: with retries {failed}/{total} failed ({faulted} resets); \
         without {c_failed}/{c_total} ({c_faulted} resets)"
    );
    assert!(
        c_failed * 100 > c_total * 5,
        "control without retries: only {c_failed}/{c_total} failed, the fault is not biting"
    );
    assert!(faulted >= 100, "a reset only {faulted} connections");
    assert!(
        failed <= 1,
        "{failed} of {total} requests failed with retries on (want fewer than 0.1%)"
    );
}

// ---------------------------------------------------------------------------
// 7. maglev

#[test]
fn maglev_hash_keeps_a_client_on_one_backend() {
    let backends: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| Backend::start(n, Behaviour::Ok))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let proxy = ProxyConfig::with_backends(&addrs)
        .workers(2)
        .upstream_extra("balance", &quoted("maglev_hash"))
        .upstream_extra("hash_key", &quoted("header:x-user"))
        .start();
    // A fresh connection per request, so users' requests land on both workers.
    for round in 0..5 {
        for user in 0..20 {
            let mut s = Session::new(proxy.port);
            let r = s
                .get(&format!("/m/{round}"), &format!("x-user: user-{user}\r\n"))
                .unwrap_or_else(|e| panic!("user {user}: {e}"));
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    let mut homes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in &backends {
        for r in served(b) {
            let user = r.header("x-user").expect("x-user reaches the backend");
            homes.entry(user).or_default().insert(b.name().to_string());
        }
    }
    assert_eq!(homes.len(), 20, "{homes:?}");
    let split: Vec<_> = homes.iter().filter(|(_, h)| h.len() != 1).collect();
    assert!(split.is_empty(), "users spread over backends: {split:?}");
    let used: BTreeSet<&String> = homes.values().flatten().collect();
    assert!(used.len() >= 2, "all 20 users hashed to {used:?}");
    let total: usize = backends.iter().map(|b| served(b).len()).sum();
    assert_eq!(total, 100);
}

#[test]
fn maglev_hash_without_the_key_is_weighted_random() {
    let a = Backend::start("a", Behaviour::Ok);
    let b = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::with_weighted_backends(&[(a.addr(), 3), (b.addr(), 1)])
        .upstream_extra("balance", &quoted("maglev_hash"))
        .upstream_extra("hash_key", &quoted("header:x-user"))
        .start();
    // No x-user header: docs/CONFIG.md says weighted random, not one backend.
    let results = hammer(proxy.port, 4, 100, |_, _| String::new());
    let failed = failures(&results);
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let (na, nb) = (served(&a).len(), served(&b).len());
    assert_eq!(na + nb, 400, "backends saw {na} + {nb} requests, not 400");
    // 3:1 over 400 draws: a expects 300, standard deviation ≈ 8.7.
    assert!(
        (260..=340).contains(&na),
        "keyless split a {na} / b {nb} is not near 300 / 100"
    );
}

// ---------------------------------------------------------------------------
// 8. method safety

#[test]
fn post_is_not_retried_on_another_backend() {
    let a = Backend::builder("a")
        .fail_connections(1, 1, ConnFault::ResetOnData)
        .start();
    let b = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::with_backends(&[a.addr(), b.addr()])
        .workers(1)
        .upstream_extra("retries", RETRIES)
        .upstream_extra("outlier_detection", NO_EJECTION)
        .start();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let mut s = Session::new(proxy.port);
        let r = s
            .request(
                format!("POST /post/{i} HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello")
                    .as_bytes(),
            )
            .unwrap_or_else(|e| panic!("POST {i}: {e}"));
        statuses.push((i, r.status));
    }
    let b_posts: BTreeSet<String> = served(&b)
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.target)
        .collect();
    let refused: Vec<usize> = statuses
        .iter()
        .filter(|(_, s)| *s == 502)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        statuses.iter().all(|(_, s)| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    assert!(
        !refused.is_empty(),
        "no POST went to the resetting backend: {statuses:?}"
    );
    assert_eq!(
        a.faulted(),
        refused.len(),
        "each refused POST should have been tried once, on a"
    );
    for i in &refused {
        assert!(
            !b_posts.contains(&format!("/post/{i}")),
            "POST /post/{i} failed on a and was replayed on b"
        );
    }
    assert_eq!(
        b_posts.len(),
        statuses.len() - refused.len(),
        "b saw {b_posts:?}"
    );
    // The same proxy does retry GETs: the difference is the method.
    let before = a.faulted();
    for i in 0..6 {
        let r = Session::new(proxy.port)
            .get(&format!("/get/{i}"), "")
            .unwrap_or_else(|e| panic!("GET {i}: {e}"));
        assert_eq!(r.status, 200, "GET {i} was not retried: {r:?}");
    }
    assert!(a.faulted() > before, "no GET was tried on a first");
}

// ---------------------------------------------------------------------------
// 9. load-aware algorithms

fn prefers_the_idle_backend(balance: &str) {
    let slow = Backend::start("slow", Behaviour::Stall(Duration::from_millis(200)));
    let fast = Backend::start("fast", Behaviour::Ok);
    let proxy = ProxyConfig::with_backends(&[slow.addr(), fast.addr()])
        .workers(1)
        .upstream_extra("balance", &quoted(balance))
        .start();
    // 8 clients, 5 requests each, starting 2 ms apart: the slow backend's
    // 200 ms requests overlap everything else.
    let port = proxy.port;
    let clients: Vec<_> = (0..8u32)
        .map(|t| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(2) * t);
                let mut s = Session::new(port);
                (0..5)
                    .map(|i| s.get(&format!("/p/{t}/{i}"), ""))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let failed = failures(&results);
    assert!(failed.is_empty(), "{balance}: {failed:?}");
    let (ns, nf) = (served(&slow).len(), served(&fast).len());
    eprintln!("{balance}: fast {nf}, slow {ns} of 40");
    assert_eq!(ns + nf, 40);
    assert!(
        nf * 100 > 40 * 70,
        "{balance}: only {nf} of 40 requests went to the fast backend (slow got {ns})"
    );
}

#[test]
fn least_conn_and_p2c_prefer_the_idle_backend() {
    prefers_the_idle_backend("least_conn");
    prefers_the_idle_backend("p2c_ewma");
}

// ---------------------------------------------------------------------------
// 10. circuit breaker: connections per backend

/// `clients` threads each send one GET at once; returns each status with
/// its body (or the error), sorted.
fn concurrent_gets(port: u16, clients: usize) -> Vec<String> {
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            thread::spawn(move || {
                let mut s = Session::new(port);
                match s.get(&format!("/c/{t}"), "") {
                    Ok(r) => format!("{} {}", r.status, r.body_str().trim_end()),
                    Err(e) => e,
                }
            })
        })
        .collect();
    let mut out: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    out.sort();
    out
}

#[test]
fn max_connections_queues_requests_on_the_open_connections() {
    let backend = Backend::start("slow", Behaviour::Stall(Duration::from_millis(150)));
    let proxy = ProxyConfig::new(backend.addr())
        .workers(1)
        .upstream_extra("circuit_breaker", "{ max_connections = 2 }")
        .timeouts(r#"connect = "5s""#)
        .start();
    let results = concurrent_gets(proxy.port, 6);
    let ok = results.iter().filter(|r| r.starts_with("200 ")).count();
    assert_eq!(ok, 6, "{results:?}");
    // Six requests in three waves over two connections, never a third.
    assert_eq!(served(&backend).len(), 6);
    assert_eq!(backend.connections(), 2, "connections the backend accepted");
}

#[test]
fn max_connections_overflow_is_a_503_once_the_wait_runs_out() {
    let backend = Backend::start("slow", Behaviour::Stall(Duration::from_millis(600)));
    let proxy = ProxyConfig::new(backend.addr())
        .workers(1)
        .upstream_extra("circuit_breaker", "{ max_connections = 2 }")
        .timeouts(r#"connect = "100ms""#)
        .start();
    let results = concurrent_gets(proxy.port, 5);
    let ok = results.iter().filter(|r| r.starts_with("200 ")).count();
    let overflow = results
        .iter()
        .filter(|r| r.as_str() == "503 upstream connection limit reached")
        .count();
    assert_eq!((ok, overflow), (2, 3), "{results:?}");
    assert_eq!(backend.connections(), 2);
    // The limit held connections back, it did not blame the backend: the
    // next request is served on a pooled connection.
    let mut s = Session::new(proxy.port);
    let r = s.get("/after", "").expect("a request after the burst");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(backend.connections(), 2);
}
