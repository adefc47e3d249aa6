//! Raw-socket test client: writes exactly the bytes a test gives it and reads
//! responses back with a strict parser. Every read and write has a timeout,
//! so a misbehaving proxy fails a test instead of hanging it.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::wire::{self, Framing, Head, Reader, HEAD_SIZE_MAX, READ_SIZE};

/// Per-read and per-write timeout on every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub raw_head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Response {
    fn head(&self) -> Head {
        Head {
            start: [
                self.version.clone(),
                self.status.to_string(),
                self.reason.clone(),
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

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True when the response itself announces the connection will close.
    pub fn says_close(&self) -> bool {
        self.header("connection")
            .map(|c| c.to_ascii_lowercase().contains("close"))
            .unwrap_or(false)
    }
}

/// A response head before its body has been read.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub head: Head,
    pub raw: Vec<u8>,
}

impl ResponseHead {
    /// RFC 9112 §6.3 framing of a response to a non-HEAD request.
    pub fn framing(&self) -> Framing {
        if self.status < 200 || self.status == 204 || self.status == 304 {
            return Framing::None;
        }
        match self.head.framing() {
            // No length information: the body runs to the close.
            Framing::None => Framing::UntilClose,
            f => f,
        }
    }
}

pub struct Client {
    addr: SocketAddr,
    w: TcpStream,
    r: Reader<TcpStream>,
}

impl Client {
    /// Connects to `127.0.0.1:port`, panicking with context on failure.
    pub fn connect(port: u16) -> Client {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to proxy at {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let w = s.try_clone()?;
        Ok(Client {
            addr,
            w,
            r: Reader::new(s),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A second handle on the socket, for a writer thread.
    pub fn writer(&self) -> TcpStream {
        self.w.try_clone().expect("clone client socket")
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.w.flush()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("write to proxy {}: {e}", self.addr));
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.r
            .get_ref()
            .set_read_timeout(Some(t))
            .expect("set timeout");
    }

    pub fn read_head(&mut self) -> io::Result<ResponseHead> {
        let raw = self.r.read_head(HEAD_SIZE_MAX)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        if !raw.ends_with(b"\r\n\r\n")
            || raw
                .windows(2)
                .filter(|w| w[1] == b'\n')
                .any(|w| w[0] != b'\r')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "response head with bare LF: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            ));
        }
        let head = wire::parse_head(&raw)?;
        let status = head.start[1].parse::<u16>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line in {:?}", String::from_utf8_lossy(&raw)),
            )
        })?;
        Ok(ResponseHead {
            version: head.start[0].clone(),
            status,
            reason: head.start[2].clone(),
            head,
            raw,
        })
    }

    /// Streams the body of `head` to `sink`.
    pub fn read_body_with(
        &mut self,
        head: &ResponseHead,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match head.framing() {
            Framing::None => Ok(()),
            Framing::Length(n) => wire::read_length(&mut self.r, n, sink),
            Framing::Chunked => wire::read_chunked(&mut self.r, sink).map(|_| ()),
            Framing::UntilClose => {
                while let Some(p) = self.r.read_some_or_eof(READ_SIZE)? {
                    sink(p)?;
                }
                Ok(())
            }
        }
    }

    /// Reads the next response, interim (1xx) ones included.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head = self.read_head()?;
        let mut body = Vec::new();
        self.read_body_with(&head, |p| {
            body.extend_from_slice(p);
            Ok(())
        })?;
        Ok(Response {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.head.headers,
            raw_head: head.raw,
            body,
        })
    }

    /// Reads responses until a final (non-1xx) one.
    pub fn read_final(&mut self) -> io::Result<Response> {
        loop {
            let r = self.read_response()?;
            if r.status >= 200 {
                return Ok(r);
            }
        }
    }

    /// Sends `raw` and reads the final response; panics with context on error.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.read_final().unwrap_or_else(|e| {
            panic!(
                "no response from proxy to {:?}: {e}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })
    }

    /// `GET path` with a Host header.
    pub fn get(&mut self, path: &str) -> Response {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
    }

    /// Waits for the peer to close (EOF or reset) within `within`.
    /// Any further byte, or a timeout, is an error.
    pub fn wait_closed(&mut self, within: Duration) -> Result<(), String> {
        if !self.r.buffered().is_empty() {
            return Err(format!(
                "unexpected bytes after the response: {:?}",
                String::from_utf8_lossy(self.r.buffered())
            ));
        }
        self.set_read_timeout(within.max(Duration::from_millis(1)));
        let res = match self.r.read_some_or_eof(READ_SIZE) {
            Ok(None) => Ok(()),
            Ok(Some(p)) => Err(format!(
                "unexpected bytes instead of a close: {:?}",
                String::from_utf8_lossy(p)
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(format!("connection still open after {within:?}"))
            }
            Err(e) => Err(format!("read error while waiting for close: {e}")),
        };
        self.set_read_timeout(IO_TIMEOUT);
        res
    }
}

/// One request on a fresh connection: the response (or the error reading
/// it), and whether the proxy closed the connection afterwards.
pub struct Exchange {
    pub response: io::Result<Response>,
    pub closed: Result<(), String>,
}

/// Sends `raw` on a fresh connection in one write, reads one final response,
/// then waits up to `IO_TIMEOUT` for the close.
pub fn exchange(port: u16, raw: &[u8]) -> Exchange {
    let mut c = Client::connect(port);
    // The proxy may refuse and close before reading everything; a failed
    // write is then not the test's concern, the response is.
    let _ = c.try_send(raw);
    let response = c.read_final();
    let closed = match &response {
        Ok(_) => c.wait_closed(IO_TIMEOUT),
        Err(_) => Ok(()),
    };
    Exchange { response, closed }
}

/// Human-readable rendering of raw request bytes for assertion messages.
pub fn show(raw: &[u8]) -> String {
    raw.escape_ascii().to_string()
}
