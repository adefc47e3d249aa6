//! The validated configuration. Every value here has passed its range check and
//! every cross-reference is resolved to an index, so the proxy never re-checks.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// How often a worker publishes its deltas to the others,
    /// `GOSSIP_INTERVAL_MIN..=GOSSIP_INTERVAL_MAX`.
    pub gossip_interval: Duration,
    /// Messages each worker's gossip inbox holds, `1..=GOSSIP_INBOX_MAX`.
    pub gossip_inbox: usize,
    /// Keys each rate-limited route tracks per worker, `1..=RATE_LIMIT_MAX_KEYS_MAX`.
    pub rate_limit_max_keys: usize,
    /// How long a graceful stop (SIGTERM, SIGINT, SIGQUIT) waits for
    /// requests in flight, `DRAIN_TIMEOUT_MIN..=DRAIN_TIMEOUT_MAX`.
    pub drain_timeout: Duration,
    /// How each worker sets up its io_uring ring.
    pub io_uring_setup: RingSetup,
    /// Start even when another process already listens on a listener's
    /// address, sharing it through `SO_REUSEPORT`.
    pub share_ports: bool,
    /// Peers whose forwarding headers are believed (default: none).
    pub trusted_proxies: TrustedProxies,
    /// The lowercase header that carries each request's id (kept when a
    /// client sends a well-formed one, made otherwise), upstream, back to
    /// the client and into the access log; `None`: no request ids.
    pub request_id: Option<String>,
    /// The `Via` each forwarded request gets, and the name whose presence
    /// in a request's `Via` means it has looped back.
    pub via: Via,
}

/// `[server] via`: how this proxy names itself in the `Via` field it adds
/// to forwarded requests (RFC 9110 §7.6.3), and finds a request that has
/// already passed through it (a loop: answered 508, not forwarded again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `ringgate-` and 12 hex digits random per process: never the name
    /// of another proxy, so a chain of ringgates is no loop.
    Auto,
    /// No `Via`, and no loop detection.
    Off,
    /// This pseudonym (a token).
    Named(String),
}

/// `[server] trusted_proxies`: the networks of proxies in front of this one,
/// whose `X-Forwarded-*` and `Forwarded` headers are kept and appended to,
/// and whose `X-Forwarded-For` names the client. At most
/// `TRUSTED_PROXIES_MAX` networks, each checked per request by a prefix
/// compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

/// Far above any real chain of proxies' networks; keeps the per-request
/// check a short scan.
pub const TRUSTED_PROXIES_MAX: usize = 256;

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Is `ip` one of the trusted networks? An IPv4-mapped IPv6 address
    /// (a dual-stack listener's view of an IPv4 peer) counts as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// `[server] io_uring_setup`: the flags a worker's ring is set up with. They
