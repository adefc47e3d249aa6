//! DNS discovery of backends (issue 13): the real binary follows a host
//! name's A records and a SRV name's records served by a loopback DNS
//! server the test changes, while a client keeps sending requests.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringgate_tests::dns::{DnsServer, Srv};
use ringgate_tests::pki::TestCa;
use ringgate_tests::procfs::tasks;
use ringgate_tests::proxy::{metrics, run_ringgate, sample, write_temp};
use ringgate_tests::{eventually, free_port, Backend, Behaviour, Client, Proxy};

/// The records' TTL: traffic must move within about this after a change.
const TTL_S: u32 = 1;
/// One TTL, plus the ticker and a loaded machine's slack.
const MOVE_WITHIN: Duration = Duration::from_millis(2_500);

/// A proxy with `workers` workers whose one backend is the name
/// `api.test` on `port`, looked up at `dns`; and its admin port.
fn proxy_to_api_test(dns: &DnsServer, port: u16, workers: u32) -> (Proxy, u16) {
    let admin = free_port();
    let backend = format!("{{ address = \"api.test:{port}\" }}");
    let text = config(dns.addr(), admin, &backend, workers);
    (Proxy::start(&text), admin)
}

fn config(dns: SocketAddr, admin: u16, backends: &str, workers: u32) -> String {
    format!(
        "[server]\nworkers = {workers}\n\n[dns]\nnameservers = [\"{dns}\"]\nmin_interval = \"200ms\"\n\n\
         [admin]\naddress = \"127.0.0.1:{admin}\"\n\n\
         [[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{}\"\n\n\
         [[routes]]\nlistener = \"web\"\nupstream = \"app\"\n\n\
         [[upstreams]]\nname = \"app\"\nbackends = [{backends}]\n",
        free_port()
    )
}

/// Backends on loopback addresses 127.0.0.N, all on `port`: A records
/// carry no port, so a host name's backends differ by address.
fn backends_on(port: u16, hosts: &[u8]) -> Vec<Backend> {
    hosts
        .iter()
        .map(|&h| {
            let addr = SocketAddr::from(([127, 0, 0, h], port));
            Backend::builder(&format!("b{h}")).bind(addr).start()
        })
        .collect()
}

fn ip(h: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, h)
}

/// A client sending requests back to back on a keep-alive connection until
/// finished. A request that finds its reused connection closed by the proxy
/// (as a draining generation closes idle ones) is sent again once on a new
/// connection, as HTTP clients do (RFC 9112 §9.3.1), and counted in
/// `reconnects`; one that fails on a new connection is a failure.
struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
    thread: Option<JoinHandle<()>>,
}

