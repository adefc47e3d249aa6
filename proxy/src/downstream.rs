//! One client connection, as a readable loop: read head → route → answer
//! locally (404, 429) or run an [`exchange`](crate::exchange) → keep-alive
//! or close. An HTTP/2 connection (ALPN `h2`, or the preface on a cleartext
//! listener that allows it) goes to [`crate::http2`] instead, whose streams
//! each come back through [`Downstream::handle`]. The connection owns its halves, its cancellers and the buffers
//! every exchange on it reuses; the exchange owns everything about one
//! request and its response.

use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringgate_config::{LogLevel, RateLimitKey, Route};
use ringgate_core::chunked::ChunkedDecoder;
use ringgate_core::http::{
    any_method_override, header_value, normalize_path, parse_request, path_as_backends_read,
    ForwardedClient, RequestBody, RequestHead, Version,
};
use ringgate_core::proxy_protocol::ConnAddrs;
use ringgate_core::ratelimit::Admission;

use crate::access_log::AccessLog;
use crate::checks;
use crate::compose;
use crate::cors;
use crate::error_log::{write_request, Kind};
use crate::exchange::{
    self, chunk_refusal, error_response, error_text, Buffers, Client, Context, Next, Refusal,
    RequestState, RouteId, Switched, CLOSE_LINE, CONTINUE_100, HEAD_READ_BYTES, KEEP_ALIVE_LINE,
};
use crate::http2;
use crate::idle::IdleDeadlines;
use crate::io::{wait_readable_by, Abort, ReadFail};
use crate::schema;
use crate::state::{ConnControl, Worker};
use crate::stream::{StreamReader, StreamWriter};
use crate::tls;
use crate::tunnel::{TunnelLine, Upgraded};