/// decide who runs completion work: without them the kernel posts
/// completions from whichever CPU finished the I/O (the loopback peer's
/// softirq) and interrupts the worker to do it; with them the worker runs it
/// when it next waits for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingSetup {
    /// `defer_taskrun` where the kernel has it (6.1), else `coop_taskrun`
    /// (5.19), else `plain`.
    Auto,
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`.
    DeferTaskrun,
    /// `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG`.
    CoopTaskrun,
    /// No set-up flags.
    Plain,
}

/// Measured in docs/BENCHMARKS.md: no setting lost by more than the spread
/// on either machine measured, and `defer_taskrun` decided the result on one.
pub const DEFAULT_RING_SETUP: RingSetup = RingSetup::Auto;

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

/// Rate limits are accurate to about two gossip intervals of traffic; 10 ms
/// keeps that to 1-2% of a second's worth while costing 100 small messages
/// per second per worker pair.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(10);
/// Below 1 ms the tick itself becomes a measurable share of a core.
pub const GOSSIP_INTERVAL_MIN: Duration = Duration::from_millis(1);
/// Above 1 s health transitions and rate-limit charges arrive too late to matter.
pub const GOSSIP_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// Ten seconds of messages from up to ten peers at the default tick: an inbox
/// overflows only when its worker is stalled, never from a burst.
pub const DEFAULT_GOSSIP_INBOX: usize = 1024;
/// A larger inbox only hides a stuck worker for longer.
pub const GOSSIP_INBOX_MAX: usize = 1_048_576;
/// 100k keys × (64-byte key + bucket + index) ≈ 15 MB per route per worker at
/// most: room for every client of a busy edge, bounded under a flood.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: usize = 100_000;
/// Ten million keys is already ~1.5 GB per route per worker.
pub const RATE_LIMIT_MAX_KEYS_MAX: usize = 10_000_000;
/// Kubernetes' default termination grace period: a drain that fits in it
/// ends before the kubelet's SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DRAIN_TIMEOUT_MIN: Duration = Duration::from_millis(1);
pub const DRAIN_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

impl Default for Server {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WORKERS,
            pin: DEFAULT_PIN,
            backlog: DEFAULT_BACKLOG,
            max_connections_per_worker: DEFAULT_MAX_CONNECTIONS_PER_WORKER,
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            gossip_inbox: DEFAULT_GOSSIP_INBOX,
            rate_limit_max_keys: DEFAULT_RATE_LIMIT_MAX_KEYS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            io_uring_setup: DEFAULT_RING_SETUP,
            share_ports: false,
            trusted_proxies: TrustedProxies::default(),
            request_id: None,
            via: Via::Auto,
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
    /// Longest wait for a write to the client to make progress (a client
    /// that stops reading its response).
    pub send_timeout: Duration,
    /// Longest chunk-size line, extensions included.
    pub max_chunk_line_bytes: usize,
    /// Time for a TLS client to finish its handshake, from the accept.
    pub tls_handshake_timeout: Duration,
    /// Longest a connection closed before its request was read whole keeps
    /// reading (and dropping) what the client still sends; zero: no
    /// lingering close.
    pub lingering_time: Duration,
    /// Longest wait for the next bytes while lingering.
    pub lingering_timeout: Duration,
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
/// nginx's send_timeout and proxy_send_timeout (60 s): time for one write to
/// make progress, not for the whole message.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A chunk-size line is hex digits plus rare extensions; 4 KiB leaves room for
/// extensions while bounding what a chunked decoder buffers.
pub const DEFAULT_MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// "0\r\n" plus a little: below 16 bytes a plain size line may not fit.
pub const MAX_CHUNK_LINE_BYTES_MIN: usize = 16;
/// No legitimate chunk extension needs more.
pub const MAX_CHUNK_LINE_BYTES_MAX: usize = 64 * 1024;
/// Long against the gap between strays of a backend that keeps sending
/// them (every stray restarts it), short enough that a backend fixed by a
/// deploy gets its keep-alive back within a minute.
pub const DEFAULT_STRAY_COOLDOWN: Duration = Duration::from_secs(30);
/// nginx's lingering_time (30 s): long enough for a client to finish
/// sending a refused upload on a slow link and read its answer.
pub const DEFAULT_LINGERING_TIME: Duration = Duration::from_secs(30);
/// nginx's lingering_timeout (5 s): a client that went quiet after its
/// answer has nothing more to send.
pub const DEFAULT_LINGERING_TIMEOUT: Duration = Duration::from_secs(5);
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
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_chunk_line_bytes: DEFAULT_MAX_CHUNK_LINE_BYTES,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            lingering_time: DEFAULT_LINGERING_TIME,
            lingering_timeout: DEFAULT_LINGERING_TIMEOUT,
        }
    }
}

/// nginx's ssl_handshake_timeout (60 s) is generous to slow clients at the
/// price of holding half-open handshakes; a handshake is two round trips, so
/// 10 s (like the head timeout) only matters to a stalling client.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[[listeners]]`: one bound address.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// TLS termination on this listener; `None` is plain HTTP.
    pub tls: Option<ListenerTls>,
    /// HTTP/2 beside HTTP/1.1: with `tls`, `h2` is offered in ALPN before
    /// `http/1.1`; without it, a client may open with the HTTP/2 preface
    /// (prior knowledge). Defaults to whether the listener has `tls`.
    pub http2: bool,
    /// `Some` with `proxy_protocol = true`: every connection starts with a
    /// PROXY protocol header (v1 or v2) whose client address replaces the
    /// peer's, and only peers in these networks (`proxy_protocol_from`,
    /// never empty) may connect. The same network type as
    /// `trusted_proxies`, with the same IPv4-mapped matching.
    pub proxy_protocol_from: Option<TrustedProxies>,
    /// What the listener speaks: HTTP through routes, or raw TCP to one
    /// upstream.
    pub protocol: ListenerProtocol,
    /// This listener's connections one worker holds at once (beyond them a
    /// new one is closed at accept); `None`: only the worker's own limit.
    pub max_connections_per_worker: Option<usize>,
    /// The kernel hands a connection over only once its client has sent
    /// something (`TCP_DEFER_ACCEPT`, one second, as nginx's `deferred`):
    /// the first read finds the request waiting, and a client that never
    /// speaks costs no task until then. On by default where the client
    /// speaks first (`http`); off on `tcp`, whose protocol may have the
    /// server speak first.
    pub defer_accept: bool,
    /// The ACK of a new connection's first request rides on the response
    /// instead of going out alone (`TCP_QUICKACK` off on the listening
    /// socket, as HAProxy's `tcp-smart-accept`): one segment less per
    /// connection. A client that leaves Nagle's algorithm on and writes a
    /// request in two pieces waits up to the delayed-ACK timer (40 ms) for
    /// its second piece to leave. Defaults as `defer_accept`.
    pub delayed_ack: bool,
}

/// `[[listeners]] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 (and HTTP/2 with `http2`), routed by `[[routes]]`.
    Http,
    /// Bytes relayed both ways to a backend of this upstream (an index
    /// into [`Config::upstreams`]), picked by its balancer per connection.
    Tcp { upstream: usize },
}

/// `[listeners.tls]`: the certificates and policy of a TLS listener. The
/// files are read by the proxy (at start-up, `check` and reload), not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Chosen by SNI among their names; the first also serves clients
    /// without SNI or with an unknown name.
    pub certificates: Vec<CertificateFiles>,
    /// Protocol versions offered (TLS 1.2 and 1.3 by default).
    pub versions: Vec<TlsVersion>,
    /// Cipher-suite names (rustls' spelling, e.g.
    /// `TLS13_AES_128_GCM_SHA256`); empty means the provider's safe defaults.
    pub cipher_suites: Vec<String>,
    /// Client certificates (mTLS) verified against this CA file.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client without a certificate is refused.
    pub client_certificate_required: bool,
    /// With `client_ca`: the request header that carries a verified client
    /// certificate's subject upstream. Whatever the client sent under that
    /// name is removed, certificate or not, so a backend can trust it.
    pub client_subject_header: Option<String>,
    /// Sessions each worker remembers for stateful resumption.
    pub session_cache: usize,
    /// Stateless resumption with tickets whose keys all workers share.
    pub session_tickets: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM: the certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: PKCS#8, SEC1 or PKCS#1 private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// rustls' default per-worker cache size is 256 sessions per config; a
/// worker serves many more clients, so it keeps more (a session is ~200 B).
pub const DEFAULT_TLS_SESSION_CACHE: usize = 8192;
pub const TLS_SESSION_CACHE_MAX: usize = 1_000_000;

