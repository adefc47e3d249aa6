//! HTTP/2 to clients: one connection (ALPN `h2` on TLS, or prior knowledge
//! on a cleartext listener that allows it) serves many streams, and each
//! stream drives the same exchange an HTTP/1.1 request does.
//!
//! hyperium's `h2` speaks the protocol. It runs on the worker's own runtime
//! over two bounded in-memory pipes ([`Pipes`]) that the connection's
//! [`StreamReader`]/[`StreamWriter`] fill and drain with the usual
//! owned-buffer I/O, deadlines and TLS, so HTTP/2 needs no second I/O
//! stack. The inbound pipe passes every frame header through a
//! [`FrameGuard`] that enforces the per-second and per-block limits `h2`
//! does not have (rapid reset, control-frame and CONTINUATION floods).
//!
//! A stream becomes an HTTP/1.1 request head in the connection's usual
//! buffers ([`synthesize_head`]), parsed by the same strict parser, and is
//! handled by [`Downstream::handle`]: routing, limits, retries, deadlines
//! and the access log do not know it came over HTTP/2. Its body arrives
//! through [`H2Body`], which releases flow-control window only as the
//! exchange consumes bytes, and its response leaves through [`H2Sender`],
//! which turns the relayed HTTP/1.1 response back into HEADERS, DATA and
//! trailers, waiting for window under the send timeout.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::io::Write as _;
use std::ops::{Deref, Range};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use monoio::buf::IoBuf;
use ringgate_config::{Http2, Limits, LogLevel};
use ringgate_core::http::{normalize_path, parse_request};
use ringgate_core::proxy_protocol::ConnAddrs;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::downstream::Downstream;
use crate::error_log::Kind;
use crate::exchange::Refusal;
use crate::io::{Abort, Gather, ReadFail, WriteFail};
use crate::state::{ConnControl, Worker};
use crate::stream::{StreamReader, StreamWriter};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Client bytes read ahead of `h2`: one TLS record's worth plus a frame.
const INBOUND_BYTES: usize = 64 * 1024;
pub(crate) const READ_BYTES: usize = 16 * 1024;

/// What the connection loop knows about one client connection.
pub struct Conn {
    pub listener: usize,
    /// The client's addresses (its own, or those its PROXY header carried).
    pub addrs: ConnAddrs,
    pub ctl: Rc<ConnControl>,
    pub write_abort: Abort,
    pub tls_version: &'static str,
    pub client_subject: Option<Box<str>>,
    /// Bytes read before the protocol was known (the preface, on a
    /// cleartext listener).
    pub early: Vec<u8>,
}

/// Serves one HTTP/2 connection until the client closes it, it stays idle
/// past the keep-alive timeout, it breaks a limit, or the worker drains.
pub async fn serve(worker: Rc<Worker>, mut r: StreamReader, mut w: StreamWriter, mut conn: Conn) {
    let cfg = &worker.config.http2;
    let limits = &worker.config.limits;
    // Taken, not borrowed: the preface's read buffer (16 KiB of capacity)
    // would otherwise stay with the connection for its whole life.
    let pipes = Pipes::new(cfg, &std::mem::take(&mut conn.early));
    worker.counters.http2_connection();
    let scheme = w.scheme();
    let stream_cx = StreamCx {
        worker: &worker,
        conn: &conn,
        scheme,
    };
    let streams: Streams<'_> = RefCell::new(FuturesUnordered::new());
    {
        let idle = limits.keepalive_timeout;
        let mut driver = pin!(drive(&pipes, &streams, &stream_cx));
        let mut reader = pin!(read_pump(&mut r, &pipes, &conn.ctl, idle));
        let mut writer = pin!(write_pump(
            &mut w,
            &pipes,
            limits.send_timeout,
            &conn.write_abort
        ));
        let (mut driven, mut read_done, mut write_done) = (false, false, false);
        let mut idle = false;
        conn.ctl.http2.set(true);
        poll_fn(|cx| loop {
            // Streams first: what they queue goes out with this round.
            while let Poll::Ready(Some(())) = streams.borrow_mut().poll_next_unpin(cx) {}
            // Without open streams the connection is idle to the worker: a
            // full worker may close it (its reader is aborted, and says
            // GOAWAY, see `read_pump`); a drain reaches it busy or idle.
            let now_idle = streams.borrow().is_empty();
            if now_idle != idle {
                idle = now_idle;
                conn.ctl.idle.set(idle);
                pipes.no_streams.set(idle);
                if idle {
                    conn.ctl.idle_ticket.set(worker.idle_ticket());
                    pipes.release_idle();
                }
            }
            if !driven && driver.as_mut().poll(cx).is_ready() {
                driven = true;
                pipes.close_outbound();
                // The reader stops waiting for frames and lingers.
                pipes.closing.set(true);
                conn.ctl.abort.abort();
            }
            if !read_done && reader.as_mut().poll(cx).is_ready() {
                read_done = true;
            }
            if !write_done && writer.as_mut().poll(cx).is_ready() {
                write_done = true;
            }
            // The driver ended: its streams fail fast (the connection is
            // gone), and the pipe's last bytes (a GOAWAY) go out.
            // The reader lingers while the last bytes (a GOAWAY) go out.
            if driven && write_done && read_done && streams.borrow().is_empty() {
                return Poll::Ready(());
            }
            if !pipes.take_woken() {
                return Poll::Pending;
            }
        })
        .await;
    }
    let timeout = limits.send_timeout.min(Duration::from_secs(1));
    w.close(timeout, &conn.write_abort).await;
}

/// What every stream of one connection shares.
struct StreamCx<'a> {
    worker: &'a Worker,
    conn: &'a Conn,
    scheme: &'static str,
}

/// The streams of one connection, polled by its loop.
type Streams<'a> = RefCell<FuturesUnordered<Pin<Box<dyn Future<Output = ()> + 'a>>>>;

/// A new stream from `h2`: its request and where its response goes.
type Accepted = (Request<RecvStream>, SendResponse<Bytes>);