thread_local! {
    /// A path as backends may read it, for the rare request whose path they
    /// read otherwise than it was routed.
    static PATH_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the request would take another route were its path read as
/// some backends read it ([`path_as_backends_read`]): `/admin%2Fsecret`
/// (nginx's `/admin/secret`), `/admin\secret` (IIS's) or `/admin;x/secret`
/// (Tomcat's) miss an `/admin/` route for another. Costs one `memchr3`
/// when the path has no `;`, `\` or `%`.
fn routed_otherwise_as_backends_read(
    router: &ringgate_core::router::Router,
    host: Option<&[u8]>,
    path: &[u8],
    head: &RequestHead,
    src: &[u8],
    route: Option<usize>,
) -> bool {
    PATH_SCRATCH.with(|scratch| {
        let mut read = scratch.borrow_mut();
        path_as_backends_read(path, &mut read)
            && router.find_request(
                host,
                &read,
                &src[head.method.clone()],
                &src[..head.head_len],
            ) != route
    })
}

/// Whether a method-override field (`X-HTTP-Method-Override: DELETE` on a
/// POST, which Rack, Symfony and Laravel backends run as a DELETE) names a
/// method that takes another route. Only a listener with routes that list
/// methods looks.
fn routed_otherwise_by_method_override(
    router: &ringgate_core::router::Router,
    host: Option<&[u8]>,
    path: &[u8],
    fields: &[u8],
    route: Option<usize>,
) -> bool {
    router.routes_by_method()
        && any_method_override(fields, |method| {
            router.find_request(host, path, method, fields) != route
        })
}

/// How long a kept-alive connection keeps its buffers while it waits for a
/// next request. Longer than a busy client's gap between requests (so
/// those never pay for the pool), short against the keep-alive timeout (so
/// idle clients cost little more than their sockets).
const IDLE_BUFFER_GRACE: Duration = Duration::from_millis(50);

pub(crate) struct Downstream {
    pub(crate) r: StreamReader,
    pub(crate) w: StreamWriter,
    /// The connection's addresses, as a PROXY header to a backend names them.
    conn: ConnAddrs,
    /// Buffers and cancellers every exchange on this connection reuses,
    /// taken from the worker's pool when a request arrives and given back
    /// once the connection has been idle for `IDLE_BUFFER_GRACE`: an idle
    /// keep-alive connection holds none.
    pub(crate) bufs: Option<Box<Buffers>>,
    /// The connection's read canceller, shared with the worker so a drain
    /// can close the connection while it waits for a next request.
    ctl: Rc<ConnControl>,
    /// The current request's state, taken from the worker's pool when
    /// handling begins and given back with the buffers.
    req: Option<Box<RequestState>>,
    /// The negotiated TLS version for the access log (`-`: plain).
    tls_version: &'static str,
    /// The verified client certificate's subject (mTLS).
    client_subject: Option<Box<str>>,
    /// The upstream end of the tunnel a `101` made of this connection.
    switched: Option<Box<Switched>>,
}

/// Serves an HTTP/1.1 client connection that [`open`] made ready, from
/// its first request. `Some`: a backend's `101` made it a tunnel, which
/// the caller runs in a task of its own so that everything this
/// connection's task holds (its state across the exchange, its buffers)
/// is freed for the tunnel's life.
///
/// This future lives as long as the connection and holds only what an
/// idle one needs: the connection's state (boxed) and its idle wait. Its
/// busy phases run in futures boxed for their while, one allocation per
/// phase and none per request.
pub async fn serve(
    worker: &Rc<Worker>,
    listener: usize,
    mut d: Box<Downstream>,
) -> Option<Upgraded> {
    let mut first = true;
    let mut linger = false;
    loop {
        let after_grace = match Box::pin(d.serve_busy(worker, listener, first)).await {
            Phase::Idle { after_grace } => after_grace,
            Phase::Closed { unread_input } => {
                linger = unread_input;
                break;
            }
        };
        first = false;
        // Nothing is in flight: the canceller is made again on waking.
        d.ctl.abort.release();
        // A drain closes a connection idle past the grace at once.
        if worker.draining.get() {
            break;
        }
        let woke = d.wait_idle(worker, after_grace).await;
        d.ctl.idle.set(false);
        if !woke {
            break;
        }
    }
    if let Some(switched) = d.switched.take() {
        // The request that became a tunnel: its access-log line is
        // written when the tunnel ends.
        let request = d.req.take();
        d.release_buffers(worker);
        // The tunnel has cancellers of its own; the connection's read
        // canceller, kept for a drain, holds nothing for it.
        d.ctl.abort.release();
        return Some(d.into_tunnel(worker, switched, request));
    }
    // A client that stopped reading does not hold the connection for a
    // whole send_timeout just for its close_notify.
    let timeout = worker.config.limits.send_timeout.min(CLOSE_NOTIFY_TIMEOUT);
    if matches!(d.w, StreamWriter::Tls(_)) {
        Box::pin(d.w.close(timeout, &Abort::default())).await;
    }
    if linger {
        Box::pin(d.linger(worker)).await;
    }
    d.release_buffers(worker);
    let Downstream { r, w, .. } = *d;
    crate::stream::close_connection(r, w);
    None
}

/// How a busy phase of a connection ended.
enum Phase {
    /// No next request within `IDLE_BUFFER_GRACE` (`after_grace`), or a
    /// sparse client's (`ConnControl::sparse`): the buffers went back to
    /// the worker's pool and the connection is idle (`ConnControl::idle`).
    Idle { after_grace: bool },
    /// The connection is done: closed, timed out, refused, draining, or
    /// switched to a tunnel. `unread_input`: the proxy answered before it
    /// read the whole request (a refused head or body, a cut upload) or
    /// holds bytes past it, so the client may still be sending, and the
    /// close lingers.
    Closed { unread_input: bool },
}

/// A connection's set-up, `addrs` being those it is accounted to (its
/// own, or what its PROXY protocol header carried): its TLS handshake
/// and, where the listener allows HTTP/2, the protocol's choice. The
/// connection comes back ready for its protocol's loop (`None`: it ended,
/// its handshake failed).
pub(crate) async fn open(
    worker: &Rc<Worker>,
    listener: usize,
    stream: TcpStream,
    addrs: ConnAddrs,
    ctl: Rc<ConnControl>,
) -> Option<Opened> {
    let peer_ip = addrs.src.ip();
    let (r, w) = stream.into_split();
    let write_abort = Abort::default();
    let mut client_subject = None;
    let mut h2 = false;
    let (r, w, tls_version) = match &worker.tls[listener] {
        None => (StreamReader::Plain(r), StreamWriter::Plain(w), "-"),
        Some(config) => {
            let timeout = worker.config.limits.tls_handshake_timeout;
            match tls::accept(r, w, config.clone(), timeout, &ctl.abort, &write_abort).await {
                Ok((r, w, negotiated)) => {
                    worker.counters.tls_handshake(&negotiated);
                    client_subject = negotiated.client_subject.as_deref().map(Box::from);
                    h2 = negotiated.h2;
                    (
                        StreamReader::Tls(r),
                        StreamWriter::Tls(w),
                        negotiated.version_name(),
                    )
                }
                Err(e) => {
                    worker.counters.tls_handshake_failed(&e);
                    worker
                        .error_log
                        .event(LogLevel::Info, Kind::TlsHandshake, |b| {
                            let _ = write!(
                                b,
                                "listener={} client={peer_ip} failed: {e}",
                                worker.config.listeners[listener].name
                            );
                        });
                    return None;
                }
            }
        }
    };
    let mut r = r;
    let mut early = Vec::new();
    if !h2 && worker.tls[listener].is_none() && worker.config.listeners[listener].http2 {
        let timeout = worker.config.limits.header_read_timeout;
        h2 = read_preface(&mut r, &mut early, timeout, &ctl.abort).await;
    }
    if h2 {
        let conn = http2::Conn {
            listener,
            addrs,
            ctl,
            write_abort,
            tls_version,
            client_subject,
            early,
        };
        return Some(Opened::Http2(Box::new(Http2Start { r, w, conn })));
    }
    let mut d = Box::new(Downstream {
        r,
        w,
        conn: addrs,
        bufs: None,
        ctl,
        req: None,
        tls_version,
        client_subject,
        switched: None,
    });
    if !early.is_empty() {
        let bufs = d.bufs.insert(worker.buffers.take());
        bufs.req.source.extend_from_slice(&early);
    }
    Some(Opened::Http1(d))
}

/// A client connection after its set-up, for its protocol's loop. An
/// HTTP/2 connection is served by the caller, not inside [`open`], so the
/// set-up's state (a TLS handshake's, the preface's read) is not kept for
/// the connection's life: 6.6 KiB per idle HTTP/2 connection when it was.
pub(crate) enum Opened {
    /// Ready for its first request ([`serve`]).
    Http1(Box<Downstream>),
    /// For [`http2::serve`], boxed: its state would otherwise size every
    /// connection's task, HTTP/1.1 ones included.
    Http2(Box<Http2Start>),
}

/// An HTTP/2 connection's halves and what it knows of itself.
pub(crate) struct Http2Start {
    pub r: StreamReader,
    pub w: StreamWriter,
    pub conn: http2::Conn,
}

/// Reads until the bytes either are the HTTP/2 preface or cannot be (an
/// HTTP/1.1 request goes on with them); `false` also when the client went
/// away (the HTTP/1.1 loop then finds the connection closed).
async fn read_preface(
    r: &mut StreamReader,
    early: &mut Vec<u8>,
    timeout: Duration,
    abort: &Abort,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let n = early.len().min(http2::PREFACE.len());
        if early[..n] != http2::PREFACE[..n] {
            return false;
        }
        if n == http2::PREFACE.len() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(
            r.read_more(early, HEAD_READ_BYTES, left, abort).await,
            Ok(1..)
        ) {
            return false;
        }
    }
}

/// How long a TLS close_notify may wait for room in the socket.
const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// The state of the request being handled; `begin_request` took it.
fn cur(req: &Option<Box<RequestState>>) -> &RequestState {
    req.as_deref()
        .expect("a request is handled only after begin_request")
}