/// The suites `cipher_suites` may name: every suite rustls offers, all
/// AEAD with forward secrecy (there is nothing weaker to opt into).
pub const TLS_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

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
    /// Header fields the request must carry with exactly these values
    /// (lowercase names, sorted); empty means no header condition.
    pub headers: Vec<(String, String)>,
    /// Index into [`Config::upstreams`]; `None` exactly when the route
    /// answers itself (`respond` or `redirect`).
    pub upstream: Option<usize>,
    /// `respond`: answered by the proxy with this response.
    pub respond: Option<DirectResponse>,
    /// `redirect`: answered by the proxy with a redirect.
    pub redirect: Option<Redirect>,
    /// `compose`: answered with the merged JSON of several upstream calls.
    pub compose: Option<Compose>,
    /// `None`: not rate limited.
    pub rate_limit: Option<RateLimit>,
    /// Replaces the matched `path_prefix` in the forwarded request target.
    pub rewrite_prefix: Option<String>,
    /// Header fields changed on the way upstream.
    pub request_headers: HeaderEdits,
    /// Header fields changed on the way back to the client.
    pub response_headers: HeaderEdits,
    /// What a request must satisfy before any byte of it goes upstream.
    pub checks: RequestChecks,
    /// `cors`: preflights answered here, CORS fields on the responses.
    pub cors: Option<Cors>,
    /// `upgrade`: lowercase protocols (`websocket`) a request may switch
    /// to; the connection then becomes a tunnel. Empty: `Upgrade` dropped.
    pub upgrade: Vec<String>,
    /// `None`: anyone may call the route.
    pub auth: Option<crate::auth::Auth>,
}

/// `cors = { ... }` on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Lowercase origins: exact (`https://app.example.com`), one wildcard
    /// label run (`https://*.example.com`), or `*` (any; not with
    /// `credentials`).
    pub origins: Vec<String>,
    /// Uppercase method tokens a preflight may ask for.
    pub methods: Vec<String>,
    /// Lowercase request fields a preflight may ask for; `["*"]`: any.
    pub headers: Vec<String>,
    /// Lowercase response fields the browser may show the page.
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    /// How long a browser may cache a preflight's answer.
    pub max_age: Option<Duration>,
}

impl Cors {
    /// Whether a request from `origin` (as the browser sent it) is allowed.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.origins.iter().any(|o| origin_matches(o, origin))
    }
}

/// `pattern` (lowercase) against an `Origin` value: exact, `*`, or
/// `scheme://*.suffix` for any host ending in `.suffix`.
fn origin_matches(pattern: &str, origin: &[u8]) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once("://*.") {
        None => origin.eq_ignore_ascii_case(pattern.as_bytes()),
        Some((scheme, suffix)) => {
            let prefix_len = scheme.len() + 3;
            origin.len() > prefix_len + suffix.len() + 1
                && origin[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                && &origin[scheme.len()..prefix_len] == b"://"
                && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                && origin[origin.len() - suffix.len() - 1] == b'.'
                && origin[prefix_len..origin.len() - suffix.len() - 1]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    }
}

/// `respond = { status, body, headers }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// `200..=599`.
    pub status: u16,
    pub body: String,
    /// Lowercase names, none the proxy manages; in config order.
    pub headers: Vec<(String, String)>,
}

/// `compose = { calls, timeout, on_failure, max_body }`: one request fanned
/// out to several upstreams at once, their JSON bodies merged into one
/// object under each call's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    pub calls: Vec<ComposeCall>,
    /// For all the calls together.
    pub timeout: Duration,
    /// `on_failure = "partial"`: answer with the calls that succeeded.
    pub partial: bool,
    /// Largest body one call may return.
    pub max_body: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeCall {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Request target of the call's `GET`, origin-form.
    pub path: String,
    /// Key of its body in the merged object; unique within the route.
    pub key: String,
}

pub const COMPOSE_CALLS_MAX: usize = 16;
pub const DEFAULT_COMPOSE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_COMPOSE_MAX_BODY: usize = 1 << 20;
pub const COMPOSE_MAX_BODY_MAX: usize = 64 << 20;

/// `redirect = { to, status }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The Location, with `$path` (the request's path) and `$query` (`?`
    /// and the query, or nothing) replaced per request.
    pub to: String,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A route's request validation (`max_body`, `content_types`,
/// `required_headers`, `required_query`); each refusal names its rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestChecks {
    /// Request bodies above this many bytes get 413.
    pub max_body: Option<u64>,
    /// Lowercase `type/subtype` or `type/*`: a request with a body must
    /// carry one of them (415). Empty: any.
    pub content_types: Vec<String>,
    /// Lowercase field names each request must carry (400).
    pub required_headers: Vec<String>,
    /// Query parameter names each request must carry (400).
    pub required_query: Vec<String>,
    /// A JSON Schema file the request body must satisfy (400); the body
    /// is then read whole (at most `max_body`) before it goes upstream.
    pub body_schema: Option<std::path::PathBuf>,
}

/// The body a `body_schema` route reads whole when `max_body` is not set.
pub const DEFAULT_SCHEMA_BODY_MAX: u64 = 1 << 20;
/// The most a `body_schema` route may read whole.
pub const SCHEMA_BODY_MAX_MAX: u64 = 16 << 20;

impl RequestChecks {
    /// The most of a body read whole before it goes upstream, when it is.
    pub fn schema_body_max(&self) -> u64 {
        self.max_body.unwrap_or(DEFAULT_SCHEMA_BODY_MAX)
    }
}

impl RequestChecks {
    pub fn is_empty(&self) -> bool {
        self == &RequestChecks::default()
    }
}

/// The largest `max_body`: bodies of any size stream, but one above this
/// is better refused by leaving `max_body` out.
pub const MAX_BODY_MAX: usize = 1 << 40;

