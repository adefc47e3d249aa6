//! Transport for gossip between workers: each worker has one bounded
//! crossbeam inbox and a sender to every other worker's inbox. Used only by
//! the per-worker ticker, never on the request path. A full inbox drops the
//! message and counts the drop: a worker never blocks on another.

use std::cell::Cell;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub struct Mesh<M> {
    pub id: usize,
    inbox: Receiver<Arc<M>>,
    peers: Vec<Sender<Arc<M>>>,
    dropped: Cell<u64>,
}

/// One endpoint per worker, fully connected, each inbox holding at most
/// `capacity` messages.
pub fn mesh<M>(workers: usize, capacity: usize) -> Vec<Mesh<M>> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(capacity)).unzip();
    receivers
        .into_iter()
        .enumerate()
        .map(|(id, inbox)| Mesh {
            id,
            inbox,
            peers: senders
                .iter()
                .enumerate()
                .filter(|(peer, _)| *peer != id)
                .map(|(_, s)| s.clone())
                .collect(),
            dropped: Cell::new(0),
        })
        .collect()
}

impl<M> Mesh<M> {
    /// Sends one message to every other worker; one allocation per tick,
    /// shared by all peers.
    pub fn publish(&self, msg: M) {
        if self.peers.is_empty() {
            return;
        }
        let msg = Arc::new(msg);
        for peer in &self.peers {
            match peer.try_send(msg.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped.set(self.dropped.get() + 1);
                }
            }
        }
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
        mesh[0].publish(7);
        mesh[2].publish(9);
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
            mesh[0].publish(v);
        }
        assert_eq!(mesh[0].dropped(), 3);
        let mut got = Vec::new();
        mesh[1].drain(|v| got.push(*v));
        assert_eq!(got, vec![0, 1]);
    }
}
