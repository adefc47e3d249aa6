//! Token buckets: one per rate-limit key, per worker, with node-wide
//! accuracy through gossip.
//!
//! Owns the buckets and the bounded key table of one route in one worker. A
//! worker admits against its own bucket and charges it for the tokens the
//! other workers reported consuming ([`KeyedLimiter::charge`]), so every
//! bucket sees the whole node's consumption, one gossip delay late, and the
//! node-wide admitted rate tracks the configured rate whether the traffic
//! lands on one worker or on all. A fleet-scoped route's limiter on the
//! worker that syncs with the fleet also counts the whole node's
//! consumption ([`KeyedLimiter::track_node_usage`]) and is charged for the
//! other nodes' ([`KeyedLimiter::charge_remote`]); while the fleet is out of
//! reach its rate can be cut to a share or its verdicts fixed
//! ([`KeyedLimiter::set_rate`], [`KeyedLimiter::set_verdicts`]). No I/O, no
//! clock (callers pass `now`), no shared state.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::{Duration, Instant};

/// The verdict on one request, with what the `Retry-After` (RFC 9110
/// §10.2.3) and `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset`
/// (IETF draft-ietf-httpapi-ratelimit-headers) response headers need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    pub allowed: bool,
    /// Requests the bucket holds when full (the burst).
    pub limit: u64,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// When refused: until one token is back.
    pub retry_after: Option<Duration>,
}

impl Admission {
    /// `Retry-After` takes whole seconds: rounded up, at least 1, so a
    /// client that obeys it is not refused again.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_secs(d).max(1))
    }

    /// `RateLimit-Reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// How far into debt a bucket may go by default, in seconds of its rate, on
/// top of one burst. The debt must hold everything the other workers
/// consumed in one gossip delay, or the excess is forgotten and the node
/// over-admits: with a floor of just `-burst`, two workers at 50 ms ticks and
/// a burst of 20 at 1000/s admitted 17% too much. One second covers the
/// longest `gossip_interval` (1 s) with two workers and 10 ms ticks with up
/// to 100; the floor still keeps a key from being locked out for long.
pub const DEFAULT_DEBT_SECS: f64 = 1.0;

/// A token bucket: holds up to `burst` tokens, refills at `rate_per_sec`,
/// a request takes one. It may go into debt (down to `-debt_max`) when
/// charged for other workers' consumption, so that a node-wide burst taken
/// on every worker at once is paid back rather than forgotten.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    debt_max: f64,
    tokens: f64,
    stamp: Instant,
    /// Tokens the burst cap turned away since the last `charge_lagged`.
    overflow: f64,
}

