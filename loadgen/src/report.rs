//! What a run reports: the human table, the `--json` document, the `--hgrm`
//! percentile distribution (HdrHistogram's text format, which its plotter
//! reads), the `--raw` per-request CSV, and the warnings that say when
//! ringload itself, not the server, limited the run.
//!
//! Formatting only: everything here is computed from a [`Measured`].

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::config::RunConfig;
use crate::record::Measured;
use crate::schedule::Arrival;

/// The quantiles every report shows, with their JSON keys and labels.
pub const QUANTILES: [(f64, &str, &str); 6] = [
    (0.50, "p50", "p50"),
    (0.75, "p75", "p75"),
    (0.90, "p90", "p90"),
    (0.99, "p99", "p99"),
    (0.999, "p999", "p99.9"),
    (0.9999, "p9999", "p99.99"),
];
/// ringload's own scheduling delay above this at p99 means it, not the
/// server, set the pace: the timer and event loop normally wake within tens
/// of microseconds.
pub const GENERATOR_DELAY_WARN_US: u64 = 1_000;
/// A worker that wanted a CPU for this share of the window never idled: if
/// requests also left late, ringload set the pace.
pub const GENERATOR_BUSY_WARN: f64 = 0.95;
/// ringload's own delay counts as setting the pace only when it is at
/// least 1/this of the send lag (p99 both).
pub const GENERATOR_SHARE_OF_LAG: u64 = 10;
/// Send lag above this at p99 means requests queued for a free connection.
pub const SEND_LAG_WARN_US: u64 = 1_000;
/// An achieved rate below this share of the target is reported.
pub const RATE_SHORTFALL: f64 = 0.95;

/// Run metadata for reports.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub version: &'static str,
    pub cores: usize,
    pub connections: usize,
    pub url: String,
    pub arrival: Arrival,
    pub warmup: Duration,
    pub pipeline: usize,
    /// `--check-id NAME`.
    pub check_id: Option<String>,
    /// CPUs the workers ran on (pinned) or may run on (unpinned).
    pub cpus: Vec<usize>,
    /// CPUs ringload shared with a local server under test, and who that is.
    pub shared_cpus: Vec<usize>,
    pub local_server: Option<String>,
    /// Cores' worth of CPU ringload used from start to end of the run.
    pub cores_used: Option<f64>,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    pub measured: Measured,
    pub duration: Duration,
    pub rate_target: Option<f64>,
    pub run: RunInfo,
    pub warnings: Vec<String>,
}

/// A latency for people: µs, ms or s with 3 significant-ish digits.
pub fn fmt_us(v: u64) -> String {
    if v < 1_000 {
        format!("{v}µs")
    } else if v < 1_000_000 {
        format!("{:.2}ms", v as f64 / 1e3)
    } else {
        format!("{:.3}s", v as f64 / 1e6)
    }
}

/// A byte count in binary units (B, KiB, MiB, GiB), the family the rest of
/// ringgate's docs and messages use, with 3–4 significant digits.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The quantile row of a histogram, as JSON (`p50` .. `max`).
pub fn quantiles_json(h: &Histogram<u64>) -> Value {
    let mut m = Map::new();
    for (q, key, _) in QUANTILES {
        m.insert(key.into(), json!(value_at(h, q)));
    }
    m.insert("max".into(), json!(h.max()));
    Value::Object(m)
}

fn value_at(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        // The highest value equivalent: a bucket's upper edge, as wrk2 prints.
        h.highest_equivalent(h.value_at_quantile(q))
    }
}

impl Report {
    pub fn new(config: &RunConfig, measured: Measured, cores_used: Option<f64>) -> Report {
        let mut r = Report {
            measured,
            duration: config.duration(),
            rate_target: config.rate(),
            run: RunInfo {
                version: env!("CARGO_PKG_VERSION"),
                cores: config.workers(),
                connections: config.connections(),
                url: config.url_list(),
                arrival: config.arrival(),
                warmup: config.warmup(),
                pipeline: config.pipeline,
                check_id: config.check_id.clone(),
                cpus: config.cpus.clone(),
                shared_cpus: config.shared_cpus.clone(),
                local_server: config.local_server.as_ref().map(|s| s.who()),
                cores_used,
            },
            warnings: Vec::new(),
        };
        r.warnings = r.find_warnings();
        r
    }

