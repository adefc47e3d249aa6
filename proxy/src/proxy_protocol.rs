//! A listener's PROXY protocol prelude: a peer outside
//! `proxy_protocol_from` is closed unread; a trusted one must start with a
//! v1 or v2 header within `header_read_timeout`, which is taken off the
//! socket exactly (peeked, then read to its last byte), so whatever follows
//! it (a TLS ClientHello, an HTTP request, tunnelled bytes) is still on the
//! socket for the connection's own reader. The header's client address is
//! then the connection's everywhere. Parsing is `ringgate_core::proxy_protocol`.
//! Also the other way: [`send`] puts the header before an upstream
//! connection's first byte.

use std::future::poll_fn;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use ringgate_config::{LogLevel, ProxyProtocolVersion};
use ringgate_core::proxy_protocol::{
    parse, write, write_local, ConnAddrs, Parsed, Version, MAX_HEADER_BYTES,
};

use crate::error_log::Kind;
use crate::io::{peek_now, send_range, take_now, Abort, WriteFail, Writer};
use crate::state::Worker;

/// Bytes looked at per peek: a v1 line or a v2 header with the usual TLVs
/// fits; a longer v2 header takes a few peeks.
const PEEK_BYTES: usize = 512;

/// Why a connection was closed before its first byte was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer is not in `proxy_protocol_from`.
    Untrusted,
    Malformed(&'static str),
    /// No whole header within `header_read_timeout`.
    TimedOut,
    /// The peer closed (or reset) before its header was whole.
    Closed,
}

impl Refused {
    /// The `reason` label of `ringgate_proxy_protocol_refused_total`.
    pub fn label_index(self) -> usize {
        match self {
            Refused::Untrusted => 0,
            Refused::Malformed(_) => 1,
            Refused::TimedOut => 2,
            Refused::Closed => 3,
        }
    }
}

/// The addresses the connection from `peer` is accounted to: its own, or
/// on a `proxy_protocol` listener those its header carried. `None`: it was
/// refused (counted, and logged at `info`), and is to be closed unanswered.
pub async fn accept(
    worker: &Worker,
    listener: usize,
    stream: &TcpStream,
    peer: SocketAddr,
) -> Option<ConnAddrs> {
    // A listener bound to a wildcard (or an ephemeral port) learns the
    // address the client dialled only from the socket; one bound to an
    // address and port knows it without a getsockname per connection.
    let bound = worker.config.listeners[listener].address;
    let dst = if bound.ip().is_unspecified() || bound.port() == 0 {
        stream.local_addr().unwrap_or(bound)
    } else {
        bound
    };
    let own = ConnAddrs { src: peer, dst };
    let Some(from) = &worker.config.listeners[listener].proxy_protocol_from else {
        return Some(own);
    };
    let res = if from.contains(peer.ip()) {
        read(stream, worker.config.limits.header_read_timeout).await
    } else {
        Err(Refused::Untrusted)
    };
    match res {
        Ok(carried) => Some(carried.unwrap_or(own)),
        Err(why) => {
            worker.counters.proxy_protocol_refused(why);
            worker
                .error_log
                .event(LogLevel::Info, Kind::ProxyProtocol, |b| {
                    let _ = write!(
                        b,
                        "listener={} peer={peer} refused: ",
                        worker.config.listeners[listener].name
                    );
                    let _ = match why {
                        Refused::Untrusted => write!(b, "not in proxy_protocol_from"),
                        Refused::Malformed(what) => write!(b, "{what}"),
                        Refused::TimedOut => {
                            write!(b, "no PROXY header within header_read_timeout")
                        }
                        Refused::Closed => write!(b, "closed before its PROXY header ended"),
                    };
                });
            None
        }
    }
}

/// Reads the header off `stream` within `timeout`. `Ok(None)`: a whole
/// header that carries no client (v2 `LOCAL`, v1 `UNKNOWN`).
pub async fn read(stream: &TcpStream, timeout: Duration) -> Result<Option<ConnAddrs>, Refused> {
    let fd = stream.as_raw_fd();
    let deadline = Instant::now() + timeout;
    // The header's bytes taken off the socket so far, then what a peek saw.
    let mut header: Vec<u8> = Vec::new();
    let mut peeked = Vec::with_capacity(PEEK_BYTES);
    loop {
        // `parse` refuses a header before it outgrows the bound.
        let room = MAX_HEADER_BYTES.saturating_sub(header.len());
        if room == 0 {
            return Err(Refused::Malformed("PROXY header longer than 4096 bytes"));
        }
        let n = match peek_now(fd, &mut peeked, room.min(PEEK_BYTES)) {
            Ok(0) => return Err(Refused::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                readable(stream, deadline).await?;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Refused::Closed),
        };
        let before = header.len();
        header.extend_from_slice(&peeked[..n]);
        match parse(&header).map_err(|m| Refused::Malformed(m.0))? {
            Parsed::Complete { len, addrs } => {
                take_now(fd, &mut peeked, len - before).map_err(|_| Refused::Closed)?;
                return Ok(addrs);
            }
            // Every byte seen belongs to the header: take them and look again.
            Parsed::Incomplete => take_now(fd, &mut peeked, n).map_err(|_| Refused::Closed)?,
        }
    }
}

/// Until `stream` has bytes (or an EOF) to read, or `deadline`. The poll
/// holds no buffer of ours, so on timeout it is dropped (monoio cancels it).
async fn readable(stream: &TcpStream, deadline: Instant) -> Result<(), Refused> {
    let mut ready = pin!(stream.readable(false));
    let mut sleep = pin!(monoio::time::sleep_until(deadline.into()));
    poll_fn(|cx| {
        if let Poll::Ready(res) = ready.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|_| Refused::Closed));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Refused::TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// Writes the PROXY header of `version` on a new upstream connection before
/// anything else (TLS included), naming `client`; `None` names no client
/// (the proxy's own connections: health probes).
pub async fn send(
    w: &mut Writer,
    version: ProxyProtocolVersion,
    client: Option<ConnAddrs>,
    timeout: Duration,
    abort: &Abort,
) -> Result<(), WriteFail> {
    let version = match version {
        ProxyProtocolVersion::V1 => Version::V1,
        ProxyProtocolVersion::V2 => Version::V2,
    };
    // At most 108 bytes (a v1 TCP6 line), once per upstream connection.
    let mut header = Vec::with_capacity(108);
    match client {
        Some(addrs) => write(&mut header, version, addrs),
        None => write_local(&mut header, version),
    }
    let len = header.len();
    send_range(w, header, 0..len, timeout, abort).await.0
}
