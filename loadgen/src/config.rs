//! A run's settings: [`RunOptions`] as a caller writes them (CLI or the
//! library API), turned once into a validated [`RunConfig`] whose fields
//! cannot hold a bad value (resolved targets, encoded requests, a positive
//! finite rate, at least one connection per worker).
//!
//! No I/O here beyond name resolution and reading `--body-file`, which the
//! CLI does before building options.

use std::time::Duration;

use crate::client::Tls;
use crate::local::{self, LocalServer};
use crate::schedule::Arrival;
use crate::target::{RequestSpec, Target, TargetError, Url};
use crate::Error;

/// Default number of connections, over all cores.
pub const DEFAULT_CONNECTIONS: usize = 32;
/// Default measured duration.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default response timeout: generous, so a stall is measured, not cut off.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// More requests in flight per connection than this is a mistake, not a test.
pub const MAX_PIPELINE: usize = 1024;
/// Connections per run: each costs a socket and a 16 KiB buffer.
pub const MAX_CONNECTIONS: usize = 100_000;
/// Raw per-request rows kept with `--raw` over the whole run (32 B each).
pub const MAX_RAW_ROWS: usize = 4_000_000;

/// What a caller asks for, unchecked. `Default` is a 10 s closed-loop run
/// of GET requests over 32 connections on every allowed core.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub urls: Vec<String>,
    /// Requests/s for the whole run (open loop); `None` = closed loop.
    pub rate: Option<f64>,
    pub arrival: Arrival,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Worker cores; `None` = every CPU in the process's affinity mask.
    pub cores: Option<usize>,
    /// Pin each worker to one CPU of the affinity mask.
    pub pin: bool,
    pub request: RequestSpec,
    pub pipeline: usize,
    pub keepalive: bool,
    pub timeout: Duration,
    pub insecure: bool,
    /// Print a live progress line on stderr.
    pub progress: bool,
    /// Keep per-request timestamps (`--raw`).
    pub keep_raw: bool,
    /// Send one request to each URL before the run and refuse to start if
    /// it fails (a clear error instead of a run full of errors).
    pub probe: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            urls: Vec::new(),
            rate: None,
            arrival: Arrival::Constant,
            connections: DEFAULT_CONNECTIONS,
            duration: DEFAULT_DURATION,
            warmup: Duration::ZERO,
            cores: None,
            pin: true,
            request: RequestSpec {
                method: "GET".into(),
                ..RequestSpec::default()
            },
            pipeline: 1,
            keepalive: true,
            timeout: DEFAULT_TIMEOUT,
            insecure: false,
            progress: false,
            keep_raw: false,
            probe: true,
        }
    }
}

/// A validated run.
#[derive(Clone)]
pub struct RunConfig {
    pub(crate) targets: Vec<Target>,
    pub(crate) rate: Option<f64>,
    pub(crate) arrival: Arrival,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    /// CPU ids to run workers on, one per worker (at most `connections`).
    pub(crate) cpus: Vec<usize>,
    pub(crate) pin: bool,
    pub(crate) pipeline: usize,
    pub(crate) keepalive: bool,
    pub(crate) timeout: Duration,
    pub(crate) tls: Option<Tls>,
    pub(crate) progress: bool,
    pub(crate) raw_limit: usize,
    pub(crate) probe: bool,
    /// `--check-id NAME`, for reports (the ids are in the targets' bytes).
    pub(crate) check_id: Option<String>,
    /// The server under test, when it runs on this machine.
    pub(crate) local_server: Option<LocalServer>,
    /// CPUs the workers share with that server (empty: none).
    pub(crate) shared_cpus: Vec<usize>,
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        ids.push(0);
    }
    ids
}