fn cur_mut(req: &mut Option<Box<RequestState>>) -> &mut RequestState {
    req.as_deref_mut()
        .expect("a request is handled only after begin_request")
}

impl Downstream {
    /// Takes a request state (kept from the connection's last request
    /// while it is busy) for the request about to be handled.
    fn begin_request(&mut self, worker: &Worker) {
        let st = self.req.get_or_insert_with(|| worker.request_states.take());
        st.sent.reset();
        // A state from the pool was another connection's.
        let peer = self.conn.src.ip();
        if st.client.peer() != peer {
            st.client = ForwardedClient::new(peer);
        }
    }

    /// The buffers of the request being handled; `read_head` took them.
    fn buffers(&self) -> &Buffers {
        self.bufs
            .as_deref()
            .expect("a request is handled only after read_head took buffers")
    }

    /// One HTTP/2 stream's request, with the connection's client and TLS
    /// facts, handled as one HTTP/1.1 request on a connection of its own.
    pub(crate) fn for_stream(
        r: StreamReader,
        w: StreamWriter,
        conn: ConnAddrs,
        bufs: Box<Buffers>,
        tls_version: &'static str,
        client_subject: Option<Box<str>>,
    ) -> Downstream {
        Downstream {
            r,
            w,
            conn,
            bufs: Some(bufs),
            ctl: Rc::default(),
            req: None,
            tls_version,
            client_subject,
            switched: None,
        }
    }

    /// Answers a request the proxy refuses before routing it, and logs it.
    pub(crate) async fn refuse(&mut self, worker: &Worker, refusal: &Refusal) {
        self.begin_request(worker);
        self.log_refusal(worker, refusal, None);
        self.send_refusal(worker, refusal).await;
        self.record(worker, None);
    }

    /// Gives this connection's buffers and request state back to the
    /// worker's pools.
    pub(crate) fn release_buffers(&mut self, worker: &Worker) {
        if let Some(req) = self.req.take() {
            worker.request_states.give(req);
        }
        if let Some(bufs) = self.bufs.take() {
            worker.buffers.give(bufs);
        }
    }

    /// Serves requests for as long as each comes within `IDLE_BUFFER_GRACE`
    /// of the previous response (a busy keep-alive client sends its next
    /// one at once, and keeps its buffers); a connection idle for longer
    /// gives its buffers back and returns [`Phase::Idle`].
    async fn serve_busy(&mut self, worker: &Worker, listener: usize, mut first: bool) -> Phase {
        let keepalive = worker.config.limits.keepalive_timeout;
        let grace = IDLE_BUFFER_GRACE.min(keepalive);
        // The phase began with the request that woke the connection: its
        // client may be sparse, but it is sending now.
        let mut woke = !first;
        loop {
            // A connection's first request is served even while draining:
            // the client connected before the listener closed.
            let nothing_read = self.bufs.as_ref().is_none_or(|b| b.req.source.is_empty());
            let skip_grace = !woke && self.ctl.sparse.get() && !worker.draining.get();
            woke = false;
            if !first && nothing_read {
                self.ctl.idle.set(true);
                self.ctl.idle_ticket.set(worker.idle_ticket());
                if skip_grace {
                    self.release_buffers(worker);
                    return Phase::Idle { after_grace: false };
                }
                // A response that went out before the drain began promised
                // keep-alive, so the client may be sending its next request
                // now: the grace lets it in (its response says close)
                // rather than cutting it.
                self.ctl.just_idle.set(true);
                let bufs = self.bufs.get_or_insert_with(|| worker.buffers.take());
                let res = self
                    .r
                    .read_more(
                        &mut bufs.req.source,
                        HEAD_READ_BYTES,
                        grace,
                        &self.ctl.abort,
                    )
                    .await;
                self.ctl.just_idle.set(false);
                match res {
                    Ok(1..) => self.ctl.idle.set(false),
                    Err(ReadFail::TimedOut) if grace < keepalive && !worker.draining.get() => {
                        // Still idle (`ctl.idle`), now without buffers.
                        self.ctl.sparse.set(true);
                        self.release_buffers(worker);
                        return Phase::Idle { after_grace: true };
                    }
                    _ => {
                        self.ctl.idle.set(false);
                        return Phase::Closed {
                            unread_input: false,
                        };
                    }
                }
            }
            let head = match self.read_head(worker, first).await {
                Ok(Some(head)) => head,
                Ok(None) => {
                    return Phase::Closed {
                        unread_input: false,
                    }
                }
                Err(refusal) => {
                    self.begin_request(worker);
                    // An unreadable head is accounted to the peer, not to the
                    // client of the connection's previous request.
                    cur_mut(&mut self.req).client.reset_to_peer();
                    self.log_refusal(worker, &refusal, None);
                    let sent = self.send_refusal(worker, &refusal).await;
                    self.record(worker, None);
                    return Phase::Closed { unread_input: sent };
                }
            };
            first = false;
            match self.handle(worker, listener, &head).await {
                Next::KeepAlive => {}
                // Every path that read its request whole took it off the
                // buffer (an answer, an exchange); what is left was not read
                // as a request.
                Next::Close => {
                    let unread_input = self.bufs.as_ref().is_some_and(|b| !b.req.source.is_empty());
                    return Phase::Closed { unread_input };
                }
                Next::Cut | Next::Switched => {
                    return Phase::Closed {
                        unread_input: false,
                    }
                }
            }
        }
    }

