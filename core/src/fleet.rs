//! Fleet-wide counting through Redis: what one node adds to the fleet's
//! counters on each sync, and what it learns the other nodes consumed.
//!
//! Each fleet-scoped key has one counter in Redis that only grows (`INCRBY`,
//! its expiry pushed back on every sync). A node adds what it consumed
//! since its last sync and reads the new total back in the same reply; the
//! total minus the total it saw last time minus its own addition is what
//! the rest of the fleet consumed meanwhile, which the node's buckets are
//! then charged, like gossip between workers. Nothing waits for Redis on the
//! request path, and a lost or restarted counter (expired, or Redis lost its
//! data) only costs one sync of news. Owns the ledger of counters a node
//! follows and the RESP2 encoding and decoding of the pipeline (through
//! `redis-protocol`); no sockets, no clock.

use std::collections::HashMap;

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

/// One counter a node follows: a fleet-scoped route's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterId {
    pub route: u32,
    pub key: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Counter {
    /// The total Redis answered at the last sync; `None` before the first.
    seen: Option<u64>,
    /// Consumed here since the last sync, to add at the next.
    pending: u64,
    /// In the sync under way: what it adds.
    sending: u64,
    /// Syncs in a row with nothing consumed anywhere.
    quiet_syncs: u32,
}

/// What the rest of the fleet consumed of one counter since the last sync.
pub fn others_since(seen: Option<u64>, added: u64, total: u64) -> u64 {
    match seen {
        // The first sync sets the baseline: what was consumed before this
        // node followed the key is history, not news.
        None => 0,
        Some(seen) => match seen.checked_add(added) {
            Some(expected) if total >= expected => total - expected,
            // The counter went back: it expired or Redis restarted empty.
            // What is in it beyond this node's addition is the others'.
            _ => total.saturating_sub(added),
        },
    }
}

/// The counters a node follows, bounded; one sync at a time.
#[derive(Debug)]
pub struct Ledger {
    counters: HashMap<CounterId, Counter>,
    /// The counters of the sync under way, in the order of its commands.
    batch: Vec<CounterId>,
    max_counters: usize,
    /// A counter nothing touched for this many syncs is let go.
    forget_after: u32,
    /// Consumption not followed because the ledger was full.
    dropped: u64,
}

