//! One connection of a `tcp` listener, as a readable sequence: pick a
//! backend of the listener's upstream (its balancer; the client address is
//! the hash key), connect (another backend after a connect failure, as the
//! upstream's `retries` allow), then relay bytes both ways until both have
//! ended, and write one access-log line. Each direction is a copy loop
//! that moves one owned buffer through the ring (read into it, write the
//! same bytes out); an end of stream one way becomes a half-close
//! (`shutdown(SHUT_WR)`) the other way, and the other direction goes on.
//! No byte moves either way for `timeouts.tunnel_idle`, or a write makes no
//! progress for that long: both are cut. It owns nothing past the
//! connection; the worker's drain leaves it running until `drain_timeout`.

use std::cell::Cell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringgate_config::{HashKey, LogLevel};
use ringgate_core::backend_view::Outcome;
use ringgate_core::http::ForwardedClient;
use ringgate_core::proxy_protocol::ConnAddrs;

use crate::access_log::{Captured, Sent};
use crate::error_log::{Errno, Kind};
use crate::exchange::Switched;
use crate::idle::{IdleClock, IdleDeadlines};
use crate::io::{self, Abort, Behind, ReadFail, Reader, WriteFail, Writer};
use crate::metrics::TunnelKind;
use crate::state::{Pool, Pooled, Worker};
use crate::stream::{StreamReader, StreamWriter};
use crate::tls::{TlsReader, TlsWriter};
use crate::upstream::{ConnectError, UpstreamConn, UpstreamState};

/// Bytes one direction moves per read: the body buffer's size, so a bulk
/// transfer costs a read and a write per 64 KiB.
pub const RELAY_BYTES: usize = 64 * 1024;

/// How long a direction keeps its buffer while nothing arrives: as for
/// idle keep-alive connections, an idle tunnel then waits for readiness
/// and holds no relay buffer.
const IDLE_BUFFER_GRACE: Duration = Duration::from_millis(50);

/// Serves one client connection of a `tcp` listener relaying to `upstream`.
pub async fn serve(
    worker: Rc<Worker>,
    listener: usize,
    upstream: usize,
    stream: TcpStream,
    addrs: ConnAddrs,
) {
    let started = Instant::now();
    let up = &worker.upstreams[upstream];
    let client = ForwardedClient::new(addrs.src.ip());
    let sent = Sent::default();
    worker.counters.tunnel_opened(TunnelKind::Tcp);
    let bytes_in = Cell::new(0u64);
    // Boxed for its while: the connect's state (a TLS handshake's, a PROXY
    // header's write) would otherwise be kept for the relay's life.
    match Box::pin(connect(&worker, listener, up, &client, addrs)).await {
        Ok(mut conn) => {
            let backend = conn.backend;
            sent.status.set(200);
            sent.upstream.set(Some(up.backend_addr(backend)));
            let connected = started.elapsed();
            let (cr, cw) = stream.into_split();
            let mut client_side = (StreamReader::Plain(cr), StreamWriter::Plain(cw));
            relay(
                &worker,
                up.config.tunnel_idle_timeout,
                (&mut client_side.0, &mut client_side.1),
                (&mut conn.r, &mut conn.w),
                (&bytes_in, &sent),
            )
            .await;
            crate::stream::close_connection(client_side.0, client_side.1);
            conn.close_tunnel_end();
            up.on_end(
                backend,
                Outcome::Success {
                    latency_us: connected.as_micros() as u64,
                },
                Instant::now(),
            );
        }
        Err((status, backend)) => {
            sent.status.set(status);
            sent.upstream.set(backend.map(|b| up.backend_addr(b)));
        }
    }
    worker.counters.tunnel_closed(TunnelKind::Tcp);
    if let Some(log) = &worker.access_log {
        let name = &worker.config.listeners[listener].name;
        let took = started.elapsed();
        if let Some(e) = log.write_tunnel(&client, name, &sent, bytes_in.get(), took) {
            worker.access_log_failed(&e);
        }
    }
}

/// An HTTP connection a backend's `101` switched to another protocol
/// (WebSocket): its two connections, handed from the connection's task,
/// which then ends and frees its exchange state and buffers, to a task of
/// their own ([`run_upgraded`]) that holds little more than them.
pub struct Upgraded {
    pub client: (StreamReader, StreamWriter),
    pub switched: Box<Switched>,
    /// What the access-log line needs, when logging.
    pub log: Option<Box<TunnelLine>>,
}

