//! One request and its response, from a routed request head to the last
//! byte of the response: the exchange owns the upstream connection it
//! borrows from the pool, both its buffers and cancellers (lent by the
//! client connection so a warm connection allocates nothing), and every
//! deadline. It ends with one decision about the upstream connection:
//! back to the pool only when both messages are complete and nothing else
//! arrived, else closed.
//!
//! The stages live in the modules a newcomer would look for: [`request`]
//! (the head patch and the body upload), [`response`] (the relay),
//! [`retry`] (the one replay rule) and [`error`] (one error type, mapped to
//! a status, an outcome and a retry class in one place). The exchange sees
//! its client only through [`Client`], so a TLS stream or an HTTP/2 stream
//! can drive it as a TCP connection does.

pub mod error;
mod request;
mod response;
mod retry;

use ringgate_core::auth::{Identity, RouteAuth};
use std::cell::Cell;
use std::io::Write as _;
use std::time::Instant;

use ringgate_config::{Limits, LogLevel, Route};
use ringgate_core::backend_view::Outcome;
use ringgate_core::chunked::ChunkLimits;
use ringgate_core::http::{ForwardedClient, HeadLimits, HeadScratch, RequestHead};
use ringgate_core::proxy_protocol::ConnAddrs;

use crate::access_log::{Captured, Sent};
use crate::error_log::{write_request, Errno, ErrorLog, Kind};
use crate::io::{Abort, Gather, WriteFail};
use crate::metrics::TunnelKind;
use crate::stream::{StreamReader, StreamWriter};
use crate::upstream::{ConnectError, UpstreamConn, UpstreamState};
use error::ExchangeError;
pub use error::{
    chunk_refusal, error_response, error_text, Fault, Refusal, CLOSE_LINE, KEEP_ALIVE_LINE,
};
use request::{lay_out_head, send_body, Plan, Upload};
pub use response::HEAD_READ_BYTES;
use response::{relay, Added, RelayDone, RelayIo, RelaySpec};

pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

thread_local! {
    /// This worker's `Date` value, formatted once a second.
    static DATE: crate::log_buffer::Stamp = crate::log_buffer::Stamp::http_date();
}

/// Writes `Date: <now>` and its CRLF (RFC 9110 §6.6.1): on the proxy's own
/// answers, as an origin's, and on a forwarded response that came without.
pub fn write_date_line(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Date: ");
    DATE.with(|d| d.write(out, std::time::SystemTime::now()));
    out.extend_from_slice(b"\r\n");
}

/// What happens to the client connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
    /// Close at once, without lingering: the client is gone (it closed,
    /// or stopped taking its response), or its response was cut, so no
    /// answer is left to deliver.
    Cut,
    /// The backend answered `101`: the connection is a tunnel now, its
    /// upstream end left in [`Client::switched`].
    Switched,
}

/// What an exchange whose backend switched protocols (`101`) leaves its
/// client connection: the upstream connection, now the far end of a
/// tunnel, and what the backend's bookkeeping needs when the tunnel ends.
/// Whatever either side sent past its head has been passed on.
pub struct Switched {
    pub conn: UpstreamConn,
    /// Its upstream, indexed like `config.upstreams`.
    pub upstream: usize,
    pub kind: TunnelKind,
    /// From the try's start to the `101`, the backend's latency; its
    /// outcome is recorded when the tunnel ends, so an open tunnel counts
    /// as a request in flight.
    pub latency_us: u64,
    /// Bytes the client sent past its request head (already forwarded).
    pub early_up: u64,
}

/// The worker-wide settings an exchange reads; nothing else of the worker.
pub struct Context<'a> {
    pub limits: &'a Limits,
    /// Every 5xx the exchange answers gets one line here, with its cause.
    pub log: &'a ErrorLog,
    pub head_limits: HeadLimits,
    pub chunk_limits: ChunkLimits,
    /// A draining worker closes every client connection after its response.
    pub draining: &'a Cell<bool>,
    /// The request-id header (`[server] request_id`).
    pub request_id: Option<&'a str>,
    /// This proxy's `Via` pseudonym (`[server] via`), `None` when off.
    pub via: Option<&'a str>,
}

