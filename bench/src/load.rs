//! Load tools the runner drives, behind one interface: ringload (the
//! project's own, open- and closed-loop, coordinated-omission-corrected
//! latency), wrk (closed-loop only) and a built-in closed-loop client, the
//! last resort that keeps `--quick` working on a machine with neither.
//!
//! Each run returns a [`LoadReport`]; the tools' own outputs are parsed
//! here and nowhere else.

use crate::{pinned_command, BenchError};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Slowest response the built-in client records; slower ones saturate here.
const BUILTIN_LATENCY_US_MAX: u64 = 60_000_000;
/// Largest response the built-in client reads (head + body).
const BUILTIN_MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// A response not complete within this counts as a timeout error.
const BUILTIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum LoadTool {
    Ringload(PathBuf),
    Wrk(PathBuf),
    Builtin,
}

/// One load run's request.
#[derive(Debug, Clone)]
pub struct LoadSpec<'a> {
    pub url: &'a str,
    pub connections: usize,
    pub duration: Duration,
    /// Fixed offered rate in requests/s (open loop); `None` = closed-loop max.
    pub rate: Option<f64>,
    /// CPUs the load may run on.
    pub cpus: &'a [usize],
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one load run measured, whatever the tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Completed responses, any status.
    pub requests: u64,
    pub duration_s: f64,
    /// Responses with a status other than 2xx.
    pub non_2xx: u64,
    /// Connect, timeout, reset and parse errors.
    pub errors: u64,
    pub latency_us: Percentiles,
    /// Latency measured from each request's intended send time (open loop
    /// with coordinated-omission correction), not from when it was sent.
    pub corrected: bool,
}

impl LoadReport {
    pub fn requests_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }
}

impl LoadTool {
    pub fn name(&self) -> &'static str {
        match self {
            LoadTool::Ringload(_) => "ringload",
            LoadTool::Wrk(_) => "wrk",
            LoadTool::Builtin => "built-in closed-loop client",
        }
    }

    /// Can run at a fixed offered rate (the latency ladder).
    pub fn open_loop(&self) -> bool {
        matches!(self, LoadTool::Ringload(_))
    }

    pub fn run(&self, spec: &LoadSpec<'_>, work: &Path) -> Result<LoadReport, BenchError> {
        match self {
            LoadTool::Ringload(bin) => run_ringload(bin, spec, work),
            LoadTool::Wrk(bin) => run_wrk(bin, spec, work),
            LoadTool::Builtin => run_builtin(spec),
        }
    }
}

// ---------------------------------------------------------------- ringload

/// ringload's `--json` report (the loadgen issue's contract). Fields the
/// runner does not use (timeline, send lag, run) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct RingloadJson {
    pub requests: u64,
    pub duration_s: f64,
    #[serde(default)]
    pub rate_target: Option<f64>,
    #[serde(default)]
    pub status: BTreeMap<String, u64>,
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    pub latency_us: RingloadLatency,
    #[serde(default)]
    pub latency_uncorrected_us: Option<RingloadLatency>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RingloadLatency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl RingloadJson {
    pub fn parse(text: &str) -> Result<RingloadJson, BenchError> {
        serde_json::from_str(text).map_err(|e| BenchError::Report {
            tool: "ringload".into(),
            why: e.to_string(),
        })
    }

    pub fn to_report(&self) -> LoadReport {
        let non_2xx = self
            .status
            .iter()
            .filter(|(code, _)| !code.starts_with('2'))
            .map(|(_, n)| n)
            .sum();
        let l = self.latency_us;
        LoadReport {
            requests: self.requests,
            duration_s: self.duration_s,
            non_2xx,
            errors: self.errors.values().sum(),
            latency_us: Percentiles {
                p50: l.p50,
                p99: l.p99,
                p999: l.p999,
                max: l.max,
            },
            corrected: self.rate_target.is_some(),
        }
    }
}