/// Requests sent, failed, and sent again after a keep-alive close.
#[derive(Debug, Clone, Copy)]
struct Sent {
    sent: u64,
    failed: u64,
    reconnects: u64,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            thread::spawn(move || {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let mut client: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    let reused = client.is_some();
                    let ok = send(&mut client, addr)
                        || (reused && {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                            send(&mut client, addr)
                        });
                    if !ok {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        };
        Traffic {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        Sent {
            sent: n(0),
            failed: n(1),
            reconnects: n(2),
        }
    }
}

/// One GET on `client` (connecting first when there is none); a 200 is a
/// success. Any failure drops the connection.
fn send(client: &mut Option<Client>, addr: SocketAddr) -> bool {
    if client.is_none() {
        *client = Client::try_connect(addr).ok();
    }
    let Some(c) = client.as_mut() else {
        return false;
    };
    let ok = c
        .try_send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .and_then(|()| c.read_response())
        .is_ok_and(|r| r.status == 200);
    if !ok {
        *client = None;
    }
    ok
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Requests for `/` each backend received (health probes ask `/health`).
fn counts(backends: &[Backend]) -> Vec<usize> {
    backends
        .iter()
        .map(|b| b.targets().iter().filter(|t| *t == "/").count())
        .collect()
}

/// Waits until exactly the backends in `serving` receive requests: those
/// gain within a 300 ms window, the rest do not. Returns how long it took.
fn wait_until_serving(backends: &[Backend], serving: &[usize], since: Instant) -> Duration {
    let result = eventually(Duration::from_secs(10), || {
        let before = counts(backends);
        thread::sleep(Duration::from_millis(300));
        let after = counts(backends);
        let gained: Vec<bool> = before.iter().zip(&after).map(|(b, a)| a > b).collect();
        let want: Vec<bool> = (0..backends.len()).map(|i| serving.contains(&i)).collect();
        if gained == want {
            Ok(())
        } else {
            Err(format!(
                "gaining {gained:?}, want {want:?} ({before:?} -> {after:?})"
            ))
        }
    });
    if let Err(e) = result {
        panic!("traffic never settled on {serving:?}: {e}");
    }
    // The window that first showed the new spread began up to 300 ms
    // after the change took effect.
    since.elapsed().saturating_sub(Duration::from_millis(300))
}

#[test]
fn traffic_follows_a_name_from_two_backends_to_three_then_one() {
    let dns = DnsServer::start(TTL_S);
    let port = free_port();
    let backends = backends_on(port, &[11, 12, 13]);
    dns.set_a("api.test", &[ip(11), ip(12)]);
    let (proxy, admin) = proxy_to_api_test(&dns, port, 2);
    let traffic = Traffic::start(proxy.port);

    wait_until_serving(&backends, &[0, 1], Instant::now());

    dns.set_a("api.test", &[ip(11), ip(12), ip(13)]);
    let took = wait_until_serving(&backends, &[0, 1, 2], Instant::now());
    assert!(took < MOVE_WITHIN, "2 -> 3 took {took:?}");

    dns.set_a("api.test", &[ip(13)]);
    let took = wait_until_serving(&backends, &[2], Instant::now());
    assert!(took < MOVE_WITHIN, "3 -> 1 took {took:?}");

    let t = traffic.finish();
    assert!(t.sent > 500, "the client kept sending: {t:?}");
    // Not even a keep-alive connection closed under the client.
    assert_eq!((t.failed, t.reconnects), (0, 0), "{t:?}");
    // The removed backends' counters stay in /metrics; their gauges go.
    let page = metrics(admin);
    let gone = format!("ringgate_upstream_requests_total{{upstream=\"app\",backend=\"127.0.0.11:{port}\",outcome=\"success\"}}");
    assert!(sample(&page, &gone) > 0, "{page}");
    assert!(
        !page.contains(&format!(
            "ringgate_backend_in_flight{{upstream=\"app\",backend=\"127.0.0.11:{port}\"}}"
        )),
        "{page}"
    );
    drop(proxy);
}

#[test]
fn srv_records_give_ports_and_weights_and_the_lowest_priority_wins() {
    let dns = DnsServer::start(TTL_S);
    let backends: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&format!("s{i}"), Behaviour::Ok))
        .collect();
    dns.set_a("node.test", &[ip(1)]);
    let srv = |b: &Backend, priority, weight| Srv {
        priority,
        weight,
        port: b.addr().port(),
        target: "node.test".into(),
    };
    dns.set_srv(
        "_http._tcp.api.test",
        &[
            srv(&backends[0], 10, 1),
            srv(&backends[1], 10, 3),
            srv(&backends[2], 20, 5),
        ],
    );
    let admin = free_port();
    let text = config(dns.addr(), admin, "{ srv = \"_http._tcp.api.test\" }", 1);
    let proxy = Proxy::start(&text);
    let mut client = Client::connect(proxy.port);
    for _ in 0..400 {
        assert_eq!(client.get("/").status, 200);
    }
    let c = counts(&backends);
    assert_eq!(c[2], 0, "priority 20 is a backup: {c:?}");
    assert_eq!(c[0] + c[1], 400, "{c:?}");
    assert_eq!(c[1], 3 * c[0], "weights 3:1 from the SRV records: {c:?}");

    // The priority-10 records go: the backup takes over.
    dns.set_srv("_http._tcp.api.test", &[srv(&backends[2], 20, 5)]);
    let traffic = Traffic::start(proxy.port);
    let took = wait_until_serving(&backends, &[2], Instant::now());
    assert!(took < MOVE_WITHIN, "took {took:?}");
    let t = traffic.finish();
    assert_eq!((t.failed, t.reconnects), (0, 0), "{t:?}");
}

#[test]
fn a_failed_lookup_keeps_the_last_set_and_is_counted() {
    let dns = DnsServer::start(TTL_S);
    let port = free_port();
    let backends = backends_on(port, &[21, 22]);
    dns.set_a("api.test", &[ip(21), ip(22)]);
    let (proxy, admin) = proxy_to_api_test(&dns, port, 1);
    let traffic = Traffic::start(proxy.port);
    wait_until_serving(&backends, &[0, 1], Instant::now());

    dns.set_servfail(true);
    let series =
        format!("ringgate_dns_lookup_failures_total{{upstream=\"app\",name=\"api.test:{port}\"}}");
    let failures = eventually(Duration::from_secs(10), || {
        let n = sample(&metrics(admin), &series);
        if n >= 2 {
            Ok(n)
        } else {
            Err(format!("{series} = {n}"))
        }
    });
    assert!(failures.is_ok(), "{failures:?}: {}", metrics(admin));
    // Both backends still serve on the last good set.
    wait_until_serving(&backends, &[0, 1], Instant::now());
    assert!(
        proxy.stderr().contains("lookup failed"),
        "{}",
        proxy.stderr()
    );

    // The server recovers with one address: the set follows.
    dns.set_a("api.test", &[ip(22)]);
    dns.set_servfail(false);
    wait_until_serving(&backends, &[1], Instant::now());
    let t = traffic.finish();
    assert_eq!((t.failed, t.reconnects), (0, 0), "{t:?}");
    let page = metrics(admin);
    assert!(
        sample(
            &page,
            &format!("ringgate_dns_lookups_total{{upstream=\"app\",name=\"api.test:{port}\"}}")
        ) > failures.unwrap_or(0),
        "{page}"
    );
}

#[test]
fn check_refuses_bad_backend_names() {
    for (backend, want) in [
        ("{ address = \"api.test\" }", "has no port"),
        ("{ address = \"api..test:80\" }", "is not a DNS label"),
        ("{ srv = \"api.test\" }", "is not a SRV name"),
        (
            "{ srv = \"_h._tcp.api.test\", max_addresses = 1000 }",
            "out of range",
        ),
    ] {
        let text = config("127.0.0.1:53".parse().unwrap(), free_port(), backend, 1);
        let path = write_temp("dns-check", "toml", text.as_bytes());
        let out = run_ringgate(&["check".as_ref(), path.as_os_str()]);
        assert_eq!(out.code, Some(2), "{backend}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{backend}: {}", out.stderr);
    }
}

#[test]
fn a_reload_starts_a_new_resolver_and_the_old_one_ends() {
    let dns = DnsServer::start(TTL_S);
    let port = free_port();
    let backends = backends_on(port, &[31, 32]);
    dns.set_a("api.test", &[ip(31)]);
    let admin = free_port();
    let text = config(
        dns.addr(),
        admin,
        &format!("{{ address = \"api.test:{port}\" }}"),
        1,
    );
    let proxy = Proxy::start(&text);
    let traffic = Traffic::start(proxy.port);
    wait_until_serving(&backends, &[0], Instant::now());
    let resolvers = || {
        tasks(proxy.pid())
            .iter()
            .filter(|t| t.comm == "ringgate-dns")
            .count()
    };
    assert_eq!(resolvers(), 1);

    // The file changed a little: a SIGHUP starts a new generation.
    std::fs::write(
        &proxy.config_path,
        text.replace("min_interval = \"200ms\"", "min_interval = \"300ms\""),
    )
    .expect("rewrite config");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(5), || {
        proxy
            .stderr()
            .contains("(generation 1)")
            .then_some(())
            .ok_or_else(|| "not reloaded yet".to_owned())
    })
    .expect("reloaded");
    // The old generation's resolver ends with its drain.
    eventually(Duration::from_secs(5), || match resolvers() {
        1 => Ok(()),
        n => Err(format!("{n} resolver threads")),
    })
    .expect("one resolver thread after the reload");