impl TokenBucket {
    /// A full bucket. `burst` below 1 is raised to 1 (a bucket that can
    /// never hold a whole token admits nothing); a rate that is not positive
    /// and finite is treated as a tiny one.
    pub fn new(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        let rate_per_sec = if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
            rate_per_sec
        } else {
            1e-9
        };
        TokenBucket {
            rate_per_sec,
            burst,
            debt_max: burst + rate_per_sec * DEFAULT_DEBT_SECS,
            tokens: burst,
            stamp: now,
            overflow: 0.0,
        }
    }

    /// Sets how many tokens of debt `charge` may run up (default: one burst
    /// plus [`DEFAULT_DEBT_SECS`] of rate).
    pub fn with_debt_max(mut self, tokens: f64) -> Self {
        if tokens.is_finite() {
            self.debt_max = tokens.max(0.0);
        }
        self
    }

    pub fn rate_per_sec(&self) -> f64 {
        self.rate_per_sec
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Tokens at `now` (negative while in debt).
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes one token if there is one.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.refill(now);
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        let retry_after = (!allowed).then(|| self.time_to(1.0));
        Admission {
            allowed,
            limit: self.burst as u64,
            remaining: self.tokens.max(0.0) as u64,
            reset_after: self.time_to(self.burst),
            retry_after,
        }
    }

    /// Takes `tokens` consumed elsewhere (gossip), going into debt if need
    /// be, but not below `-debt_max`.
    pub fn charge(&mut self, tokens: f64, now: Instant) {
        self.refill(now);
        if tokens.is_finite() && tokens > 0.0 {
            self.tokens = (self.tokens - tokens).max(-self.debt_max);
        }
    }

    /// Takes `tokens` that others consumed over a past interval (the
    /// fleet's, learnt one sync late), less what the burst cap turned away
    /// meanwhile. Those tokens were refilled here while the others were
    /// spending them: a replica that had known would not have been full,
    /// and would not have lost them to the cap. Without the offset a node
    /// whose bucket sat full while a busier one spent the rate is charged
    /// as if it had kept them, and starves (see `three_nodes` in
    /// `fleet.rs`'s tests).
    pub fn charge_lagged(&mut self, tokens: f64, now: Instant) {
        self.refill(now);
        if tokens.is_finite() && tokens > 0.0 {
            let offset = self.overflow.min(tokens);
            self.tokens = (self.tokens - (tokens - offset)).max(-self.debt_max);
        }
        self.overflow = 0.0;
    }

    /// Changes the rate and the burst (the debt floor follows), keeping the
    /// tokens earned so far, down to the new burst.
    pub fn set_rate(&mut self, rate_per_sec: f64, burst: f64, debt_max: Option<f64>, now: Instant) {
        self.refill(now);
        let fresh = TokenBucket::new(rate_per_sec, burst, now);
        self.rate_per_sec = fresh.rate_per_sec;
        self.burst = fresh.burst;
        self.debt_max = debt_max.map_or(fresh.debt_max, |d| d.max(0.0));
        self.tokens = self.tokens.clamp(-self.debt_max, self.burst);
    }

    /// True when the bucket is full: it carries no information and can be
    /// dropped and recreated later without changing any verdict.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        let filled = self.tokens + elapsed * self.rate_per_sec;
        if filled > self.burst {
            // Bounded: only `charge_lagged` reads it, up to what it charges.
            self.overflow = (self.overflow + filled - self.burst).min(self.burst + self.debt_max);
        }
        self.tokens = filled.min(self.burst);
        // A `now` older than the stamp (callers' clocks are per worker and
        // monotonic, but be safe) refills nothing and keeps the later stamp.
        if now > self.stamp {
            self.stamp = now;
        }
    }

    fn time_to(&self, level: f64) -> Duration {
        let missing = (level - self.tokens).max(0.0);
        Duration::from_secs_f64((missing / self.rate_per_sec).min(1e9))
    }
}

/// Keys longer than this are stored as a 48-byte prefix plus a 16-byte
/// fixed digest, so a table of `max_keys` entries costs at most
/// `max_keys × 64` bytes of key whatever clients send in a header. 64 bytes
/// hold any client IP and any reasonable API key untouched.
pub const MAX_KEY_BYTES: usize = 64;
const KEY_PREFIX_BYTES: usize = MAX_KEY_BYTES - 16;
const KEY_DIGEST_SEEDS: (u64, u64) = (0x726c_6b65_795f_6131, 0x726c_6b65_795f_6232);

const NIL: u32 = u32::MAX;

/// Passes a 64-bit hash through: the table's keys are already SipHash
/// outputs (hashing them again would only cost time).
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone)]
struct Slot {
    /// Canonical key bytes; the Vec is reused when the slot is.
    key: Vec<u8>,
    hash: u64,
    bucket: TokenBucket,
    /// Tokens this worker consumed since the last `take_local_usage`.
    local_used: u32,
    /// In `dirty` (at most once).
    dirty: bool,
    /// With node tracking: tokens this node consumed (here or reported by
    /// gossip) since the last `take_node_usage`.
    node_used: u32,
    /// In `node_dirty` (at most once).
    node_listed: bool,
    /// LRU list, most recent at `head`.
    prev: u32,
    next: u32,
}

/// How a limiter decides: by its buckets, or (while a fleet-scoped limit
/// cannot reach its fleet, per `fleet_fallback`) the same way every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdicts {
    Buckets,
    AdmitAll,
    RefuseAll,
}

/// How long a client refused by [`Verdicts::RefuseAll`] is told to wait:
/// about how long a fleet takes to notice its store is back.
const REFUSE_ALL_RETRY: Duration = Duration::from_secs(1);