    /// A lingering close (RFC 9112 §9.6, nginx's `lingering_close`): the
    /// response went out before the request was read whole, so the client
    /// may still be sending it. Closing now, with its bytes unread, would
    /// make the kernel answer them with a reset that can destroy the
    /// response before the client reads it (and fail the writes of a client
    /// that reads only once its upload is done). So the proxy half-closes,
    /// then reads and drops what comes until the client closes, goes quiet
    /// for `lingering_timeout`, or `lingering_time` runs out. A drain
    /// closes a lingering connection at once, as an idle one: its response
    /// is out.
    async fn linger(&mut self, worker: &Worker) {
        let limits = &worker.config.limits;
        // An exchange that stopped reading the body (the backend answered
        // early) left the read canceller aborted. Nothing else can have
        // aborted it: a drain aborts only idle connections, and one that
        // began is seen below.
        self.ctl.abort.reset();
        if limits.lingering_time.is_zero() || worker.draining.get() {
            return;
        }
        self.w.shutdown_tcp().await;
        // Like an idle connection, a lingering one holds no buffer: many
        // clients sending refused bodies must not pin exchange buffers for
        // `lingering_time`.
        self.release_buffers(worker);
        self.ctl.idle.set(true);
        self.ctl.idle_ticket.set(worker.idle_ticket());
        let deadline = Instant::now() + limits.lingering_time;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(limits.lingering_timeout);
            if wait.is_zero() {
                break;
            }
            if !matches!(self.r.discard_more(wait, &self.ctl.abort).await, Ok(true)) {
                break;
            }
        }
        self.ctl.idle.set(false);
    }

    /// Waits, holding no buffer, for the next request of a connection that
    /// stayed idle past the grace, up to the rest of the keep-alive
    /// timeout (on the worker's idle deadlines). `false`: the connection
    /// timed out, or a drain (or a worker out of descriptors) closed it.
    /// Readable may also mean closed: the busy phase's read finds out.
    async fn wait_idle(&mut self, worker: &Worker, after_grace: bool) -> bool {
        // Computed again after the wait rather than kept across it: every
        // byte of this future is held by each idle connection.
        let wait = move |worker: &Worker| {
            let keepalive = worker.config.limits.keepalive_timeout;
            match after_grace {
                true => keepalive.saturating_sub(IDLE_BUFFER_GRACE),
                false => keepalive,
            }
        };
        worker
            .idle_deadlines
            .arm(&self.ctl, Instant::now() + wait(worker));
        let res = match &mut self.r {
            StreamReader::Plain(r) => wait_readable_by(r, None, &self.ctl.abort).await,
            StreamReader::Tls(r) => r.wait_readable_by(None, &self.ctl.abort).await,
            // HTTP/2 streams are not served by this loop.
            StreamReader::H2(_) | StreamReader::H2Upstream(_) => Err(ReadFail::Aborted),
        };
        let deadline = IdleDeadlines::disarm(&*self.ctl);
        // A request within the grace of going idle: the client is busy
        // again, and its connection keeps its buffers between requests.
        if let Some(deadline) = deadline.filter(|_| !after_grace) {
            let left = deadline.saturating_duration_since(Instant::now());
            let waited = wait(worker).saturating_sub(left);
            if waited < IDLE_BUFFER_GRACE {
                self.ctl.sparse.set(false);
            }
        }
        res.is_ok()
    }

    /// Counts what went back for the request and logs it: `took` is how
    /// long it took, `None` for a head that could not be parsed (no
    /// captured fields).
    fn record(&self, worker: &Worker, took: Option<Duration>) {
        let st = cur(&self.req);
        worker.counters.response(st.sent.status.get());
        if let Some(log) = &worker.access_log {
            let captured = took.map(|_| &st.captured);
            let took = took.unwrap_or_default();
            let (client, sent) = (&st.client, &st.sent);
            if let Some(e) = log.write(client, captured, sent, took, self.tls_version, None) {
                worker.access_log_failed(&e);
            }
        }
    }

    /// Sends the proxy's own response; `false` when the client could not
    /// take it within `send_timeout`.
    async fn send_local(&mut self, worker: &Worker, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        let abort = &cur(&self.req).write_abort;
        abort.reset();
        let timeout = worker.config.limits.send_timeout;
        let (res, _) = self.w.send_range(bytes, 0..len, timeout, abort).await;
        res.is_ok()
    }

    /// A refusal the proxy answers itself, at `info`: the reason, the
    /// client and, when the head parsed, the request.
    fn log_refusal(&self, worker: &Worker, refusal: &Refusal, head: Option<&RequestHead>) {
        self.log_refused(worker, refusal.status, refusal.reason, head);
    }

    fn log_refused(&self, worker: &Worker, status: u16, reason: &str, head: Option<&RequestHead>) {
        worker.error_log.event(LogLevel::Info, Kind::Refused, |b| {
            let _ = write!(b, "status={status} reason=\"{reason}\" client=");
            b.extend_from_slice(cur(&self.req).client.ip_bytes());
            let src = self.bufs.as_deref().map(|bufs| &bufs.req.source[..]);
            if let (Some(head), Some(src)) = (head, src) {
                write_request(b, src, head);
            }
        });
    }

    async fn send_refusal(&mut self, worker: &Worker, refusal: &Refusal) -> bool {
        cur(&self.req)
            .sent
            .local(refusal.status, refusal.reason.len() + 1);
        self.send_local(worker, error_response(refusal, CLOSE_LINE))
            .await
    }

    /// Reads until a whole head is buffered. `Ok(None)`: the client went away
    /// or stayed idle past the keep-alive timeout; close quietly.
    async fn read_head(
        &mut self,
        worker: &Worker,
        first: bool,
    ) -> Result<Option<RequestHead>, Refusal> {
        let limits = &worker.config.limits;
        let mut head_started: Option<Instant> = None;
        let bufs = self.bufs.get_or_insert_with(|| worker.buffers.take());
        loop {
            if !bufs.req.source.is_empty() {
                match parse_request(&bufs.req.source, worker.head_limits, &mut bufs.req_scratch) {
                    Ok(Some(mut head)) => {
                        normalize_path(&mut bufs.req.source, &mut head);
                        return Ok(Some(head));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Refusal::new(e.status(), e.reason())),
                }
                head_started.get_or_insert_with(Instant::now);
            }
            // Slowloris: the whole head must arrive within header_read_timeout
            // of its first byte (of the connection, for the first request).
            let timeout = match head_started {
                Some(t) => limits.header_read_timeout.saturating_sub(t.elapsed()),
                None if first => limits.header_read_timeout,
                None => limits.keepalive_timeout,
            };
            let res = self
                .r
                .read_more(
                    &mut bufs.req.source,
                    HEAD_READ_BYTES,
                    timeout,
                    &self.ctl.abort,
                )
                .await;
            match res {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(ReadFail::TimedOut) if head_started.is_some() || first => {
                    return Err(Refusal::new(408, "request head not received in time"))
                }
                Err(_) => return Ok(None),
            }
        }
    }

    pub(crate) async fn handle(
        &mut self,
        worker: &Worker,
        listener: usize,
        head: &RequestHead,
    ) -> Next {
        self.begin_request(worker);
        let trusted = &worker.config.server.trusted_proxies;
        if !trusted.is_empty() {
            let bufs = self.bufs.as_deref().expect("read_head took buffers");
            cur_mut(&mut self.req)
                .client
                .resolve(&bufs.req.source, &bufs.req_scratch, |ip| {
                    trusted.contains(ip)
                });
        }
        let started = worker.access_log.as_ref().map(|_| {
            let bufs = self.bufs.as_deref().expect("read_head took buffers");
            let captured = &mut cur_mut(&mut self.req).captured;
            AccessLog::capture(captured, &bufs.req.source, head);
            if matches!(self.r, StreamReader::H2(_)) {
                captured.set_version(b"HTTP/2.0");
            }
            Instant::now()
        });
        let next = self.route(worker, listener, head).await;
        if next == Next::Switched {
            // The 101 counts now; the line is written when the tunnel ends.
            let st = cur_mut(&mut self.req);
            worker.counters.response(st.sent.status.get());
            st.started = started;
            return next;
        }
        self.record(worker, started.map(|t| t.elapsed()));
        next
    }

    /// The tunnel a `101` made of this connection: its halves, the
    /// upstream end, and (when logging) what its access-log line needs.
    fn into_tunnel(
        self,
        worker: &Worker,
        switched: Box<Switched>,
        req: Option<Box<RequestState>>,
    ) -> Upgraded {
        let log = match (&worker.access_log, req) {
            (Some(_), Some(req)) => {
                let RequestState {
                    client,
                    sent,
                    captured,
                    started,
                    ..
                } = *req;
                started.map(|started| {
                    Box::new(TunnelLine {
                        client,
                        captured,
                        sent,
                        started,
                        tls_version: self.tls_version,
                    })
                })
            }
            _ => None,
        };
        Upgraded {
            client: (self.r, self.w),
            switched,
            log,
        }
    }

    /// Routes the request, then answers it locally (404, 429) or forwards it.
    async fn route(&mut self, worker: &Worker, listener: usize, head: &RequestHead) -> Next {
        if let Some(bufs) = self.bufs.as_deref_mut() {
            bufs.added_fields.clear();
            bufs.cors_added = false;
        }
        if let Some(name) = &worker.config.server.request_id {
            if let Some(bufs) = self.bufs.as_deref_mut() {
                let head_bytes = &bufs.req.source[..head.head_len];
                bufs.request_id_made =
                    worker
                        .request_ids
                        .assign(name, head_bytes, &mut bufs.request_id);
                let _ = write!(bufs.added_fields, "{name}: ");
                bufs.added_fields.extend_from_slice(&bufs.request_id);
                bufs.added_fields.extend_from_slice(b"\r\n");
                if worker.access_log.is_some() {
                    cur_mut(&mut self.req)
                        .captured
                        .set_request_id(&bufs.request_id);
                }
            }
        }
        let src = &self.buffers().req.source;
        let host = head.authority.clone().map(|r| &src[r]);
        let router = &worker.routers[listener];
        let path = &src[head.path.clone()];
        let fields = &src[..head.head_len];
        let preflight = cors::preflight(src, head);
        let route = router
            .find_request(host, path, &src[head.method.clone()], fields)
            .or_else(|| {
                // A preflight is routed as the request it announces, to
                // the route whose CORS policy answers it (its methods
                // need not list OPTIONS).
                let p = preflight.as_ref()?;
                router
                    .find_request(host, path, p.method, fields)
                    .filter(|&r| worker.config.routes[r].cors.is_some())
            });
        // The body was never forwarded when we answer ourselves; only a
        // body-less request leaves the connection in sync.
        let can_keep = head.keep_alive && head.body == RequestBody::Empty;
        if preflight.is_none()
            && routed_otherwise_as_backends_read(router, host, path, head, src, route)
        {
            let refusal = Refusal::new(
                400,
                "the path takes another route as backends read it (%2F, \\, %5C or ;parameters)",
            );
            return self
                .answer_locally(worker, &refusal, can_keep, None, head)
                .await;
        }
        if routed_otherwise_by_method_override(router, host, path, fields, route) {
            let refusal = Refusal::new(400, "a method override takes another route");
            return self
                .answer_locally(worker, &refusal, can_keep, None, head)
                .await;
        }
        let Some(route) = route else {
            return self
                .answer_locally(worker, &Refusal::new(404, "no route"), can_keep, None, head)
                .await;
        };
        if let Some(policy) = &worker.config.routes[route].cors {
            let bufs = self.bufs.as_deref_mut().expect("read_head took buffers");
            let src = &bufs.req.source;
            if let Some(p) = cors::preflight(src, head) {
                let mut fields = Vec::new();
                return match cors::answer_preflight(policy, &p, &mut fields) {
                    Ok(()) => {
                        bufs.added_fields.extend_from_slice(&fields);
                        self.answer_own(worker, 204, b"", b"", can_keep, head).await
                    }
                    Err(why) => {
                        self.answer_text(worker, 403, &why, can_keep, None, b"", head)
                            .await
                    }
                };
            }
            if let Some(origin) = header_value(&src[..head.head_len], b"origin") {
                bufs.cors_added = cors::response_fields(policy, origin, &mut bufs.added_fields);
            }
        }
        let guard = worker.auth.get(route).and_then(Option::as_ref);
        if let Some(guard) = guard {
            let src = &self
                .bufs
                .as_deref()
                .expect("read_head took buffers")
                .req
                .source;
            let verdict = guard.check(
                &src[..head.head_len],
                &src[head.target.clone()],
                &mut cur_mut(&mut self.req).identity,
            );
            if let Err(reason) = verdict {
                worker.counters.auth_refused(reason);
                let why = crate::auth::refusal_text(reason);
                let challenge = guard.auth.challenge();
                return self
                    .answer_text(worker, 401, why, can_keep, None, challenge, head)
                    .await;
            }
            if worker.access_log.is_some() {
                let st = cur_mut(&mut self.req);
                st.captured.set_user(&st.identity.consumer);
            }
        }
        let checks = &worker.config.routes[route].checks;
        if !checks.is_empty() {
            let mut reason = Vec::new();
            if let Err(failed) =
                checks::check(checks, &self.buffers().req.source, head, &mut reason)
            {
                worker.counters.validation_refused(failed.rule);
                let reason = String::from_utf8_lossy(&reason);
                return self
                    .answer_text(worker, failed.status, &reason, can_keep, None, b"", head)
                    .await;
            }
            if let Some(max) = checks::reads_body_whole(checks, head) {
                let body = match self.read_body_whole(worker, head, max).await {
                    Ok(Some(body)) => body,
                    Ok(None) => return Next::Cut,
                    Err(refusal) => {
                        if refusal.status == 413 {
                            worker.counters.validation_refused("max_body");
                        }
                        return self
                            .answer_locally(worker, &refusal, false, None, head)
                            .await;
                    }
                };
                if let Some(schema) = worker.schemas.get(route).and_then(Option::as_ref) {
                    let src = &self.buffers().req.source;
                    let checked = match &body {
                        WholeBody::InPlace(range) => schema::check(schema, &src[range.clone()]),
                        WholeBody::Decoded(bytes) => schema::check(schema, bytes),
                    };
                    if let Err(why) = checked {
                        worker.counters.validation_refused("body_schema");
                        // The body was read: refused, the connection is closed
                        // all the same (simplest way to drop it in sync).
                        return self
                            .answer_text(worker, 400, &why, false, None, b"", head)
                            .await;
                    }
                }
            }
        }
        if let Some(limiter) = &worker.limiters[route] {
            let key = rate_limit_key(
                &worker.config.routes[route],
                &self.buffers().req.source[..head.head_len],
                &cur(&self.req).client,
                &cur(&self.req).identity.consumer,
            );
            let admission = limiter.borrow_mut().admit(key, Instant::now());
            if !admission.allowed {
                let refusal = Refusal::new(429, "rate limit exceeded");
                return self
                    .answer_locally(worker, &refusal, can_keep, Some(&admission), head)
                    .await;
            }
        }
        let id = RouteId {
            index: route,
            listener: &worker.config.listeners[listener].name,
        };
        let route = &worker.config.routes[route];
        if head.max_forwards == Some(0) {
            // RFC 9110 §7.6.2: no hops left, so the proxy is the OPTIONS
            // request's final recipient.
            return self.answer_own(worker, 200, b"", b"", can_keep, head).await;
        }
        let Some(upstream) = route.upstream.map(|u| &worker.upstreams[u]) else {
            return self.answer_direct(worker, route, can_keep, head).await;
        };
        let cx = Context {
            limits: &worker.config.limits,
            log: &worker.error_log,
            head_limits: worker.head_limits,
            chunk_limits: worker.chunk_limits,
            draining: &worker.draining,
            request_id: worker.config.server.request_id.as_deref(),
            via: crate::via::pseudonym(&worker.config.server.via),
        };
        let client = Client {
            r: &mut self.r,
            w: &mut self.w,
            read_abort: &self.ctl.abort,
            write_abort: &cur(&self.req).write_abort,
            addr: &cur(&self.req).client,
            conn: self.conn,
            sent: &cur(&self.req).sent,
            subject: worker.config.listeners[listener]
                .tls
                .as_ref()
                .and_then(|t| t.client_subject_header.as_deref())
                .map(|name| (name, self.client_subject.as_deref())),
            auth: guard.map(|g| (&*g.auth, &cur(&self.req).identity)),
            switched: &mut self.switched,
        };
        let Some(bufs) = self.bufs.as_deref_mut() else {
            return Next::Close;
        };
        match exchange::run(&cx, client, bufs, (route, id), upstream, head).await {
            Ok(next) => next,
            Err(refusal) => match self.send_refusal(worker, &refusal).await {
                true => Next::Close,
                false => Next::Cut,
            },
        }
    }

    /// Answers a request without an upstream (404, 429), keeping the
    /// connection when the request had no body.
    async fn answer_locally(
        &mut self,
        worker: &Worker,
        refusal: &Refusal,
        keep: bool,
        admission: Option<&Admission>,
        head: &RequestHead,
    ) -> Next {
        let status = refusal.status;
        self.answer_text(worker, status, refusal.reason, keep, admission, b"", head)
            .await
    }

    /// A route's own answer (`respond`, `redirect`, `compose`), keeping
    /// the connection when the request had no body.
    async fn answer_direct(
        &mut self,
        worker: &Worker,
        route: &Route,
        keep: bool,
        head: &RequestHead,
    ) -> Next {
        let mut fields = Vec::with_capacity(128);
        if let Some(compose) = &route.compose {
            return match compose::run(worker, compose, self.conn).await {
                Ok((body, complete)) => {
                    fields.extend_from_slice(b"Content-Type: application/json\r\n");
                    let _ = write!(fields, "X-Compose-Completed: {complete}\r\n");
                    self.answer_own(worker, 200, &fields, &body, keep, head)
                        .await
                }
                Err(why) => {
                    self.answer_text(worker, 502, &why, keep, None, b"", head)
                        .await
                }
            };
        }
        let (status, body): (u16, &[u8]) = match (&route.respond, &route.redirect) {
            (Some(d), _) => (d.status, d.body.as_bytes()),
            (None, Some(r)) => (r.status, b""),
            (None, None) => (500, b""),
        };
        if let Some(d) = &route.respond {
            for (name, value) in &d.headers {
                let _ = write!(fields, "{name}: {value}\r\n");
            }
        }
        if let Some(r) = &route.redirect {
            fields.extend_from_slice(b"Location: ");
            let src = &self.buffers().req.source;
            write_location(&mut fields, &r.to, &src[head.path.clone()]);
            fields.extend_from_slice(b"\r\n");
        }
        self.answer_own(worker, status, &fields, body, keep, head)
            .await
    }

    /// A response of the proxy's own: `status`, `fields` (CRLF-ended
    /// lines), the request's added fields and `body` (left out for HEAD).
    async fn answer_own(
        &mut self,
        worker: &Worker,
        status: u16,
        fields: &[u8],
        body: &[u8],
        keep: bool,
        head: &RequestHead,
    ) -> Next {
        let keep = keep && !worker.draining.get();
        let mut out = Vec::with_capacity(256 + fields.len() + body.len());
        let _ = write!(out, "HTTP/1.1 {status} {}\r\n", status_reason(status));
        out.extend_from_slice(fields);
        // RFC 9110 §8.6: no Content-Length on a 204 (nor a 304).
        if status != 204 && status != 304 {
            let _ = write!(out, "Content-Length: {}\r\n", body.len());
        }
        out.extend_from_slice(connection_line(keep, head.version).as_bytes());
        crate::exchange::write_date_line(&mut out);
        if let Some(bufs) = self.bufs.as_deref() {
            out.extend_from_slice(&bufs.added_fields);
        }
        out.extend_from_slice(b"\r\n");
        let body_sent = if head.is_head_method || status == 204 || status == 304 {
            0
        } else {
            out.extend_from_slice(body);
            body.len()
        };
        cur(&self.req).sent.local(status, body_sent);
        self.send_own(worker, out, keep, head).await
    }

    /// Sends a response of the proxy's own; with `keep`, the connection
    /// goes on past this request's head (it had no body).
    async fn send_own(
        &mut self,
        worker: &Worker,
        bytes: Vec<u8>,
        keep: bool,
        head: &RequestHead,
    ) -> Next {
        let sent = self.send_local(worker, bytes).await;
        // A request without a body was read whole: off the buffer, so that
        // a close after it does not linger.
        if sent && head.body == RequestBody::Empty {
            if let Some(bufs) = self.bufs.as_deref_mut() {
                bufs.req.source.drain(..head.head_len);
            }
        }
        match (keep, sent) {
            (true, true) => Next::KeepAlive,
            (false, true) => Next::Close,
            (_, false) => Next::Cut,
        }
    }

    /// [`Self::answer_locally`] with a reason made for this request, and
    /// `extra` header lines (an authentication challenge).
    #[allow(clippy::too_many_arguments)]
    async fn answer_text(
        &mut self,
        worker: &Worker,
        status: u16,
        reason: &str,
        keep: bool,
        admission: Option<&Admission>,
        extra: &[u8],
        head: &RequestHead,
    ) -> Next {
        // A draining worker says close, so the client sends nothing more.
        let keep = keep && !worker.draining.get();
        self.log_refused(worker, status, reason, Some(head));
        cur(&self.req).sent.local(status, reason.len() + 1);
        let mut bytes = error_text(status, reason, connection_line(keep, head.version));
        if let Some(a) = admission {
            insert_rate_limit_headers(&mut bytes, a);
        }
        insert_lines(&mut bytes, extra);
        if let Some(bufs) = self.bufs.as_deref() {
            insert_lines(&mut bytes, &bufs.added_fields);
        }
        self.send_own(worker, bytes, keep, head).await
    }
}