    pub fn requests(&self) -> u64 {
        self.measured.requests
    }

    /// Responses per second over the measured window.
    pub fn achieved_rate(&self) -> f64 {
        self.measured.requests as f64 / self.duration.as_secs_f64()
    }

    /// Measured requests sent inside the window, per second: below the
    /// target when the schedule fell behind (the rest left after the window).
    pub fn sent_rate(&self) -> f64 {
        self.measured.sent_in_window as f64 / self.duration.as_secs_f64()
    }

    /// Corrected latency at quantile `q`, in µs.
    pub fn latency_us(&self, q: f64) -> u64 {
        value_at(&self.measured.latency_us, q)
    }

    /// Service time (uncorrected) at quantile `q`, in µs.
    pub fn service_us(&self, q: f64) -> u64 {
        value_at(&self.measured.service_us, q)
    }

    fn find_warnings(&self) -> Vec<String> {
        let m = &self.measured;
        let mut w = Vec::new();
        if m.ids.mismatches() > 0 {
            w.push(format!(
                "RESPONSES CROSSED: {} of {} responses did not carry their request's id ({} carried another request's, {} none).",
                m.ids.mismatches(),
                m.ids.checked,
                m.ids.other,
                m.ids.missing
            ));
        }
        let used = self
            .run
            .cores_used
            .map(|c| format!("; ringload used {c:.2} core(s) of CPU"))
            .unwrap_or_default();
        let sharing = match (&self.run.local_server, self.run.shared_cpus.is_empty()) {
            (Some(who), false) => Some(format!(
                "sharing CPU(s) {} with the server under test, {who}",
                crate::local::cpu_list(self.run.shared_cpus.iter().copied())
            )),
            _ => None,
        };
        let Some(target) = self.rate_target else {
            if let Some(sharing) = sharing {
                w.push(format!(
                    "RINGLOAD SHARED THE SERVER'S CPUS ({sharing}{used}): the maximum measured is the pair's, \
                     not the server's alone. Give each its own cores for the server's own figure."
                ));
            }
            return w;
        };
        let gen_p99 = value_at(&m.generator_delay_us, 0.99);
        let lag_p99 = value_at(&m.send_lag_us, 0.99);
        let busy = m.busiest_worker.unwrap_or(0.0);
        // Late by its own doing: slow to send once a connection was free, or
        // behind the schedule with a worker that never idled (then the lag
        // hides in responses waiting to be read, not in the generator delay).
        // A generator delay that is a sliver of the lag (a stall that kept
        // every connection busy for half a second, on a loaded machine that
        // woke ringload 1.3 ms late) did not set the pace: the connections
        // did, and the latencies are not overstated by much.
        let generator_late = (gen_p99 > GENERATOR_DELAY_WARN_US
            && gen_p99.saturating_mul(GENERATOR_SHARE_OF_LAG) >= lag_p99)
            || (busy >= GENERATOR_BUSY_WARN && lag_p99 > SEND_LAG_WARN_US);
        if generator_late {
            let cause = match &sharing {
                Some(s) => format!(
                    " It was {s}{used}: the two competed for the same cores, so neither these latencies nor \
                     this rate are the server's alone. Give each its own cores (fewer server workers, taskset), \
                     or lower --rate."
                ),
                None => format!(
                    "{used}. These latencies overstate the server's; use more --cores or a lower --rate."
                ),
            };
            w.push(format!(
                "RINGLOAD IS THE BOTTLENECK: it fell behind its schedule by its own doing: requests left late by \
                 p99 {} (max {}), {} of that after a connection was free (p99); it sent {:.0}/s of the {target:.0}/s \
                 schedule inside the window ({:.1}% behind), and its busiest worker wanted a CPU {:.0}% of the window{cause}",
                fmt_us(lag_p99),
                fmt_us(m.send_lag_us.max()),
                fmt_us(gen_p99),
                self.sent_rate(),
                (100.0 * (1.0 - self.sent_rate() / target)).max(0.0),
                100.0 * busy
            ));
        } else if let Some(s) = &sharing {
            w.push(format!(
                "RINGLOAD SHARED THE SERVER'S CPUS ({s}{used}). It kept its schedule (generator delay p99 {}), \
                 but the server waited for the CPU time ringload used, so these latencies are higher than the \
                 server alone would give. Give each its own cores for the server's own figures.",
                fmt_us(gen_p99)
            ));
        }
        // Most of the lag was spent waiting for a connection, not on ringload.
        if !generator_late && lag_p99 > SEND_LAG_WARN_US && lag_p99 > 2 * gen_p99 {
            w.push(format!(
                "REQUESTS WAITED FOR A FREE CONNECTION: send lag p99 {} (max {}) with all {} connections busy; \
                 {:.0}/s of the {target:.0}/s schedule went out inside the window. The corrected latency counts \
                 this wait, as a user arriving on schedule feels it. If the service time stayed low outside \
                 stalls, the {} connections are too few for this rate: raise --connections.",
                fmt_us(lag_p99),
                fmt_us(m.send_lag_us.max()),
                self.run.connections,
                self.sent_rate(),
                self.run.connections
            ));
        }
        let achieved = self.achieved_rate();
        if achieved < RATE_SHORTFALL * target {
            w.push(format!(
                "ACHIEVED RATE {achieved:.0}/s IS BELOW THE {target:.0}/s TARGET ({:.1}%): errors {}, see the send lag.",
                100.0 * achieved / target,
                m.errors.total()
            ));
        }
        w
    }