/// `request_headers` / `response_headers`: fields replaced or removed on the
/// way through. Names
/// are lowercase; none of them is a framing, hop-by-hop or forwarding
/// header the proxy manages itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Every field of each name is dropped and this one sent instead.
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Whether a field of this name is dropped from the forwarded head.
    pub fn drops(&self, name: &[u8]) -> bool {
        // `_` read as `-`: a client's X_Internal_User is the X-Internal-User
        // the route removes, to a backend that maps both to one variable.
        let same = ringgate_core::http::same_field_name;
        self.remove.iter().any(|n| same(name, n.as_bytes()))
            || self.set.iter().any(|(n, _)| same(name, n.as_bytes()))
    }
}

/// Fields `request_headers` may not touch: framing, hop-by-hop, and the
/// forwarding fields the proxy writes itself.
pub const MANAGED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// `rate_limit`: a token bucket per key, node-wide (see `docs/CONFIG.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub key: RateLimitKey,
    /// `requests` per `per` (1 s or 1 min); `1..=RATE_REQUESTS_MAX`.
    pub requests: u32,
    pub per: Duration,
    /// Bucket size, `1..=BURST_MAX`.
    pub burst: u32,
    /// `scope = "fleet"`: counted across every node that shares the
    /// `[fleet]` Redis; `None`: node-wide.
    pub fleet: Option<FleetScope>,
}

/// A route's fleet-wide count: its name in Redis and what it does while
/// Redis cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetScope {
    /// The counter's name, shared by every node (`rate_limit.name`, or
    /// `route<index>` by default).
    pub counter: String,
    pub fallback: FleetFallback,
}

/// `fleet_fallback`: what a fleet-scoped limit does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetFallback {
    /// Each node limits to `rate / [fleet] nodes` (and the burst likewise).
    LocalShare,
    /// No limit until Redis is back.
    Open,
    /// Every request refused with 429 until Redis is back.
    Closed,
}

impl FleetFallback {
    pub fn as_str(self) -> &'static str {
        match self {
            FleetFallback::LocalShare => "local_share",
            FleetFallback::Open => "open",
            FleetFallback::Closed => "closed",
        }
    }
}

/// `[fleet]`: where fleet-scoped rate limits meet (see `docs/CONFIG.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The Redis server (an IP address: host names are not resolved).
    pub redis: std::net::SocketAddr,
    /// `AUTH` before the first command, when set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `SELECT`ed when not 0.
    pub database: u32,
    /// Put before every counter's name; `FLEET_KEY_PREFIX_MAX` bytes at most.
    pub key_prefix: String,
    /// How often the node adds its consumption to the fleet's and learns
    /// the others'; `FLEET_SYNC_INTERVAL_MIN..=FLEET_SYNC_INTERVAL_MAX`.
    pub sync_interval: Duration,
    /// Connecting to Redis, and each sync's round trip.
    pub timeout: Duration,
    /// Nodes sharing the limits: `local_share` gives each `1/nodes`.
    pub nodes: u32,
    /// `rediss://`: the connection is TLS, verified as an upstream's is.
    pub tls: Option<UpstreamTls>,
}

pub const DEFAULT_FLEET_SYNC_INTERVAL: Duration = Duration::from_millis(50);
pub const FLEET_SYNC_INTERVAL_MIN: Duration = Duration::from_millis(1);
/// Longer than this and a fleet limit is mostly each node's own.
pub const FLEET_SYNC_INTERVAL_MAX: Duration = Duration::from_secs(10);
/// A loopback or LAN Redis answers in well under a millisecond; a sync
/// that waits longer than this is better counted as failed.
pub const DEFAULT_FLEET_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_FLEET_KEY_PREFIX: &str = "ringgate:";
pub const FLEET_KEY_PREFIX_MAX: usize = 256;
pub const FLEET_NODES_MAX: u32 = 100_000;

impl RateLimit {
    pub fn rate_per_sec(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64()
    }
}

/// What a rate limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's IP address.
    ClientIp,
    /// Every request of the route shares one bucket.
    Route,
    /// The value of this request header (lowercased name); requests without
    /// it share one bucket.
    Header(String),
    /// The consumer `auth` established (its route must have `auth`).
    Consumer,
}

/// A billion requests a second is beyond any one node; the bound keeps the
/// token arithmetic far from overflow.
pub const RATE_REQUESTS_MAX: u32 = 1_000_000_000;
pub const BURST_MAX: u32 = 1_000_000_000;

/// `[[upstreams]]`: a named set of backends and how to talk to them.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    /// Never empty.
    pub backends: Vec<Backend>,
    /// TCP connect to a backend.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response: for its head since
    /// the request's last byte went up (or since the request began, while
    /// its body is still uploading and not moving), then between reads.
    pub response_timeout: Duration,
    /// Longest wait for a write to the backend to make progress (a backend
    /// that stops reading a request body).
    pub send_timeout: Duration,
    /// How long a pooled keep-alive connection may sit unused.
    pub idle_timeout: Duration,
    /// How long a relayed connection (a `tcp` listener's) may carry no
    /// byte either way, and a write on it may make no progress.
    pub tunnel_idle_timeout: Duration,
    /// Per worker, idle keep-alive connections kept per backend; 0 disables reuse.
    pub max_idle_per_backend: usize,
    /// How long a backend that sent a response nobody asked for gets no
    /// connection reuse (restarted by each stray).
    pub stray_cooldown: Duration,
    /// `Some` exactly when `balance` is [`Balance::MaglevHash`].
    pub hash_key: Option<HashKey>,
    /// `None`: no active checks; backends are healthy unless ejected.
    pub health_check: Option<HealthCheck>,
    /// Always set (defaults when the table is absent); `max_ejection_percent = 0` disables it.
    pub outlier_detection: OutlierDetection,
    /// `None`: no retries.
    pub retries: Option<Retries>,
    /// `None`: no circuit breaker.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// `None`: plain HTTP to the backends.
    pub tls: Option<UpstreamTls>,
    /// What the backends speak: HTTP/1.1, or HTTP/2 (ALPN `h2` with `tls`,
    /// prior knowledge without), multiplexed on few connections.
    pub protocol: UpstreamProtocol,
    /// `Some`: every new connection to a backend starts with a PROXY
    /// protocol header of this version naming the client (before TLS).
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
}