impl Downstream {
    /// Reads a body whole into the request buffer before anything of it
    /// goes upstream, held to `max` bytes of data (413) and, chunked, to
    /// its framing rules (400). `Ok(None)`: the client went away.
    async fn read_body_whole(
        &mut self,
        worker: &Worker,
        head: &RequestHead,
        max: u64,
    ) -> Result<Option<WholeBody>, Refusal> {
        let limits = &worker.config.limits;
        let length = match head.body {
            RequestBody::Length(n) if n > max => {
                return Err(Refusal::new(413, "request body larger than max_body"))
            }
            RequestBody::Length(n) => Some(n as usize),
            _ => None,
        };
        if head.expect_continue {
            // The client waits for this before it sends the body.
            let abort = &cur(&self.req).write_abort;
            abort.reset();
            let whole = 0..CONTINUE_100.len();
            let (sent, _) = self
                .w
                .send_range(CONTINUE_100, whole, limits.send_timeout, abort)
                .await;
            if sent.is_err() {
                return Ok(None);
            }
        }
        let mut decoder = ChunkedDecoder::new(worker.chunk_limits).with_max_body(max);
        let mut decoded = Vec::new();
        let mut fed = head.head_len;
        // Size lines of many small chunks add to the data: bounded too.
        let framed_max = usize::try_from(max.saturating_mul(2)).unwrap_or(usize::MAX) + (64 << 10);
        loop {
            let Some(bufs) = self.bufs.as_deref_mut() else {
                return Ok(None);
            };
            if let Some(n) = length {
                if bufs.req.source.len() - head.head_len >= n {
                    return Ok(Some(WholeBody::InPlace(head.head_len..head.head_len + n)));
                }
            } else {
                let feed = decoder
                    .feed(&bufs.req.source[fed..], &mut |p| {
                        decoded.extend_from_slice(p)
                    })
                    .map_err(chunk_refusal)?;
                fed += feed.consumed;
                if feed.done {
                    return Ok(Some(WholeBody::Decoded(decoded)));
                }
                if fed - head.head_len > framed_max {
                    return Err(Refusal::new(413, "request body larger than max_body"));
                }
            }
            let read = self
                .r
                .read_more(
                    &mut bufs.req.source,
                    CHUNKED_READ_BYTES,
                    limits.body_read_timeout,
                    &self.ctl.abort,
                )
                .await;
            match read {
                Ok(0) | Err(ReadFail::Io(_) | ReadFail::Aborted) => return Ok(None),
                Ok(_) => {}
                Err(ReadFail::TimedOut) => {
                    return Err(Refusal::new(408, "request body not received in time"))
                }
            }
        }
    }
}