    // The new generation follows the name.
    dns.set_a("api.test", &[ip(32)]);
    let took = wait_until_serving(&backends, &[1], Instant::now());
    assert!(took < MOVE_WITHIN, "took {took:?}");
    // The old generation closes its idle keep-alive connections as it
    // drains: the client reconnects, and no request fails.
    let t = traffic.finish();
    assert_eq!(t.failed, 0, "{t:?}");
}

#[test]
fn health_checks_follow_the_addresses_in_the_slots() {
    let dns = DnsServer::start(TTL_S);
    let port = free_port();
    let bind = |h: u8| SocketAddr::from(([127, 0, 0, h], port));
    let backends = vec![
        Backend::builder("b41").bind(bind(41)).start(),
        // Fails its health checks, serves everything else.
        Backend::builder("b42")
            .bind(bind(42))
            .route("/health", Behaviour::Status(503))
            .start(),
        Backend::builder("b43").bind(bind(43)).start(),
    ];
    dns.set_a("api.test", &[ip(41), ip(42)]);
    let admin = free_port();
    let text = config(dns.addr(), admin, &format!("{{ address = \"api.test:{port}\" }}"), 2)
        + "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n";
    let proxy = Proxy::start(&text);
    let traffic = Traffic::start(proxy.port);
    // The failing one is taken out by its prober.
    wait_until_serving(&backends, &[0], Instant::now());

    // Its slot goes to a new address: probed there, and it serves.
    dns.set_a("api.test", &[ip(41), ip(43)]);
    wait_until_serving(&backends, &[0, 2], Instant::now());
    eventually(Duration::from_secs(3), || {
        let probes = backends[2]
            .targets()
            .iter()
            .filter(|t| *t == "/health")
            .count();
        (probes >= 2)
            .then_some(())
            .ok_or(format!("{probes} probes reached the new address"))
    })
    .expect("the new address is probed");
    // The address that left is probed no more.
    let probed = |b: &Backend| b.targets().iter().filter(|t| *t == "/health").count();
    let before = probed(&backends[1]);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        probed(&backends[1]),
        before,
        "the removed address is still probed"
    );
    let t = traffic.finish();
    assert_eq!(t.failed, 0, "{t:?}");
}

