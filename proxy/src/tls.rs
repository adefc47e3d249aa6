//! TLS on both sides: the rustls configuration of each TLS listener (loaded
//! from its files at start-up, `check` and reload; SNI chooses among the
//! certificates) and of each TLS upstream (its CA, the name it verifies),
//! and the two halves of a TLS connection, server or client side, whose
//! rustls state machine is driven by the worker's own io_uring reads and
//! writes on the TCP halves ([`crate::io`]): no other runtime, no thread
//! hand-off, every wait under a deadline.
//!
//! The halves share one `rustls::Connection` through an `Rc<RefCell>`
//! borrowed only between awaits, so a response can go out while the request
//! body is still being read, as on a plain connection. TLS records the read
//! side produces (a KeyUpdate answer) leave with the next write.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use ringgate_config::{CertificateFiles, ListenerTls, TlsVersion};
use rustls::crypto::CryptoProvider;
// The crypto provider is a build choice: aws-lc-rs by default (it won on
// handshakes, docs/BENCHMARKS.md); `--no-default-features` builds on ring.
#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as crypto;
#[cfg(not(feature = "aws-lc-rs"))]
use rustls::crypto::ring as crypto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
};

use crate::io::{
    read_more, send_range, wait_readable_by, Abort, Gather, ReadFail, Reader, WriteFail, Writer,
};

/// ALPN protocols an upstream connection offers, and a TLS listener without
/// HTTP/2. A client that offers ALPN without any of a listener's protocols
/// is refused (RFC 7301 §3.2).
const ALPN: &[&[u8]] = &[b"http/1.1"];
/// A listener with `http2`: `h2` first, so a client that offers both gets it.
const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Ciphertext read per TCP read: one full TLS record and its header.
const CIPHERTEXT_READ_BYTES: usize = 16 * 1024 + 5 + 256;

/// Plaintext encrypted per write: one record, so a response of several
/// segments (head slices, patch, body) leaves as few records as possible.
const PLAINTEXT_RECORD_BYTES: usize = 16 * 1024;

/// The TLS side of one listener as loaded from its files: shared by the
/// workers, each of which makes its own `ServerConfig` from it (its own
/// session cache; the ticket keys stay shared).
#[derive(Clone)]
pub struct ListenerTlsConfig {
    base: ServerConfig,
    session_cache: usize,
}

impl std::fmt::Debug for ListenerTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTlsConfig").finish_non_exhaustive()
    }
}

impl ListenerTlsConfig {
    /// This worker's configuration: a bounded session cache of its own, so
    /// no handshake waits on another worker's lock for it.
    pub fn for_worker(&self) -> Arc<ServerConfig> {
        let mut config = self.base.clone();
        config.session_storage = if self.session_cache == 0 {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            rustls::server::ServerSessionMemoryCache::new(self.session_cache)
        };
        Arc::new(config)
    }
}

/// The ticket keys: one rotating set for the whole process, so a client
/// resumes on whichever worker accepts it, and across reloads.
fn ticketer() -> Result<Arc<dyn ProducesTickets>, String> {
    static TICKETER: OnceLock<Result<Arc<dyn ProducesTickets>, String>> = OnceLock::new();
    TICKETER
        .get_or_init(|| crypto::Ticketer::new().map_err(|e| e.to_string()))
        .clone()
}

fn provider(suites: &[String]) -> CryptoProvider {
    let mut provider = crypto::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites.retain(|s| {
            suites
                .iter()
                .any(|name| format!("{:?}", s.suite()) == *name)
        });
    }
    provider
}

