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
use ringgate_core::http::{
    header_value, parse_request, ForwardedClient, RequestBody, RequestHead, Version,
};
use ringgate_core::proxy_protocol::ConnAddrs;
use ringgate_core::ratelimit::Admission;

use crate::access_log::{AccessLog, Captured, Sent};
use crate::error_log::{write_request, Kind};
use crate::exchange::{
    self, error_response, Buffers, Client, Context, Next, Refusal, RouteId, CLOSE_LINE,
    HEAD_READ_BYTES, KEEP_ALIVE_LINE,
};
use crate::http2;
use crate::io::{Abort, ReadFail};
use crate::state::{ConnControl, Worker};
use crate::stream::{StreamReader, StreamWriter};
use crate::tls;

/// How long a kept-alive connection keeps its buffers while it waits for a
/// next request. Longer than a busy client's gap between requests (so
/// those never pay for the pool), short against the keep-alive timeout (so
/// idle clients cost little more than their sockets).
const IDLE_BUFFER_GRACE: Duration = Duration::from_millis(50);

pub(crate) struct Downstream {
    r: StreamReader,
    pub(crate) w: StreamWriter,
    client: ForwardedClient,
    /// The connection's addresses, as a PROXY header to a backend names them.
    conn: ConnAddrs,
    /// Buffers and cancellers every exchange on this connection reuses,
    /// taken from the worker's pool when a request arrives and given back
    /// once the connection has been idle for `IDLE_BUFFER_GRACE`: an idle
    /// keep-alive connection holds none.
    pub(crate) bufs: Option<Box<Buffers>>,
    /// The one byte an idle connection without buffers reads to learn that
    /// its next request is coming.
    idle_probe: Vec<u8>,
    /// The connection's read canceller, shared with the worker so a drain
    /// can close the connection while it waits for a next request.
    ctl: Rc<ConnControl>,
    write_abort: Abort,
    /// What went back for the current request (for the access log).
    sent: Sent,
    /// The current request's access-log fields, when logging.
    captured: Captured,
    /// The negotiated TLS version for the access log (`-`: plain).
    tls_version: &'static str,
    /// The verified client certificate's subject (mTLS).
    client_subject: Option<Box<str>>,
}

/// Serves one client connection; `addrs` are those it is accounted to (its
/// own, or what its PROXY protocol header carried).
pub async fn serve(
    worker: Rc<Worker>,
    listener: usize,
    stream: TcpStream,
    addrs: ConnAddrs,
    ctl: Rc<ConnControl>,
) {
    let peer_ip = addrs.src.ip();
    let _ = stream.set_nodelay(true);
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
                    return;
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
        // Boxed: its state would otherwise size every connection's future,
        // HTTP/1.1 ones included.
        Box::pin(http2::serve(worker, r, w, conn)).await;
        return;
    }
    let mut d = Downstream {
        r,
        w,
        client: ForwardedClient::new(peer_ip),
        conn: addrs,
        bufs: None,
        idle_probe: Vec::with_capacity(1),
        ctl,
        write_abort,
        sent: Sent::default(),
        captured: Captured::default(),
        tls_version,
        client_subject,
    };
    if !early.is_empty() {
        let bufs = d.bufs.insert(worker.buffers.take());
        bufs.req.source.extend_from_slice(&early);
    }
    let mut first = true;
    loop {
        // A connection's first request is served even while draining: the
        // client connected before the listener closed.
        let idle = !first && d.bufs.as_ref().is_none_or(|b| b.req.source.is_empty());
        // A response that went out before the drain began promised
        // keep-alive, so the client may be sending its next request now:
        // `wait_while_idle` lets it in for the buffer grace (its response
        // says close) rather than cutting it.
        if idle && worker.draining.get() && d.bufs.is_none() {
            break;
        }
        d.ctl.idle.set(idle);
        d.ctl.idle_ticket.set(worker.idle_ticket());
        if idle && !d.wait_while_idle(&worker).await {
            d.ctl.idle.set(false);
            break;
        }
        let head = d.read_head(&worker, first).await;
        d.ctl.idle.set(false);
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(refusal) => {
                d.sent.reset();
                // An unreadable head is accounted to the peer, not to the
                // client of the connection's previous request.
                d.client.reset_to_peer();
                d.log_refusal(&worker, &refusal, None);
                d.send_refusal(&worker, &refusal).await;
                d.record(&worker, None);
                break;
            }
        };
        first = false;
        match d.handle(&worker, listener, &head).await {
            Next::KeepAlive => continue,
            Next::Close => break,
        }
    }
    d.release_buffers(&worker);
    // A client that stopped reading does not hold the connection for a
    // whole send_timeout just for its close_notify.
    let timeout = worker.config.limits.send_timeout.min(CLOSE_NOTIFY_TIMEOUT);
    d.w.close(timeout, &d.write_abort).await;
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