impl RunConfig {
    /// Checks everything and reports every problem at once.
    pub fn new(o: RunOptions) -> Result<RunConfig, Error> {
        let mut problems: Vec<String> = Vec::new();
        if o.urls.is_empty() {
            problems.push("no URL given".into());
        }
        let mut targets = Vec::new();
        for u in &o.urls {
            match Url::parse(u).and_then(|url| Target::resolve(url, &o.request)) {
                Ok(t) => targets.push(t),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(r) = o.rate {
            if !(r.is_finite() && r > 0.0) {
                problems.push(format!(
                    "--rate must be a positive number of requests/s, not {r}"
                ));
            }
        }
        if o.connections == 0 || o.connections > MAX_CONNECTIONS {
            problems.push(format!("--connections must be in 1..={MAX_CONNECTIONS}"));
        }
        if o.duration.is_zero() {
            problems.push("--duration must be more than 0".into());
        }
        if o.timeout.is_zero() {
            problems.push("--timeout must be more than 0".into());
        }
        if o.pipeline == 0 || o.pipeline > MAX_PIPELINE {
            problems.push(format!("--pipeline must be in 1..={MAX_PIPELINE}"));
        }
        if o.pipeline > 1 && !o.keepalive {
            problems.push("--pipeline needs keep-alive connections (drop --no-keepalive)".into());
        }
        let allowed = allowed_cpus();
        let cores = o.cores.unwrap_or(allowed.len());
        if cores == 0 {
            problems.push("--cores must be at least 1".into());
        } else if cores > allowed.len() {
            problems.push(format!(
                "--cores {cores} but this process may run on {} CPU(s) ({:?})",
                allowed.len(),
                allowed
            ));
        }
        let tls = if targets
            .iter()
            .any(|t| t.url.scheme == crate::target::Scheme::Https)
        {
            match Tls::new(o.insecure) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("TLS set-up: {e}"));
                    None
                }
            }
        } else {
            None
        };
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let addrs: Vec<_> = targets.iter().map(|t| t.addr).collect();
        let local_server = local::find(&addrs);
        let (mut cpus, mut shared_cpus) = local::choose_cpus(
            &allowed,
            local_server.as_ref().map(|s| &s.cpus),
            o.cores,
            o.pin,
        );
        cpus.truncate(o.connections.max(1));
        if o.pin {
            shared_cpus.retain(|c| cpus.contains(c));
        }
        Ok(RunConfig {
            targets,
            rate: o.rate,
            arrival: o.arrival,
            connections: o.connections,
            duration: o.duration,
            warmup: o.warmup,
            cpus,
            pin: o.pin,
            pipeline: o.pipeline,
            keepalive: o.keepalive,
            timeout: o.timeout,
            tls,
            progress: o.progress,
            raw_limit: if o.keep_raw { MAX_RAW_ROWS } else { 0 },
            probe: o.probe,
            check_id: o.request.check_id,
            local_server,
            shared_cpus,
        })
    }

    /// The same run at another rate (`None` = closed loop): a sweep step.
    pub fn with_rate(&self, rate: Option<f64>) -> RunConfig {
        let mut c = self.clone();
        c.rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        c
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    pub fn workers(&self) -> usize {
        self.cpus.len()
    }

    pub fn connections(&self) -> usize {
        self.connections
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The URLs, space-separated, for reports.
    pub fn url_list(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.url.original.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn arrival(&self) -> Arrival {
        self.arrival
    }

    pub fn warmup(&self) -> Duration {
        self.warmup
    }

    /// Where the workers run relative to a local server under test, for
    /// stderr before the run: which CPUs were left to it, or which are shared.
    pub fn cpu_note(&self) -> Option<String> {
        let server = self.local_server.as_ref()?;
        let mine = local::cpu_list(self.cpus.iter().copied());
        let theirs = local::cpu_list(server.cpus.iter().copied());
        Some(if self.shared_cpus.is_empty() {
            format!(
                "the server under test, {}, runs on CPU(s) {theirs}; ringload's workers run on CPU(s) {mine}",
                server.who()
            )
        } else {
            format!(
                "WARNING: ringload shares CPU(s) {} with the server under test, {} (on CPU(s) {theirs}); \
                 the two compete for those cores, so the figures are of the pair, not of the server alone. \
                 Give each its own cores (fewer server workers, or taskset) for the server's own figures.",
                local::cpu_list(self.shared_cpus.iter().copied()),
                server.who()
            )
        })
    }

    /// Drops the probe (a sweep probes once, not per step).
    pub fn without_probe(&self) -> RunConfig {
        let mut c = self.clone();
        c.probe = false;
        c
    }
}

impl From<TargetError> for Error {
    fn from(e: TargetError) -> Self {
        Error::Config(vec![e.to_string()])
    }
}
