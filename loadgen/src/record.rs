//! Measurement: per-worker histograms and counters, the coordinated-omission
//! correction, and the merge of all workers into one [`Measured`] result.
//!
//! Owns what a timestamp means. No I/O and no clock here: the engine passes
//! `Instant`s in, so the correction is unit-tested on made-up timelines.
//!
//! Open loop (a `--rate`): every request has an intended send time on the
//! schedule, and three values are recorded per response:
//!
//! ```text
//! latency  = done − intended     (the headline: what a user arriving on schedule waits)
//! service  = done − sent         (what wrk and most tools report)
//! send lag = sent − intended     (how late the request left)
//! ```
//!
//! `latency = service + send lag`, exactly. No `record_correct` on top: the
//! lag is already in `latency`, correcting again would count a stall twice.
//!
//! The send lag is split once more so a slow generator cannot pass for a slow
//! server: `generator delay = sent − max(intended, free_at)`, where `free_at`
//! is when the connection became free. Lag spent waiting for a busy
//! connection is the server's doing (or too few `--connections`); lag after
//! the connection was free is ringload's own (CPU, timer) and is reported as
//! such.
//!
//! Closed loop (no `--rate`): there is no schedule, so only the service time
//! is measured, and the headline latency is HdrHistogram's post-correction
//! `clone_correct(mean service time)`: each connection is expected to issue a
//! request every mean-service-time, and a response slower than that hides the
//! requests that would have been sent meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::id::IdSeen;

/// Lowest recordable value: 1 µs.
pub const HIST_LOW_US: u64 = 1;
/// Highest recordable value: 1 h in µs; longer values are clamped to it.
pub const HIST_HIGH_US: u64 = 3_600_000_000;
/// Significant digits of the run histograms (0.1% value resolution).
pub const HIST_SIGFIG: u8 = 3;
/// The per-second timeline keeps one histogram per second; 2 digits (1%)
/// make each ~26 KiB instead of ~190 KiB, enough for a per-second p99.
pub const TIMELINE_SIGFIG: u8 = 2;
/// Status codes are three digits (RFC 9110 §15), so a flat table covers them.
const STATUS_CODES: usize = 1000;
/// Mismatched responses described in words, per worker and merged: enough
/// to see the pattern, bounded however many there are.
pub const ID_EXAMPLES_MAX: usize = 5;

/// A histogram with the run's bounds.
pub fn new_histogram() -> Histogram<u64> {
    histogram_with(HIST_SIGFIG)
}

fn histogram_with(sigfig: u8) -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's rules (low >= 1,
    // high >= 2 low, sigfig <= 5); this cannot fail at run time.
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, sigfig)
        .expect("constant histogram bounds")
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(HIST_LOW_US, HIST_HIGH_US)
}

fn record(h: &mut Histogram<u64>, value_us: u64) {
    // In range by construction (`us` clamps), so this cannot fail.
    let _ = h.record(value_us.clamp(HIST_LOW_US, HIST_HIGH_US));
}

/// Why a request got no response. Status codes are counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// TCP connect or TLS handshake failed.
    Connect,
    /// No complete response within `--timeout`.
    Timeout,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// The server sent something that is not a valid HTTP/1.1 response.
    Parse,
}

/// Error counts by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub reset: u64,
    pub parse: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.parse
    }

    fn add(&mut self, class: ErrorClass, n: u64) {
        match class {
            ErrorClass::Connect => self.connect += n,
            ErrorClass::Timeout => self.timeout += n,
            ErrorClass::Reset => self.reset += n,
            ErrorClass::Parse => self.parse += n,
        }
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.parse += o.parse;
    }
}

/// What `--check-id` found. Counted over every response read, warm-up and
/// drain included: a response crossed between requests is a fault
/// whenever it happens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdCounts {
    /// Responses whose body was checked.
    pub checked: u64,
    /// Bodies carrying another request's id.
    pub other: u64,
    /// Bodies carrying no id at all.
    pub missing: u64,
    /// The first few mismatches, in words.
    pub examples: Vec<String>,
}

