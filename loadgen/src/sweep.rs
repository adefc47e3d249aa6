//! `--sweep`: find the highest rate the server sustains within a latency
//! objective, the way Nighthawk's adaptive load controller does.
//!
//! One closed-loop run measures the maximum throughput `M`; then open-loop
//! runs step the rate up by `step · M` (10% by default) until a step misses
//! the objective (corrected p99 above `--slo`, any transport error, or an
//! achieved rate under 95% of its target). The answer is the highest passing
//! rate, with the whole latency-vs-rate curve. Owns the stepping only; each
//! step is an ordinary [`engine::run`](crate::engine::run).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::RunConfig;
use crate::engine;
use crate::report::{fmt_us, Report, RATE_SHORTFALL};
use crate::Error;

/// One point of the latency-vs-rate curve.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate_target: f64,
    pub report: Report,
    pub within_slo: bool,
}

/// A finished sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub closed_loop: Report,
    pub slo: Duration,
    pub steps: Vec<Step>,
}

/// Whether a step meets the objective.
pub fn meets(report: &Report, rate_target: f64, slo: Duration) -> bool {
    let slo_us = u64::try_from(slo.as_micros()).unwrap_or(u64::MAX);
    report.latency_us(0.99) <= slo_us
        && report.measured.errors.total() == 0
        && report.achieved_rate() >= RATE_SHORTFALL * rate_target
}

/// The rates a sweep tries: `step, 2·step, ... ≤ 1` times the closed-loop
/// maximum.
pub fn step_rates(max_rate: f64, step: f64) -> Vec<f64> {
    let n = (1.0 / step + 1e-9).floor() as usize;
    (1..=n).map(|k| max_rate * step * k as f64).collect()
}

/// Runs the sweep. `on_step` sees each report as it finishes (progress).
pub fn run(
    config: &RunConfig,
    slo: Duration,
    step: f64,
    mut on_step: impl FnMut(&str),
) -> Result<Sweep, Error> {
    let closed_loop = engine::run(&config.with_rate(None))?;
    let max_rate = closed_loop.achieved_rate();
    on_step(&format!(
        "sweep: closed-loop maximum {max_rate:.0} req/s (p99 {})",
        fmt_us(closed_loop.service_us(0.99))
    ));
    if closed_loop.measured.ok_responses() == 0 || max_rate < 1.0 {
        return Err(Error::NoResponse(
            "the closed-loop run got no successful response, so there is no rate to sweep".into(),
        ));
    }
    let quiet = config.without_probe();
    let mut steps = Vec::new();
    for rate in step_rates(max_rate, step) {
        let report = engine::run(&quiet.with_rate(Some(rate)))?;
        let within_slo = meets(&report, rate, slo);
        on_step(&format!(
            "sweep: {rate:.0} req/s -> achieved {:.0}, p99 {} {}",
            report.achieved_rate(),
            fmt_us(report.latency_us(0.99)),
            if within_slo {
                "ok"
            } else {
                "MISSES the objective"
            }
        ));
        steps.push(Step {
            rate_target: rate,
            report,
            within_slo,
        });
        if !within_slo {
            break;
        }
    }
    Ok(Sweep {
        closed_loop,
        slo,
        steps,
    })
}

impl Sweep {
    /// The highest passing step (steps stop at the first miss).
    pub fn best(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.within_slo)
    }

    /// The report the JSON body describes: the best step, else the last.
    pub fn headline(&self) -> &Report {
        self.best()
            .or(self.steps.last())
            .map_or(&self.closed_loop, |s| &s.report)
    }

    /// Why the first step missed, for the error a sweep with no passing
    /// rate exits with.
    pub fn miss_summary(&self) -> String {
        let slo = fmt_us(u64::try_from(self.slo.as_micros()).unwrap_or(u64::MAX));
        match self.steps.first() {
            Some(st) => format!(
                "the lowest step, {:.0} req/s, achieved {:.0} with p99 {} (objective {slo}) and {} error(s)",
                st.rate_target,
                st.report.achieved_rate(),
                fmt_us(st.report.latency_us(0.99)),
                st.report.measured.errors.total()
            ),
            None => format!("no step ran (objective {slo})"),
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nsweep: closed-loop maximum {:.0} req/s; objective p99 <= {}\n",
            self.closed_loop.achieved_rate(),
            fmt_us(u64::try_from(self.slo.as_micros()).unwrap_or(u64::MAX))
        );
        let _ = writeln!(
            s,
            "  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}  result",
            "target/s", "achieved", "p50", "p90", "p99", "p99.9", "errors"
        );
        for st in &self.steps {
            let r = &st.report;
            let _ = writeln!(
                s,
                "  {:>10.0} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
                st.rate_target,
                r.achieved_rate(),
                fmt_us(r.latency_us(0.5)),
                fmt_us(r.latency_us(0.9)),
                fmt_us(r.latency_us(0.99)),
                fmt_us(r.latency_us(0.999)),
                r.measured.errors.total(),
                if st.within_slo { "ok" } else { "miss" }
            );
        }
        match self.best() {
            Some(b) => {
                let _ = writeln!(
                    s,
                    "\n  highest rate within the objective: {:.0} req/s (p99 {})",
                    b.rate_target,
                    fmt_us(b.report.latency_us(0.99))
                );
            }
            None => {
                let _ = writeln!(s, "\n  no rate met the objective");
            }
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let mut doc = self.headline().to_json();
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|st| {
                let r = &st.report;
                json!({
                    "rate_target": st.rate_target,
                    "rate_achieved": r.achieved_rate(),
                    "requests": r.requests(),
                    "errors": r.measured.errors.total(),
                    "latency_us": crate::report::quantiles_json(&r.measured.latency_us),
                    "within_slo": st.within_slo,
                })
            })
            .collect();
        if let Value::Object(m) = &mut doc {
            m.insert(
                "sweep".into(),
                json!({
                    "closed_loop_max": self.closed_loop.achieved_rate(),
                    "slo_us": u64::try_from(self.slo.as_micros()).unwrap_or(u64::MAX),
                    "best_rate": self.best().map(|b| b.rate_target),
                    "steps": steps,
                }),
            );
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_up_in_tenths_of_the_maximum() {
        let r = step_rates(1000.0, 0.1);
        assert_eq!(r.len(), 10);
        assert!((r[0] - 100.0).abs() < 1e-6);
        assert!((r[9] - 1000.0).abs() < 1e-6);
        assert_eq!(step_rates(1000.0, 0.25).len(), 4);
    }
}
