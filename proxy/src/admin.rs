//! The admin endpoint: `GET /metrics` and `GET /healthz` on a thread of its
//! own, unpinned and off the workers. It runs a small monoio runtime with
//! one task per connection, so a client that connects and sends nothing
//! costs one task, not the endpoint: a load balancer's health probe is
//! answered however many slow clients are waiting. Every connection has a
//! deadline to send its request and one to take the answer, and at most
//! [`MAX_CONNECTIONS`] are open: a new one closes the oldest.
//!
//! It reads only what the workers send it (snapshots, summed by
//! [`Tally`]) and the stop flag; it must never touch a worker's
//! state or run on a worker's thread.
//!
//! The runtime uses the legacy (epoll) driver on purpose: readiness-based
//! I/O leaves no buffer in the kernel, so a read or write cut off at its
//! deadline is simply dropped (an io_uring operation would have to be
//! cancelled and awaited, as `io.rs` does on the request path), and the
//! endpoint also works where io_uring is blocked.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::{LegacyDriver, RuntimeBuilder};
use ringgate_config::LogLevel;

use crate::error_log::{ErrorLog, Kind};
use crate::metrics::{Snapshot, Tally};
use crate::stop::StopFlag;

/// Longest a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a client may take to read the answer (a `/metrics` page of a
/// large node is tens of KiB: one socket buffer or two).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections open at once. A scraper and a few probes need a handful;
/// past this the oldest (the slowest: every one has the same deadlines)
/// is closed, so the newest, a probe, is always served.
const MAX_CONNECTIONS: usize = 64;
/// How often the snapshots the workers sent are taken in: well under the
/// 100 ms they are sent at, so a scrape sees each within a poll.
const POLL: Duration = Duration::from_millis(20);
/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the admin address (so a bad address fails start-up) and starts
/// the admin thread.
pub fn spawn(
    address: SocketAddr,
    snapshots: Receiver<Snapshot>,
    stopping: StopFlag,
    log: ErrorLog,
) -> io::Result<()> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|e| io::Error::new(e.kind(), format!("admin.address {address}: {e}")))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            let built = RuntimeBuilder::<LegacyDriver>::new().enable_timer().build();
            let mut rt = match built {
                Ok(rt) => rt,
                Err(e) => {
                    log.event(LogLevel::Error, Kind::Lifecycle, |b| {
                        let _ = write!(b, "admin endpoint: cannot start a runtime: {e}");
                    });
                    std::process::exit(1);
                }
            };
            rt.block_on(run(listener, snapshots, stopping, Rc::new(log)));
        })?;
    Ok(())
}

/// The admin thread's state; only its own tasks touch it.
struct Admin {
    tally: RefCell<Tally>,
    stopping: StopFlag,
    /// Open connections, oldest first.
    open: RefCell<VecDeque<Rc<Kick>>>,
}

async fn run(
    listener: std::net::TcpListener,
    snapshots: Receiver<Snapshot>,
    stopping: StopFlag,
    log: Rc<ErrorLog>,
) {
    let admin = Rc::new(Admin {
        tally: RefCell::new(Tally::default()),
        stopping,
        open: RefCell::new(VecDeque::with_capacity(MAX_CONNECTIONS)),
    });
    match TcpListener::from_std(listener) {
        Ok(listener) => {
            monoio::spawn(accept_loop(admin.clone(), listener, log));
        }
        Err(e) => {
            log.event(LogLevel::Error, Kind::Lifecycle, |b| {
                let _ = write!(b, "admin endpoint: {e}");
            });
            std::process::exit(1);
        }
    }
    loop {
        monoio::time::sleep(POLL).await;
        loop {
            match snapshots.try_recv() {
                Ok(s) => admin.tally.borrow_mut().record(s, Instant::now()),
                Err(TryRecvError::Empty) => break,
                // Every worker is gone: the process is about to exit.
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}

async fn accept_loop(admin: Rc<Admin>, listener: TcpListener, log: Rc<ErrorLog>) {
    let mut logged = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                logged = false;
                let kick = Rc::new(Kick::default());
                {
                    let mut open = admin.open.borrow_mut();
                    if open.len() >= MAX_CONNECTIONS {
                        if let Some(oldest) = open.pop_front() {
                            oldest.kick();
                        }
                    }
                    open.push_back(kick.clone());
                }
                monoio::spawn(connection(admin.clone(), stream, kick));
            }
            Err(e) => {
                // Once per episode: an exhausted fd table fails every accept.
                if !std::mem::replace(&mut logged, true) {
                    log.event(LogLevel::Error, Kind::Accept, |b| {
                        let _ = write!(b, "admin endpoint: {e}");
                    });
                }
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection until it is answered, misses a deadline or is
/// closed to make room.
async fn connection(admin: Rc<Admin>, stream: TcpStream, kick: Rc<Kick>) {
    monoio::select! {
        _ = answer(&admin, stream) => {}
        _ = kick.kicked() => {}
    }
    admin.open.borrow_mut().retain(|k| !Rc::ptr_eq(k, &kick));
}

/// One request per connection: `GET /metrics`, `GET /healthz`, else 404.
async fn answer(admin: &Admin, mut stream: TcpStream) {
    let head = monoio::select! {
        head = read_head(&mut stream) => head,
        _ = monoio::time::sleep(READ_TIMEOUT) => return,
    };
    let response = match head {
        None => return,
        Some(Err(())) => respond(431, "text/plain", "request head too large\n"),
        Some(Ok(head)) => route(admin, &head),
    };
    monoio::select! {
        _ = stream.write_all(response) => {}
        _ = monoio::time::sleep(WRITE_TIMEOUT) => {}
    }
}

/// The request head, `Some(Err)` when it is too large, `None` when the
/// client closed or failed first.
async fn read_head(stream: &mut TcpStream) -> Option<Result<Vec<u8>, ()>> {
    let mut head = Vec::with_capacity(1024);
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(Ok(head));
        }
        if head.len() >= MAX_HEAD {
            return Some(Err(()));
        }
        if head.len() == head.capacity() {
            head.reserve(1024);
        }
        let (start, end) = (head.len(), head.capacity());
        let (res, slice) = stream.read(head.slice_mut(start..end)).await;
        head = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn route(admin: &Admin, head: &[u8]) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let page = admin.tally.borrow().render(Instant::now());
            respond(200, "text/plain; version=0.0.4", &page)
        }
        (b"GET", b"/healthz") if admin.stopping.requested() => {
            respond(503, "text/plain", "draining\n")
        }
        (b"GET", b"/healthz") => respond(200, "text/plain", "ok\n"),
        (b"GET", _) => respond(404, "text/plain", "not found\n"),
        _ => respond(405, "text/plain", "only GET\n"),
    }
}

fn respond(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Closes one connection from outside its task: set when a newer
/// connection needs its place.
#[derive(Default)]
struct Kick {
    kicked: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Kick {
    fn kick(&self) {
        self.kicked.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    async fn kicked(&self) {
        poll_fn(|cx| {
            if self.kicked.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