/// `[[upstreams]] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
}

/// `send_proxy_protocol`: which PROXY protocol header goes to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolVersion {
    /// The text line (`PROXY TCP4 ...`), which every receiver reads.
    V1,
    /// The binary header, cheaper to parse.
    V2,
}

/// `[[upstreams]] tls`: HTTPS to the backends, certificates verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified in the backends' certificates;
    /// `None`: each backend's IP address (no SNI; the certificate must name
    /// the IP).
    pub server_name: Option<String>,
    /// PEM file of the CAs that sign the backends' certificates; `None`:
    /// the Mozilla roots built into the binary (`webpki-roots`).
    pub ca: Option<PathBuf>,
    /// Presented to backends that ask for one (mTLS to the backends).
    pub client_certificate: Option<CertificateFiles>,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Plain rotation; refused with unequal weights (they would be ignored).
    RoundRobin,
    /// nginx's smooth weighted round robin; the default.
    WeightedRoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConn,
    /// Power of two choices on latency EWMA × load.
    P2cEwma,
    /// Maglev consistent hashing on [`Upstream::hash_key`].
    MaglevHash,
    /// Weighted random.
    Random,
}

/// Equal weights make it plain round robin, so configs without weights
/// behave as before; with weights it honours them.
pub const DEFAULT_BALANCE: Balance = Balance::WeightedRoundRobin;

/// What `maglev_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// Request header, name lowercased.
    Header(String),
    /// Cookie name, case-sensitive (RFC 6265 §4.1.1: a cookie-name is a token, compared as octets).
    Cookie(String),
}

/// `health_check`: active probes, each backend probed by one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Origin-form request target starting with `/` of an HTTP probe;
    /// `None`: a connect probe (the TCP connect, and the PROXY header and
    /// TLS handshake when the upstream has them), for backends that do not
    /// speak HTTP.
    pub path: Option<String>,
    pub interval: Duration,
    /// At most `interval`: one probe per backend is outstanding at a time.
    pub timeout: Duration,
    /// Consecutive passing probes to become healthy, `1..=HEALTH_THRESHOLD_MAX`.
    pub rise: u32,
    /// Consecutive failing probes to become unhealthy, `1..=HEALTH_THRESHOLD_MAX`.
    pub fall: u32,
    /// The status a passing HTTP probe answers, `100..=599`.
    pub expect_status: u16,
}

/// nginx and HAProxy both default to rise 2; fall 3 rides out one lost probe.
pub const DEFAULT_HEALTH_RISE: u32 = 2;
pub const DEFAULT_HEALTH_FALL: u32 = 3;
pub const DEFAULT_HEALTH_EXPECT_STATUS: u16 = 200;
/// A hundred probes is minutes at any sane interval; more is a typo.
pub const HEALTH_THRESHOLD_MAX: u32 = 100;

/// `outlier_detection`: passive ejection on consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `1..=CONSECUTIVE_FAILURES_MAX`.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    /// At least `base_ejection_time`.
    pub max_ejection_time: Duration,
    /// `0..=100`; 0 disables ejection.
    pub max_ejection_percent: u8,
}

/// Envoy's defaults (consecutive_5xx 5, 30 s base, 300 s max), with its
/// 10% max ejection raised to 50% so a small pool can shed a bad half.
pub const DEFAULT_OUTLIER_DETECTION: OutlierDetection = OutlierDetection {
    consecutive_failures: 5,
    base_ejection_time: Duration::from_secs(30),
    max_ejection_time: Duration::from_secs(300),
    max_ejection_percent: 50,
};
/// Beyond a thousand in a row, ejection would never trigger in practice.
pub const CONSECUTIVE_FAILURES_MAX: u32 = 1000;

impl Default for OutlierDetection {
    fn default() -> Self {
        DEFAULT_OUTLIER_DETECTION
    }
}

/// `retries`: replay a safe request on another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first try, `1..=RETRY_ATTEMPTS_MAX`.
    pub attempts: u32,
    pub on: RetryOn,
    /// Retries may add at most this percentage to the requests sent, `0..=100`.
    pub budget_percent: u8,
}

/// Which failures a retry follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub status_5xx: bool,
}

pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Each retry multiplies a failing backend's load; five is already a storm.
pub const RETRY_ATTEMPTS_MAX: u32 = 5;
/// Only failures where the backend cannot have acted on the request.
pub const DEFAULT_RETRY_ON: RetryOn = RetryOn {
    connect_failure: true,
    reset: true,
    timeout: false,
    status_5xx: false,
};
/// Linkerd's default retry budget.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u8 = 20;

/// `circuit_breaker`: per-backend limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Requests in flight to one backend (node-wide), `1..=MAX_PENDING_MAX`.
    pub max_pending: u32,
    /// Connections open to one backend (node-wide, idle ones included),
    /// `1..=MAX_BACKEND_CONNECTIONS_MAX`.
    pub max_connections: u32,
    /// `1..=CONSECUTIVE_FAILURES_MAX`.
    pub consecutive_failures: u32,
    pub open_for: Duration,
}

