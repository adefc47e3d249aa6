//! Counters, the snapshots workers report them in, and their Prometheus
//! rendering. Each worker counts in plain cells only it writes; every
//! `SNAPSHOT_TICKS` gossip ticks it sends a snapshot to the admin thread
//! (`admin.rs`) over a bounded crossbeam channel, never waiting (a full
//! channel drops the snapshot; the next one replaces it). The admin thread,
//! off the workers' hot path, keeps the latest snapshot of each worker and
//! serves their sum: figures lag by at most `SNAPSHOT_TICKS` gossip
//! intervals. No I/O here.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use ringgate_core::backend_view::Outcome;

use crate::worker::Worker;

/// The channel end a worker's ticker reports on.
pub type SnapshotTx = Sender<Snapshot>;

/// Snapshots every 10 gossip ticks: 100 ms with the default interval.
pub const SNAPSHOT_TICKS: u64 = 10;

/// Outcomes of upstream attempts, in the order of [`OUTCOME_NAMES`].
pub const OUTCOMES: usize = 6;
const OUTCOME_NAMES: [&str; OUTCOMES] = [
    "success",
    "5xx",
    "connect_failure",
    "timeout",
    "reset",
    "aborted",
];

pub fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Success { .. } => 0,
        Outcome::Status5xx => 1,
        Outcome::ConnectFailure => 2,
        Outcome::Timeout => 3,
        Outcome::Reset => 4,
        Outcome::Aborted => 5,
    }
}

/// One worker's client-side counters.
#[derive(Default)]
pub struct Counters {
    /// Responses by status class: index `status / 100` (1..=5).
    responses: [Cell<u64>; 6],
    pub accepted: Cell<u64>,
    /// Connections closed at accept because the worker was at
    /// `max_connections_per_worker`.
    pub refused: Cell<u64>,
}

impl Counters {
    /// A response with `status` went out (0: none did; not counted).
    pub fn response(&self, status: u16) {
        if let Some(c) = self
            .responses
            .get(usize::from(status / 100))
            .filter(|_| status >= 100)
        {
            c.set(c.get() + 1);
        }
    }

    pub fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }
}

/// What a worker reports.
pub struct Snapshot {
    pub worker: usize,
    /// Config generation of the worker: after a reload the newer one's
    /// snapshot replaces the older one's for the same worker id.
    pub generation: u64,
    pub responses: [u64; 6],
    pub accepted: u64,
    pub refused: u64,
    pub open: u64,
    pub gossip_dropped: u64,
    pub draining: bool,
    pub backends: Vec<BackendSnapshot>,
}

impl Snapshot {
    pub fn new(worker: usize, counters: &Counters) -> Snapshot {
        Snapshot {
            worker,
            generation: 0,
            responses: std::array::from_fn(|i| counters.responses[i].get()),
            accepted: counters.accepted.get(),
            refused: counters.refused.get(),
            open: 0,
            gossip_dropped: 0,
            draining: false,
            backends: Vec::new(),
        }
    }
}

pub struct BackendSnapshot {
    /// Labels, by name and address: indices change with a reload.
    pub upstream: String,
    pub backend: SocketAddr,
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: u32,
    pub connections: u32,
    pub outcomes: [u64; OUTCOMES],
}