/// What an exchange borrows from its client connection.
pub struct Client<'a> {
    pub r: &'a mut StreamReader,
    pub w: &'a mut StreamWriter,
    /// Cancels the pending client read (shared with the worker's drain).
    pub read_abort: &'a Abort,
    pub write_abort: &'a Abort,
    pub addr: &'a ForwardedClient,
    /// The connection's addresses, for a backend's PROXY protocol header.
    pub conn: ConnAddrs,
    /// What went back, for the access log.
    pub sent: &'a Sent,
    /// The listener's mTLS subject header and this client's verified
    /// subject, if any.
    pub subject: Option<(&'a str, Option<&'a str>)>,
    /// The route's auth and the caller it established: its header lines go
    /// up, the client's own copies of those headers do not.
    pub auth: Option<(&'a RouteAuth, &'a Identity)>,
    /// Where a `101` leaves the upstream connection ([`Next::Switched`]).
    pub switched: &'a mut Option<Box<Switched>>,
}

/// What a client connection keeps for the request it is serving, besides
/// its [`Buffers`]: taken from the worker's pool with them and given back
/// with them, so an idle keep-alive connection holds neither.
pub struct RequestState {
    /// Whom the request is from: the connection's peer, or for a trusted
    /// proxy the client its forwarding headers name.
    pub client: ForwardedClient,
    /// What went back for the request (for the access log).
    pub sent: Sent,
    /// The request's access-log fields, when logging.
    pub captured: Captured,
    /// The caller route authentication established (reused, so a warm
    /// connection does not allocate for it).
    pub identity: Identity,
    /// When the request's head was read, when logging.
    pub started: Option<Instant>,
    /// Cancels the client writes that time out.
    pub write_abort: Abort,
}

impl Default for RequestState {
    /// Set for its connection's peer when a request begins.
    fn default() -> Self {
        RequestState {
            client: ForwardedClient::new(std::net::Ipv4Addr::UNSPECIFIED.into()),
            sent: Sent::default(),
            captured: Captured::default(),
            identity: Identity::default(),
            started: None,
            write_abort: Abort::default(),
        }
    }
}

/// Buffers and cancellers an exchange works in, kept by the client
/// connection between exchanges so that a warm connection allocates
/// nothing.
pub struct Buffers {
    /// Client bytes: the head being parsed, any body bytes read with it, and
    /// pipelined requests after it.
    pub req: Gather,
    pub req_scratch: HeadScratch,
    /// Scratch for streaming request bodies.
    body: Vec<u8>,
    /// Upstream bytes: response head and body chunks.
    resp: Gather,
    resp_scratch: HeadScratch,
    /// The consistent-hash key of the current request, copied out of `req`
    /// so the buffer can move into I/O while the key is used.
    hash_key: Vec<u8>,
    has_hash_key: bool,
    /// Patch bytes that go before the head's ranges (a rewritten request
    /// line); the rest of the patch goes after them.
    patch_prefix: usize,
    up_read_abort: Abort,
    up_write_abort: Abort,
    /// This request's id (`[server] request_id`; empty when off).
    pub request_id: Vec<u8>,
    /// The id was made by the proxy: it goes upstream in the patch, in
    /// place of any the client sent.
    pub request_id_made: bool,
    /// Field lines the proxy adds to this request's final response (its
    /// id, CORS fields), in place of any the backend sent of them.
    pub added_fields: Vec<u8>,
    /// `added_fields` holds CORS fields: the backend's are dropped.
    pub cors_added: bool,
}

