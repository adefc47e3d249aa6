//! Gossip between workers (protocol: `ringgate_core::gossip`). Each worker
//! has one bounded crossbeam inbox and a sender to every other worker's
//! inbox; once per `gossip_interval` its ticker (`ticker.rs`) runs a
//! [`Gossip::round`]: drain the inbox, apply, publish its own deltas. Never
//! on the request path. A full inbox drops the message and counts the drop:
//! a worker never blocks on another. Only gossip lives here: the clock,
//! drains, log flushes and metric snapshots belong to the ticker.

use std::cell::Cell;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use ringgate_config::LogLevel;
use ringgate_core::gossip::{GossipMsg, HEALTH_RESEND_TICKS};

use crate::error_log::Kind;
use crate::health;
use crate::state::Worker;

pub struct Mesh<M> {
    inbox: Receiver<Arc<M>>,
    peers: Vec<Sender<Arc<M>>>,
    dropped: Cell<u64>,
    /// The last message published, reused as the next one once every peer
    /// has dropped its clone: a tick then allocates nothing.
    spare: Cell<Option<Arc<M>>>,
}

/// One endpoint per worker, fully connected, each inbox holding at most
/// `capacity` messages.
pub fn mesh<M>(workers: usize, capacity: usize) -> Vec<Mesh<M>> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(capacity)).unzip();
    receivers
        .into_iter()
        .enumerate()
        .map(|(id, inbox)| Mesh {
            inbox,
            peers: senders
                .iter()
                .enumerate()
                .filter(|(peer, _)| *peer != id)
                .map(|(_, s)| s.clone())
                .collect(),
            dropped: Cell::new(0),
            spare: Cell::new(None),
        })
        .collect()
}

impl<M> Mesh<M> {
    /// A message to fill for this tick: the last one published if every
    /// peer is done with it (its vectors keep their capacity), else a new one
    /// from `fresh` (a peer that has not drained yet still holds a clone).
    pub fn outgoing(&self, fresh: impl FnOnce() -> M) -> Arc<M> {
        match self.spare.take() {
            // No weak references are ever made, so one strong count is
            // exactly "unshared" (what `Arc::get_mut` checks).
            Some(msg) if Arc::strong_count(&msg) == 1 => msg,
            _ => Arc::new(fresh()),
        }
    }

    /// Keeps a message that was not sent, for the next tick.
    pub fn keep(&self, msg: Arc<M>) {
        self.spare.set(Some(msg));
    }

    /// Sends one message to every other worker: one `Arc` shared by all
    /// peers, kept afterwards for [`Mesh::outgoing`] to reuse. Returns
    /// whether a running peer missed it (its inbox was full); a peer that
    /// has ended needs nothing more.
    pub fn publish(&self, msg: Arc<M>) -> bool {
        let mut missed = false;
        for peer in &self.peers {
            match peer.try_send(msg.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    missed = true;
                    self.dropped.set(self.dropped.get() + 1);
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.dropped.set(self.dropped.get() + 1);
                }
            }
        }
        self.keep(msg);
        missed
    }

    /// Hands every waiting message to `apply`, without blocking.
    pub fn drain(&self, mut apply: impl FnMut(&M)) {
        while let Ok(msg) = self.inbox.try_recv() {
            apply(&msg);
        }
    }

    /// Messages this worker could not deliver because an inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Workers in the mesh, this one included.
    pub fn workers(&self) -> usize {
        self.peers.len() + 1
    }
}

/// One worker's side of the gossip: its mesh endpoint and where its rounds
/// have got to. The ticker runs one round per `gossip_interval`.
pub struct Gossip {
    mesh: Mesh<GossipMsg>,
    /// Rounds run so far; also the sequence number of the next message.
    seq: u64,
    /// Drops already logged.
    dropped_logged: u64,
    /// A message was dropped: the next one carries every level, not only
    /// the changed ones, or a receiver would keep the lost value.
    resend_levels: bool,
}

impl Gossip {
    pub fn new(mesh: Mesh<GossipMsg>) -> Self {
        Gossip {
            mesh,
            seq: 0,
            dropped_logged: 0,
            resend_levels: false,
        }
    }

    /// Messages this worker could not deliver because an inbox was full.
    pub fn dropped(&self) -> u64 {
        self.mesh.dropped()
    }

