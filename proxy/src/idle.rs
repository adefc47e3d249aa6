//! The keep-alive deadlines of a worker's client connections that stayed
//! idle past the buffer grace: one timer for all of them, in the worker,
//! instead of one per connection (a monoio `Sleep` is about 640 bytes,
//! more than the rest of what such a connection holds). The connection
//! waits on its socket's readiness only; this worker's [`reap`] task
//! closes it through its `ConnControl::abort` once its deadline passes.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::io::SharedTimer;
use crate::state::ConnControl;

/// One connection's place in the deadlines: the deadline it had when
/// queued. A connection is queued at most once (`IdleMark::queued`);
/// when its entry comes due with a later deadline, the entry goes back in.
struct Entry(Instant, Rc<ConnControl>);

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

/// What a connection's control block keeps of its idle deadline.
#[derive(Default)]
pub struct IdleMark {
    /// When the connection's current idle wait ends (`None`: not waiting).
    deadline: Cell<Option<Instant>>,
    /// The connection has an entry in its worker's deadlines.
    queued: Cell<bool>,
}

/// A worker's idle deadlines, earliest first.
#[derive(Default)]
pub struct IdleDeadlines {
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    /// The reaper's waker, to move its timer forward.
    reaper: RefCell<Option<Waker>>,
}

impl IdleDeadlines {
    /// `ctl`'s connection waits for its next request until `deadline`, when
    /// the reaper aborts its wait unless `disarm` came first.
    pub fn arm(&self, ctl: &Rc<ConnControl>, deadline: Instant) {
        ctl.idle_mark.deadline.set(Some(deadline));
        if ctl.idle_mark.queued.replace(true) {
            return;
        }
        let mut heap = self.heap.borrow_mut();
        let earliest = heap.peek().is_none_or(|Reverse(e)| deadline < e.0);
        heap.push(Reverse(Entry(deadline, ctl.clone())));
        drop(heap);
        if earliest {
            if let Some(waker) = self.reaper.borrow().as_ref() {
                waker.wake_by_ref();
            }
        }
    }

    /// The wait ended before its deadline (its entry is dropped when due).
    pub fn disarm(ctl: &ConnControl) {
        ctl.idle_mark.deadline.set(None);
    }

    /// Aborts the waits whose deadline has passed; the earliest deadline
    /// still ahead, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        while let Some(Reverse(top)) = heap.peek() {
            if top.0 > now {
                return Some(top.0);
            }
            let Reverse(Entry(_, ctl)) = heap.pop().expect("peeked");
            match ctl.idle_mark.deadline.get() {
                Some(deadline) if deadline <= now => {
                    ctl.idle_mark.queued.set(false);
                    ctl.idle_mark.deadline.set(None);
                    ctl.abort.abort();
                }
                // Idle again since it was queued: its new deadline.
                Some(deadline) => heap.push(Reverse(Entry(deadline, ctl))),
                None => ctl.idle_mark.queued.set(false),
            }
        }
        None
    }

    /// Connections with an entry (those waiting, and those whose wait
    /// ended since: at most one entry per open connection).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.borrow().len()
    }
}

/// The worker's reaper task: sleeps until the earliest idle deadline and
/// aborts the waits that reached theirs.
pub async fn reap(deadlines: Rc<IdleDeadlines>) {
    let timer = SharedTimer::default();
    poll_fn(|cx| {
        *deadlines.reaper.borrow_mut() = Some(cx.waker().clone());
        if let Some(next) = deadlines.expire(Instant::now()) {
            if timer.poll_deadline(next, cx).is_ready() {
                // `next` came while expiring: go round.
                cx.waker().wake_by_ref();
            }
        }
        Poll::<()>::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_wait_past_its_deadline_is_aborted_and_one_that_ended_is_not() {
        let deadlines = IdleDeadlines::default();
        let t0 = Instant::now();
        let late = Rc::new(ConnControl::default());
        let woke = Rc::new(ConnControl::default());
        deadlines.arm(&late, t0 + Duration::from_secs(1));
        deadlines.arm(&woke, t0 + Duration::from_secs(1));
        IdleDeadlines::disarm(&woke);
        assert_eq!(deadlines.expire(t0), Some(t0 + Duration::from_secs(1)));
        assert!(!late.abort.is_aborted());
        assert_eq!(deadlines.expire(t0 + Duration::from_secs(1)), None);
        assert!(late.abort.is_aborted());
        assert!(!woke.abort.is_aborted());
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn a_connection_idle_again_keeps_one_entry_with_its_new_deadline() {
        let deadlines = IdleDeadlines::default();
        let t0 = Instant::now();
        let conn = Rc::new(ConnControl::default());
        // Idle, busy, idle again many times within one keep-alive timeout.
        for i in 0..1000 {
            deadlines.arm(&conn, t0 + Duration::from_millis(1000 + i));
            IdleDeadlines::disarm(&conn);
        }
        deadlines.arm(&conn, t0 + Duration::from_millis(5000));
        assert_eq!(deadlines.len(), 1);
        // Its first deadline comes, the entry goes back for the latest one.
        assert_eq!(
            deadlines.expire(t0 + Duration::from_millis(1000)),
            Some(t0 + Duration::from_millis(5000))
        );
        assert!(!conn.abort.is_aborted());
        deadlines.expire(t0 + Duration::from_millis(5000));
        assert!(conn.abort.is_aborted());
    }
}
