//! Counters, the snapshots workers report them in, and their Prometheus
//! rendering. Each worker counts in plain cells only it writes; every
//! `SNAPSHOT_TICKS` gossip ticks it sends a snapshot to the admin thread
//! (`admin.rs`) over a bounded crossbeam channel, never waiting (a full
//! channel drops the snapshot; the next one replaces it). The admin thread,
//! off the workers' hot path, keeps the latest snapshot of each worker in a
//! [`Tally`] and serves their sum: figures lag by at most `SNAPSHOT_TICKS`
//! gossip intervals. A worker that ends (its generation drained after a
//! reload) sends its final totals, which the tally keeps, so counters never
//! go back. No I/O here.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ringgate_core::backend_view::Outcome;

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
    /// Finished TLS handshakes, indexed like `TLS_HANDSHAKE_LABELS`.
    tls_handshakes: [Cell<u64>; 4],
    /// Failed TLS handshakes, indexed like `TLS_FAILURE_REASONS`.
    tls_failures: [Cell<u64>; 4],
    /// Connections served over HTTP/2.
    http2_connections: Cell<u64>,
    /// HTTP/2 connections closed for breaking a limit, indexed like
    /// `HTTP2_ABUSE_REASONS`.
    http2_abuse: [Cell<u64>; 4],
    /// Requests a route's validation refused, indexed like
    /// `VALIDATION_RULES`.
    validation_refusals: [Cell<u64>; 5],
    /// Requests refused by route authentication, indexed by
    /// `auth::Reason` (labels `Reason::LABELS`).
    auth_refusals: [Cell<u64>; AUTH_REASONS],
    /// Connections a `proxy_protocol` listener closed unforwarded, indexed
    /// like `PROXY_PROTOCOL_REASONS`.
    proxy_protocol_refused: [Cell<u64>; 4],
    /// Tunnels by kind (indexed like `TUNNEL_KINDS`): opened, open now,
    /// and the bytes relayed from and to their clients.
    tunnels: [Cell<u64>; TUNNEL_KINDS.len()],
    tunnels_open: [Cell<u64>; TUNNEL_KINDS.len()],
    tunnel_bytes: [[Cell<u64>; 2]; TUNNEL_KINDS.len()],
    /// Fleet syncs with Redis that succeeded and that failed (worker 0).
    pub fleet_syncs: Cell<u64>,
    pub fleet_failures: Cell<u64>,
}

/// What a tunnel carries, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// A connection of a `tcp` listener.
    Tcp,
    /// An HTTP connection a backend's `101` switched to WebSocket.
    WebSocket,
    /// One switched to another protocol a route's `upgrade` allows.
    Upgrade,
}

/// `kind` labels of the tunnel series, indexed by `TunnelKind as usize`.
const TUNNEL_KINDS: [&str; 3] = ["tcp", "websocket", "upgrade"];

const AUTH_REASONS: usize = ringgate_core::auth::Reason::COUNT;

/// (version, resumed) labels of `ringgate_tls_handshakes_total`.
const TLS_HANDSHAKE_LABELS: [(&str, &str); 4] = [
    ("1.2", "false"),
    ("1.2", "true"),
    ("1.3", "false"),
    ("1.3", "true"),
];

/// `reason` labels of `ringgate_tls_handshake_failures_total`.
const TLS_FAILURE_REASONS: [&str; 4] = ["timeout", "closed", "plain_http", "protocol"];

/// `rule` labels of `ringgate_validation_refusals_total`.
pub const VALIDATION_RULES: [&str; 5] = [
    "max_body",
    "content_types",
    "required_headers",
    "required_query",
    "body_schema",
];

/// `reason` labels of `ringgate_http2_abuse_total`.
const HTTP2_ABUSE_REASONS: [&str; 4] = ["frames", "resets", "control_frames", "continuation"];

