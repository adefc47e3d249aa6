//! The open-loop send schedule: when each request is *meant* to leave.
//!
//! Owns the arithmetic of intended send times and nothing else: no clock, no
//! I/O. A run at `R` requests/s over `W` workers gives worker `w` the slots
//! `i = 0, 1, 2, ...` at
//!
//! ```text
//! constant:  t(w, i) = t0 + (i·W + w) / R
//! poisson:   t(w, 0) = t0 + w / R,  t(w, i+1) = t(w, i) + Exp(R / W)
//! ```
//!
//! so the workers interleave into one schedule of rate `R` (constant) or into
//! `W` independent Poisson streams of rate `R/W`, whose sum is a Poisson
//! stream of rate `R`. Times are offsets from `t0` so the tests can check them
//! exactly; the engine adds `t0`.

use std::time::Duration;

/// How intended send times are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Evenly spaced, `1/R` apart across the whole run (wrk2's model).
    Constant,
    /// Exponentially distributed gaps with mean `1/R` (a Poisson process).
    Poisson,
}

/// One worker's share of the schedule. Slots are handed out in order; each
/// slot is owned by exactly one request.
#[derive(Debug, Clone)]
pub struct Schedule {
    arrival: Arrival,
    rate_per_s: f64,
    workers: u64,
    worker: u64,
    next_index: u64,
    /// Poisson only: the offset of slot `next_index`, in seconds.
    next_offset_s: f64,
    rng: SplitMix64,
}

impl Schedule {
    /// Worker `worker` of `workers` at `rate_per_s` for the whole run.
    /// `seed` only matters for Poisson arrivals.
    pub fn new(
        arrival: Arrival,
        rate_per_s: f64,
        workers: usize,
        worker: usize,
        seed: u64,
    ) -> Self {
        debug_assert!(rate_per_s > 0.0 && rate_per_s.is_finite());
        debug_assert!(worker < workers);
        let workers = workers as u64;
        let worker = worker as u64;
        Schedule {
            arrival,
            rate_per_s,
            workers,
            worker,
            next_index: 0,
            next_offset_s: worker as f64 / rate_per_s,
            rng: SplitMix64(seed ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    /// Intended offset from `t0` of slot `index` on the constant schedule.
    pub fn constant_offset(rate_per_s: f64, workers: usize, worker: usize, index: u64) -> Duration {
        let slot = index as f64 * workers as f64 + worker as f64;
        Duration::from_secs_f64(slot / rate_per_s)
    }

    /// Index of the next slot `take()` will return.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Intended offset of the next slot, without taking it.
    pub fn peek(&self) -> Duration {
        match self.arrival {
            Arrival::Constant => Self::constant_offset(
                self.rate_per_s,
                self.workers as usize,
                self.worker as usize,
                self.next_index,
            ),
            Arrival::Poisson => Duration::from_secs_f64(self.next_offset_s),
        }
    }

    /// Takes the next slot and returns its intended offset from `t0`.
    pub fn take(&mut self) -> Duration {
        let at = self.peek();
        self.next_index += 1;
        if self.arrival == Arrival::Poisson {
            let per_worker_rate = self.rate_per_s / self.workers as f64;
            self.next_offset_s += self.rng.exponential(per_worker_rate);
        }
        at
    }
}

/// A tiny deterministic generator (Steele, Lea & Flood's SplitMix64): enough
/// for arrival jitter, reproducible from the seed, no dependency.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so `ln` stays finite.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// An exponential gap with the given rate (mean `1/rate`), by inversion.
    fn exponential(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_schedule_interleaves_workers_into_one_even_stream() {
        let rate = 1000.0;
        let workers = 3;
        let mut all: Vec<Duration> = Vec::new();
        for w in 0..workers {
            let mut s = Schedule::new(Arrival::Constant, rate, workers, w, 1);
            for _ in 0..100 {
                all.push(s.take());
            }
        }
        all.sort();
        // Every slot k of the merged stream sits at k / R, exactly once.
        for (k, at) in all.iter().enumerate() {
            let want = Duration::from_secs_f64(k as f64 / rate);
            let diff = at.abs_diff(want);
            assert!(
                diff < Duration::from_nanos(2),
                "slot {k}: {at:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn worker_w_sends_request_i_at_i_times_w_plus_w_over_r() {
        let mut s = Schedule::new(Arrival::Constant, 500.0, 4, 2, 0);
        for i in 0..10u64 {
            assert_eq!(s.next_index(), i);
            let want = Duration::from_secs_f64((i * 4 + 2) as f64 / 500.0);
            assert_eq!(s.take(), want);
        }
    }

    #[test]
    fn constant_offsets_do_not_drift_over_a_long_run() {
        // An hour at 1M req/s on 2 workers: the slot is computed from its
        // index, not by adding 1/R repeatedly, so it lands on the exact time.
        let at = Schedule::constant_offset(1_000_000.0, 2, 1, 1_800_000_000 - 1);
        let want = Duration::from_secs(3600) - Duration::from_micros(1);
        assert!(at.abs_diff(want) < Duration::from_nanos(1_000), "{at:?}");
    }

    #[test]
    fn poisson_schedule_has_the_requested_mean_rate_and_exponential_gaps() {
        let rate = 2000.0;
        let mut s = Schedule::new(Arrival::Poisson, rate, 2, 0, 42);
        let n = 20_000;
        let mut prev = s.take();
        let mut gaps = Vec::with_capacity(n);
        for _ in 0..n {
            let at = s.take();
            assert!(at >= prev, "times go forward");
            gaps.push((at - prev).as_secs_f64());
            prev = at;
        }
        // Per worker the rate is R/W = 1000/s: mean gap 1 ms.
        let mean = gaps.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.001).abs() < 0.00005, "mean gap {mean}");
        // Exponential: the coefficient of variation is 1 (constant would be 0).
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
    }

    #[test]
    fn poisson_schedule_is_reproducible_from_its_seed() {
        let mut a = Schedule::new(Arrival::Poisson, 100.0, 1, 0, 7);
        let mut b = Schedule::new(Arrival::Poisson, 100.0, 1, 0, 7);
        let mut c = Schedule::new(Arrival::Poisson, 100.0, 1, 0, 8);
        let xa: Vec<_> = (0..50).map(|_| a.take()).collect();
        let xb: Vec<_> = (0..50).map(|_| b.take()).collect();
        let xc: Vec<_> = (0..50).map(|_| c.take()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn peek_does_not_take_the_slot() {
        let mut s = Schedule::new(Arrival::Constant, 10.0, 1, 0, 0);
        assert_eq!(s.peek(), s.peek());
        let p = s.peek();
        assert_eq!(s.take(), p);
        assert_eq!(s.next_index(), 1);
    }
}