impl Ledger {
    /// `forget_after`: syncs with no consumption anywhere before a counter
    /// is let go (at least 1).
    pub fn new(max_counters: usize, forget_after: u32) -> Self {
        Ledger {
            counters: HashMap::new(),
            batch: Vec::new(),
            max_counters: max_counters.max(1),
            forget_after: forget_after.max(1),
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Tokens consumed but not followed because the ledger was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Notes `tokens` this node consumed of `key` of fleet route `route`.
    pub fn add(&mut self, route: u32, key: &[u8], tokens: u32) {
        let id = CounterId {
            route,
            key: key.to_vec(),
        };
        let full = self.counters.len() >= self.max_counters;
        match self.counters.get_mut(&id) {
            Some(c) => c.pending += u64::from(tokens),
            None if full => self.dropped += u64::from(tokens),
            None => {
                let c = Counter {
                    pending: u64::from(tokens),
                    ..Counter::default()
                };
                self.counters.insert(id, c);
            }
        }
    }

    /// Starts a sync: writes an `INCRBY` and a `PEXPIRE` per followed
    /// counter into `out` (cleared first), naming each
    /// `prefix + names[route] + ":" + key`. Returns how many replies the
    /// pipeline will get (two per counter).
    pub fn begin_sync(
        &mut self,
        out: &mut Vec<u8>,
        prefix: &[u8],
        names: &[&str],
        ttl_ms: u64,
    ) -> usize {
        out.clear();
        self.batch.clear();
        let mut name = Vec::new();
        let ttl = itoa::Buffer::new().format(ttl_ms).as_bytes().to_vec();
        let mut amount = itoa::Buffer::new();
        for (id, c) in &mut self.counters {
            let Some(route_name) = names.get(id.route as usize) else {
                continue;
            };
            c.sending = c.pending;
            c.pending = 0;
            name.clear();
            name.extend_from_slice(prefix);
            name.extend_from_slice(route_name.as_bytes());
            name.push(b':');
            name.extend_from_slice(&id.key);
            encode(
                out,
                &[b"INCRBY", &name, amount.format(c.sending).as_bytes()],
            );
            encode(out, &[b"PEXPIRE", &name, &ttl]);
            self.batch.push(id.clone());
        }
        self.batch.len() * 2
    }

    /// Ends the sync with Redis's replies, in order: hands each counter's
    /// news of the other nodes to `charge`, and lets go of counters quiet
    /// for `forget_after` syncs.
    pub fn finish_sync(&mut self, replies: &[Reply], mut charge: impl FnMut(&CounterId, u64)) {
        for (i, id) in self.batch.iter().enumerate() {
            let Some(c) = self.counters.get_mut(id) else {
                continue;
            };
            let total = match replies.get(i * 2) {
                Some(Reply::Integer(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            let Some(total) = total else {
                // This counter's command failed: start it over.
                c.seen = None;
                c.sending = 0;
                continue;
            };
            let others = others_since(c.seen, c.sending, total);
            c.seen = Some(total);
            if others > 0 {
                charge(id, others);
            }
            if others == 0 && c.sending == 0 && c.pending == 0 {
                c.quiet_syncs += 1;
            } else {
                c.quiet_syncs = 0;
            }
            c.sending = 0;
        }
        let forget_after = self.forget_after;
        self.counters.retain(|_, c| c.quiet_syncs < forget_after);
        self.batch.clear();
    }

    /// The sync failed (Redis unreachable): what it carried and what is
    /// pending is dropped rather than added late in one burst, and every
    /// counter starts over from its next total.
    pub fn abort_sync(&mut self) {
        for c in self.counters.values_mut() {
            c.seen = None;
            c.sending = 0;
            c.pending = 0;
        }
        self.batch.clear();
    }
}

/// Appends one command (a RESP2 array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    const MAX_ARGS: usize = 4;
    let mut frames = [
        BorrowedFrame::Null,
        BorrowedFrame::Null,
        BorrowedFrame::Null,
        BorrowedFrame::Null,
    ];
    let args = &args[..args.len().min(MAX_ARGS)];
    for (frame, arg) in frames.iter_mut().zip(args) {
        *frame = BorrowedFrame::BulkString(arg);
    }
    let frame = BorrowedFrame::Array(&frames[..args.len()]);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by the frame itself, so this cannot fail.
    let written = encode_borrowed(&mut out[start..], &frame, false).unwrap_or(0);
    out.truncate(start + written);
}

/// A reply, as much of it as a sync needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Integer(i64),
    /// `+OK` and other simple strings.
    Status,
    /// `-ERR ...`: the message.
    Error(String),
    /// A bulk string, array or null.
    Other,
}

/// The first reply in `buf` and its length, `None` if it is not complete
/// yet, or an error for bytes that are not RESP2.
pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    match decode_range(buf) {
        Ok(None) => Ok(None),
        Ok(Some((frame, used))) => {
            let reply = match frame {
                RangeFrame::Integer(n) => Reply::Integer(n),
                RangeFrame::SimpleString(_) => Reply::Status,
                RangeFrame::Error((start, end)) => {
                    Reply::Error(String::from_utf8_lossy(&buf[start..end]).into_owned())
                }
                _ => Reply::Other,
            };
            Ok(Some((reply, used)))
        }
        Err(e) => Err(e.details().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::KeyedLimiter;
    use std::time::{Duration, Instant};

    #[test]
    fn news_is_the_total_less_what_was_seen_and_added() {
        assert_eq!(others_since(None, 5, 500), 0, "first sync: a baseline");
        assert_eq!(others_since(Some(100), 5, 130), 25);
        assert_eq!(others_since(Some(100), 5, 105), 0);
        // The counter restarted (expired, or Redis lost it): what is beyond
        // this node's own addition is the others'.
        assert_eq!(others_since(Some(100), 5, 12), 7);
        assert_eq!(others_since(Some(100), 5, 3), 0);
        assert_eq!(others_since(Some(u64::MAX), 5, 9), 4);
    }

    #[test]
    fn commands_are_resp2_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"INCRBY", b"rg:r0:\x00\x01", b"12"]);
        assert_eq!(
            out,
            b"*3\r\n$6\r\nINCRBY\r\n$8\r\nrg:r0:\x00\x01\r\n$2\r\n12\r\n".to_vec()
        );
    }

    #[test]
    fn replies_decode_one_at_a_time_and_wait_for_the_rest() {
        let buf = b":42\r\n+OK\r\n-ERR wrong type\r\n:7";
        let (r, n) = decode(buf).unwrap().unwrap();
        assert_eq!((r, n), (Reply::Integer(42), 5));
        let (r, m) = decode(&buf[n..]).unwrap().unwrap();
        assert_eq!(r, Reply::Status);
        let (r, k) = decode(&buf[n + m..]).unwrap().unwrap();
        assert_eq!(r, Reply::Error("ERR wrong type".into()));
        assert_eq!(decode(&buf[n + m + k..]).unwrap(), None, "no CRLF yet");
        assert!(decode(b"?what\r\n").is_err());
    }

    #[test]
    fn a_sync_adds_pending_usage_and_charges_the_news() {
        let mut ledger = Ledger::new(100, 3);
        ledger.add(0, b"k", 5);
        ledger.add(0, b"k", 2);
        let mut out = Vec::new();
        assert_eq!(ledger.begin_sync(&mut out, b"p:", &["api"], 60_000), 2);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.contains("INCRBY\r\n$7\r\np:api:k\r\n$1\r\n7\r\n"),
            "{text}"
        );
        assert!(
            text.contains("PEXPIRE\r\n$7\r\np:api:k\r\n$5\r\n60000\r\n"),
            "{text}"
        );
        let mut news = Vec::new();
        ledger.finish_sync(&[Reply::Integer(107), Reply::Integer(1)], |id, n| {
            news.push((id.key.clone(), n))
        });
        assert!(news.is_empty(), "the first total is a baseline");
        ledger.add(0, b"k", 3);
        ledger.begin_sync(&mut out, b"p:", &["api"], 60_000);
        ledger.finish_sync(&[Reply::Integer(150), Reply::Integer(1)], |id, n| {
            news.push((id.key.clone(), n))
        });
        assert_eq!(news, [(b"k".to_vec(), 40)]);
    }