/// Loads a TLS listener's files and builds its configuration. `key` names
/// the config key (`listeners[0].tls`) in errors, which also name the file
/// and what is wrong with it.
pub fn load(key: &str, tls: &ListenerTls, http2: bool) -> Result<ListenerTlsConfig, String> {
    let provider = Arc::new(provider(&tls.cipher_suites));
    let mut resolver = SniResolver::default();
    for (i, files) in tls.certificates.iter().enumerate() {
        let key = format!("{key}.certificates[{i}]");
        let (certified, names) = load_certificate(&key, files, &provider)?;
        resolver.add(Arc::new(certified), &names);
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{key}: versions and cipher_suites do not fit together: {e}"))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(&format!("{key}.client_ca"), ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.client_certificate_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{key}.client_ca: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut base = builder.with_cert_resolver(Arc::new(resolver));
    let alpn = if http2 { ALPN_H2 } else { ALPN };
    base.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The server's suite order (rustls': AES-256-GCM, AES-128-GCM, then
    // ChaCha20) decides, not whatever a client lists first.
    base.ignore_client_order = true;
    if tls.session_tickets {
        base.ticketer = ticketer().map_err(|e| format!("{key}: cannot make ticket keys: {e}"))?;
    }
    // Writes are flushed record by record (see `TlsWriter`): what rustls
    // holds never grows past one record, so its own limit would only split
    // a write in two.
    base.max_fragment_size = None;
    Ok(ListenerTlsConfig {
        base,
        session_cache: tls.session_cache,
    })
}

/// The TLS side of one upstream: how its connections are verified and
/// which name they ask for (`None`: each backend's IP address, which is
/// then what its certificate must name).
#[derive(Clone)]
pub struct UpstreamTlsConfig {
    pub config: Arc<ClientConfig>,
    pub server_name: Option<ServerName<'static>>,
}

impl UpstreamTlsConfig {
    /// The name a connection to `backend` asks for and verifies.
    pub fn name_for(&self, backend: std::net::SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(backend.ip().into()))
    }
}

/// What a client connection built from an upstream-style `tls` table
/// offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAlpn {
    /// `http/1.1`.
    Http1,
    /// Only `h2`: an HTTP/2 upstream's streams cannot fall back.
    H2,
    /// Nothing: the fleet's Redis negotiates no application protocol.
    None,
}

impl ClientAlpn {
    /// What `upstream`'s connections offer.
    pub fn of(upstream: &ringgate_config::Upstream) -> Self {
        match upstream.protocol {
            ringgate_config::UpstreamProtocol::H2 => ClientAlpn::H2,
            ringgate_config::UpstreamProtocol::Http1 => ClientAlpn::Http1,
        }
    }

    fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            ClientAlpn::Http1 => ALPN,
            ClientAlpn::H2 => &[b"h2"],
            ClientAlpn::None => &[],
        }
    }
}

/// Builds an upstream's client configuration: its CA file, or the Mozilla
/// roots (`webpki-roots`) when none is given.
pub fn load_upstream(
    key: &str,
    tls: &ringgate_config::UpstreamTls,
    alpn: ClientAlpn,
) -> Result<UpstreamTlsConfig, String> {
    let provider = Arc::new(crypto::default_provider());
    let roots = match &tls.ca {
        Some(ca) => read_roots(&format!("{key}.ca"), ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{key}: {e}"))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let key = format!("{key}.client_certificate");
            // Checked as a listener's certificate is (readable, matching,
            // valid now), then handed to rustls as DER.
            let (certified, _) = load_certificate(&key, files, &provider)?;
            let private = PrivateKeyDer::from_pem_slice(&read_file(&key, &files.key)?)
                .map_err(|e| format!("{key}.key: {}: {e}", files.key.display()))?;
            builder
                .with_client_auth_cert(certified.cert.clone(), private)
                .map_err(|e| format!("{key}: {e}"))?
        }
    };
    config.alpn_protocols = alpn.protocols().iter().map(|p| p.to_vec()).collect();
    let server_name = tls
        .server_name
        .as_ref()
        .map(|n| {
            ServerName::try_from(n.clone()).map_err(|e| {
                format!("{key}.server_name: {n:?} is not a DNS name or IP address: {e}")
            })
        })
        .transpose()?;
    Ok(UpstreamTlsConfig {
        config: Arc::new(config),
        server_name,
    })
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: {}: cannot read: {e}", path.display()))
}

fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The CA certificates in a PEM file, as a trust store.
fn read_roots(key: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(key, path)? {
        roots.add(cert).map_err(|e| {
            format!(
                "{key}: {}: not a usable CA certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// One certificate chain and its key, checked: they match, the leaf is
/// valid now, and it names at least one DNS name (or is the default).
fn load_certificate(
    key: &str,
    files: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), String> {
    let chain = read_certificates(&format!("{key}.cert"), &files.cert)?;
    let key_pem = read_file(&format!("{key}.key"), &files.key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "{key}.key: {}: no usable private key (PKCS#8, SEC1 or PKCS#1 PEM): {e}",
            files.key.display()
        )
    })?;
    let names = leaf_names(&format!("{key}.cert"), &files.cert, &chain[0])?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{key}.key: {} does not match the certificate in {}",
            files.key.display(),
            files.cert.display()
        ),
        e => format!("{key}.key: {}: {e}", files.key.display()),
    })?;
    Ok((certified, names))
}

