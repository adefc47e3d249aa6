//! The engine against loopback servers that stall, misbehave or lie: the
//! correction must show a stall that the service time hides, every error
//! must land in its class, and bad targets must fail fast with a message.

mod common;

use std::time::{Duration, Instant};

use common::{closed_port, exact_quantile, start, Behaviour};
use ringgate_loadgen::{run, Error, ErrorClass, RunConfig, RunOptions};

fn options(url: String) -> RunOptions {
    RunOptions {
        urls: vec![url],
        cores: Some(1),
        pin: false,
        timeout: Duration::from_secs(3),
        ..RunOptions::default()
    }
}

/// 500 req/s over 20 connections for 2 s; the server stalls every response
/// for 500 ms from the 376th request (~0.75 s in). 250 requests are meant
/// to leave during the stall and wait for its end: a quarter of the run, so
/// the corrected p90 is deep in the stall while the service time barely
/// notices (only the 20 requests on the wire see it).
#[test]
fn a_stall_shows_in_corrected_latency_and_not_in_service_time() {
    let stall = Duration::from_millis(500);
    let server = start(Behaviour::Stall {
        at: 376,
        len: stall,
    });
    let report = run(&RunConfig::new(RunOptions {
        rate: Some(500.0),
        connections: 20,
        duration: Duration::from_secs(2),
        keep_raw: true,
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    let m = &report.measured;
    assert_eq!(m.errors.total(), 0);
    let achieved = report.achieved_rate();
    assert!((achieved - 500.0).abs() <= 25.0, "achieved {achieved}/s");

    let p90 = report.latency_us(0.90);
    assert!(p90 > 100_000, "corrected p90 {p90} µs must show the stall");
    assert!(
        report.service_us(0.50) < 20_000,
        "service p50 {}",
        report.service_us(0.50)
    );
    assert!(
        report.service_us(0.90) < 50_000,
        "service p90 {}",
        report.service_us(0.90)
    );
    assert!(
        m.send_lag_us.max() > 400_000,
        "send lag max {}",
        m.send_lag_us.max()
    );

    // The schedule math (wrk2's view of a stall S in a run T at rate R):
    // R·S requests queue behind it with latencies spread evenly over
    // (0, S], a fraction f = S/T of the run, so for q > 1 − f the latency
    // quantile is S·(1 − (1 − q)/f). Here f = 0.25: p99 = 480 ms,
    // p90 = 300 ms. Within 10%.
    let f = stall.as_secs_f64() / 2.0;
    for q in [0.90, 0.99] {
        let want = stall.as_secs_f64() * 1e6 * (1.0 - (1.0 - q) / f);
        let got = report.latency_us(q) as f64;
        assert!(
            (got - want).abs() <= 0.10 * want,
            "p{q}: {got} µs vs model {want} µs"
        );
    }

    // Independent recomputation from the raw per-request timestamps: exact
    // quantiles of (done − intended) agree with the histogram to its 0.1%
    // resolution (plus 1 µs of rounding).
    let mut lat: Vec<u64> = m
        .raw
        .iter()
        .map(|r| (r.done_us - r.intended_us.unwrap()) as u64)
        .collect();
    let mut svc: Vec<u64> = m
        .raw
        .iter()
        .map(|r| (r.done_us - r.sent_us) as u64)
        .collect();
    assert_eq!(lat.len() as u64, m.requests);
    lat.sort_unstable();
    svc.sort_unstable();
    for q in [0.5, 0.75, 0.9, 0.99, 0.999] {
        let exact = exact_quantile(&lat, q).max(1);
        let hist = report.latency_us(q);
        assert!(
            hist.abs_diff(exact) <= exact / 1000 + 2,
            "latency p{q}: hist {hist} exact {exact}"
        );
        let exact = exact_quantile(&svc, q).max(1);
        let hist = report.service_us(q);
        assert!(
            hist.abs_diff(exact) <= exact / 1000 + 2,
            "service p{q}: hist {hist} exact {exact}"
        );
    }
    // And the timeline shows the hole and the burst after it.
    let seconds: Vec<u64> = m.timeline.iter().map(|s| s.requests).collect();
    assert!(seconds.len() >= 2, "{seconds:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("WAITED FOR A FREE CONNECTION")),
        "{}",
        report.table()
    );
}

#[test]
fn closed_loop_counts_every_response_and_post_corrects_a_stall() {
    let server = start(Behaviour::Stall {
        at: 200,
        len: Duration::from_millis(300),
    });
    let report = run(&RunConfig::new(RunOptions {
        connections: 4,
        duration: Duration::from_millis(1500),
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    let m = &report.measured;
    assert_eq!(m.errors.total(), 0);
    // Every request the server saw, except the probe, was measured.
    let seen = server.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(m.requests + 1, seen);
    assert_eq!(m.status.get(&200), Some(&m.requests));
    assert!(report.service_us(0.5) < 20_000);
    assert!(m.service_us.max() >= 290_000);
    // Post-correction adds the requests the stall hid.
    assert!(m.latency_us.len() > m.service_us.len());
    assert!(report.latency_us(0.999) >= report.service_us(0.999));
    assert!(m.send_lag_us.is_empty());
    assert!(report.rate_target.is_none());
}

#[test]
fn chunked_and_close_delimited_bodies_are_framed() {
    for b in [Behaviour::Chunked, Behaviour::CloseDelimited] {
        let server = start(b);
        let report = run(&RunConfig::new(RunOptions {
            rate: Some(100.0),
            connections: 2,
            duration: Duration::from_millis(500),
            ..options(server.url())
        })
        .unwrap())
        .unwrap();
        let m = &report.measured;
        assert_eq!(m.errors.total(), 0, "{:?}", m.errors);
        assert_eq!(m.requests, 50);
        assert_eq!(m.status.get(&200), Some(&50));
        assert!(m.bytes_received >= 50 * 40);
    }
}

#[test]
fn resets_and_error_statuses_are_counted_by_class_and_code() {
    let server = start(Behaviour::ResetEvery(5));
    let report = run(&RunConfig::new(RunOptions {
        rate: Some(200.0),
        connections: 2,
        duration: Duration::from_millis(500),
        probe: false,
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    let m = &report.measured;
    assert_eq!(m.requests + m.errors.total(), 100);
    assert!(m.errors.reset >= 15, "{:?}", m.errors);
    assert_eq!(m.errors.parse + m.errors.connect + m.errors.timeout, 0);
    assert_eq!(m.status.get(&503), Some(&m.requests));
    assert_eq!(m.ok_responses(), 0);
}

#[test]
fn pipelined_and_new_connection_modes_both_complete() {
    let server = start(Behaviour::Fixed(Duration::ZERO));
    let pipelined = run(&RunConfig::new(RunOptions {
        connections: 2,
        pipeline: 4,
        duration: Duration::from_millis(300),
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    assert_eq!(pipelined.measured.errors.total(), 0);
    assert!(pipelined.requests() > 100);
    let fresh = run(&RunConfig::new(RunOptions {
        rate: Some(200.0),
        connections: 4,
        keepalive: false,
        duration: Duration::from_millis(300),
        request: ringgate_loadgen::target::RequestSpec {
            method: "GET".into(),
            close: true,
            ..Default::default()
        },
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    assert_eq!(fresh.measured.errors.total(), 0);
    assert_eq!(fresh.requests(), 60);
}

#[test]
fn warmup_is_sent_but_not_recorded() {
    let server = start(Behaviour::Fixed(Duration::ZERO));
    let report = run(&RunConfig::new(RunOptions {
        rate: Some(200.0),
        connections: 2,
        warmup: Duration::from_millis(500),
        duration: Duration::from_millis(500),
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    assert_eq!(report.requests(), 100);
    let seen = server.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(seen, 1 + 100 + 100, "probe + warm-up + measured");
}

fn probe_error(url: String, timeout: Duration) -> (ErrorClass, String, Duration) {
    let t = Instant::now();
    let err = run(&RunConfig::new(RunOptions {
        timeout,
        ..options(url)
    })
    .unwrap())
    .expect_err("the run must fail");
    let elapsed = t.elapsed();
    match err {
        Error::Probe { class, .. } => (class, err.to_string(), elapsed),
        other => panic!("expected a probe error, got {other}"),
    }
}

#[test]
fn an_unreachable_server_fails_fast_with_a_connect_error() {
    let (class, msg, took) =
        probe_error(format!("http://{}/", closed_port()), Duration::from_secs(2));
    assert_eq!(class, ErrorClass::Connect);
    assert!(
        msg.starts_with("cannot connect to http://127.0.0.1:"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_server_speaking_garbage_is_a_parse_error() {
    let server = start(Behaviour::Garbage);
    let (class, msg, _) = probe_error(server.url(), Duration::from_secs(2));
    assert_eq!(class, ErrorClass::Parse);
    assert!(msg.contains("did not answer with valid HTTP/1.1"), "{msg}");
}

#[test]
fn a_silent_server_times_out_instead_of_hanging() {
    let server = start(Behaviour::Silent);
    let (class, _, took) = probe_error(server.url(), Duration::from_millis(300));
    assert_eq!(class, ErrorClass::Timeout);
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A request the server never answers, in the middle of a run (no probe to
/// catch it first): `--timeout` ends it, it counts as a timeout, and the run
/// still ends, in closed and in open loop.
#[test]
fn a_request_stuck_mid_run_ends_as_a_timeout_error() {
    let server = start(Behaviour::Silent);
    for rate in [None, Some(10.0)] {
        let t = Instant::now();
        let report = run(&RunConfig::new(RunOptions {
            rate,
            connections: 2,
            duration: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
            probe: false,
            ..options(server.url())
        })
        .unwrap())
        .unwrap();
        let took = t.elapsed();
        let m = &report.measured;
        // One request per connection (closed loop) or per 100 ms slot (open
        // loop), each stuck until its timeout, after the window's end.
        assert_eq!(m.errors.timeout, 2, "rate {rate:?}: {:?}", m.errors);
        assert_eq!(m.requests, 0);
        assert_eq!(m.errors.total(), 2);
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}

#[test]
fn bad_options_are_all_reported_at_once() {
    let err = RunConfig::new(RunOptions {
        urls: vec!["localhost:80".into(), "http://h:99999/".into()],
        rate: Some(-1.0),
        connections: 0,
        pipeline: 0,
        ..RunOptions::default()
    })
    .err()
    .expect("invalid");
    let msg = err.to_string();
    for want in [
        "localhost:80",
        "99999",
        "--rate",
        "--connections",
        "--pipeline",
    ] {
        assert!(msg.contains(want), "{want} missing from: {msg}");
    }
}

#[test]
fn a_slow_server_behind_schedule_is_not_blamed_on_ringload() {
    // 2 connections to a server taking 5 ms: at most ~400/s get through, so
    // a 1000/s schedule falls behind, with ringload idle in between.
    let server = start(Behaviour::Fixed(Duration::from_millis(5)));
    let report = run(&RunConfig::new(RunOptions {
        rate: Some(1000.0),
        connections: 2,
        duration: Duration::from_secs(1),
        ..options(server.url())
    })
    .unwrap())
    .unwrap();
    let sent = report.sent_rate();
    assert!(sent < 600.0, "sent {sent}/s inside the window");
    let busy = report
        .measured
        .busiest_worker
        .expect("schedstat is readable");
    assert!(busy < 0.5, "worker busy {busy}");
    let w = report.warnings.join("\n");
    assert!(!w.contains("RINGLOAD IS THE BOTTLENECK"), "{w}");
    assert!(w.contains("REQUESTS WAITED FOR A FREE CONNECTION"), "{w}");
}