/// Why the connection loop woke `h2`'s driver, besides `h2` itself.
enum Event {
    Accepted(Option<Result<Box<Accepted>, h2::Error>>),
    Abuse(&'static str),
    /// Drain, or idle past the keep-alive timeout: GOAWAY, then finish the
    /// open streams.
    WindDown,
}

/// `h2`'s side: the handshake, then streams accepted until the connection
/// ends. Each accepted stream joins `streams`.
async fn drive<'s, 'a: 's>(pipes: &'s Pipes, streams: &'s Streams<'a>, cx: &'a StreamCx<'a>) {
    let worker = cx.worker;
    let cfg = &worker.config.http2;
    // A client that breaks a limit in its first bytes still gets its
    // GOAWAY: the bytes before the offending frame (the preface at least,
    // which the guard does not count) complete the handshake.
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(cfg.max_header_list_bytes)
        .header_table_size(cfg.header_table_bytes)
        .initial_window_size(cfg.initial_window_bytes)
        .initial_connection_window_size(cfg.connection_window_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .max_send_buffer_size(cfg.max_send_buffer_bytes)
        // Streams the client resets before they are accepted: rapid reset
        // is also counted per second by the frame guard.
        .max_pending_accept_reset_streams(cfg.max_concurrent_streams as usize)
        .max_concurrent_reset_streams(cfg.max_concurrent_streams as usize)
        .handshake::<_, Bytes>(H2Io(pipes));
    let timeout = worker.config.limits.header_read_timeout;
    // Boxed for its while: the handshake's state (1.2 KiB with its timer)
    // would otherwise size the connection's future for its whole life.
    let mut conn = match Box::pin(monoio::time::timeout(timeout, handshake)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            log_connection_error(worker, cx.conn, &e);
            return;
        }
        Err(_) => return,
    };
    let mut winding_down = false;
    loop {
        let event = poll_fn(|task| {
            if let Some(why) = pipes.abuse.get() {
                return Poll::Ready(Event::Abuse(why));
            }
            if !winding_down
                && (pipes.drain.get() || (pipes.idle.get() && streams.borrow().is_empty()))
            {
                return Poll::Ready(Event::WindDown);
            }
            conn.poll_accept(task)
                .map(|a| Event::Accepted(a.map(|r| r.map(Box::new))))
        })
        .await;
        match event {
            Event::Accepted(Some(Ok(accepted))) => {
                let (request, respond) = *accepted;
                streams
                    .borrow_mut()
                    .push(Box::pin(serve_stream(cx, request, respond)));
                pipes.wake();
            }
            Event::Accepted(Some(Err(e))) => {
                log_connection_error(worker, cx.conn, &e);
                return;
            }
            Event::Accepted(None) => return,
            Event::WindDown => {
                winding_down = true;
                conn.graceful_shutdown();
            }
            Event::Abuse(why) => {
                worker.counters.http2_abuse(why);
                worker.error_log.event(LogLevel::Warn, Kind::Http2, |b| {
                    let _ = write!(
                        b,
                        "client={} listener={} closed: {why} (GOAWAY ENHANCE_YOUR_CALM)",
                        cx.conn.addrs.src.ip(),
                        worker.config.listeners[cx.conn.listener].name
                    );
                });
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                // Sends the GOAWAY and ends; the streams fail with it.
                let _ = poll_fn(|task| conn.poll_closed(task)).await;
                return;
            }
        }
    }
}

fn log_connection_error(worker: &Worker, conn: &Conn, e: &h2::Error) {
    if e.is_io() {
        return;
    }
    if e.is_go_away() && e.reason() == Some(Reason::NO_ERROR) {
        return;
    }
    worker.error_log.event(LogLevel::Info, Kind::Http2, |b| {
        let _ = write!(
            b,
            "client={} listener={} connection error: {e}",
            conn.addrs.src.ip(),
            worker.config.listeners[conn.listener].name
        );
    });
}

/// Moves client bytes into the inbound pipe while it has room. A read that
/// times out marks the connection idle (the driver closes it if no stream
/// is open); one the drain aborts asks the driver for a GOAWAY.
async fn read_pump(r: &mut StreamReader, pipes: &Pipes, ctl: &ConnControl, idle_timeout: Duration) {
    let mut buf = Vec::new();
    // Whether the last read brought bytes: a connection between streams
    // keeps its buffer for `IDLE_READ_GRACE` in case the next frames are
    // on their way (a busy client), then waits on a one-byte read with no
    // buffer, as an idle HTTP/1.1 connection does.
    let mut busy = true;
    loop {
        poll_fn(|cx| pipes.poll_inbound_room(cx)).await;
        let idle = pipes.no_streams.get();
        let (read_size, timeout) = match (idle, busy) {
            (false, _) => (READ_BYTES, idle_timeout),
            (true, true) => (READ_BYTES, IDLE_READ_GRACE.min(idle_timeout)),
            (true, false) => {
                buf = Vec::new();
                (1, idle_timeout)
            }
        };
        if pipes.abuse.get().is_some() || pipes.closing.get() {
            ctl.abort.reset();
            linger(r, &mut buf, &ctl.abort).await;
            pipes.end_inbound();
            return;
        }
        buf.clear();
        match r.read_more(&mut buf, read_size, timeout, &ctl.abort).await {
            Ok(0) | Err(ReadFail::Io(_)) => {
                pipes.end_inbound();
                return;
            }
            Ok(_) => {
                busy = true;
                pipes.idle.set(false);
                pipes.push_inbound(&buf);
            }
            Err(ReadFail::TimedOut) if idle && busy => busy = false,
            Err(ReadFail::TimedOut) => {
                pipes.idle.set(true);
                pipes.wake();
            }
            Err(ReadFail::Aborted) => {
                // The connection ends (`closing`), or the worker drains or
                // needs the slot: GOAWAY, and the open streams finish.
                ctl.abort.reset();
                if !pipes.closing.get() {
                    pipes.drain.set(true);
                    pipes.wake();
                }
            }
        }
    }
}

/// How long a connection without open streams keeps its read buffer (as
/// `downstream`'s buffer grace for HTTP/1.1).
const IDLE_READ_GRACE: Duration = Duration::from_millis(50);

/// How long a client's further bytes are read and dropped once the
/// connection ends (GOAWAY sent), so that closing with them unread (a TCP
/// reset) does not destroy the GOAWAY before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

async fn linger(r: &mut StreamReader, buf: &mut Vec<u8>, abort: &Abort) {
    let until = Instant::now() + LINGER;
    loop {
        buf.clear();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !matches!(r.read_more(buf, READ_BYTES, left, abort).await, Ok(1..)) {
            return;
        }
    }
}

/// Sends what `h2` queued in the outbound pipe; a client that takes none of
/// it within the send timeout breaks the pipe, and with it the connection.
pub(crate) async fn write_pump(
    w: &mut StreamWriter,
    pipes: &Pipes,
    timeout: Duration,
    abort: &Abort,
) {
    let mut out = Vec::new();
    loop {
        if !poll_fn(|cx| pipes.poll_outbound(cx, &mut out)).await {
            return;
        }
        let len = out.len();
        let (res, back) = w.send_range(out, 0..len, timeout, abort).await;
        out = back;
        out.clear();
        if res.is_err() {
            pipes.break_outbound();
            return;
        }
    }
}

