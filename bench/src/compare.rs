//! The comparison run: backend up, then for each proxy a closed-loop maximum,
//! then a ladder of fixed offered rates (a share of the best maximum any
//! proxy reached, so every proxy is measured at the same rates), each point
//! with the proxy's CPU time per request. Writes results.json, results.md and
//! the SVG plots into the output directory.

use crate::backend::{Backend, BackendKind};
use crate::load::{probe, LoadReport, LoadSpec, LoadTool};
use crate::process::{clock_ticks_per_sec, RunningProcess};
use crate::proxy::{find_built_binary, ProxyKind};
use crate::{allowed_cpus, find_program, free_port, report, BenchError, Placement};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Offered rates of the latency ladder, in percent of the best maximum.
pub const DEFAULT_LADDER_PERCENT: [u32; 9] = [10, 20, 30, 40, 50, 60, 70, 80, 90];
/// Load before each measured maximum, so pools and caches are warm.
const WARMUP: Duration = Duration::from_secs(2);
/// How long a backend or proxy gets to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// `--quick`: per-point duration, connections and ladder, bounded so a run
/// with all three proxies takes seconds (CI runs it).
const QUICK_DURATION: Duration = Duration::from_secs(1);
const QUICK_CONNECTIONS: usize = 8;
const QUICK_LADDER_PERCENT: [u32; 1] = [50];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadChoice {
    /// ringload if built, else wrk, else the built-in client.
    Auto,
    Ringload,
    Wrk,
    Builtin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// nginx when installed, else the embedded backend.
    Auto,
    Nginx,
    Embedded,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub proxies: Vec<ProxyKind>,
    pub duration: Duration,
    pub connections: usize,
    pub out: PathBuf,
    pub quick: bool,
    pub ladder_percent: Vec<u32>,
    pub load: LoadChoice,
    pub backend: BackendChoice,
    pub ringgate_bin: Option<PathBuf>,
    pub ringload_bin: Option<PathBuf>,
    /// The command line as typed, for the report.
    pub command: String,
}

impl Options {
    /// Options with `--quick`'s bounds applied.
    pub fn effective(mut self) -> Options {
        if self.quick {
            self.duration = QUICK_DURATION;
            self.connections = QUICK_CONNECTIONS;
            self.ladder_percent = QUICK_LADDER_PERCENT.to_vec();
        }
        self
    }
}

/// One measured point.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Fixed offered rate, requests/s; `None` for the closed-loop maximum.
    pub offered_rps: Option<f64>,
    pub rps: f64,
    pub load: LoadReport,
    /// The proxy's user+sys CPU time (its whole process tree) over requests.
    pub cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyRun {
    pub proxy: ProxyKind,
    pub version: String,
    pub max: Point,
    pub ladder: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".to_owned(), |k| k.trim().to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub command: String,
    pub machine: Machine,
    pub placement: Placement,
    pub load_tool: String,
    pub backend: BackendKind,
    pub duration_s: f64,
    pub connections: usize,
    pub quick: bool,
    /// The closed-loop maximum the ladder's percentages are taken of.
    pub best_max_rps: f64,
    pub ladder_percent: Vec<u32>,
    /// Skipped proxies, fallbacks and other things a reader must know.
    pub notes: Vec<String>,
    /// The load run straight against the backend, for scale.
    pub backend_direct: Option<Point>,
    pub runs: Vec<ProxyRun>,
}