/// The request an upgraded connection's access-log line describes.
pub struct TunnelLine {
    pub client: ForwardedClient,
    pub captured: Captured,
    /// Status 101, the backend, and the bytes sent to the client so far.
    pub sent: Sent,
    /// When the request's head was read: the line's duration runs from
    /// there to the tunnel's end.
    pub started: Instant,
    pub tls_version: &'static str,
}

/// Relays an upgraded connection until both ends close, it idles out
/// (`timeouts.tunnel_idle`) or the drain's `drain_timeout` ends the
/// worker; then records the backend's outcome and writes the access-log
/// line (`received` after the TLS field). `connection` (the worker's count
/// of it) is held until then, so a drain waits for the tunnel.
pub async fn run_upgraded<C>(worker: Rc<Worker>, mut t: Upgraded, connection: C) {
    let Switched {
        ref mut conn,
        upstream,
        kind,
        latency_us,
        early_up,
    } = *t.switched;
    let counters = &worker.counters;
    counters.tunnel_opened(kind);
    let received = Cell::new(early_up);
    counters.tunnel_bytes_in(kind, early_up as usize);
    if let Some(line) = &t.log {
        counters.tunnel_bytes_out(kind, line.sent.body_bytes.get() as usize);
    }
    let up = &worker.upstreams[upstream];
    let up_moved = |n: usize| {
        received.set(received.get() + n as u64);
        counters.tunnel_bytes_in(kind, n);
    };
    let down_moved = |n: usize| {
        if let Some(line) = &t.log {
            line.sent.add_body(n);
        }
        counters.tunnel_bytes_out(kind, n);
    };
    let (cr, cw) = &mut t.client;
    relay_streams(
        &worker,
        up.config.tunnel_idle_timeout,
        ((cr, cw), (&mut conn.r, &mut conn.w)),
        &up_moved,
        &down_moved,
    )
    .await;
    up.on_end(
        conn.backend,
        Outcome::Success { latency_us },
        Instant::now(),
    );
    counters.tunnel_closed(kind);
    if let (Some(log), Some(line)) = (&worker.access_log, &t.log) {
        let took = line.started.elapsed();
        let (client, captured) = (&line.client, Some(&line.captured));
        let written = log.write(
            client,
            captured,
            &line.sent,
            took,
            line.tls_version,
            Some(received.get()),
        );
        if let Some(e) = written {
            worker.access_log_failed(&e);
        }
    }
    let Upgraded {
        client: (cr, cw),
        switched,
        ..
    } = t;
    crate::stream::close_connection(cr, cw);
    switched.conn.close_tunnel_end();
    drop(connection);
}

/// Picks and connects a backend, retrying another after a connect failure
/// as `retries` allow. `Err`: the status the access log gives the
/// connection (502 connect failed, 503 none available or at its limit,
/// 504 connect timed out) and the backend last tried, already logged.
async fn connect(
    worker: &Worker,
    listener: usize,
    up: &UpstreamState,
    client: &ForwardedClient,
    addrs: ConnAddrs,
) -> Result<UpstreamConn, (u16, Option<usize>)> {
    let key = matches!(up.config.hash_key, Some(HashKey::ClientIp)).then(|| client.ip_bytes());
    let retries = up.config.retries.filter(|r| r.on.connect_failure);
    let mut retries_left = retries.map_or(0, |r| r.attempts);
    let mut avoid = None;
    up.count_request();
    loop {
        let now = Instant::now();
        let Some(backend) = up.pick(key, avoid, now) else {
            log_failure(
                worker,
                listener,
                up,
                client,
                None,
                "no healthy backend available",
            );
            return Err((503, None));
        };
        up.on_start(backend, now);
        // A new connection each time, never pooled: it carries one
        // client's bytes, and closes with them.
        let err = match up.checkout(backend, true, addrs).await {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        let (outcome, status, why) = match err {
            ConnectError::TimedOut => (Outcome::Timeout, 504, "connect timed out".to_owned()),
            ConnectError::Failed(errno) => (
                Outcome::ConnectFailure,
                502,
                format!("connect failed errno={}", Errno(errno)),
            ),
            ConnectError::Overflow => (
                Outcome::ConnectFailure,
                503,
                "upstream connection limit reached".to_owned(),
            ),
            ConnectError::Tls => (
                Outcome::ConnectFailure,
                502,
                "TLS handshake failed".to_owned(),
            ),
        };
        up.on_end(backend, outcome, Instant::now());
        if retries_left > 0 && up.take_retry() {
            retries_left -= 1;
            avoid = Some(backend);
            worker
                .error_log
                .event(LogLevel::Warn, Kind::AttemptFailed, |b| {
                    let _ = write!(b, "{why}; retrying on another backend ");
                    up.write_backend(b, backend);
                });
            continue;
        }
        log_failure(worker, listener, up, client, Some(backend), &why);
        return Err((status, Some(backend)));
    }
}

fn log_failure(
    worker: &Worker,
    listener: usize,
    up: &UpstreamState,
    client: &ForwardedClient,
    backend: Option<usize>,
    why: &str,
) {
    worker
        .error_log
        .event(LogLevel::Error, Kind::Proxy5xx, |b| {
            let _ = write!(
                b,
                "tcp listener={} client=",
                worker.config.listeners[listener].name
            );
            b.extend_from_slice(client.ip_bytes());
            b.push(b' ');
            match backend {
                Some(backend) => up.write_backend(b, backend),
                None => {
                    let _ = write!(b, "upstream={} backend=-", up.config.name);
                }
            }
            let _ = write!(b, " reason=\"{why}\"");
        });
}

/// One direction's halves and what it shares with the other.
struct Direction<'a, R, W> {
    from: &'a mut R,
    to: &'a mut W,
    read_abort: &'a Abort,
    write_abort: &'a Abort,
    /// Counts the bytes moved (metrics and the access log).
    moved: &'a dyn Fn(usize),
}