/// A body read whole: where it lies in the request buffer (Content-Length),
/// or its data decoded out of its chunks.
enum WholeBody {
    InPlace(std::ops::Range<usize>),
    Decoded(Vec<u8>),
}

/// Read size while a chunked body is read whole before it goes upstream.
const CHUNKED_READ_BYTES: usize = 16 * 1024;

/// The bytes a rate limit counts by.
fn rate_limit_key<'a>(
    route: &'a Route,
    head: &'a [u8],
    client: &'a ForwardedClient,
    consumer: &'a [u8],
) -> &'a [u8] {
    match route.rate_limit.as_ref().map(|r| &r.key) {
        Some(RateLimitKey::Consumer) => consumer,
        Some(RateLimitKey::ClientIp) | None => client.ip_bytes(),
        Some(RateLimitKey::Route) => b"",
        Some(RateLimitKey::Header(name)) => header_value(head, name.as_bytes()).unwrap_or(b""),
    }
}

/// What a response of the proxy's own says about the connection: close,
/// or keep-alive for an HTTP/1.0 client that may reuse it.
fn connection_line(keep: bool, version: Version) -> &'static str {
    match (keep, version) {
        (false, _) => CLOSE_LINE,
        (true, Version::Http10) => KEEP_ALIVE_LINE,
        (true, Version::Http11) => "",
    }
}