    /// Applies what the others said, then tells them what happened here.
    pub fn round(&mut self, worker: &Worker, now: Instant) {
        let mesh = &self.mesh;
        mesh.drain(|msg| apply(worker, msg, now));
        self.seq += 1;
        let seq = self.seq;
        let mut msg = mesh.outgoing(|| GossipMsg::new(worker.id as u32, 0));
        let Some(fill) = Arc::get_mut(&mut msg) else {
            unreachable!("outgoing returns an unshared message")
        };
        fill.clear(0, seq);
        // Every level now and then as well: a belt to the braces above, for
        // whatever else could make a receiver miss one.
        let all_levels = self.resend_levels || seq.is_multiple_of(u64::from(STATE_RESEND_TICKS));
        collect(worker, fill, seq, all_levels);
        if fill.is_empty() {
            mesh.keep(msg);
        } else {
            self.resend_levels = mesh.publish(msg);
        }
        // An operator should hear of drops, but not once per tick.
        if mesh.dropped() > self.dropped_logged
            && seq.is_multiple_of(u64::from(HEALTH_RESEND_TICKS))
        {
            let dropped = mesh.dropped();
            worker.error_log.event(LogLevel::Warn, Kind::Gossip, |b| {
                let _ = write!(b, "{dropped} gossip messages dropped (full inboxes)");
            });
            self.dropped_logged = mesh.dropped();
        }
    }
}

fn apply(worker: &Worker, msg: &GossipMsg, now: Instant) {
    for (route, key, tokens, lagged) in msg.tokens() {
        if let Some(Some(limiter)) = worker.limiters.get(route as usize) {
            let mut limiter = limiter.borrow_mut();
            if lagged {
                limiter.charge_remote(key, tokens, now);
            } else {
                limiter.charge(key, tokens, now);
            }
        }
    }
    // An entry about a slot whose backend changed on one side and not yet
    // on the other (DNS sets reach the workers a tick apart) is dropped.
    for entry in &msg.backends {
        if let Some(upstream) = worker.upstreams.get(entry.upstream as usize) {
            let b = entry.backend as usize;
            let mut view = upstream.view.borrow_mut();
            if b < view.len() && upstream.slot_epoch(b) == entry.epoch {
                view.apply_remote(
                    msg.sender as usize,
                    entry.backend as usize,
                    &entry.delta,
                    now,
                );
            }
        }
    }
    for stray in &msg.strays {
        if let Some(upstream) = worker.upstreams.get(stray.upstream as usize) {
            let b = stray.backend as usize;
            if upstream.slot_epoch(b) == stray.epoch {
                upstream.taint_remote(b, now);
            }
        }
    }
    for entry in &msg.health {
        if let Some(upstream) = worker.upstreams.get(entry.upstream as usize) {
            let b = entry.backend as usize;
            let mut view = upstream.view.borrow_mut();
            if b < view.len() && upstream.slot_epoch(b) == entry.epoch {
                view.apply_health(entry.backend as usize, entry.healthy, now);
            }
        }
    }
}

/// Levels and health states go out in full this often (in ticks), even
/// when nothing changed and nothing was seen dropped.
const STATE_RESEND_TICKS: u32 = HEALTH_RESEND_TICKS;