fn run_ringload(bin: &Path, spec: &LoadSpec<'_>, work: &Path) -> Result<LoadReport, BenchError> {
    let json = work.join("ringload.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = pinned_command(bin, spec.cpus);
    cmd.arg(spec.url)
        .arg("--connections")
        .arg(spec.connections.to_string())
        .arg("--duration")
        .arg(format!("{}ms", spec.duration.as_millis()))
        .arg("--cores")
        .arg(spec.cpus.len().max(1).to_string())
        .arg("--json")
        .arg(&json)
        .arg("--quiet");
    if let Some(rate) = spec.rate {
        cmd.arg("--rate").arg(format!("{}", rate.round() as u64));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io("running ringload"))?;
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: "ringload".into(),
            why: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let text =
        std::fs::read_to_string(&json).map_err(BenchError::io(json.display().to_string()))?;
    Ok(RingloadJson::parse(&text)?.to_report())
}

// --------------------------------------------------------------------- wrk

/// Makes wrk print one machine-readable line at the end, with the exact
/// percentiles (its text report rounds them and has no p99.9).
const WRK_REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RINGGATE-BENCH %d %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

/// Parses the line [`WRK_REPORT_LUA`] prints.
pub fn parse_wrk_line(stdout: &str) -> Result<LoadReport, BenchError> {
    let bad = |why: &str| BenchError::Report {
        tool: "wrk".into(),
        why: why.to_owned(),
    };
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RINGGATE-BENCH "))
        .ok_or_else(|| bad("no RINGGATE-BENCH line (did the Lua script run?)"))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(line))?;
    let [requests, duration_us, connect, read, write, status, timeout, p50, p99, p999, max] = n[..]
    else {
        return Err(bad(line));
    };
    Ok(LoadReport {
        requests,
        duration_s: duration_us as f64 / 1e6,
        non_2xx: status,
        errors: connect + read + write + timeout,
        latency_us: Percentiles {
            p50: p50 as f64,
            p99: p99 as f64,
            p999: p999 as f64,
            max: max as f64,
        },
        corrected: false,
    })
}

fn run_wrk(bin: &Path, spec: &LoadSpec<'_>, work: &Path) -> Result<LoadReport, BenchError> {
    if spec.rate.is_some() {
        return Err(BenchError::Setup("wrk runs closed-loop only".into()));
    }
    let script = work.join("report.lua");
    std::fs::write(&script, WRK_REPORT_LUA)
        .map_err(BenchError::io(script.display().to_string()))?;
    let threads = spec.cpus.len().clamp(1, spec.connections.max(1));
    // wrk takes whole seconds.
    let secs = spec.duration.as_secs_f64().ceil().max(1.0) as u64;
    let out = pinned_command(bin, spec.cpus)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{}", spec.connections))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(&script)
        .arg(spec.url)
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io("running wrk"))?;
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: "wrk".into(),
            why: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    parse_wrk_line(&String::from_utf8_lossy(&out.stdout))
}

// ----------------------------------------------------------------- built-in

/// Splits `http://host:port/path` into the address and the path.
pub fn split_url(url: &str) -> Result<(String, String), BenchError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| BenchError::Setup(format!("only http:// URLs: {url}")))?;
    let (addr, path) = rest
        .find('/')
        .map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    Ok((addr.to_owned(), path.to_owned()))
}

#[derive(Debug, Default)]
struct ClientTally {
    requests: u64,
    non_2xx: u64,
    errors: u64,
}

