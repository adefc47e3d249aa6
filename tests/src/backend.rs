//! Loopback test backends: real HTTP/1.1 servers on std threads (one per
//! connection) that record every request they parse, so a test can assert
//! what reached the upstream side of the proxy, including requests that
//! should never have got there (smuggling shows up as an extra record).
//! A backend can also be killed and restarted on the same port
//! ([`Backend::stop`], [`Backend::restart`], [`BackendBuilder::bind`]) and
//! can sabotage a fixed share of its connections
//! ([`BackendBuilder::fail_connections`]) or misbehave on a fixed share of
//! its requests ([`BackendBuilder::misbehave`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::wire::{self, Framing, Head, Reader, HEAD_SIZE_MAX, READ_SIZE};

/// The first bytes of every request body are kept for inspection; beyond
/// this only the length is counted (the streaming tests send a gigabyte).
pub const BODY_KEEP_MAX: usize = 4 * 1024 * 1024;

/// Idle keep-alive wait on a backend connection; longer than any test.
const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A stuck write means the proxy stopped reading; give up eventually so the
/// thread does not outlive the test by much.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend does with a request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a small body naming the backend and target, `x-backend: NAME`.
    Ok,
    /// Streams the request body back as it arrives: Content-Length when the
    /// request had one, chunked when the request was chunked.
    Echo,
    /// Waits, then answers like `Ok`.
    Stall(Duration),
    /// Reads the request, then closes without a byte of response.
    CloseWithoutResponse,
    /// Like `Ok`, with this status code instead of 200.
    Status(u16),
    /// A response carrying both Content-Length and Transfer-Encoding.
    AmbiguousFraming,
    /// A chunked response (several chunks).
    Chunked,
    /// A response with neither Content-Length nor Transfer-Encoding, ended by
    /// closing the connection.
    CloseDelimited,
    /// `Ok`, plus hop-by-hop response headers (Keep-Alive, a header named in
    /// Connection, Proxy-Connection) that the proxy must strip.
    HopByHopHeaders,
    /// Writes exactly these bytes as its answer, after reading the request;
    /// for misbehaving backends whose responses no test helper would build.
    Raw(Vec<u8>),
    /// Waits, then writes these bytes (a slow backend with a set answer).
    StallThenRaw(Duration, Vec<u8>),
    /// Answers like `Ok`, then `delay` later writes `bytes` nobody asked
    /// for (a second, unsolicited response), then serves on.
    ThenUnsolicited { delay: Duration, bytes: Vec<u8> },
    /// Writes `bytes` as soon as the head is read, without reading the body,
    /// then reads on: the body is parsed as the next request (the early
    /// answer a 401/413 handler gives, which a hidden request exploits).
    AnswerBeforeBody(Vec<u8>),
    /// Closes as soon as the head is read, the body unread (a RST once the
    /// proxy writes more).
    CloseBeforeBody,
    /// Reads the head, then neither reads the body nor answers for this
    /// long (a backend that stopped reading).
    IgnoreBody(Duration),
    /// 200 with a body of this many bytes (the test pattern), written as
    /// fast as the peer takes it.
    Large(u64),
    /// `102 Processing` every 50 ms, for ever (until a write fails).
    EndlessInterim,
    /// Answers like `Ok`, then `delay` later sends the same response again:
    /// a duplicate nobody asked for, whose body names this request's target
    /// (its id), so a later client that receives it gets another request's
    /// body. The connection reads nothing meanwhile.
    ThenRepeat(Duration),
    /// Answers like `Ok` as soon as the head is read, without reading the
    /// body, then reads on: the body is parsed as the next request (a
    /// request hidden in it), whose answer then follows on the connection.
    OkBeforeBody,
}

/// How a backend sabotages the connections [`BackendBuilder::fail_connections`]
/// selects, before reading a byte of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnFault {
    /// Closed right after accept: the peer sees a FIN (then a reset if it
    /// writes).
    CloseAfterAccept,
    /// Waits until the peer's first bytes arrive, then closes with them
    /// unread, which makes the kernel send a RST (the effect of SO_LINGER 0,
    /// without unsafe code).
    ResetOnData,
}

/// Sabotage `num` of every `den` accepted connections, spread evenly and
/// deterministically: connection `n` (0-based, in accept order) fails when
/// `n * num % den < num`. 3 of 10 fails connections 0, 4, 7, 10, 14, 17, ...
#[derive(Clone, Copy, Debug)]
struct FaultPlan {
    num: usize,
    den: usize,
    fault: ConnFault,
}

