//! Hot reload: SIGHUP reads the config file again. A valid file starts a new
//! generation of workers on the same listening sockets and drains the old
//! one, so no connection is refused and requests in flight finish; an
//! invalid file changes nothing and says why.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, ProxyConfig};

/// One GET on a new connection: the backend that answered, or the error.
fn served_by(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut c = Client::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let r = c.read_final().map_err(|e| format!("read: {e}"))?;
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    r.header("x-backend").ok_or_else(|| "no x-backend".into())
}

#[test]
fn sighup_switches_config_without_refusing_a_connection_or_cutting_a_request() {
    let a = Backend::builder("a")
        .route("/slow", Behaviour::Stall(Duration::from_millis(1200)))
        .start();
    let b = Backend::start("b", Behaviour::Ok);
    let old = ProxyConfig::new(a.addr()).workers(2);
    let mut new = ProxyConfig::new(b.addr()).workers(2);
    new.port = old.port;
    let mut proxy = Proxy::start(&old.to_toml());
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    assert_eq!(served_by(addr, "/before"), Ok("a".into()));

    let in_flight = thread::spawn(move || served_by(addr, "/slow"));
    eventually(Duration::from_secs(2), || a.reached("/slow"))
        .expect("a request in flight on the old generation");
    // New connections, one request each, all through the reload.
    let done = Arc::new(AtomicBool::new(false));
    let hammer = {
        let done = done.clone();
        thread::spawn(move || {
            let mut results = Vec::new();
            while !done.load(Ordering::SeqCst) {
                results.push(served_by(addr, "/h"));
            }
            results
        })
    };
    thread::sleep(Duration::from_millis(100));

    std::fs::write(&proxy.config_path, new.to_toml()).expect("write the new config");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(3), || match served_by(addr, "/after") {
        Ok(backend) if backend == "b" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .expect("new connections reach the new config's backend");
    thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::SeqCst);
    let results = hammer.join().expect("hammer");
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests across the reload failed: {failed:?}",
        failed.len(),
        results.len()
    );
    assert!(results.len() > 20, "only {} requests", results.len());
    eprintln!(
        "{} new connections across the reload, none failed",
        results.len()
    );
    assert_eq!(
        in_flight.join().expect("client"),
        Ok("a".into()),
        "the old generation finishes its request"
    );
    let log = proxy.stderr();
    assert!(log.contains("SIGHUP: reloaded"), "{log}");
    assert!(log.contains("(generation 1)"), "{log}");
    assert!(proxy.is_running());
    assert_eq!(served_by(addr, "/still"), Ok("b".into()));
}

#[test]
fn an_invalid_config_on_sighup_changes_nothing() {
    let backend = Backend::start("a", Behaviour::Ok);
    let mut proxy = ProxyConfig::new(backend.addr()).start();
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let good = std::fs::read_to_string(&proxy.config_path).expect("config");
    std::fs::write(
        &proxy.config_path,
        good.replace("workers = 1", "workers = 1\nbogus = 3"),
    )
    .expect("write");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(2), || {
        let log = proxy.stderr();
        if log.contains("not reloaded") {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .map(|log| {
        assert!(log.contains("unknown key `bogus`"), "{log}");
        assert!(
            log.contains(":3:1"),
            "the error names line and column: {log}"
        );
    })
    .expect("the failed reload is logged");
    assert!(proxy.is_running());
    assert_eq!(served_by(addr, "/x"), Ok("a".into()));
}

#[test]
fn reloads_under_keep_alive_load_cut_no_request() {
    // Busy keep-alive connections: a response that went out just before a
    // drain began promised keep-alive, so the client's next request is
    // already on its way. The draining worker must take it (and answer
    // with close), not close the connection under it.
    let backend = Backend::start("ok", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).workers(2).start();
    let json = ringgate_tests::proxy::temp_path("ringgate-reload-load", "json");
    let mut load = std::process::Command::new(ringgate_tests::ringload_bin())
        .arg(format!("http://127.0.0.1:{}/", proxy.port))
        .args(["-c", "8", "-d", "3s", "--cores", "1", "-q", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ringload");
    thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        proxy.signal("-HUP");
        thread::sleep(Duration::from_millis(350));
    }
    assert!(load.wait().expect("ringload").success());
    let report = std::fs::read_to_string(&json).expect("ringload's report");
    let _ = std::fs::remove_file(&json);
    let outcome = ringgate_tests::proxy::LoadOutcome::from_report(&report);
    assert!(outcome.requests > 100, "{outcome:?}");
    assert_eq!(
        outcome.errors, 0,
        "requests cut by the reloads: {outcome:?}"
    );
    assert!(outcome.non_2xx.is_empty(), "{outcome:?}");
    assert!(
        proxy.stderr().contains("(generation 5)"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn a_connection_arriving_as_the_old_workers_stop_accepting_is_served() {
    // The generations share each listening socket. A connection arriving
    // as an old worker's accept is cancelled wakes that accept alone (an
    // io_uring accept waits exclusively); if the old worker then gives up
    // without taking it, the new worker's accept sleeps on with the client
    // queued. One client, one connection at a time, so nothing else comes
    // to wake the new worker: a lost connection waits out its timeout.
    let backend = Backend::start("a", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).workers(2).start();
    let addr: SocketAddr = ([127, 0, 0, 1], proxy.port).into();
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let done = done.clone();
        thread::spawn(move || {
            let mut results = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let started = std::time::Instant::now();
                let r = Client::try_connect(addr)
                    .and_then(|mut c| {
                        c.set_read_timeout(Duration::from_secs(2));
                        c.try_send(b"GET /x HTTP/1.1\r\nHost: test\r\n\r\n")?;
                        c.read_final()
                    })
                    .map_err(|e| format!("{e} after {:?}", started.elapsed()));
                results.push(r.map(|r| r.status));
            }
            results
        })
    };
    let reloads = 40;
    for _ in 0..reloads {
        proxy.signal("-HUP");
        thread::sleep(Duration::from_millis(60));
    }
    done.store(true, Ordering::SeqCst);
    let results = client.join().expect("client");
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections across {reloads} reloads got no answer: {failed:?}",
        failed.len(),
        results.len()
    );
    assert!(results.iter().all(|r| r == &Ok(200)), "{results:?}");
    assert!(
        proxy.stderr().contains(&format!("(generation {reloads})")),
        "{}",
        proxy.stderr()
    );
}
