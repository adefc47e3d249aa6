//! Graceful stop: a signal closes the listeners and the idle keep-alive
//! connections, lets the requests in flight finish (announced with
//! `Connection: close`) and exits 0; `drain_timeout` bounds the wait, and a
//! second signal exits at once.

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ringgate_tests::{eventually, Backend, Behaviour, Client, ProxyConfig};

fn refuses_connections(port: u16) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(_) => Err("a new connection was still accepted".into()),
        Err(_) => Ok(()),
    }
}

#[test]
fn sigterm_finishes_requests_in_flight_closes_idle_connections_and_exits_0() {
    let backend = Backend::builder("slow")
        .route("/slow", Behaviour::Stall(Duration::from_millis(3000)))
        .start();
    let mut proxy = ProxyConfig::new(backend.addr()).workers(2).start();
    let port = proxy.port;
    // A kept-alive connection with nothing in flight.
    let mut idle = Client::connect(port);
    assert_eq!(idle.get("/first").status, 200);
    let in_flight = thread::spawn(move || {
        let mut c = Client::connect(port);
        let r = c.get("/slow");
        let closed = c.wait_closed(Duration::from_secs(5));
        (r, closed)
    });
    eventually(Duration::from_secs(2), || backend.reached("/slow"))
        .expect("the slow request is in flight");
    let signalled = Instant::now();
    proxy.signal("-TERM");

    idle.wait_closed(Duration::from_secs(1))
        .expect("the idle keep-alive connection is closed by the drain");
    eventually(Duration::from_secs(2), || refuses_connections(port)).expect("listeners closed");
    assert!(
        signalled.elapsed() < Duration::from_millis(1000),
        "idle connection and listeners must not wait for the request in flight \
         (it ends 3 s after it started)"
    );
    let (r, closed) = in_flight.join().expect("client thread");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), backend.ok_body("/slow"));
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "the last response says so"
    );
    closed.expect("then the connection closes");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("the process exits once no connection is left");
    assert!(status.success(), "{status}\n{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(log.contains("lifecycle: stopped"), "{log}");
}

#[test]
fn drain_timeout_cuts_a_request_that_outlives_it() {
    let backend = Backend::start("stuck", Behaviour::Stall(Duration::from_secs(10)));
    let mut proxy = ProxyConfig::new(backend.addr())
        .server("drain_timeout", "\"300ms\"")
        .start();
    let port = proxy.port;
    let in_flight = thread::spawn(move || {
        let mut c = Client::connect(port);
        c.send(b"GET /stuck HTTP/1.1\r\nHost: test\r\n\r\n");
        c.read_final().map(|r| r.status)
    });
    eventually(Duration::from_secs(2), || backend.reached("/stuck"))
        .expect("the request is in flight");
    let signalled = Instant::now();
    proxy.signal("-INT");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("the process exits after drain_timeout");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        in_flight.join().expect("client thread").is_err(),
        "the cut request gets no response"
    );
    let log = proxy.stderr();
    assert!(log.contains("SIGINT: draining"), "{log}");
    assert!(
        log.contains("drain_timeout reached, closing 1 connection(s)"),
        "{log}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let backend = Backend::start("stuck", Behaviour::Stall(Duration::from_secs(10)));
    let mut proxy = ProxyConfig::new(backend.addr()).start();
    let port = proxy.port;
    let _in_flight = thread::spawn(move || {
        let mut c = Client::connect(port);
        c.send(b"GET /stuck HTTP/1.1\r\nHost: test\r\n\r\n");
        let _ = c.read_final();
    });
    eventually(Duration::from_secs(2), || backend.reached("/stuck"))
        .expect("the request is in flight");
    proxy.signal("-TERM");
    eventually(Duration::from_secs(2), || {
        if proxy.stderr().contains("draining") {
            Ok(())
        } else {
            Err("no drain logged".to_string())
        }
    })
    .expect("first signal drains");
    assert!(proxy.is_running(), "the default drain_timeout is 30 s");
    proxy.signal("-QUIT");
    let status = proxy
        .wait_exit(Duration::from_secs(2))
        .expect("a second signal exits at once");
    assert_eq!(status.code(), Some(1), "{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("SIGQUIT again"),
        "{}",
        proxy.stderr()
    );
}