/// The two byte queues between the connection's socket and `h2`, and what
/// the pumps tell the driver. One task polls everything, so a wake-up is a
/// flag the connection loop checks (`woken`) plus the task's waker.
pub(crate) struct Pipes {
    inbound: RefCell<Inbound>,
    outbound: RefCell<Outbound>,
    /// The one waker of the connection's task.
    waker: RefCell<Option<Waker>>,
    woken: Cell<bool>,
    abuse: Cell<Option<&'static str>>,
    drain: Cell<bool>,
    idle: Cell<bool>,
    /// `h2` is done with the connection: the reader lingers, then ends.
    pub(crate) closing: Cell<bool>,
    /// No stream is open: the pumps and pipes give their buffers back.
    no_streams: Cell<bool>,
    max_outbound: usize,
}

struct Inbound {
    bytes: Vec<u8>,
    read: usize,
    ended: bool,
    /// `None` on upstream connections: a backend's frame rate is its
    /// streams' traffic, not an attack to count.
    guard: Option<FrameGuard>,
}

struct Outbound {
    bytes: Vec<u8>,
    closed: bool,
    broken: bool,
}

impl Pipes {
    fn new(cfg: &Http2, early: &[u8]) -> Pipes {
        Self::with_guard(cfg, early, Some(FrameGuard::new(cfg)))
    }

    /// The pipes of an upstream HTTP/2 connection.
    pub(crate) fn upstream(cfg: &Http2) -> Pipes {
        Self::with_guard(cfg, &[], None)
    }

    fn with_guard(cfg: &Http2, early: &[u8], guard: Option<FrameGuard>) -> Pipes {
        let pipes = Pipes {
            inbound: RefCell::new(Inbound {
                bytes: Vec::new(),
                read: 0,
                ended: false,
                guard,
            }),
            outbound: RefCell::new(Outbound {
                bytes: Vec::new(),
                closed: false,
                broken: false,
            }),
            waker: RefCell::new(None),
            woken: Cell::new(false),
            abuse: Cell::new(None),
            drain: Cell::new(false),
            idle: Cell::new(false),
            closing: Cell::new(false),
            no_streams: Cell::new(false),
            max_outbound: cfg.max_send_buffer_bytes,
        };
        if !early.is_empty() {
            pipes.push_inbound(early);
        }
        pipes
    }

    pub(crate) fn park(&self, cx: &Context<'_>) {
        let mut slot = self.waker.borrow_mut();
        match &*slot {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
    }

    fn wake(&self) {
        self.woken.set(true);
        if let Some(w) = &*self.waker.borrow() {
            w.wake_by_ref();
        }
    }

    pub(crate) fn take_woken(&self) -> bool {
        self.woken.replace(false)
    }

    pub(crate) fn poll_inbound_room(&self, cx: &Context<'_>) -> Poll<()> {
        let inbound = self.inbound.borrow();
        if inbound.bytes.len() - inbound.read < INBOUND_BYTES
            || self.abuse.get().is_some()
            || self.closing.get()
        {
            Poll::Ready(())
        } else {
            self.park(cx);
            Poll::Pending
        }
    }

    pub(crate) fn push_inbound(&self, bytes: &[u8]) {
        let mut inbound = self.inbound.borrow_mut();
        let checked = match &mut inbound.guard {
            Some(guard) => guard.inspect(bytes, Instant::now()),
            None => Ok(()),
        };
        let within_limits = match checked {
            Ok(()) => bytes,
            Err((why, before)) => {
                self.abuse.set(Some(why));
                &bytes[..before]
            }
        };
        if inbound.read == inbound.bytes.len() {
            inbound.bytes.clear();
            inbound.read = 0;
        }
        inbound.bytes.extend_from_slice(within_limits);
        drop(inbound);
        self.wake();
    }

    pub(crate) fn end_inbound(&self) {
        self.inbound.borrow_mut().ended = true;
        self.wake();
    }

    /// Swaps the queued output into `out`; `false` once the pipe is closed
    /// and empty.
    pub(crate) fn poll_outbound(&self, cx: &Context<'_>, out: &mut Vec<u8>) -> Poll<bool> {
        let mut outbound = self.outbound.borrow_mut();
        if !outbound.bytes.is_empty() {
            std::mem::swap(&mut outbound.bytes, out);
            drop(outbound);
            // Room again for `h2`'s writes.
            self.wake();
            return Poll::Ready(true);
        }
        if outbound.closed || outbound.broken {
            return Poll::Ready(false);
        }
        if self.no_streams.get() && out.capacity() > 0 {
            // An idle connection keeps no write buffer.
            *out = Vec::new();
        }
        self.park(cx);
        Poll::Pending
    }

    /// Frees the pipes' buffers when they are empty (the connection has
    /// no open stream): an idle HTTP/2 connection holds no byte queue.
    fn release_idle(&self) {
        let mut inbound = self.inbound.borrow_mut();
        if inbound.read == inbound.bytes.len() {
            inbound.bytes = Vec::new();
            inbound.read = 0;
        }
        drop(inbound);
        let mut outbound = self.outbound.borrow_mut();
        if outbound.bytes.is_empty() {
            outbound.bytes = Vec::new();
        }
    }

    pub(crate) fn close_outbound(&self) {
        self.outbound.borrow_mut().closed = true;
        self.wake();
    }

    pub(crate) fn break_outbound(&self) {
        let mut outbound = self.outbound.borrow_mut();
        outbound.broken = true;
        outbound.bytes.clear();
        drop(outbound);
        // The client no longer reads: stop reading it too.
        self.end_inbound();
    }
}

/// `h2`'s I/O: reads from the inbound pipe, writes to the outbound one.
pub(crate) struct H2Io<P>(pub P);

impl<P: Deref<Target = Pipes> + Unpin> AsyncRead for H2Io<P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let pipes = &*self.0;
        let mut inbound = pipes.inbound.borrow_mut();
        let available = inbound.bytes.len() - inbound.read;
        if available > 0 {
            let n = available.min(buf.remaining());
            let start = inbound.read;
            buf.put_slice(&inbound.bytes[start..start + n]);
            inbound.read += n;
            let was_full = available >= INBOUND_BYTES;
            drop(inbound);
            if was_full {
                pipes.wake();
            }
            return Poll::Ready(Ok(()));
        }
        if inbound.ended {
            return Poll::Ready(Ok(()));
        }
        // An abusive client's further bytes are never handed to `h2`; it is
        // not told of an end of stream either, which would stop it from
        // sending its GOAWAY.
        drop(inbound);
        pipes.park(cx);
        Poll::Pending
    }
}

impl<P: Deref<Target = Pipes> + Unpin> AsyncWrite for H2Io<P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let pipes = &*self.0;
        let mut outbound = pipes.outbound.borrow_mut();
        if outbound.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = pipes.max_outbound.saturating_sub(outbound.bytes.len());
        if room == 0 {
            drop(outbound);
            pipes.park(cx);
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        outbound.bytes.extend_from_slice(&buf[..n]);
        drop(outbound);
        pipes.wake();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The write pump sends whatever is queued; waiting here for it would
        // only stall `h2`'s reads behind a slow client.
        if self.0.outbound.borrow().broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.close_outbound();
        Poll::Ready(Ok(()))
    }
}