    /// The `--json` document (times in µs).
    pub fn to_json(&self) -> Value {
        let m = &self.measured;
        let status: Map<String, Value> = m
            .status
            .iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect();
        let timeline: Vec<Value> = m
            .timeline
            .iter()
            .enumerate()
            .map(|(t, s)| {
                json!({
                    "t": t,
                    "requests": s.requests,
                    "errors": s.errors,
                    "p99_us": value_at(&s.latency_us, 0.99),
                })
            })
            .collect();
        json!({
            "requests": m.requests,
            "duration_s": self.duration.as_secs_f64(),
            "rate_target": self.rate_target,
            "rate_achieved": self.achieved_rate(),
            "rate_sent_in_window": self.sent_rate(),
            "busiest_worker": m.busiest_worker,
            "bytes": m.bytes_received,
            "bytes_sent": m.bytes_sent,
            "status": status,
            "errors": {
                "connect": m.errors.connect,
                "timeout": m.errors.timeout,
                "reset": m.errors.reset,
                "parse": m.errors.parse,
            },
            "id_mismatches": m.ids.mismatches(),
            "id_check": self.run.check_id.as_ref().map(|name| json!({
                "name": name,
                "checked": m.ids.checked,
                "other": m.ids.other,
                "missing": m.ids.missing,
                "examples": m.ids.examples,
            })),
            "latency_us": quantiles_json(&m.latency_us),
            "latency_uncorrected_us": quantiles_json(&m.service_us),
            "send_lag_us": quantiles_json(&m.send_lag_us),
            "generator_delay_us": quantiles_json(&m.generator_delay_us),
            "timeline": timeline,
            "warnings": self.warnings,
            "run": {
                "version": self.run.version,
                "cores": self.run.cores,
                "cores_used": self.run.cores_used,
                "cpus": self.run.cpus,
                "local_server": self.run.local_server,
                "shared_cpus": self.run.shared_cpus,
                "connections": self.run.connections,
                "url": self.run.url,
                "mode": if self.rate_target.is_some() { "open-loop" } else { "closed-loop" },
                "arrival": match self.run.arrival { Arrival::Constant => "constant", Arrival::Poisson => "poisson" },
                "pipeline": self.run.pipeline,
                "warmup_s": self.run.warmup.as_secs_f64(),
                "closed_loop_correction_interval_us": m.correction_interval_us,
            },
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let m = &self.measured;
        let mut s = String::new();
        let mode = match self.rate_target {
            Some(r) => format!(
                "open loop at {r:.0} req/s ({})",
                match self.run.arrival {
                    Arrival::Constant => "constant spacing",
                    Arrival::Poisson => "poisson arrivals",
                }
            ),
            None => "closed loop (max throughput)".to_string(),
        };
        let _ = writeln!(
            s,
            "ringload {}: {}\n  {mode}, {} connection(s) on {} core(s), {} measured after {} warm-up",
            self.run.version,
            self.run.url,
            self.run.connections,
            self.run.cores,
            humantime::format_duration(self.duration),
            humantime::format_duration(self.run.warmup)
        );
        let _ = writeln!(s);
        let target = self
            .rate_target
            .map(|r| format!(" (target {r:.0}, {:.2}%)", 100.0 * self.achieved_rate() / r))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  requests   {} in {:.2}s = {:.1} req/s{target}",
            m.requests,
            self.duration.as_secs_f64(),
            self.achieved_rate()
        );
        let _ = writeln!(
            s,
            "  bytes      {} received, {} sent",
            fmt_bytes(m.bytes_received),
            fmt_bytes(m.bytes_sent)
        );
        let statuses: Vec<String> = m.status.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let _ = writeln!(
            s,
            "  status     {}",
            if statuses.is_empty() {
                "none".to_string()
            } else {
                statuses.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "  errors     connect {}, timeout {}, reset {}, parse {}",
            m.errors.connect, m.errors.timeout, m.errors.reset, m.errors.parse
        );
        if let Some(name) = &self.run.check_id {
            let _ = writeln!(
                s,
                "  ids        {name}: {} checked, {} mismatches ({} another request's, {} none)",
                m.ids.checked,
                m.ids.mismatches(),
                m.ids.other,
                m.ids.missing
            );
            for e in &m.ids.examples {
                let _ = writeln!(s, "             {e}");
            }
        }
        let _ = writeln!(s);
        let _ = write!(s, "  {:<26}", "");
        for (_, _, label) in QUANTILES {
            let _ = write!(s, "{label:>10}");
        }
        let _ = writeln!(s, "{:>10}", "max");
        let mut row = |name: &str, h: &Histogram<u64>| {
            let _ = write!(s, "  {name:<26}");
            for (q, _, _) in QUANTILES {
                let _ = write!(s, "{:>10}", fmt_us(value_at(h, q)));
            }
            let _ = writeln!(s, "{:>10}", fmt_us(h.max()));
        };
        if self.rate_target.is_some() {
            row("latency (corrected)", &m.latency_us);
            row("service time (uncorrected)", &m.service_us);
            row("send lag", &m.send_lag_us);
        } else {
            row("latency (post-corrected)", &m.latency_us);
            row("service time (measured)", &m.service_us);
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:>6} {:>10} {:>8} {:>10}",
            "second", "responses", "errors", "p99"
        );
        for (t, sec) in m.timeline.iter().enumerate() {
            if sec.requests == 0 && sec.errors == 0 && t >= self.duration.as_secs() as usize {
                continue;
            }
            let _ = writeln!(
                s,
                "  {t:>6} {:>10} {:>8} {:>10}",
                sec.requests,
                sec.errors,
                fmt_us(value_at(&sec.latency_us, 0.99))
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "\n  WARNING: {w}");
        }
        s
    }

    /// The headline histogram as HdrHistogram's percentile distribution
    /// text (`outputPercentileDistribution`, values in milliseconds, 5 ticks
    /// per half distance), the format wrk2 prints and the HdrHistogram
    /// plotter reads.
    pub fn hgrm(&self) -> String {
        hgrm(&self.measured.latency_us)
    }

    /// Per-request rows (`--raw`): µs since the measured window opened.
    pub fn raw_csv(&self) -> String {
        let mut s = String::from("worker,intended_us,sent_us,done_us,status\n");
        for r in &self.measured.raw {
            let intended = r.intended_us.map(|v| v.to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                "{},{},{},{},{}",
                r.worker, intended, r.sent_us, r.done_us, r.status
            );
        }
        s
    }
}

/// HdrHistogram's percentile distribution text for a µs histogram, in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE)
    };
    let _ = writeln!(s, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]");
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        // HdrHistogram's sub-bucket count: 2·10^digits rounded up to a power of two.
        (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_histogram;

    /// An open-loop report at 1000/s for 1 s whose requests all left
    /// `lag_us` late, `gen_us` of it after a connection was free, with the
    /// busiest worker wanting a CPU `busy` of the window.
    fn open_loop(lag_us: u64, gen_us: u64, busy: f64, sent: u64) -> Report {
        let mut m = Measured::merge(Vec::new());
        for _ in 0..1000 {
            m.send_lag_us.record(lag_us.max(1)).unwrap();
            m.generator_delay_us.record(gen_us.max(1)).unwrap();
            m.latency_us.record(lag_us + 100).unwrap();
        }
        m.requests = 1000;
        m.sent_in_window = sent;
        m.busiest_worker = Some(busy);
        let mut r = Report {
            measured: m,
            duration: Duration::from_secs(1),
            rate_target: Some(1000.0),
            run: RunInfo {
                version: "test",
                cores: 1,
                connections: 64,
                url: "http://h/".into(),
                arrival: Arrival::Constant,
                warmup: Duration::ZERO,
                pipeline: 1,
                check_id: None,
                cpus: vec![1],
                shared_cpus: Vec::new(),
                local_server: None,
                cores_used: Some(0.5),
            },
            warnings: Vec::new(),
        };
        r.warnings = r.find_warnings();
        r
    }

    fn bottleneck(r: &Report) -> Option<&String> {
        r.warnings
            .iter()
            .find(|w| w.starts_with("RINGLOAD IS THE BOTTLENECK"))
    }

    #[test]
    fn the_bottleneck_alarm_fires_when_ringload_is_late_and_says_by_how_much() {
        // Slow to send once a connection was free.
        let r = open_loop(5_000, 4_000, 0.5, 1000);
        assert!(bottleneck(&r).is_some(), "{:?}", r.warnings);
        // A worker that never idled while requests left late: the lag hides
        // in responses waiting to be read, not in the generator delay.
        let r = open_loop(20_000, 2, 0.99, 800);
        let w = bottleneck(&r).expect("alarm");
        assert!(
            w.contains("it sent 800/s of the 1000/s schedule inside the window (20.0% behind)"),
            "{w}"
        );
        assert!(
            w.contains("p99 20.") && w.contains("99% of the window"),
            "{w}"
        );
        assert!(
            !r.warnings.iter().any(|w| w.starts_with("REQUESTS WAITED")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn the_bottleneck_alarm_stays_quiet_when_ringload_kept_up_or_the_server_was_slow() {
        // On schedule, however busy.
        let r = open_loop(50, 2, 0.99, 1000);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // Late because every connection was busy (a slow server) while the
        // worker mostly slept: the server's doing, reported as such.
        let r = open_loop(20_000, 2, 0.30, 800);
        assert!(bottleneck(&r).is_none(), "{:?}", r.warnings);
        assert!(r
            .warnings
            .iter()
            .any(|w| w.starts_with("REQUESTS WAITED FOR A FREE CONNECTION")));
    }

    #[test]
    fn a_stall_on_a_busy_machine_is_blamed_on_the_connections() {
        // 441 ms of lag waiting for connections, 1.3 ms of it ringload's own.
        let r = open_loop(441_000, 1_300, 0.08, 1000);
        assert!(bottleneck(&r).is_none(), "{:?}", r.warnings);
        assert!(r
            .warnings
            .iter()
            .any(|w| w.starts_with("REQUESTS WAITED FOR A FREE CONNECTION")));
        // A tenth of the lag is ringload's: it is late, and says so.
        let r = open_loop(441_000, 50_000, 0.08, 1000);
        assert!(bottleneck(&r).is_some(), "{:?}", r.warnings);
    }

    #[test]
    fn bytes_are_shown_in_binary_units_only() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1024), "1.0 KiB");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
        assert_eq!(fmt_bytes(u64::MAX), "16777216.0 TiB");
        for b in [1, 999, 1000, 10_000, 10_000_000, 1 << 40] {
            let s = fmt_bytes(b);
            assert!(!s.contains("KB") && !s.contains("MB"), "{s}");
        }
    }

    #[test]
    fn hgrm_lists_rising_percentiles_ending_at_one_in_ms() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let text = hgrm(&h);
        let mut last_q = -1.0;
        let mut rows = 0;
        for line in text.lines().skip(2).take_while(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert!(cols.len() == 4 || cols.len() == 3, "{line}");
            let q: f64 = cols[1].parse().unwrap();
            assert!(q >= last_q);
            last_q = q;
            rows += 1;
        }
        assert!(rows > 20);
        assert_eq!(last_q, 1.0);
        // Max 100 000 µs = 100 ms.
        assert!(
            text.contains("#[Max     =      100.031") || text.contains("#[Max     =      100.0"),
            "{text}"
        );
        assert!(text.contains("Total count    =        10000"));
    }

    #[test]
    fn latency_formatting_picks_a_readable_unit() {
        assert_eq!(fmt_us(999), "999µs");
        assert_eq!(fmt_us(12_345), "12.35ms");
        assert_eq!(fmt_us(1_500_000), "1.500s");
    }
}