/// `reason` labels of `ringgate_proxy_protocol_refused_total`, indexed by
/// `proxy_protocol::Refused::label_index`.
const PROXY_PROTOCOL_REASONS: [&str; 4] = ["untrusted", "malformed", "timeout", "closed"];

impl Counters {
    pub fn tls_handshake(&self, n: &crate::tls::Negotiated) {
        let v13 = n.version == Some(rustls::ProtocolVersion::TLSv1_3);
        Self::bump(&self.tls_handshakes[usize::from(v13) * 2 + usize::from(n.resumed)]);
    }

    pub fn tls_handshake_failed(&self, e: &crate::tls::HandshakeError) {
        use crate::tls::HandshakeError::*;
        let i = match e {
            TimedOut => 0,
            Closed => 1,
            PlainHttp => 2,
            Tls(_) => 3,
        };
        Self::bump(&self.tls_failures[i]);
    }

    pub fn proxy_protocol_refused(&self, why: crate::proxy_protocol::Refused) {
        Self::bump(&self.proxy_protocol_refused[why.label_index()]);
    }

    pub fn tunnel_opened(&self, kind: TunnelKind) {
        Self::bump(&self.tunnels[kind as usize]);
        Self::bump(&self.tunnels_open[kind as usize]);
    }

    pub fn tunnel_closed(&self, kind: TunnelKind) {
        let open = &self.tunnels_open[kind as usize];
        open.set(open.get().saturating_sub(1));
    }

    /// `n` bytes went from the client to the backend.
    pub fn tunnel_bytes_in(&self, kind: TunnelKind, n: usize) {
        let c = &self.tunnel_bytes[kind as usize][0];
        c.set(c.get() + n as u64);
    }

    /// `n` bytes went from the backend to the client.
    pub fn tunnel_bytes_out(&self, kind: TunnelKind, n: usize) {
        let c = &self.tunnel_bytes[kind as usize][1];
        c.set(c.get() + n as u64);
    }

    pub fn http2_connection(&self) {
        Self::bump(&self.http2_connections);
    }

    /// `why` is the frame guard's reason; its first word picks the label.
    pub fn http2_abuse(&self, why: &str) {
        let i = if why.contains("reset") {
            1
        } else if why.contains("control") {
            2
        } else if why.contains("CONTINUATION") {
            3
        } else {
            0
        };
        Self::bump(&self.http2_abuse[i]);
    }

    /// A route's validation refused a request by `rule` (one of
    /// `VALIDATION_RULES`).
    pub fn validation_refused(&self, rule: &str) {
        if let Some(i) = VALIDATION_RULES.iter().position(|r| *r == rule) {
            Self::bump(&self.validation_refusals[i]);
        }
    }

    pub fn auth_refused(&self, reason: ringgate_core::auth::Reason) {
        Self::bump(&self.auth_refusals[reason as usize]);
    }

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
    /// Config generation of the worker: workers of two generations run side
    /// by side while the older one drains after a reload.
    pub generation: u64,
    /// The worker's final totals, sent as it ends: the admin thread keeps
    /// its counters and forgets its gauges.
    pub last: bool,
    pub responses: [u64; 6],
    pub accepted: u64,
    pub refused: u64,
    pub tls_handshakes: [u64; 4],
    pub tls_failures: [u64; 4],
    pub http2_connections: u64,
    pub http2_abuse: [u64; 4],
    pub validation_refusals: [u64; 5],
    pub auth_refusals: [u64; AUTH_REASONS],
    pub proxy_protocol_refused: [u64; 4],
    /// By kind, indexed like `TUNNEL_KINDS`.
    pub tunnels: [u64; TUNNEL_KINDS.len()],
    pub tunnels_open: [u64; TUNNEL_KINDS.len()],
    /// Bytes relayed by tunnels of each kind: from clients, to clients.
    pub tunnel_bytes: [[u64; 2]; TUNNEL_KINDS.len()],
    pub open: u64,
    pub gossip_dropped: u64,
    /// Fleet syncs: succeeded, failed.
    pub fleet_syncs: [u64; 2],
    /// Whether Redis answers the fleet syncer (`None`: no fleet).
    pub fleet_reachable: Option<bool>,
    /// (upstream, backend name, [lookups, failures]) per followed DNS
    /// name; worker 0 reports them for its generation.
    pub dns: Vec<(String, String, [u64; 2])>,
    pub draining: bool,
    pub backends: Vec<BackendSnapshot>,
}