/// Envoy's default max_pending_requests.
pub const DEFAULT_MAX_PENDING: u32 = 1024;
pub const MAX_PENDING_MAX: u32 = 1_000_000;
/// Envoy's default max_connections.
pub const DEFAULT_MAX_BACKEND_CONNECTIONS: u32 = 1024;
pub const MAX_BACKEND_CONNECTIONS_MAX: u32 = 1_000_000;
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);

/// One backend entry of an upstream: an address, or a name resolved through
/// DNS into up to `max_addresses` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub target: BackendTarget,
    /// `1..=WEIGHT_MAX`; every address of a host name takes it, a SRV
    /// name's addresses take their records' weights instead.
    pub weight: u32,
    /// The backend slots this entry holds, `1..=MAX_ADDRESSES_MAX`; 1 for
    /// an address. A name's addresses beyond it are left out (and logged).
    pub max_addresses: usize,
}

/// What a backend entry names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendTarget {
    /// `address = "IP:port"`.
    Address(SocketAddr),
    /// `address = "host.name:port"`: its A and AAAA records.
    Host { name: String, port: u16 },
    /// `srv = "_service._proto.name"`: the targets and ports of its SRV
    /// records of the lowest priority, weighted by the records' weights.
    Srv { name: String },
}

impl BackendTarget {
    /// Resolved through DNS.
    pub fn is_name(&self) -> bool {
        !matches!(self, BackendTarget::Address(_))
    }
}

impl std::fmt::Display for BackendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendTarget::Address(a) => write!(f, "{a}"),
            BackendTarget::Host { name, port } => write!(f, "{name}:{port}"),
            BackendTarget::Srv { name } => write!(f, "{name}"),
        }
    }
}

/// Addresses a DNS name may hold by default: room for a service to grow
/// from a few instances to twice as many without a config change.
pub const DEFAULT_MAX_ADDRESSES: usize = 8;
/// Every slot costs a keep-alive pool, a view entry and a prober per
/// worker whether present or not; past 64 a name should be split.
pub const MAX_ADDRESSES_MAX: usize = 64;

impl Upstream {
    /// Backend slots: one per address entry, `max_addresses` per name, in
    /// entry order. Every per-backend structure of the proxy is indexed by
    /// slot; a name's slots fill and empty as its records change.
    pub fn slot_count(&self) -> usize {
        self.backends.iter().map(|b| b.max_addresses).sum()
    }

    /// The first slot of each entry, in entry order.
    pub fn first_slots(&self) -> Vec<usize> {
        let mut first = Vec::with_capacity(self.backends.len());
        let mut at = 0;
        for b in &self.backends {
            first.push(at);
            at += b.max_addresses;
        }
        first
    }

    /// Each slot's weight and, for an address entry, its address (a
    /// name's slots start without one).
    pub fn slots(&self) -> Vec<(Option<SocketAddr>, u32)> {
        let mut slots = Vec::with_capacity(self.slot_count());
        for b in &self.backends {
            match b.target {
                BackendTarget::Address(a) => slots.push((Some(a), b.weight)),
                _ => slots.extend(std::iter::repeat_n((None, b.weight), b.max_addresses)),
            }
        }
        slots
    }
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
/// nginx's `proxy_timeout` for streams: long enough for a quiet database or
/// message-queue connection, short enough that a dead peer's half of a
/// tunnel is not held for hours.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
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
    /// Every index is in range; empty only when every listener is `tcp`.
    pub routes: Vec<Route>,
    /// Never empty; names are unique.
    pub upstreams: Vec<Upstream>,
    /// `None`: no access log.
    pub access_log: Option<AccessLog>,
    pub error_log: ErrorLog,
    /// `None`: no admin endpoint.
    pub admin: Option<Admin>,
    /// Limits of HTTP/2 connections, on every listener with `http2`.
    pub http2: Http2,
    /// `None`: no fleet; no route has `scope = "fleet"`.
    pub fleet: Option<Fleet>,
    /// How backend names are resolved (defaults when the table is absent).
    pub dns: Dns,
}

/// `[dns]`: how backends named by a host name or a SRV name are resolved.
/// One resolver thread per config generation queries each name again when
/// its records' TTL runs out, clamped to `min_interval..=max_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Servers asked in turn, at most `DNS_NAMESERVERS_MAX`; empty: the
    /// `nameserver` lines of /etc/resolv.conf (127.0.0.1:53 without any).
    pub nameservers: Vec<SocketAddr>,
    /// Shortest time between two lookups of one name, whatever the TTL.
    pub min_interval: Duration,
    /// Longest: a name with a long TTL is still asked this often.
    pub max_interval: Duration,
    /// One query's deadline, per server tried.
    pub timeout: Duration,
}

/// A TTL of 0 or 1 s would otherwise have the resolver query every tick;
/// one second keeps a 1 s TTL honoured.
pub const DEFAULT_DNS_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Below 100 ms a lookup per name would be a load on the nameserver.
pub const DNS_MIN_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Long TTLs (an hour is common) would leave a moved service unnoticed;
/// 30 s bounds how stale a set may get.
pub const DEFAULT_DNS_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// A day: past it the name might as well be an address.
pub const DNS_INTERVAL_MAX: Duration = Duration::from_secs(86_400);
/// A nameserver on the local network answers in milliseconds; two seconds
/// covers a retransmitting one without holding the other names back long.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DNS_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// resolv.conf's own limit (MAXNS) is 3; a few more for an explicit list.
pub const DNS_NAMESERVERS_MAX: usize = 8;

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            min_interval: DEFAULT_DNS_MIN_INTERVAL,
            max_interval: DEFAULT_DNS_MAX_INTERVAL,
            timeout: DEFAULT_DNS_TIMEOUT,
        }
    }
}

impl Config {
    /// Whether any backend entry is a name the resolver must follow.
    pub fn has_dns_backends(&self) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.backends.iter().any(|b| b.target.is_name()))
    }
}