/// The read half of a tunnel's end: plain TCP or TLS. The copy loops are
/// generic over these rather than driving [`StreamReader`] and
/// [`StreamWriter`], whose futures make room for an HTTP/2 stream's too
/// (several KiB): a tunnel's task is as large as the largest state its
/// loops can be in, and an idle tunnel costs that much.
trait TunnelRead {
    /// Waits until a read would return at once, holding no buffer, until
    /// `deadline` on the tunnel's clock.
    async fn wait_readable(
        &mut self,
        clock: &Rc<IdleClock>,
        deadline: Instant,
        abort: &Abort,
    ) -> Result<(), ReadFail>;
    /// Appends what arrives next (see [`crate::io::read_more`]).
    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail>;
    /// What is already waiting behind a short read, appended to `buf`
    /// without waiting (see [`crate::io::read_waiting`]); a TLS end says
    /// nothing (its records need the state machine).
    fn read_waiting(&mut self, _buf: &mut Vec<u8>) -> Behind {
        Behind::Nothing
    }
}

/// The write half of a tunnel's end: plain TCP or TLS.
trait TunnelWrite {
    /// Writes all of `buf` (see [`crate::io::send_range`]).
    async fn send_all(
        &mut self,
        buf: Vec<u8>,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Vec<u8>);
    /// A half-close: FIN on plain TCP, close_notify on TLS.
    async fn shutdown_write(&mut self, timeout: Duration, abort: &Abort);
    /// Whether closing the connection says all a half-close would: a
    /// plain socket's close sends the FIN, a TLS end's close_notify must
    /// be written.
    fn closing_says_it(&self) -> bool;
    /// Gives back what a write keeps for the next one.
    fn release_idle(&mut self);
    /// Sends what of `buf` goes now, held for the FIN that follows (see
    /// [`crate::io::send_before_end`]); a TLS end sends nothing here.
    fn send_before_end(&mut self, _buf: &[u8]) -> usize {
        0
    }
}

impl TunnelRead for Reader {
    async fn wait_readable(
        &mut self,
        clock: &Rc<IdleClock>,
        deadline: Instant,
        abort: &Abort,
    ) -> Result<(), ReadFail> {
        io::wait_readable_by(self, Some((clock, deadline)), abort).await
    }

    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        io::read_more(self, buf, min_spare, timeout, abort).await
    }

    fn read_waiting(&mut self, buf: &mut Vec<u8>) -> Behind {
        io::read_waiting(self, buf)
    }
}

impl TunnelRead for TlsReader {
    async fn wait_readable(
        &mut self,
        clock: &Rc<IdleClock>,
        deadline: Instant,
        abort: &Abort,
    ) -> Result<(), ReadFail> {
        TlsReader::wait_readable_by(self, Some((clock, deadline)), abort).await
    }

    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        TlsReader::read_more(self, buf, min_spare, timeout, abort).await
    }
}

impl TunnelWrite for Writer {
    async fn send_all(
        &mut self,
        buf: Vec<u8>,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Vec<u8>) {
        let len = buf.len();
        io::send_range(self, buf, 0..len, timeout, abort).await
    }