/// The Prometheus text exposition of the sum of the workers' snapshots.
pub fn render(snaps: &[&Snapshot]) -> String {
    let sum = |f: &dyn Fn(&Snapshot) -> u64| snaps.iter().map(|s| f(s)).sum::<u64>();
    let mut out = String::with_capacity(4096);
    let help = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    help(
        &mut out,
        "ringgate_build_info",
        "gauge",
        "Version of the running binary.",
    );
    let _ = writeln!(
        out,
        "ringgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // Node-wide figures without labels: (name, kind, help, value).
    let draining = u64::from(snaps.iter().any(|s| s.draining));
    let plain: [(&str, &str, &str, u64); 6] = [
        (
            "ringgate_workers_reporting",
            "gauge",
            "Workers whose snapshot the admin thread holds.",
            snaps.len() as u64,
        ),
        (
            "ringgate_draining",
            "gauge",
            "1 while a graceful stop is in progress.",
            draining,
        ),
        (
            "ringgate_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            sum(&|s| s.accepted),
        ),
        (
            "ringgate_connections_refused_total",
            "counter",
            "Client connections closed at accept: worker at max_connections_per_worker.",
            sum(&|s| s.refused),
        ),
        (
            "ringgate_connections_open",
            "gauge",
            "Client connections open.",
            sum(&|s| s.open),
        ),
        (
            "ringgate_gossip_dropped_total",
            "counter",
            "Gossip messages dropped because an inbox was full.",
            sum(&|s| s.gossip_dropped),
        ),
    ];
    for (name, kind, text, value) in plain {
        help(&mut out, name, kind, text);
        let _ = writeln!(out, "{name} {value}");
    }
    help(
        &mut out,
        "ringgate_responses_total",
        "counter",
        "Responses sent to clients, by status class.",
    );
    for class in 1..=5 {
        let n = sum(&|s| s.responses[class]);
        let _ = writeln!(out, "ringgate_responses_total{{class=\"{class}xx\"}} {n}");
    }
    // Every backend any worker reported, labelled by name and address.
    let mut backends: Vec<(&str, SocketAddr)> = snaps
        .iter()
        .flat_map(|s| s.backends.iter().map(|x| (x.upstream.as_str(), x.backend)))
        .collect();
    backends.sort();
    backends.dedup();
    let entries = |u: &str, b: SocketAddr| {
        let u = u.to_owned();
        snaps.iter().filter_map(move |s| {
            s.backends
                .iter()
                .find(|x| x.upstream == u && x.backend == b)
        })
    };
    let label = |u: &str, b: SocketAddr| format!("upstream=\"{u}\",backend=\"{b}\"");
    help(
        &mut out,
        "ringgate_upstream_requests_total",
        "counter",
        "Attempts sent to a backend, by how they ended.",
    );
    for &(u, b) in &backends {
        for (i, name) in OUTCOME_NAMES.iter().enumerate() {
            let n: u64 = entries(u, b).map(|x| x.outcomes[i]).sum();
            let _ = writeln!(
                out,
                "ringgate_upstream_requests_total{{{},outcome=\"{name}\"}} {n}",
                label(u, b)
            );
        }
    }
    type Gauge = fn(&BackendSnapshot) -> u64;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "ringgate_backend_ejected_workers",
            "Workers that have the backend ejected by outlier detection.",
            |x| u64::from(x.ejected),
        ),
        (
            "ringgate_backend_in_flight",
            "Requests in flight to the backend.",
            |x| u64::from(x.in_flight),
        ),
        (
            "ringgate_backend_connections",
            "Upstream connections open to the backend, idle ones included.",
            |x| u64::from(x.connections),
        ),
    ];
    help(
        &mut out,
        "ringgate_backend_healthy",
        "gauge",
        "1 when active health checks pass (every worker shares the prober's view).",
    );
    for &(u, b) in &backends {
        let healthy = entries(u, b).next().is_none_or(|x| x.healthy);
        let _ = writeln!(
            out,
            "ringgate_backend_healthy{{{}}} {}",
            label(u, b),
            u8::from(healthy)
        );
    }
    for (name, text, value) in gauges {
        help(&mut out, name, "gauge", text);
        for &(u, b) in &backends {
            let n: u64 = entries(u, b).map(value).sum();
            let _ = writeln!(out, "{name}{{{}}} {n}", label(u, b));
        }
    }
    out
}

/// This worker's counters and backend views, as the admin thread sums them.
pub fn snapshot(worker: &Worker, gossip_dropped: u64) -> Snapshot {
    let now = Instant::now();
    let mut s = Snapshot::new(worker.id, &worker.counters);
    s.generation = worker.generation;
    s.open = worker.open_connections() as u64;
    s.gossip_dropped = gossip_dropped;
    s.draining = worker.draining.get();
    for upstream in &worker.upstreams {
        let view = upstream.view.borrow();
        for b in 0..view.len() {
            s.backends.push(BackendSnapshot {
                upstream: upstream.config.name.clone(),
                backend: upstream.backend_addr(b),
                healthy: view.is_healthy(b),
                ejected: view.is_ejected(b, now),
                in_flight: view.in_flight(b),
                connections: upstream.open_connections(b),
                outcomes: std::array::from_fn(|i| upstream.outcomes[b][i].get()),
            });
        }
    }
    s
}

/// Snapshots the admin thread may fall behind by before workers' sends are
/// dropped: a few per worker of a large node.
const SNAPSHOT_QUEUE: usize = 1024;

/// Makes the channel the workers report on.
pub fn channel() -> (Sender<Snapshot>, Receiver<Snapshot>) {
    crossbeam_channel::bounded(SNAPSHOT_QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_count_by_class_and_ignore_no_status() {
        let c = Counters::default();
        for status in [0, 99, 101, 200, 204, 404, 429, 502, 599] {
            c.response(status);
        }
        let counts: Vec<u64> = c.responses.iter().map(Cell::get).collect();
        assert_eq!(counts, [0, 1, 2, 0, 2, 2]);
    }
}
