//! ringgate-bench: the side-by-side comparison runner (`compare`) and, in
//! `benches/`, criterion micro-benchmarks of ringgate-core.
//!
//! The runner starts a backend, then each proxy in turn with equivalent
//! configs it writes itself, pins the proxy to one CPU and the load and
//! backend to the others, drives it with a load tool and records requests/s,
//! latency percentiles, errors and the proxy's CPU time per request. It owns
//! processes and files for the length of a run and nothing else: it never
//! touches the proxies' system-wide configs or services.
//!
//! Modules: [`compare`] runs the whole comparison; [`proxy`] knows each proxy's
//! config and process; [`backend`] the upstream it proxies to; [`load`] the
//! load tools (ringload, wrk, a built-in closed-loop client); [`process`] starts
//! and stops process trees; [`procfs`] reads their CPU time from /proc; [`report`] writes the Markdown table and SVG plots.
#![deny(unsafe_code)]

pub mod backend;
pub mod compare;
pub mod load;
pub mod process;
pub mod procfs;
pub mod proxy;
pub mod report;

use std::io;
use std::path::PathBuf;

/// What can stop a comparison run. Proxies or tools that are merely missing
/// are not errors: they become notes in the report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed: {why}")]
    Tool { tool: String, why: String },
    #[error("bad report from {tool}: {why}")]
    Report { tool: String, why: String },
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}

/// `name` on PATH (or the usual sbin directories, where nginx and haproxy
/// live but which a non-root PATH may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The CPUs this process may run on, in order (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// How the run places its processes: the proxy alone on `proxy`, the
/// backend and the load on `others`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placement {
    pub proxy: Vec<usize>,
    pub others: Vec<usize>,
    /// False on a one-CPU machine (or without `taskset`): everything shares.
    pub isolated: bool,
}

impl Placement {
    pub fn from_cpus(cpus: &[usize], taskset: bool) -> Placement {
        match cpus {
            [first, rest @ ..] if !rest.is_empty() && taskset => Placement {
                proxy: vec![*first],
                others: rest.to_vec(),
                isolated: true,
            },
            _ => Placement {
                proxy: cpus.to_vec(),
                others: cpus.to_vec(),
                isolated: false,
            },
        }
    }
}

/// A `Command` for `program` restricted to `cpus` through `taskset -c`
/// (taskset execs the program, so the child's PID is the program's).
pub fn pinned_command(program: &std::path::Path, cpus: &[usize]) -> std::process::Command {
    match find_program("taskset") {
        Some(taskset) if !cpus.is_empty() => {
            let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
            let mut cmd = std::process::Command::new(taskset);
            cmd.arg("-c").arg(list.join(",")).arg(program);
            cmd
        }
        _ => std::process::Command::new(program),
    }
}

/// A free loopback TCP port (bound, then released: a small race with other
/// programs picking ports at the same moment, acceptable on a bench box).
pub fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("bind"))?;
    let port = listener
        .local_addr()
        .map_err(BenchError::io("local_addr"))?
        .port();
    Ok(port)
}