    async fn shutdown_write(&mut self, _: Duration, _: &Abort) {
        let _ = monoio::io::AsyncWriteRent::shutdown(self).await;
    }

    fn closing_says_it(&self) -> bool {
        true
    }

    fn release_idle(&mut self) {}

    fn send_before_end(&mut self, buf: &[u8]) -> usize {
        io::send_before_end(self, buf)
    }
}

impl TunnelWrite for TlsWriter {
    async fn send_all(
        &mut self,
        buf: Vec<u8>,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Vec<u8>) {
        let len = buf.len();
        self.send_range(buf, 0..len, timeout, abort).await
    }

    async fn shutdown_write(&mut self, timeout: Duration, abort: &Abort) {
        self.close(timeout, abort).await;
    }

    fn closing_says_it(&self) -> bool {
        false
    }

    fn release_idle(&mut self) {
        TlsWriter::release_idle(self);
    }
}

/// How a direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// End of stream, passed on as a half-close.
    Eof,
    /// A read or write failed, or a peer stalled: the tunnel is cut.
    Cut,
}

/// Relays both ways until both directions end, or one is cut.
async fn relay(
    worker: &Worker,
    idle: Duration,
    client: (&mut StreamReader, &mut StreamWriter),
    backend: (&mut StreamReader, &mut StreamWriter),
    (bytes_in, sent): (&Cell<u64>, &Sent),
) {
    let up_moved = |n: usize| {
        bytes_in.set(bytes_in.get() + n as u64);
        worker.counters.tunnel_bytes_in(TunnelKind::Tcp, n);
    };
    let down_moved = |n: usize| {
        sent.add_body(n);
        worker.counters.tunnel_bytes_out(TunnelKind::Tcp, n);
    };
    let ends = (client, backend);
    relay_streams(worker, idle, ends, &up_moved, &down_moved).await;
}

/// A tunnel direction's buffer: `RELAY_BYTES`, lent by the worker's pool.
impl Pooled for Vec<u8> {
    fn fresh() -> Self {
        Vec::with_capacity(RELAY_BYTES)
    }

    /// One left empty by a read dropped in flight (the runtime ending)
    /// is not kept.
    fn recycle(&mut self) -> bool {
        self.clear();
        self.capacity() == RELAY_BYTES
    }
}

/// A direction's relay buffer while it holds one; back to the pool when
/// the direction goes idle or ends (dropped with it, too).
struct Held<'a> {
    pool: &'a Pool<Vec<u8>>,
    buf: Option<Vec<u8>>,
}

impl Held<'_> {
    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(buf);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Relays bytes between two connections' halves both ways until both
/// directions end (each end of stream passed on as a half-close) or one is
/// cut; `up_moved` and `down_moved` are told of every chunk that went
/// client → backend and backend → client. Also the tunnel an HTTP
/// `Upgrade` (WebSocket) turns into. Each direction borrows a relay buffer
/// from the worker's pool while bytes flow, and holds none while idle; the
/// idle waits of both are on the worker's idle deadlines. Plain to plain
/// runs in the caller's future; a TLS end's larger loops are boxed, once
/// per tunnel, so they do not size every tunnel's task. An HTTP/2 stream
/// never becomes a tunnel: with one, nothing is relayed.
async fn relay_streams(
    worker: &Worker,
    idle: Duration,
    (client, backend): (Ends<'_>, Ends<'_>),
    up_moved: &dyn Fn(usize),
    down_moved: &dyn Fn(usize),
) {
    use StreamReader as R;
    use StreamWriter as W;
    let moved = (up_moved, down_moved);
    let parts = (&worker.relay_buffers, &worker.idle_deadlines);
    match (client, backend) {
        ((R::Plain(cr), W::Plain(cw)), (R::Plain(br), W::Plain(bw))) => {
            relay_halves(parts, idle, (cr, cw), (br, bw), moved).await
        }
        ((R::Plain(cr), W::Plain(cw)), (R::Tls(br), W::Tls(bw))) => {
            Box::pin(relay_halves(parts, idle, (cr, cw), (br, bw), moved)).await
        }
        ((R::Tls(cr), W::Tls(cw)), (R::Plain(br), W::Plain(bw))) => {
            Box::pin(relay_halves(parts, idle, (cr, cw), (br, bw), moved)).await
        }
        ((R::Tls(cr), W::Tls(cw)), (R::Tls(br), W::Tls(bw))) => {
            Box::pin(relay_halves(parts, idle, (cr, cw), (br, bw), moved)).await
        }
        _ => {}
    }
}

