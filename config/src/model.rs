//! The validated configuration. Every value here has passed its range check and
//! every cross-reference is resolved to an index, so the proxy never re-checks.

use std::net::SocketAddr;
use std::time::Duration;

/// How many worker threads to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One worker per CPU in the process affinity mask.
    Auto,
    /// Exactly this many workers, in `1..=WORKERS_MAX`.
    Count(usize),
}

/// Upper bound for an explicit worker count: far above any core count we run
/// on, low enough that a typo (`workers = 10000`) is caught before start-up.
pub const WORKERS_MAX: usize = 1024;

/// `[server]`: process-wide settings.
#[derive(Debug, Clone)]
pub struct Server {
    pub workers: Workers,
    /// Pin worker i to the i-th CPU of the affinity mask.
    pub pin: bool,
    /// listen(2) backlog, `1..=65535`.
    pub backlog: u32,
    /// Accepted connections a worker holds at once, `1..=MAX_CONNECTIONS_PER_WORKER_MAX`.
    pub max_connections_per_worker: usize,
}

/// `"auto"`: the core count is the right default for a thread-per-core proxy.
pub const DEFAULT_WORKERS: Workers = Workers::Auto;
/// Pinning keeps each worker's caches and io_uring rings on one core.
pub const DEFAULT_PIN: bool = true;
/// Absorbs an accept burst per worker without hiding a stuck accept loop for
/// long; below Linux's default somaxconn (4096 since 5.4), so it is not clamped.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// The kernel clamps the backlog to net.core.somaxconn, historically a 16-bit value.
pub const BACKLOG_MAX: u32 = 65_535;
/// 10k connections per core is the classic C10k budget; bounds per-worker memory.
pub const DEFAULT_MAX_CONNECTIONS_PER_WORKER: usize = 10_000;
/// Past a million per worker the fd limit and buffer memory run out first.
pub const MAX_CONNECTIONS_PER_WORKER_MAX: usize = 1_000_000;

impl Default for Server {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WORKERS,
            pin: DEFAULT_PIN,
            backlog: DEFAULT_BACKLOG,
            max_connections_per_worker: DEFAULT_MAX_CONNECTIONS_PER_WORKER,
        }
    }
}

/// `[limits]`: bounds on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request/response head size limit (start line + headers + CRLFs).
    pub max_head_bytes: usize,
    /// Header-line count limit.
    pub max_headers: usize,
    /// Time to receive a whole request head.
    pub header_read_timeout: Duration,
    /// Idle time allowed between requests on a client connection.
    pub keepalive_timeout: Duration,
    /// Longest wait between two reads of a request body.
    pub body_read_timeout: Duration,
    /// Longest chunk-size line, extensions included.
    pub max_chunk_line_bytes: usize,
}

/// Between HAProxy's ~15 KiB (tune.bufsize 16 KiB less reserve) and Envoy's
/// 60 KiB: every real browser head fits, and a worker's head buffers stay small.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Below 1 KiB a request with a few cookies would be refused.
pub const MAX_HEAD_BYTES_MIN: usize = 1024;
/// Above 1 MiB a head buffer per connection costs more than it is worth.
pub const MAX_HEAD_BYTES_MAX: usize = 1024 * 1024;
/// Envoy's default (100); HAProxy refuses more than 101 header lines.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The parser's header index array is sized from this; 1024 is ten times any peer's default.
pub const MAX_HEADERS_MAX: usize = 1024;
/// Shorter than nginx's 60 s client_header_timeout: a head arrives in one or
/// two RTTs, so 10 s only matters to slowloris.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's keepalive_timeout (75 s), longer than common client idle timeouts
/// so the client, not the proxy, usually closes first.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// nginx's client_body_timeout (60 s): time between two reads, not for the whole body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A chunk-size line is hex digits plus rare extensions; 4 KiB leaves room for
/// extensions while bounding what a chunked decoder buffers.
pub const DEFAULT_MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// "0\r\n" plus a little: below 16 bytes a plain size line may not fit.
pub const MAX_CHUNK_LINE_BYTES_MIN: usize = 16;
/// No legitimate chunk extension needs more.
pub const MAX_CHUNK_LINE_BYTES_MAX: usize = 64 * 1024;
/// Every timeout in the file must be at most this: an hour-long timeout is a
/// leak, not a policy.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_chunk_line_bytes: DEFAULT_MAX_CHUNK_LINE_BYTES,
        }
    }
}

/// `[[listeners]]`: one bound address.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
}

/// `[[routes]]`: which upstream serves which requests on which listener.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index into [`Config::listeners`].
    pub listener: usize,
    /// Lowercased host to match; may start with `"*."`. `None` matches any host.
    pub host: Option<String>,
    /// Starts with `/`; `"/"` when not given.
    pub path_prefix: String,
    /// Uppercase method tokens; empty means any method.
    pub methods: Vec<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
}

/// `[[upstreams]]`: a named set of backends and how to talk to them.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    /// Never empty.
    pub backends: Vec<Backend>,
    /// TCP connect to a backend.
    pub connect_timeout: Duration,
    /// Wait for the response head after the request is sent.
    pub response_timeout: Duration,
    /// How long a pooled keep-alive connection may sit unused.
    pub idle_timeout: Duration,
    /// Per worker, idle keep-alive connections kept per backend; 0 disables reuse.
    pub max_idle_per_backend: usize,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
}

/// One backend of an upstream.
#[derive(Debug, Clone)]
pub struct Backend {
    pub address: SocketAddr,
    /// `1..=WEIGHT_MAX`.
    pub weight: u32,
}

/// Most backends are equal; a weight only matters relative to the others.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Bounds the round-robin schedule length (sum of weights) per upstream.
pub const WEIGHT_MAX: u32 = 1000;
/// A backend on the same network answers a SYN in well under a second; longer
/// means it is down and the next one should be tried.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Generous for an API, short enough that a hung backend frees its client.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Below the 75 s keep-alive of nginx/Apache-style backends, so the proxy
/// drops an idle connection before the backend does and never reuses a dying one.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Enough idle connections per backend per worker to absorb a burst without
/// new handshakes; small enough to stay far below a backend's connection limit.
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 64;
/// Each idle connection is an fd per worker per backend; past this the pool is a leak.
pub const MAX_IDLE_PER_BACKEND_MAX: usize = 65_535;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub limits: Limits,
    /// Never empty; names are unique; no two share an address unless its port is 0.
    pub listeners: Vec<Listener>,
    /// Never empty; every index is in range.
    pub routes: Vec<Route>,
    /// Never empty; names are unique.
    pub upstreams: Vec<Upstream>,
}
