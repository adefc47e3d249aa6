//! `compare --quick` against whatever is installed: ringgate at least (CI
//! builds it first), nginx and HAProxy when present. Asserts on the shape of
//! the outputs and that requests went through, never on speed.

use ringgate_bench::compare::{self, BackendChoice, LoadChoice, Options};
use ringgate_bench::proxy::{find_built_binary, ProxyKind};
use std::path::PathBuf;
use std::time::Duration;

fn quick_options(out: PathBuf) -> Options {
    Options {
        proxies: ProxyKind::ALL.to_vec(),
        duration: Duration::from_secs(10),
        connections: 64,
        out,
        quick: true,
        ladder_percent: compare::DEFAULT_LADDER_PERCENT.to_vec(),
        load: LoadChoice::Auto,
        backend: BackendChoice::Auto,
        ringgate_bin: std::env::var_os("RINGGATE_BIN").map(PathBuf::from),
        ringload_bin: std::env::var_os("RINGLOAD_BIN").map(PathBuf::from),
        command: "compare --quick (test)".to_owned(),
    }
}

#[test]
fn quick_compare_measures_every_installed_proxy_and_writes_its_outputs() {
    assert!(
        std::env::var_os("RINGGATE_BIN").is_some() || find_built_binary("ringgate").is_some(),
        "build ringgate first: cargo build -p ringgate"
    );
    let out = std::env::temp_dir().join(format!("ringgate-bench-quick.{}", std::process::id()));
    let c = compare::run(quick_options(out.clone())).expect("quick compare runs");

    assert!(
        c.quick && c.connections == 8 && c.duration_s == 1.0,
        "{c:?}"
    );
    let ringgate = c
        .runs
        .iter()
        .find(|r| r.proxy == ProxyKind::Ringgate)
        .unwrap_or_else(|| panic!("ringgate measured; notes: {:?}", c.notes));
    for run in &c.runs {
        let max = &run.max;
        assert!(max.load.requests > 0, "{}: {max:?}", run.proxy.name());
        assert!(max.rps > 0.0 && max.load.duration_s > 0.0, "{max:?}");
        assert_eq!(max.load.non_2xx, 0, "{}: {max:?}", run.proxy.name());
        let cpu = max.cpu_us_per_request.expect("CPU per request measured");
        assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
        let l = max.load.latency_us;
        assert!(
            l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
            "{l:?}"
        );
        // The ladder exists exactly when the load tool can hold a rate.
        assert_eq!(run.ladder.len(), c.ladder_percent.len(), "{run:?}");
        for p in &run.ladder {
            assert!(
                p.offered_rps.is_some_and(|r| r > 0.0) && p.load.requests > 0,
                "{p:?}"
            );
        }
    }
    assert!(
        ringgate.version.contains("ringgate"),
        "{}",
        ringgate.version
    );
    for kind in [ProxyKind::Nginx, ProxyKind::Haproxy] {
        let measured = c.runs.iter().any(|r| r.proxy == kind);
        let noted = c.notes.iter().any(|n| n.starts_with(kind.name()));
        assert!(
            measured ^ noted,
            "{}: measured or skipped with a note",
            kind.name()
        );
    }
    assert!(c
        .backend_direct
        .as_ref()
        .is_some_and(|p| p.load.requests > 0));

    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| ringgate |"), "{md}");
    assert!(
        md.contains("kernel") && md.contains("CPU µs/request"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).expect("json"))
            .expect("results.json parses");
    assert!(json["runs"].as_array().is_some_and(|r| !r.is_empty()));
    let svg = std::fs::read_to_string(out.join("throughput.svg")).expect("throughput.svg");
    assert!(
        svg.starts_with("<svg") && svg.contains("ringgate"),
        "{svg:.200}"
    );
    if !c.ladder_percent.is_empty() {
        let svg = std::fs::read_to_string(out.join("latency.svg")).expect("latency.svg");
        assert!(svg.contains("p99 latency"));
    }
    let _ = std::fs::remove_dir_all(&out);
}