    #[test]
    fn quiet_counters_are_let_go_and_a_full_ledger_counts_what_it_drops() {
        let mut ledger = Ledger::new(1, 2);
        ledger.add(0, b"a", 1);
        ledger.add(0, b"b", 4);
        assert_eq!((ledger.len(), ledger.dropped()), (1, 4));
        let mut out = Vec::new();
        for total in [1, 1, 1] {
            ledger.begin_sync(&mut out, b"", &["r"], 1000);
            ledger.finish_sync(&[Reply::Integer(total), Reply::Integer(1)], |_, _| {});
        }
        assert!(ledger.is_empty(), "two quiet syncs after the first");
    }

    #[test]
    fn an_aborted_sync_drops_its_usage_and_rebaselines() {
        let mut ledger = Ledger::new(10, 5);
        let mut out = Vec::new();
        ledger.add(0, b"k", 5);
        ledger.begin_sync(&mut out, b"", &["r"], 1000);
        ledger.finish_sync(&[Reply::Integer(5), Reply::Integer(1)], |_, _| {});
        ledger.add(0, b"k", 9);
        ledger.begin_sync(&mut out, b"", &["r"], 1000);
        ledger.abort_sync();
        ledger.begin_sync(&mut out, b"", &["r"], 1000);
        assert!(
            String::from_utf8_lossy(&out).contains("$1\r\n0\r\n"),
            "nothing pending"
        );
        let mut charged = 0;
        ledger.finish_sync(&[Reply::Integer(900), Reply::Integer(1)], |_, n| {
            charged += n
        });
        assert_eq!(charged, 0, "after a failure the next total is a baseline");
    }

