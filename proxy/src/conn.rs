//! One downstream connection, as a readable loop:
//! read head → route → upstream → stream both ways → keep-alive or close.
//!
//! Request bodies and responses move concurrently (the request body may
//! still be streaming while the response arrives), each half able to abort
//! the other. Every error becomes a status in one place (`Refusal`), and a
//! request is refused before any of its bytes go upstream whenever the
//! problem is visible in what has been read.

use std::cell::Cell;
use std::io::Write as _;
use std::net::IpAddr;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringgate_config::{HashKey, HeaderEdits, RateLimitKey, RetryOn, Route};
use ringgate_core::backend_view::Outcome;
use ringgate_core::chunked::{ChunkError, ChunkedDecoder};
use ringgate_core::http::{
    cookie_value, header_value, parse_request, parse_response, write_request_patch,
    ForwardedClient, HeadScratch, RequestBody, RequestHead, ResponseBody, Version,
};
use ringgate_core::ratelimit::Admission;

use crate::access_log::{AccessLog, Captured, Sent};
use crate::io::{
    read_more, write_gather, write_range, write_static, Abort, Gather, Part, ReadFail, Reader,
    Writer,
};
use crate::upstream::{ConnectError, UpstreamState};
use crate::worker::Worker;

/// Read size for heads; a head larger than this grows the buffer up to the
/// configured limit.
const HEAD_READ_BYTES: usize = 16 * 1024;
/// Read size while streaming bodies: large enough to amortise a syscall,
/// small enough to keep 10k connections cheap.
const BODY_READ_BYTES: usize = 64 * 1024;

const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What happens to the client connection after a request.
enum Next {
    KeepAlive,
    Close,
}

/// A refusal the client is told about: status and a short reason.
struct Refusal {
    status: u16,
    reason: &'static str,
}

impl Refusal {
    fn new(status: u16, reason: &'static str) -> Self {
        Refusal { status, reason }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        408 => "Request Timeout",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Builds a small error response. Error paths may allocate; the happy path
/// does not come here.
fn error_response(refusal: &Refusal, close: bool) -> Vec<u8> {
    error_response_with(refusal, if close { CLOSE_LINE } else { "" })
}

const CLOSE_LINE: &str = "Connection: close\r\n";
/// An HTTP/1.0 client keeps its connection only when told so (RFC 9112
/// §9.3 and RFC 1945 practice): every response it may reuse carries this.
const KEEP_ALIVE_LINE: &str = "Connection: keep-alive\r\n";

fn error_response_with(refusal: &Refusal, connection_line: &str) -> Vec<u8> {
    let body_len = refusal.reason.len() + 1;
    let mut out = Vec::with_capacity(160 + body_len);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}\n",
        refusal.status,
        status_text(refusal.status),
        body_len,
        connection_line,
        refusal.reason
    );
    out
}

struct Downstream {
    r: Reader,
    w: Writer,
    client: ForwardedClient,
    /// Client bytes: the head being parsed, any body bytes read with it, and
    /// pipelined requests after it.
    req: Gather,
    /// Scratch for streaming request bodies.
    body: Vec<u8>,
    /// Upstream bytes: response head and body chunks.
    resp: Gather,
    req_scratch: HeadScratch,
    resp_scratch: HeadScratch,
    /// The client connection's read canceller, shared with the worker so a
    /// drain can close the connection while it waits for a next request.
    ctl: Rc<ConnControl>,
    upstream_abort: Abort,
    /// The consistent-hash key of the current request, copied out of `req`
    /// so the buffer can move into I/O while the key is used.
    hash_key: Vec<u8>,
    /// Patch bytes that go before the head's ranges (a rewritten request
    /// line); the rest of the patch goes after them.
    patch_prefix: usize,
    /// What went back for the current request (for the access log).
    sent: Sent,
    /// The current request's access-log fields, when logging.
    captured: Captured,
}

/// What a worker may do to one of its client connections from outside.
#[derive(Default)]
pub struct ConnControl {
    /// Cancels the connection's pending client read.
    pub abort: Abort,
    /// Waiting for a next request on a kept-alive connection, nothing of it
    /// read yet: a drain closes such a connection at once.
    pub idle: Cell<bool>,
    /// The worker's idle ticket taken when it began waiting: the idle
    /// connection with the smallest has waited longest.
    pub idle_ticket: Cell<u64>,
}