/// Fills `msg` with what happened here since the last round: deltas, and
/// the levels that changed since they were last sent (every level when
/// `all_levels`).
fn collect(worker: &Worker, msg: &mut GossipMsg, seq: u64, all_levels: bool) {
    for (route, limiter) in worker.limiters.iter().enumerate() {
        if let Some(limiter) = limiter {
            limiter
                .borrow_mut()
                .take_local_usage(|key, tokens| msg.push_tokens(route as u32, key, tokens));
        }
    }
    for (route, key, tokens) in worker.fleet_news.borrow_mut().drain(..) {
        msg.push_fleet_tokens(route, &key, tokens);
    }
    for (u, upstream) in worker.upstreams.iter().enumerate() {
        let mut view = upstream.view.borrow_mut();
        let mut reported = upstream.reported_levels.borrow_mut();
        for b in 0..view.len() {
            let mut delta = view.take_local_delta(b);
            delta.connections = upstream.open_connections(b);
            let levels = (delta.in_flight, delta.connections);
            if all_levels || delta.successes > 0 || delta.failures > 0 || levels != reported[b] {
                reported[b] = levels;
                msg.push_backend(u as u32, b as u32, upstream.slot_epoch(b), delta);
            }
        }
    }
    for (u, upstream) in worker.upstreams.iter().enumerate() {
        upstream.take_strays(|b| msg.push_stray(u as u32, b as u32, upstream.slot_epoch(b)));
    }
    for (u, b, epoch, healthy) in worker.pending_health.borrow_mut().drain(..) {
        msg.push_health(u, b, epoch, healthy);
    }
    // Re-send the state of the backends this worker probes now and then, so
    // a receiver that lost a transition in a dropped message catches up.
    if seq.is_multiple_of(u64::from(STATE_RESEND_TICKS)) {
        for (u, upstream) in worker.upstreams.iter().enumerate() {
            if upstream.config.health_check.is_none() {
                continue;
            }
            let view = upstream.view.borrow();
            for b in 0..view.len() {
                if health::prober_of(u, b, worker.workers) == worker.id {
                    let epoch = upstream.slot_epoch(b);
                    msg.push_health(u as u32, b as u32, epoch, view.is_healthy(b));
                }
            }
        }
    }
}

// Must be Send to reach the worker thread it belongs to.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Mesh<Vec<u8>>>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn stderr_log(worker: usize) -> std::rc::Rc<crate::error_log::ErrorLog> {
        let config = ringgate_config::ErrorLog::default();
        let target = crate::error_log::ErrorLog::open(&config).expect("stderr");
        std::rc::Rc::new(crate::error_log::ErrorLog::for_worker(
            target, &config, worker,
        ))
    }

    const ONE_UPSTREAM: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:1"

[[routes]]
listener = "web"
match = { path_prefix = "/" }
upstream = "app"