/// One connection's two halves.
type Ends<'a> = (&'a mut StreamReader, &'a mut StreamWriter);

async fn relay_halves<CR, CW, BR, BW>(
    (pool, deadlines): (&Pool<Vec<u8>>, &Rc<IdleDeadlines>),
    idle: Duration,
    client: (&mut CR, &mut CW),
    backend: (&mut BR, &mut BW),
    (up_moved, down_moved): (&dyn Fn(usize), &dyn Fn(usize)),
) where
    CR: TunnelRead,
    CW: TunnelWrite,
    BR: TunnelRead,
    BW: TunnelWrite,
{
    let last_activity = Cell::new(Instant::now());
    let clock = IdleClock::new(deadlines);
    let aborts: [Abort; 4] = Default::default();
    let [client_read, backend_write, backend_read, client_write] = &aborts;
    let cut_all = || aborts.iter().for_each(Abort::abort);
    let upward = Direction {
        from: client.0,
        to: backend.1,
        read_abort: client_read,
        write_abort: backend_write,
        moved: up_moved,
    };
    let downward = Direction {
        from: backend.0,
        to: client.1,
        read_abort: backend_read,
        write_abort: client_write,
        moved: down_moved,
    };
    let shared = Shared {
        pool,
        idle,
        last_activity: &last_activity,
        clock: &clock,
        one_way_ended: Cell::new(false),
    };
    monoio::join!(
        copy(upward, &shared, &cut_all),
        copy(downward, &shared, &cut_all)
    );
    // Its entry, if queued, wakes no one when it comes due.
    IdleDeadlines::disarm(&*clock);
}

/// What a tunnel's two directions share.
struct Shared<'a> {
    pool: &'a Pool<Vec<u8>>,
    idle: Duration,
    /// When a byte last moved either way.
    last_activity: &'a Cell<Instant>,
    /// The deadline of both directions' idle waits.
    clock: &'a Rc<IdleClock>,
    /// A direction reached its end of stream: when the other does, both
    /// connections close at once.
    one_way_ended: Cell<bool>,
}

/// Copies `d.from` to `d.to` until end of stream (then half-closes `d.to`)
/// or a failure. A read waits for at most what is left of `idle` since the
/// last byte moved either way.
async fn copy<R: TunnelRead, W: TunnelWrite>(
    d: Direction<'_, R, W>,
    shared: &Shared<'_>,
    cut_all: &dyn Fn(),
) -> End {
    let end = copy_until_end(d, shared).await;
    // Either way's failure or stall ends the other too.
    if end == End::Cut {
        cut_all();
    }
    end
}

/// How a burst of traffic ended.
enum Burst {
    /// `IDLE_BUFFER_GRACE` passed without a byte: the direction is idle.
    Quiet,
    Ended(End),
}

/// The copy loop: bursts of traffic, and idle waits between them. An idle
/// direction waits for readiness holding no buffer, on the tunnel's one
/// timer; a burst runs in a future of its own, boxed while it lasts, so the
/// tunnel's task is sized for its idle waits (what 10 000 idle tunnels
/// hold), not for the reads and writes of a burst.
async fn copy_until_end<R: TunnelRead, W: TunnelWrite>(
    mut d: Direction<'_, R, W>,
    shared: &Shared<'_>,
) -> End {
    // A new tunnel's first bytes are usually on their way: it starts in a
    // burst.
    loop {
        match Box::pin(burst(&mut d, shared)).await {
            // The burst's reads and writes are done: an idle direction
            // holds no canceller (the next burst's first op makes them).
            Burst::Quiet => {
                d.read_abort.release();
                d.write_abort.release();
            }
            Burst::Ended(end) => return end,
        }
        loop {
            let Some(deadline) = idle_deadline(shared) else {
                return End::Cut;
            };
            match d
                .from
                .wait_readable(shared.clock, deadline, d.read_abort)
                .await
            {
                Ok(()) => break,
                // The idle deadline, which the top of the loop checks
                // against the other direction's traffic too.
                Err(ReadFail::TimedOut) => continue,
                Err(_) => return End::Cut,
            }
        }
    }
}

/// When the tunnel idles out, unless a byte moves either way first;
/// `None`: it has.
fn idle_deadline(shared: &Shared<'_>) -> Option<Instant> {
    let deadline = shared.last_activity.get() + shared.idle;
    (deadline > Instant::now()).then_some(deadline)
}

