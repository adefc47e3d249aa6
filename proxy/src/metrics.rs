//! Counters and the admin endpoint (`/metrics`, `/healthz`). Each worker
//! counts in plain cells only it writes; every `SNAPSHOT_TICKS` gossip
//! ticks it sends a snapshot to the admin thread over a bounded crossbeam
//! channel, never waiting (a full channel drops the snapshot; the next one
//! replaces it). The admin thread, off the workers' hot path, keeps the
//! latest snapshot of each worker and serves their sum: figures lag by at
//! most `SNAPSHOT_TICKS` gossip intervals.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ringgate_core::backend_view::Outcome;

use crate::stop::StopFlag;
use crate::worker::Worker;

/// The channel end a worker's ticker reports on.
pub type SnapshotTx = Sender<Snapshot>;

/// Snapshots every 10 gossip ticks: 100 ms with the default interval.
pub const SNAPSHOT_TICKS: u64 = 10;
/// Longest an admin request may take to arrive or be answered.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the admin thread looks for a scrape between snapshots.
const ADMIN_POLL: Duration = Duration::from_millis(20);
const ADMIN_MAX_HEAD: usize = 8 * 1024;

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

/// Binds the admin address (so a bad address fails start-up) and starts
/// the admin thread.
pub fn spawn_admin(
    address: SocketAddr,
    snapshots: Receiver<Snapshot>,
    stopping: StopFlag,
) -> io::Result<()> {
    let listener = TcpListener::bind(address)
        .map_err(|e| io::Error::new(e.kind(), format!("admin.address {address}: {e}")))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            // The newest snapshot of each worker id.
            let mut latest: BTreeMap<usize, Snapshot> = BTreeMap::new();
            loop {
                match snapshots.recv_timeout(ADMIN_POLL) {
                    Ok(s) => {
                        let newer = latest
                            .get(&s.worker)
                            .is_none_or(|old| s.generation >= old.generation);
                        if newer {
                            latest.insert(s.worker, s);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    // Every worker is gone: the process is about to exit.
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                while let Ok((stream, _)) = listener.accept() {
                    let snaps: Vec<&Snapshot> = latest.values().collect();
                    let _ = answer(stream, &snaps, &stopping);
                }
            }
        })?;
    Ok(())
}

/// One request per connection: `GET /metrics`, `GET /healthz`, else 404.
fn answer(mut stream: TcpStream, snaps: &[&Snapshot], stop: &StopFlag) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let deadline = Instant::now() + ADMIN_IO_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > ADMIN_MAX_HEAD || Instant::now() > deadline {
            return respond(
                &mut stream,
                431,
                "text/plain",
                "request head too large or slow\n",
            );
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let body = render(snaps);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body)
        }
        (b"GET", b"/healthz") if stop.requested() => {
            respond(&mut stream, 503, "text/plain", "draining\n")
        }
        (b"GET", b"/healthz") => respond(&mut stream, 200, "text/plain", "ok\n"),
        (b"GET", _) => respond(&mut stream, 404, "text/plain", "not found\n"),
        _ => respond(&mut stream, 405, "text/plain", "only GET\n"),
    }
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
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
