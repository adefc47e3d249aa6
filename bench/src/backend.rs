//! The upstream every proxy forwards to: nginx answering `return 200` when
//! nginx is installed (the same backend as bench/scripts/compare.sh), an
//! embedded thread-per-connection server otherwise.

use crate::process::RunningProcess;
use crate::{find_program, pinned_command, BenchError};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The body every backend answers with (19 bytes, as in compare.sh).
pub const BODY: &[u8] = b"hello from backend\n";

/// Largest request head the embedded backend reads; the runner's requests
/// are a few dozen bytes, so anything bigger is a bug and closes the
/// connection.
const EMBEDDED_MAX_HEAD_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Nginx,
    Embedded,
}

/// A running backend; stopped when dropped.
#[derive(Debug)]
pub enum Backend {
    Nginx { port: u16, process: RunningProcess },
    Embedded { port: u16, stop: Arc<AtomicBool> },
}

impl Backend {
    pub fn start(
        kind: BackendKind,
        port: u16,
        cpus: &[usize],
        work: &Path,
    ) -> Result<Backend, BenchError> {
        match kind {
            BackendKind::Nginx => {
                let nginx = find_program("nginx")
                    .ok_or_else(|| BenchError::Setup("nginx not installed".into()))?;
                let conf = work.join("backend-nginx.conf");
                std::fs::write(&conf, nginx_backend_conf(port, work))
                    .map_err(BenchError::io(conf.display().to_string()))?;
                let mut cmd = pinned_command(&nginx, cpus);
                cmd.arg("-p")
                    .arg(work)
                    .arg("-e")
                    .arg(work.join("backend-nginx.err"))
                    .arg("-c")
                    .arg(&conf);
                let process =
                    RunningProcess::spawn("nginx backend", cmd, &work.join("backend-nginx.log"))?;
                Ok(Backend::Nginx { port, process })
            }
            BackendKind::Embedded => {
                let listener = TcpListener::bind(("127.0.0.1", port))
                    .map_err(BenchError::io(format!("embedded backend bind :{port}")))?;
                let stop = Arc::new(AtomicBool::new(false));
                let cpus = cpus.to_vec();
                let stop_accept = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name("backend-accept".into())
                    .spawn(move || accept_loop(listener, &cpus, &stop_accept))
                    .map_err(BenchError::io("spawning backend thread"))?;
                Ok(Backend::Embedded { port, stop })
            }
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Backend::Nginx { port, .. } | Backend::Embedded { port, .. } => *port,
        }
    }

    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self {
            Backend::Nginx { process, .. } => process.check_alive(),
            Backend::Embedded { .. } => Ok(()),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Embedded { port, stop } = self {
            stop.store(true, Ordering::Relaxed);
            // Wake the accept loop so it sees the flag.
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
    }
}

/// nginx as a plain origin: one worker, no logs, keep-alive without limit.
pub fn nginx_backend_conf(port: u16, work: &Path) -> String {
    let w = work.display();
    format!(
        "worker_processes 1; daemon off; master_process on; pid {w}/backend-nginx.pid;\n\
         error_log {w}/backend-nginx.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 120s;\n\
         {temps}\
         server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 \"hello from backend\\n\"; }} }} }}\n",
        temps = nginx_temp_paths(work, "backend"),
    )
}

/// nginx checks its temp directories at start; keep them in the run's work
/// directory so no system path needs to exist or be writable.
pub fn nginx_temp_paths(work: &Path, tag: &str) -> String {
    let w = work.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .map(|t| format!("  {t}_temp_path {w}/{tag}-{t}-temp;\n"))
        .concat()
}

fn accept_loop(listener: TcpListener, cpus: &[usize], stop: &AtomicBool) {
    let cores: Vec<core_affinity::CoreId> = cpus
        .iter()
        .map(|&id| core_affinity::CoreId { id })
        .collect();
    for (i, conn) in listener.incoming().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let core = cores.get(i % cores.len().max(1)).copied();
        // A thread per connection: the proxies keep a few dozen upstream
        // connections, and this backend only stands in when nginx is absent.
        let _ = std::thread::Builder::new()
            .name("backend-conn".into())
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                serve(conn);
            });
    }
}

/// Answers every request head on the connection with 200 and [`BODY`].
/// Requests are assumed bodiless (the runner only sends GETs).
fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let response = [
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            BODY.len()
        )
        .as_bytes(),
        BODY,
    ]
    .concat();
    let mut buf = vec![0u8; EMBEDDED_MAX_HEAD_BYTES];
    let mut filled = 0;
    loop {
        let n = match conn.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        filled += n;
        let mut start = 0;
        let mut out = Vec::new();
        while let Some(end) = find_head_end(&buf[start..filled]) {
            out.extend_from_slice(&response);
            start += end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if !out.is_empty() && conn.write_all(&out).is_err() {
            break;
        }
        if filled == buf.len() {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// Length of the head at the start of `buf` (through the blank line).
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_backend_answers_pipelined_requests() {
        let port = crate::free_port().expect("port");
        let work = std::env::temp_dir();
        let _backend = Backend::start(BackendKind::Embedded, port, &[], &work).expect("start");
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        conn.write_all(&[&req[..], &req[..]].concat())
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.windows(BODY.len()).filter(|w| *w == BODY).count() < 2 {
            let n = conn.read(&mut buf).expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}
