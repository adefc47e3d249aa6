//! A loopback HTTP/1.1 backend that stalls: answers `200 ok` at once, except
//! that every response due in the window [AT, AT + LEN) after its first
//! request waits until the window ends. The backend of the "stall in the
//! middle of a run" figure in docs/BENCHMARKS.md.
//!
//! `cargo run --release -p ringgate-loadgen --example stall_server -- PORT AT_S LEN_S`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

fn serve(mut s: TcpStream, first: Arc<OnceLock<Instant>>, at: Duration, len: Duration) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..end);
        let start = *first.get_or_init(Instant::now);
        let (from, until) = (start + at, start + at + len);
        let now = Instant::now();
        if now >= from && now < until {
            thread::sleep(until - now);
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            .is_err()
        {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let port: u16 = arg(1, "18090").parse().unwrap_or(18090);
    let at = Duration::from_secs_f64(arg(2, "2.5").parse().unwrap_or(2.5));
    let len = Duration::from_secs_f64(arg(3, "1").parse().unwrap_or(1.0));
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stall_server: bind 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "stall_server: 127.0.0.1:{port}, stalls [{at:?}, {:?}) after the first request",
        at + len
    );
    let first = Arc::new(OnceLock::new());
    for stream in listener.incoming().flatten() {
        let first = first.clone();
        thread::spawn(move || serve(stream, first, at, len));
    }
}
