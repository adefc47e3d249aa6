//! HTTP/2 to backends (`[[upstreams]] protocol = "h2"`): per worker and
//! backend, a few multiplexed connections, each carrying many exchanges'
//! streams at once.
//!
//! The exchange does not change: an upstream stream is an [`UpstreamConn`]
//! whose writer is an [`H2Sender`] (the forwarded HTTP/1.1 request opens the
//! stream, its body becomes DATA) and whose reader is an [`H2Reply`] (the
//! response comes back as HTTP/1.1 bytes, chunked with its trailers when it
//! has no Content-Length, so gRPC's status reaches the client). Each
//! connection runs as its own task on the worker's runtime: `h2`'s client
//! over the same bounded pipes and pumps as client connections
//! ([`crate::http2`]), closed after the upstream's idle timeout without
//! streams.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::io::Write as _;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::RecvStream;
use http::uri::Scheme;
use ringgate_config::Http2;

use crate::http2::{
    wait, write_pump, H2Io, H2Sender, PendingReply, Pipes, RequestOpener, READ_BYTES,
};
use crate::io::{Abort, ReadFail, WriteFail};
use crate::stream::{StreamReader, StreamWriter};

type Link = Connection<H2Io<Rc<Pipes>>, Bytes>;

/// One multiplexed connection to a backend, as the pool sees it.
pub struct H2Link {
    send: SendRequest<Bytes>,
    pub state: Rc<LinkState>,
}

/// What the connection's task and its streams share.
#[derive(Default)]
pub struct LinkState {
    /// Streams of exchanges on the connection now.
    pub streams: Cell<u32>,
    /// The connection ended (or is ending): no new stream goes on it.
    pub dead: Cell<bool>,
    /// It carried a stream before: a failure on it may be a close the
    /// backend made meanwhile (the exchange then retries on a new one).
    pub used: Cell<bool>,
    /// The backend's first bytes (its SETTINGS) arrived, and then `h2`
    /// read them: its stream limit is known.
    heard: Cell<bool>,
    settled: Cell<bool>,
    /// The opener, waiting for `settled` (or `dead`).
    opener: RefCell<Option<Waker>>,
}

impl LinkState {
    fn wake_opener(&self) {
        if let Some(w) = self.opener.borrow_mut().take() {
            w.wake();
        }
    }
}

impl H2Link {
    /// How many streams this connection takes before another is opened:
    /// the backend's limit, capped by ours.
    pub fn capacity(&self, cap: u32) -> u32 {
        let peer = self.send.current_max_send_streams();
        (peer.min(cap as usize)) as u32
    }

    /// A stream's two halves on this connection.
    pub fn stream(&self, scheme: &Scheme, authority: &str) -> (StreamReader, StreamWriter) {
        let reply = Rc::new(PendingReply::default());
        let streams = &self.state.streams;
        streams.set(streams.get() + 1);
        self.state.used.set(true);
        let w = H2Sender::request(RequestOpener {
            send: self.send.clone(),
            scheme: scheme.clone(),
            authority: authority.into(),
            reply: reply.clone(),
        });
        let r = H2Reply {
            reply,
            response: None,
            body: None,
            framing: Framing::Head,
            link: self.state.clone(),
        };
        (StreamReader::H2Upstream(r), StreamWriter::H2(Box::new(w)))
    }
}

