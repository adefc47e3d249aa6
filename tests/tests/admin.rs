//! The admin endpoint, scraped with the real curl: `/metrics` sums every
//! worker's counters (Prometheus text format), `/healthz` turns 503 while
//! the proxy drains so a load balancer takes the node out.

use std::process::Command;
use std::thread;
use std::time::Duration;

use ringgate_tests::proxy::{curl, run_with_timeout};
use ringgate_tests::{eventually, free_port, Backend, Behaviour, Client, Proxy, ProxyConfig};

/// (status code, body) of `GET http://127.0.0.1:port/path` by curl.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let out = run_with_timeout(
        Command::new(curl())
            .args(["-sS", "--max-time", "2", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}")),
        Duration::from_secs(5),
    );
    if !out.success {
        return Err(format!("curl: {}", out.stderr));
    }
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or_default();
    let code = code
        .parse()
        .map_err(|_| format!("curl printed {:?}", out.stdout))?;
    Ok((code, body.to_owned()))
}

fn metrics_with(port: u16, lines: &[String]) -> Result<String, String> {
    let (code, body) = get(port, "/metrics")?;
    if code == 200 && lines.iter().all(|l| body.lines().any(|b| b == l)) {
        Ok(body)
    } else {
        Err(format!("{code}, want {lines:#?} in:\n{body}"))
    }
}

#[test]
fn metrics_sum_every_worker_and_healthz_turns_503_on_drain() {
    let backend = Backend::builder("b")
        .route("/a/slow", Behaviour::Stall(Duration::from_millis(1500)))
        .start();
    let admin = free_port();
    let toml = ProxyConfig::new(backend.addr())
        .route_prefix("/a")
        .workers(2)
        .to_toml()
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let mut proxy = Proxy::start(&toml);
    // Ten 200s and one 404, each on its own connection so both workers serve.
    for i in 0..10 {
        let mut c = Client::connect(proxy.port);
        assert_eq!(c.get(&format!("/a/{i}")).status, 200);
    }
    assert_eq!(Client::connect(proxy.port).get("/nope").status, 404);

    let backend_label = format!("upstream=\"app\",backend=\"{}\"", backend.addr());
    let want = [
        "ringgate_responses_total{class=\"2xx\"} 10".to_string(),
        "ringgate_responses_total{class=\"4xx\"} 1".to_string(),
        "ringgate_responses_total{class=\"5xx\"} 0".to_string(),
        // Eleven, plus the connection the harness made to see it listening.
        "ringgate_connections_accepted_total 12".to_string(),
        "ringgate_workers_reporting 2".to_string(),
        format!("ringgate_upstream_requests_total{{{backend_label},outcome=\"success\"}} 10"),
        format!(
            "ringgate_upstream_requests_total{{{backend_label},outcome=\"connect_failure\"}} 0"
        ),
        format!("ringgate_backend_healthy{{{backend_label}}} 1"),
    ];
    let body = eventually(Duration::from_secs(3), || metrics_with(admin, &want))
        .expect("metrics reflect the traffic");
    assert!(
        body.contains("# TYPE ringgate_responses_total counter"),
        "{body}"
    );
    assert_eq!(get(admin, "/healthz"), Ok((200, "ok\n".into())));
    assert_eq!(get(admin, "/nope").map(|r| r.0), Ok(404));

    let port = proxy.port;
    let in_flight = thread::spawn(move || Client::connect(port).get("/a/slow").status);
    eventually(Duration::from_secs(2), || backend.reached("/a/slow")).expect("a request in flight");
    proxy.signal("-TERM");
    eventually(Duration::from_secs(1), || match get(admin, "/healthz") {
        Ok((503, body)) if body == "draining\n" => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .expect("/healthz says draining while the request finishes");
    let gauge = ["ringgate_draining 1".to_string()];
    eventually(Duration::from_secs(1), || metrics_with(admin, &gauge)).expect("draining gauge");
    assert_eq!(in_flight.join().expect("client"), 200);
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
}

#[test]
fn an_admin_address_in_use_stops_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let backend = Backend::start("b", Behaviour::Ok);
    let toml =
        ProxyConfig::new(backend.addr()).to_toml() + &format!("\n[admin]\naddress = \"{addr}\"\n");
    let config = ringgate_tests::proxy::write_temp("ringgate-test", "toml", toml.as_bytes());
    let out = ringgate_tests::proxy::run_ringgate(&["-c".as_ref(), config.as_os_str()]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains(&format!("admin.address {addr}: Address already in use")),
        "{}",
        out.stderr
    );
}

/// One `GET /healthz` on a fresh connection with a short deadline: the
/// status line and how long the answer took.
fn probe_healthz(port: u16) -> Result<(String, Duration), String> {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| format!("read after {:?}: {e}", started.elapsed()))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    if !answer.ends_with("\r\n\r\nok\n") {
        return Err(format!("answer {answer:?}"));
    }
    Ok((status, started.elapsed()))
}