/// Frame types the guard tells apart (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Follows the client's frame headers as the bytes pass, and refuses a
/// connection that sends more frames, resets or control frames per second
/// than configured, or more CONTINUATION frames in one header block. `h2`
/// bounds what it buffers, but not the CPU a client can make it spend.
struct FrameGuard {
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    continuations: u32,
    second_started: Instant,
    frames: u32,
    resets: u32,
    control: u32,
    max_frames: u32,
    max_resets: u32,
    max_control: u32,
    max_continuations: u32,
}

impl FrameGuard {
    fn new(cfg: &Http2) -> FrameGuard {
        FrameGuard {
            preface_left: PREFACE.len(),
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            continuations: 0,
            second_started: Instant::now(),
            frames: 0,
            resets: 0,
            control: 0,
            max_frames: cfg.max_frames_per_second,
            max_resets: cfg.max_resets_per_second,
            max_control: cfg.max_control_frames_per_second,
            max_continuations: cfg.max_continuation_frames,
        }
    }

    /// Follows `bytes`; on a broken limit, the reason and how many of
    /// `bytes` come before the frame that broke it (those may still be
    /// handed to `h2`, so that it can finish its handshake and say GOAWAY).
    fn inspect(&mut self, bytes: &[u8], now: Instant) -> Result<(), (&'static str, usize)> {
        if now.duration_since(self.second_started) >= Duration::from_secs(1) {
            self.second_started = now;
            self.frames = 0;
            self.resets = 0;
            self.control = 0;
        }
        let mut at = self.preface_left.min(bytes.len());
        self.preface_left -= at;
        while at < bytes.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() - at);
                self.payload_left -= n;
                at += n;
                continue;
            }
            let header_start = at.saturating_sub(self.header_len);
            let n = (9 - self.header_len).min(bytes.len() - at);
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[at..at + n]);
            self.header_len += n;
            at += n;
            if self.header_len < 9 {
                break;
            }
            self.header_len = 0;
            let h = self.header;
            self.payload_left = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            self.frame(h[3], h[4]).map_err(|why| (why, header_start))?;
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8) -> Result<(), &'static str> {
        self.frames += 1;
        if self.frames > self.max_frames {
            return Err("too many frames per second");
        }
        match kind {
            RST_STREAM => {
                self.resets += 1;
                if self.resets > self.max_resets {
                    return Err("too many stream resets per second (rapid reset)");
                }
            }
            SETTINGS | PING | PRIORITY => {
                self.control += 1;
                if self.control > self.max_control {
                    return Err("too many control frames per second");
                }
            }
            HEADERS | PUSH_PROMISE => self.continuations = 0,
            CONTINUATION => {
                self.continuations += 1;
                if self.continuations > self.max_continuations {
                    return Err("too many CONTINUATION frames in one header block");
                }
            }
            _ => {}
        }
        if kind == CONTINUATION && flags & END_HEADERS != 0 {
            self.continuations = 0;
        }
        Ok(())
    }
}

/// One stream, handled as one HTTP/1.1 request on its own `Downstream`.
async fn serve_stream(
    cx: &StreamCx<'_>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let worker = cx.worker;
    let mut respond = respond;
    // A stream the client reset as it opened it (rapid reset sends HEADERS
    // and RST_STREAM together) costs no routing and no upstream request.
    if poll_fn(|task| Poll::Ready(respond.poll_reset(task).is_ready())).await {
        return;
    }
    let (parts, body) = request.into_parts();
    let mut bufs = worker.buffers.take();
    let synthesized = synthesize_head(&parts, body.is_end_stream(), &mut bufs.req.source);
    let is_head = parts.method == Method::HEAD;
    drop(parts);
    let chunked = matches!(synthesized, Ok(BodyFraming::Chunked));
    let r = StreamReader::H2(H2Body::new(body, chunked));
    let w = StreamWriter::H2(Box::new(H2Sender::response(respond, is_head, cx.scheme)));
    let conn = cx.conn;
    let mut d = Downstream::for_stream(
        r,
        w,
        conn.addrs,
        bufs,
        conn.tls_version,
        conn.client_subject.clone(),
    );
    let parsed = synthesized.and_then(|_| {
        let bufs = d.bufs.as_deref_mut().expect("buffers were given");
        match parse_request(&bufs.req.source, worker.head_limits, &mut bufs.req_scratch) {
            Ok(Some(mut head)) => {
                normalize_path(&mut bufs.req.source, &mut head);
                Ok(head)
            }
            Ok(None) => Err(Refusal::new(400, "incomplete request head")),
            Err(e) => Err(Refusal::new(e.status(), e.reason())),
        }
    });
    match parsed {
        Ok(head) => {
            d.handle(worker, conn.listener, &head).await;
        }
        Err(refusal) => d.refuse(worker, &refusal).await,
    }
    if let StreamWriter::H2(w) = &mut d.w {
        w.finish();
    }
    d.release_buffers(worker);
    if let StreamReader::H2(body) = &mut d.r {
        body.discard_rest(&worker.config.limits, &worker.draining)
            .await;
    }
}

/// How the synthesized request says its body is framed.
#[derive(Debug, PartialEq, Eq)]
enum BodyFraming {
    /// None, or `content-length` as the client sent it.
    AsSent,
    /// No `content-length` and DATA to come: chunked for HTTP/1.1.
    Chunked,
}

