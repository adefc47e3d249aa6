//! Gossip message types: what one worker tells the others each tick.
//!
//! Owns the message layout only. No channels and no clock here (core has no
//! `crossbeam` dependency and no runtime): the proxy carries the messages
//! through one bounded inbox per worker.
//!
//! # Protocol
//!
//! - Every worker has a bounded inbox (`[server] gossip_inbox` messages) and
//!   a sender to every other worker's inbox. Every `gossip_interval` (default
//!   10 ms) a worker (1) drains its inbox and applies each message, then
//!   (2) builds one [`GossipMsg`] with its news since the previous tick and
//!   sends it to every other worker with `try_send`.
//! - A message carries **deltas, not state**: tokens consumed per
//!   rate-limit key ([`KeyedLimiter::take_local_usage`]), passive successes
//!   and failures per backend ([`BackendView::take_local_delta`]), this
//!   worker's probe-driven health transitions (each backend is probed by
//!   exactly one worker: backend `b` of upstream `u` by worker
//!   `(u + b) % workers` is a fine rule), and two levels that replace the
//!   previous report from the same sender: in-flight count and latency EWMA;
//!   and the backends the sender caught sending responses nobody asked for
//!   (each receiver stops reusing their connections too).
//!   Applying a message: [`KeyedLimiter::charge`] per token entry,
//!   [`BackendView::apply_remote`] per backend entry,
//!   [`BackendView::apply_health`] per health entry.
//! - **A full inbox never blocks the sender**: `try_send` fails, the sender
//!   counts the drop and moves on. A dropped message loses its deltas (those
//!   tokens are never charged on that receiver, those failures never
//!   counted). The inbox is sized so this only happens when a receiver is
//!   stalled for `gossip_inbox` ticks. Levels are sent only when they
//!   change, so a lost level would not heal by itself: after a drop the
//!   sender's next message carries every level, and every
//!   [`HEALTH_RESEND_TICKS`] ticks it sends them all anyway. A prober
//!   likewise re-sends the current health of its backends every
//!   [`HEALTH_RESEND_TICKS`] ticks, in case a transition was lost.
//! - **Reload**: indices (route, upstream, backend) refer to one config
//!   snapshot. A message carries its sender's `generation`; a receiver on
//!   another generation drops it.
//!
//! # Staleness and accuracy
//!
//! An event is published at the sender's next tick (≤ 1 interval), waits in
//! the receiver's inbox until the receiver's next drain (≤ 1 interval, plus
//! the time the receiver's loop takes to get to it), so a worker's view of
//! the others lags by at most **two gossip intervals plus scheduling delay**
//! (one interval plus channel delay when the receiver drains more often
//! than it publishes, e.g. on every loop turn).
//!
//! For rate limits the lag bounds the error. Each worker's bucket refills at
//! the full node rate `r` and is charged for every token any worker spent,
//! the others' late by the lag `d`; debt (see
//! [`TokenBucket`](crate::ratelimit::TokenBucket)) carries the late charges
//! over instead of dropping them. Over any window `T` the node admits at most
//! `r·T + burst` plus what the other workers admitted in the last `d`, a
//! constant that does not grow with `T` and that shrinks with the tick. The
//! same two-worker simulation in `ratelimit`'s tests stays within 2% of
//! `r·T + burst` over 5 s at ticks of 1, 10 and 50 ms.
//!
//! # Cost
//!
//! A message's vectors are reused: the sender keeps its last message in an
//! `Arc`, sends clones of the `Arc` to the other workers, and at the next
//! tick takes it back with `Arc::get_mut` (every receiver has dropped its
//! clone by then unless one is stalled, in which case a fresh message is
//! allocated). [`GossipMsg::clear`] keeps the capacity. Rate-limit keys are
//! packed into one byte vector instead of a `Vec` per key. The atomics of the
//! `Arc` and the channel are touched once per tick, never per request.
//!
//! [`KeyedLimiter::take_local_usage`]: crate::ratelimit::KeyedLimiter::take_local_usage
//! [`KeyedLimiter::charge`]: crate::ratelimit::KeyedLimiter::charge
//! [`BackendView::take_local_delta`]: crate::backend_view::BackendView::take_local_delta
//! [`BackendView::apply_remote`]: crate::backend_view::BackendView::apply_remote
//! [`BackendView::apply_health`]: crate::backend_view::BackendView::apply_health

use crate::backend_view::RemoteDelta;

/// A prober repeats the health of the backends it probes this often (in
/// ticks: 1 s at the default 10 ms), so a receiver that missed a transition
/// in a dropped message catches up.
pub const HEALTH_RESEND_TICKS: u32 = 100;