impl FaultPlan {
    fn hits(&self, conn: usize) -> bool {
        self.den > 0 && (conn % self.den) * self.num % self.den < self.num
    }
}

/// Misbehave on `num` of every `den` requests (counted over all
/// connections, 0-based, in the order their heads are read): request `n`
/// does so when `(n % den) * num % den >= den - num`. 1 of 100 picks
/// requests 99, 199, ...; request 0 (a client's probe) never.
#[derive(Clone, Debug)]
struct MisbehavePlan {
    num: usize,
    den: usize,
    behaviour: Behaviour,
}

impl MisbehavePlan {
    fn hits(&self, n: usize) -> bool {
        (n % self.den) * self.num % self.den >= self.den - self.num
    }
}

/// One request as the backend parsed it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Which accepted connection (0-based, in accept order) carried it.
    pub conn: usize,
    /// When its head had been read.
    pub at: Instant,
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub raw_head: Vec<u8>,
    /// The first `BODY_KEEP_MAX` bytes of the decoded body.
    pub body: Vec<u8>,
    pub body_len: u64,
    pub body_complete: bool,
    /// Set when the head could not be parsed or the body was cut short.
    pub error: Option<String>,
}

impl Recorded {
    fn head(&self) -> Head {
        Head {
            start: [
                self.method.clone(),
                self.target.clone(),
                self.version.clone(),
            ],
            headers: self.headers.clone(),
        }
    }

    /// The comma-joined values of a header, `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head().header(name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

struct Shared {
    name: String,
    default: Behaviour,
    /// (path prefix, behaviour); the longest matching prefix wins.
    routes: Vec<(String, Behaviour)>,
    records: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    /// Connections sabotaged by the fault plan.
    faulted: AtomicUsize,
    faults: Option<FaultPlan>,
    misbehave: Option<MisbehavePlan>,
    /// Requests whose head was read, for the misbehave plan.
    heads: AtomicUsize,
    /// Requests the misbehave plan picked.
    misbehaved: AtomicUsize,
    idle_timeout: Duration,
    /// Open connections (a handle each, to cut them on stop), by number.
    streams: Mutex<HashMap<usize, TcpStream>>,
    stop: AtomicBool,
    /// Every connection must open with a PROXY protocol header.
    proxy_protocol: bool,
    /// The PROXY headers read, by connection number, as raw bytes.
    proxy_headers: Mutex<Vec<(usize, Vec<u8>)>>,
}

impl Shared {
    /// What to do with the next request: the misbehave plan's behaviour
    /// when it picks this one, else the route's.
    fn behaviour_for(&self, target: &str) -> Behaviour {
        let n = self.heads.fetch_add(1, Ordering::SeqCst);
        if let Some(plan) = self.misbehave.as_ref().filter(|p| p.hits(n)) {
            self.misbehaved.fetch_add(1, Ordering::SeqCst);
            return plan.behaviour.clone();
        }
        self.routes
            .iter()
            .filter(|(p, _)| target.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| self.default.clone())
    }

    /// Records a request, unless the backend has been stopped: a request
    /// read after `stop()` began is never answered and is not recorded, so
    /// every record of a stopped backend predates the stop.
    fn record(&self, r: Recorded) -> Option<usize> {
        let mut records = self.records.lock().unwrap();
        if self.stop.load(Ordering::SeqCst) {
            return None;
        }
        records.push(r);
        Some(records.len() - 1)
    }

    fn update(&self, idx: usize, f: impl FnOnce(&mut Recorded)) {
        let mut records = self.records.lock().unwrap();
        f(&mut records[idx]);
    }
}

pub struct BackendBuilder {
    name: String,
    default: Behaviour,
    routes: Vec<(String, Behaviour)>,
    addr: Option<SocketAddr>,
    faults: Option<FaultPlan>,
    misbehave: Option<MisbehavePlan>,
    idle_timeout: Duration,
    proxy_protocol: bool,
}

impl BackendBuilder {
    /// Expects every connection to open with a PROXY protocol header (v1
    /// or v2), as a backend behind `send_proxy_protocol` does; each is kept
    /// as read ([`Backend::proxy_headers`]) and the connection then serves
    /// HTTP. A connection without one is closed unanswered.
    pub fn proxy_protocol(mut self) -> Self {
        self.proxy_protocol = true;
        self
    }