fn status_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// A redirect's Location: `to` with `$path` and `$query` replaced from the
/// request's `target` (its path, and `?` with the query when it has one).
/// A relative Location starting with `//` is protocol-relative to a
/// browser (so is `///`): a path of `//evil.example` would send it to
/// another host, so the leading slashes collapse to one.
fn write_location(out: &mut Vec<u8>, to: &str, target: &[u8]) {
    let start = out.len();
    write_substituted(out, to, target);
    let slashes = out[start..].iter().take_while(|&&b| b == b'/').count();
    if slashes > 1 {
        out.drain(start + 1..start + slashes);
    }
}

fn write_substituted(out: &mut Vec<u8>, to: &str, target: &[u8]) {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q..]),
        None => (target, &[][..]),
    };
    let mut rest = to.as_bytes();
    while let Some(dollar) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(&rest[..dollar]);
        let after = &rest[dollar..];
        if after.starts_with(b"$path") {
            out.extend_from_slice(path);
            rest = &after[5..];
        } else if after.starts_with(b"$query") {
            out.extend_from_slice(query);
            rest = &after[6..];
        } else {
            out.push(b'$');
            rest = &after[1..];
        }
    }
    out.extend_from_slice(rest);
}

/// Adds field lines (each ending in CRLF) before the blank line of a
/// response head.
fn insert_lines(response: &mut Vec<u8>, lines: &[u8]) {
    if lines.is_empty() {
        return;
    }
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    // After the last field's CRLF, before the blank line's.
    response.splice(end + 2..end + 2, lines.iter().copied());
}