impl Snapshot {
    pub fn new(worker: usize, counters: &Counters) -> Snapshot {
        Snapshot {
            worker,
            generation: 0,
            last: false,
            responses: std::array::from_fn(|i| counters.responses[i].get()),
            accepted: counters.accepted.get(),
            refused: counters.refused.get(),
            tls_handshakes: std::array::from_fn(|i| counters.tls_handshakes[i].get()),
            tls_failures: std::array::from_fn(|i| counters.tls_failures[i].get()),
            http2_connections: counters.http2_connections.get(),
            http2_abuse: std::array::from_fn(|i| counters.http2_abuse[i].get()),
            validation_refusals: std::array::from_fn(|i| counters.validation_refusals[i].get()),
            auth_refusals: std::array::from_fn(|i| counters.auth_refusals[i].get()),
            proxy_protocol_refused: std::array::from_fn(|i| {
                counters.proxy_protocol_refused[i].get()
            }),
            tunnels: std::array::from_fn(|k| counters.tunnels[k].get()),
            tunnels_open: std::array::from_fn(|k| counters.tunnels_open[k].get()),
            tunnel_bytes: std::array::from_fn(|k| {
                std::array::from_fn(|d| counters.tunnel_bytes[k][d].get())
            }),
            open: 0,
            gossip_dropped: 0,
            fleet_syncs: [counters.fleet_syncs.get(), counters.fleet_failures.get()],
            fleet_reachable: None,
            dns: Vec::new(),
            draining: false,
            backends: Vec::new(),
        }
    }
}

pub struct BackendSnapshot {
    /// Labels, by name and address: indices change with a reload.
    pub upstream: String,
    pub backend: SocketAddr,
    /// In a slot now; `false`: the counts of a backend DNS took away
    /// (which may be back in another slot, reported separately).
    pub present: bool,
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: u32,
    pub connections: u32,
    pub outcomes: [u64; OUTCOMES],
}

/// A worker of an older generation that has sent nothing for this long
/// ended without its last snapshot arriving (the channel was full): its
/// gauges stop counting; its counters, which only grow, still do. Ten
/// snapshot periods at the longest `gossip_interval` (1 s).
const SILENT_AFTER: Duration = Duration::from_secs(100);

/// Counters that only grow, summed.
#[derive(Default)]
struct Totals {
    responses: [u64; 6],
    accepted: u64,
    refused: u64,
    tls_handshakes: [u64; 4],
    tls_failures: [u64; 4],
    http2_connections: u64,
    http2_abuse: [u64; 4],
    validation_refusals: [u64; 5],
    auth_refusals: [u64; AUTH_REASONS],
    proxy_protocol_refused: [u64; 4],
    tunnels: [u64; TUNNEL_KINDS.len()],
    tunnel_bytes: [[u64; 2]; TUNNEL_KINDS.len()],
    gossip_dropped: u64,
    fleet_syncs: [u64; 2],
    /// DNS lookups and failures, by (upstream name, backend name).
    dns: BTreeMap<(String, String), [u64; 2]>,
    /// Attempts by outcome, by (upstream name, backend address).
    outcomes: BTreeMap<(String, SocketAddr), [u64; OUTCOMES]>,
}