    /// Closes a connection idle this long between requests (Node's
    /// keep-alive timeout is 5 s); default: longer than any test.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Behaviour for targets starting with `prefix`.
    pub fn route(mut self, prefix: &str, b: Behaviour) -> Self {
        self.routes.push((prefix.to_string(), b));
        self
    }

    pub fn default_behaviour(mut self, b: Behaviour) -> Self {
        self.default = b;
        self
    }

    /// Listens on `addr` (e.g. the port of a backend that was stopped)
    /// instead of a fresh loopback port.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Sabotages `num` of every `den` accepted connections with `fault`,
    /// in a fixed pattern (see [`ConnFault`]).
    pub fn fail_connections(mut self, num: usize, den: usize, fault: ConnFault) -> Self {
        assert!(den > 0 && num <= den, "fail_connections({num}, {den})");
        self.faults = Some(FaultPlan { num, den, fault });
        self
    }

    /// Does `b` instead of the routed behaviour on `num` of every `den`
    /// requests, in a fixed pattern (see [`MisbehavePlan`]); the rest are
    /// served as routed. [`Backend::misbehaved`] counts them.
    pub fn misbehave(mut self, num: usize, den: usize, b: Behaviour) -> Self {
        assert!(den > 0 && num <= den, "misbehave({num}, {den})");
        self.misbehave = Some(MisbehavePlan {
            num,
            den,
            behaviour: b,
        });
        self
    }

    pub fn start(self) -> Backend {
        let listener = match self.addr {
            Some(addr) => bind_retrying(addr),
            None => TcpListener::bind("127.0.0.1:0").expect("bind test backend"),
        };
        let addr = listener.local_addr().expect("backend local addr");
        let shared = Arc::new(Shared {
            name: self.name,
            default: self.default,
            routes: self.routes,
            records: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
            faults: self.faults,
            misbehave: self.misbehave,
            heads: AtomicUsize::new(0),
            misbehaved: AtomicUsize::new(0),
            idle_timeout: self.idle_timeout,
            streams: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            proxy_protocol: self.proxy_protocol,
            proxy_headers: Mutex::new(Vec::new()),
        });
        let mut backend = Backend {
            addr,
            shared,
            accept: None,
        };
        backend.spawn_accept(listener);
        backend
    }
}

/// Binds `addr`, retrying for a while: a port just released can take a
/// moment to be free again.
fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("bind test backend on {addr}: {e}"),
        }
    }
}

