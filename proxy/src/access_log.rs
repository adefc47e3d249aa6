//! The access log. Each worker formats its lines into its own
//! [`LogBuffer`] (no allocation once the buffer and the per-connection
//! scratch have grown), which appends whole lines to the shared file.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ringgate_core::http::{header_value, ForwardedClient, RequestHead};

use crate::log_buffer::{escape, LogBuffer, Stamp};

/// What went back to the client for one request, filled in along the way
/// by whichever path answered it.
#[derive(Default)]
pub struct Sent {
    /// Status of the final response head sent (0: none was).
    pub status: Cell<u16>,
    /// Body bytes sent after that head, as framed.
    pub body_bytes: Cell<u64>,
    /// The backend of the last attempt, if one was made.
    pub upstream: Cell<Option<SocketAddr>>,
}

impl Sent {
    pub fn reset(&self) {
        self.status.set(0);
        self.body_bytes.set(0);
        self.upstream.set(None);
    }

    /// A response the proxy wrote itself: `status` with a body of `body_len`.
    pub fn local(&self, status: u16, body_len: usize) {
        self.status.set(status);
        self.body_bytes.set(body_len as u64);
    }

    pub fn add_body(&self, n: usize) {
        self.body_bytes.set(self.body_bytes.get() + n as u64);
    }
}

/// The parts of a line taken from the request head before it is consumed:
/// `"request line" ` and `"referer" "user-agent"`, escaped. Per connection.
#[derive(Default)]
pub struct Captured {
    request: Vec<u8>,
    agents: Vec<u8>,
    /// ` "id"` when request ids are on (`[server] request_id`).
    request_id: Vec<u8>,
    /// The consumer route authentication established (`$remote_user`),
    /// escaped; empty: `-`.
    user: Vec<u8>,
}

impl Captured {
    /// The request's id, written last on its line.
    pub fn set_request_id(&mut self, id: &[u8]) {
        self.request_id.clear();
        self.request_id.extend_from_slice(b" \"");
        escape(&mut self.request_id, id);
        self.request_id.push(b'"');
    }

    /// Writes `version` in place of the captured request line's own: an
    /// HTTP/2 stream's head is parsed as the HTTP/1.1 head it becomes, but
    /// is logged as what the client sent.
    pub fn set_user(&mut self, user: &[u8]) {
        self.user.clear();
        escape(&mut self.user, user);
        // A space would split the field for every log parser.
        while let Some(i) = self.user.iter().position(|&b| b == b' ') {
            self.user.splice(i..=i, *b"\\x20");
        }
    }

    pub fn set_version(&mut self, version: &[u8]) {
        if let Some(space) = self.request.iter().rposition(|&b| b == b' ') {
            self.request.truncate(space + 1);
            self.request.extend_from_slice(version);
            self.request.push(b'"');
        }
    }
}

pub struct AccessLog {
    out: LogBuffer,
    stamp: Stamp,
}

impl AccessLog {
    /// `file` must be open for appending.
    pub fn new(file: File, flush_at: usize) -> Self {
        AccessLog {
            out: LogBuffer::new(file, flush_at),
            stamp: Stamp::clf(),
        }
    }

    /// Copies what the line needs from `src` (the buffer `head` was parsed
    /// from) before the request is forwarded and its bytes dropped.
    pub fn capture(into: &mut Captured, src: &[u8], head: &RequestHead) {
        let head_bytes = &src[..head.head_len];
        let line_end = memchr::memchr(b'\r', head_bytes).unwrap_or(head_bytes.len());
        into.request.clear();
        into.request.push(b'"');
        escape(&mut into.request, &head_bytes[..line_end]);
        into.request.push(b'"');
        into.agents.clear();
        into.request_id.clear();
        into.user.clear();
        for (i, name) in [&b"referer"[..], b"user-agent"].into_iter().enumerate() {
            if i > 0 {
                into.agents.push(b' ');
            }
            into.agents.push(b'"');
            match header_value(head_bytes, name) {
                Some(v) => escape(&mut into.agents, v),
                None => into.agents.push(b'-'),
            }
            into.agents.push(b'"');
        }
    }

    /// Appends one line; `captured` is `None` for a request whose head
    /// could not be parsed (written as `"-"`). `received`: the bytes a
    /// tunnel (an upgraded connection) received from the client, written
    /// after the TLS field as on a `tcp` listener's line.
    /// `Some` when writing the log begins to fail (see [`LogBuffer::flush`]).
    pub fn write(
        &self,
        client: &ForwardedClient,
        captured: Option<&Captured>,
        sent: &Sent,
        took: Duration,
        tls_version: &str,
        received: Option<u64>,
    ) -> Option<io::Error> {
        let mut buf = self.out.line();
        buf.extend_from_slice(client.ip_bytes());
        buf.extend_from_slice(b" - ");
        match captured.filter(|c| !c.user.is_empty()) {
            Some(c) => buf.extend_from_slice(&c.user),
            None => buf.push(b'-'),
        }
        buf.push(b' ');
        self.stamp.write(&mut buf, SystemTime::now());
        buf.push(b' ');
        match captured {
            Some(c) => buf.extend_from_slice(&c.request),
            None => buf.extend_from_slice(b"\"-\""),
        }
        let ms = took.as_millis();
        let _ = write!(buf, " {} {} ", sent.status.get(), sent.body_bytes.get());
        match captured {
            Some(c) => buf.extend_from_slice(&c.agents),
            None => buf.extend_from_slice(b"\"-\" \"-\""),
        }
        let _ = write!(buf, " {}.{:03} ", ms / 1000, ms % 1000);
        match sent.upstream.get() {
            Some(addr) => {
                let _ = write!(buf, "{addr}");
            }
            None => buf.push(b'-'),
        }
        buf.push(b' ');
        buf.extend_from_slice(tls_version.as_bytes());
        if let Some(n) = received {
            let _ = write!(buf, " {n}");
        }
        if let Some(c) = captured {
            buf.extend_from_slice(&c.request_id);
        }
        buf.push(b'\n');
        self.out.done(buf)
    }

    /// Appends the line of one `tcp` listener connection: the combined
    /// fields with `"TCP LISTENER"` as the request, the status (200 relayed,
    /// 502/503/504 no backend reached) and the bytes sent to the client,
    /// then the duration, the backend, `-` for TLS, and the bytes received
    /// from the client.
    pub fn write_tunnel(
        &self,
        client: &ForwardedClient,
        listener: &str,
        sent: &Sent,
        received: u64,
        took: Duration,
    ) -> Option<io::Error> {
        let mut buf = self.out.line();
        buf.extend_from_slice(client.ip_bytes());
        buf.extend_from_slice(b" - - ");
        self.stamp.write(&mut buf, SystemTime::now());
        let ms = took.as_millis();
        let _ = write!(
            buf,
            " \"TCP {listener}\" {} {} \"-\" \"-\" {}.{:03} ",
            sent.status.get(),
            sent.body_bytes.get(),
            ms / 1000,
            ms % 1000
        );
        match sent.upstream.get() {
            Some(addr) => {
                let _ = write!(buf, "{addr}");
            }
            None => buf.push(b'-'),
        }
        let _ = writeln!(buf, " - {received}");
        self.out.done(buf)
    }

    /// Writes the buffered lines; `Some` when writing begins to fail.
    pub fn flush(&self) -> Option<io::Error> {
        self.out.flush()
    }
}