/// Writes the HTTP/1.1 head of an HTTP/2 request (RFC 9113 §8.3): Host from
/// `:authority` (a different `host` is refused), cookies rejoined with
/// "; " (§8.2.3), `te` dropped (hop-by-hop in HTTP/1.1), and the body's
/// framing made explicit. `h2` has already refused connection-specific
/// fields and a `te` other than `trailers`; field values with CR, LF or NUL
/// are refused here, since they would split a line of the HTTP/1.1 head,
/// and so are the other malformed requests `h2` lets through (RFC 9113
/// §8.1.1: an intermediary must not forward them): a value with whitespace
/// at either end (§8.2.1) and a second `host` (which HTTP/1.1 refuses).
fn synthesize_head(
    parts: &http::request::Parts,
    end_of_stream: bool,
    out: &mut Vec<u8>,
) -> Result<BodyFraming, Refusal> {
    out.clear();
    if parts.method == Method::CONNECT {
        return Err(Refusal::new(405, "CONNECT is not supported"));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or(Refusal::new(400, "missing :path"))?;
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next().map(|v| v.as_bytes());
    if hosts.next().is_some() {
        return Err(Refusal::new(400, "more than one host field"));
    }
    let host = match (parts.uri.authority(), host_header) {
        (Some(a), Some(h)) if a.as_str().as_bytes() != h => {
            return Err(Refusal::new(400, ":authority and host differ"))
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h,
        (None, None) => return Err(Refusal::new(400, "missing :authority")),
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut cookies = 0;
    let mut has_length = false;
    for (name, value) in &parts.headers {
        let value = value.as_bytes();
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Refusal::new(400, "invalid character in a field value"));
        }
        let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        if blank(value.first()) || blank(value.last()) {
            return Err(Refusal::new(400, "whitespace around a field value"));
        }
        if name == http::header::HOST || name == http::header::TE || name == http::header::COOKIE {
            cookies += usize::from(name == http::header::COOKIE);
            continue;
        }
        has_length |= name == http::header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, value) in parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .enumerate()
        {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let framing = if has_length {
        BodyFraming::AsSent
    } else if !end_of_stream {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        BodyFraming::Chunked
    } else {
        // RFC 9110 §8.6: a request with a body method says how long it is,
        // even when that is nothing.
        if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        BodyFraming::AsSent
    };
    out.extend_from_slice(b"\r\n");
    Ok(framing)
}

/// A stream's request body as the exchange reads it: DATA frames appended
/// as they come (in chunked framing when the synthesized head says so),
/// window released only for what was taken.
pub struct H2Body {
    body: RecvStream,
    chunked: bool,
    /// The chunked terminator went out; the next read is end of stream.
    done: bool,
}

impl H2Body {
    fn new(body: RecvStream, chunked: bool) -> H2Body {
        H2Body {
            body,
            chunked,
            done: false,
        }
    }

    /// What the client still sends of a body after its stream was
    /// answered (a refused upload), read and dropped, so the stream ends
    /// with the client's END_STREAM rather than a reset: RFC 9113 §8.1
    /// allows RST_STREAM(NO_ERROR) there, but some clients (curl 7.88)
    /// then report an error instead of the response. The bounds of
    /// HTTP/1.1's lingering close apply; a drain stops it.
    pub async fn discard_rest(&mut self, limits: &Limits, draining: &Cell<bool>) {
        if self.done || self.body.is_end_stream() || limits.lingering_time.is_zero() {
            return;
        }
        let deadline = Instant::now() + limits.lingering_time;
        let abort = Abort::default();
        while !draining.get() {
            let wait_for = deadline
                .saturating_duration_since(Instant::now())
                .min(limits.lingering_timeout);
            if wait_for.is_zero() {
                return;
            }
            match wait(wait_for, &abort, |cx| self.body.poll_data(cx)).await {
                Ok(Some(Ok(data))) => {
                    let _ = self.body.flow_control().release_capacity(data.len());
                }
                _ => return,
            }
        }
    }

    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        loop {
            if self.done {
                return Ok(0);
            }
            let next = wait(timeout, abort, |cx| self.body.poll_data(cx)).await;
            let data = match next {
                Err(WriteFail::TimedOut) => return Err(ReadFail::TimedOut),
                Err(_) => return Err(ReadFail::Aborted),
                Ok(None) => {
                    self.done = true;
                    if self.chunked {
                        // Request trailers are not forwarded: HTTP/1.1
                        // backends rarely expect them.
                        buf.extend_from_slice(b"0\r\n\r\n");
                        return Ok(5);
                    }
                    return Ok(0);
                }
                Ok(Some(Err(_))) => return Err(ReadFail::Io(io::ErrorKind::ConnectionReset)),
                Ok(Some(Ok(data))) => data,
            };
            // An empty DATA frame carries nothing (and must not become a
            // chunk terminator).
            if data.is_empty() {
                continue;
            }
            let before = buf.len();
            if self.chunked {
                let _ = write!(buf, "{:x}\r\n", data.len());
                buf.extend_from_slice(&data);
                buf.extend_from_slice(b"\r\n");
            } else {
                buf.extend_from_slice(&data);
            }
            // The bytes are in the exchange's bounded buffer now: the client
            // may send as many more.
            let _ = self.body.flow_control().release_capacity(data.len());
            return Ok(buf.len() - before);
        }
    }
}

/// Polls `f` until it is ready, `timeout` passes, or `abort` is pulled.
pub(crate) async fn wait<T>(
    timeout: Duration,
    abort: &Abort,
    mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Result<T, WriteFail> {
    // The timer is made only when the first poll must wait: most waits
    // (window already open, DATA already buffered) end at once.
    let mut sleep = pin!(None::<monoio::time::Sleep>);
    poll_fn(|cx| {
        if abort.is_aborted() {
            return Poll::Ready(Err(WriteFail::Aborted));
        }
        if let Poll::Ready(v) = f(cx) {
            return Poll::Ready(Ok(v));
        }
        if sleep.is_none() {
            sleep.set(Some(monoio::time::sleep(timeout)));
        }
        if let Some(sleep) = sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(Err(WriteFail::TimedOut));
            }
        }
        abort.wake_on_abort(cx.waker());
        Poll::Pending
    })
    .await
}

/// One HTTP/1.1 message leaving as an HTTP/2 stream, fed the bytes the
/// exchange writes: a client stream's response (the head becomes HEADERS,
/// 1xx ones informational) or an upstream stream's request (the head opens
/// the stream); the body becomes DATA frames sent as the peer's window
/// allows, chunked trailers HEADERS again.
pub struct H2Sender {
    opener: Opener,
    send: Option<SendStream<Bytes>>,
    state: Out,
    head: Vec<u8>,
    trailers: Vec<u8>,
    request_was_head: bool,
    scheme: &'static str,
    scratch: Vec<u8>,
}

/// What the head of the message does.
enum Opener {
    /// Answers a client's stream.
    Respond(SendResponse<Bytes>),
    /// Opens a stream to a backend; its response goes to the reader.
    Request(RequestOpener),
    /// The head went out.
    Sent,
}

/// What an upstream stream's request needs to open the stream.
pub(crate) struct RequestOpener {
    pub send: h2::client::SendRequest<Bytes>,
    pub scheme: http::uri::Scheme,
    /// `:authority` when the forwarded head has no Host.
    pub authority: Box<str>,
    pub reply: Rc<PendingReply>,
}

/// Between an upstream stream's writer and reader: the response to come,
/// and whether the request was HEAD (its response has no body).
#[derive(Default)]
pub(crate) struct PendingReply {
    pub response: RefCell<Option<h2::client::ResponseFuture>>,
    pub request_was_head: Cell<bool>,
    /// The backend said it did not process the request: RST_STREAM
    /// REFUSED_STREAM, or a GOAWAY whose last stream id is below this
    /// stream's (RFC 9113 §8.7). Set by whichever half saw it first.
    pub unprocessed: Cell<bool>,
}

