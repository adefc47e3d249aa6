//! The client side of a connection as the exchange drives it: plain TCP, or
//! TLS over it ([`crate::tls`]). One read and one write contract for both,
//! so the connection loop and the exchange never ask which it is; a plain
//! connection pays one predictable branch per operation.

use std::ops::Range;
use std::time::Duration;

use monoio::buf::IoBuf;

use crate::io::{read_more, send_gather, send_range, Abort, Gather, ReadFail, Reader, WriteFail, Writer};
use crate::tls::{TlsReader, TlsWriter};

pub enum ClientReader {
    Plain(Reader),
    Tls(TlsReader),
}

pub enum ClientWriter {
    Plain(Writer),
    Tls(TlsWriter),
}

impl ClientReader {
    /// Appends what the client sends next to `buf` (see [`read_more`]).
    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        match self {
            ClientReader::Plain(r) => read_more(r, buf, min_spare, timeout, abort).await,
            ClientReader::Tls(r) => r.read_more(buf, min_spare, timeout, abort).await,
        }
    }
}

impl ClientWriter {
    /// Writes every segment of `g` (see [`send_gather`]).
    pub async fn send_gather(
        &mut self,
        g: Gather,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Gather) {
        match self {
            ClientWriter::Plain(w) => send_gather(w, g, timeout, abort).await,
            ClientWriter::Tls(w) => w.send_gather(g, timeout, abort).await,
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
            ClientWriter::Plain(w) => send_range(w, buf, range, timeout, abort).await,
            ClientWriter::Tls(w) => w.send_range(buf, range, timeout, abort).await,
        }
    }

    /// Ends the connection's output: TLS says close_notify; a plain
    /// connection has nothing to say before its close.
    pub async fn close(&mut self, timeout: Duration, abort: &Abort) {
        if let ClientWriter::Tls(w) = self {
            w.close(timeout, abort).await;
        }
    }

    /// The scheme the client used, for `X-Forwarded-Proto` and `Forwarded`.
    pub fn scheme(&self) -> &'static str {
        match self {
            ClientWriter::Plain(_) => "http",
            ClientWriter::Tls(_) => "https",
        }
    }
}
