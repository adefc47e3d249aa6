//! Thread-per-core layout: one pinned thread, one io_uring and one
//! SO_REUSEPORT listener per worker.

use std::collections::BTreeSet;
use std::time::Duration;

use ringgate_tests::procfs::{
    io_uring_fds, listening_sockets, parse_cpu_list, status_field, tasks,
};
use ringgate_tests::{eventually, Backend, Behaviour, Client, ProxyConfig};

fn legacy_driver() -> bool {
    std::env::var("RINGGATE_DRIVER").is_ok_and(|v| v == "legacy")
}

#[test]
fn legacy_driver_fallback_is_logged_once_and_serves() {
    let backend = Backend::start("b", Behaviour::Ok);
    let config = ProxyConfig::new(backend.addr()).workers(2).to_toml();
    let proxy = ringgate_tests::Proxy::start_with_env(&config, &[("RINGGATE_DRIVER", "legacy")]);
    let mut c = Client::connect(proxy.port);
    c.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_final().unwrap_or_else(|e| panic!("response: {e}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        io_uring_fds(proxy.pid()),
        0,
        "legacy driver must not create rings"
    );
    let log = proxy.stderr();
    assert_eq!(
        log.matches("legacy epoll driver").count(),
        1,
        "want exactly one fallback line, stderr:\n{log}"
    );
}

#[test]
fn two_workers_have_pinned_threads_rings_and_listeners() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).workers(2).start();
    let pid = proxy.pid();
    let port = proxy.port;

    let workers = eventually(Duration::from_secs(3), || {
        let w: Vec<_> = tasks(pid)
            .into_iter()
            .filter(|t| t.comm.starts_with("ringgate-w"))
            .collect();
        let names: BTreeSet<&str> = w.iter().map(|t| t.comm.as_str()).collect();
        // A worker pins itself as its thread starts: wait for that too.
        let all_pinned = w
            .iter()
            .all(|t| parse_cpu_list(&t.cpus_allowed_list).len() == 1);
        if w.len() == 2 && names == BTreeSet::from(["ringgate-w0", "ringgate-w1"]) && all_pinned {
            Ok(w)
        } else {
            Err(format!(
                "want exactly threads ringgate-w0 and ringgate-w1; the process has {:?}",
                tasks(pid)
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let own_cpus =
        parse_cpu_list(&status_field(std::process::id(), "Cpus_allowed_list").unwrap_or_default());
    let mut pinned = BTreeSet::new();
    for w in &workers {
        let cpus = parse_cpu_list(&w.cpus_allowed_list);
        assert_eq!(
            cpus.len(),
            1,
            "{} is not pinned to one CPU: Cpus_allowed_list {:?}",
            w.comm,
            w.cpus_allowed_list
        );
        pinned.insert(cpus[0]);
    }
    if own_cpus.len() >= 2 {
        assert_eq!(
            pinned.len(),
            2,
            "both workers pinned to the same CPU: {workers:?}"
        );
    }

    // The suite also runs with RINGGATE_DRIVER=legacy (README's test
    // command), where the workers must hold no ring at all.
    let want_rings = if legacy_driver() { 0 } else { 2 };
    eventually(Duration::from_secs(2), || match io_uring_fds(pid) {
        n if n == want_rings => Ok(()),
        n => Err(format!(
            "want {want_rings} io_uring instances, /proc/{pid}/fd has {n}"
        )),
    })
    .unwrap_or_else(|e| panic!("{e}"));

    eventually(Duration::from_secs(2), || match listening_sockets(port) {
        2 => Ok(()),
        n => Err(format!(
            "want 2 listening sockets on port {port}, /proc/net/tcp{{,6}} has {n}"
        )),
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // And it serves.
    for i in 0..4 {
        let r = Client::connect(port).get(&format!("/w{i}"));
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[test]
fn a_second_ringgate_on_the_same_port_stops_start_up_naming_the_address() {
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr());
    let _first = cfg.start();
    let config =
        ringgate_tests::proxy::write_temp("ringgate-test", "toml", cfg.to_toml().as_bytes());
    let out = ringgate_tests::proxy::run_ringgate(&["-c".as_ref(), config.as_os_str()]);
    assert!(!out.success, "the second process started: {}", out.stderr);
    let addr = format!("127.0.0.1:{}", cfg.port);
    assert!(
        out.stderr.contains(&addr) && out.stderr.contains("already in use by another process"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_port_held_by_any_other_listener_stops_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = Backend::start("b", Behaviour::Ok);
    let mut cfg = ProxyConfig::new(backend.addr());
    cfg.port = taken.local_addr().expect("addr").port();
    let config =
        ringgate_tests::proxy::write_temp("ringgate-test", "toml", cfg.to_toml().as_bytes());
    let out = ringgate_tests::proxy::run_ringgate(&["-c".as_ref(), config.as_os_str()]);
    assert!(!out.success, "started on a taken port: {}", out.stderr);
    assert!(out.stderr.contains("already in use"), "{}", out.stderr);
}

#[test]
fn share_ports_lets_two_processes_share_a_port_on_purpose() {
    let backend = Backend::start("b", Behaviour::Ok);
    let cfg = ProxyConfig::new(backend.addr()).server("share_ports", "true");
    let _first = cfg.start();
    let _second = cfg.start();
    let r = Client::connect(cfg.port).get("/shared");
    assert_eq!(r.status, 200, "{r:?}");
}