/// Opens `h2` on a connected (and, for HTTPS, handshaken) backend
/// connection, starts its task and waits, up to `settle_within`, for the
/// backend's SETTINGS: until then its stream limit is unknown, and a
/// backend that does not speak HTTP/2 is found here, before any request
/// is sent. `on_end` runs when the connection ends.
pub async fn open(
    r: StreamReader,
    w: StreamWriter,
    cfg: &Http2,
    timeouts: LinkTimeouts,
    on_end: impl FnOnce() + 'static,
) -> Result<H2Link, OpenError> {
    let LinkTimeouts {
        settle: settle_within,
        idle: idle_timeout,
        send: send_timeout,
    } = timeouts;
    let pipes = Rc::new(Pipes::upstream(cfg));
    let (send, conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(cfg.initial_window_bytes)
        .initial_connection_window_size(cfg.connection_window_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .max_header_list_size(cfg.max_header_list_bytes)
        .header_table_size(cfg.header_table_bytes)
        .max_send_buffer_size(cfg.max_send_buffer_bytes)
        .handshake::<_, Bytes>(H2Io(pipes.clone()))
        .await
        .map_err(|_| OpenError::Refused)?;
    let state = Rc::new(LinkState::default());
    let task_state = state.clone();
    monoio::spawn(async move {
        run(r, w, pipes, conn, &task_state, idle_timeout, send_timeout).await;
        task_state.dead.set(true);
        task_state.wake_opener();
        on_end();
    });
    let mut timer = pin!(monoio::time::sleep(settle_within));
    poll_fn(|cx| {
        if state.settled.get() || state.dead.get() || timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *state.opener.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    match (state.settled.get(), state.dead.get()) {
        (true, false) => Ok(H2Link { send, state }),
        (_, true) => Err(OpenError::Refused),
        (false, false) => {
            // Dropping the handle ends the connection's task.
            state.dead.set(true);
            Err(OpenError::TimedOut)
        }
    }
}

/// The deadlines of one upstream HTTP/2 connection.
pub struct LinkTimeouts {
    /// For the backend's SETTINGS after the connection is up.
    pub settle: Duration,
    /// Without streams, before the connection closes.
    pub idle: Duration,
    /// For each write to the backend.
    pub send: Duration,
}

#[derive(Debug)]
pub enum OpenError {
    /// The backend closed the connection or did not speak HTTP/2.
    Refused,
    TimedOut,
}

/// Drives one connection until `h2` is done with it (the backend closed
/// it, sent GOAWAY, broke the protocol) or it idles out without streams.
async fn run(
    mut r: StreamReader,
    mut w: StreamWriter,
    pipes: Rc<Pipes>,
    conn: Link,
    state: &LinkState,
    idle_timeout: Duration,
    send_timeout: Duration,
) {
    let read_abort = Abort::default();
    let write_abort = Abort::default();
    let mut conn = pin!(conn);
    let mut reader = pin!(read_pump(&mut r, &pipes, state, idle_timeout, &read_abort));
    let mut writer = pin!(write_pump(&mut w, &pipes, send_timeout, &write_abort));
    let (mut driven, mut read_done, mut write_done) = (false, false, false);
    poll_fn(|cx| loop {
        let heard = state.heard.get();
        if !driven && conn.as_mut().poll(cx).is_ready() {
            driven = true;
            state.dead.set(true);
            pipes.close_outbound();
            pipes.closing.set(true);
            read_abort.abort();
        }
        if heard && !state.settled.get() && !driven {
            // `h2` has read the backend's first bytes, SETTINGS first.
            state.settled.set(true);
            state.wake_opener();
        }
        if !read_done && reader.as_mut().poll(cx).is_ready() {
            read_done = true;
            state.dead.set(true);
        }
        if !write_done && writer.as_mut().poll(cx).is_ready() {
            write_done = true;
        }
        if driven && read_done && write_done {
            return Poll::Ready(());
        }
        if !pipes.take_woken() {
            return Poll::Pending;
        }
    })
    .await;
}

/// Moves the backend's bytes into the inbound pipe. A connection without
/// streams that stays silent for the idle timeout ends (`h2` sees the end
/// of input and finishes).
async fn read_pump(
    r: &mut StreamReader,
    pipes: &Pipes,
    state: &LinkState,
    idle_timeout: Duration,
    abort: &Abort,
) {
    let mut buf = Vec::with_capacity(READ_BYTES);
    loop {
        poll_fn(|cx| pipes.poll_inbound_room(cx)).await;
        if pipes.closing.get() {
            pipes.end_inbound();
            return;
        }
        buf.clear();
        match r.read_more(&mut buf, READ_BYTES, idle_timeout, abort).await {
            Ok(0) | Err(ReadFail::Io(_)) | Err(ReadFail::Aborted) => {
                pipes.end_inbound();
                return;
            }
            Ok(_) => {
                state.heard.set(true);
                pipes.push_inbound(&buf);
            }
            Err(ReadFail::TimedOut) if state.streams.get() == 0 => {
                state.dead.set(true);
                pipes.end_inbound();
                return;
            }
            Err(ReadFail::TimedOut) => {}
        }
    }
}

/// An upstream stream's response as the exchange reads it: HTTP/1.1 bytes,
/// the head first, then the body as it arrives (window released only for
/// what was taken), chunked with trailers when no Content-Length frames it.
pub struct H2Reply {
    reply: Rc<PendingReply>,
    response: Option<ResponseFuture>,
    body: Option<RecvStream>,
    framing: Framing,
    link: Rc<LinkState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Head,
    Length,
    Chunked,
    Done,
}

impl Drop for H2Reply {
    fn drop(&mut self) {
        let streams = &self.link.streams;
        streams.set(streams.get().saturating_sub(1));
    }
}

/// One field line; `h2` already refused names and values that cannot be
/// written in HTTP/1.1 (RFC 9113 §8.2.1).
fn write_field(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

impl H2Reply {
    /// Whether the backend said it did not process the request (RFC 9113
    /// §8.7), for an exchange that failed before the response head: a
    /// refusal the exchange did not wait for (its body upload failed on
    /// it first) is still in the response future, which is asked once.
    pub fn unprocessed(&mut self) -> bool {
        if !self.reply.unprocessed.get() {
            let taken = self.reply.response.borrow_mut().take();
            if let Some(mut response) = self.response.take().or(taken) {
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(Err(e)) = Pin::new(&mut response).poll(&mut cx) {
                    self.reply.note(&e);
                }
            }
        }
        self.reply.unprocessed.get()
    }

    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        let before = buf.len();
        loop {
            match self.framing {
                Framing::Done => return Ok(0),
                Framing::Head => {
                    self.read_head(buf, timeout, abort).await?;
                    return Ok(buf.len() - before);
                }
                Framing::Length | Framing::Chunked => {
                    let chunked = self.framing == Framing::Chunked;
                    let Some(body) = self.body.as_mut() else {
                        return Err(ReadFail::Io(io::ErrorKind::InvalidData));
                    };
                    let next = wait(timeout, abort, |cx| body.poll_data(cx))
                        .await
                        .map_err(read_fail)?;
                    match next {
                        None => {
                            self.framing = Framing::Done;
                            if !chunked {
                                // `h2` checked the length: nothing is missing.
                                return Ok(0);
                            }
                            let trailers = wait(timeout, abort, |cx| body.poll_trailers(cx))
                                .await
                                .map_err(read_fail)?
                                .map_err(|_| ReadFail::Io(io::ErrorKind::ConnectionReset))?;
                            buf.extend_from_slice(b"0\r\n");
                            for (name, value) in trailers.iter().flat_map(|t| t.iter()) {
                                write_field(buf, name.as_str().as_bytes(), value.as_bytes());
                            }
                            buf.extend_from_slice(b"\r\n");
                            return Ok(buf.len() - before);
                        }
                        Some(Err(_)) => return Err(ReadFail::Io(io::ErrorKind::ConnectionReset)),
                        Some(Ok(data)) if data.is_empty() => continue,
                        Some(Ok(data)) => {
                            if chunked {
                                let _ = write!(buf, "{:x}\r\n", data.len());
                                buf.extend_from_slice(&data);
                                buf.extend_from_slice(b"\r\n");
                            } else {
                                buf.extend_from_slice(&data);
                            }
                            // In the exchange's bounded buffer now: the
                            // backend may send as much again.
                            let _ = body.flow_control().release_capacity(data.len());
                            return Ok(buf.len() - before);
                        }
                    }
                }
            }
        }
    }

    /// Waits for the response's HEADERS and writes them as an HTTP/1.1 head.
    async fn read_head(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<(), ReadFail> {
        if self.response.is_none() {
            self.response = self.reply.response.borrow_mut().take();
        }
        let Some(response) = self.response.as_mut() else {
            // The request never opened its stream.
            return Err(ReadFail::Io(io::ErrorKind::BrokenPipe));
        };
        let response = wait(timeout, abort, |cx| Pin::new(&mut *response).poll(cx))
            .await
            .map_err(read_fail)?
            .map_err(|e| {
                self.reply.note(&e);
                ReadFail::Io(io::ErrorKind::ConnectionReset)
            })?;
        self.response = None;
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let _ = write!(
            buf,
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut has_length = false;
        for (name, value) in parts.headers.iter() {
            has_length |= name == http::header::CONTENT_LENGTH;
            write_field(buf, name.as_str().as_bytes(), value.as_bytes());
        }
        let bodiless = self.reply.request_was_head.get()
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED
            || status.is_informational();
        self.framing = if bodiless {
            Framing::Done
        } else if body.is_end_stream() {
            if !has_length {
                buf.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Done
        } else if has_length {
            Framing::Length
        } else {
            buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        };
        buf.extend_from_slice(b"\r\n");
        self.body = Some(body);
        Ok(())
    }
}

fn read_fail(e: WriteFail) -> ReadFail {
    match e {
        WriteFail::TimedOut => ReadFail::TimedOut,
        WriteFail::Aborted => ReadFail::Aborted,
        WriteFail::Io(kind) => ReadFail::Io(kind),
    }
}

/// An active health probe over HTTP/2: `GET path` on a new connection,
/// passing when the status is `expect` before `timeout`.
pub async fn probe(
    r: StreamReader,
    w: StreamWriter,
    cfg: &Http2,
    authority: &str,
    path: &str,
    expect: u16,
    timeout: Duration,
) -> bool {
    let scheme = if w.scheme() == "https" {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let started = std::time::Instant::now();
    let timeouts = LinkTimeouts {
        settle: timeout,
        idle: timeout,
        send: timeout,
    };
    let Ok(link) = open(r, w, cfg, timeouts, || {}).await else {
        return false;
    };
    let timeout = timeout.saturating_sub(started.elapsed());
    let (mut r, mut w) = link.stream(&scheme, authority);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ringgate-health-check\r\n\r\n"
    )
    .into_bytes();
    let (abort_r, abort_w) = (Abort::default(), Abort::default());
    let len = request.len();
    let (sent, _) = w.send_range(request, 0..len, timeout, &abort_w).await;
    if sent.is_err() {
        return false;
    }
    let mut head = Vec::new();
    if r.read_more(&mut head, 0, timeout, &abort_r).await.is_err() {
        return false;
    }
    let expected = format!("HTTP/1.1 {expect} ");
    head.starts_with(expected.as_bytes())
}