/// A running backend; stops (and cuts its connections) on drop.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn builder(name: &str) -> BackendBuilder {
        BackendBuilder {
            name: name.to_string(),
            default: Behaviour::Ok,
            routes: Vec::new(),
            addr: None,
            faults: None,
            misbehave: None,
            idle_timeout: IDLE_READ_TIMEOUT,
            proxy_protocol: false,
        }
    }

    fn spawn_accept(&mut self, listener: TcpListener) {
        let s = self.shared.clone();
        let accept = thread::Builder::new()
            .name(format!("backend-{}", s.name))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn backend accept thread");
        self.accept = Some(accept);
    }

    /// Kills the backend the way a crash would: the listening socket closes
    /// (connects are refused from now on) and every open connection is cut.
    /// Records are kept. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        {
            // Under the records lock: see `Shared::record`.
            let _records = self.shared.records.lock().unwrap();
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        // Wake the blocking accept; the loop then drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        for (_, s) in self.shared.streams.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Starts a stopped backend again on the same address, with the same
    /// behaviour; records and connection numbering carry on.
    pub fn restart(&mut self) {
        assert!(self.accept.is_none(), "restart of a running backend");
        let listener = bind_retrying(self.addr);
        self.shared.stop.store(false, Ordering::SeqCst);
        self.spawn_accept(listener);
    }

    /// Is it accepting connections (not stopped)?
    pub fn is_running(&self) -> bool {
        self.accept.is_some()
    }

    /// A backend doing `b` for every request.
    pub fn start(name: &str, b: Behaviour) -> Backend {
        Backend::builder(name).default_behaviour(b).start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A snapshot of every request recorded so far.
    pub fn records(&self) -> Vec<Recorded> {
        self.shared.records.lock().unwrap().clone()
    }

    /// The targets of every recorded request, in order.
    pub fn targets(&self) -> Vec<String> {
        self.records().into_iter().map(|r| r.target).collect()
    }

    /// `Ok` once a request for `target` has been read (before the backend
    /// answers it): for `eventually`, to know a request is in flight.
    pub fn reached(&self, target: &str) -> Result<(), String> {
        if self.targets().iter().any(|t| t == target) {
            Ok(())
        } else {
            Err(format!("{target} has not reached backend {}", self.name()))
        }
    }

    /// The PROXY headers received so far, raw, with the number of the
    /// connection each opened (see [`BackendBuilder::proxy_protocol`]).
    pub fn proxy_headers(&self) -> Vec<(usize, Vec<u8>)> {
        self.shared.proxy_headers.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections sabotaged by [`BackendBuilder::fail_connections`] so far.
    pub fn faulted(&self) -> usize {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// Requests [`BackendBuilder::misbehave`] picked so far.
    pub fn misbehaved(&self) -> usize {
        self.shared.misbehaved.load(Ordering::SeqCst)
    }

    /// Request heads read so far (all connections).
    pub fn heads(&self) -> usize {
        self.shared.heads.load(Ordering::SeqCst)
    }

    /// The body `Behaviour::Ok` sends for `target`.
    pub fn ok_body(&self, target: &str) -> String {
        ok_body(&self.shared.name, target)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ok_body(name: &str, target: &str) -> String {
    format!("hello from {name} {target}\n")
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn = shared.connections.fetch_add(1, Ordering::SeqCst);
        if let Some(plan) = shared.faults.filter(|p| p.hits(conn)) {
            shared.faulted.fetch_add(1, Ordering::SeqCst);
            match plan.fault {
                ConnFault::CloseAfterAccept => drop(stream),
                ConnFault::ResetOnData => {
                    // No other handle exists, so dropping this one closes
                    // the socket with the request unread: a RST.
                    let _ = thread::Builder::new()
                        .name(format!("backend-{}-rst{conn}", shared.name))
                        .spawn(move || {
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = stream.peek(&mut [0u8; 1]);
                            drop(stream);
                        });
                }
            }
            continue;
        }
        if let Ok(clone) = stream.try_clone() {
            shared.streams.lock().unwrap().insert(conn, clone);
        }
        let s = shared.clone();
        let _ = thread::Builder::new()
            .name(format!("backend-{}-c{conn}", s.name))
            .spawn(move || {
                let _ = serve(stream, conn, &s);
                // The handle kept for stop() would hold the socket open.
                if let Some(c) = s.streams.lock().unwrap().remove(&conn) {
                    let _ = c.shutdown(Shutdown::Both);
                }
            });
    }
}

fn unparseable(conn: usize, raw: Vec<u8>, error: String) -> Recorded {
    Recorded {
        conn,
        at: Instant::now(),
        method: "<unparseable>".into(),
        target: String::new(),
        version: String::new(),
        headers: Vec::new(),
        raw_head: raw,
        body: Vec::new(),
        body_len: 0,
        body_complete: false,
        error: Some(error),
    }
}

/// One connection: read head → record → behave → keep-alive or close.
/// A PROXY protocol header as the proxy should send it, read exactly: the
/// v1 line (at most 107 bytes with its CRLF) or the v2 signature, the fixed
/// part and the length it declares. Checked only as far as framing needs;
/// the tests decode what it says.
fn read_proxy_header(r: &mut Reader<TcpStream>) -> io::Result<Vec<u8>> {
    const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let first = r.read_exact_vec(1)?;
    if first[0] == b'P' {
        let mut line = first;
        line.extend(r.read_line(106)?);
        if !line.starts_with(b"PROXY ") || !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad PROXY v1 line",
            ));
        }
        return Ok(line);
    }
    let mut header = first;
    header.extend(r.read_exact_vec(15)?);
    if &header[..12] != V2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no PROXY header",
        ));
    }
    let len = u16::from_be_bytes([header[14], header[15]]);
    header.extend(r.read_exact_vec(usize::from(len))?);
    Ok(header)
}