impl Totals {
    fn add(&mut self, s: &Snapshot) {
        for (sum, n) in self.responses.iter_mut().zip(s.responses) {
            *sum += n;
        }
        self.accepted += s.accepted;
        self.refused += s.refused;
        add_each(&mut self.tls_handshakes, &s.tls_handshakes);
        add_each(&mut self.tls_failures, &s.tls_failures);
        self.http2_connections += s.http2_connections;
        add_each(&mut self.http2_abuse, &s.http2_abuse);
        add_each(&mut self.validation_refusals, &s.validation_refusals);
        add_each(&mut self.auth_refusals, &s.auth_refusals);
        add_each(&mut self.proxy_protocol_refused, &s.proxy_protocol_refused);
        add_each(&mut self.tunnels, &s.tunnels);
        for (sum, n) in self.tunnel_bytes.iter_mut().zip(&s.tunnel_bytes) {
            add_each(sum, n);
        }
        self.gossip_dropped += s.gossip_dropped;
        add_each(&mut self.fleet_syncs, &s.fleet_syncs);
        for (u, name, counts) in &s.dns {
            add_each(
                self.dns.entry((u.clone(), name.clone())).or_default(),
                counts,
            );
        }
        for b in &s.backends {
            let sum = self
                .outcomes
                .entry((b.upstream.clone(), b.backend))
                .or_default();
            for (sum, n) in sum.iter_mut().zip(b.outcomes) {
                *sum += n;
            }
        }
    }

    fn add_all(&mut self, other: &Totals) {
        for (sum, n) in self.responses.iter_mut().zip(other.responses) {
            *sum += n;
        }
        self.accepted += other.accepted;
        self.refused += other.refused;
        add_each(&mut self.tls_handshakes, &other.tls_handshakes);
        add_each(&mut self.tls_failures, &other.tls_failures);
        self.http2_connections += other.http2_connections;
        add_each(&mut self.http2_abuse, &other.http2_abuse);
        add_each(&mut self.validation_refusals, &other.validation_refusals);
        add_each(&mut self.auth_refusals, &other.auth_refusals);
        add_each(
            &mut self.proxy_protocol_refused,
            &other.proxy_protocol_refused,
        );
        add_each(&mut self.tunnels, &other.tunnels);
        for (sum, n) in self.tunnel_bytes.iter_mut().zip(&other.tunnel_bytes) {
            add_each(sum, n);
        }
        self.gossip_dropped += other.gossip_dropped;
        add_each(&mut self.fleet_syncs, &other.fleet_syncs);
        for (key, counts) in &other.dns {
            add_each(self.dns.entry(key.clone()).or_default(), counts);
        }
        for (key, outcomes) in &other.outcomes {
            let sum = self.outcomes.entry(key.clone()).or_default();
            for (sum, n) in sum.iter_mut().zip(outcomes) {
                *sum += n;
            }
        }
    }
}

fn add_each<const N: usize>(sum: &mut [u64; N], n: &[u64; N]) {
    for (sum, n) in sum.iter_mut().zip(n) {
        *sum += n;
    }
}

/// What the admin thread knows of the workers: the latest snapshot of each
/// running worker of every generation, and the final totals of the workers
/// that have ended. Counters are the sum of both, so they never go back
/// across a reload; gauges come from running workers only.
#[derive(Default)]
pub struct Tally {
    /// By (generation, worker id), with when it arrived.
    running: BTreeMap<(u64, usize), (Snapshot, Instant)>,
    ended: Totals,
    newest_generation: u64,
}

impl Tally {
    pub fn record(&mut self, s: Snapshot, now: Instant) {
        self.newest_generation = self.newest_generation.max(s.generation);
        let key = (s.generation, s.worker);
        if s.last {
            self.running.remove(&key);
            self.ended.add(&s);
        } else {
            self.running.insert(key, (s, now));
        }
    }

