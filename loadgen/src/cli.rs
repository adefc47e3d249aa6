//! The `ringload` command line: flags, their defaults, and their conversion
//! into [`RunOptions`]. Reads `--body-file`; runs nothing.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::config::{RunOptions, DEFAULT_CONNECTIONS};
use crate::schedule::Arrival;
use crate::target::RequestSpec;
use crate::Error;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArrivalArg {
    /// Evenly spaced sends, 1/R apart (wrk2's model).
    Constant,
    /// Exponential gaps with mean 1/R (a Poisson process).
    Poisson,
}

/// A rate in requests/s: `20000`, `20000/s`, `20k`, `1.5M`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.trim_end_matches("/s");
    let (digits, scale) = match number.as_bytes().last() {
        Some(b'k' | b'K') => (&number[..number.len() - 1], 1e3),
        Some(b'M') => (&number[..number.len() - 1], 1e6),
        _ => (number, 1.0),
    };
    let v: f64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests/s (e.g. 20000, 20k, 1.5M)"))?;
    let v = v * scale;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("the rate must be a positive number".into())
    }
}

/// A duration as wrk takes it: a bare number is seconds (`-d 5`), otherwise
/// humantime (`500ms`, `10s`, `1m`).
pub fn parse_seconds_or_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a duration (e.g. 5, 500ms, 10s, 1m)"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 5, 500ms, 10s, 1m): {e}"))
}

/// ringload: an HTTP/1.1 load generator that measures tail latency
/// honestly (open-loop schedule with coordinated-omission correction).
#[derive(Debug, Parser)]
#[command(name = "ringload", version, about, long_about = None)]
pub struct Cli {
    /// Target URL(s), http:// or https://; connections are spread over them.
    #[arg(required = true)]
    pub urls: Vec<String>,
    /// Requests per second for the whole run (open loop on a fixed schedule),
    /// e.g. 20000 or 20k. Without it: closed loop, as fast as the connections go.
    #[arg(short, long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// How sends are spaced on the schedule.
    #[arg(long, value_enum, default_value = "constant")]
    pub arrival: ArrivalArg,
    /// Connections, over all cores.
    #[arg(short, long, default_value_t = DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// Measured duration (e.g. 10s, 1m; a bare number is seconds, as in wrk).
    #[arg(short, long, default_value = "10s", value_parser = parse_seconds_or_duration)]
    pub duration: Duration,
    /// Load before the measured window, not recorded (a bare number is seconds).
    #[arg(long, default_value = "0s", value_parser = parse_seconds_or_duration)]
    pub warmup: Duration,
    /// Worker cores (default: every CPU this process may run on).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Request method.
    #[arg(short, long, default_value = "GET")]
    pub method: String,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body read from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Requests in flight per connection (sent back to back).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// A new connection per request.
    #[arg(long)]
    pub no_keepalive: bool,
    /// Give every request a unique id, NAME=<20 digits> in its query, and
    /// count responses whose body does not carry that same id (exit 3).
    #[arg(long, value_name = "NAME")]
    pub check_id: Option<String>,
    /// Per-request timeout (connect + send + complete response; a bare
    /// number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_seconds_or_duration)]
    pub timeout: Duration,
    /// Accept any TLS certificate (self-signed test servers).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Step the rate up from a closed-loop maximum and report the highest
    /// rate whose p99 stays within --slo.
    #[arg(long, conflicts_with = "rate")]
    pub sweep: bool,
    /// Latency objective for --sweep (corrected p99).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub slo: Duration,
    /// Sweep step as a percentage of the closed-loop maximum.
    #[arg(long, default_value_t = 10.0)]
    pub sweep_step: f64,
    /// Write the report as JSON (times in µs).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the corrected latency distribution in HdrHistogram's .hgrm text.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write every recorded request (intended, sent, done in µs) as CSV.
    #[arg(long)]
    pub raw: Option<PathBuf>,
    /// No live progress line.
    #[arg(short, long)]
    pub quiet: bool,
}

