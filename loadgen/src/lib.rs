//! ringgate-loadgen: `ringload`, the load generator that ships with ringgate,
//! and the engine behind `ringgate demo`.
//!
//! It measures tail latency honestly: in open-loop mode (`--rate`) every
//! request has an intended send time on a fixed schedule and its latency is
//! counted from then (coordinated-omission correction, as wrk2 does); in
//! closed-loop mode the service times are post-corrected. Workers are monoio
//! runtimes on io_uring, one pinned per core, sharing no runtime with the
//! proxy, and by default off the CPUs of a local server under test.
//!
//! Code map: [`schedule`] (intended send times, pure), [`record`]
//! (histograms and the correction, pure), [`target`] (URLs and request
//! bytes), [`id`] (per-request ids and their check, pure), [`local`] (the
//! server under test's CPUs when it runs on this machine), [`client`] (one
//! connection's I/O and response framing), [`pacer`] (precise slot waits),
//! [`engine`] (worker threads and the per-connection loop), [`sweep`] (the
//! rate search), [`report`] (table, JSON, hgrm), [`cli`] (flags).
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod id;
pub mod local;
pub mod pacer;
pub mod record;
pub mod report;
pub mod ring_flags;
pub mod schedule;
pub mod sweep;
pub mod target;

use std::net::SocketAddr;
use std::time::Duration;

pub use config::{RunConfig, RunOptions};
pub use engine::run;
pub use record::ErrorClass;
pub use report::Report;
pub use schedule::Arrival;

/// Why a run could not start or produce a result. Each message is meant for
/// an operator, whole; the binary prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    #[error("{}", probe_message(url, addr, *class, why))]
    Probe {
        url: String,
        addr: SocketAddr,
        class: ErrorClass,
        why: String,
    },
    #[error("{url}: --check-id: {why}; the server must echo the request's {name} query parameter in the response body")]
    IdProbe {
        url: String,
        name: String,
        why: String,
    },
    #[error("{}", id_message(.0))]
    IdMismatch(record::IdCounts),
    #[error("cannot start a load worker: {0}")]
    Executor(String),
    #[error("{0}")]
    NoResponse(String),
    #[error("--sweep: no rate met the objective: {0}")]
    NoRateWithinObjective(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

fn probe_message(url: &str, addr: &SocketAddr, class: ErrorClass, why: &str) -> String {
    match class {
        ErrorClass::Connect => format!("cannot connect to {url} ({addr}): {why}"),
        ErrorClass::Timeout => format!("{url} ({addr}) did not answer within --timeout: {why}"),
        ErrorClass::Reset => {
            format!("{url} ({addr}) closed the connection without a response: {why}")
        }
        ErrorClass::Parse => format!("{url} ({addr}) did not answer with valid HTTP/1.1: {why}"),
    }
}

fn id_message(ids: &record::IdCounts) -> String {
    let mut s = format!(
        "{} of {} responses did not carry their request's id ({} another request's, {} none)",
        ids.mismatches(),
        ids.checked,
        ids.other,
        ids.missing
    );
    for e in &ids.examples {
        s.push_str("\n  ");
        s.push_str(e);
    }
    s
}

/// The closed-loop run `ringgate demo` uses: `connections` connections on
/// `cores` unpinned workers (the proxy under test owns the pinned cores),
/// each sending its next request as soon as the last response is in.
pub fn closed_loop(
    url: &str,
    connections: usize,
    duration: Duration,
    cores: usize,
) -> Result<Report, Error> {
    let config = RunConfig::new(RunOptions {
        urls: vec![url.to_string()],
        connections,
        duration,
        cores: Some(cores.max(1).min(config::allowed_cpus().len())),
        pin: false,
        ..RunOptions::default()
    })?;
    run(&config)
}