impl Buffers {
    /// Empties the buffers for the next connection, and gives back what
    /// one large head, body or response made them grow to.
    pub fn recycle(&mut self) {
        fn trim(v: &mut Vec<u8>, keep: usize) {
            v.clear();
            if v.capacity() > keep {
                v.shrink_to(keep);
            }
        }
        trim(&mut self.req.source, HEAD_READ_BYTES);
        trim(&mut self.req.patch, RECYCLED_PATCH_BYTES);
        trim(&mut self.resp.source, HEAD_READ_BYTES);
        trim(&mut self.resp.patch, RECYCLED_PATCH_BYTES);
        trim(&mut self.body, request::BODY_READ_BYTES);
        trim(&mut self.hash_key, RECYCLED_PATCH_BYTES);
        self.req.clear_segments();
        self.resp.clear_segments();
        self.has_hash_key = false;
        self.patch_prefix = 0;
        self.request_id.clear();
        self.request_id_made = false;
        trim(&mut self.added_fields, RECYCLED_PATCH_BYTES);
        self.cors_added = false;
    }
}

/// What a recycled patch or key keeps: a few forwarding fields' worth.
const RECYCLED_PATCH_BYTES: usize = 1024;

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            req: Gather::with_capacity(HEAD_READ_BYTES),
            req_scratch: HeadScratch::default(),
            body: Vec::new(),
            resp: Gather::with_capacity(HEAD_READ_BYTES),
            resp_scratch: HeadScratch::default(),
            hash_key: Vec::new(),
            has_hash_key: false,
            patch_prefix: 0,
            up_read_abort: Abort::default(),
            up_write_abort: Abort::default(),
            request_id: Vec::new(),
            request_id_made: false,
            added_fields: Vec::new(),
            cors_added: false,
        }
    }
}

/// Which route a request took, for the error log: its index in
/// `config.routes` and its listener's name.
#[derive(Clone, Copy)]
pub struct RouteId<'a> {
    pub index: usize,
    pub listener: &'a str,
}