/// `[admin]`: `/metrics` (Prometheus text format) and `/healthz`, served by
/// a thread of its own, off the workers' cores' hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    /// Never one of the listeners' addresses.
    pub address: std::net::SocketAddr,
}

/// `[access_log]`: one line per request, nginx's `combined` format plus the
/// request time and the upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// Opened for appending (created if missing) at start-up.
    pub path: std::path::PathBuf,
    /// A worker writes its buffered lines when they reach this many bytes,
    /// and at every gossip tick; `ACCESS_LOG_BUFFER_MIN..=ACCESS_LOG_BUFFER_MAX`.
    pub buffer: usize,
}

/// `[error_log]`: one line per operator-relevant event (upstream failures,
/// 5xx the proxy answered, refusals, health, ejections, breakers, reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLog {
    /// Opened for appending (created if missing) at start-up; `None`: stderr.
    pub path: Option<std::path::PathBuf>,
    /// Events less severe than this are not written.
    pub level: LogLevel,
    /// Lines of one kind a worker writes per second; the rest are counted
    /// and their number written once the second is over.
    /// `1..=ERROR_LOG_LINES_PER_SECOND_MAX`.
    pub lines_per_second: u32,
}

impl Default for ErrorLog {
    fn default() -> Self {
        ErrorLog {
            path: None,
            level: LogLevel::Info,
            lines_per_second: DEFAULT_ERROR_LOG_LINES_PER_SECOND,
        }
    }
}

/// Enough to see what a flood is made of; few enough that a flood of one
/// kind costs a worker at most this many formatted lines a second.
pub const DEFAULT_ERROR_LOG_LINES_PER_SECOND: u32 = 10;
pub const ERROR_LOG_LINES_PER_SECOND_MAX: u32 = 100_000;

/// `[error_log] level`, most severe first: a level writes its own events and
/// every more severe one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// nginx's `access_log ... buffer=64k`.
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 64 * 1024;
/// One line must fit; a line is at most a head plus a few hundred bytes.
pub const ACCESS_LOG_BUFFER_MIN: usize = 4 * 1024;
pub const ACCESS_LOG_BUFFER_MAX: usize = 16 * 1024 * 1024;

/// `[http2]`: what one HTTP/2 client connection may hold and send, on every
/// listener with `http2` on. Every limit a client could use to make a worker
/// buffer, decode or answer without bound has one here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2 {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open at once,
    /// `1..=HTTP2_MAX_CONCURRENT_STREAMS_MAX`.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a request's decoded header list (RFC 9113
    /// §6.5.2: names, values and 32 bytes per field),
    /// `HTTP2_MAX_HEADER_LIST_BYTES_MIN..=HTTP2_MAX_HEADER_LIST_BYTES_MAX`.
    pub max_header_list_bytes: u32,
    /// SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table the client's encoder
    /// may fill in the proxy's decoder, `0..=HTTP2_HEADER_TABLE_BYTES_MAX`.
    pub header_table_bytes: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: request body bytes a client may send on
    /// one stream before the proxy reads them,
    /// `HTTP2_INITIAL_WINDOW_BYTES_MIN..=HTTP2_INITIAL_WINDOW_BYTES_MAX`.
    pub initial_window_bytes: u32,
    /// The connection's flow-control window (raised by WINDOW_UPDATE on
    /// stream 0): body bytes of all streams together that a client may send
    /// before the proxy reads them,
    /// `HTTP2_CONNECTION_WINDOW_BYTES_MIN..=HTTP2_CONNECTION_WINDOW_BYTES_MAX`.
    pub connection_window_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame payload the proxy accepts,
    /// `HTTP2_MAX_FRAME_BYTES_MIN..=HTTP2_MAX_FRAME_BYTES_MAX` (RFC 9113 §6.5.2).
    pub max_frame_bytes: u32,
    /// Bytes queued toward a client that is not reading, per connection,
    /// `HTTP2_MAX_SEND_BUFFER_BYTES_MIN..=HTTP2_MAX_SEND_BUFFER_BYTES_MAX`.
    pub max_send_buffer_bytes: usize,
    /// Frames of any type a client may send per second on one connection,
    /// `HTTP2_MAX_FRAMES_PER_SECOND_MIN..=HTTP2_MAX_FRAMES_PER_SECOND_MAX`.
    pub max_frames_per_second: u32,
    /// RST_STREAM frames a client may send per second on one connection,
    /// `1..=HTTP2_MAX_RESETS_PER_SECOND_MAX`.
    pub max_resets_per_second: u32,
    /// PING, SETTINGS and PRIORITY frames a client may send per second on one
    /// connection, `1..=HTTP2_MAX_CONTROL_FRAMES_PER_SECOND_MAX`.
    pub max_control_frames_per_second: u32,
    /// CONTINUATION frames one header block may take,
    /// `1..=HTTP2_MAX_CONTINUATION_FRAMES_MAX`.
    pub max_continuation_frames: u32,
}

impl Default for Http2 {
    fn default() -> Self {
        Self {
            max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            max_header_list_bytes: DEFAULT_HTTP2_MAX_HEADER_LIST_BYTES,
            header_table_bytes: DEFAULT_HTTP2_HEADER_TABLE_BYTES,
            initial_window_bytes: DEFAULT_HTTP2_INITIAL_WINDOW_BYTES,
            connection_window_bytes: DEFAULT_HTTP2_CONNECTION_WINDOW_BYTES,
            max_frame_bytes: DEFAULT_HTTP2_MAX_FRAME_BYTES,
            max_send_buffer_bytes: DEFAULT_HTTP2_MAX_SEND_BUFFER_BYTES,
            max_frames_per_second: DEFAULT_HTTP2_MAX_FRAMES_PER_SECOND,
            max_resets_per_second: DEFAULT_HTTP2_MAX_RESETS_PER_SECOND,
            max_control_frames_per_second: DEFAULT_HTTP2_MAX_CONTROL_FRAMES_PER_SECOND,
            max_continuation_frames: DEFAULT_HTTP2_MAX_CONTINUATION_FRAMES,
        }
    }
}