/// Adds the rate-limit headers (draft-ietf-httpapi-ratelimit-headers and
/// RFC 9110 §10.2.3 `Retry-After`) before the blank line of a response head.
fn insert_rate_limit_headers(response: &mut Vec<u8>, a: &Admission) {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut extra = Vec::with_capacity(128);
    if let Some(secs) = a.retry_after_secs() {
        let _ = write!(extra, "\r\nRetry-After: {secs}");
    }
    let _ = write!(
        extra,
        "\r\nRateLimit-Limit: {}\r\nRateLimit-Remaining: {}\r\nRateLimit-Reset: {}",
        a.limit,
        a.remaining,
        a.reset_secs()
    );
    response.splice(end..end, extra);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle keep-alive connection costs its task: the future must not
    /// make room for an exchange, a TLS handshake or an HTTP/2 connection
    /// (25 KiB when it did), only for the connection's idle wait.
    #[test]
    fn a_connections_future_is_sized_for_its_idle_wait() {
        let task = future_size(serve);
        assert!(task <= 1024, "serve's future is {task} bytes");
    }

    /// Every idle keep-alive connection holds its `Downstream` (boxed): the
    /// current request's state and write canceller go back to the worker's
    /// pool with the buffers, not stay in it (632 bytes when they did).
    /// So does whom the request is from (the peer is in its addresses).
    #[test]
    fn an_idle_connections_state_holds_no_request_state() {
        let size = std::mem::size_of::<Downstream>();
        assert!(size <= 256, "Downstream is {size} bytes");
    }

    /// A busy phase's future is copied into its box each time a connection
    /// wakes from idle, and every request runs in it: the HTTP/2 writer's
    /// state must not size it (23 KiB when it did).
    #[test]
    fn an_exchanges_future_is_not_sized_for_an_http2_write() {
        fn size<A, F: std::future::Future>(_: impl Fn(A) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        // One lifetime for the borrows, named by the argument.
        fn handle_size<'a>(_: &'a ()) -> usize {
            size(|(d, w, h): (&'a mut Downstream, &'a Worker, &'a RequestHead)| d.handle(w, 0, h))
        }
        let handle = handle_size(&());
        assert!(handle <= 12 * 1024, "handle's future is {handle} bytes");
    }
}