/// Tokens one worker consumed for one rate-limit key of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEntry {
    /// Index into the config's routes.
    pub route: u32,
    /// The key is `key_bytes[key_start..key_start + key_len]`.
    key_start: u32,
    key_len: u32,
    pub tokens: u32,
    /// Other nodes' consumption the fleet syncer learnt one sync late
    /// (charged with `KeyedLimiter::charge_remote`), not this node's.
    lagged: bool,
}

/// Passive results, in-flight level and EWMA of one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendEntry {
    pub upstream: u32,
    pub backend: u32,
    /// The sender's epoch of the backend's slot (bumped each time DNS
    /// puts another address in it): a receiver whose slot is at another
    /// epoch drops the entry, which describes another backend than its own.
    pub epoch: u32,
    pub delta: RemoteDelta,
}

/// An active health result from the backend's prober.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthEntry {
    pub upstream: u32,
    pub backend: u32,
    /// As [`BackendEntry::epoch`].
    pub epoch: u32,
    pub healthy: bool,
}

/// A backend that sent a response nobody asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrayEntry {
    pub upstream: u32,
    pub backend: u32,
    /// As [`BackendEntry::epoch`].
    pub epoch: u32,
}

/// One worker's news for one tick.
#[derive(Debug, Clone, Default)]
pub struct GossipMsg {
    /// The sending worker's index.
    pub sender: u32,
    /// Config generation the indices refer to.
    pub generation: u64,
    /// The sender's tick counter: lets a receiver notice drops (a gap).
    pub seq: u64,
    key_bytes: Vec<u8>,
    tokens: Vec<TokenEntry>,
    pub backends: Vec<BackendEntry>,
    pub health: Vec<HealthEntry>,
    /// (upstream, backend) pairs that sent a response nobody asked for
    /// since the last message: every worker stops reusing their connections.
    pub strays: Vec<StrayEntry>,
}

impl GossipMsg {
    pub fn new(sender: u32, generation: u64) -> Self {
        GossipMsg {
            sender,
            generation,
            ..GossipMsg::default()
        }
    }

    /// Empties the message for the next tick, keeping every vector's
    /// capacity, and stamps it.
    pub fn clear(&mut self, generation: u64, seq: u64) {
        self.generation = generation;
        self.seq = seq;
        self.key_bytes.clear();
        self.tokens.clear();
        self.backends.clear();
        self.health.clear();
        self.strays.clear();
    }