/// The bounded per-key buckets of one rate-limited route in one worker.
///
/// At most `max_keys` keys are held; a new key beyond that evicts the least
/// recently used one (admitted, refused or charged), whose bucket is then
/// forgotten: the key starts with a full bucket if it comes back. A flood
/// of distinct keys therefore costs a fixed amount of memory and can only
/// push out keys idler than itself. Lookups hash with a per-process random
/// SipHash key, so clients cannot aim collisions at a slot.
#[derive(Debug)]
pub struct KeyedLimiter {
    rate_per_sec: f64,
    burst: f64,
    debt_max: Option<f64>,
    max_keys: usize,
    hasher: RandomState,
    /// Key hash → slot. A second key with the same 64-bit hash (odds 2^-64
    /// per pair, with a secret seed) takes over the slot.
    index: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    slots: Vec<Slot>,
    head: u32,
    tail: u32,
    /// Slots with `local_used > 0` since the last drain.
    dirty: Vec<u32>,
    /// Scratch for canonicalising long keys.
    scratch: Vec<u8>,
    /// Counting the node's consumption (the fleet syncer's worker only).
    track_node: bool,
    /// Slots with `node_used > 0` since the last `take_node_usage`.
    node_dirty: Vec<u32>,
    verdicts: Verdicts,
}

impl KeyedLimiter {
    /// `max_keys` is at least 1 and at most `u32::MAX - 1`.
    pub fn new(rate_per_sec: f64, burst: f64, max_keys: usize) -> Self {
        let max_keys = max_keys.clamp(1, (NIL - 1) as usize);
        // Start small: most routes see far fewer keys than the bound.
        let initial = max_keys.min(1024);
        KeyedLimiter {
            rate_per_sec,
            burst,
            debt_max: None,
            max_keys,
            hasher: RandomState::new(),
            index: HashMap::with_capacity_and_hasher(initial, BuildHasherDefault::default()),
            slots: Vec::with_capacity(initial),
            head: NIL,
            tail: NIL,
            dirty: Vec::new(),
            scratch: Vec::with_capacity(MAX_KEY_BYTES),
            track_node: false,
            node_dirty: Vec::new(),
            verdicts: Verdicts::Buckets,
        }
    }

    /// Also counts what the whole node consumes: this worker's admissions
    /// and the other workers' reported through [`charge`](Self::charge),
    /// for [`take_node_usage`](Self::take_node_usage).
    pub fn track_node_usage(mut self) -> Self {
        self.track_node = true;
        self
    }

    /// Sets the rate and burst of every bucket, present and future (the
    /// debt floor follows unless one was set): a fleet's local share and
    /// back.
    pub fn set_rate(&mut self, rate_per_sec: f64, burst: f64, now: Instant) {
        self.rate_per_sec = rate_per_sec;
        self.burst = burst;
        let debt = self.debt_max;
        for slot in &mut self.slots {
            slot.bucket.set_rate(rate_per_sec, burst, debt, now);
        }
    }

    pub fn set_verdicts(&mut self, verdicts: Verdicts) {
        self.verdicts = verdicts;
    }

    pub fn verdicts(&self) -> Verdicts {
        self.verdicts
    }