/// nginx's http2_max_concurrent_streams; above RFC 9113 §6.5.2's advice of
/// at least 100, so a browser never waits for a stream slot.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Every open stream holds state and a request upstream; past ten thousand
/// one connection weighs more than a worker's share of clients.
pub const HTTP2_MAX_CONCURRENT_STREAMS_MAX: u32 = 10_000;
/// nginx's large_client_header_buffers total (4 × 8 KiB): every real
/// browser's headers fit after HPACK decoding, with the 32 bytes RFC 9113
/// counts per field, and a decoded head stays small.
pub const DEFAULT_HTTP2_MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;
/// Below 1 KiB a request with a few cookies would be refused.
pub const HTTP2_MAX_HEADER_LIST_BYTES_MIN: u32 = 1024;
/// Above 1 MiB a decoded head per stream costs more than it is worth.
pub const HTTP2_MAX_HEADER_LIST_BYTES_MAX: u32 = 1024 * 1024;
/// The protocol's initial value (RFC 9113 §6.5.2): every encoder already
/// assumes it, so nothing waits on a SETTINGS acknowledgement.
pub const DEFAULT_HTTP2_HEADER_TABLE_BYTES: u32 = 4096;
/// The decoder table is memory per connection; past 64 KiB it buys no
/// compression a proxy's repeated headers need.
pub const HTTP2_HEADER_TABLE_BYTES_MAX: u32 = 64 * 1024;
/// About the protocol's own 65 535, so uploads run as fast as clients
/// expect; the connection window, not this, bounds what one client makes a
/// worker buffer.
pub const DEFAULT_HTTP2_INITIAL_WINDOW_BYTES: u32 = 64 * 1024;
/// Below 1 KiB a body moves a few hundred bytes per round trip.
pub const HTTP2_INITIAL_WINDOW_BYTES_MIN: u32 = 1024;
/// A stream window past 16 MiB is body buffered before the proxy reads it.
pub const HTTP2_INITIAL_WINDOW_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Sixteen default stream windows: uploads are not window-bound below about
/// 80 Mbit/s at 100 ms round trip, and one connection can make a worker
/// buffer at most 1 MiB of request bodies.
pub const DEFAULT_HTTP2_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// The connection window starts at 65 535 and can only be raised, so a
/// smaller setting could not be announced.
pub const HTTP2_CONNECTION_WINDOW_BYTES_MIN: u32 = 64 * 1024;
/// 64 MiB of unread bodies per connection is already more than a worker
/// should hold for one client.
pub const HTTP2_CONNECTION_WINDOW_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// The protocol's initial value and minimum: larger frames only let one
/// stream's frame hold up the others behind it.
pub const DEFAULT_HTTP2_MAX_FRAME_BYTES: u32 = 16_384;
/// RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE is at least 2^14 ...
pub const HTTP2_MAX_FRAME_BYTES_MIN: u32 = 16_384;
/// ... and at most 2^24 - 1.
pub const HTTP2_MAX_FRAME_BYTES_MAX: u32 = 16_777_215;
/// Sixteen default-size frames: enough to keep a fast client's socket fed
/// between two turns of the worker, while a client that stops reading costs
/// at most this per connection.
pub const DEFAULT_HTTP2_MAX_SEND_BUFFER_BYTES: usize = 256 * 1024;
/// Below one default-size frame the queue could not take a full frame.
pub const HTTP2_MAX_SEND_BUFFER_BYTES_MIN: usize = 16 * 1024;
/// Past 16 MiB one stalled client holds more than a worker should lose to it.
pub const HTTP2_MAX_SEND_BUFFER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Far above a page load's few hundred frames, or a 1 Gbit/s upload in
/// default-size frames (about 7 600 a second); low enough that a flood of
/// empty frames costs a worker a bounded share of its core.
pub const DEFAULT_HTTP2_MAX_FRAMES_PER_SECOND: u32 = 50_000;
/// Below 100 a busy page load could trip it.
pub const HTTP2_MAX_FRAMES_PER_SECOND_MIN: u32 = 100;
pub const HTTP2_MAX_FRAMES_PER_SECOND_MAX: u32 = 10_000_000;
/// Rapid Reset (CVE-2023-44487): each reset stream can cost a request
/// upstream. A browser cancels a few streams per navigation, so 200 a
/// second is far above real use and far below a flood.
pub const DEFAULT_HTTP2_MAX_RESETS_PER_SECOND: u32 = 200;
pub const HTTP2_MAX_RESETS_PER_SECOND_MAX: u32 = 1_000_000;
/// PING and SETTINGS floods (CVE-2019-9512, CVE-2019-9515) and PRIORITY
/// churn (CVE-2019-9513) each make the proxy answer or rework state; a
/// client sends a handful of these per connection, not hundreds a second.
pub const DEFAULT_HTTP2_MAX_CONTROL_FRAMES_PER_SECOND: u32 = 200;
pub const HTTP2_MAX_CONTROL_FRAMES_PER_SECOND_MAX: u32 = 1_000_000;
/// The CONTINUATION flood (2024, CVE-2024-27316 and others): a header block
/// of the default 32 KiB list needs 2 default-size frames, so 16 leaves room
/// for clients that send small frames and ends a block that never ends.
pub const DEFAULT_HTTP2_MAX_CONTINUATION_FRAMES: u32 = 16;
pub const HTTP2_MAX_CONTINUATION_FRAMES_MAX: u32 = 1024;