pub async fn serve(
    worker: Rc<Worker>,
    listener: usize,
    stream: TcpStream,
    peer_ip: IpAddr,
    ctl: Rc<ConnControl>,
) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut d = Downstream {
        r,
        w,
        client: ForwardedClient::new(peer_ip),
        req: Gather::with_capacity(HEAD_READ_BYTES),
        body: Vec::new(),
        resp: Gather::with_capacity(HEAD_READ_BYTES),
        req_scratch: HeadScratch::default(),
        resp_scratch: HeadScratch::default(),
        ctl,
        upstream_abort: Abort::default(),
        hash_key: Vec::new(),
        patch_prefix: 0,
        sent: Sent::default(),
        captured: Captured::default(),
    };
    let mut first = true;
    loop {
        // A connection's first request is served even while draining: the
        // client connected before the listener closed.
        let idle = !first && d.req.source.is_empty();
        if idle && worker.draining.get() {
            return;
        }
        d.ctl.idle.set(idle);
        d.ctl.idle_ticket.set(worker.idle_ticket());
        let head = d.read_head(&worker, first).await;
        d.ctl.idle.set(false);
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                d.sent.reset();
                d.send_refusal(&refusal, true).await;
                d.record(&worker, None);
                return;
            }
        };
        first = false;
        match d.handle(&worker, listener, &head).await {
            Next::KeepAlive => continue,
            Next::Close => return,
        }
    }
}

impl Downstream {
    /// Counts what went back for the request and logs it: `request` holds
    /// its captured fields and how long it took, `None` for a head that
    /// could not be parsed.
    fn record(&self, worker: &Worker, request: Option<(&Captured, Duration)>) {
        worker.counters.response(self.sent.status.get());
        if let Some(log) = &worker.access_log {
            let (captured, took) = request.map_or((None, Duration::ZERO), |(c, t)| (Some(c), t));
            log.write(&self.client, captured, &self.sent, took);
        }
    }