#[test]
fn a_host_name_backend_over_tls_is_verified_for_its_name() {
    let dns = DnsServer::start(TTL_S);
    let mut ca = TestCa::new("dns test CA");
    let cert = ca.server("api", &["api.test"]);
    let backend = Backend::start("b", Behaviour::Ok);
    // A second proxy terminates TLS for api.test (and only that name) in
    // front of the backend.
    let tls_port = free_port();
    let _terminator = Proxy::start(&format!(
        "[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{tls_port}\"\ntls = {{ certificates = [{}] }}\n\n\
         [[routes]]\nlistener = \"tls\"\nupstream = \"b\"\n\n\
         [[upstreams]]\nname = \"b\"\nbackends = [{{ address = \"{}\" }}]\n",
        cert.toml(),
        backend.addr()
    ));
    dns.set_a("api.test", &[ip(1)]);
    // No server_name: the entry's host name is what is verified.
    let text = config(
        dns.addr(),
        free_port(),
        &format!("{{ address = \"api.test:{tls_port}\" }}"),
        1,
    ) + &format!("tls = {{ ca = \"{}\" }}\n", ca.cert.display());
    let proxy = Proxy::start(&text);
    let answered = eventually(Duration::from_secs(5), || {
        let r = Client::connect(proxy.port).get("/named");
        match r.status {
            // Until the first lookup has filled the slot.
            503 => Err("no backend yet".to_owned()),
            status => Ok((status, r.body_str().to_owned())),
        }
    });
    let (status, body) = answered.expect("an answer other than 503");
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(backend.records().len(), 1);
}

/// An answer no backend could be at (a DNS sinkhole's 0.0.0.0, whose
/// connect reaches this host; a multicast address) is skipped as
/// `check` refuses it in a config: traffic goes to the usable address
/// alone, and no request fails.
#[test]
fn answers_no_backend_could_be_at_are_skipped() {
    let dns = DnsServer::start(TTL_S);
    let port = free_port();
    let backends = backends_on(port, &[11]);
    dns.set_a(
        "api.test",
        &[Ipv4Addr::UNSPECIFIED, ip(11), Ipv4Addr::new(224, 0, 0, 1)],
    );
    let (proxy, _) = proxy_to_api_test(&dns, port, 2);
    let traffic = Traffic::start(proxy.port);
    wait_until_serving(&backends, &[0], Instant::now());
    thread::sleep(Duration::from_millis(500));
    let t = traffic.finish();
    assert!(t.sent > 50, "the client kept sending: {t:?}");
    assert_eq!(t.failed, 0, "{t:?}");
    drop(proxy);
}