impl IdCounts {
    pub fn mismatches(&self) -> u64 {
        self.other + self.missing
    }

    /// Counts one checked response; `example` describes it, called only
    /// for a mismatch while fewer than `ID_EXAMPLES_MAX` are kept.
    pub fn count(&mut self, seen: IdSeen, example: impl FnOnce() -> String) {
        match seen {
            IdSeen::Unchecked => return,
            IdSeen::Match => {}
            IdSeen::Other(_) => self.other += 1,
            IdSeen::Missing => self.missing += 1,
        }
        self.checked += 1;
        if seen.is_mismatch() && self.examples.len() < ID_EXAMPLES_MAX {
            self.examples.push(example());
        }
    }

    fn merge(&mut self, o: IdCounts) {
        self.checked += o.checked;
        self.other += o.other;
        self.missing += o.missing;
        let room = ID_EXAMPLES_MAX - self.examples.len();
        self.examples.extend(o.examples.into_iter().take(room));
    }
}

/// The timestamps of one request.
#[derive(Debug, Clone, Copy)]
pub struct Stamps {
    /// On the schedule (open loop only).
    pub intended: Option<Instant>,
    /// When the connection that sent it became free for it.
    pub free_at: Instant,
    /// When ringload started sending it (connecting first, if it had to).
    pub sent: Instant,
    /// When its response was complete.
    pub done: Instant,
}

/// The values one response contributes, in µs. Pure arithmetic on [`Stamps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub latency_us: u64,
    pub service_us: u64,
    pub send_lag_us: u64,
    pub generator_delay_us: u64,
}

impl Timing {
    pub fn of(s: &Stamps) -> Timing {
        let service = s.done.saturating_duration_since(s.sent);
        match s.intended {
            Some(intended) => {
                let lag = s.sent.saturating_duration_since(intended);
                let ready = intended.max(s.free_at);
                Timing {
                    latency_us: us(s.done.saturating_duration_since(intended)),
                    service_us: us(service),
                    send_lag_us: us(lag),
                    generator_delay_us: us(s.sent.saturating_duration_since(ready)),
                }
            }
            None => Timing {
                latency_us: us(service),
                service_us: us(service),
                send_lag_us: HIST_LOW_US,
                generator_delay_us: HIST_LOW_US,
            },
        }
    }
}

/// One response as it happened, kept only with `--raw`, so the percentiles
/// can be recomputed outside ringload. Times are µs since the measured
/// window started (negative: before it, impossible for kept rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSample {
    pub worker: u32,
    pub intended_us: Option<i64>,
    pub sent_us: i64,
    pub done_us: i64,
    pub status: u16,
}

/// One second of the timeline: responses completed in it and their latency.
#[derive(Debug, Clone)]
pub struct Second {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Second {
            requests: 0,
            errors: 0,
            latency_us: histogram_with(TIMELINE_SIGFIG),
        }
    }
}

/// The measured window and what is kept about it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
    /// Seconds of timeline kept: the window plus the drain after it.
    pub timeline_seconds: usize,
    pub open_loop: bool,
    /// Rows of raw samples this worker keeps (0 = none).
    pub raw_limit: usize,
}

/// One worker's measurements. Owned by that worker; merged after the run.
#[derive(Debug)]
pub struct Recorder {
    window: Window,
    worker: u32,
    pub requests: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    status: Vec<u64>,
    pub errors: ErrorCounts,
    pub ids: IdCounts,
    /// Open loop only: in closed loop `Measured::merge` derives the headline
    /// from `service_us`, so the same value is not recorded twice.
    pub latency_us: Histogram<u64>,
    pub service_us: Histogram<u64>,
    pub send_lag_us: Histogram<u64>,
    pub generator_delay_us: Histogram<u64>,
    /// Measured requests that went out before the window closed.
    pub sent_in_window: u64,
    /// Share of the window this worker's thread wanted a CPU (ran or waited
    /// to run): near 1 means it never idled, so it set the pace.
    pub busy: Option<f64>,
    timeline: Vec<Second>,
    raw: Vec<RawSample>,
}

