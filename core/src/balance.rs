//! Backend choice within an upstream: round robin.
//!
//! Owns only a cursor; the backend list itself (and which backends are
//! healthy) belongs to the caller, which passes the count of candidates on
//! every pick. No I/O and no shared state here: each worker keeps its own
//! `RoundRobin`, so picks need no synchronisation.

/// Cycles through `0..backend_count`, one index per pick.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Starts at backend 0.
    pub fn new() -> Self {
        RoundRobin { next: 0 }
    }

    /// Starts at `offset` (taken modulo the count at the first pick), so that
    /// workers started together do not all send their first request to the
    /// same backend.
    pub fn starting_at(offset: usize) -> Self {
        RoundRobin { next: offset }
    }

    /// The next backend index, or `None` when there are no backends. The
    /// count may change between picks (a backend set was swapped); the cursor
    /// then wraps into the new range.
    pub fn pick(&mut self, backend_count: usize) -> Option<usize> {
        if backend_count == 0 {
            return None;
        }
        let picked = self.next % backend_count;
        // picked < backend_count <= usize::MAX, so this cannot overflow.
        self.next = picked + 1;
        Some(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backends_gives_none() {
        let mut rr = RoundRobin::new();
        assert_eq!(rr.pick(0), None);
        assert_eq!(rr.pick(3), Some(0));
    }

    #[test]
    fn picks_cycle_in_order_from_zero() {
        let mut rr = RoundRobin::new();
        let picks: Vec<_> = (0..7).map(|_| rr.pick(3)).collect();
        let expected = [0, 1, 2, 0, 1, 2, 0].map(Some);
        assert_eq!(picks, expected);
    }

    #[test]
    fn each_backend_is_picked_equally_over_whole_rounds() {
        for n in 1..=8 {
            for k in 1..=5 {
                let mut rr = RoundRobin::starting_at(n + 1);
                let mut counts = vec![0usize; n];
                for _ in 0..k * n {
                    let i = rr.pick(n).expect("backends present");
                    counts[i] += 1;
                }
                assert!(counts.iter().all(|&c| c == k), "n={n} k={k} {counts:?}");
            }
        }
    }

    #[test]
    fn starting_offset_is_the_first_pick() {
        let mut rr = RoundRobin::starting_at(2);
        assert_eq!(rr.pick(4), Some(2));
        assert_eq!(rr.pick(4), Some(3));
        assert_eq!(rr.pick(4), Some(0));
        // An offset past the count wraps.
        let mut rr = RoundRobin::starting_at(9);
        assert_eq!(rr.pick(4), Some(1));
    }

    #[test]
    fn shrinking_backend_set_stays_in_range() {
        let mut rr = RoundRobin::new();
        for _ in 0..5 {
            rr.pick(10);
        }
        assert_eq!(rr.pick(2), Some(1));
        assert_eq!(rr.pick(2), Some(0));
        let mut rr = RoundRobin::starting_at(usize::MAX);
        assert_eq!(rr.pick(usize::MAX), Some(0));
        assert_eq!(rr.pick(1), Some(0));
    }
}