    async fn send_refusal(&mut self, refusal: &Refusal, close: bool) -> bool {
        self.sent.local(refusal.status, refusal.reason.len() + 1);
        let bytes = error_response(refusal, close);
        let len = bytes.len();
        let (res, _) = write_range(&mut self.w, bytes, 0..len).await;
        res.is_ok()
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
        loop {
            if !self.req.source.is_empty() {
                match parse_request(&self.req.source, worker.head_limits, &mut self.req_scratch) {
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
            let res = read_more(
                &mut self.r,
                &mut self.req.source,
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

    async fn handle(&mut self, worker: &Worker, listener: usize, head: &RequestHead) -> Next {
        self.sent.reset();
        let started = worker.access_log.as_ref().map(|_| {
            AccessLog::capture(&mut self.captured, &self.req.source, head);
            Instant::now()
        });
        let next = self.route(worker, listener, head).await;
        self.record(worker, started.map(|t| (&self.captured, t.elapsed())));
        next
    }

    /// Routes the request, then answers it locally (404, 429) or forwards it.
    async fn route(&mut self, worker: &Worker, listener: usize, head: &RequestHead) -> Next {
        let src = &self.req.source;
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
                .answer_locally(&Refusal::new(404, "no route"), can_keep, None, head)
                .await;
        };
        if let Some(limiter) = &worker.limiters[route] {
            let key = rate_limit_key(
                &worker.config.routes[route],
                &self.req.source[..head.head_len],
                &self.client,
            );
            let admission = limiter.borrow_mut().admit(key, Instant::now());
            if !admission.allowed {
                let refusal = Refusal::new(429, "rate limit exceeded");
                return self
                    .answer_locally(&refusal, can_keep, Some(&admission), head)
                    .await;
            }
        }
        let route = &worker.config.routes[route];
        let upstream = &worker.upstreams[route.upstream];
        match self.forward(worker, upstream, route, head).await {
            Ok(next) => next,
            Err(refusal) => {
                self.send_refusal(&refusal, true).await;
                Next::Close
            }
        }
    }

    /// Answers a request without an upstream (404, 429), keeping the
    /// connection when the request had no body.
    async fn answer_locally(
        &mut self,
        refusal: &Refusal,
        keep: bool,
        admission: Option<&Admission>,
        head: &RequestHead,
    ) -> Next {
        let connection_line = match (keep, head.version) {
            (false, _) => CLOSE_LINE,
            (true, Version::Http10) => KEEP_ALIVE_LINE,
            (true, Version::Http11) => "",
        };
        self.sent.local(refusal.status, refusal.reason.len() + 1);
        let mut bytes = error_response_with(refusal, connection_line);
        if let Some(a) = admission {
            insert_rate_limit_headers(&mut bytes, a);
        }
        let len = bytes.len();
        let (res, _) = write_range(&mut self.w, bytes, 0..len).await;
        if keep && res.is_ok() {
            self.req.source.drain(..head.head_len);
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Proxies one routed request, retrying on another backend where the
    /// upstream allows it. `Err` means nothing of a response has reached the
    /// client yet, so the caller can still answer with a status.
    async fn forward(
        &mut self,
        worker: &Worker,
        upstream: &UpstreamState,
        route: &Route,
        head: &RequestHead,
    ) -> Result<Next, Refusal> {
        let available = self.req.source.len() - head.head_len;
        let (initial_body, mut body_left) = match head.body {
            RequestBody::Empty => (0, None),
            RequestBody::Length(n) => length_body(available, n),
            RequestBody::Chunked => {
                // Check what is already here before anything goes upstream.
                let mut decoder = ChunkedDecoder::new(worker.chunk_limits);
                let feed = decoder
                    .feed(&self.req.source[head.head_len..], &mut |_| {})
                    .map_err(chunk_refusal)?;
                (
                    feed.consumed,
                    (!feed.done).then_some(BodyLeft::Chunked(decoder)),
                )
            }
        };
        let forwarded_len = head.head_len + initial_body;
        // Only a request whose bytes are all still in hand can be sent again,
        // and only an idempotent one to another backend (RFC 9110 §9.2.2).
        let replayable = body_left.is_none();
        let idempotent = is_idempotent(&self.req.source[head.method.clone()]);
        self.req.patch.clear();
        self.patch_prefix = 0;
        if let Some(prefix) = &route.rewrite_prefix {
            // The target with the matched prefix replaced, in origin-form
            // (RFC 9112 §3.2.1), as the request line's first patch bytes.
            let src = &self.req.source;
            let rest = head.path.start + route.path_prefix.len()..head.target.end;
            let patch = &mut self.req.patch;
            patch.extend_from_slice(&src[head.method.clone()]);
            patch.push(b' ');
            patch.extend_from_slice(prefix.as_bytes());
            patch.extend_from_slice(&src[rest]);
            patch.extend_from_slice(match head.version {
                Version::Http10 => b" HTTP/1.0\r\n",
                Version::Http11 => b" HTTP/1.1\r\n",
            });
            self.patch_prefix = patch.len();
        }
        write_set_fields(&mut self.req.patch, &route.request_headers);
        if route.rewrite_prefix.is_some() || !route.request_headers.is_empty() {
            // The request line and edited fields go as patch bytes instead.
            let edits = &route.request_headers;
            self.req_scratch.retain_lines(
                &self.req.source,
                route.rewrite_prefix.is_none(),
                |name| !edits.drops(name),
            );
        }
        if head.version == Version::Http10 {
            // The request line stays HTTP/1.0; without this the backend
            // would close the upstream connection after every such request.
            self.req.patch.extend_from_slice(KEEP_ALIVE_LINE.as_bytes());
        }
        write_request_patch(
            &mut self.req.patch,
            &self.req.source,
            &self.req_scratch,
            &self.client,
            "http",
        );
        self.hash_key.clear();
        if let Some(hash_key) = &upstream.config.hash_key {
            let key = balance_key(hash_key, &self.req.source[..head.head_len], &self.client);
            self.hash_key.extend_from_slice(key);
        }
        upstream.count_request();

        let mut retries_left = match &upstream.config.retries {
            Some(r) if replayable && idempotent => r.attempts,
            _ => 0,
        };
        let mut failed_backend = None;
        loop {
            let now = Instant::now();
            let key = upstream
                .config
                .hash_key
                .as_ref()
                .map(|_| &self.hash_key[..]);
            let backend = upstream
                .pick(key, failed_backend, now)
                .ok_or(Refusal::new(503, "no healthy backend available"))?;
            let retry_5xx = retries_left > 0
                && upstream
                    .config
                    .retries
                    .as_ref()
                    .is_some_and(|r| r.on.status_5xx)
                && upstream.retry_affordable();
            upstream.on_start(backend, now);
            self.sent.upstream.set(Some(upstream.backend_addr(backend)));
            let started = Instant::now();
            let attempt = self
                .attempt(
                    worker,
                    upstream,
                    backend,
                    head,
                    forwarded_len,
                    &mut body_left,
                    replayable,
                    retry_5xx,
                    &route.response_headers,
                )
                .await;
            let now = Instant::now();
            match attempt {
                Attempt::Done { next, status } => {
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
                Attempt::Broken(outcome) => {
                    upstream.on_end(backend, outcome, now);
                    return Ok(Next::Close);
                }
                Attempt::Failed { failure, refusal } => {
                    upstream.on_end(backend, failure.outcome(), now);
                    let retry_on = upstream
                        .config
                        .retries
                        .as_ref()
                        .map(|r| r.on)
                        .unwrap_or_default();
                    if retries_left > 0 && failure.retry_allowed(retry_on) && upstream.take_retry()
                    {
                        retries_left -= 1;
                        failed_backend = Some(backend);
                        continue;
                    }
                    return Err(refusal);
                }
            }
        }
    }

    /// One try against one backend. A pooled connection the backend had
    /// already closed is retried once on a fresh connection to the same
    /// backend (that is not a failure of the backend).
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        worker: &Worker,
        upstream: &UpstreamState,
        backend: usize,
        head: &RequestHead,
        forwarded_len: usize,
        body_left: &mut Option<BodyLeft>,
        replayable: bool,
        hold_5xx: bool,
        response_edits: &HeaderEdits,
    ) -> Attempt {
        let client_closing = !head.keep_alive;
        let mut fresh = false;
        loop {
            let mut conn = match upstream.checkout(backend, fresh).await {
                Ok(conn) => conn,
                Err(ConnectError::TimedOut) => {
                    return Attempt::failed(
                        Failure::ConnectTimeout,
                        504,
                        "upstream connect timed out",
                    )
                }
                Err(ConnectError::Failed) => {
                    return Attempt::failed(Failure::ConnectRefused, 502, "upstream connect failed")
                }
                Err(ConnectError::Overflow) => {
                    return Attempt::failed(
                        Failure::Overflow,
                        503,
                        "upstream connection limit reached",
                    )
                }
            };
            self.req.clear_segments();
            self.req.push(Part::Patch, 0..self.patch_prefix);
            for range in &self.req_scratch.forward {
                self.req.push(Part::Source, range.clone());
            }
            self.req
                .push(Part::Patch, self.patch_prefix..self.req.patch.len());
            self.req.push(Part::Source, head.head_len..forwarded_len);
            let gather = std::mem::take(&mut self.req);
            let (res, gather) = write_gather(&mut conn.w, gather).await;
            self.req = gather;
            if res.is_err() {
                if conn.reused && replayable && !fresh {
                    fresh = true;
                    continue;
                }
                return Attempt::failed(Failure::Reset, 502, "upstream write failed");
            }
            if head.expect_continue
                && body_left.is_some()
                && write_static(&mut self.w, CONTINUE_100).await.is_err()
            {
                return Attempt::Broken(Outcome::Aborted);
            }

            self.ctl.abort.reset();
            self.upstream_abort.reset();
            let sending = Cell::new(body_left.is_some());
            let relay_ctx = RelayCtx {
                worker,
                request_was_head: head.is_head_method,
                client_version: head.version,
                client_closing,
                sent: &self.sent,
                edits: response_edits,
                response_timeout: upstream.config.response_timeout,
                hold_5xx,
                sending: &sending,
            };
            let relay = relay_response(
                &relay_ctx,
                &mut conn.r,
                &mut self.w,
                &mut self.resp,
                &mut self.resp_scratch,
                &self.upstream_abort,
                &self.ctl.abort,
            );
            let (relayed, sent) = match body_left.take() {
                None => (relay.await, Ok(0..0)),
                Some(left) => {
                    let send = send_body(
                        worker,
                        &mut self.r,
                        &mut self.body,
                        &mut conn.w,
                        left,
                        &self.ctl.abort,
                        &self.upstream_abort,
                        &sending,
                    );
                    let (sent, relayed) = monoio::join!(send, relay);
                    (relayed, sent)
                }
            };
            return match relayed {
                Err(RelayError::Silent) if conn.reused && replayable && !fresh => {
                    fresh = true;
                    continue;
                }
                Err(e) if !e.started() => match sent {
                    Err(SendError::BadChunk(c)) => Attempt::Failed {
                        failure: Failure::Client,
                        refusal: chunk_refusal(c),
                    },
                    Err(SendError::ClientTimeout) => {
                        Attempt::failed(Failure::Client, 408, "request body not received in time")
                    }
                    Err(SendError::ClientGone | SendError::Aborted) => {
                        Attempt::Broken(Outcome::Aborted)
                    }
                    _ => Attempt::Failed {
                        failure: e.failure(),
                        refusal: e.refusal(),
                    },
                },
                Err(_) => Attempt::Broken(Outcome::Reset),
                Ok(done) => {
                    let Ok(leftover) = sent else {
                        // The response went out but the request body did not
                        // end cleanly: the connection is out of sync.
                        return Attempt::Broken(Outcome::Aborted);
                    };
                    if done.upstream_reusable {
                        upstream.checkin(conn);
                    }
                    self.req.source.drain(..forwarded_len);
                    self.req.source.extend_from_slice(&self.body[leftover]);
                    let next = if done.client_close || client_closing {
                        Next::Close
                    } else {
                        Next::KeepAlive
                    };
                    Attempt::Done {
                        next,
                        status: done.status,
                    }
                }
            };
        }
    }
}

/// How one try against a backend ended.
enum Attempt {
    /// The response reached the client.
    Done { next: Next, status: u16 },
    /// Nothing reached the client: it can still get `refusal`, or a retry.
    Failed { failure: Failure, refusal: Refusal },
    /// Part of an exchange happened and then broke: close the client.
    Broken(Outcome),
}

impl Attempt {
    fn failed(failure: Failure, status: u16, reason: &'static str) -> Self {
        Attempt::Failed {
            failure,
            refusal: Refusal::new(status, reason),
        }
    }
}

/// Why a try failed before any response byte reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    ConnectRefused,
    ConnectTimeout,
    Reset,
    Timeout,
    Status5xx,
    /// The client's fault (bad chunk, slow body): never retried, and not the
    /// backend's failure.
    Client,
    /// The backend's `max_connections` was reached: nothing was sent, and
    /// the backend did nothing wrong.
    Overflow,
}

impl Failure {
    fn outcome(self) -> Outcome {
        match self {
            Failure::ConnectRefused => Outcome::ConnectFailure,
            Failure::ConnectTimeout | Failure::Timeout => Outcome::Timeout,
            Failure::Reset => Outcome::Reset,
            Failure::Status5xx => Outcome::Status5xx,
            Failure::Client | Failure::Overflow => Outcome::Aborted,
        }
    }

    /// Envoy's retry_on semantics: a connect timeout is a connect failure.
    fn retry_allowed(self, on: RetryOn) -> bool {
        match self {
            Failure::ConnectRefused | Failure::ConnectTimeout | Failure::Overflow => {
                on.connect_failure
            }
            Failure::Reset => on.reset,
            Failure::Timeout => on.timeout,
            Failure::Status5xx => on.status_5xx,
            Failure::Client => false,
        }
    }
}

/// The field lines a route's `set` edits add to a head's patch.
fn write_set_fields(patch: &mut Vec<u8>, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        patch.extend_from_slice(name.as_bytes());
        patch.extend_from_slice(b": ");
        patch.extend_from_slice(value.as_bytes());
        patch.extend_from_slice(b"\r\n");
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

/// The bytes a rate limit counts by.
fn rate_limit_key<'a>(route: &'a Route, head: &'a [u8], client: &'a ForwardedClient) -> &'a [u8] {
    match route.rate_limit.as_ref().map(|r| &r.key) {
        Some(RateLimitKey::ClientIp) | None => client.ip_bytes(),
        Some(RateLimitKey::Route) => b"",
        Some(RateLimitKey::Header(name)) => header_value(head, name.as_bytes()).unwrap_or(b""),
    }
}

/// The bytes a consistent hash is keyed on.
fn balance_key<'a>(key: &'a HashKey, head: &'a [u8], client: &'a ForwardedClient) -> &'a [u8] {
    match key {
        HashKey::ClientIp => client.ip_bytes(),
        HashKey::Header(name) => header_value(head, name.as_bytes()).unwrap_or(b""),
        HashKey::Cookie(name) => cookie_value(head, name.as_bytes()).unwrap_or(b""),
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

fn chunk_refusal(e: ChunkError) -> Refusal {
    Refusal::new(
        400,
        match e {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size overflows",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::LineTooLong => "chunk line too long",
            ChunkError::BareLf => "bare LF in chunked framing",
            ChunkError::MissingCrlfAfterData => "chunk data not followed by CRLF",
            ChunkError::InvalidTrailer => "invalid trailer field",
            ChunkError::TrailerTooLarge => "trailer section too large",
        },
    )
}

/// Of a body of `length` bytes, how much is already buffered (`available`
/// bytes follow the head) and what is still to come.
fn length_body(available: usize, length: u64) -> (usize, Option<BodyLeft>) {
    let have = (available as u64).min(length);
    (
        have as usize,
        (length > have).then_some(BodyLeft::Length(length - have)),
    )
}

/// What of a request body is still to come from the client.
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
}

enum SendError {
    ClientGone,
    ClientTimeout,
    BadChunk(ChunkError),
    Aborted,
    UpstreamWrite,
}

/// Streams the rest of a request body from the client to the upstream.
/// Returns the range of `body` that belongs to the next request.
#[allow(clippy::too_many_arguments)]
async fn send_body(
    worker: &Worker,
    client: &mut Reader,
    body: &mut Vec<u8>,
    up: &mut Writer,
    mut left: BodyLeft,
    client_abort: &Abort,
    upstream_abort: &Abort,
    sending: &Cell<bool>,
) -> Result<Range<usize>, SendError> {
    let result = async {
        loop {
            body.clear();
            let timeout = worker.config.limits.body_read_timeout;
            let n = match read_more(client, body, BODY_READ_BYTES, timeout, client_abort).await {
                Ok(0) | Err(ReadFail::Io(_)) => return Err(SendError::ClientGone),
                Ok(n) => n,
                Err(ReadFail::TimedOut) => return Err(SendError::ClientTimeout),
                Err(ReadFail::Aborted) => return Err(SendError::Aborted),
            };
            let (take, done) = match &mut left {
                BodyLeft::Length(remaining) => {
                    let take = (n as u64).min(*remaining);
                    *remaining -= take;
                    (take as usize, *remaining == 0)
                }
                BodyLeft::Chunked(decoder) => {
                    let feed = decoder
                        .feed(&body[..n], &mut |_| {})
                        .map_err(SendError::BadChunk)?;
                    (feed.consumed, feed.done)
                }
            };
            let (res, buf) = write_range(up, std::mem::take(body), 0..take).await;
            *body = buf;
            if res.is_err() {
                return Err(SendError::UpstreamWrite);
            }
            if done {
                return Ok(take..n);
            }
        }
    }
    .await;
    sending.set(false);
    if let Err(SendError::ClientGone | SendError::ClientTimeout | SendError::BadChunk(_)) = result {
        // The upstream holds half a request it must never complete: stop
        // waiting for its answer. The connection is dropped, not pooled.
        upstream_abort.abort();
    }
    result
}

struct RelayCtx<'a> {
    worker: &'a Worker,
    request_was_head: bool,
    client_version: Version,
    client_closing: bool,
    /// Where the status and body bytes sent to the client are kept.
    sent: &'a Sent,
    /// The route's `response_headers`.
    edits: &'a HeaderEdits,
    /// Longest wait for the next upstream read (nginx's proxy_read_timeout).
    response_timeout: Duration,
    /// A retry can follow a 5xx: report it instead of forwarding it.
    hold_5xx: bool,
    /// The request body is still streaming: the upstream may legitimately
    /// wait for all of it before answering.
    sending: &'a Cell<bool>,
}

struct RelayDone {
    status: u16,
    upstream_reusable: bool,
    client_close: bool,
}

enum RelayError {
    /// The upstream closed or reset before sending a byte.
    Silent,
    TimedOut,
    BadResponse(&'static str),
    Aborted,
    /// A 5xx held back so that the request can be retried elsewhere.
    Status5xx,
    /// Failed after part of the response reached the client.
    Broken,
}

impl RelayError {
    fn started(&self) -> bool {
        matches!(self, RelayError::Broken)
    }

    fn refusal(&self) -> Refusal {
        match self {
            RelayError::Silent => {
                Refusal::new(502, "upstream closed the connection without a response")
            }
            RelayError::TimedOut => Refusal::new(504, "upstream response timed out"),
            RelayError::BadResponse(why) => Refusal::new(502, why),
            RelayError::Status5xx => Refusal::new(502, "upstream answered with a server error"),
            RelayError::Aborted | RelayError::Broken => {
                Refusal::new(502, "upstream exchange aborted")
            }
        }
    }

    fn failure(&self) -> Failure {
        match self {
            RelayError::TimedOut => Failure::Timeout,
            RelayError::Status5xx => Failure::Status5xx,
            RelayError::Silent
            | RelayError::BadResponse(_)
            | RelayError::Aborted
            | RelayError::Broken => Failure::Reset,
        }
    }
}

/// Reads the upstream response and streams it to the client.
async fn relay_response(
    ctx: &RelayCtx<'_>,
    up: &mut Reader,
    client: &mut Writer,
    resp: &mut Gather,
    scratch: &mut HeadScratch,
    upstream_abort: &Abort,
    client_abort: &Abort,
) -> Result<RelayDone, RelayError> {
    let result = relay_inner(ctx, up, client, resp, scratch, upstream_abort).await;
    if result.is_err() {
        client_abort.abort();
    }
    result
}

async fn relay_inner(
    ctx: &RelayCtx<'_>,
    up: &mut Reader,
    client: &mut Writer,
    resp: &mut Gather,
    scratch: &mut HeadScratch,
    upstream_abort: &Abort,
) -> Result<RelayDone, RelayError> {
    let worker = ctx.worker;
    let timeout = ctx.response_timeout;
    resp.source.clear();
    let mut started = false;
    let broken = |started: bool, e: RelayError| if started { RelayError::Broken } else { e };
    loop {
        let head = loop {
            if !resp.source.is_empty() {
                match parse_response(
                    &resp.source,
                    worker.head_limits,
                    ctx.request_was_head,
                    scratch,
                ) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return Err(broken(started, RelayError::BadResponse(e.reason()))),
                }
            }
            let res = read_more(
                up,
                &mut resp.source,
                HEAD_READ_BYTES,
                timeout,
                upstream_abort,
            )
            .await;
            match res {
                Ok(0) | Err(ReadFail::Io(_)) if resp.source.is_empty() && !started => {
                    return Err(RelayError::Silent)
                }
                Ok(0) | Err(ReadFail::Io(_)) => {
                    return Err(broken(
                        started,
                        RelayError::BadResponse("upstream closed mid-head"),
                    ))
                }
                Ok(_) => {}
                Err(ReadFail::TimedOut) if ctx.sending.get() => {}
                Err(ReadFail::TimedOut) => return Err(broken(started, RelayError::TimedOut)),
                Err(ReadFail::Aborted) => return Err(broken(started, RelayError::Aborted)),
            }
        };
        let available = resp.source.len() - head.head_len;
        let (initial, mut left) = match head.body {
            ResponseBody::Empty => (0, None),
            ResponseBody::Length(n) => length_body(available, n),
            ResponseBody::Chunked => {
                if ctx.client_version == Version::Http10 {
                    return Err(broken(
                        started,
                        RelayError::BadResponse("chunked response to an HTTP/1.0 request"),
                    ));
                }
                let mut decoder = ChunkedDecoder::new(worker.chunk_limits);
                let feed = decoder
                    .feed(&resp.source[head.head_len..], &mut |_| {})
                    .map_err(|_| {
                        broken(
                            started,
                            RelayError::BadResponse("invalid chunked response body"),
                        )
                    })?;
                (
                    feed.consumed,
                    (!feed.done).then_some(BodyLeft::Chunked(decoder)),
                )
            }
            ResponseBody::UntilClose => (available, None),
        };
        if ctx.hold_5xx && head.status >= 500 && !started {
            // Discarded with its connection; the caller retries elsewhere.
            return Err(RelayError::Status5xx);
        }
        let until_close = head.body == ResponseBody::UntilClose;
        // A draining worker announces the close on every response it starts.
        let client_close = ctx.client_closing || until_close || worker.draining.get();
        let interim = head.is_interim();
        resp.patch.clear();
        if !interim && !ctx.edits.is_empty() {
            // Edited fields go as patch bytes; the rest stays as read.
            let edits = ctx.edits;
            scratch.retain_lines(&resp.source, true, |name| !edits.drops(name));
            write_set_fields(&mut resp.patch, edits);
        }
        if client_close && !interim {
            resp.patch.extend_from_slice(CLOSE_LINE.as_bytes());
        } else if ctx.client_version == Version::Http10 && !interim {
            resp.patch.extend_from_slice(KEEP_ALIVE_LINE.as_bytes());
        }
        resp.patch.extend_from_slice(b"\r\n");
        resp.clear_segments();
        for range in &scratch.forward {
            resp.push(Part::Source, range.clone());
        }
        resp.push(Part::Patch, 0..resp.patch.len());
        resp.push(Part::Source, head.head_len..head.head_len + initial);
        let gather = std::mem::take(resp);
        let (res, gather) = write_gather(client, gather).await;
        *resp = gather;
        if res.is_err() {
            return Err(RelayError::Broken);
        }
        started = true;
        if interim {
            resp.source.drain(..head.head_len);
            continue;
        }
        ctx.sent.status.set(head.status);
        ctx.sent.body_bytes.set(initial as u64);
        let mut surplus = resp.source.len() > head.head_len + initial;
        // Stream the rest of the body, reusing the same buffer.
        loop {
            if left.is_none() && !until_close {
                break;
            }
            resp.source.clear();
            let res = read_more(
                up,
                &mut resp.source,
                BODY_READ_BYTES,
                timeout,
                upstream_abort,
            )
            .await;
            let n = match res {
                Ok(0) if until_close => break,
                Ok(0) => return Err(RelayError::Broken),
                Ok(n) => n,
                Err(_) => return Err(RelayError::Broken),
            };
            let take = match &mut left {
                None => n,
                Some(BodyLeft::Length(remaining)) => {
                    let take = (n as u64).min(*remaining);
                    *remaining -= take;
                    if *remaining == 0 {
                        left = None;
                    }
                    take as usize
                }
                Some(BodyLeft::Chunked(decoder)) => {
                    let feed = decoder
                        .feed(&resp.source[..n], &mut |_| {})
                        .map_err(|_| RelayError::Broken)?;
                    if feed.done {
                        left = None;
                    }
                    feed.consumed
                }
            };
            surplus |= take < n;
            let (res, buf) = write_range(client, std::mem::take(&mut resp.source), 0..take).await;
            resp.source = buf;
            if res.is_err() {
                return Err(RelayError::Broken);
            }
            ctx.sent.add_body(take);
        }
        return Ok(RelayDone {
            status: head.status,
            // Bytes past the response mean the upstream is out of sync.
            upstream_reusable: head.reusable && !surplus,
            client_close,
        });
    }
}
