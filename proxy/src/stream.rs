//! A connection's two halves as the exchange drives them, on either side
//! (client or upstream): plain TCP, or TLS over it ([`crate::tls`]), or one
//! HTTP/2 stream, a client's ([`crate::http2`]) or one to a backend
//! ([`crate::h2_upstream`]), whose messages pass as HTTP/1.1 bytes. One
//! read and one write contract for both, so the connection loop, the
//! exchange and the pool never ask which it is; a plain connection pays one
//! predictable branch per operation.

use std::ops::Range;
use std::time::Duration;

use monoio::buf::IoBuf;
use ringgate_core::http::Version;

use crate::h2_upstream::H2Reply;
use crate::http2::{H2Body, H2Sender};
use crate::io::{
    discard_waiting, read_more, send_gather, send_range, Abort, Gather, ReadFail, Reader,
    WriteFail, Writer,
};
use crate::tls::{TlsReader, TlsWriter};

pub enum StreamReader {
    Plain(Reader),
    Tls(TlsReader),
    H2(H2Body),
    /// An upstream HTTP/2 stream's response.
    H2Upstream(H2Reply),
}

pub enum StreamWriter {
    Plain(Writer),
    Tls(TlsWriter),
    /// Boxed: the largest variant by far, it would size every HTTP/1.1
    /// connection's state, idle ones included.
    H2(Box<H2Sender>),
}

/// Closes a connection with nothing more to say or hear (a tunnel whose
/// every direction ended, a client connection read to its end): a plain
/// connection's halves are put back together first, so that dropping it
/// closes the socket without the `shutdown(SHUT_WR)` that dropping
/// monoio's write half makes, a wasted syscall per connection (close sends
/// the FIN all the same).
pub fn close_connection(r: StreamReader, w: StreamWriter) {
    if let (StreamReader::Plain(r), StreamWriter::Plain(w)) = (r, w) {
        drop(r.reunite(w));
    }
}

impl StreamReader {
    /// An upstream HTTP/2 stream the backend refused or left out of its
    /// GOAWAY: it did not act on the request (see [`H2Reply::unprocessed`]).
    pub fn backend_left_unprocessed(&mut self) -> bool {
        match self {
            StreamReader::H2Upstream(r) => r.unprocessed(),
            _ => false,
        }
    }

    /// Whether the peer sent anything not yet read: for TLS, what rustls
    /// holds (the socket itself is checked by `io::pending_input`).
    pub fn holds_unread(&mut self) -> bool {
        match self {
            StreamReader::Plain(_) | StreamReader::H2(_) | StreamReader::H2Upstream(_) => false,
            StreamReader::Tls(r) => r.holds_unread(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, StreamReader::Tls(_))
    }

    /// Waits up to `timeout` for what the peer sends next and drops it,
    /// below TLS and without a buffer (a lingering close: bytes after the
    /// last response are never a request to decrypt or parse). `Ok(false)`
    /// at the end of the stream.
    pub async fn discard_more(
        &mut self,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<bool, ReadFail> {
        let tcp = match self {
            StreamReader::Plain(r) => &*r,
            StreamReader::Tls(r) => r.tcp(),
            StreamReader::H2(_) | StreamReader::H2Upstream(_) => return Ok(false),
        };
        discard_waiting(tcp, timeout, abort).await
    }

    /// Appends what the client sends next to `buf` (see [`read_more`]).
    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        match self {
            StreamReader::Plain(r) => read_more(r, buf, min_spare, timeout, abort).await,
            StreamReader::Tls(r) => r.read_more(buf, min_spare, timeout, abort).await,
            StreamReader::H2(r) => r.read_more(buf, timeout, abort).await,
            StreamReader::H2Upstream(r) => r.read_more(buf, timeout, abort).await,
        }
    }
}

impl StreamWriter {
    /// Writes every segment of `g` (see [`send_gather`]).
    pub async fn send_gather(
        &mut self,
        g: Gather,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Gather) {
        match self {
            StreamWriter::Plain(w) => send_gather(w, g, timeout, abort).await,
            StreamWriter::Tls(w) => w.send_gather(g, timeout, abort).await,
            StreamWriter::H2(w) => w.send_gather(g, timeout, abort).await,
        }
    }

    /// Writes `buf[range]` (see [`send_range`]).
    pub async fn send_range<B: IoBuf>(
        &mut self,
        buf: B,
        range: Range<usize>,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, B) {
        match self {
            StreamWriter::Plain(w) => send_range(w, buf, range, timeout, abort).await,
            StreamWriter::Tls(w) => w.send_range(buf, range, timeout, abort).await,
            StreamWriter::H2(w) => w.send_range(buf, range, timeout, abort).await,
        }
    }

    /// Ends the connection's output: TLS says close_notify; a plain
    /// connection has nothing to say before its close.
    pub async fn close(&mut self, timeout: Duration, abort: &Abort) {
        if let StreamWriter::Tls(w) = self {
            w.close(timeout, abort).await;
        }
    }

    /// Half-closes the TCP connection (`shutdown(SHUT_WR)`, after a TLS
    /// connection's close_notify, which [`Self::close`] sends): the client
    /// sees the end of the response while the proxy can still read.
    pub async fn shutdown_tcp(&mut self) {
        let _ = match self {
            StreamWriter::Plain(w) => monoio::io::AsyncWriteRent::shutdown(w).await,
            StreamWriter::Tls(w) => w.shutdown_tcp().await,
            StreamWriter::H2(_) => Ok(()),
        };
    }

    /// The protocol a request on this connection came in, as `Via` names
    /// it (RFC 9110 §7.6.3: `received-protocol`, the name omitted for HTTP).
    pub fn received_protocol(&self, version: Version) -> &'static str {
        match (self, version) {
            (StreamWriter::H2(_), _) => "2",
            (_, Version::Http10) => "1.0",
            (_, Version::Http11) => "1.1",
        }
    }

    /// The scheme spoken on this connection (`X-Forwarded-Proto`, `Forwarded`).
    pub fn scheme(&self) -> &'static str {
        match self {
            StreamWriter::Plain(_) => "http",
            StreamWriter::Tls(_) => "https",
            StreamWriter::H2(w) => w.scheme(),
        }
    }
}