impl Recorder {
    pub fn new(window: Window, worker: usize) -> Self {
        Recorder {
            window,
            worker: u32::try_from(worker).unwrap_or(u32::MAX),
            requests: 0,
            bytes_received: 0,
            bytes_sent: 0,
            status: vec![0; STATUS_CODES],
            errors: ErrorCounts::default(),
            ids: IdCounts::default(),
            latency_us: new_histogram(),
            service_us: new_histogram(),
            send_lag_us: new_histogram(),
            generator_delay_us: new_histogram(),
            sent_in_window: 0,
            busy: None,
            timeline: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// A request belongs to the measured window by when it was meant to go
    /// (open loop) or went (closed loop), not by when it came back: a slow
    /// response to a request of the window still counts, late.
    pub fn measured(&self, intended: Option<Instant>, sent: Instant) -> bool {
        let t = intended.unwrap_or(sent);
        t >= self.window.start && t < self.window.end
    }

    fn second(&mut self, done: Instant) -> Option<&mut Second> {
        if self.window.timeline_seconds == 0 {
            return None;
        }
        let idx = usize::try_from(done.saturating_duration_since(self.window.start).as_secs())
            .unwrap_or(usize::MAX)
            .min(self.window.timeline_seconds - 1);
        while self.timeline.len() <= idx {
            self.timeline.push(Second::new());
        }
        self.timeline.get_mut(idx)
    }

    /// A complete response. Returns the timing it recorded, or `None` when
    /// the request was outside the measured window (warm-up).
    pub fn response(&mut self, s: &Stamps, status: u16, bytes: u64) -> Option<Timing> {
        if !self.measured(s.intended, s.sent) {
            return None;
        }
        let t = Timing::of(s);
        self.requests += 1;
        self.sent_in_window += u64::from(s.sent < self.window.end);
        self.bytes_received += bytes;
        if let Some(slot) = self.status.get_mut(usize::from(status)) {
            *slot += 1;
        }
        record(&mut self.service_us, t.service_us);
        if self.window.open_loop {
            // Closed loop: `merge` builds the headline from `service_us`.
            record(&mut self.latency_us, t.latency_us);
            record(&mut self.send_lag_us, t.send_lag_us);
            record(&mut self.generator_delay_us, t.generator_delay_us);
        }
        if let Some(sec) = self.second(s.done) {
            sec.requests += 1;
            record(&mut sec.latency_us, t.latency_us);
        }
        if self.raw.len() < self.window.raw_limit {
            let rel = |i: Instant| -> i64 {
                if i >= self.window.start {
                    i64::try_from((i - self.window.start).as_micros()).unwrap_or(i64::MAX)
                } else {
                    -i64::try_from((self.window.start - i).as_micros()).unwrap_or(i64::MAX)
                }
            };
            let row = RawSample {
                worker: self.worker,
                intended_us: s.intended.map(rel),
                sent_us: rel(s.sent),
                done_us: rel(s.done),
                status,
            };
            self.raw.push(row);
        }
        Some(t)
    }

    /// `n` requests that got no response, for one reason.
    pub fn error(
        &mut self,
        class: ErrorClass,
        n: u64,
        intended: Option<Instant>,
        sent: Instant,
        now: Instant,
    ) {
        if !self.measured(intended, sent) {
            return;
        }
        self.errors.add(class, n);
        if let Some(sec) = self.second(now) {
            sec.errors += n;
        }
    }

    pub fn add_sent_bytes(&mut self, n: u64) {
        self.bytes_sent += n;
    }
}

/// All workers' measurements, merged.
#[derive(Debug, Clone)]
pub struct Measured {
    pub requests: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
    /// `--check-id` results (all zero without it).
    pub ids: IdCounts,
    /// The headline: corrected for coordinated omission.
    pub latency_us: Histogram<u64>,
    /// Service time from the actual send: the uncorrected figure.
    pub service_us: Histogram<u64>,
    /// Actual − intended send time (open loop; empty in closed loop).
    pub send_lag_us: Histogram<u64>,
    /// The part of the send lag that was ringload's own delay.
    pub generator_delay_us: Histogram<u64>,
    /// Measured requests sent before the window closed (the rest went late).
    pub sent_in_window: u64,
    /// The busiest worker's share of the window spent wanting a CPU.
    pub busiest_worker: Option<f64>,
    pub timeline: Vec<Second>,
    pub raw: Vec<RawSample>,
    /// Closed loop: the expected interval used for `clone_correct`, per worker.
    pub correction_interval_us: Vec<u64>,
}

impl Measured {
    /// Merges worker recorders. In closed loop each worker's headline
    /// histogram is rebuilt as its service histogram post-corrected with
    /// that worker's mean service time.
    pub fn merge(recorders: Vec<Recorder>) -> Measured {
        let mut m = Measured {
            requests: 0,
            bytes_received: 0,
            bytes_sent: 0,
            status: BTreeMap::new(),
            errors: ErrorCounts::default(),
            ids: IdCounts::default(),
            latency_us: new_histogram(),
            service_us: new_histogram(),
            send_lag_us: new_histogram(),
            generator_delay_us: new_histogram(),
            sent_in_window: 0,
            busiest_worker: None,
            timeline: Vec::new(),
            raw: Vec::new(),
            correction_interval_us: Vec::new(),
        };
        for r in recorders {
            m.requests += r.requests;
            m.sent_in_window += r.sent_in_window;
            m.busiest_worker = match (m.busiest_worker, r.busy) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            m.bytes_received += r.bytes_received;
            m.bytes_sent += r.bytes_sent;
            for (code, &n) in r.status.iter().enumerate() {
                if n > 0 {
                    *m.status.entry(code as u16).or_insert(0) += n;
                }
            }
            m.errors.merge(&r.errors);
            m.ids.merge(r.ids);
            // Same bounds everywhere, so `add` cannot fail.
            if r.window.open_loop {
                let _ = m.latency_us.add(&r.latency_us);
            } else {
                let interval = closed_loop_interval_us(&r.service_us);
                m.correction_interval_us.push(interval);
                let _ = m.latency_us.add(r.service_us.clone_correct(interval));
            }
            let _ = m.service_us.add(&r.service_us);
            let _ = m.send_lag_us.add(&r.send_lag_us);
            let _ = m.generator_delay_us.add(&r.generator_delay_us);
            for (i, sec) in r.timeline.into_iter().enumerate() {
                if m.timeline.len() <= i {
                    m.timeline.push(Second::new());
                }
                let into = &mut m.timeline[i];
                into.requests += sec.requests;
                into.errors += sec.errors;
                let _ = into.latency_us.add(&sec.latency_us);
            }
            m.raw.extend(r.raw);
        }
        m
    }

    /// Responses with a 2xx or 3xx status.
    pub fn ok_responses(&self) -> u64 {
        self.status.range(200..400).map(|(_, n)| n).sum()
    }
}

/// The interval at which one closed-loop connection is expected to send:
/// its mean service time (it sends the next request as soon as the last
/// response is in).
pub fn closed_loop_interval_us(service: &Histogram<u64>) -> u64 {
    if service.is_empty() {
        return HIST_LOW_US;
    }
    (service.mean().round() as u64).max(HIST_LOW_US)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn window(t0: Instant, secs: u64, open_loop: bool) -> Window {
        Window {
            start: t0,
            end: t0 + Duration::from_secs(secs),
            timeline_seconds: secs as usize + 1,
            open_loop,
            raw_limit: 0,
        }
    }

    #[test]
    fn latency_is_service_plus_send_lag() {
        let t0 = Instant::now();
        let s = Stamps {
            intended: Some(t0 + ms(10)),
            free_at: t0 + ms(30),
            sent: t0 + ms(31),
            done: t0 + ms(36),
        };
        let t = Timing::of(&s);
        assert_eq!(t.service_us, 5_000);
        assert_eq!(t.send_lag_us, 21_000);
        assert_eq!(t.latency_us, 26_000);
        // Of the lag, 20 ms waited for the connection; 1 ms was ours.
        assert_eq!(t.generator_delay_us, 1_000);
    }

    #[test]
    fn a_request_sent_early_has_no_negative_lag() {
        let t0 = Instant::now();
        let s = Stamps {
            intended: Some(t0 + ms(10)),
            free_at: t0,
            sent: t0 + ms(9),
            done: t0 + ms(12),
        };
        let t = Timing::of(&s);
        assert_eq!(t.send_lag_us, HIST_LOW_US);
        assert_eq!(t.latency_us, 2_000);
        assert_eq!(t.service_us, 3_000);
    }

    /// A discrete-event model of one connection at 1000 req/s against a
    /// server that answers in 100 µs but stalls 100 ms at t = 1 s. The
    /// corrected histogram must show what a user arriving every 1 ms saw:
    /// ~100 requests waiting 0..100 ms; the service time shows one slow
    /// request only.
    #[test]
    fn open_loop_correction_shows_a_stall_that_service_time_hides() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(window(t0, 2, true), 0);
        let service = Duration::from_micros(100);
        let stall = (Duration::from_secs(1), Duration::from_millis(1100));
        let mut free_at = t0;
        for i in 0..2000u64 {
            let intended = t0 + ms(i);
            let sent = intended.max(free_at);
            let rel = sent - t0;
            let done = if rel >= stall.0 && rel < stall.1 {
                t0 + stall.1 + service
            } else {
                sent + service
            };
            rec.response(
                &Stamps {
                    intended: Some(intended),
                    free_at,
                    sent,
                    done,
                },
                200,
                100,
            );
            free_at = done;
        }
        let m = Measured::merge(vec![rec]);
        assert_eq!(m.requests, 2000);
        // 100 of 2000 requests (5%) fall in the stall, waiting 100..0 ms.
        // p99 sits at the 80% point of that ramp: ~80 ms (wrk2's picture).
        let p99 = m.latency_us.value_at_quantile(0.99);
        assert!((75_000..=85_000).contains(&p99), "corrected p99 {p99}");
        let p90 = m.latency_us.value_at_quantile(0.90);
        assert!(
            p90 < 1_000,
            "corrected p90 {p90}: 95% of requests are unaffected"
        );
        // Uncorrected: only the request caught in the stall is slow.
        assert!(m.service_us.value_at_quantile(0.99) < 1_000);
        assert!(m.service_us.max() > 99_000);
        // The lag was waiting for the connection, not ringload being late.
        assert!(m.send_lag_us.max() > 99_000);
        assert_eq!(m.generator_delay_us.max(), HIST_LOW_US);
    }

    #[test]
    fn open_loop_does_not_correct_twice() {
        // One request 1 s late on an otherwise idle schedule: recorded once,
        // not multiplied into phantom requests as record_correct would.
        let t0 = Instant::now();
        let mut rec = Recorder::new(window(t0, 10, true), 0);
        rec.response(
            &Stamps {
                intended: Some(t0),
                free_at: t0,
                sent: t0,
                done: t0 + Duration::from_secs(1),
            },
            200,
            0,
        );
        let m = Measured::merge(vec![rec]);
        assert_eq!(m.latency_us.len(), 1);
    }

    #[test]
    fn closed_loop_post_correction_fills_in_hidden_requests() {
        // 999 responses of 1 ms and one of 1 s on one connection: the mean
        // is ~2 ms, so the 1 s stall hides ~500 requests of 998..0 ms.
        let t0 = Instant::now();
        let mut rec = Recorder::new(window(t0, 10, false), 0);
        let mut at = t0;
        for i in 0..1000 {
            let d = if i == 500 { ms(1000) } else { ms(1) };
            rec.response(
                &Stamps {
                    intended: None,
                    free_at: at,
                    sent: at,
                    done: at + d,
                },
                200,
                0,
            );
            at += d;
        }
        let m = Measured::merge(vec![rec]);
        assert_eq!(m.requests, 1000);
        assert_eq!(m.service_us.len(), 1000);
        assert!(m.service_us.value_at_quantile(0.99) < 1_100);
        let interval = m.correction_interval_us[0];
        assert!((1_990..=2_010).contains(&interval), "interval {interval}");
        assert!(m.latency_us.len() > 1400, "{} values", m.latency_us.len());
        assert!(m.latency_us.value_at_quantile(0.99) > 500_000);
        // Closed loop has no schedule, so no lag is recorded.
        assert!(m.send_lag_us.is_empty());
    }

    #[test]
    fn warmup_requests_are_not_recorded() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_secs(1);
        let mut w = window(start, 1, true);
        w.raw_limit = 10;
        let mut rec = Recorder::new(w, 0);
        let stamps = |at: Instant| Stamps {
            intended: Some(at),
            free_at: at,
            sent: at,
            done: at + ms(1),
        };
        assert!(rec.response(&stamps(t0), 200, 10).is_none());
        assert!(rec.response(&stamps(start), 200, 10).is_some());
        // After the window: the drain, not a new request.
        assert!(rec.response(&stamps(start + ms(1000)), 200, 10).is_none());
        rec.error(ErrorClass::Reset, 1, Some(t0), t0, t0);
        rec.error(ErrorClass::Reset, 2, Some(start), start, start);
        let m = Measured::merge(vec![rec]);
        assert_eq!(m.requests, 1);
        assert_eq!(m.errors.reset, 2);
        assert_eq!(m.raw.len(), 1);
        assert_eq!(m.raw[0].intended_us, Some(0));
    }