    /// Three nodes, one limiter each, a shared counter map standing in for
    /// Redis, offered 3000/s split 80/15/5 against a fleet limit of 1000/s
    /// with `burst`, syncing every `sync_ms`: what each node admitted per
    /// second over 10 s.
    fn three_nodes(sync_ms: u64, burst: f64) -> [f64; 3] {
        {
            let start = Instant::now();
            let offered = [2400u32, 450, 150];
            let mut nodes: Vec<(KeyedLimiter, Ledger)> = (0..3)
                .map(|_| {
                    (
                        KeyedLimiter::new(1000.0, burst, 16).track_node_usage(),
                        Ledger::new(16, 100),
                    )
                })
                .collect();
            let mut redis: HashMap<Vec<u8>, i64> = HashMap::new();
            let mut out = Vec::new();
            let mut admitted = [0u64; 3];
            let secs = 10u64;
            let step = Duration::from_micros(100);
            let steps = secs * 10_000;
            // Each node's next send time, in steps, on its own even schedule.
            let gaps: Vec<f64> = offered.iter().map(|&r| 10_000.0 / f64::from(r)).collect();
            let mut next: Vec<f64> = vec![0.0; 3];
            for t in 0..steps {
                let now = start + step * t as u32;
                for n in 0..3 {
                    while next[n] <= t as f64 {
                        next[n] += gaps[n];
                        if nodes[n].0.admit(b"", now).allowed {
                            admitted[n] += 1;
                        }
                    }
                }
                // Each node syncs on its own phase.
                for (n, (limiter, ledger)) in nodes.iter_mut().enumerate() {
                    let phase = (n as u64 * 37) % (sync_ms * 10);
                    if t % (sync_ms * 10) != phase {
                        continue;
                    }
                    limiter.take_node_usage(|k, used| ledger.add(0, k, used));
                    ledger.begin_sync(&mut out, b"", &["r"], 60_000);
                    let mut replies = Vec::new();
                    let mut rest = &out[..];
                    while let Some((_, _)) = decode(rest).ok().flatten() {
                        // Apply the commands to the map: INCRBY name amount.
                        let text = String::from_utf8_lossy(rest).into_owned();
                        let parts: Vec<&str> = text.split("\r\n").collect();
                        let len = command_len(rest);
                        if parts[2] == "INCRBY" {
                            let amount: i64 = parts[6].parse().unwrap();
                            let v = redis.entry(parts[4].as_bytes().to_vec()).or_default();
                            *v += amount;
                            replies.push(Reply::Integer(*v));
                        } else {
                            replies.push(Reply::Integer(1));
                        }
                        rest = &rest[len..];
                    }
                    ledger.finish_sync(&replies, |id, others| {
                        limiter.charge_remote(&id.key, others as u32, now)
                    });
                }
            }
            admitted.map(|a| a as f64 / secs as f64)
        }
    }

    /// The fleet admits 1000/s within 5% at each sync interval (one burst,
    /// the buckets starting full, is in the count).
    #[test]
    fn three_nodes_admit_the_fleet_rate_whatever_the_split() {
        for sync_ms in [10u64, 50, 200] {
            let rate: f64 = three_nodes(sync_ms, 1000.0).iter().sum();
            let expected = 1000.0 + 1000.0 / 10.0;
            let error = (rate - expected).abs() / expected;
            assert!(
                error <= 0.05,
                "sync {sync_ms} ms: {rate:.0}/s admitted, expected about {expected:.0}"
            );
        }
    }

    /// With the burst (100) below what the rate earns in a sync interval,
    /// the node offered 150/s still gets a fair part: at least 60/s at
    /// every interval (it got 51, 1 and 4/s at 10, 50 and 200 ms before
    /// lagged charges were offset by what the burst cap turned away), and
    /// the fleet total stays within 5%.
    #[test]
    fn a_lightly_loaded_node_is_not_starved_by_a_busy_one() {
        for sync_ms in [10u64, 50, 200] {
            let admitted = three_nodes(sync_ms, 100.0);
            assert!(
                admitted[2] >= 60.0,
                "sync {sync_ms} ms: the 150/s node admitted {:.0}/s ({admitted:?})",
                admitted[2]
            );
            let total: f64 = admitted.iter().sum();
            let expected = 1000.0 + 100.0 / 10.0;
            assert!(
                (total - expected).abs() / expected <= 0.05,
                "sync {sync_ms} ms: {total:.0}/s admitted"
            );
        }
    }

    /// The length of the RESP array command at the start of `buf`.
    fn command_len(buf: &[u8]) -> usize {
        match decode_range(buf) {
            Ok(Some((_, n))) => n,
            _ => buf.len(),
        }
    }
}