    /// Nothing to say: the sender may skip the send.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
            && self.backends.is_empty()
            && self.health.is_empty()
            && self.strays.is_empty()
    }

    /// Adds tokens consumed for `key` on `route`. Keys longer than
    /// `u32::MAX` bytes cannot occur ([`KeyedLimiter`] caps them at
    /// [`MAX_KEY_BYTES`]); one is skipped rather than truncated.
    ///
    /// [`KeyedLimiter`]: crate::ratelimit::KeyedLimiter
    /// [`MAX_KEY_BYTES`]: crate::ratelimit::MAX_KEY_BYTES
    pub fn push_tokens(&mut self, route: u32, key: &[u8], tokens: u32) {
        self.push_entry(route, key, tokens, false);
    }

    /// Other nodes' consumption of `key` that the fleet syncer learnt.
    pub fn push_fleet_tokens(&mut self, route: u32, key: &[u8], tokens: u32) {
        self.push_entry(route, key, tokens, true);
    }

    fn push_entry(&mut self, route: u32, key: &[u8], tokens: u32, lagged: bool) {
        let (Ok(key_start), Ok(key_len)) = (
            u32::try_from(self.key_bytes.len()),
            u32::try_from(key.len()),
        ) else {
            return;
        };
        self.key_bytes.extend_from_slice(key);
        self.tokens.push(TokenEntry {
            route,
            key_start,
            key_len,
            tokens,
            lagged,
        });
    }

    /// `(route, key, tokens, lagged)` for every token entry; `lagged`: the
    /// other nodes' consumption (see [`Self::push_fleet_tokens`]).
    pub fn tokens(&self) -> impl Iterator<Item = (u32, &[u8], u32, bool)> + '_ {
        self.tokens.iter().map(|e| {
            let start = e.key_start as usize;
            let key = &self.key_bytes[start..start + e.key_len as usize];
            (e.route, key, e.tokens, e.lagged)
        })
    }

    pub fn token_entries(&self) -> usize {
        self.tokens.len()
    }

    /// Adds a backend's delta. Its levels (in-flight, EWMA) replace what this
    /// sender reported before, so send a backend whenever its counters are
    /// non-zero or its in-flight level changed since the last tick.
    pub fn push_backend(&mut self, upstream: u32, backend: u32, epoch: u32, delta: RemoteDelta) {
        self.backends.push(BackendEntry {
            upstream,
            backend,
            epoch,
            delta,
        });
    }

    pub fn push_health(&mut self, upstream: u32, backend: u32, epoch: u32, healthy: bool) {
        self.health.push(HealthEntry {
            upstream,
            backend,
            epoch,
            healthy,
        });
    }

    pub fn push_stray(&mut self, upstream: u32, backend: u32, epoch: u32) {
        self.strays.push(StrayEntry {
            upstream,
            backend,
            epoch,
        });
    }

    /// Heap bytes held (capacity), for the admin page and tests.
    pub fn heap_bytes(&self) -> usize {
        self.key_bytes.capacity()
            + self.tokens.capacity() * std::mem::size_of::<TokenEntry>()
            + self.backends.capacity() * std::mem::size_of::<BackendEntry>()
            + self.strays.capacity() * std::mem::size_of::<StrayEntry>()
            + self.health.capacity() * std::mem::size_of::<HealthEntry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_entries_round_trip_through_the_packed_keys() {
        let mut m = GossipMsg::new(1, 7);
        m.push_tokens(0, b"10.0.0.1", 3);
        m.push_tokens(2, b"", 1);
        m.push_tokens(0, b"api-key-123", 9);
        m.push_fleet_tokens(1, b"10.0.0.2", 4);
        let got: Vec<(u32, &[u8], u32, bool)> = m.tokens().collect();
        assert_eq!(
            got,
            [
                (0, &b"10.0.0.1"[..], 3, false),
                (2, &b""[..], 1, false),
                (0, &b"api-key-123"[..], 9, false),
                (1, &b"10.0.0.2"[..], 4, true)
            ]
        );
        assert_eq!(m.token_entries(), 4);
    }

    #[test]
    fn clear_keeps_capacity_so_the_next_tick_does_not_allocate() {
        let mut m = GossipMsg::new(0, 1);
        for i in 0..100u32 {
            m.push_tokens(0, &i.to_be_bytes(), 1);
            m.push_backend(0, i, 0, RemoteDelta::default());
            m.push_health(0, i, 0, true);
        }
        let bytes = m.heap_bytes();
        m.clear(1, 2);
        assert!(m.is_empty());
        assert_eq!(m.seq, 2);
        assert_eq!(m.heap_bytes(), bytes);
        for i in 0..100u32 {
            m.push_tokens(0, &i.to_be_bytes(), 1);
            m.push_backend(0, i, 0, RemoteDelta::default());
            m.push_health(0, i, 0, true);
        }
        assert_eq!(m.heap_bytes(), bytes);
    }

    #[test]
    fn applying_a_message_charges_the_receivers_limiter_and_view() {
        use crate::backend_view::{BackendSpec, BackendView, Outcome, ViewConfig};
        use crate::ratelimit::KeyedLimiter;
        use std::time::Instant;

        let now = Instant::now();
        let specs = [
            BackendSpec {
                id: b"a",
                weight: 1,
                present: true,
            },
            BackendSpec {
                id: b"b",
                weight: 1,
                present: true,
            },
        ];
        // Worker 0 sees traffic.
        let mut limiter0 = KeyedLimiter::new(10.0, 10.0, 8);
        let mut view0 = BackendView::new(&specs, 2, ViewConfig::default());
        for _ in 0..4 {
            limiter0.admit(b"client", now);
        }
        view0.on_request_start(1, now);
        for _ in 0..5 {
            view0.on_request_start(0, now);
            view0.on_request_end(0, Outcome::ConnectFailure, now);
        }
        let mut msg = GossipMsg::new(0, 1);
        limiter0.take_local_usage(|key, n| msg.push_tokens(0, key, n));
        for b in 0..view0.len() {
            msg.push_backend(0, b as u32, 0, view0.take_local_delta(b));
        }
        msg.push_health(0, 1, 0, false);

        // Worker 1 applies it.
        let mut limiter1 = KeyedLimiter::new(10.0, 10.0, 8);
        let mut view1 = BackendView::new(&specs, 2, ViewConfig::default());
        for (_route, key, n, _) in msg.tokens() {
            limiter1.charge(key, n, now);
        }
        for e in &msg.backends {
            view1.apply_remote(msg.sender as usize, e.backend as usize, &e.delta, now);
        }
        for h in &msg.health {
            view1.apply_health(h.backend as usize, h.healthy, now);
        }
        assert_eq!(limiter1.admit(b"client", now).remaining, 5);
        assert!(!view1.is_available(1, now), "health from the prober");
        // Backend 0's five remote failures ejected it here too, but with
        // backend 1 unhealthy it is the last one left: panic mode keeps it.
        assert!(view1.is_available(0, now));
        assert_eq!(view1.load(1), 1);
    }
}