impl PendingReply {
    /// Records what `e` says of the request: `h2` fails a stream with the
    /// backend's own REFUSED_STREAM, or with its GOAWAY only when the
    /// GOAWAY left the stream out (streams it counted as processed end
    /// with the connection, as a broken pipe).
    pub fn note(&self, e: &h2::Error) {
        if e.is_remote() && (e.is_go_away() || e.reason() == Some(Reason::REFUSED_STREAM)) {
            self.unprocessed.set(true);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Head,
    Length(u64),
    Chunk(ChunkState),
    /// Delimited by the upstream's close: ends when the exchange does.
    UntilEnd,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
}

/// The largest response head the translation accepts; the relay has
/// already held it to the configured limits.
const MAX_RESPONSE_FIELDS: usize = 256;

impl H2Sender {
    /// The stream's response to `respond`.
    fn response(
        respond: SendResponse<Bytes>,
        request_was_head: bool,
        scheme: &'static str,
    ) -> Self {
        Self::new(Opener::Respond(respond), request_was_head, scheme)
    }

    /// A request opening a stream to a backend.
    pub(crate) fn request(opener: RequestOpener) -> Self {
        let scheme = if opener.scheme == http::uri::Scheme::HTTPS {
            "https"
        } else {
            "http"
        };
        Self::new(Opener::Request(opener), false, scheme)
    }

    fn new(opener: Opener, request_was_head: bool, scheme: &'static str) -> Self {
        H2Sender {
            opener,
            send: None,
            state: Out::Head,
            head: Vec::new(),
            trailers: Vec::new(),
            request_was_head,
            scheme,
            scratch: Vec::new(),
        }
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    pub async fn send_gather(
        &mut self,
        mut g: Gather,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Gather) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        g.take_into(&mut scratch, usize::MAX);
        // Boxed (here and in `send_range`): `feed`'s state would size every
        // `StreamWriter` write, and so every HTTP/1.1 exchange, at 10 KiB.
        // A stream already copies each chunk into a `Bytes` of its own.
        let res = Box::pin(self.feed(&scratch, timeout, abort)).await;
        self.scratch = scratch;
        (res, g)
    }

    pub async fn send_range<B: IoBuf>(
        &mut self,
        buf: B,
        range: Range<usize>,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, B) {
        // SAFETY: `read_ptr` points at `bytes_init` initialized bytes that
        // `buf` owns and keeps alive until it is handed back below.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = match bytes.get(range) {
            Some(part) => Box::pin(self.feed(part, timeout, abort)).await,
            None => Err(WriteFail::Io(io::ErrorKind::InvalidInput)),
        };
        (res, buf)
    }

    /// Ends the stream after its exchange: cleanly when the response is
    /// complete (or delimited by the exchange's end), with RST_STREAM when
    /// it was cut short.
    pub fn finish(&mut self) {
        match self.state {
            Out::Done => {}
            Out::UntilEnd => {
                if let Some(send) = &mut self.send {
                    let _ = send.send_data(Bytes::new(), true);
                }
            }
            _ => {
                if let Some(send) = &mut self.send {
                    send.send_reset(Reason::INTERNAL_ERROR);
                } else if let Opener::Respond(respond) = &mut self.opener {
                    respond.send_reset(Reason::INTERNAL_ERROR);
                }
            }
        }
        self.state = Out::Done;
    }

    async fn feed(
        &mut self,
        mut bytes: &[u8],
        timeout: Duration,
        abort: &Abort,
    ) -> Result<(), WriteFail> {
        while !bytes.is_empty() {
            match self.state {
                Out::Done => return Ok(()),
                Out::Head => {
                    let taken = self.take_head(bytes, timeout, abort).await?;
                    bytes = &bytes[taken..];
                }
                Out::Length(left) => {
                    let n = (left.min(bytes.len() as u64)) as usize;
                    let end = n as u64 == left;
                    self.send_data(&bytes[..n], end, timeout, abort).await?;
                    self.state = if end {
                        Out::Done
                    } else {
                        Out::Length(left - n as u64)
                    };
                    bytes = &bytes[n..];
                }
                Out::UntilEnd => {
                    self.send_data(bytes, false, timeout, abort).await?;
                    bytes = &[];
                }
                Out::Chunk(state) => {
                    let (taken, data) = self.step_chunked(state, bytes)?;
                    if let Some(data) = data {
                        self.send_data(&bytes[data], false, timeout, abort).await?;
                    }
                    bytes = &bytes[taken..];
                    if self.state == Out::Done {
                        self.end_with_trailers()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Collects the head; once whole, sends it. Returns the bytes taken.
    async fn take_head(
        &mut self,
        bytes: &[u8],
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, WriteFail> {
        let before = self.head.len();
        self.head.extend_from_slice(bytes);
        let Some(end) = memchr::memmem::find(&self.head, b"\r\n\r\n") else {
            return Ok(bytes.len());
        };
        let head_len = end + 4;
        let taken = head_len - before;
        if matches!(self.opener, Opener::Request(_)) {
            self.open_request(head_len, timeout, abort).await?;
        } else {
            self.send_response_head(head_len)?;
        }
        self.head.clear();
        Ok(taken)
    }

    /// The response head in `self.head[..head_len]` as HEADERS.
    fn send_response_head(&mut self, head_len: usize) -> Result<(), WriteFail> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let mut parsed = httparse::Response::new(&mut fields);
        if !matches!(
            parsed.parse(&self.head[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            return Err(WriteFail::Io(io::ErrorKind::InvalidData));
        }
        let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok());
        let status = status.ok_or(WriteFail::Io(io::ErrorKind::InvalidData))?;
        let H2Fields {
            headers,
            length,
            chunked,
        } = h2_fields(parsed.headers, false, |_| false)
            .map_err(|_| WriteFail::Io(io::ErrorKind::InvalidData))?;
        let Opener::Respond(respond) = &mut self.opener else {
            return Err(WriteFail::Io(io::ErrorKind::InvalidData));
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        if status.is_informational() {
            if status != StatusCode::SWITCHING_PROTOCOLS {
                respond
                    .send_informational(response)
                    .map_err(h2_write_fail)?;
            }
            return Ok(());
        }
        let bodiless = self.request_was_head
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        self.state = if bodiless {
            Out::Done
        } else if chunked {
            Out::Chunk(ChunkState::Size(0))
        } else {
            match length {
                Some(0) => Out::Done,
                Some(n) => Out::Length(n),
                None => Out::UntilEnd,
            }
        };
        let end = self.state == Out::Done;
        let send = respond
            .send_response(response, end)
            .map_err(h2_write_fail)?;
        self.opener = Opener::Sent;
        self.send = Some(send);
        Ok(())
    }

    /// The request head in `self.head[..head_len]` opens a stream (RFC 9113
    /// §8.3.1: pseudo-headers from the request line and Host, no
    /// connection-specific fields, `te: trailers` as gRPC servers require).
    async fn open_request(
        &mut self,
        head_len: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<(), WriteFail> {
        let bad = WriteFail::Io(io::ErrorKind::InvalidData);
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let mut parsed = httparse::Request::new(&mut fields);
        if !matches!(
            parsed.parse(&self.head[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            return Err(bad);
        }
        let Opener::Request(opener) = &mut self.opener else {
            return Err(bad);
        };
        let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes()).map_err(|_| bad)?;
        let mut authority: Option<&[u8]> = None;
        let H2Fields {
            mut headers,
            length,
            chunked,
        } = h2_fields(parsed.headers, true, |field| {
            let host = field.name.eq_ignore_ascii_case("host");
            if host {
                authority = Some(field.value);
            }
            host
        })
        .map_err(|_| bad)?;
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        let authority = match authority {
            Some(a) => http::uri::Authority::try_from(a).map_err(|_| bad)?,
            None => http::uri::Authority::try_from(&*opener.authority).map_err(|_| bad)?,
        };
        let uri = http::Uri::builder()
            .scheme(opener.scheme.clone())
            .authority(authority)
            .path_and_query(parsed.path.unwrap_or("/"))
            .build()
            .map_err(|_| bad)?;
        let is_head = method == Method::HEAD;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        self.state = if chunked {
            Out::Chunk(ChunkState::Size(0))
        } else {
            match length {
                None | Some(0) => Out::Done,
                Some(n) => Out::Length(n),
            }
        };
        // A connection at its peer's stream limit queues the stream; a
        // handle whose last stream is still queued must wait here.
        let ready = wait(timeout, abort, |cx| opener.send.poll_ready(cx)).await?;
        // A GOAWAY already received fails the stream here, before it opens.
        let reply = Rc::clone(&opener.reply);
        let noted = |e: h2::Error| {
            reply.note(&e);
            h2_write_fail(e)
        };
        ready.map_err(noted)?;
        let end = self.state == Out::Done;
        let (response, send) = opener.send.send_request(request, end).map_err(noted)?;
        opener.reply.request_was_head.set(is_head);
        *opener.reply.response.borrow_mut() = Some(response);
        self.opener = Opener::Sent;
        self.send = Some(send);
        Ok(())
    }

    /// One step of the chunked decoder (the relay already checked the
    /// framing): the bytes consumed and, for chunk data, their range.
    fn step_chunked(
        &mut self,
        state: ChunkState,
        bytes: &[u8],
    ) -> Result<(usize, Option<Range<usize>>), WriteFail> {
        let bad = WriteFail::Io(io::ErrorKind::InvalidData);
        let b = bytes[0];
        let next = match state {
            ChunkState::Data(left) => {
                let n = left.min(bytes.len() as u64) as usize;
                self.state = Out::Chunk(if n as u64 == left {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(left - n as u64)
                });
                return Ok((n, Some(0..n)));
            }
            ChunkState::Trailers => {
                self.trailers.push(b);
                if self.trailers.ends_with(b"\r\n\r\n") || self.trailers == b"\r\n" {
                    Out::Done
                } else {
                    Out::Chunk(ChunkState::Trailers)
                }
            }
            ChunkState::Size(v) => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Out::Chunk(ChunkState::Size(v.checked_mul(16).ok_or(bad)? + digit))
                }
                b';' | b' ' | b'\t' => Out::Chunk(ChunkState::Extension(v)),
                b'\r' => Out::Chunk(ChunkState::SizeLf(v)),
                _ => return Err(bad),
            },
            ChunkState::Extension(v) => match b {
                b'\r' => Out::Chunk(ChunkState::SizeLf(v)),
                _ => Out::Chunk(ChunkState::Extension(v)),
            },
            ChunkState::SizeLf(v) => match (b, v) {
                (b'\n', 0) => Out::Chunk(ChunkState::Trailers),
                (b'\n', v) => Out::Chunk(ChunkState::Data(v)),
                _ => return Err(bad),
            },
            ChunkState::DataCr => match b {
                b'\r' => Out::Chunk(ChunkState::DataLf),
                _ => return Err(bad),
            },
            ChunkState::DataLf => match b {
                b'\n' => Out::Chunk(ChunkState::Size(0)),
                _ => return Err(bad),
            },
        };
        self.state = next;
        Ok((1, None))
    }

    /// The last chunk was read: trailers (gRPC's status travels there) or
    /// an empty end of stream.
    fn end_with_trailers(&mut self) -> Result<(), WriteFail> {
        let send = self
            .send
            .as_mut()
            .ok_or(WriteFail::Io(io::ErrorKind::InvalidData))?;
        let mut map = HeaderMap::new();
        if self.trailers.len() > 2 {
            let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
            if let Ok(httparse::Status::Complete((_, fields))) =
                httparse::parse_headers(&self.trailers, &mut fields)
            {
                for f in fields {
                    if is_hop_by_hop(f.name.as_bytes()) {
                        continue;
                    }
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) {
                        map.append(n, v);
                    }
                }
            }
        }
        self.trailers.clear();
        if map.is_empty() {
            send.send_data(Bytes::new(), true).map_err(h2_write_fail)
        } else {
            send.send_trailers(map).map_err(h2_write_fail)
        }
    }

    /// Sends `data` as the client's window allows, waiting for window no
    /// longer than `timeout` at a time (a client that never opens its
    /// window is cut, not buffered for).
    async fn send_data(
        &mut self,
        mut data: &[u8],
        end: bool,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<(), WriteFail> {
        let send = self
            .send
            .as_mut()
            .ok_or(WriteFail::Io(io::ErrorKind::InvalidData))?;
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = wait(timeout, abort, |cx| send.poll_capacity(cx)).await?;
            let n = match granted {
                Some(Ok(n)) => n.min(data.len()),
                Some(Err(e)) => return Err(h2_write_fail(e)),
                None => return Err(WriteFail::Io(io::ErrorKind::ConnectionReset)),
            };
            if n == 0 {
                continue;
            }
            let last = n == data.len();
            send.send_data(Bytes::copy_from_slice(&data[..n]), end && last)
                .map_err(h2_write_fail)?;
            data = &data[n..];
        }
        Ok(())
    }
}

/// An HTTP/1.1 head's fields as HTTP/2 ones, and the framing they said.
struct H2Fields {
    headers: HeaderMap,
    length: Option<u64>,
    chunked: bool,
}

/// Converts `fields`, dropping what HTTP/2 forbids (RFC 9113 §8.2.2):
/// hop-by-hop fields and those `Connection` names. `take` takes a field
/// out first (it returns true: Host, which becomes `:authority`). A field
/// `http` cannot carry is dropped, or with `strict` refuses the head.
fn h2_fields<'h>(
    fields: &[httparse::Header<'h>],
    strict: bool,
    mut take: impl FnMut(&httparse::Header<'h>) -> bool,
) -> Result<H2Fields, ()> {
    let connection_names: Vec<&[u8]> = fields
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .collect();
    let mut out = H2Fields {
        headers: HeaderMap::with_capacity(fields.len() + 1),
        length: None,
        chunked: false,
    };
    for field in fields {
        if take(field) {
            continue;
        }
        let name = field.name.as_bytes();
        if is_hop_by_hop(name)
            || connection_names
                .iter()
                .any(|c| c.eq_ignore_ascii_case(name))
        {
            out.chunked |= name.eq_ignore_ascii_case(b"transfer-encoding");
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            out.length = std::str::from_utf8(field.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        match (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(field.value),
        ) {
            (Ok(name), Ok(value)) => {
                out.headers.append(name, value);
            }
            _ if strict => return Err(()),
            _ => {}
        }
    }
    Ok(out)
}

pub(crate) fn h2_write_fail(_: h2::Error) -> WriteFail {
    WriteFail::Io(io::ErrorKind::ConnectionReset)
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2) or that only framed HTTP/1.1.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle HTTP/2 connection holds its connection's future for its
    /// life: the handshake's state is boxed for its while, not kept in it
    /// (8.6 KiB with it, 6.6 KiB without).
    #[test]
    fn a_connections_future_holds_no_handshake() {
        fn size<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let serve = size(serve);
        assert!(serve <= 7 * 1024, "serve's future is {serve} bytes");
    }

    fn guard() -> FrameGuard {
        let cfg = Http2 {
            max_frames_per_second: 100,
            max_resets_per_second: 3,
            max_control_frames_per_second: 2,
            max_continuation_frames: 2,
            ..Http2::default()
        };
        let mut g = FrameGuard::new(&cfg);
        g.preface_left = 0;
        g
    }

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + payload, 0);
        f
    }

    #[test]
    fn resets_over_the_limit_are_refused_even_split_across_reads() {
        let mut g = guard();
        let now = Instant::now();
        let mut bytes = Vec::new();
        for _ in 0..4 {
            bytes.extend(frame(RST_STREAM, 0, 4));
        }
        // Byte by byte: frame boundaries do not follow reads.
        let res: Result<(), _> = bytes.chunks(1).try_for_each(|b| g.inspect(b, now));
        assert_eq!(
            res.map_err(|e| e.0),
            Err("too many stream resets per second (rapid reset)")
        );
    }

    #[test]
    fn the_count_starts_again_each_second() {
        let mut g = guard();
        let now = Instant::now();
        let three: Vec<u8> = (0..3).flat_map(|_| frame(RST_STREAM, 0, 4)).collect();
        assert!(g.inspect(&three, now).is_ok());
        assert!(g.inspect(&three, now + Duration::from_millis(1001)).is_ok());
        assert!(g
            .inspect(&frame(RST_STREAM, 0, 4), now + Duration::from_millis(1002))
            .is_err());
    }

    #[test]
    fn continuations_count_per_header_block() {
        let mut g = guard();
        let now = Instant::now();
        let mut block = frame(HEADERS, 0, 10);
        block.extend(frame(CONTINUATION, 0, 10));
        block.extend(frame(CONTINUATION, END_HEADERS, 10));
        assert!(g.inspect(&block, now).is_ok());
        assert!(
            g.inspect(&block, now).is_ok(),
            "a new block counts from zero"
        );
        let mut flood = frame(HEADERS, 0, 0);
        for _ in 0..3 {
            flood.extend(frame(CONTINUATION, 0, 0));
        }
        // HEADERS and two CONTINUATION frames (9 bytes each) may still go.
        assert_eq!(
            g.inspect(&flood, now),
            Err(("too many CONTINUATION frames in one header block", 27))
        );
    }

    #[test]
    fn payload_bytes_are_not_read_as_frame_headers() {
        let mut g = guard();
        // A DATA frame whose payload looks like RST_STREAM headers.
        let fake: Vec<u8> = (0..10).flat_map(|_| frame(RST_STREAM, 0, 4)).collect();
        let mut data = frame(0x0, 0, fake.len());
        data[9..].copy_from_slice(&fake);
        assert!(g.inspect(&data, Instant::now()).is_ok());
    }

    #[test]
    fn ping_and_settings_floods_are_refused() {
        let mut g = guard();
        let pings: Vec<u8> = (0..3).flat_map(|_| frame(PING, 0, 8)).collect();
        // The two frames within the limit may still go to `h2`.
        assert_eq!(
            g.inspect(&pings, Instant::now()),
            Err(("too many control frames per second", 34))
        );
    }

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn a_request_head_is_written_as_http11_with_cookies_rejoined() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://example.com/a?b=1")
            .header("cookie", "a=1")
            .header("x-one", "1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        let framing = synthesize_head(&parts(req), false, &mut out).unwrap();
        assert_eq!(framing, BodyFraming::Chunked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-one: 1\r\n\
             cookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn authority_and_a_different_host_are_refused() {
        let req = http::Request::builder()
            .uri("https://a.example/")
            .header("host", "b.example")
            .body(())
            .unwrap();
        let err = synthesize_head(&parts(req), true, &mut Vec::new()).unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn a_second_host_is_refused_even_when_the_first_matches() {
        // As HTTP/1.1 refuses two Host fields (RFC 9112 §3.2): the second
        // would otherwise be dropped unseen, and a backend or log that
        // reads the last one would see another host than the route did.
        for authority in ["https://a.example/", "/"] {
            let req = http::Request::builder()
                .uri(authority)
                .header("host", "a.example")
                .header("host", "b.example")
                .body(())
                .unwrap();
            let err = synthesize_head(&parts(req), true, &mut Vec::new()).unwrap_err();
            assert_eq!(err.status, 400, "{authority}");
        }
    }

    #[test]
    fn a_field_value_with_outer_whitespace_is_refused() {
        // RFC 9113 §8.2.1: such a request is malformed, and an intermediary
        // must not forward it.
        for value in [" v", "v ", "\tv", "v\t"] {
            let req = http::Request::builder()
                .uri("https://a.example/")
                .header("x-a", value)
                .body(())
                .unwrap();
            let err = synthesize_head(&parts(req), true, &mut Vec::new()).unwrap_err();
            assert_eq!(err.status, 400, "{value:?}");
        }
        let inner = http::Request::builder()
            .uri("https://a.example/")
            .header("x-a", "v\tw x")
            .body(())
            .unwrap();
        assert!(synthesize_head(&parts(inner), true, &mut Vec::new()).is_ok());
    }

    #[test]
    fn a_body_method_without_body_says_content_length_zero() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("http://h/x")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        synthesize_head(&parts(req), true, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("content-length: 0\r\n"));
    }
}
