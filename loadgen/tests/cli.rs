//! The `ringload` binary end to end: exit codes and messages for bad input,
//! the JSON document's shape, the .hgrm text, a short sweep, and
//! `--check-id` against servers that echo ids, split or crossed.

mod common;

use std::time::Duration;

use common::{closed_port, ringload, start, stderr, Behaviour};

#[test]
fn a_malformed_url_exits_non_zero_with_the_reason() {
    let (out, _) = ringload(&["localhost:8080/x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("malformed URL \"localhost:8080/x\""), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unreachable_url_exits_non_zero_quickly() {
    let url = format!("http://{}/", closed_port());
    let (out, took) = ringload(&[&url, "-d", "5s", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ringload: cannot connect to"), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_garbage_server_exits_non_zero_with_a_parse_message() {
    let server = start(Behaviour::Garbage);
    let (out, _) = ringload(&[&server.url(), "-d", "5s", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("did not answer with valid HTTP/1.1"), "{err}");
}

#[test]
fn usage_errors_exit_with_two() {
    let (out, _) = ringload(&["http://127.0.0.1:1/", "--rate", "-3"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_and_hgrm_have_the_documented_shape() {
    let server = start(Behaviour::Fixed(Duration::ZERO));
    let dir = std::env::temp_dir().join(format!("ringload-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("r.json");
    let hgrm_path = dir.join("r.hgrm");
    let (out, _) = ringload(&[
        &server.url(),
        "--rate",
        "200",
        "-c",
        "4",
        "-d",
        "1s",
        "--json",
        json_path.to_str().unwrap(),
        "--hgrm",
        hgrm_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("latency (corrected)"), "{table}");

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(doc["requests"], 200);
    assert_eq!(doc["duration_s"], 1.0);
    assert_eq!(doc["rate_target"], 200.0);
    assert_eq!(doc["status"]["200"], 200);
    for k in ["connect", "timeout", "reset", "parse"] {
        assert_eq!(doc["errors"][k], 0, "errors.{k}");
    }
    for h in ["latency_us", "latency_uncorrected_us", "send_lag_us"] {
        for k in ["p50", "p75", "p90", "p99", "p999", "p9999", "max"] {
            assert!(doc[h][k].is_u64(), "{h}.{k} in {doc}");
        }
        assert!(doc[h]["p50"].as_u64() <= doc[h]["max"].as_u64());
    }
    assert!(doc["latency_us"]["p50"].as_u64().unwrap() > 0);
    let timeline = doc["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    let total: u64 = timeline
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 200);
    assert!(timeline[0]["t"].is_u64() && timeline[0]["p99_us"].is_u64());
    assert_eq!(doc["run"]["cores"], 1);
    assert_eq!(doc["run"]["connections"], 4);
    assert_eq!(doc["run"]["url"], server.url());
    assert!(doc["run"]["version"].is_string());

    let hgrm = std::fs::read_to_string(&hgrm_path).unwrap();
    assert!(hgrm.trim_start().starts_with("Value"), "{hgrm}");
    assert!(hgrm.contains("1/(1-Percentile)"));
    assert!(hgrm.contains("#[Max     ="));
    assert!(hgrm.contains("Total count    =          200]"), "{hgrm}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_reports_the_highest_rate_within_the_slo_and_the_curve() {
    // A server that takes ~1 ms: the closed-loop maximum over 2 connections
    // is well under 2000/s, and every step but perhaps the last stays far
    // under a 200 ms objective.
    let server = start(Behaviour::Fixed(Duration::from_millis(1)));
    let dir = std::env::temp_dir().join(format!("ringload-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("s.json");
    let (out, took) = ringload(&[
        &server.url(),
        "--sweep",
        "--sweep-step",
        "25",
        "--slo",
        "200ms",
        "-c",
        "2",
        "-d",
        "300ms",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let sweep = &doc["sweep"];
    let max = sweep["closed_loop_max"].as_f64().unwrap();
    assert!(max > 100.0 && max < 2000.0, "{max}");
    let steps = sweep["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 4);
    let first = steps[0]["rate_target"].as_f64().unwrap();
    assert!((first - 0.25 * max).abs() < 1.0);
    assert!(steps[0]["within_slo"].as_bool().unwrap());
    let best = sweep["best_rate"].as_f64().unwrap();
    assert!(best >= first);
    assert!(String::from_utf8_lossy(&out.stdout).contains("highest rate within the objective"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn json_of(args: &[&str], name: &str) -> (std::process::Output, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("ringload-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("r.json");
    let mut all = args.to_vec();
    all.extend(["--json", json_path.to_str().unwrap()]);
    let (out, _) = ringload(&all);
    let doc = serde_json::from_slice(&std::fs::read(&json_path).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    (out, doc)
}

#[test]
fn check_id_passes_when_every_response_echoes_its_id_however_it_is_framed_and_split() {
    for (split, chunked) in [(true, false), (false, true), (true, true)] {
        let server = start(Behaviour::EchoTarget { split, chunked });
        let (out, doc) = json_of(
            &[
                &server.url(),
                "--rate",
                "200",
                "-c",
                "4",
                "-d",
                "1s",
                "--check-id",
                "rid",
            ],
            "echo",
        );
        assert!(
            out.status.success(),
            "split {split} chunked {chunked}: {}",
            stderr(&out)
        );
        assert_eq!(doc["id_mismatches"], 0, "{doc}");
        assert_eq!(doc["id_check"]["name"], "rid");
        assert_eq!(doc["id_check"]["checked"], 200, "every response checked");
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("rid: 200 checked, 0 mismatches"), "{table}");
    }
}

#[test]
fn check_id_keeps_ids_per_request_when_pipelining() {
    let server = start(Behaviour::EchoTarget {
        split: false,
        chunked: false,
    });
    let (out, doc) = json_of(
        &[
            &server.url(),
            "-c",
            "2",
            "--pipeline",
            "8",
            "-d",
            "300ms",
            "--check-id",
            "rid",
        ],
        "pipeline",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(doc["id_mismatches"], 0, "{doc}");
    assert!(doc["id_check"]["checked"].as_u64().unwrap() >= doc["requests"].as_u64().unwrap());
    // Without --check-id the report says so.
    let (_, plain) = json_of(&[&server.url(), "-c", "1", "-d", "100ms"], "plain");
    assert_eq!(plain["id_check"], serde_json::Value::Null);
    assert_eq!(plain["id_mismatches"], 0);
}

#[test]
fn crossed_or_missing_ids_are_counted_and_exit_with_three() {
    let server = start(Behaviour::CrossedIds);
    let (out, doc) = json_of(
        &[
            &server.url(),
            "--rate",
            "200",
            "-c",
            "4",
            "-d",
            "1s",
            "--check-id",
            "rid",
        ],
        "crossed",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // The probe is the server's request 1; requests 2..=201 are the run's.
    assert_eq!(doc["id_check"]["checked"], 200);
    assert_eq!(doc["id_check"]["other"], 10, "{doc}");
    assert_eq!(doc["id_check"]["missing"], 10, "{doc}");
    assert_eq!(doc["id_mismatches"], 20);
    assert_eq!(doc["id_check"]["examples"].as_array().unwrap().len(), 5);
    let err = stderr(&out);
    assert!(
        err.contains("20 of 200 responses did not carry their request's id"),
        "{err}"
    );
    assert!(err.contains("with rid=00000000000000000000"), "{err}");
}

#[test]
fn check_id_against_a_server_that_does_not_echo_stops_at_the_probe() {
    let server = start(Behaviour::Fixed(Duration::ZERO));
    let (out, _) = ringload(&[&server.url(), "-d", "5s", "--check-id", "rid"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--check-id"), "{err}");
    assert!(
        err.contains("must echo the request's rid query parameter"),
        "{err}"
    );
}

#[test]
fn a_sweep_in_which_no_rate_meets_the_objective_exits_with_four() {
    // Every response takes 5 ms: no step can keep p99 under 1 ms.
    let server = start(Behaviour::Fixed(Duration::from_millis(5)));
    let (out, _) = ringload(&[
        &server.url(),
        "--sweep",
        "--sweep-step",
        "50",
        "--slo",
        "1ms",
        "-c",
        "2",
        "-d",
        "0.3",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--sweep: no rate met the objective"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no rate met the objective"));
}
