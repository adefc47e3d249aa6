//! Loopback HTTP/1.1 servers for the integration tests, on plain std threads
//! (one per connection), with the misbehaviours ringload must measure or
//! report: a stall, garbage, silence, resets, chunked and close-delimited
//! bodies. Each binds 127.0.0.1:0 and serves until the test process exits.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
pub enum Behaviour {
    /// `200 ok` with Content-Length; from request number `at` on, every
    /// response waits until `len` after that request arrived.
    Stall { at: u64, len: Duration },
    /// Answers every request after `delay`.
    Fixed(Duration),
    /// A chunked body in three chunks.
    Chunked,
    /// A body delimited by closing the connection.
    CloseDelimited,
    /// Not HTTP at all.
    Garbage,
    /// Reads, never answers.
    Silent,
    /// Closes the connection, unanswered, on every `n`th request.
    ResetEvery(u64),
    /// Echoes the request target as the body (what `--check-id` needs),
    /// a byte per write when `split`, as chunks when `chunked`.
    EchoTarget { split: bool, chunked: bool },
    /// Echoes the target, except request 20k answers with the probe's id
    /// (another request's) and request 20k + 10 with no id at all.
    CrossedIds,
}

pub struct Server {
    pub addr: SocketAddr,
    /// Requests seen (complete heads), all connections.
    pub requests: Arc<AtomicU64>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}/test", self.addr)
    }
}

/// Reads until `buf` holds a complete request head and drops it from `buf`;
/// false when the peer closed or the read failed first.
pub fn next_head(s: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..p + 4);
            return true;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs the built ringload on one unpinned core, quietly; returns its output
/// and how long it took.
pub fn ringload(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ringload"))
        .args(args)
        .args(["--cores", "1", "--no-pin", "--quiet"])
        .output()
        .expect("run ringload");
    (out, t.elapsed())
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn start(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let requests = Arc::new(AtomicU64::new(0));
    let stall_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let counter = requests.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let counter = counter.clone();
            let stall_until = stall_until.clone();
            thread::spawn(move || match behaviour {
                Behaviour::EchoTarget { .. } | Behaviour::CrossedIds => {
                    serve_echo(stream, behaviour, &counter)
                }
                _ => serve(stream, behaviour, &counter, &stall_until),
            });
        }
    });
    Server { addr, requests }
}

fn serve(
    mut s: TcpStream,
    b: Behaviour,
    counter: &AtomicU64,
    stall_until: &Mutex<Option<Instant>>,
) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    // One complete head per iteration (the tests send no bodies).
    while next_head(&mut s, &mut buf) {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let reply: &[u8] = match b {
            Behaviour::Stall { at, len } => {
                let until = {
                    let mut g = stall_until.lock().unwrap();
                    if n == at {
                        *g = Some(Instant::now() + len);
                    }
                    *g
                };
                if let Some(u) = until {
                    let now = Instant::now();
                    if u > now {
                        thread::sleep(u - now);
                    }
                }
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            Behaviour::Fixed(d) => {
                if !d.is_zero() {
                    thread::sleep(d);
                }
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
            Behaviour::Chunked => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n"
            }
            Behaviour::CloseDelimited => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close");
                return;
            }
            Behaviour::Garbage => {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
                return;
            }
            Behaviour::Silent => {
                thread::sleep(Duration::from_secs(30));
                return;
            }
            Behaviour::ResetEvery(k) => {
                if n.checked_rem(k) == Some(0) {
                    return;
                }
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
            }
            Behaviour::EchoTarget { .. } | Behaviour::CrossedIds => unreachable!("serve_echo"),
        };
        if s.write_all(reply).is_err() {
            return;
        }
    }
}

/// Like `next_head`, returning the request target.
fn next_target(s: &mut impl Read, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            buf.drain(..p + 4);
            return head.split(' ').nth(1).map(str::to_string);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn serve_echo(mut s: TcpStream, b: Behaviour, counter: &AtomicU64) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    while let Some(target) = next_target(&mut s, &mut buf) {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let body = match b {
            Behaviour::CrossedIds if n.is_multiple_of(20) => {
                "/test?rid=00000000000000000000".into()
            }
            Behaviour::CrossedIds if n % 20 == 10 => "no id here".into(),
            _ => target,
        };
        let (split, chunked) = match b {
            Behaviour::EchoTarget { split, chunked } => (split, chunked),
            _ => (false, false),
        };
        let reply = if chunked {
            let (a, z) = body.split_at(body.len() / 2);
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{z}\r\n0\r\n\r\n",
                a.len(),
                z.len()
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let written = if split {
            reply.as_bytes().chunks(1).try_for_each(|b| s.write_all(b))
        } else {
            s.write_all(reply.as_bytes())
        };
        if written.is_err() {
            return;
        }
    }
}

/// A port on loopback that nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr")
}

/// Exact quantile of a sorted sample, HdrHistogram's way: the smallest value
/// with at least q·n values at or below it.
pub fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
