//! The request path takes no lock and touches no shared atomic: a scan of the
//! hot-path sources for the types that would. Gossip transport
//! (proxy/src/gossip.rs, crossbeam channels) runs on the per-worker ticker
//! and is deliberately not in the list.

use std::path::{Path, PathBuf};

const HOT_PATH: &[&str] = &[
    "proxy/src/accept.rs",
    "proxy/src/access_log.rs",
    "proxy/src/auth.rs",
    "proxy/src/downstream.rs",
    "proxy/src/error_log.rs",
    "proxy/src/exchange/mod.rs",
    "proxy/src/exchange/error.rs",
    "proxy/src/exchange/request.rs",
    "proxy/src/exchange/response.rs",
    "proxy/src/exchange/retry.rs",
    "proxy/src/io.rs",
    "proxy/src/log_buffer.rs",
    "proxy/src/proxy_protocol.rs",
    "proxy/src/tunnel.rs",
    "proxy/src/upstream.rs",
    "proxy/src/worker.rs",
];

/// Every module of ringgate-core is on the request path, those in
/// subdirectories (`core/src/auth/`) included.
fn core_modules(root: &Path) -> Vec<PathBuf> {
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("core/src is readable")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&root.join("core/src"), &mut files);
    files.sort();
    files
}

const FORBIDDEN: &[&str] = &[
    "Mutex",
    "RwLock",
    "Atomic",
    "Condvar",
    "Barrier",
    "crossbeam",
    "parking_lot",
    "static mut",
];

#[test]
fn request_path_takes_no_lock_and_no_shared_atomic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = HOT_PATH.iter().map(|p| root.join(p)).collect();
    files.extend(core_modules(&root));
    assert!(files.len() > HOT_PATH.len(), "core modules found");
    let mut hits = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "locks or atomics on the request path:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_scan_would_catch_a_lock() {
    // Guards the scan itself: a line that takes a lock must be reported.
    let code = "let g = state.lock(); let m: std::sync::Mutex<u8>;";
    assert!(FORBIDDEN.iter().any(|w| code.contains(w)));
}
