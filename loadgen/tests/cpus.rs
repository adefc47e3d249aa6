//! ringload and a server under test on the same machine: with the server's
//! threads free to run anywhere, ringload says which CPUs it shares (on
//! stderr and in the report); with them pinned to CPU 0, ringload's workers
//! keep off CPU 0. The server is this test process (a real loopback server
//! on std threads), found by ringload through the listening socket's owner.

mod common;

use std::process::Command;

use common::{start, stderr, Behaviour};

/// ringload on `cpus` (a taskset list), or on this process's CPUs.
fn run(
    url: &str,
    json: &std::path::Path,
    cpus: Option<&str>,
) -> (std::process::Output, serde_json::Value) {
    let mut cmd = match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list, env!("CARGO_BIN_EXE_ringload")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ringload")),
    };
    let out = cmd
        .args([url, "--rate", "200", "-c", "2", "-d", "0.5", "--quiet"])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .expect("run ringload");
    let doc = serde_json::from_slice(&std::fs::read(json).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null);
    (out, doc)
}

#[test]
fn workers_share_an_unpinned_servers_cpus_openly_and_keep_off_a_pinned_ones() {
    let server = start(Behaviour::Fixed(std::time::Duration::ZERO));
    let dir = std::env::temp_dir().join(format!("ringload-cpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let me = format!("(pid {})", std::process::id());

    // The server's threads may run on every CPU: whatever ringload takes is shared.
    let (out, doc) = run(&server.url(), &json, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("WARNING: ringload shares CPU(s)") && err.contains(&me),
        "{err}"
    );
    let shared = doc["run"]["shared_cpus"].as_array().unwrap().clone();
    assert!(!shared.is_empty(), "{doc}");
    assert!(doc["run"]["local_server"].as_str().unwrap().contains(&me));
    let warnings = doc["warnings"].to_string();
    // Shared, whether or not ringload also fell behind (a busy machine).
    assert!(
        warnings.contains("with the server under test"),
        "{warnings}"
    );
    let cpus: Vec<u64> = doc["run"]["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();

    if cpus.len() >= 2 {
        // Pin every thread of the server (this process) to the first CPU;
        // ringload, its child, gets the whole mask back.
        let first = cpus[0].to_string();
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &first, &std::process::id().to_string()])
            .output()
            .expect("taskset (util-linux) runs");
        assert!(pinned.status.success(), "{}", stderr(&pinned));
        let all: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        let (out, doc) = run(&server.url(), &json, Some(&all.join(",")));
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(!err.contains("shares CPU"), "{err}");
        assert_eq!(doc["run"]["shared_cpus"], serde_json::json!([]), "{doc}");
        let now: Vec<u64> = doc["run"]["cpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert!(!now.is_empty() && !now.contains(&cpus[0]), "{doc}");
        let warnings = doc["warnings"].to_string();
        assert!(!warnings.contains("server under test"), "{warnings}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