/// Runs the comparison and writes its outputs into `opts.out`.
pub fn run(opts: Options) -> Result<Comparison, BenchError> {
    let opts = opts.effective();
    let mut notes = Vec::new();
    let placement = Placement::from_cpus(&allowed_cpus(), find_program("taskset").is_some());
    if !placement.isolated {
        notes.push(
            "proxy, backend and load share all CPUs (one CPU, or no taskset): \
             CPU per request includes contention"
                .to_owned(),
        );
    }
    let tool = choose_load_tool(&opts, &mut notes)?;
    let backend_kind = match opts.backend {
        BackendChoice::Nginx => BackendKind::Nginx,
        BackendChoice::Embedded => BackendKind::Embedded,
        BackendChoice::Auto if find_program("nginx").is_some() => BackendKind::Nginx,
        BackendChoice::Auto => {
            notes.push("backend: embedded (nginx not installed: apt-get install nginx)".to_owned());
            BackendKind::Embedded
        }
    };
    let work = std::env::temp_dir().join(format!("ringgate-bench.{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(BenchError::io(work.display().to_string()))?;
    std::fs::create_dir_all(&opts.out).map_err(BenchError::io(opts.out.display().to_string()))?;

    let mut bench = Bench {
        tool,
        placement: placement.clone(),
        opts: &opts,
        work: &work,
        hz: clock_ticks_per_sec(),
    };
    let mut backend = Backend::start(backend_kind, free_port()?, &placement.others, &work)?;
    let backend_url = format!("http://127.0.0.1:{}/", backend.port());
    wait_ready(&backend_url, || backend.check_alive())?;
    let backend_direct = bench.measure(&backend_url, None, None)?;

    // Phase 1: each proxy's closed-loop maximum.
    let mut located = Vec::new();
    let mut runs = Vec::new();
    for &kind in &opts.proxies {
        let bin = match kind.locate(opts.ringgate_bin.as_deref()) {
            Ok(bin) => bin,
            Err(note) => {
                eprintln!("{note}");
                notes.push(note);
                continue;
            }
        };
        if kind == ProxyKind::Ringgate
            && !opts.quick
            && bin.components().any(|c| c.as_os_str() == "debug")
        {
            notes.push(format!(
                "ringgate is a debug build ({}): numbers are not representative",
                bin.display()
            ));
        }
        match bench.max_of(kind, &bin, backend.port()) {
            Ok(max) => {
                eprintln!(
                    "{}: {:.0} req/s, {} µs CPU/request",
                    kind.name(),
                    max.rps,
                    max.cpu_us_per_request
                        .map_or("-".into(), |c| format!("{c:.2}"))
                );
                runs.push(ProxyRun {
                    proxy: kind,
                    version: kind.version(&bin),
                    max,
                    ladder: Vec::new(),
                });
                located.push(bin);
            }
            Err(e) => {
                eprintln!("{} failed: {e}", kind.name());
                notes.push(format!("{} failed: {e}", kind.name()));
            }
        }
        backend.check_alive()?;
    }

    // Phase 2: the same offered rates for every proxy.
    let best_max_rps = runs.iter().map(|r| r.max.rps).fold(0.0, f64::max);
    if !bench.tool.open_loop() {
        notes.push(format!(
            "{} runs closed-loop only: no fixed-rate ladder, latency not corrected for \
             coordinated omission (build ringload: cargo build --release -p ringgate-loadgen)",
            bench.tool.name()
        ));
    } else if best_max_rps > 0.0 {
        for (run, bin) in runs.iter_mut().zip(&located) {
            match bench.ladder_of(run.proxy, bin, backend.port(), best_max_rps) {
                Ok(ladder) => run.ladder = ladder,
                Err(e) => notes.push(format!("{} ladder failed: {e}", run.proxy.name())),
            }
        }
    }
    drop(backend);

    let comparison = Comparison {
        command: opts.command.clone(),
        machine: Machine::describe(),
        placement,
        load_tool: bench.tool.name().to_owned(),
        backend: backend_kind,
        duration_s: opts.duration.as_secs_f64(),
        connections: opts.connections,
        quick: opts.quick,
        best_max_rps,
        ladder_percent: if bench.tool.open_loop() {
            opts.ladder_percent.clone()
        } else {
            Vec::new()
        },
        notes,
        backend_direct: Some(backend_direct),
        runs,
    };
    report::write_all(&comparison, &opts.out)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(comparison)
}

fn choose_load_tool(opts: &Options, notes: &mut Vec<String>) -> Result<LoadTool, BenchError> {
    let ringload = opts
        .ringload_bin
        .clone()
        .or_else(|| find_built_binary("ringload"))
        .filter(|p| ringload_usable(p));
    let wrk = find_program("wrk");
    let missing = |what: &str| BenchError::Setup(format!("--load {what}: not found"));
    Ok(match opts.load {
        LoadChoice::Ringload => LoadTool::Ringload(ringload.ok_or_else(|| missing("ringload"))?),
        LoadChoice::Wrk => LoadTool::Wrk(wrk.ok_or_else(|| missing("wrk (apt-get install wrk)"))?),
        LoadChoice::Builtin => LoadTool::Builtin,
        LoadChoice::Auto => match (ringload, wrk) {
            (Some(r), _) => LoadTool::Ringload(r),
            (None, Some(w)) => {
                notes.push("ringload not built or not usable: fell back to wrk".to_owned());
                LoadTool::Wrk(w)
            }
            (None, None) => {
                notes.push(
                    "neither ringload nor wrk found: fell back to the built-in closed-loop \
                     client (one thread per connection; slower than the proxies it loads)"
                        .to_owned(),
                );
                LoadTool::Builtin
            }
        },
    })
}

/// ringload exists and answers `--help` with the flags the runner passes.
fn ringload_usable(bin: &Path) -> bool {
    std::process::Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| {
            let help = String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned();
            ["--json", "--rate", "--connections", "--duration"]
                .iter()
                .all(|flag| help.contains(flag))
        })
        .unwrap_or(false)
}

/// Polls `url` until it answers 200, failing early if `alive` says the
/// process behind it died.
fn wait_ready(
    url: &str,
    mut alive: impl FnMut() -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        alive()?;
        let last = match probe(url) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("status {status}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(BenchError::Setup(format!("{url} not ready: {last}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Bench<'a> {
    tool: LoadTool,
    placement: Placement,
    opts: &'a Options,
    work: &'a Path,
    hz: u64,
}

impl Bench<'_> {
    fn spec<'s>(&'s self, url: &'s str, rate: Option<f64>, duration: Duration) -> LoadSpec<'s> {
        LoadSpec {
            url,
            connections: self.opts.connections,
            duration,
            rate,
            cpus: &self.placement.others,
        }
    }

    /// One load run, with the CPU time of `proxy` over it when given.
    fn measure(
        &mut self,
        url: &str,
        rate: Option<f64>,
        proxy: Option<&RunningProcess>,
    ) -> Result<Point, BenchError> {
        let before = proxy.map(RunningProcess::cpu_ticks);
        let load = self
            .tool
            .run(&self.spec(url, rate, self.opts.duration), self.work)?;
        let after = proxy.map(RunningProcess::cpu_ticks);
        let cpu_us_per_request = match (before, after) {
            (Some(b), Some(a)) if load.requests > 0 => {
                Some((a - b) as f64 / self.hz as f64 * 1e6 / load.requests as f64)
            }
            _ => None,
        };
        Ok(Point {
            offered_rps: rate,
            rps: load.requests_per_s(),
            load,
            cpu_us_per_request,
        })
    }

    fn start(
        &self,
        kind: ProxyKind,
        bin: &Path,
        backend_port: u16,
    ) -> Result<(RunningProcess, String), BenchError> {
        let port = free_port()?;
        let conf = kind.write_config(self.work, port, backend_port)?;
        let mut proxy = kind.start(bin, &conf, &self.placement.proxy, self.work)?;
        let url = format!("http://127.0.0.1:{port}/");
        wait_ready(&url, || proxy.check_alive()).map_err(|e| {
            let log = std::fs::read_to_string(self.work.join(format!("{}.log", kind.name())))
                .unwrap_or_default();
            BenchError::Setup(format!("{e}; its output: {}", log.trim()))
        })?;
        Ok((proxy, url))
    }

    fn warm_up(&self, url: &str, duration: Duration) -> Result<(), BenchError> {
        if !self.opts.quick {
            self.tool.run(&self.spec(url, None, duration), self.work)?;
        }
        Ok(())
    }

    fn max_of(
        &mut self,
        kind: ProxyKind,
        bin: &Path,
        backend_port: u16,
    ) -> Result<Point, BenchError> {
        let (mut proxy, url) = self.start(kind, bin, backend_port)?;
        self.warm_up(&url, WARMUP)?;
        let point = self.measure(&url, None, Some(&proxy))?;
        proxy.stop();
        Ok(point)
    }

    fn ladder_of(
        &mut self,
        kind: ProxyKind,
        bin: &Path,
        backend_port: u16,
        best_max_rps: f64,
    ) -> Result<Vec<Point>, BenchError> {
        let (mut proxy, url) = self.start(kind, bin, backend_port)?;
        self.warm_up(&url, WARMUP / 2)?;
        let mut points = Vec::new();
        for &pct in &self.opts.ladder_percent {
            let rate = best_max_rps * f64::from(pct) / 100.0;
            let point = self.measure(&url, Some(rate), Some(&proxy))?;
            eprintln!(
                "{} at {rate:.0} req/s offered: p50 {:.0} µs, p99 {:.0} µs",
                kind.name(),
                point.load.latency_us.p50,
                point.load.latency_us.p99
            );
            points.push(point);
        }
        proxy.stop();
        Ok(points)
    }
}
