//! Loopback raw-TCP backends for the `tcp` listener tests: std threads, one
//! per connection, each doing one [`TcpBehaviour`] and recording what it
//! saw (bytes received, a PROXY header read first when asked), so a test
//! can check both ends of a tunnel. Every read and write has a timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Per-read and per-write timeout of a backend connection: longer than any
/// pause a test makes, short enough that a stuck thread ends.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub enum TcpBehaviour {
    /// Writes back every byte; at end of stream, half-closes its side too.
    Echo,
    /// Writes `NAME\n`, then echoes.
    Greet,
    /// Reads to end of stream, then writes `N <fnv1a64 hex>\n` of what it
    /// read and closes: the client's half-close must reach it, and its
    /// answer must still get back.
    CountThenReply,
    /// Writes `bytes`, half-closes its side, then reads to end of stream
    /// and records how much arrived: the client must see the end of
    /// stream and still be able to send.
    SendThenRead(Vec<u8>),
}

/// What one connection saw.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// The PROXY header it opened with (with `expect_proxy_protocol`).
    pub proxy_header: Option<Vec<u8>>,
    /// Bytes received from the proxy, after any PROXY header.
    pub received: u64,
    /// Whether the proxy's end of stream arrived (not a reset or timeout).
    pub saw_eof: bool,
}

struct Shared {
    name: String,
    behaviour: TcpBehaviour,
    proxy_protocol: bool,
    connections: AtomicUsize,
    sessions: Mutex<Vec<Session>>,
    stop: AtomicBool,
}

/// A running backend; stops accepting on drop.
pub struct TcpBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TcpBackend {
    pub fn start(name: &str, behaviour: TcpBehaviour) -> TcpBackend {
        TcpBackend::start_with(name, behaviour, false)
    }

    /// Like `start`, reading a PROXY v1 or v2 header at the start of each
    /// connection first.
    pub fn start_with(name: &str, behaviour: TcpBehaviour, proxy_protocol: bool) -> TcpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp backend");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behaviour,
            proxy_protocol,
            connections: AtomicUsize::new(0),
            sessions: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name(format!("tcp-backend-{name}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    s.connections.fetch_add(1, Ordering::SeqCst);
                    let s = s.clone();
                    let _ = thread::Builder::new()
                        .name(format!("tcp-backend-{}-conn", s.name))
                        .spawn(move || {
                            let session = serve(stream, &s).unwrap_or_default();
                            s.sessions.lock().unwrap().push(session);
                        });
                }
            })
            .expect("spawn tcp backend");
        TcpBackend { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The connections that have ended, in the order they ended.
    pub fn sessions(&self) -> Vec<Session> {
        self.shared.sessions.lock().unwrap().clone()
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// FNV-1a, 64 bits: what `CountThenReply` answers, for the test to compare
/// with what it sent.
pub fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<Session> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut session = Session::default();
    if shared.proxy_protocol {
        session.proxy_header = Some(read_proxy_header(&mut stream)?);
    }
    let mut buf = vec![0u8; 64 * 1024];
    match &shared.behaviour {
        TcpBehaviour::Echo | TcpBehaviour::Greet => {
            if let TcpBehaviour::Greet = shared.behaviour {
                stream.write_all(format!("{}\n", shared.name).as_bytes())?;
            }
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    session.saw_eof = true;
                    stream.shutdown(Shutdown::Write)?;
                    return Ok(session);
                }
                session.received += n as u64;
                stream.write_all(&buf[..n])?;
            }
        }
        TcpBehaviour::CountThenReply => {
            let mut hash = FNV_OFFSET;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                session.received += n as u64;
                hash = fnv1a64(hash, &buf[..n]);
            }
            session.saw_eof = true;
            stream.write_all(format!("{} {hash:016x}\n", session.received).as_bytes())?;
            Ok(session)
        }
        TcpBehaviour::SendThenRead(bytes) => {
            stream.write_all(bytes)?;
            stream.shutdown(Shutdown::Write)?;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    session.saw_eof = true;
                    return Ok(session);
                }
                session.received += n as u64;
            }
        }
    }
}

/// A v1 line or a v2 header, read byte by byte so nothing after it is taken.
fn read_proxy_header(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while header.len() < 16 {
        stream.read_exact(&mut byte)?;
        header.push(byte[0]);
        if header.ends_with(b"\r\n") && header.starts_with(b"PROXY ") {
            return Ok(header);
        }
    }
    if header.starts_with(b"PROXY ") {
        while !header.ends_with(b"\r\n") && header.len() < 107 {
            stream.read_exact(&mut byte)?;
            header.push(byte[0]);
        }
        return Ok(header);
    }
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest)?;
    header.extend_from_slice(&rest);
    Ok(header)
}
