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

use crate::access_log::Sent;
use crate::error_log::{Errno, Kind};
use crate::io::{Abort, ReadFail};
use crate::state::Worker;
use crate::stream::{StreamReader, StreamWriter};
use crate::upstream::{ConnectError, UpstreamConn, UpstreamState};

/// Bytes one direction moves per read: the body buffer's size, so a bulk
/// transfer costs a read and a write per 64 KiB.
pub const RELAY_BYTES: usize = 64 * 1024;

/// How long a direction keeps its buffer while nothing arrives: as for
/// idle keep-alive connections, an idle tunnel then waits on a one-byte
/// read and holds no relay buffer.
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
    let _ = stream.set_nodelay(true);
    let up = &worker.upstreams[upstream];
    let client = ForwardedClient::new(addrs.src.ip());
    let sent = Sent::default();
    worker.counters.tunnel_opened();
    let bytes_in = Cell::new(0u64);
    match connect(&worker, listener, up, &client, addrs).await {
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
    worker.counters.tunnel_closed();
    if let Some(log) = &worker.access_log {
        let name = &worker.config.listeners[listener].name;
        let took = started.elapsed();
        if let Some(e) = log.write_tunnel(&client, name, &sent, bytes_in.get(), took) {
            worker.access_log_failed(&e);
        }
    }
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
struct Direction<'a> {
    from: &'a mut StreamReader,
    to: &'a mut StreamWriter,
    read_abort: &'a Abort,
    write_abort: &'a Abort,
    /// Counts the bytes moved (metrics and the access log).
    moved: &'a dyn Fn(usize),
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
        worker.counters.tunnel_bytes_in(n);
    };
    let down_moved = |n: usize| {
        sent.add_body(n);
        worker.counters.tunnel_bytes_out(n);
    };
    relay_streams(idle, client, backend, &up_moved, &down_moved).await;
}

/// Relays bytes between two connections' halves both ways until both
/// directions end (each end of stream passed on as a half-close) or one is
/// cut; `up_moved` and `down_moved` are told of every chunk that went
/// client → backend and backend → client. Also the tunnel an HTTP
/// `Upgrade` (WebSocket) turns into.
pub(crate) async fn relay_streams(
    idle: Duration,
    client: (&mut StreamReader, &mut StreamWriter),
    backend: (&mut StreamReader, &mut StreamWriter),
    up_moved: &dyn Fn(usize),
    down_moved: &dyn Fn(usize),
) {
    let last_activity = Cell::new(Instant::now());
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
    monoio::join!(
        copy(upward, idle, &last_activity, &cut_all),
        copy(downward, idle, &last_activity, &cut_all)
    );
}

/// Copies `d.from` to `d.to` until end of stream (then half-closes `d.to`)
/// or a failure. A read waits for at most what is left of `idle` since the
/// last byte moved either way.
async fn copy(
    d: Direction<'_>,
    idle: Duration,
    last_activity: &Cell<Instant>,
    cut_all: &dyn Fn(),
) -> End {
    let end = copy_until_end(d, idle, last_activity).await;
    // Either way's failure or stall ends the other too.
    if end == End::Cut {
        cut_all();
    }
    end
}

async fn copy_until_end(d: Direction<'_>, idle: Duration, last_activity: &Cell<Instant>) -> End {
    let mut buf: Vec<u8> = Vec::with_capacity(RELAY_BYTES);
    // The buffer was given back after `IDLE_BUFFER_GRACE` of quiet: a
    // one-byte read waits for the next bytes.
    let mut parked = false;
    loop {
        buf.clear();
        let quiet = last_activity.get().elapsed();
        let Some(left) = idle.checked_sub(quiet).filter(|d| !d.is_zero()) else {
            return End::Cut;
        };
        let (want, wait) = if parked {
            (1, left)
        } else {
            (RELAY_BYTES, left.min(IDLE_BUFFER_GRACE))
        };
        match d.from.read_more(&mut buf, want, wait, d.read_abort).await {
            Ok(0) => {
                d.to.shutdown_write(idle, d.write_abort).await;
                return End::Eof;
            }
            Ok(n) => {
                last_activity.set(Instant::now());
                (d.moved)(n);
            }
            Err(ReadFail::TimedOut) => {
                // Either the grace (park) or the idle deadline, which the
                // top of the loop checks against the other direction's
                // traffic too.
                if !parked && wait < left {
                    buf = Vec::new();
                    parked = true;
                }
                continue;
            }
            Err(_) => return End::Cut,
        }
        let len = buf.len();
        let (res, back) = d.to.send_range(buf, 0..len, idle, d.write_abort).await;
        buf = back;
        if res.is_err() {
            return End::Cut;
        }
        last_activity.set(Instant::now());
        if parked {
            // Woken by a byte: a full buffer for what follows.
            buf = Vec::with_capacity(RELAY_BYTES);
            parked = false;
        }
    }
}