    #[test]
    fn merge_adds_workers_and_statuses_and_timeline() {
        let t0 = Instant::now();
        let mut recs = Vec::new();
        for w in 0..2 {
            let mut rec = Recorder::new(window(t0, 3, true), w);
            for (i, status) in [200u16, 200, 503].into_iter().enumerate() {
                let at = t0 + Duration::from_secs(i as u64);
                rec.response(
                    &Stamps {
                        intended: Some(at),
                        free_at: at,
                        sent: at,
                        done: at + ms(2),
                    },
                    status,
                    7,
                );
            }
            recs.push(rec);
        }
        let m = Measured::merge(recs);
        assert_eq!(m.requests, 6);
        assert_eq!(m.bytes_received, 42);
        assert_eq!(m.status.get(&200), Some(&4));
        assert_eq!(m.status.get(&503), Some(&2));
        assert_eq!(m.ok_responses(), 4);
        assert_eq!(m.timeline.len(), 3);
        assert!(m.timeline.iter().all(|s| s.requests == 2));
    }

    #[test]
    fn values_beyond_an_hour_are_clamped_not_lost() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(window(t0, 1, true), 0);
        rec.response(
            &Stamps {
                intended: Some(t0),
                free_at: t0,
                sent: t0,
                done: t0 + Duration::from_secs(7200),
            },
            200,
            0,
        );
        let m = Measured::merge(vec![rec]);
        assert_eq!(m.latency_us.len(), 1);
        assert!(m.latency_us.max() >= HIST_HIGH_US);
    }

    #[test]
    fn id_mismatches_are_counted_by_kind_with_bounded_examples() {
        let mut recs = Vec::new();
        for w in 0..2 {
            let t0 = Instant::now();
            let mut rec = Recorder::new(window(t0, 1, true), w);
            rec.ids.count(IdSeen::Unchecked, || unreachable!());
            rec.ids.count(IdSeen::Match, || unreachable!());
            for i in 0..ID_EXAMPLES_MAX as u64 {
                rec.ids
                    .count(IdSeen::Other(i), || format!("w{w} other {i}"));
            }
            rec.ids.count(IdSeen::Missing, || format!("w{w} missing"));
            recs.push(rec);
        }
        let m = Measured::merge(recs);
        assert_eq!(m.ids.checked, 2 * (2 + ID_EXAMPLES_MAX as u64));
        assert_eq!(m.ids.other, 2 * ID_EXAMPLES_MAX as u64);
        assert_eq!(m.ids.missing, 2);
        assert_eq!(m.ids.mismatches(), 2 * (1 + ID_EXAMPLES_MAX as u64));
        assert_eq!(m.ids.examples.len(), ID_EXAMPLES_MAX);
        assert_eq!(m.ids.examples[0], "w0 other 0");
    }
}