fn run_builtin(spec: &LoadSpec<'_>) -> Result<LoadReport, BenchError> {
    if spec.rate.is_some() {
        return Err(BenchError::Setup(
            "the built-in client runs closed-loop only".into(),
        ));
    }
    let (addr, path) = split_url(spec.url)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringgate-bench\r\n\r\n");
    let start = Instant::now();
    let deadline = start + spec.duration;
    let results: Vec<(ClientTally, Histogram<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..spec.connections.max(1))
            .map(|i| {
                let core = (!spec.cpus.is_empty()).then(|| core_affinity::CoreId {
                    id: spec.cpus[i % spec.cpus.len()],
                });
                let (addr, request) = (&addr, request.as_bytes());
                s.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    client_loop(addr, request, deadline)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut hist = new_histogram();
    let mut tally = ClientTally::default();
    for (t, h) in results {
        tally.requests += t.requests;
        tally.non_2xx += t.non_2xx;
        tally.errors += t.errors;
        // Same bounds on both sides, so adding cannot fail.
        let _ = hist.add(&h);
    }
    Ok(LoadReport {
        requests: tally.requests,
        duration_s: elapsed,
        non_2xx: tally.non_2xx,
        errors: tally.errors,
        latency_us: Percentiles {
            p50: hist.value_at_quantile(0.50) as f64,
            p99: hist.value_at_quantile(0.99) as f64,
            p999: hist.value_at_quantile(0.999) as f64,
            max: hist.max() as f64,
        },
        corrected: false,
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits: about 100 KiB, per connection.
    Histogram::new_with_bounds(1, BUILTIN_LATENCY_US_MAX, 3)
        .unwrap_or_else(|_| unreachable!("constant, valid histogram bounds"))
}

/// One keep-alive connection sending requests back to back until
/// `deadline`, reconnecting after an error.
fn client_loop(addr: &str, request: &[u8], deadline: Instant) -> (ClientTally, Histogram<u64>) {
    let mut tally = ClientTally::default();
    let mut hist = new_histogram();
    let mut buf = vec![0u8; BUILTIN_MAX_RESPONSE_BYTES];
    let mut conn: Option<TcpStream> = None;
    while Instant::now() < deadline {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(BUILTIN_IO_TIMEOUT));
                    conn.insert(s)
                }
                Err(_) => {
                    tally.errors += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match exchange(stream, request, &mut buf) {
            Ok((status, keep_alive)) => {
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.saturating_record(us.max(1));
                tally.requests += 1;
                if !(200..300).contains(&status) {
                    tally.non_2xx += 1;
                }
                if !keep_alive {
                    conn = None;
                }
            }
            Err(()) => {
                tally.errors += 1;
                conn = None;
            }
        }
    }
    (tally, hist)
}

/// Sends one request and reads one response with a Content-Length body.
/// Returns the status and whether the connection may be reused.
fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> Result<(u16, bool), ()> {
    conn.write_all(request).map_err(|_| ())?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(());
        }
        let n = conn.read(&mut buf[filled..]).map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        filled += n;
        let Some(head_len) = crate::backend::find_head_end(&buf[..filled]) else {
            continue;
        };
        let (status, body_len, keep_alive) = parse_response_head(&buf[..head_len]).ok_or(())?;
        let total = head_len + body_len;
        if total > buf.len() {
            return Err(());
        }
        while filled < total {
            let n = conn.read(&mut buf[filled..total]).map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            filled += n;
        }
        // Responses are never pipelined here, so nothing follows the body.
        return Ok((status, keep_alive));
    }
}

/// Status, Content-Length (0 when absent) and keep-alive of a response head.
fn parse_response_head(head: &[u8]) -> Option<(u16, usize, bool)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0;
    let mut keep_alive = status_line.starts_with("HTTP/1.1");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    Some((status, length, keep_alive))
}

