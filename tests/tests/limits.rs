//! Limits on what the proxy holds: `max_connections_per_worker`, where an
//! idle keep-alive connection gives way to a new client (as nginx reuses
//! its idle connections), and the process's open-file limit, where accept
//! backs off instead of spinning and logging.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use ringgate_tests::{Backend, Behaviour, Client, ProxyConfig};

/// One GET on `c`: the status, or what went wrong.
fn try_get(c: &mut Client, path: &str) -> Result<u16, String> {
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    final_status(c)
}

/// The status of the final response `c` reads next, or what went wrong.
fn final_status(c: &mut Client) -> Result<u16, String> {
    c.read_final()
        .map(|r| r.status)
        .map_err(|e| format!("read: {e}"))
}

#[test]
fn full_worker_closes_the_longest_idle_connection_for_a_new_client() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .server("max_connections_per_worker", "2")
        .start();
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    // Let the harness's start-up probe connection close.
    thread::sleep(Duration::from_millis(100));
    let mut oldest = Client::try_connect(addr).expect("connect");
    assert_eq!(try_get(&mut oldest, "/1"), Ok(200));
    thread::sleep(Duration::from_millis(50));
    let mut newer = Client::try_connect(addr).expect("connect");
    assert_eq!(try_get(&mut newer, "/2"), Ok(200));
    // Both wait on keep-alive: the worker is full of idle connections.
    let mut third = Client::try_connect(addr).expect("connect");
    assert_eq!(
        try_get(&mut third, "/3"),
        Ok(200),
        "a new client is served when the worker is full of idle connections"
    );
    oldest
        .wait_closed(Duration::from_secs(1))
        .expect("the longest-idle connection was closed for it");
    assert_eq!(
        try_get(&mut newer, "/4"),
        Ok(200),
        "the other one still serves"
    );
}

#[test]
fn full_worker_with_no_idle_connection_refuses_a_new_client() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .server("max_connections_per_worker", "2")
        .start();
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    thread::sleep(Duration::from_millis(100));
    // Two clients in the middle of their first request's head are not
    // idle: neither may be closed for a newcomer. (A client that has sent
    // nothing yet is not the worker's at all: `defer_accept`.)
    let mut first = Client::try_connect(addr).expect("connect");
    let mut second = Client::try_connect(addr).expect("connect");
    first.try_send(b"GET /1 HTTP/1.1\r\n").expect("send");
    second.try_send(b"GET /2 HTTP/1.1\r\n").expect("send");
    thread::sleep(Duration::from_millis(50));
    let mut third = Client::try_connect(addr).expect("connect");
    assert!(
        try_get(&mut third, "/3").is_err(),
        "the third client is refused"
    );
    for c in [&mut first, &mut second] {
        c.try_send(b"Host: test\r\n\r\n").expect("send");
        assert_eq!(final_status(c), Ok(200));
    }
}

#[test]
fn out_of_file_descriptors_accept_backs_off_with_few_log_lines_and_recovers() {
    let backend = Backend::start("b", Behaviour::Ok);
    let toml = ProxyConfig::new(backend.addr()).to_toml();
    let proxy = ringgate_tests::Proxy::start_under(&toml, &["prlimit", "--nofile=64:64", "--"]);
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    // Clients that connect and send the start of a request (so that the
    // kernel hands them over at once, `defer_accept`): past ~50 the proxy
    // has no descriptor left, and the rest wait in the accept queue.
    let held: Vec<std::net::TcpStream> = (0..90)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\n").expect("send");
            s
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let log = proxy.stderr();
    let accept_lines = log.lines().filter(|l| l.contains(" accept: ")).count();
    assert!(
        (1..=2).contains(&accept_lines),
        "{accept_lines} accept error lines in 2 s:\n{log}"
    );
    let warnings = log
        .lines()
        .filter(|l| l.contains("open-file limit"))
        .count();
    assert_eq!(warnings, 1, "the limit is named once at start:\n{log}");
    drop(held);
    let served = ringgate_tests::eventually(Duration::from_secs(5), || {
        let mut c = Client::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
        try_get(&mut c, "/again")
    });
    assert_eq!(served, Ok(200), "serves again once the clients have gone");
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let backend = Backend::start("b", Behaviour::Ok);
    let toml = ProxyConfig::new(backend.addr()).to_toml();
    let proxy = ringgate_tests::Proxy::start_under(&toml, &["prlimit", "--nofile=256:12000", "--"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["12000", "12000"], "{line}");
    assert!(
        !proxy.stderr().contains("open-file limit"),
        "12000 holds one worker's 10000 connections: no warning\n{}",
        proxy.stderr()
    );
}

/// An idle keep-alive connection is closed at `keepalive_timeout`, and only
/// then: requests that each come after the buffer grace (so the connection
/// waits on the worker's idle deadlines, not on a read of its own) move its
/// deadline on each time, many connections' deadlines come due in turn,
/// and a connection that is busy again when its old deadline passes stays.
#[test]
fn idle_connections_close_at_keepalive_timeout_and_a_request_moves_the_deadline() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr())
        .limit("keepalive_timeout", "\"600ms\"")
        .start();
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    // Requests 300 ms apart, past the 50 ms grace and within the timeout:
    // the connection lives through 1.2 s, twice the timeout.
    let mut steady = Client::try_connect(addr).expect("connect");
    // Connections that go idle at once, a few milliseconds apart.
    let mut idle: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::try_connect(addr).expect("connect");
            assert_eq!(try_get(&mut c, "/"), Ok(200));
            c
        })
        .collect();
    for i in 0..5 {
        assert_eq!(try_get(&mut steady, "/"), Ok(200), "request {i}");
        thread::sleep(Duration::from_millis(300));
    }
    // 1.5 s on: the idle ones are closed (600 ms after their one request),
    // the steady one, idle for 300 ms, is not.
    for (i, c) in idle.iter_mut().enumerate() {
        c.wait_closed(Duration::from_millis(100))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
    }
    assert_eq!(
        try_get(&mut steady, "/"),
        Ok(200),
        "after 1.5 s of requests"
    );
    // Not early: idle for 450 ms of its 600, it is still served.
    thread::sleep(Duration::from_millis(450));
    assert_eq!(try_get(&mut steady, "/"), Ok(200), "after 450 ms idle");
    let idle_since = std::time::Instant::now();
    steady
        .wait_closed(Duration::from_millis(1500))
        .expect("closed after its last request's timeout");
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after {waited:?} of a 600 ms timeout"
    );
}