    /// Every bucket's debt floor (see [`TokenBucket::with_debt_max`]).
    pub fn with_debt_max(mut self, tokens: f64) -> Self {
        self.debt_max = Some(tokens);
        self
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Admits one request for `key` (the client IP's bytes, a header value,
    /// or empty for a route-wide limit).
    pub fn admit(&mut self, key: &[u8], now: Instant) -> Admission {
        match self.verdicts {
            Verdicts::Buckets => {}
            Verdicts::AdmitAll => return self.fixed_verdict(true),
            Verdicts::RefuseAll => return self.fixed_verdict(false),
        }
        let slot = self.slot_for(key, now);
        let s = &mut self.slots[slot as usize];
        let admission = s.bucket.admit(now);
        if admission.allowed {
            s.local_used = s.local_used.saturating_add(1);
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(slot);
            }
            if self.track_node {
                self.count_node_usage(slot, 1);
            }
        }
        admission
    }

    fn fixed_verdict(&self, allowed: bool) -> Admission {
        let limit = self.burst as u64;
        Admission {
            allowed,
            limit,
            remaining: if allowed { limit } else { 0 },
            reset_after: if allowed {
                Duration::ZERO
            } else {
                REFUSE_ALL_RETRY
            },
            retry_after: (!allowed).then_some(REFUSE_ALL_RETRY),
        }
    }

    /// Charges `key` for `tokens` another worker of this node consumed.
    pub fn charge(&mut self, key: &[u8], tokens: u32, now: Instant) {
        if let Some(slot) = self.charge_slot(key, tokens, now, TokenBucket::charge) {
            if self.track_node {
                self.count_node_usage(slot, tokens);
            }
        }
    }

    /// Charges `key` for `tokens` other nodes consumed, learnt one sync
    /// late (see [`TokenBucket::charge_lagged`]): not counted as this
    /// node's.
    pub fn charge_remote(&mut self, key: &[u8], tokens: u32, now: Instant) {
        self.charge_slot(key, tokens, now, TokenBucket::charge_lagged);
    }

    /// Charges `key`'s bucket with `how`; the slot charged, `None` for no
    /// tokens.
    fn charge_slot(
        &mut self,
        key: &[u8],
        tokens: u32,
        now: Instant,
        how: fn(&mut TokenBucket, f64, Instant),
    ) -> Option<u32> {
        if tokens == 0 {
            return None;
        }
        let slot = self.slot_for(key, now);
        how(
            &mut self.slots[slot as usize].bucket,
            f64::from(tokens),
            now,
        );
        Some(slot)
    }

    fn count_node_usage(&mut self, slot: u32, tokens: u32) {
        let s = &mut self.slots[slot as usize];
        s.node_used = s.node_used.saturating_add(tokens);
        if !s.node_listed {
            s.node_listed = true;
            self.node_dirty.push(slot);
        }
    }

    /// With [`track_node_usage`](Self::track_node_usage): hands every key
    /// the node consumed tokens for since the last call, with the count, to
    /// `sink` (what the fleet syncer adds to the fleet's counters), and
    /// resets the counts. Usage of a key evicted in between is lost, as in
    /// [`take_local_usage`](Self::take_local_usage).
    pub fn take_node_usage(&mut self, sink: impl FnMut(&[u8], u32)) -> usize {
        drain_counts(
            &mut self.slots,
            &mut self.node_dirty,
            |s| (&mut s.node_listed, &mut s.node_used),
            sink,
        )
    }

    /// Hands every key this worker consumed tokens for since the last call,
    /// with the count, to `sink` (what the worker gossips), and resets the
    /// counts. Returns how many keys it handed over. Allocates nothing.
    ///
    /// The key bytes are canonical (see [`MAX_KEY_BYTES`]); feeding them back
    /// to `charge` on another worker hits the same bucket. Usage of a key
    /// evicted before the drain is lost, which only happens while the table
    /// is full and under churn.
    pub fn take_local_usage(&mut self, sink: impl FnMut(&[u8], u32)) -> usize {
        drain_counts(
            &mut self.slots,
            &mut self.dirty,
            |s| (&mut s.dirty, &mut s.local_used),
            sink,
        )
    }

    /// The slot holding `key`, created (or recycled from the least recently
    /// used key) if absent, and moved to the front of the LRU list.
    fn slot_for(&mut self, key: &[u8], now: Instant) -> u32 {
        let key = if key.len() > MAX_KEY_BYTES {
            canonical_long_key(key, &mut self.scratch);
            std::mem::take(&mut self.scratch)
        } else {
            // Borrow juggling: copy into scratch so `self` is free below.
            let mut k = std::mem::take(&mut self.scratch);
            k.clear();
            k.extend_from_slice(key);
            k
        };
        let hash = self.hasher.hash_one(&key[..]);
        let slot = match self.index.get(&hash) {
            Some(&slot) if self.slots[slot as usize].key == key => slot,
            Some(&slot) => {
                // Hash collision: the newcomer takes the slot over.
                self.reset_slot(slot, &key, hash, now);
                slot
            }
            None => {
                let slot = if self.slots.len() < self.max_keys {
                    self.slots.push(Slot {
                        key: Vec::new(),
                        hash,
                        bucket: self.new_bucket(now),
                        local_used: 0,
                        dirty: false,
                        node_used: 0,
                        node_listed: false,
                        prev: NIL,
                        next: NIL,
                    });
                    let slot = (self.slots.len() - 1) as u32;
                    self.push_front(slot);
                    slot
                } else {
                    let victim = self.tail;
                    debug_assert_ne!(victim, NIL, "a full table has a tail");
                    self.index.remove(&self.slots[victim as usize].hash);
                    victim
                };
                self.reset_slot(slot, &key, hash, now);
                self.index.insert(hash, slot);
                slot
            }
        };
        self.scratch = key;
        self.touch(slot);
        debug_assert!(self.slots.len() <= self.max_keys);
        debug_assert_eq!(self.index.len(), self.slots.len());
        slot
    }

    fn new_bucket(&self, now: Instant) -> TokenBucket {
        let bucket = TokenBucket::new(self.rate_per_sec, self.burst, now);
        match self.debt_max {
            Some(debt) => bucket.with_debt_max(debt),
            None => bucket,
        }
    }

    fn reset_slot(&mut self, slot: u32, key: &[u8], hash: u64, now: Instant) {
        let bucket = self.new_bucket(now);
        let s = &mut self.slots[slot as usize];
        s.key.clear();
        s.key.extend_from_slice(key);
        s.hash = hash;
        s.bucket = bucket;
        // `dirty` and `node_listed` stay: the slot may still be listed, and
        // is then drained with whatever the new key consumes.
        s.local_used = 0;
        s.node_used = 0;
    }

    fn touch(&mut self, slot: u32) {
        if self.head == slot {
            return;
        }
        self.unlink(slot);
        self.push_front(slot);
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let s = &self.slots[slot as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else if self.head == slot {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else if self.tail == slot {
            self.tail = prev;
        }
        let s = &mut self.slots[slot as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let s = &mut self.slots[slot as usize];
            s.prev = NIL;
            s.next = old_head;
        }
        if old_head != NIL {
            self.slots[old_head as usize].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

/// Hands each slot in `listed` with a count to `sink` and resets it, and
/// empties the list; `fields` picks the slot's listed flag and count.
fn drain_counts(
    slots: &mut [Slot],
    listed: &mut Vec<u32>,
    fields: impl Fn(&mut Slot) -> (&mut bool, &mut u32),
    mut sink: impl FnMut(&[u8], u32),
) -> usize {
    let mut handed = 0;
    for &slot in listed.iter() {
        let s = &mut slots[slot as usize];
        let (is_listed, count) = fields(s);
        *is_listed = false;
        let n = std::mem::take(count);
        if n > 0 {
            sink(&s.key, n);
            handed += 1;
        }
    }
    listed.clear();
    handed
}

/// `key` longer than [`MAX_KEY_BYTES`] → its first 48 bytes and two fixed
/// 64-bit hashes of the whole key, identical on every worker.
fn canonical_long_key(key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&key[..KEY_PREFIX_BYTES]);
    out.extend_from_slice(&crate::balance::hash(KEY_DIGEST_SEEDS.0, key).to_le_bytes());
    out.extend_from_slice(&crate::balance::hash(KEY_DIGEST_SEEDS.1, key).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `offered_per_sec` evenly spaced requests for `secs` seconds to
    /// `admit`, returning how many it admitted.
    fn offer(
        start: Instant,
        offered_per_sec: u32,
        secs: u32,
        mut admit: impl FnMut(Instant) -> bool,
    ) -> u32 {
        let gap = Duration::from_secs(1) / offered_per_sec;
        (0..offered_per_sec * secs)
            .filter(|&i| admit(start + gap * i))
            .count() as u32
    }

    #[test]
    fn full_bucket_admits_the_burst_then_refuses() {
        let now = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, now);
        let first = b.admit(now);
        assert!(first.allowed);
        assert_eq!((first.limit, first.remaining), (3, 2));
        assert!(b.admit(now).allowed);
        assert!(b.admit(now).allowed);
        let refused = b.admit(now);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(refused.retry_after_secs(), Some(1));
        assert_eq!(refused.reset_after, Duration::from_millis(300));
        assert_eq!(refused.reset_secs(), 1);
        assert!(b.admit(now + Duration::from_millis(100)).allowed);
    }

    #[test]
    fn a_lagged_charge_is_offset_by_what_the_cap_turned_away() {
        let t0 = Instant::now();
        // Full at 10 tokens; 0.5 s at 100/s would have added 50 more.
        let mut b = TokenBucket::new(100.0, 10.0, t0);
        let t1 = t0 + Duration::from_millis(500);
        b.charge_lagged(30.0, t1);
        assert!(
            (b.tokens(t1) - 10.0).abs() < 1e-9,
            "30 of the 50 lost: no charge"
        );
        // The offset is used up: the same charge now counts in full.
        b.charge_lagged(30.0, t1);
        assert!((b.tokens(t1) + 20.0).abs() < 1e-9, "{}", b.tokens(t1));
        // A plain charge keeps no offset of its own.
        let mut c = TokenBucket::new(100.0, 10.0, t0);
        c.charge(30.0, t1);
        assert!((c.tokens(t1) + 20.0).abs() < 1e-9);
    }

    #[test]
    fn admitted_count_at_three_times_the_rate_is_rate_times_time_plus_burst() {
        for (rate, burst) in [(1000.0, 1000.0), (1000.0, 10.0), (50.0, 5.0)] {
            let start = Instant::now();
            let mut b = TokenBucket::new(rate, burst, start);
            let admitted = offer(start, (rate * 3.0) as u32, 5, |t| b.admit(t).allowed);
            let expected = rate * 5.0 + burst;
            let error = (f64::from(admitted) - expected).abs() / expected;
            assert!(
                error <= 0.02,
                "rate {rate} burst {burst}: {admitted} vs {expected}"
            );
        }
    }

    #[test]
    fn per_minute_rate_refills_slowly() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60.0 / 60.0, 1.0, t0);
        assert!(b.admit(t0).allowed);
        let refused = b.admit(t0 + Duration::from_millis(500));
        assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));
        assert!(b.admit(t0 + Duration::from_secs(1)).allowed);
    }

    #[test]
    fn charge_goes_into_debt_but_not_below_the_debt_floor() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        b.charge(8.0, t0);
        assert_eq!(b.tokens(t0), -3.0);
        let refused = b.admit(t0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(400)));
        b.charge(1000.0, t0);
        // One burst plus one second of rate.
        assert_eq!(b.tokens(t0), -15.0);
        assert!(b.is_full(t0 + Duration::from_secs(2)));
        let mut b = TokenBucket::new(10.0, 5.0, t0).with_debt_max(5.0);
        b.charge(1000.0, t0);
        assert_eq!(b.tokens(t0), -5.0);
    }

    #[test]
    fn bad_parameters_are_tamed() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(f64::NAN, 0.0, t0);
        assert_eq!(b.burst(), 1.0);
        assert!(b.admit(t0).allowed);
        assert!(!b.admit(t0 + Duration::from_secs(1)).allowed);
        let later = t0 + Duration::from_secs(1);
        b.charge(f64::INFINITY, later);
        let left = b.tokens(later);
        assert!(left.abs() < 1e-6, "{left}");
        // An earlier `now` refills nothing.
        assert_eq!(b.tokens(t0), left);
    }

    #[test]
    fn keys_have_separate_buckets() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(1.0, 1.0, 10);
        assert!(l.admit(b"10.0.0.1", t0).allowed);
        assert!(!l.admit(b"10.0.0.1", t0).allowed);
        assert!(l.admit(b"10.0.0.2", t0).allowed);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn local_usage_is_drained_once() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(100.0, 10.0, 10);
        for _ in 0..3 {
            l.admit(b"a", t0);
        }
        l.admit(b"b", t0);
        let mut got = Vec::new();
        let n = l.take_local_usage(|k, t| got.push((k.to_vec(), t)));
        got.sort();
        assert_eq!(n, 2);
        assert_eq!(got, [(b"a".to_vec(), 3), (b"b".to_vec(), 1)]);
        assert_eq!(l.take_local_usage(|_, _| panic!("drained")), 0);
        // Remote charges are not local usage.
        l.charge(b"a", 5, t0);
        assert_eq!(l.take_local_usage(|_, _| panic!("not local")), 0);
        // Refused requests consume nothing.
        for _ in 0..20 {
            l.admit(b"c", t0);
        }
        let mut c = 0;
        l.take_local_usage(|_, t| c += t);
        assert_eq!(c, 10);
    }

    #[test]
    fn least_recently_used_key_is_evicted() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(1.0, 1.0, 2);
        l.admit(b"a", t0);
        l.admit(b"b", t0);
        l.admit(b"a", t0); // a is now the most recent
        l.admit(b"c", t0); // evicts b
        assert_eq!(l.len(), 2);
        // a kept its (empty) bucket; b comes back with a full one.
        assert!(!l.admit(b"a", t0).allowed);
        assert!(l.admit(b"b", t0).allowed);
    }

    #[test]
    fn table_bound_holds_under_a_flood_of_distinct_keys() {
        let t0 = Instant::now();
        let max = 1000;
        let mut l = KeyedLimiter::new(1.0, 1.0, max);
        let heavy = b"203.0.113.7";
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            l.admit(&i.to_be_bytes(), now);
            if i % 100 == 0 {
                // A client that keeps coming stays in the table, so its
                // bucket stays empty instead of being reset by the flood.
                l.admit(heavy, now);
            }
            assert!(l.len() <= max);
        }
        assert_eq!(l.len(), max);
        assert!(l.slots.capacity() <= max.next_power_of_two());
        assert!(l.index.len() <= max);
        assert!(!l.admit(heavy, t0 + Duration::from_millis(100)).allowed);
        let mut drained = 0;
        l.take_local_usage(|_, _| drained += 1);
        assert!(drained <= max);
    }

    #[test]
    fn long_keys_are_stored_bounded_and_distinct() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(1.0, 1.0, 10);
        let a = vec![b'x'; 10_000];
        let mut b = a.clone();
        b[9_999] = b'y';
        assert!(l.admit(&a, t0).allowed);
        assert!(l.admit(&b, t0).allowed, "same prefix, different key");
        assert!(!l.admit(&a, t0).allowed);
        let mut keys = Vec::new();
        l.take_local_usage(|k, _| keys.push(k.to_vec()));
        assert!(keys.iter().all(|k| k.len() == MAX_KEY_BYTES));
        // The canonical key charges the same bucket on another worker.
        let mut other = KeyedLimiter::new(1.0, 1.0, 10);
        other.charge(&keys[0], 1, t0);
        let refused = if keys[0] == l.slots[0].key { &a } else { &b };
        assert!(!other.admit(refused, t0).allowed);
    }

    /// Two workers' limiters for one route, exchanging usage every `tick`.
    fn two_workers(rate: f64, burst: f64, offered: [u32; 2], tick: Duration, secs: u32) -> u32 {
        let start = Instant::now();
        let mut workers = [
            KeyedLimiter::new(rate, burst, 16),
            KeyedLimiter::new(rate, burst, 16),
        ];
        let step = Duration::from_micros(100);
        let steps = secs * 10_000;
        let ticks_every = (tick.as_micros() / step.as_micros()).max(1) as u32;
        let mut admitted = 0;
        let mut debt = [0.0f64; 2];
        let mut outbox: [Vec<(Vec<u8>, u32)>; 2] = [Vec::new(), Vec::new()];
        for i in 0..steps {
            let now = start + step * i;
            for w in 0..2 {
                // Evenly spaced arrivals at `offered[w]` per second.
                debt[w] += f64::from(offered[w]) * step.as_secs_f64();
                while debt[w] >= 1.0 {
                    debt[w] -= 1.0;
                    if workers[w].admit(b"route", now).allowed {
                        admitted += 1;
                    }
                }
            }
            if i % ticks_every == 0 {
                for w in 0..2 {
                    let out = &mut outbox[w];
                    workers[w].take_local_usage(|k, n| out.push((k.to_vec(), n)));
                }
                for w in 0..2 {
                    for (k, n) in outbox[w].drain(..) {
                        workers[1 - w].charge(&k, n, now);
                    }
                }
            }
        }
        admitted
    }

    #[test]
    fn two_workers_exchanging_usage_admit_about_the_single_limit() {
        let rate = 1000.0;
        let burst = 20.0;
        let expected = rate * 5.0 + burst;
        for offered in [[3000, 0], [1500, 1500], [2500, 500]] {
            for tick_ms in [1, 10, 50] {
                let admitted = two_workers(rate, burst, offered, Duration::from_millis(tick_ms), 5);
                let error = (f64::from(admitted) - expected).abs() / expected;
                assert!(
                    error <= 0.02,
                    "offered {offered:?} tick {tick_ms}ms: {admitted} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn a_debt_floor_of_one_burst_loses_what_the_other_worker_spent() {
        // Why the default floor is deeper than `-burst` (see DEFAULT_DEBT_SECS).
        let start = Instant::now();
        let mut a = KeyedLimiter::new(1000.0, 20.0, 4).with_debt_max(20.0);
        a.admit(b"k", start);
        a.charge(b"k", 50, start);
        assert_eq!(a.slots[0].bucket.tokens(start), -20.0);
        let mut b = KeyedLimiter::new(1000.0, 20.0, 4);
        b.admit(b"k", start);
        b.charge(b"k", 50, start);
        assert_eq!(b.slots[0].bucket.tokens(start), -31.0);
    }

    #[test]
    fn without_exchange_two_workers_would_admit_twice_the_limit() {
        // The control for the test above: gossip is what makes it node-wide.
        let admitted = two_workers(1000.0, 20.0, [1500, 1500], Duration::from_secs(100), 5);
        assert!(admitted > 9000, "{admitted}");
    }

    #[test]
    fn node_usage_counts_own_admissions_and_gossip_but_not_other_nodes() {
        let now = Instant::now();
        let mut l = KeyedLimiter::new(1000.0, 100.0, 8).track_node_usage();
        l.admit(b"a", now);
        l.admit(b"a", now);
        l.charge(b"a", 5, now);
        l.charge(b"b", 3, now);
        l.charge_remote(b"a", 50, now);
        l.charge_remote(b"c", 50, now);
        let mut used = Vec::new();
        l.take_node_usage(|k, n| used.push((k.to_vec(), n)));
        used.sort();
        assert_eq!(used, [(b"a".to_vec(), 7), (b"b".to_vec(), 3)]);
        let mut again = 0;
        l.take_node_usage(|_, _| again += 1);
        assert_eq!(again, 0, "drained");
        // Not tracking: nothing counted.
        let mut plain = KeyedLimiter::new(1000.0, 100.0, 8);
        plain.admit(b"a", now);
        assert_eq!(plain.take_node_usage(|_, _| {}), 0);
    }

    #[test]
    fn a_share_of_the_rate_and_fixed_verdicts() {
        let start = Instant::now();
        let mut l = KeyedLimiter::new(900.0, 900.0, 8);
        l.admit(b"k", start);
        l.set_rate(300.0, 300.0, start);
        // Bucket clamped to the new burst, refilling at the new rate.
        let admitted = offer(start, 2000, 4, |t| l.admit(b"k", t).allowed);
        assert!((1490..=1510).contains(&admitted), "{admitted}");
        l.set_verdicts(Verdicts::RefuseAll);
        let refused = l.admit(b"k", start + Duration::from_secs(60));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs(), Some(1));
        l.set_verdicts(Verdicts::AdmitAll);
        assert!((0..10_000).all(|_| l.admit(b"k", start).allowed));
        l.set_verdicts(Verdicts::Buckets);
        // The buckets were left as they were: still about empty.
        let after = l.admit(b"k", start + Duration::from_secs(4));
        assert!(after.remaining <= 1, "{after:?}");
    }
}