/// The DNS names a leaf certificate serves (subjectAltName, else the
/// common name), refusing one that is expired or not yet valid.
fn leaf_names(key: &str, path: &Path, leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| {
        format!(
            "{key}: {}: not a valid X.509 certificate: {e}",
            path.display()
        )
    })?;
    let validity = cert.validity();
    let now = ASN1Time::now();
    if now > validity.not_after {
        return Err(format!(
            "{key}: {}: expired on {}",
            path.display(),
            validity.not_after
        ));
    }
    if now < validity.not_before {
        return Err(format!(
            "{key}: {}: not valid before {}",
            path.display(),
            validity.not_before
        ));
    }
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// Chooses a certificate by SNI: an exact name, then the wildcard of the
/// name's parent (`*.example.com` serves `a.example.com`, not
/// `a.b.example.com`, as RFC 6125 §6.4.3 has it); anything else, or no
/// SNI, gets the first certificate.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn add(&mut self, cert: Arc<CertifiedKey>, names: &[String]) {
        self.default.get_or_insert_with(|| cert.clone());
        for name in names {
            // An earlier certificate keeps a name two of them share.
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_string()),
                None => self.exact.entry(name.clone()),
            }
            .or_insert_with(|| cert.clone());
        }
    }

    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.');
        if let Some(c) = self.exact.get(name) {
            return Some(c);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands the name over lower-cased and validated.
        hello
            .server_name()
            .and_then(|name| self.find(name))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Why a handshake did not finish.
#[derive(Debug)]
pub enum HandshakeError {
    TimedOut,
    /// The client closed, reset or was cancelled by a drain.
    Closed,
    /// The first bytes were a plain HTTP request (answered with a 400).
    PlainHttp,
    Tls(rustls::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::TimedOut => f.write_str("timeout (tls_handshake_timeout)"),
            HandshakeError::Closed => f.write_str("closed by the client (or a drain)"),
            HandshakeError::PlainHttp => {
                f.write_str("plain HTTP sent to a TLS port (answered 400)")
            }
            HandshakeError::Tls(e) => write!(f, "{e}"),
        }
    }
}

type Shared = Rc<RefCell<Connection>>;

/// The read half of a TLS client connection.
pub struct TlsReader {
    tcp: Reader,
    conn: Shared,
    /// Ciphertext read but not yet taken by rustls.
    cipher: Vec<u8>,
    eof: bool,
}

/// The write half of a TLS client connection.
pub struct TlsWriter {
    tcp: Writer,
    conn: Shared,
    /// One record's worth of plaintext, gathered from a write's segments.
    plain: Vec<u8>,
    /// Ciphertext on its way to the socket.
    cipher: Vec<u8>,
}

/// What a finished handshake tells the rest of the connection.
pub struct Negotiated {
    pub version: Option<rustls::ProtocolVersion>,
    pub resumed: bool,
    /// The verified client certificate's subject (RFC 4514), with mTLS.
    pub client_subject: Option<String>,
    /// The client chose `h2` in ALPN.
    pub h2: bool,
}

impl Negotiated {
    /// As nginx's `$ssl_protocol` spells it.
    pub fn version_name(&self) -> &'static str {
        match self.version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        }
    }
}

/// Runs the server handshake over the two TCP halves within `timeout`;
/// `abort` (the connection's read canceller) lets a drain end it.
pub async fn accept(
    tcp_r: Reader,
    tcp_w: Writer,
    config: Arc<ServerConfig>,
    timeout: Duration,
    abort: &Abort,
    write_abort: &Abort,
) -> Result<(TlsReader, TlsWriter, Negotiated), HandshakeError> {
    let conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
    handshake(
        Connection::Server(conn),
        tcp_r,
        tcp_w,
        timeout,
        abort,
        write_abort,
    )
    .await
}

