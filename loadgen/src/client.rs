//! One client connection: connect (TCP, optionally TLS), write requests, read
//! and frame responses, and classify every failure.
//!
//! Owns the bytes on the wire. Framing comes from `ringgate-core`
//! (`parse_response`, `ChunkedDecoder`), so ringload reads responses exactly
//! as strictly as the proxy does. It records nothing: the engine times the
//! calls. Every send and receive is an io_uring operation (monoio's
//! completion-based `send`/`recv` on owned buffers); a deadline is a timer
//! raced against the operation, and a losing operation is cancelled in the
//! ring (monoio's `async-cancel`), not left to run.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use ringgate_core::chunked::{ChunkLimits, ChunkedDecoder};
use ringgate_core::http::{parse_response, HeadLimits, HeadScratch, ResponseBody};
use rustls::pki_types::ServerName;

use crate::id::{BodyScan, IdSeen};
use crate::record::ErrorClass;
use crate::target::{Scheme, Target};

/// Response heads larger than this are a parse error; real servers send a
/// few hundred bytes.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
const HEAD_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: MAX_RESPONSE_HEAD_BYTES,
    max_headers: 128,
};
const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_line_bytes: 4096,
    max_trailer_bytes: 16 * 1024,
};
/// Read buffer per connection: holds any head and, with pipelining, several
/// small responses per read.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
const _: () = assert!(READ_BUFFER_BYTES * 4 >= MAX_RESPONSE_HEAD_BYTES);

/// A request that got no response, and why, in words for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub why: String,
}

impl Failure {
    fn new(class: ErrorClass, why: impl Into<String>) -> Self {
        Failure {
            class,
            why: why.into(),
        }
    }

    fn io(e: &io::Error, connecting: bool) -> Self {
        let class = match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorClass::Timeout,
            _ if connecting => ErrorClass::Connect,
            _ => ErrorClass::Reset,
        };
        Failure::new(class, e.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// TLS settings shared by every connection of a run.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
}

impl Tls {
    /// Verifies servers against the Mozilla roots (webpki-roots), or accepts
    /// any certificate with `insecure` (self-signed test servers).
    pub fn new(insecure: bool) -> Result<Tls, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        } else {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

/// `--insecure`: the handshake still runs and signatures are still checked
/// against the certificate the server sent; only the chain is not.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all<B: IoBuf>(&mut self, buf: B) -> (io::Result<usize>, B) {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                let (res, buf) = s.write_all(buf).await;
                match res {
                    // rustls may hold records back until the flush.
                    Ok(n) => (s.flush().await.map(|()| n), buf),
                    Err(e) => (Err(e), buf),
                }
            }
        }
    }

    async fn read<B: IoBufMut>(&mut self, buf: B) -> (io::Result<usize>, B) {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

fn timed_out() -> Failure {
    Failure::new(ErrorClass::Timeout, "timed out")
}

/// Runs `op` until `deadline`: past it, the operation is dropped, which
/// cancels its ring operation in flight. One timer per request exchange
/// (the engine wraps a send and its responses), not one per read.
pub async fn by<F: std::future::Future>(deadline: Instant, op: F) -> Result<F::Output, Failure> {
    monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), op)
        .await
        .map_err(|_| timed_out())
}

/// An open connection with its read buffer and parse state.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    scratch: HeadScratch,
    /// The current body's first bytes, when its request carries an id.
    scan: BodyScan,
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the response on the wire (head and body, as framed).
    pub bytes: u64,
    /// The server lets us send the next request on this connection.
    pub reusable: bool,
    /// Whether the body carried its request's id (`--check-id`).
    pub id: IdSeen,
}

impl Conn {
    /// Connects to the target, with TLS when its scheme is https.
    pub async fn connect(
        target: &Target,
        tls: Option<&Tls>,
        deadline: Instant,
    ) -> Result<Conn, Failure> {
        let tcp = by(deadline, TcpStream::connect_addr(target.addr))
            .await?
            .map_err(|e| Failure::io(&e, true))?;
        // Small requests must leave at once, not wait for Nagle.
        tcp.set_nodelay(true).map_err(|e| Failure::io(&e, true))?;
        let stream = match (target.url.scheme, tls) {
            (Scheme::Http, _) => Stream::Plain(tcp),
            (Scheme::Https, None) => {
                return Err(Failure::new(
                    ErrorClass::Connect,
                    "https URL but TLS is not set up",
                ));
            }
            (Scheme::Https, Some(tls)) => {
                let name = ServerName::try_from(target.url.host.clone()).map_err(|e| {
                    Failure::new(ErrorClass::Connect, format!("TLS server name: {e}"))
                })?;
                let handshake = match by(deadline, tls.connector.connect(name, tcp)).await {
                    Ok(r) => r.map_err(io::Error::from),
                    Err(_) => Err(io::ErrorKind::TimedOut.into()),
                };
                Stream::Tls(Box::new(
                    handshake.map_err(|e| handshake_failure(&e, target))?,
                ))
            }
        };
        Ok(Conn {
            stream,
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
            scratch: HeadScratch::default(),
            scan: BodyScan::default(),
        })
    }

    /// Writes `bytes[..len]` (one or several pipelined requests). The buffer
    /// goes to the ring and comes back; if the caller's deadline drops the
    /// send, it stays with the cancelled operation and `bytes` is left empty
    /// (the caller rebuilds it).
    pub async fn send(&mut self, bytes: &mut Vec<u8>, len: usize) -> Result<(), Failure> {
        let buf = std::mem::take(bytes).slice(..len);
        let (res, buf) = self.stream.write_all(buf).await;
        *bytes = buf.into_inner();
        res.map(|_| ()).map_err(|e| Failure::io(&e, false))
    }