fn serve(stream: TcpStream, conn: usize, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(shared.idle_timeout))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = Reader::new(stream);
    if shared.proxy_protocol {
        let header = read_proxy_header(&mut r)?;
        shared.proxy_headers.lock().unwrap().push((conn, header));
    }
    loop {
        let raw = match r.read_head(HEAD_SIZE_MAX) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Bytes that never formed a head are still evidence that
                // something reached the backend.
                let partial = r.buffered().to_vec();
                if !partial.is_empty() {
                    shared.record(unparseable(conn, partial, e.to_string()));
                }
                return Err(e);
            }
        };
        let head = match wire::parse_head(&raw) {
            Ok(h) => h,
            Err(e) => {
                shared.record(unparseable(conn, raw, e.to_string()));
                return Err(e);
            }
        };
        let [method, target, version] = head.start.clone();
        let Some(idx) = shared.record(Recorded {
            conn,
            at: Instant::now(),
            method,
            target: target.clone(),
            version: version.clone(),
            headers: head.headers.clone(),
            raw_head: raw,
            body: Vec::new(),
            body_len: 0,
            body_complete: false,
            error: None,
        }) else {
            return Ok(());
        };
        let framing = head.framing();
        let wants_close = head
            .header("connection")
            .map(|c| c.to_ascii_lowercase().contains("close"))
            .unwrap_or(false)
            || (version == "HTTP/1.0"
                && !head
                    .header("connection")
                    .map(|c| c.to_ascii_lowercase().contains("keep-alive"))
                    .unwrap_or(false));
        let expects_continue = head
            .header("expect")
            .map(|e| e.eq_ignore_ascii_case("100-continue"))
            .unwrap_or(false);
        if expects_continue && framing != Framing::None && framing != Framing::Length(0) {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }

        let behaviour = shared.behaviour_for(&target);
        let name = shared.name.as_str();
        let mut kept = Vec::new();
        let mut len = 0u64;

        // Behaviours that act before the body is read.
        match &behaviour {
            Behaviour::AnswerBeforeBody(bytes) => {
                w.write_all(bytes)?;
                continue;
            }
            Behaviour::OkBeforeBody => {
                write_ok(&mut w, name, &ok_body(name, &target), "")?;
                continue;
            }
            Behaviour::CloseBeforeBody => {
                let _ = w.shutdown(Shutdown::Both);
                return Ok(());
            }
            Behaviour::IgnoreBody(d) => {
                thread::sleep(*d);
                return Ok(());
            }
            Behaviour::EndlessInterim => loop {
                w.write_all(b"HTTP/1.1 102 Processing\r\n\r\n")?;
                thread::sleep(Duration::from_millis(50));
            },
            _ => {}
        }

        if let Behaviour::Echo = behaviour {
            let res = echo(&mut r, &mut w, framing, name, shared, idx);
            if let Err(e) = &res {
                shared.update(idx, |rec| rec.error = Some(e.to_string()));
            }
            res?;
            if wants_close {
                return Ok(());
            }
            continue;
        }

        let mut keep = |p: &[u8]| -> io::Result<()> {
            len += p.len() as u64;
            if kept.len() < BODY_KEEP_MAX {
                let n = p.len().min(BODY_KEEP_MAX - kept.len());
                kept.extend_from_slice(&p[..n]);
            }
            Ok(())
        };
        let res = match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => wire::read_length(&mut r, n, &mut keep),
            Framing::Chunked => wire::read_chunked(&mut r, &mut keep).map(|_| ()),
            Framing::UntilClose => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body framed by a transfer coding other than chunked",
            )),
        };
        shared.update(idx, |rec| {
            rec.body = std::mem::take(&mut kept);
            rec.body_len = len;
            rec.body_complete = res.is_ok();
            rec.error = res.as_ref().err().map(|e| e.to_string());
        });
        res?;

        let body = ok_body(name, &target);
        match behaviour {
            Behaviour::Echo => unreachable!("handled above"),
            Behaviour::Ok => write_ok(&mut w, name, &body, "")?,
            Behaviour::Status(code) => {
                let resp = format!(
                    "HTTP/1.1 {code} Test\r\nx-backend: {name}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                w.write_all(resp.as_bytes())?;
            }
            Behaviour::Stall(d) => {
                thread::sleep(d);
                write_ok(&mut w, name, &body, "")?;
            }
            Behaviour::CloseWithoutResponse => {
                let _ = w.shutdown(Shutdown::Both);
                return Ok(());
            }
            Behaviour::AmbiguousFraming => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                    body.len(),
                    String::from_utf8_lossy(&wire::chunked_body(body.as_bytes(), 7)),
                );
                w.write_all(resp.as_bytes())?;
            }
            Behaviour::Chunked => {
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .into_bytes();
                resp.extend_from_slice(&wire::chunked_body(body.as_bytes(), 5));
                w.write_all(&resp)?;
            }
            Behaviour::CloseDelimited => {
                let resp = format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\n\r\n{body}");
                w.write_all(resp.as_bytes())?;
                let _ = w.shutdown(Shutdown::Both);
                return Ok(());
            }
            Behaviour::Raw(bytes) => w.write_all(&bytes)?,
            Behaviour::StallThenRaw(d, bytes) => {
                thread::sleep(d);
                w.write_all(&bytes)?;
            }
            Behaviour::ThenUnsolicited { delay, bytes } => {
                write_ok(&mut w, name, &body, "")?;
                thread::sleep(delay);
                w.write_all(&bytes)?;
            }
            Behaviour::ThenRepeat(delay) => {
                write_ok(&mut w, name, &body, "")?;
                thread::sleep(delay);
                write_ok(&mut w, name, &body, "")?;
            }
            Behaviour::Large(n) => {
                w.write_all(
                    format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: {n}\r\n\r\n")
                        .as_bytes(),
                )?;
                let pattern = crate::Pattern::new(7).take(crate::PATTERN_LEN);
                let mut left = n;
                while left > 0 {
                    let k = left.min(pattern.len() as u64) as usize;
                    w.write_all(&pattern[..k])?;
                    left -= k as u64;
                }
            }
            Behaviour::AnswerBeforeBody(_)
            | Behaviour::OkBeforeBody
            | Behaviour::CloseBeforeBody
            | Behaviour::IgnoreBody(_)
            | Behaviour::EndlessInterim => unreachable!("handled before the body"),
            Behaviour::HopByHopHeaders => write_ok(
                &mut w,
                name,
                &body,
                "Connection: keep-alive, x-resp-secret\r\nKeep-Alive: timeout=5\r\nX-Resp-Secret: 1\r\nProxy-Connection: keep-alive\r\n",
            )?,
        }
        if wants_close {
            let _ = w.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

fn write_ok(w: &mut TcpStream, name: &str, body: &str, extra_headers: &str) -> io::Result<()> {
    let resp = format!(
        "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    w.write_all(resp.as_bytes())
}

/// Streams the request body back piece by piece as it is read. Each piece
/// is recorded before it is written back, so once a client has the whole
/// echo the record is complete too.
fn echo(
    r: &mut Reader<TcpStream>,
    w: &mut TcpStream,
    framing: Framing,
    name: &str,
    shared: &Shared,
    idx: usize,
) -> io::Result<()> {
    let note = |p: &[u8], complete: bool| {
        shared.update(idx, |rec| {
            rec.body_len += p.len() as u64;
            if rec.body.len() < BODY_KEEP_MAX {
                let n = p.len().min(BODY_KEEP_MAX - rec.body.len());
                rec.body.extend_from_slice(&p[..n]);
            }
            rec.body_complete = complete;
        })
    };
    match framing {
        Framing::None => {
            note(&[], true);
            write_ok_empty(w, name)
        }
        Framing::Length(n) => {
            if n == 0 {
                note(&[], true);
            }
            w.write_all(
                format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: {n}\r\n\r\n")
                    .as_bytes(),
            )?;
            let mut seen = 0u64;
            wire::read_length(r, n, |p| {
                seen += p.len() as u64;
                note(p, seen == n);
                w.write_all(p)
            })
        }
        Framing::Chunked => {
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nx-backend: {name}\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .as_bytes(),
            )?;
            let mut out = Vec::with_capacity(READ_SIZE + 32);
            wire::read_chunked(r, |p| {
                note(p, false);
                out.clear();
                out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                out.extend_from_slice(p);
                out.extend_from_slice(b"\r\n");
                w.write_all(&out)
            })?;
            note(&[], true);
            w.write_all(b"0\r\n\r\n")
        }
        Framing::UntilClose => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request body framed by a transfer coding other than chunked",
        )),
    }
}

fn write_ok_empty(w: &mut TcpStream, name: &str) -> io::Result<()> {
    w.write_all(
        format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
}