/// Moves bytes while they flow: reads straight into a buffer lent by the
/// pool (one read op per chunk, as a bulk transfer wants) until
/// `IDLE_BUFFER_GRACE` passes without any, then gives it back.
async fn burst<R: TunnelRead, W: TunnelWrite>(
    d: &mut Direction<'_, R, W>,
    shared: &Shared<'_>,
) -> Burst {
    let (pool, idle) = (shared.pool, shared.idle);
    let mut held = Held {
        pool,
        buf: Some(pool.take()),
    };
    let mut first_read = true;
    loop {
        let quiet = shared.last_activity.get().elapsed();
        let Some(left) = idle.checked_sub(quiet).filter(|d| !d.is_zero()) else {
            return Burst::Ended(End::Cut);
        };
        let buf = held.buf.get_or_insert_with(|| pool.take());
        buf.clear();
        let wait = left.min(IDLE_BUFFER_GRACE);
        let mut end_follows = false;
        match d.from.read_more(buf, RELAY_BYTES, wait, d.read_abort).await {
            Ok(0) => {
                held.release();
                return Burst::Ended(pass_end_on(d, shared).await);
            }
            Ok(n) => {
                shared.last_activity.set(Instant::now());
                (d.moved)(n);
                // A burst's first read came up short: the peer's FIN may
                // have come with these bytes (a response, then the server's
                // close). Knowing it now lets the FIN leave on the bytes'
                // segment. Only the first: a bulk transfer's many short
                // reads would each pay the look for nothing.
                if std::mem::take(&mut first_read) && buf.len() < buf.capacity() {
                    match d.from.read_waiting(buf) {
                        Behind::Nothing => {}
                        Behind::More(more) => (d.moved)(more),
                        Behind::End => {
                            // What the socket did not take goes below.
                            let sent = d.to.send_before_end(buf);
                            buf.drain(..sent);
                            end_follows = true;
                        }
                    }
                }
            }
            Err(ReadFail::TimedOut) if wait < left => {
                // The grace, not the idle deadline: this direction is
                // idle, and holds nothing while it waits.
                held.release();
                d.to.release_idle();
                return Burst::Quiet;
            }
            // The idle deadline, checked at the top against the other
            // direction's traffic too.
            Err(ReadFail::TimedOut) => continue,
            Err(_) => return Burst::Ended(End::Cut),
        }
        if !buf.is_empty() {
            let (res, back) =
                d.to.send_all(std::mem::take(buf), idle, d.write_abort)
                    .await;
            *buf = back;
            if res.is_err() {
                return Burst::Ended(End::Cut);
            }
        }
        shared.last_activity.set(Instant::now());
        if end_follows {
            held.release();
            return Burst::Ended(pass_end_on(d, shared).await);
        }
    }
}

/// `d.from` ended: half-closes `d.to`, unless the other way ended already
/// and closing says as much.
async fn pass_end_on<R: TunnelRead, W: TunnelWrite>(
    d: &mut Direction<'_, R, W>,
    shared: &Shared<'_>,
) -> End {
    // The other way ended already: both connections close next, and a
    // plain close sends the FIN this half-close would (one syscall fewer
    // per L4 connection).
    if !(shared.one_way_ended.get() && d.to.closing_says_it()) {
        d.to.shutdown_write(shared.idle, d.write_abort).await;
    }
    shared.one_way_ended.set(true);
    End::Eof
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A `tcp` listener's connection holds this future for its life: the
    /// upstream connect's state is boxed for its while, not kept in it
    /// (6.3 KiB with it, 2.6 KiB without).
    #[test]
    fn a_tcp_relays_future_holds_no_connect_state() {
        fn size<A, B, C, D, E, F: std::future::Future>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let relay = size(serve);
        assert!(relay <= 3 * 1024, "serve's future is {relay} bytes");
    }

    /// An idle tunnel costs its task: its future must not make room for
    /// an HTTP/2 stream's or a TLS end's loops (22 KiB in a debug build
    /// when it relayed through `StreamReader`/`StreamWriter`), nor for a
    /// burst's reads and writes and their timers (5.8 KiB when it held
    /// them; 2.1 KiB with bursts boxed and one timer per tunnel).
    #[test]
    fn an_upgraded_tunnels_task_is_sized_for_plain_ends_only() {
        let task = future_size(run_upgraded::<()>);
        assert!(task <= 3 * 1024, "run_upgraded's future is {task} bytes");
    }
}