/// Proxies one routed request, retrying where [`retry::Replay`] allows.
/// `Err`: nothing of a response reached the client, which gets this status
/// and a close. Every status the proxy answers here, and every failure
/// after a response started, gets one error-log line with its cause.
pub async fn run(
    cx: &Context<'_>,
    client: Client<'_>,
    bufs: &mut Buffers,
    (route, id): (&Route, RouteId<'_>),
    upstream: &UpstreamState,
    head: &RequestHead,
) -> Result<Next, Refusal> {
    let addr = client.addr;
    let tries = Cell::new(0u32);
    let res = run_tries(cx, client, bufs, (route, id), upstream, head, &tries).await;
    let (refusal, cause) = match &res {
        Ok(_) => return res.map_err(|f| f.refusal),
        Err(failed) => (failed.refusal, failed.cause),
    };
    let level = if refusal.status >= 500 {
        LogLevel::Error
    } else {
        LogLevel::Info
    };
    let kind = if refusal.status >= 500 {
        Kind::Proxy5xx
    } else {
        Kind::Refused
    };
    cx.log.event(level, kind, |b| {
        let _ = write!(
            b,
            "status={} reason=\"{}\" ",
            refusal.status, refusal.reason
        );
        describe(b, &bufs.req.source, head, route, id, addr);
        describe_try(b, upstream, cause, tries.get());
    });
    res.map_err(|f| f.refusal)
}

/// `route=... upstream=... client=... request="..."`.
fn describe(
    b: &mut Vec<u8>,
    src: &[u8],
    head: &RequestHead,
    route: &Route,
    id: RouteId<'_>,
    client: &ForwardedClient,
) {
    let _ = write!(
        b,
        "route=routes[{}] listener={} host={} prefix={} client=",
        id.index,
        id.listener,
        route.host.as_deref().unwrap_or("*"),
        route.path_prefix
    );
    b.extend_from_slice(client.ip_bytes());
    write_request(b, src, head);
}

/// ` upstream=... backend=... cause=... errno=... tries=N`.
fn describe_try(
    b: &mut Vec<u8>,
    upstream: &UpstreamState,
    cause: Option<(ExchangeError, usize)>,
    tries: u32,
) {
    b.push(b' ');
    match cause {
        None => {
            let _ = write!(b, "upstream={} backend=-", upstream.config.name);
        }
        Some((e, backend)) => {
            upstream.write_backend(b, backend);
            let _ = write!(b, " cause={}", e.cause());
            match e.fault {
                Fault::ConnectFailed(errno) => {
                    let _ = write!(b, " errno={}", Errno(errno));
                }
                Fault::ConnectTimedOut => {
                    let _ = write!(b, " timeout={:?}", upstream.config.connect_timeout);
                }
                Fault::ResponseTimedOut => {
                    let _ = write!(b, " timeout={:?}", upstream.config.response_timeout);
                }
                Fault::UpstreamSendTimedOut => {
                    let _ = write!(b, " timeout={:?}", upstream.config.send_timeout);
                }
                Fault::BadResponse(why) => {
                    let _ = write!(b, " detail=\"{why}\"");
                }
                _ => {}
            }
        }
    }
    let _ = write!(b, " tries={tries}");
}

/// Why `run_tries` gave up: what the client is told, and the last try's
/// error and backend (`None`: no backend was tried).
struct Failed {
    refusal: Refusal,
    cause: Option<(ExchangeError, usize)>,
}

impl From<Refusal> for Failed {
    fn from(refusal: Refusal) -> Self {
        Failed {
            refusal,
            cause: None,
        }
    }
}

async fn run_tries(
    cx: &Context<'_>,
    mut client: Client<'_>,
    bufs: &mut Buffers,
    (route, id): (&Route, RouteId<'_>),
    upstream: &UpstreamState,
    head: &RequestHead,
    tries: &Cell<u32>,
) -> Result<Next, Failed> {
    let origin = request::Origin {
        addr: client.addr,
        scheme: client.w.scheme(),
        received: client.w.received_protocol(head.version),
        subject: client.subject,
        auth: client.auth,
    };
    let plan = request::prepare(cx, bufs, route, upstream, head, origin)?;
    let mut ex = Exchange {
        route,
        upstream,
        head,
        plan,
    };
    upstream.count_request();
    let retry_on = upstream.config.retries.map(|r| r.on).unwrap_or_default();
    let mut retries_left = upstream.config.retries.map_or(0, |r| r.attempts);
    let mut avoid = None;
    // A pooled connection found closed under a request is not the backend's
    // failure: the request (when replayable) goes once more on a fresh one.
    let mut fresh = false;
    loop {
        let now = Instant::now();
        let key = bufs.has_hash_key.then_some(&bufs.hash_key[..]);
        let backend = upstream
            .pick(key, avoid, now)
            .ok_or(Refusal::new(503, "no healthy backend available"))?;
        let hold_5xx = retries_left > 0
            && retry_on.status_5xx
            && ex.plan.replay.can_resend_after_a_response()
            && upstream.retry_affordable();
        upstream.on_start(backend, now);
        client
            .sent
            .upstream
            .set(Some(upstream.backend_addr(backend)));
        let started = now;
        let one_try = Try {
            backend,
            fresh,
            hold_5xx,
        };
        tries.set(tries.get() + 1);
        let attempt = attempt(cx, &mut client, bufs, &mut ex, one_try).await;
        let now = Instant::now();
        let (e, reused) = match attempt {
            Ok((Next::Switched, _)) => {
                if let Some(switched) = client.switched.as_deref_mut() {
                    switched.latency_us = now.duration_since(started).as_micros() as u64;
                }
                return Ok(Next::Switched);
            }
            Ok((next, status)) => {
                let outcome = if status >= 500 {
                    Outcome::Status5xx
                } else {
                    Outcome::Success {
                        latency_us: now.duration_since(started).as_micros() as u64,
                    }
                };
                upstream.on_end(backend, outcome, now);
                return Ok(next);
            }
            Err(failed) => failed,
        };
        // A GOAWAY's or a refusal's remedy is the same: a new connection.
        let stale = reused
            && !fresh
            && matches!(
                e.fault,
                Fault::UpstreamClosed | Fault::UpstreamWriteFailed | Fault::UpstreamRefused
            );
        upstream.on_end(
            backend,
            if stale { Outcome::Aborted } else { e.outcome() },
            now,
        );
        let cause = Some((e, backend));
        let Some(refusal) = e.refusal() else {
            if e.response_started && !e.is_clients() {
                cx.log.event(LogLevel::Warn, Kind::ResponseCut, |b| {
                    let _ = write!(
                        b,
                        "upstream failed after the response started; client connection closed "
                    );
                    describe(b, &bufs.req.source, head, route, id, client.addr);
                    describe_try(b, upstream, cause, tries.get());
                });
            }
            return Ok(Next::Cut);
        };
        if !ex.plan.replay.allowed(&e) {
            return Err(Failed { refusal, cause });
        }
        if stale {
            cx.log.event(LogLevel::Debug, Kind::AttemptFailed, |b| {
                b.extend_from_slice(b"pooled connection found closed; resending on a new one ");
                upstream.write_backend(b, backend);
            });
            fresh = true;
            avoid = None;
            continue;
        }
        if retries_left > 0 && e.retry_class(retry_on) && upstream.take_retry() {
            cx.log.event(LogLevel::Warn, Kind::AttemptFailed, |b| {
                b.extend_from_slice(b"retrying on another backend");
                describe_try(b, upstream, cause, tries.get());
            });
            retries_left -= 1;
            fresh = false;
            avoid = Some(backend);
            continue;
        }
        return Err(Failed { refusal, cause });
    }
}

/// One routed request and what every try of it shares.
struct Exchange<'a> {
    route: &'a Route,
    upstream: &'a UpstreamState,
    head: &'a RequestHead,
    plan: Plan,
}

/// What changes from one try to the next.
struct Try {
    backend: usize,
    /// A new connection, not a pooled one (after a pooled one was found
    /// closed under the request).
    fresh: bool,
    /// A 5xx is held back for a retry instead of forwarded.
    hold_5xx: bool,
}

/// One try against one backend. `Ok((next, status))`: a response reached
/// the client. `Err((error, reused))`, with whether the connection came
/// from the pool.
async fn attempt(
    cx: &Context<'_>,
    client: &mut Client<'_>,
    bufs: &mut Buffers,
    ex: &mut Exchange<'_>,
    one_try: Try,
) -> Result<(Next, u16), (ExchangeError, bool)> {
    let Exchange {
        route,
        upstream,
        head,
        ref mut plan,
    } = *ex;
    let Try {
        backend,
        fresh,
        hold_5xx,
    } = one_try;
    let mut conn: UpstreamConn = match upstream.checkout(backend, fresh, client.conn).await {
        Ok(conn) => conn,
        Err(e) => {
            let fault = match e {
                ConnectError::TimedOut => Fault::ConnectTimedOut,
                ConnectError::Failed(errno) => Fault::ConnectFailed(errno),
                ConnectError::Overflow => Fault::ConnectionLimit,
                ConnectError::Tls => Fault::TlsHandshakeFailed,
            };
            return Err((fault.into(), false));
        }
    };
    let reused = conn.reused;
    let fail = |f: Fault| Err((ExchangeError::from(f), reused));
    client.read_abort.reset();
    client.write_abort.reset();
    bufs.up_read_abort.reset();
    bufs.up_write_abort.reset();

    lay_out_head(bufs, head.head_len, plan.forwarded_len);
    let gather = std::mem::take(&mut bufs.req);
    let send_timeout = upstream.config.send_timeout;
    let (res, gather) = conn
        .w
        .send_gather(gather, send_timeout, &bufs.up_write_abort)
        .await;
    bufs.req = gather;
    match res {
        Ok(()) => {}
        Err(WriteFail::TimedOut) => return fail(Fault::UpstreamSendTimedOut),
        Err(_) => return fail(unless_unprocessed(Fault::UpstreamWriteFailed, &mut conn)),
    }
    if head.expect_continue && plan.body_left.is_some() {
        let timeout = cx.limits.send_timeout;
        let whole = 0..CONTINUE_100.len();
        let (sent, _) = client
            .w
            .send_range(CONTINUE_100, whole, timeout, client.write_abort)
            .await;
        if sent.is_err() {
            return fail(Fault::ClientGone);
        }
    }

    let sending = Cell::new(plan.body_left.is_some());
    let progress = Cell::new(Instant::now());
    let spec = RelaySpec {
        request_was_head: head.is_head_method,
        client_version: head.version,
        client_closing: !head.keep_alive,
        edits: &route.response_headers,
        added: Added {
            fields: &bufs.added_fields,
            request_id: cx.request_id,
            cors: bufs.cors_added,
        },
        upgrade: plan
            .upgrade
            .map(|allowed| route.upgrade[allowed].as_bytes()),
        response_timeout: upstream.config.response_timeout,
        hold_5xx,
        sending: &sending,
        progress: &progress,
    };
    let io = RelayIo {
        up: &mut conn.r,
        up_read_abort: &bufs.up_read_abort,
        up_write_abort: &bufs.up_write_abort,
        client: client.w,
        client_write_abort: client.write_abort,
        client_read_abort: client.read_abort,
        resp: &mut bufs.resp,
        scratch: &mut bufs.resp_scratch,
        sent: client.sent,
    };
    let relaying = relay(cx, &spec, io);
    let (relayed, uploaded) = match plan.body_left.take() {
        None => (relaying.await, Ok(0..0)),
        Some(left) => {
            let upload = Upload {
                client: client.r,
                client_read_abort: client.read_abort,
                body_read_timeout: cx.limits.body_read_timeout,
                up: &mut conn.w,
                up_write_abort: &bufs.up_write_abort,
                up_read_abort: &bufs.up_read_abort,
                send_timeout,
                sending: &sending,
                progress: &progress,
            };
            let (uploaded, relayed) =
                monoio::join!(send_body(upload, &mut bufs.body, left), relaying);
            (relayed, uploaded)
        }
    };
    match (relayed, uploaded) {
        (
            Ok(RelayDone {
                upgraded: Some(head_len),
                ..
            }),
            Ok(_),
        ) => {
            let idle = upstream.config.tunnel_idle_timeout;
            let lens = (plan.forwarded_len, head_len);
            let early = pass_early_bytes(client, &mut conn, bufs, lens, idle).await;
            // A route that runs an exchange has an upstream.
            let (Some(early_up), Some(index)) = (early, route.upstream) else {
                return Ok((Next::Close, 101));
            };
            *client.switched = Some(Box::new(Switched {
                conn,
                upstream: index,
                kind: plan.upgrade.map_or(TunnelKind::Upgrade, |allowed| {
                    request::tunnel_kind(&route.upgrade[allowed])
                }),
                latency_us: 0,
                early_up,
            }));
            Ok((Next::Switched, 101))
        }
        (Ok(done), Ok(leftover)) => {
            if done.surplus {
                upstream.taint(conn.backend, Instant::now());
            }
            if done.leaves_upstream_clean(true) {
                upstream.checkin(conn);
            }
            bufs.req.source.drain(..plan.forwarded_len);
            bufs.req.source.extend_from_slice(&bufs.body[leftover]);
            let next = if done.client_close {
                Next::Close
            } else {
                Next::KeepAlive
            };
            Ok((next, done.status))
        }
        // The response went out but the request body did not end cleanly:
        // the client connection is out of sync, the upstream one too.
        (Ok(done), Err(_)) => Ok((Next::Close, done.status)),
        (Err(e), _) if e.response_started => Err((e, reused)),
        (Err(e), Ok(_)) => Err((unless_unprocessed(e.fault, &mut conn).into(), reused)),
        (Err(e), Err(upload_fault)) => {
            // The half that failed first has the cause; the other was
            // cancelled by it.
            let client_side = matches!(
                upload_fault,
                Fault::BadChunk(_) | Fault::BodyTimedOut | Fault::ClientGone
            );
            let cause = if e.fault == Fault::Aborted || client_side {
                upload_fault
            } else {
                e.fault
            };
            Err((unless_unprocessed(cause, &mut conn).into(), reused))
        }
    }
}

/// `fault`, unless it is the upstream's breaking off before its response
/// and the backend said it did not act on the request (an HTTP/2 stream it
/// refused or left out of its GOAWAY): then [`Fault::UpstreamRefused`],
/// which may be sent again.
fn unless_unprocessed(fault: Fault, conn: &mut UpstreamConn) -> Fault {
    let broke_off = matches!(
        fault,
        Fault::UpstreamClosed | Fault::UpstreamWriteFailed | Fault::Aborted
    );
    if broke_off && conn.r.backend_left_unprocessed() {
        Fault::UpstreamRefused
    } else {
        fault
    }
}

/// After a `101`: what either side sent past its head goes on first (a
/// client's first frames read with its request, the backend's with its
/// answer), then the exchange's buffers are emptied (the set goes back to
/// the pool smaller, and grows again when next used): the tunnel that
/// follows holds none of them. `Some`: the bytes that went up; `None`: a
/// side failed, the connection closes.
async fn pass_early_bytes(
    client: &mut Client<'_>,
    conn: &mut UpstreamConn,
    bufs: &mut Buffers,
    (request_len, response_len): (usize, usize),
    idle: std::time::Duration,
) -> Option<u64> {
    let abort = Abort::default();
    let early_up = bufs.req.source.len() - request_len;
    if early_up > 0 {
        let range = request_len..bufs.req.source.len();
        let (res, buf) = conn
            .w
            .send_range(std::mem::take(&mut bufs.req.source), range, idle, &abort)
            .await;
        bufs.req.source = buf;
        res.ok()?;
    }
    let early_down = bufs.resp.source.len() - response_len;
    if early_down > 0 {
        let range = response_len..bufs.resp.source.len();
        let (res, buf) = client
            .w
            .send_range(std::mem::take(&mut bufs.resp.source), range, idle, &abort)
            .await;
        bufs.resp.source = buf;
        res.ok()?;
        client.sent.add_body(early_down);
    }
    for v in [
        &mut bufs.req.source,
        &mut bufs.req.patch,
        &mut bufs.resp.source,
        &mut bufs.resp.patch,
        &mut bufs.body,
    ] {
        *v = Vec::new();
    }
    Some(early_up as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_buffers_go_back_to_their_normal_size() {
        let mut bufs = Buffers::default();
        bufs.req.source.resize(1 << 20, b'h');
        bufs.resp.source.resize(4 << 20, b'r');
        bufs.body.resize(1 << 20, b'b');
        bufs.req.patch.resize(64 << 10, b'p');
        bufs.hash_key.resize(8 << 10, b'k');
        bufs.has_hash_key = true;
        bufs.recycle();
        assert!(bufs.req.source.is_empty() && bufs.req.source.capacity() <= HEAD_READ_BYTES);
        assert!(bufs.resp.source.is_empty() && bufs.resp.source.capacity() <= HEAD_READ_BYTES);
        assert!(bufs.body.is_empty() && bufs.body.capacity() <= request::BODY_READ_BYTES);
        assert!(bufs.req.patch.capacity() <= RECYCLED_PATCH_BYTES);
        assert!(bufs.hash_key.capacity() <= RECYCLED_PATCH_BYTES);
        assert!(!bufs.has_hash_key);
    }
}