[[upstreams]]
name = "app"
backends = [{ address = "127.0.0.1:2" }]
"#;

    #[test]
    fn a_level_lost_in_a_dropped_message_is_sent_again() {
        let config = ringgate_config::parse(ONE_UPSTREAM, "test.toml").expect("config");
        // Worker 1's inbox holds one message, so a second one is dropped.
        let mut meshes = mesh::<GossipMsg>(2, 1);
        let peer = meshes.pop().expect("worker 1");
        let mut gossip = Gossip::new(meshes.pop().expect("worker 0"));
        let worker = Worker::new(0, 2, Arc::new(config), None, stderr_log(0), 0);
        let upstream = &worker.upstreams[0];
        let now = Instant::now();
        let mut heard = Vec::new();
        let listen = |heard: &mut Vec<u32>| {
            peer.drain(|m| heard.extend(m.backends.iter().map(|e| e.delta.in_flight)))
        };

        upstream.on_start(0, now);
        gossip.round(&worker, now);
        upstream.on_start(0, now);
        gossip.round(&worker, now);
        assert_eq!(
            gossip.dropped(),
            1,
            "the second message found the inbox full"
        );
        listen(&mut heard);
        assert_eq!(heard, [1]);

        // Nothing changes here any more; the peer must still learn of the 2.
        for _ in 0..3 {
            gossip.round(&worker, now);
            listen(&mut heard);
        }
        assert_eq!(heard.last(), Some(&2), "heard {heard:?}");
    }

    /// Workers 0 and 1 of `config`, each with its end of the gossip mesh.
    fn two_workers(config: &str) -> ((Gossip, Worker), (Gossip, Worker)) {
        let config = Arc::new(ringgate_config::parse(config, "test.toml").expect("config"));
        let mut meshes = mesh::<GossipMsg>(2, 4);
        let g1 = Gossip::new(meshes.pop().expect("worker 1"));
        let g0 = Gossip::new(meshes.pop().expect("worker 0"));
        let w0 = Worker::new(0, 2, config.clone(), None, stderr_log(0), 0);
        let w1 = Worker::new(1, 2, config, None, stderr_log(1), 0);
        ((g0, w0), (g1, w1))
    }

    #[test]
    fn a_stray_found_on_one_worker_stops_reuse_on_the_others() {
        let ((mut g0, w0), (mut g1, w1)) = two_workers(ONE_UPSTREAM);
        let now = Instant::now();
        assert!(!w1.upstreams[0].tainted(0, now));
        w0.upstreams[0].taint(0, now);
        g0.round(&w0, now);
        g1.round(&w1, now);
        assert!(
            w1.upstreams[0].tainted(0, now),
            "worker 1 still reuses the backend worker 0 caught"
        );
        // Said once: the next round carries no stray.
        g0.round(&w0, now);
        let mut strays = 0;
        w0.upstreams[0].take_strays(|_| strays += 1);
        assert_eq!(strays, 0);
    }

    #[test]
    fn news_of_a_slot_whose_backend_changed_on_one_side_only_is_dropped() {
        let text = ONE_UPSTREAM.replace(
            "backends = [{ address = \"127.0.0.1:2\" }]",
            "backends = [{ address = \"api.test:2\", max_addresses = 1 }]",
        ) + "\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n";
        let ((mut g0, w0), (mut g1, w1)) = two_workers(&text);
        let now = Instant::now();
        let first = [("127.0.0.11:2".parse().expect("addr"), 1)];
        let second = [("127.0.0.12:2".parse().expect("addr"), 1)];
        for w in [&w0, &w1] {
            w.upstreams[0].apply_dns(0, &first, now);
        }
        // Worker 1 has the name's new address; worker 0 not yet, and
        // catches its old backend sending a stray.
        w1.upstreams[0].apply_dns(0, &second, now);
        w0.upstreams[0].taint(0, now);
        g0.round(&w0, now);
        g1.round(&w1, now);
        assert!(
            !w1.upstreams[0].tainted(0, now),
            "worker 1 took worker 0's news of 127.0.0.11 for 127.0.0.12"
        );
        // Once both hold the same backend in the slot, news passes again.
        w0.upstreams[0].apply_dns(0, &second, now);
        w0.upstreams[0].taint(0, now);
        g0.round(&w0, now);
        g1.round(&w1, now);
        assert!(w1.upstreams[0].tainted(0, now));
    }

    #[test]
    fn every_worker_hears_every_other_but_not_itself() {
        let mesh = mesh::<u32>(3, 4);
        mesh[0].publish(Arc::new(7));
        mesh[2].publish(Arc::new(9));
        let mut heard = vec![Vec::new(); 3];
        for (i, m) in mesh.iter().enumerate() {
            m.drain(|v| heard[i].push(*v));
        }
        assert_eq!(heard, vec![vec![9], vec![7, 9], vec![7]]);
    }

    #[test]
    fn full_inbox_drops_and_counts_instead_of_blocking() {
        let mesh = mesh::<u32>(2, 2);
        for v in 0..5 {
            mesh[0].publish(Arc::new(v));
        }
        assert_eq!(mesh[0].dropped(), 3);
        let mut got = Vec::new();
        mesh[1].drain(|v| got.push(*v));
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn a_message_every_peer_has_drained_is_reused_without_allocating() {
        let mesh = mesh::<Vec<u8>>(3, 4);
        let mut first = mesh[0].outgoing(|| Vec::with_capacity(64));
        Arc::get_mut(&mut first).expect("unshared").push(1);
        let first_ptr = Arc::as_ptr(&first);
        mesh[0].publish(first);
        // Worker 1 has drained, worker 2 not yet: the message is still shared.
        mesh[1].drain(|_| {});
        let second = mesh[0].outgoing(Vec::new);
        assert!(!std::ptr::eq(Arc::as_ptr(&second), first_ptr));
        assert_eq!(second.capacity(), 0, "a fresh message");
        mesh[0].publish(second);
        mesh[1].drain(|_| {});
        mesh[2].drain(|_| {});
        let mut third = mesh[0].outgoing(Vec::new);
        let reused = Arc::get_mut(&mut third).expect("every clone dropped");
        assert_eq!(
            reused.capacity(),
            0,
            "the spare is the last message published"
        );
        reused.reserve(64);
        let ptr = Arc::as_ptr(&third);
        mesh[0].publish(third);
        mesh[1].drain(|_| {});
        mesh[2].drain(|_| {});
        let fourth = mesh[0].outgoing(Vec::new);
        assert!(std::ptr::eq(Arc::as_ptr(&fourth), ptr), "same allocation");
        assert!(fourth.capacity() >= 64, "capacity kept");
    }
}