impl Downstream {
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
            client: ForwardedClient::new(conn.src.ip()),
            conn,
            bufs: Some(bufs),
            idle_probe: Vec::new(),
            ctl: Rc::default(),
            write_abort: Abort::default(),
            sent: Sent::default(),
            captured: Captured::default(),
            tls_version,
            client_subject,
        }
    }

    /// Answers a request the proxy refuses before routing it, and logs it.
    pub(crate) async fn refuse(&mut self, worker: &Worker, refusal: &Refusal) {
        self.sent.reset();
        self.log_refusal(worker, refusal, None);
        self.send_refusal(worker, refusal).await;
        self.record(worker, None);
    }

    /// Gives this connection's buffers back to the worker's pool.
    pub(crate) fn release_buffers(&mut self, worker: &Worker) {
        if let Some(bufs) = self.bufs.take() {
            worker.buffers.give(bufs);
        }
    }

    /// Waits for the next request on a kept-alive connection with nothing
    /// of it read yet. A client that sends it at once (a busy keep-alive
    /// connection) finds the buffers still here; one that stays idle past
    /// `IDLE_BUFFER_GRACE` gives them back and waits on a one-byte read.
    /// `false`: the connection closed, or stayed idle past the keep-alive
    /// timeout, or the worker drains.
    async fn wait_while_idle(&mut self, worker: &Worker) -> bool {
        let keepalive = worker.config.limits.keepalive_timeout;
        let grace = IDLE_BUFFER_GRACE.min(keepalive);
        if let Some(bufs) = self.bufs.as_deref_mut() {
            self.ctl.just_idle.set(true);
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
                Ok(0) => return false,
                Ok(_) => return true,
                Err(ReadFail::TimedOut) if grace < keepalive && !worker.draining.get() => {}
                Err(_) => return false,
            }
            self.release_buffers(worker);
        }
        self.idle_probe.clear();
        let res = self
            .r
            .read_more(&mut self.idle_probe, 1, keepalive - grace, &self.ctl.abort)
            .await;
        if !matches!(res, Ok(1..)) {
            return false;
        }
        let bufs = self.bufs.insert(worker.buffers.take());
        bufs.req.source.extend_from_slice(&self.idle_probe);
        true
    }

    /// Counts what went back for the request and logs it: `request` holds
    /// its captured fields and how long it took, `None` for a head that
    /// could not be parsed.
    fn record(&self, worker: &Worker, request: Option<(&Captured, Duration)>) {
        worker.counters.response(self.sent.status.get());
        if let Some(log) = &worker.access_log {
            let (captured, took) = request.map_or((None, Duration::ZERO), |(c, t)| (Some(c), t));
            if let Some(e) = log.write(&self.client, captured, &self.sent, took, self.tls_version) {
                worker.access_log_failed(&e);
            }
        }
    }

    /// Sends the proxy's own response; `false` when the client could not
    /// take it within `send_timeout`.
    async fn send_local(&mut self, worker: &Worker, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        self.write_abort.reset();
        let timeout = worker.config.limits.send_timeout;
        let (res, _) = self
            .w
            .send_range(bytes, 0..len, timeout, &self.write_abort)
            .await;
        res.is_ok()
    }

    /// A refusal the proxy answers itself, at `info`: the reason, the
    /// client and, when the head parsed, the request.
    fn log_refusal(&self, worker: &Worker, refusal: &Refusal, head: Option<&RequestHead>) {
        worker.error_log.event(LogLevel::Info, Kind::Refused, |b| {
            let _ = write!(
                b,
                "status={} reason=\"{}\" client=",
                refusal.status, refusal.reason
            );
            b.extend_from_slice(self.client.ip_bytes());
            let src = self.bufs.as_deref().map(|bufs| &bufs.req.source[..]);
            if let (Some(head), Some(src)) = (head, src) {
                write_request(b, src, head);
            }
        });
    }

    async fn send_refusal(&mut self, worker: &Worker, refusal: &Refusal) -> bool {
        self.sent.local(refusal.status, refusal.reason.len() + 1);
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
                    Ok(Some(head)) => return Ok(Some(head)),
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
        self.sent.reset();
        let trusted = &worker.config.server.trusted_proxies;
        if !trusted.is_empty() {
            let bufs = self.bufs.as_deref().expect("read_head took buffers");
            self.client
                .resolve(&bufs.req.source, &bufs.req_scratch, |ip| {
                    trusted.contains(ip)
                });
        }
        let started = worker.access_log.as_ref().map(|_| {
            let bufs = self.bufs.as_deref().expect("read_head took buffers");
            AccessLog::capture(&mut self.captured, &bufs.req.source, head);
            if matches!(self.r, StreamReader::H2(_)) {
                self.captured.set_version(b"HTTP/2.0");
            }
            Instant::now()
        });
        let next = self.route(worker, listener, head).await;
        self.record(worker, started.map(|t| (&self.captured, t.elapsed())));
        next
    }

    /// Routes the request, then answers it locally (404, 429) or forwards it.
    async fn route(&mut self, worker: &Worker, listener: usize, head: &RequestHead) -> Next {
        let src = &self.buffers().req.source;
        let host = head.authority.clone().map(|r| &src[r]);
        let route = worker.routers[listener].find_request(
            host,
            &src[head.path.clone()],
            &src[head.method.clone()],
            &src[..head.head_len],
        );
        // The body was never forwarded when we answer ourselves; only a
        // body-less request leaves the connection in sync.
        let can_keep = head.keep_alive && head.body == RequestBody::Empty;
        let Some(route) = route else {
            return self
                .answer_locally(worker, &Refusal::new(404, "no route"), can_keep, None, head)
                .await;
        };
        if let Some(limiter) = &worker.limiters[route] {
            let key = rate_limit_key(
                &worker.config.routes[route],
                &self.buffers().req.source[..head.head_len],
                &self.client,
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
        let upstream = &worker.upstreams[route.upstream];
        let cx = Context {
            limits: &worker.config.limits,
            log: &worker.error_log,
            head_limits: worker.head_limits,
            chunk_limits: worker.chunk_limits,
            draining: &worker.draining,
        };
        let client = Client {
            r: &mut self.r,
            w: &mut self.w,
            read_abort: &self.ctl.abort,
            write_abort: &self.write_abort,
            addr: &self.client,
            conn: self.conn,
            sent: &self.sent,
            subject: worker.config.listeners[listener]
                .tls
                .as_ref()
                .and_then(|t| t.client_subject_header.as_deref())
                .map(|name| (name, self.client_subject.as_deref())),
        };
        let Some(bufs) = self.bufs.as_deref_mut() else {
            return Next::Close;
        };
        match exchange::run(&cx, client, bufs, (route, id), upstream, head).await {
            Ok(next) => next,
            Err(refusal) => {
                self.send_refusal(worker, &refusal).await;
                Next::Close
            }
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
        // A draining worker says close, so the client sends nothing more.
        let keep = keep && !worker.draining.get();
        let connection_line = match (keep, head.version) {
            (false, _) => CLOSE_LINE,
            (true, Version::Http10) => KEEP_ALIVE_LINE,
            (true, Version::Http11) => "",
        };
        self.log_refusal(worker, refusal, Some(head));
        self.sent.local(refusal.status, refusal.reason.len() + 1);
        let mut bytes = error_response(refusal, connection_line);
        if let Some(a) = admission {
            insert_rate_limit_headers(&mut bytes, a);
        }
        let sent = self.send_local(worker, bytes).await;
        if keep && sent {
            if let Some(bufs) = self.bufs.as_deref_mut() {
                bufs.req.source.drain(..head.head_len);
            }
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

/// The bytes a rate limit counts by.
fn rate_limit_key<'a>(route: &'a Route, head: &'a [u8], client: &'a ForwardedClient) -> &'a [u8] {
    match route.rate_limit.as_ref().map(|r| &r.key) {
        Some(RateLimitKey::ClientIp) | None => client.ip_bytes(),
        Some(RateLimitKey::Route) => b"",
        Some(RateLimitKey::Header(name)) => header_value(head, name.as_bytes()).unwrap_or(b""),
    }
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