/// One GET over a fresh connection: the status, or why there is none. Used
/// to wait until a backend or proxy answers before loading it.
pub fn probe(url: &str) -> Result<u16, String> {
    let (addr, path) = split_url(url).map_err(|e| e.to_string())?;
    let mut conn = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
    let _ = conn.set_read_timeout(Some(BUILTIN_IO_TIMEOUT));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut buf = vec![0u8; BUILTIN_MAX_RESPONSE_BYTES];
    exchange(&mut conn, request.as_bytes(), &mut buf)
        .map(|(status, _)| status)
        .map_err(|()| "no complete response".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report shaped as the loadgen issue specifies, extra fields included.
    const RINGLOAD_SAMPLE: &str = r#"{
      "requests": 120000, "duration_s": 2.0, "rate_target": 60000,
      "status": {"200": 119990, "502": 10},
      "errors": {"connect": 1, "timeout": 2, "reset": 3, "parse": 0},
      "latency_us": {"p50": 41.5, "p75": 50, "p90": 70, "p99": 130, "p999": 420,
                     "p9999": 900, "max": 2100},
      "latency_uncorrected_us": {"p50": 40, "p75": 49, "p90": 66, "p99": 120,
                                 "p999": 400, "p9999": 800, "max": 2000},
      "send_lag_us": {"p50": 1, "p75": 1, "p90": 2, "p99": 5, "p999": 9, "p9999": 12, "max": 30},
      "timeline": [{"t_s": 0, "requests": 60000}],
      "run": {"url": "http://127.0.0.1:8080/", "connections": 64, "cores": 1}
    }"#;

    #[test]
    fn ringload_report_maps_to_a_load_report() {
        let r = RingloadJson::parse(RINGLOAD_SAMPLE)
            .expect("parses")
            .to_report();
        assert_eq!(r.requests, 120_000);
        assert_eq!(r.requests_per_s(), 60_000.0);
        assert_eq!(r.non_2xx, 10);
        assert_eq!(r.errors, 6);
        assert!(r.corrected);
        assert_eq!(
            r.latency_us,
            Percentiles {
                p50: 41.5,
                p99: 130.0,
                p999: 420.0,
                max: 2100.0
            }
        );
    }

    #[test]
    fn closed_loop_ringload_report_has_null_rate_and_is_uncorrected() {
        let text = RINGLOAD_SAMPLE.replace("\"rate_target\": 60000", "\"rate_target\": null");
        let r = RingloadJson::parse(&text).expect("parses").to_report();
        assert!(!r.corrected);
    }

    #[test]
    fn ringload_report_without_latency_is_refused() {
        let err = RingloadJson::parse(r#"{"requests": 1, "duration_s": 1}"#).unwrap_err();
        assert!(err.to_string().contains("latency_us"), "{err}");
    }

    #[test]
    fn wrk_report_line_is_parsed() {
        let out = "Running 1s test @ http://x/\n  1 threads and 8 connections\n\
                   RINGGATE-BENCH 5000 1000500 0 1 0 3 2 150 900 2500 4000\n";
        let r = parse_wrk_line(out).expect("parses");
        assert_eq!(r.requests, 5000);
        assert!((r.duration_s - 1.0005).abs() < 1e-9);
        assert_eq!((r.non_2xx, r.errors), (3, 3));
        assert_eq!(r.latency_us.p999, 2500.0);
        assert!(parse_wrk_line("no line").is_err());
    }

    #[test]
    fn response_heads_give_status_length_and_keep_alive() {
        let h = b"HTTP/1.1 200 OK\r\ncontent-length: 19\r\n\r\n";
        assert_eq!(parse_response_head(h), Some((200, 19, true)));
        let h = b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_response_head(h), Some((502, 0, false)));
        assert_eq!(split_url("http://127.0.0.1:80/a?b").unwrap().1, "/a?b");
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1".into(), "/".into()));
    }

    #[test]
    fn builtin_client_counts_requests_against_the_embedded_backend() {
        use crate::backend::{Backend, BackendKind};
        let port = crate::free_port().expect("port");
        let _b = Backend::start(BackendKind::Embedded, port, &[], &std::env::temp_dir())
            .expect("backend");
        let url = format!("http://127.0.0.1:{port}/");
        let spec = LoadSpec {
            url: &url,
            connections: 2,
            // Long enough that a first response lands inside the window on
            // a machine busy with the rest of the suite (200 ms once
            // measured none: the backend's thread was not scheduled).
            duration: Duration::from_secs(1),
            rate: None,
            cpus: &[],
        };
        let r = LoadTool::Builtin
            .run(&spec, &std::env::temp_dir())
            .expect("runs");
        assert!(r.requests > 0, "{r:?}");
        assert_eq!((r.errors, r.non_2xx), (0, 0), "{r:?}");
        assert!(r.latency_us.p50 > 0.0 && r.latency_us.max >= r.latency_us.p99);
    }
}