/// Runs the client handshake to a backend named `name` within `timeout`.
pub async fn connect(
    tcp_r: Reader,
    tcp_w: Writer,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
    abort: &Abort,
    write_abort: &Abort,
) -> Result<(TlsReader, TlsWriter), HandshakeError> {
    let conn = ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
    let (r, w, _) = handshake(
        Connection::Client(conn),
        tcp_r,
        tcp_w,
        timeout,
        abort,
        write_abort,
    )
    .await?;
    Ok((r, w))
}

/// Drives either side's handshake with the worker's own reads and writes.
async fn handshake(
    mut conn: Connection,
    mut tcp_r: Reader,
    mut tcp_w: Writer,
    timeout: Duration,
    abort: &Abort,
    write_abort: &Abort,
) -> Result<(TlsReader, TlsWriter, Negotiated), HandshakeError> {
    let deadline = Instant::now() + timeout;
    let server = matches!(conn, Connection::Server(_));
    let mut cipher_in = Vec::with_capacity(CIPHERTEXT_READ_BYTES);
    let mut cipher_out = Vec::new();
    let mut first = true;
    let mut failed = None;
    while conn.is_handshaking() && failed.is_none() {
        if conn.wants_write() {
            drain_tls(&mut conn, &mut cipher_out);
            let left = deadline.saturating_duration_since(Instant::now());
            let len = cipher_out.len();
            let (res, back) = send_range(&mut tcp_w, cipher_out, 0..len, left, write_abort).await;
            cipher_out = back;
            match res {
                Ok(()) => continue,
                Err(WriteFail::TimedOut) => return Err(HandshakeError::TimedOut),
                Err(_) => return Err(HandshakeError::Closed),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeError::TimedOut);
        }
        match read_more(
            &mut tcp_r,
            &mut cipher_in,
            CIPHERTEXT_READ_BYTES,
            left,
            abort,
        )
        .await
        {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) => {}
            Err(ReadFail::TimedOut) => return Err(HandshakeError::TimedOut),
            Err(_) => return Err(HandshakeError::Closed),
        }
        if first && server && looks_like_plain_http(&cipher_in) {
            let bytes = PLAIN_HTTP_RESPONSE.as_bytes();
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = send_range(&mut tcp_w, bytes, 0..bytes.len(), left, write_abort).await;
            return Err(HandshakeError::PlainHttp);
        }
        first = false;
        if let Err(e) = feed(&mut conn, &mut cipher_in) {
            // The alert rustls queued goes out before the close.
            failed = Some(e);
        }
    }
    // The last flight (and TLS 1.3 session tickets) goes out now, ahead of
    // the response, or the alert of a failed handshake.
    if conn.wants_write() {
        drain_tls(&mut conn, &mut cipher_out);
        let left = deadline.saturating_duration_since(Instant::now());
        let len = cipher_out.len();
        let (res, back) = send_range(&mut tcp_w, cipher_out, 0..len, left, write_abort).await;
        cipher_out = back;
        if res.is_err() && failed.is_none() {
            return Err(HandshakeError::Closed);
        }
    }
    if let Some(e) = failed {
        return Err(HandshakeError::Tls(e));
    }
    let negotiated = Negotiated {
        version: conn.protocol_version(),
        resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
        client_subject: conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject_of(leaf)),
        h2: conn.alpn_protocol() == Some(b"h2"),
    };
    let conn = Rc::new(RefCell::new(conn));
    Ok((
        TlsReader {
            tcp: tcp_r,
            conn: conn.clone(),
            cipher: cipher_in,
            eof: false,
        },
        TlsWriter {
            tcp: tcp_w,
            conn,
            plain: Vec::new(),
            cipher: cipher_out,
        },
        negotiated,
    ))
}

/// A certificate's subject as RFC 4514 text, fit for a header value: any
/// byte outside printable ASCII becomes `?` (a subject is the client's to
/// choose, within what its CA signed).
fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let subject = cert.subject().to_string();
    Some(
        subject
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect(),
    )
}

/// What nginx answers in the same case: the client speaks HTTP to a TLS
/// port, so it can read a plain response, and a human reads the reason.
const PLAIN_HTTP_RESPONSE: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 41\r\nConnection: close\r\n\r\nplain HTTP request sent to an HTTPS port\n";

/// A TLS record starts with a content type byte (20..=24); an HTTP request
/// starts with a method token.
fn looks_like_plain_http(first_bytes: &[u8]) -> bool {
    first_bytes.first().is_some_and(|b| b.is_ascii_uppercase())
}

