//! The proxies under comparison and the equivalent configs the runner writes
//! for them: one worker, a keep-alive upstream pool, no access log, the same
//! single route to the backend. These are the configs of
//! bench/scripts/compare.sh, so the two measurements stay comparable.

use crate::process::RunningProcess;
use crate::{backend, find_program, pinned_command, BenchError};
use std::path::{Path, PathBuf};

/// Idle keep-alive upstream connections each proxy may keep: above any
/// `--connections` the runner is used with, so no proxy reconnects mid-run.
pub const UPSTREAM_KEEPALIVE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    Ringgate,
    Nginx,
    Haproxy,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 3] = [ProxyKind::Ringgate, ProxyKind::Nginx, ProxyKind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Ringgate => "ringgate",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }

    pub fn parse(s: &str) -> Option<ProxyKind> {
        ProxyKind::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The proxy's binary, or why it is skipped (a note for the report).
    pub fn locate(self, ringgate_bin: Option<&Path>) -> Result<PathBuf, String> {
        match self {
            ProxyKind::Ringgate => ringgate_bin
                .map(Path::to_path_buf)
                .or_else(|| find_built_binary("ringgate"))
                .ok_or_else(|| {
                    "ringgate skipped: no binary (cargo build --release -p ringgate, \
                     or set RINGGATE_BIN)"
                        .to_owned()
                }),
            ProxyKind::Nginx | ProxyKind::Haproxy => find_program(self.name()).ok_or_else(|| {
                format!(
                    "{} skipped: not installed (apt-get install nginx haproxy)",
                    self.name()
                )
            }),
        }
    }

    /// The first line of the proxy's version output, for the report.
    pub fn version(self, bin: &Path) -> String {
        let arg = match self {
            ProxyKind::Ringgate => "--version",
            ProxyKind::Nginx => "-v",
            ProxyKind::Haproxy => "-v",
        };
        std::process::Command::new(bin)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| {
                // nginx prints its version on stderr.
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_owned())
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "unknown version".to_owned())
    }

    /// Writes this proxy's config into `work` and returns its path.
    pub fn write_config(
        self,
        work: &Path,
        port: u16,
        backend_port: u16,
    ) -> Result<PathBuf, BenchError> {
        let (file, text) = match self {
            ProxyKind::Ringgate => ("ringgate.toml", ringgate_conf(port, backend_port)),
            ProxyKind::Nginx => ("nginx-proxy.conf", nginx_conf(port, backend_port, work)),
            ProxyKind::Haproxy => ("haproxy.cfg", haproxy_conf(port, backend_port)),
        };
        let path = work.join(file);
        std::fs::write(&path, text).map_err(BenchError::io(path.display().to_string()))?;
        Ok(path)
    }

    /// Starts the proxy on `cpus` with the config at `conf`.
    pub fn start(
        self,
        bin: &Path,
        conf: &Path,
        cpus: &[usize],
        work: &Path,
    ) -> Result<RunningProcess, BenchError> {
        let mut cmd = pinned_command(bin, cpus);
        match self {
            ProxyKind::Ringgate => {
                cmd.arg("-c").arg(conf);
            }
            ProxyKind::Nginx => {
                cmd.arg("-p")
                    .arg(work)
                    .arg("-e")
                    .arg(work.join("nginx-proxy.err"))
                    .arg("-c")
                    .arg(conf);
            }
            ProxyKind::Haproxy => {
                // -db: stay in the foreground, one process.
                cmd.arg("-db").arg("-f").arg(conf);
            }
        }
        let log = work.join(format!("{}.log", self.name()));
        RunningProcess::spawn(self.name(), cmd, &log)
    }
}

fn ringgate_conf(port: u16, backend_port: u16) -> String {
    format!(
        "[server]\nworkers = 1\n\n\
         [[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{port}\"\n\n\
         [[routes]]\nlistener = \"web\"\nupstream = \"b\"\n\n\
         [[upstreams]]\nname = \"b\"\n\
         backends = [{{ address = \"127.0.0.1:{backend_port}\" }}]\n\
         pool = {{ max_idle_per_backend = {UPSTREAM_KEEPALIVE} }}\n"
    )
}

fn nginx_conf(port: u16, backend_port: u16, work: &Path) -> String {
    let w = work.display();
    format!(
        "worker_processes 1; daemon off; pid {w}/nginx-proxy.pid; error_log {w}/nginx-proxy.err warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 120s;\n\
         {temps}\
         upstream b {{ server 127.0.0.1:{backend_port}; keepalive {UPSTREAM_KEEPALIVE}; keepalive_requests 10000000; }}\n\
         server {{ listen 127.0.0.1:{port} reuseport;\n\
         location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }} }} }}\n",
        temps = backend::nginx_temp_paths(work, "proxy"),
    )
}

fn haproxy_conf(port: u16, backend_port: u16) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         \x20 http-reuse always\n  option http-keep-alive\n\
         frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n\
         backend b\n  server s1 127.0.0.1:{backend_port}\n"
    )
}

/// A binary built in this workspace: next to the running executable (the
/// runner in target/release, a test in target/debug/deps), else in the
/// workspace's target/release then target/debug.
pub fn find_built_binary(name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir.clone());
        if let Some(up) = dir.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    dirs.push(target.join("release"));
    dirs.push(target.join("debug"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_names_both_ports() {
        let work = Path::new("/tmp/w");
        for text in [
            ringgate_conf(18080, 19000),
            nginx_conf(18080, 19000, work),
            haproxy_conf(18080, 19000),
        ] {
            assert!(text.contains("127.0.0.1:18080"), "{text}");
            assert!(text.contains("127.0.0.1:19000"), "{text}");
        }
        assert!(haproxy_conf(1, 2).contains("\n  http-reuse always\n"));
    }

    #[test]
    fn proxy_names_round_trip() {
        for p in ProxyKind::ALL {
            assert_eq!(ProxyKind::parse(p.name()), Some(p));
        }
        assert_eq!(ProxyKind::parse("envoy"), None);
    }
}