impl Cli {
    /// The options this command line asks for. Reports every bad header at
    /// once; URLs and the rest are checked by `RunConfig::new`.
    pub fn options(&self) -> Result<RunOptions, Error> {
        let mut problems = Vec::new();
        let mut headers = Vec::new();
        for h in &self.headers {
            match RequestSpec::parse_header(h) {
                Ok(kv) => headers.push(kv),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let body = match (&self.body, &self.body_file) {
            (Some(b), _) => b.clone().into_bytes(),
            (None, Some(path)) => std::fs::read(path).map_err(|source| Error::File {
                path: path.display().to_string(),
                source,
            })?,
            (None, None) => Vec::new(),
        };
        if self.sweep && !(self.sweep_step > 0.0 && self.sweep_step <= 100.0) {
            problems.push("--sweep-step must be a percentage in (0, 100]".into());
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        Ok(RunOptions {
            urls: self.urls.clone(),
            rate: self.rate,
            arrival: match self.arrival {
                ArrivalArg::Constant => Arrival::Constant,
                ArrivalArg::Poisson => Arrival::Poisson,
            },
            connections: self.connections,
            duration: self.duration,
            warmup: self.warmup,
            cores: self.cores,
            pin: !self.no_pin,
            request: RequestSpec {
                method: self.method.clone(),
                headers,
                body,
                close: self.no_keepalive,
                check_id: self.check_id.clone(),
            },
            pipeline: self.pipeline,
            keepalive: !self.no_keepalive,
            timeout: self.timeout,
            insecure: self.insecure,
            progress: !self.quiet,
            keep_raw: self.raw.is_some(),
            probe: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_options() {
        let cli = Cli::try_parse_from([
            "ringload",
            "http://127.0.0.1:1/",
            "--rate",
            "500/s",
            "-c",
            "20",
            "-d",
            "6s",
            "--warmup",
            "1s",
            "-H",
            "X-A: b",
            "-m",
            "POST",
            "--body",
            "hi",
            "--pipeline",
            "4",
            "--arrival",
            "poisson",
            "--check-id",
            "rid",
        ])
        .unwrap();
        let o = cli.options().unwrap();
        assert_eq!(o.rate, Some(500.0));
        assert_eq!(o.connections, 20);
        assert_eq!(o.duration, Duration::from_secs(6));
        assert_eq!(o.warmup, Duration::from_secs(1));
        assert_eq!(o.arrival, Arrival::Poisson);
        assert_eq!(
            o.request.headers,
            vec![("X-A".to_string(), "b".to_string())]
        );
        assert_eq!(o.request.body, b"hi");
        assert_eq!(o.pipeline, 4);
        assert_eq!(o.request.check_id.as_deref(), Some("rid"));
    }

    #[test]
    fn a_bad_rate_or_both_bodies_are_usage_errors() {
        assert!(Cli::try_parse_from(["ringload", "http://h/", "--rate", "-5"]).is_err());
        assert!(Cli::try_parse_from(["ringload", "http://h/", "--rate", "fast"]).is_err());
        assert!(
            Cli::try_parse_from(["ringload", "http://h/", "--body", "a", "--body-file", "f"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["ringload", "http://h/", "--sweep", "--rate", "5"]).is_err());
        assert!(Cli::try_parse_from(["ringload"]).is_err());
    }

    #[test]
    fn a_bare_duration_is_seconds_as_in_wrk() {
        let cli = Cli::try_parse_from([
            "ringload",
            "http://h/",
            "-d",
            "5",
            "--warmup",
            "0.5",
            "--timeout",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.duration, Duration::from_secs(5));
        assert_eq!(cli.warmup, Duration::from_millis(500));
        assert_eq!(cli.timeout, Duration::from_secs(2));
        assert_eq!(
            parse_seconds_or_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert!(parse_seconds_or_duration("-1").is_err());
        assert!(parse_seconds_or_duration("5 parsecs").is_err());
        // The objective keeps its unit: `--slo 10` could be ms or s.
        assert!(Cli::try_parse_from(["ringload", "http://h/", "--sweep", "--slo", "10"]).is_err());
    }

    #[test]
    fn rates_take_k_and_m_suffixes() {
        assert_eq!(parse_rate("10k"), Ok(10_000.0));
        assert_eq!(parse_rate("2.5K/s"), Ok(2_500.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert_eq!(parse_rate("750"), Ok(750.0));
        assert!(parse_rate("10x").is_err());
        assert!(parse_rate("k").is_err());
        assert!(parse_rate("0k").is_err());
    }
}