    /// The Prometheus text exposition of the node's figures.
    pub fn render(&self, now: Instant) -> String {
        let mut counters = Totals::default();
        counters.add_all(&self.ended);
        for (s, _) in self.running.values() {
            counters.add(s);
        }
        let live: Vec<&Snapshot> = self
            .running
            .values()
            .filter(|(s, at)| {
                s.generation == self.newest_generation
                    || now.saturating_duration_since(*at) < SILENT_AFTER
            })
            .map(|(s, _)| s)
            .collect();
        // A stop drains the newest generation; an older one drains after
        // every reload, which is no news for an operator.
        let draining = live
            .iter()
            .any(|s| s.draining && s.generation == self.newest_generation);
        render(&counters, &live, draining)
    }
}

/// The Prometheus text exposition: `counters` summed over every worker
/// that ever reported, gauges over the running ones (`live`).
fn render(counters: &Totals, live: &[&Snapshot], draining: bool) -> String {
    let gauge_sum = |f: &dyn Fn(&Snapshot) -> u64| live.iter().map(|s| f(s)).sum::<u64>();
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
    let draining = u64::from(draining);
    let plain: [(&str, &str, &str, u64); 6] = [
        (
            "ringgate_workers_reporting",
            "gauge",
            "Running workers whose snapshot the admin thread holds (both generations during a reload).",
            live.len() as u64,
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
            counters.accepted,
        ),
        (
            "ringgate_connections_refused_total",
            "counter",
            "Client connections closed at accept: worker at max_connections_per_worker with none idle.",
            counters.refused,
        ),
        (
            "ringgate_connections_open",
            "gauge",
            "Client connections open.",
            gauge_sum(&|s| s.open),
        ),
        (
            "ringgate_gossip_dropped_total",
            "counter",
            "Gossip messages dropped because an inbox was full.",
            counters.gossip_dropped,
        ),
    ];
    for (name, kind, text, value) in plain {
        help(&mut out, name, kind, text);
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(reachable) = live.iter().find_map(|s| s.fleet_reachable) {
        let fleet: [(&str, &str, &str, u64); 3] = [
            (
                "ringgate_fleet_redis_up",
                "gauge",
                "1 while the fleet syncer reaches Redis; 0 while fleet-scoped limits use their fleet_fallback.",
                u64::from(reachable),
            ),
            (
                "ringgate_fleet_syncs_total",
                "counter",
                "Syncs of the node's consumption with Redis that succeeded.",
                counters.fleet_syncs[0],
            ),
            (
                "ringgate_fleet_sync_failures_total",
                "counter",
                "Syncs with Redis that failed (unreachable, timed out, refused).",
                counters.fleet_syncs[1],
            ),
        ];
        for (name, kind, text, value) in fleet {
            help(&mut out, name, kind, text);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    if !counters.dns.is_empty() {
        let dns: [(&str, &str, usize); 2] = [
            (
                "ringgate_dns_lookups_total",
                "Lookups of a backend's DNS name (host name or SRV name).",
                0,
            ),
            (
                "ringgate_dns_lookup_failures_total",
                "Lookups that failed or found no address; the name keeps its last good addresses.",
                1,
            ),
        ];
        for (name, text, i) in dns {
            help(&mut out, name, "counter", text);
            for ((u, backend), counts) in &counters.dns {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",name=\"{}\"}} {}",
                    u, backend, counts[i]
                );
            }
        }
    }
    help(
        &mut out,
        "ringgate_tls_handshakes_total",
        "counter",
        "TLS handshakes finished, by protocol version and whether the session was resumed.",
    );
    for ((version, resumed), n) in TLS_HANDSHAKE_LABELS.iter().zip(counters.tls_handshakes) {
        let _ = writeln!(
            out,
            "ringgate_tls_handshakes_total{{version=\"{version}\",resumed=\"{resumed}\"}} {n}"
        );
    }
    help(
        &mut out,
        "ringgate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that did not finish: timeout, closed (by the client or a drain), plain_http (HTTP sent to a TLS port, answered 400), protocol (a TLS error, e.g. no shared version, cipher or ALPN, or a refused client certificate).",
    );
    for (reason, n) in TLS_FAILURE_REASONS.iter().zip(counters.tls_failures) {
        let _ = writeln!(
            out,
            "ringgate_tls_handshake_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    help(
        &mut out,
        "ringgate_http2_connections_total",
        "counter",
        "Client connections served over HTTP/2 (ALPN h2, or prior knowledge on a cleartext listener with http2 = true).",
    );
    let _ = writeln!(
        out,
        "ringgate_http2_connections_total {}",
        counters.http2_connections
    );
    help(
        &mut out,
        "ringgate_http2_abuse_total",
        "counter",
        "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM for breaking a [http2] limit: frames (max_frames_per_second), resets (max_resets_per_second, rapid reset), control_frames (max_control_frames_per_second), continuation (max_continuation_frames).",
    );
    for (reason, n) in HTTP2_ABUSE_REASONS.iter().zip(counters.http2_abuse) {
        let _ = writeln!(out, "ringgate_http2_abuse_total{{reason=\"{reason}\"}} {n}");
    }
    help(
        &mut out,
        "ringgate_validation_refusals_total",
        "counter",
        "Requests a route's validation refused before anything went upstream, by rule: max_body (413), content_types (415), required_headers, required_query and body_schema (400).",
    );
    for (rule, n) in VALIDATION_RULES.iter().zip(counters.validation_refusals) {
        let _ = writeln!(
            out,
            "ringgate_validation_refusals_total{{rule=\"{rule}\"}} {n}"
        );
    }
    help(
        &mut out,
        "ringgate_auth_refusals_total",
        "counter",
        "Requests refused with 401 by a route's auth, by reason: missing, malformed, too_large, unknown_key, bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience, unknown_api_key, bad_password.",
    );
    for (reason, n) in ringgate_core::auth::Reason::LABELS
        .iter()
        .zip(counters.auth_refusals)
    {
        let _ = writeln!(
            out,
            "ringgate_auth_refusals_total{{reason=\"{reason}\"}} {n}"
        );
    }
    help(
        &mut out,
        "ringgate_tunnels_total",
        "counter",
        "Tunnels opened, by kind: tcp (connections accepted by tcp listeners), websocket and upgrade (HTTP connections a backend's 101 switched to WebSocket or to another protocol a route allows).",
    );
    for (kind, n) in TUNNEL_KINDS.iter().zip(counters.tunnels) {
        let _ = writeln!(out, "ringgate_tunnels_total{{kind=\"{kind}\"}} {n}");
    }
    help(
        &mut out,
        "ringgate_tunnels_open",
        "gauge",
        "Tunnels open now, by kind (a tcp listener's connection counts while it connects).",
    );
    for (k, kind) in TUNNEL_KINDS.iter().enumerate() {
        let n = gauge_sum(&|s| s.tunnels_open[k]);
        let _ = writeln!(out, "ringgate_tunnels_open{{kind=\"{kind}\"}} {n}");
    }
    help(
        &mut out,
        "ringgate_tunnel_bytes_total",
        "counter",
        "Bytes relayed by tunnels, by kind and direction: from_client (to the backend) and to_client.",
    );
    for (kind, bytes) in TUNNEL_KINDS.iter().zip(counters.tunnel_bytes) {
        for (direction, n) in ["from_client", "to_client"].iter().zip(bytes) {
            let _ = writeln!(
                out,
                "ringgate_tunnel_bytes_total{{kind=\"{kind}\",direction=\"{direction}\"}} {n}"
            );
        }
    }
    help(
        &mut out,
        "ringgate_proxy_protocol_refused_total",
        "counter",
        "Connections a proxy_protocol listener closed without forwarding a byte: untrusted (peer not in proxy_protocol_from), malformed (not a PROXY v1/v2 header), timeout (none within header_read_timeout), closed (the peer left first).",
    );
    for (reason, n) in PROXY_PROTOCOL_REASONS
        .iter()
        .zip(counters.proxy_protocol_refused)
    {
        let _ = writeln!(
            out,
            "ringgate_proxy_protocol_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    help(
        &mut out,
        "ringgate_responses_total",
        "counter",
        "Responses sent to clients, by status class.",
    );
    for class in 1..=5 {
        let n = counters.responses[class];
        let _ = writeln!(out, "ringgate_responses_total{{class=\"{class}xx\"}} {n}");
    }
    let label = |u: &str, b: SocketAddr| format!("upstream=\"{u}\",backend=\"{b}\"");
    help(
        &mut out,
        "ringgate_upstream_requests_total",
        "counter",
        "Attempts sent to a backend, by how they ended.",
    );
    // Every backend any worker ever reported: a counter stays once it
    // appeared, even when a reload removed its backend.
    for ((u, b), outcomes) in &counters.outcomes {
        for (name, n) in OUTCOME_NAMES.iter().zip(outcomes) {
            let _ = writeln!(
                out,
                "ringgate_upstream_requests_total{{{},outcome=\"{name}\"}} {n}",
                label(u, *b)
            );
        }
    }
    // Gauges: the backends the running workers report.
    let mut backends: Vec<(&str, SocketAddr)> = live
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(|x| x.present)
                .map(|x| (x.upstream.as_str(), x.backend))
        })
        .collect();
    backends.sort();
    backends.dedup();
    let entries = |u: &str, b: SocketAddr| {
        let u = u.to_owned();
        live.iter().filter_map(move |s| {
            s.backends
                .iter()
                .find(|x| x.present && x.upstream == u && x.backend == b)
        })
    };
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

    fn snap(generation: u64, worker: usize, ok: u64, open: u64, last: bool) -> Snapshot {
        let mut s = Snapshot::new(worker, &Counters::default());
        s.generation = generation;
        s.responses[2] = ok;
        s.open = open;
        s.last = last;
        s
    }

    fn value(page: &str, name: &str) -> Option<u64> {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn an_ended_generation_keeps_its_counts_and_drops_its_gauges() {
        let ok = "ringgate_responses_total{class=\"2xx\"}";
        let now = Instant::now();
        let mut t = Tally::default();
        t.record(snap(0, 0, 7, 2, false), now);
        t.record(snap(0, 1, 3, 1, false), now);
        // A reload to one worker: the new one starts from zero while the
        // old ones drain, then send their final totals.
        t.record(snap(1, 0, 0, 1, false), now);
        let page = t.render(now);
        assert_eq!(value(&page, ok), Some(10));
        assert_eq!(value(&page, "ringgate_connections_open"), Some(4));
        t.record(snap(0, 0, 8, 0, true), now);
        t.record(snap(0, 1, 3, 0, true), now);
        t.record(snap(1, 0, 2, 1, false), now);
        let page = t.render(now);
        assert_eq!(value(&page, ok), Some(13));
        assert_eq!(value(&page, "ringgate_connections_open"), Some(1));
        assert_eq!(value(&page, "ringgate_workers_reporting"), Some(1));
    }

    #[test]
    fn a_silent_old_worker_stops_counting_as_running_but_keeps_its_counts() {
        let ok = "ringgate_responses_total{class=\"2xx\"}";
        let now = Instant::now();
        let mut t = Tally::default();
        t.record(snap(0, 0, 5, 3, false), now);
        t.record(snap(1, 0, 1, 1, false), now);
        let later = now + SILENT_AFTER;
        t.record(snap(1, 0, 2, 1, false), later);
        let page = t.render(later);
        assert_eq!(value(&page, ok), Some(7));
        assert_eq!(value(&page, "ringgate_connections_open"), Some(1));
        assert_eq!(value(&page, "ringgate_workers_reporting"), Some(1));
    }

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
