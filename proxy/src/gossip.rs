//! Gossip between workers (protocol: `ringgate_core::gossip`). Each worker
//! has one bounded crossbeam inbox and a sender to every other worker's
//! inbox; once per `gossip_interval` its ticker (`ticker.rs`) runs a
//! [`Gossip::round`]: drain the inbox, apply, publish its own deltas. Never
//! on the request path. A full inbox drops the message and counts the drop:
//! a worker never blocks on another. Only gossip lives here: the clock,
//! drains, log flushes and metric snapshots belong to the ticker.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use ringgate_core::gossip::{GossipMsg, HEALTH_RESEND_TICKS};

use crate::health;
use crate::worker::Worker;

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
    /// peers, kept afterwards for [`Mesh::outgoing`] to reuse.
    pub fn publish(&self, msg: Arc<M>) {
        for peer in &self.peers {
            match peer.try_send(msg.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.set(self.dropped.get() + 1);
                }
            }
        }
        self.keep(msg);
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
}

impl Gossip {
    pub fn new(mesh: Mesh<GossipMsg>) -> Self {
        Gossip {
            mesh,
            seq: 0,
            dropped_logged: 0,
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
        collect(worker, fill, seq);
        if fill.is_empty() {
            mesh.keep(msg);
        } else {
            mesh.publish(msg);
        }
        // An operator should hear of drops, but not once per tick.
        if mesh.dropped() > self.dropped_logged
            && seq.is_multiple_of(u64::from(HEALTH_RESEND_TICKS))
        {
            eprintln!(
                "ringgate: worker {}: {} gossip messages dropped (full inboxes)",
                worker.id,
                mesh.dropped()
            );
            self.dropped_logged = mesh.dropped();
        }
    }
}

fn apply(worker: &Worker, msg: &GossipMsg, now: Instant) {
    for (route, key, tokens) in msg.tokens() {
        if let Some(Some(limiter)) = worker.limiters.get(route as usize) {
            limiter.borrow_mut().charge(key, tokens, now);
        }
    }
    for entry in &msg.backends {
        if let Some(upstream) = worker.upstreams.get(entry.upstream as usize) {
            let mut view = upstream.view.borrow_mut();
            if (entry.backend as usize) < view.len() {
                view.apply_remote(
                    msg.sender as usize,
                    entry.backend as usize,
                    &entry.delta,
                    now,
                );
            }
        }
    }
    for entry in &msg.health {
        if let Some(upstream) = worker.upstreams.get(entry.upstream as usize) {
            let mut view = upstream.view.borrow_mut();
            if (entry.backend as usize) < view.len() {
                view.apply_health(entry.backend as usize, entry.healthy, now);
            }
        }
    }
}

fn collect(worker: &Worker, msg: &mut GossipMsg, seq: u64) {
    for (route, limiter) in worker.limiters.iter().enumerate() {
        if let Some(limiter) = limiter {
            limiter
                .borrow_mut()
                .take_local_usage(|key, tokens| msg.push_tokens(route as u32, key, tokens));
        }
    }
    for (u, upstream) in worker.upstreams.iter().enumerate() {
        let mut view = upstream.view.borrow_mut();
        let mut reported = upstream.reported_levels.borrow_mut();
        for b in 0..view.len() {
            let mut delta = view.take_local_delta(b);
            delta.connections = upstream.open_connections(b);
            let levels = (delta.in_flight, delta.connections);
            if delta.successes > 0 || delta.failures > 0 || levels != reported[b] {
                reported[b] = levels;
                msg.push_backend(u as u32, b as u32, delta);
            }
        }
    }
    for (u, b, healthy) in worker.pending_health.borrow_mut().drain(..) {
        msg.push_health(u, b, healthy);
    }
    // Re-send the state of the backends this worker probes now and then, so
    // a receiver that lost a transition in a dropped message catches up.
    if seq.is_multiple_of(u64::from(HEALTH_RESEND_TICKS)) {
        for (u, upstream) in worker.upstreams.iter().enumerate() {
            if upstream.config.health_check.is_none() {
                continue;
            }
            let view = upstream.view.borrow();
            for b in 0..view.len() {
                if health::prober_of(u, b, worker.workers) == worker.id {
                    msg.push_health(u as u32, b as u32, view.is_healthy(b));
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