/// Replaces `out` with every TLS record rustls has queued to send.
fn drain_tls(conn: &mut Connection, out: &mut Vec<u8>) {
    out.clear();
    while conn.wants_write() {
        // Writing into a Vec cannot fail; stop rather than spin if it did.
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// Hands buffered ciphertext to rustls and processes it.
fn feed(conn: &mut Connection, cipher: &mut Vec<u8>) -> Result<rustls::IoState, rustls::Error> {
    let mut taken = 0;
    while taken < cipher.len() {
        match conn.read_tls(&mut &cipher[taken..]) {
            Ok(0) => break,
            Ok(n) => taken += n,
            // rustls holds as much as it will before it is processed.
            Err(_) => break,
        }
        if taken < cipher.len() {
            conn.process_new_packets()?;
        }
    }
    cipher.drain(..taken);
    conn.process_new_packets()
}

impl TlsReader {
    /// Whether anything the peer sent is still unread: decrypted bytes
    /// rustls holds, or ciphertext not yet handed to it. A pooled
    /// connection must hold neither.
    pub fn holds_unread(&mut self) -> bool {
        if !self.cipher.is_empty() || self.eof {
            return true;
        }
        match self.conn.borrow_mut().process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    /// Waits until there is something to read, as
    /// [`crate::io::wait_readable_by`]: at once when rustls holds decrypted
    /// bytes or ciphertext is buffered (a record that came with the last
    /// one), else on the socket until `deadline` on `timer`, with the
    /// ciphertext buffer given back while it waits (rustls keeps a partial
    /// record in its own).
    pub async fn wait_readable_by(
        &mut self,
        deadline: Option<(&Rc<crate::idle::IdleClock>, Instant)>,
        abort: &Abort,
    ) -> Result<(), ReadFail> {
        if self.holds_unread() {
            return Ok(());
        }
        self.cipher = Vec::new();
        wait_readable_by(&self.tcp, deadline, abort).await
    }

    /// The TCP connection under TLS (a lingering close drops what arrives
    /// on it without decrypting).
    pub fn tcp(&self) -> &Reader {
        &self.tcp
    }

    /// As [`read_more`] on a plain connection: appends decrypted bytes to
    /// `buf`, `Ok(0)` at the end of the stream (close_notify, or a TCP close:
    /// HTTP framing, not TLS, tells a truncated message).
    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<usize, ReadFail> {
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            let state = feed(&mut self.conn.borrow_mut(), &mut self.cipher)
                .map_err(|_| ReadFail::Io(io::ErrorKind::InvalidData))?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                if buf.capacity() - buf.len() < min_spare {
                    buf.reserve(min_spare.max(buf.capacity()));
                }
                let start = buf.len();
                let n = ready.min(buf.capacity() - start);
                buf.resize(start + n, 0);
                let read = self.conn.borrow_mut().reader().read(&mut buf[start..]);
                return match read {
                    Ok(got) => {
                        buf.truncate(start + got);
                        Ok(got)
                    }
                    Err(e) => {
                        buf.truncate(start);
                        Err(ReadFail::Io(e.kind()))
                    }
                };
            }
            if state.peer_has_closed() || self.eof {
                return Ok(0);
            }
            // The usual case is one network read per call: it gets the whole
            // timeout without a clock read. A record that comes in pieces
            // starts a deadline at the second read, so one call never waits
            // more than twice `timeout` (a slow drip cannot stretch it).
            let left = match deadline {
                None => {
                    deadline = Some(None);
                    timeout
                }
                Some(None) => {
                    let now = Instant::now();
                    deadline = Some(Some(now + timeout));
                    timeout
                }
                Some(Some(at)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ReadFail::TimedOut);
                    }
                    left
                }
            };
            match read_more(
                &mut self.tcp,
                &mut self.cipher,
                CIPHERTEXT_READ_BYTES,
                left,
                abort,
            )
            .await
            {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl TlsWriter {
    /// As [`crate::io::send_gather`]: every segment of `g`, encrypted in
    /// records of up to 16 KiB; each socket write must make progress
    /// within `timeout`.
    pub async fn send_gather(
        &mut self,
        mut g: Gather,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, Gather) {
        while !g.is_written() {
            self.plain.clear();
            g.take_into(&mut self.plain, PLAINTEXT_RECORD_BYTES);
            if self.plain.is_empty() {
                // A segment past its buffer, as a writev would refuse it.
                return (Err(WriteFail::Io(io::ErrorKind::InvalidInput)), g);
            }
            if let Err(e) = self.encrypt_and_send(timeout, abort).await {
                return (Err(e), g);
            }
        }
        g.clear_segments();
        (Ok(()), g)
    }

    /// As [`crate::io::send_range`].
    pub async fn send_range<B: IoBuf>(
        &mut self,
        buf: B,
        range: std::ops::Range<usize>,
        timeout: Duration,
        abort: &Abort,
    ) -> (Result<(), WriteFail>, B) {
        // SAFETY: `IoBuf` promises `bytes_init` initialised bytes at
        // `read_ptr` while the buffer is alive and unmoved; it is only read
        // here, before any await.
        let bytes = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let Some(mut bytes) = bytes.get(range) else {
            return (Err(WriteFail::Io(io::ErrorKind::InvalidInput)), buf);
        };
        while !bytes.is_empty() {
            let n = bytes.len().min(PLAINTEXT_RECORD_BYTES);
            self.plain.clear();
            self.plain.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if let Err(e) = self.encrypt_and_send(timeout, abort).await {
                return (Err(e), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Encrypts `self.plain` and writes it, with whatever else rustls has
    /// queued (alerts, KeyUpdate answers).
    async fn encrypt_and_send(
        &mut self,
        timeout: Duration,
        abort: &Abort,
    ) -> Result<(), WriteFail> {
        {
            let mut conn = self.conn.borrow_mut();
            if !self.plain.is_empty() {
                conn.writer()
                    .write_all(&self.plain)
                    .map_err(|e| WriteFail::Io(e.kind()))?;
            }
            drain_tls(&mut conn, &mut self.cipher);
        }
        let len = self.cipher.len();
        let cipher = std::mem::take(&mut self.cipher);
        let (res, back) = send_range(&mut self.tcp, cipher, 0..len, timeout, abort).await;
        self.cipher = back;
        res
    }

    /// Gives back the plaintext and ciphertext buffers between writes (an
    /// idle tunnel): every write sends all it encrypted before it returns,
    /// so neither holds anything still due.
    pub fn release_idle(&mut self) {
        self.plain = Vec::new();
        self.cipher = Vec::new();
    }

    /// Half-closes the TCP connection under TLS, once close_notify went.
    pub async fn shutdown_tcp(&mut self) -> io::Result<()> {
        monoio::io::AsyncWriteRent::shutdown(&mut self.tcp).await
    }

    /// Sends close_notify (RFC 8446 §6.1) before the connection closes, so
    /// the client can tell a complete close from a cut.
    pub async fn close(&mut self, timeout: Duration, abort: &Abort) {
        self.conn.borrow_mut().send_close_notify();
        self.plain.clear();
        let _ = self.encrypt_and_send(timeout, abort).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(name: &str) -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(CertifiedKey::from_der(vec![cert.cert.der().clone()], key, &provider).unwrap())
    }

    #[test]
    fn sni_prefers_exact_then_one_level_wildcard_then_the_first() {
        let (first, exact, wild) = (key_for("a.test"), key_for("x.b.test"), key_for("*.b.test"));
        let mut r = SniResolver::default();
        r.add(first.clone(), &["a.test".into()]);
        r.add(exact.clone(), &["x.b.test".into()]);
        r.add(wild.clone(), &["*.b.test".into()]);
        assert!(Arc::ptr_eq(r.find("x.b.test").unwrap(), &exact));
        assert!(Arc::ptr_eq(r.find("y.b.test").unwrap(), &wild));
        assert!(Arc::ptr_eq(r.find("y.b.test.").unwrap(), &wild));
        // A wildcard covers one label only.
        assert!(r.find("z.y.b.test").is_none());
        assert!(r.find("b.test").is_none());
        assert!(Arc::ptr_eq(r.default.as_ref().unwrap(), &first));
    }

    #[test]
    fn plain_http_is_told_from_a_client_hello() {
        assert!(looks_like_plain_http(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_plain_http(&[22, 3, 1, 0, 200]));
        assert!(!looks_like_plain_http(b""));
    }

    #[test]
    fn the_plain_http_answer_is_framed_by_its_length() {
        let (head, body) = PLAIN_HTTP_RESPONSE.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