    /// Reads more bytes after `end`; `Ok(0)` is end of stream.
    async fn fill(&mut self) -> Result<usize, Failure> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_RESPONSE_HEAD_BYTES {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Err(Failure::new(ErrorClass::Parse, "response head too large"));
            }
        }
        // The buffer goes to the ring for the read; a read dropped by the
        // caller's deadline keeps it, and the connection is dropped after
        // any failure.
        let cap = self.buf.len();
        let into: SliceMut<Vec<u8>> = std::mem::take(&mut self.buf).slice_mut(self.end..cap);
        let (res, into) = self.stream.read(into).await;
        self.buf = into.into_inner();
        let n = res.map_err(|e| Failure::io(&e, false))?;
        self.end += n;
        Ok(n)
    }

    /// The first bytes of the last body read with an id to check
    /// (`read_response` with `id`), for a mismatch report.
    pub fn scanned_body(&self) -> &[u8] {
        self.scan.bytes()
    }

    /// Reads one complete response (skipping interim 1xx responses). Bytes of
    /// a following pipelined response stay buffered for the next call.
    /// With `id` (the request's `NAME=<digits>`), the body's first bytes are
    /// searched for it as they pass.
    pub async fn read_response(
        &mut self,
        head_method: bool,
        id: Option<&[u8]>,
    ) -> Result<Response, Failure> {
        let checking = id.is_some();
        if checking {
            self.scan.clear();
        }
        let mut bytes = 0u64;
        let head = loop {
            let window = &self.buf[self.start..self.end];
            match parse_response(window, HEAD_LIMITS, head_method, &mut self.scratch) {
                Ok(Some(head)) if head.is_interim() => {
                    self.start += head.head_len;
                    bytes += head.head_len as u64;
                }
                Ok(Some(head)) => break head,
                Ok(None) => {
                    if self.fill().await? == 0 {
                        let why = if self.start == self.end && bytes == 0 {
                            "connection closed before a response"
                        } else {
                            "connection closed inside a response head"
                        };
                        return Err(Failure::new(ErrorClass::Reset, why));
                    }
                }
                Err(e) => {
                    return Err(Failure::new(
                        ErrorClass::Parse,
                        format!("invalid response head: {}", e.reason()),
                    ))
                }
            }
        };
        self.start += head.head_len;
        bytes += head.head_len as u64;
        let mut reusable = head.reusable;
        match head.body {
            ResponseBody::Empty => {}
            ResponseBody::Length(mut left) => loop {
                let avail = (self.end - self.start) as u64;
                let take = avail.min(left);
                if checking {
                    self.scan
                        .push(&self.buf[self.start..self.start + take as usize]);
                }
                self.start += take as usize;
                left -= take;
                bytes += take;
                if left == 0 {
                    break;
                }
                if self.fill().await? == 0 {
                    return Err(Failure::new(
                        ErrorClass::Reset,
                        "connection closed inside a body",
                    ));
                }
            },
            ResponseBody::Chunked => {
                let mut decoder = ChunkedDecoder::new(CHUNK_LIMITS);
                loop {
                    let scan = &mut self.scan;
                    let feed = decoder
                        .feed(&self.buf[self.start..self.end], &mut |p| {
                            if checking {
                                scan.push(p);
                            }
                        })
                        .map_err(|e| {
                            Failure::new(ErrorClass::Parse, format!("invalid chunked body: {e}"))
                        })?;
                    self.start += feed.consumed;
                    bytes += feed.consumed as u64;
                    if feed.done {
                        break;
                    }
                    if self.fill().await? == 0 {
                        return Err(Failure::new(
                            ErrorClass::Reset,
                            "connection closed inside a chunked body",
                        ));
                    }
                }
            }
            ResponseBody::UntilClose => {
                reusable = false;
                loop {
                    bytes += (self.end - self.start) as u64;
                    if checking {
                        self.scan.push(&self.buf[self.start..self.end]);
                    }
                    self.start = self.end;
                    if self.fill().await? == 0 {
                        break;
                    }
                }
            }
        }
        Ok(Response {
            status: head.status,
            bytes,
            reusable,
            id: id.map_or(IdSeen::Unchecked, |needle| self.scan.check(needle)),
        })
    }
}

/// A failed TLS handshake in words. The common mistake, an `https://` URL to
/// a plain HTTP port, shows as a reply that is not a TLS record (the
/// server's `400` in plain text), a close, or silence (a server still
/// waiting for the end of a request head); each names the http:// URL.
fn handshake_failure(e: &io::Error, target: &Target) -> Failure {
    let plain_url = format!("http://{}", &target.url.original["https://".len()..]);
    let not_tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
    let why = if not_tls {
        format!(
            "the server answered in plain text, not TLS: {} is a plain HTTP port, use {plain_url}",
            target.addr
        )
    } else {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
                "no answer to the TLS handshake within --timeout; if {} is a plain HTTP port, use {plain_url}",
                target.addr
            ),
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => format!(
                "the server closed the connection during the TLS handshake; if {} is a plain HTTP port, use {plain_url}",
                target.addr
            ),
            _ => return Failure::io(e, true),
        }
    };
    Failure::new(ErrorClass::Connect, why)
}