#[test]
fn silent_admin_clients_do_not_starve_healthz_probes() {
    let backend = Backend::start("b", Behaviour::Ok);
    let admin = free_port();
    let toml = ProxyConfig::new(backend.addr()).to_toml()
        + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let _proxy = Proxy::start(&toml);
    eventually(Duration::from_secs(3), || probe_healthz(admin)).expect("admin answers");
    // Clients that connect and send nothing, or half a request, and hold
    // on: more of them than the endpoint keeps, so its cap is crossed too.
    let mut silent = Vec::new();
    for i in 0..100 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).expect("connect");
        if i % 2 == 1 {
            use std::io::Write;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHo")
                .expect("half a request");
        }
        silent.push(s);
    }
    let mut slow = Vec::new();
    for _ in 0..12 {
        match probe_healthz(admin) {
            Ok((status, took))
                if status == "HTTP/1.1 200 OK" && took < Duration::from_millis(500) => {}
            other => slow.push(other),
        }
    }
    assert!(
        slow.is_empty(),
        "{} of 12 /healthz probes failed or took 500 ms or more with {} silent clients: {slow:?}",
        slow.len(),
        silent.len()
    );
}

/// The value of the sample line `name` (labels included) in a /metrics page.
fn sample(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn counters_never_go_back_across_a_reload_and_retired_workers_leave() {
    let backend = Backend::start("b", Behaviour::Ok);
    let admin = free_port();
    let admin_toml = format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let old = ProxyConfig::new(backend.addr()).workers(2);
    let mut new = ProxyConfig::new(backend.addr()).workers(1);
    new.port = old.port;
    let proxy = Proxy::start(&(old.to_toml() + &admin_toml));
    let ok = "ringgate_responses_total{class=\"2xx\"}";
    let label = format!("upstream=\"app\",backend=\"{}\"", backend.addr());
    let success = format!("ringgate_upstream_requests_total{{{label},outcome=\"success\"}}");
    // Each on its own connection, so both workers count some.
    for i in 0..10 {
        assert_eq!(
            Client::connect(proxy.port).get(&format!("/{i}")).status,
            200
        );
    }
    let want = [
        format!("{ok} 10"),
        format!("{success} 10"),
        "ringgate_workers_reporting 2".into(),
    ];
    eventually(Duration::from_secs(3), || metrics_with(admin, &want)).expect("ten counted");

    std::fs::write(&proxy.config_path, new.to_toml() + &admin_toml).expect("write");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(3), || {
        let log = proxy.stderr();
        log.contains("SIGHUP: reloaded").then_some(()).ok_or(log)
    })
    .expect("reloaded");
    for i in 0..3 {
        assert_eq!(
            Client::connect(proxy.port)
                .get(&format!("/after/{i}"))
                .status,
            200
        );
    }
    // Every scrape from here on: the counters only grow, and settle on
    // the old generation's totals plus the new one's.
    let mut seen: Vec<(u64, u64)> = vec![(10, 10)];
    let settled = eventually(Duration::from_secs(5), || {
        let (_, body) = get(admin, "/metrics")?;
        let now = (
            sample(&body, ok).unwrap_or_default(),
            sample(&body, &success).unwrap_or_default(),
        );
        seen.push(now);
        let reporting = sample(&body, "ringgate_workers_reporting");
        if now == (13, 13) && reporting == Some(1) {
            Ok(())
        } else {
            Err(format!("{now:?}, {reporting:?} workers reporting"))
        }
    });
    seen.dedup();
    let backwards = seen.windows(2).find(|w| w[1].0 < w[0].0 || w[1].1 < w[0].1);
    assert!(
        backwards.is_none(),
        "a counter went back: {backwards:?} in {seen:?}"
    );
    settled.expect("13 responses counted, and only the new generation's worker reports");
}
