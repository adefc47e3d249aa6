//! The per-worker clock: every `gossip_interval` it starts the worker's
//! drain once the process was asked to stop, flushes the access and error
//! logs (and ends the error log's rate-limit windows), sends
//! a metrics snapshot every `SNAPSHOT_TICKS` ticks and runs one gossip
//! round. It runs as one task beside the worker's connections and is never
//! on the request path; the one atomic it reads (the stop flag) stays out
//! of the connection code.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::gossip::Gossip;
use crate::metrics::{SnapshotTx, SNAPSHOT_TICKS};
use crate::state::Worker;
use crate::stop::StopFlag;

/// Longest a finishing worker waits for room for its final snapshot.
const FINAL_SNAPSHOT_WAIT: Duration = Duration::from_millis(200);

pub struct Ticker {
    worker: Rc<Worker>,
    gossip: RefCell<Gossip>,
    stop: StopFlag,
    metrics: Option<SnapshotTx>,
    /// When the worker last gave its allocator's free pages back.
    collected: Cell<Instant>,
}

/// How often a worker gives the pages its allocator holds free back to the
/// OS. mimalloc purges them only from its own calls, after a delay: a
/// worker that went quiet after a burst (connections idle, buffers back in
/// the pool) would otherwise keep the burst's memory resident.
const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

impl Ticker {
    pub fn new(
        worker: Rc<Worker>,
        gossip: Gossip,
        stop: StopFlag,
        metrics: Option<SnapshotTx>,
    ) -> Self {
        Ticker {
            worker,
            gossip: RefCell::new(gossip),
            stop,
            metrics,
            collected: Cell::new(Instant::now()),
        }
    }

    /// Ticks every `gossip_interval` for as long as the worker's runtime runs.
    pub async fn run(self: Rc<Self>) {
        let interval = self.worker.config.server.gossip_interval;
        let mut ticks: u64 = 0;
        loop {
            monoio::time::sleep(interval).await;
            self.tick(ticks);
            ticks += 1;
        }
    }

    fn tick(&self, ticks: u64) {
        let worker = &self.worker;
        if self.stop.requested() {
            worker.begin_drain();
        }
        worker.flush_access_log();
        worker.error_log.tick();
        if ticks.is_multiple_of(SNAPSHOT_TICKS) {
            self.send_snapshot();
            worker.buffers.settle();
            worker.relay_buffers.settle();
        }
        let now = Instant::now();
        if now.duration_since(self.collected.get()) >= COLLECT_INTERVAL {
            self.collected.set(now);
            // SAFETY: collects this thread's heap; no pointer is involved.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
        crate::fleet::follow_status(worker, now);
        crate::dns::apply(worker, now);
        // No borrow crosses an await: a round is synchronous.
        self.gossip.borrow_mut().round(worker, now);
    }

    /// Sends the worker's final totals as it ends, so its counters outlive
    /// it in `/metrics`. Waits a little if the channel is full: the worker
    /// is done serving, and a lost final snapshot would lose counts.
    pub fn finish(&self) {
        if let Some(tx) = &self.metrics {
            let dropped = self.gossip.borrow().dropped();
            let mut s = self.worker.snapshot(dropped);
            s.last = true;
            let _ = tx.send_timeout(s, FINAL_SNAPSHOT_WAIT);
        }
    }

    fn send_snapshot(&self) {
        if let Some(tx) = &self.metrics {
            // Never waits: a full channel drops this one, the next replaces it.
            let dropped = self.gossip.borrow().dropped();
            let _ = tx.try_send(self.worker.snapshot(dropped));
        }
    }
}
