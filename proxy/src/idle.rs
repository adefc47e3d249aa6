//! The idle deadlines of a worker's quiet connections: keep-alive client
//! connections that stayed idle past the buffer grace, and tunnels whose
//! directions both wait for their next bytes. One timer for all of them,
//! in the worker, instead of one per connection (a monoio `Sleep` is about
//! 640 bytes, more than the rest of what such a connection holds). The
//! connection waits on its socket's readiness only; this worker's [`reap`]
//! task ends the wait once its deadline passes: a keep-alive connection's
//! through its `ConnControl::abort`, a tunnel's by waking its task
//! ([`IdleClock`]).

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// What waits on a deadline in a worker's [`IdleDeadlines`].
pub trait IdleWaiter {
    fn mark(&self) -> &IdleMark;
    /// Its deadline has passed: end its wait.
    fn expire(&self);
}

/// One connection's place in the deadlines: the deadline it had when
/// queued. A connection is queued at most once (`IdleMark::queued`);
/// when its entry comes due with a later deadline, the entry goes back in.
struct Entry(Instant, Rc<dyn IdleWaiter>);

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
    /// `waiter` waits until `deadline`, when the reaper ends its wait
    /// (`IdleWaiter::expire`) unless `disarm` came first.
    pub fn arm<W: IdleWaiter + 'static>(&self, waiter: &Rc<W>, deadline: Instant) {
        let mark = waiter.mark();
        mark.deadline.set(Some(deadline));
        if mark.queued.replace(true) {
            return;
        }
        let mut heap = self.heap.borrow_mut();
        let earliest = heap.peek().is_none_or(|Reverse(e)| deadline < e.0);
        heap.push(Reverse(Entry(deadline, waiter.clone())));
        drop(heap);
        if earliest {
            if let Some(waker) = self.reaper.borrow().as_ref() {
                waker.wake_by_ref();
            }
        }
    }

    /// The wait ended before its deadline (its entry is dropped when due);
    /// the deadline it had, if it had not passed.
    pub fn disarm(waiter: &impl IdleWaiter) -> Option<Instant> {
        waiter.mark().deadline.take()
    }

    /// Aborts the waits whose deadline has passed; the earliest deadline
    /// still ahead, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        while let Some(Reverse(top)) = heap.peek() {
            if top.0 > now {
                return Some(top.0);
            }
            let Reverse(Entry(_, waiter)) = heap.pop().expect("peeked");
            let mark = waiter.mark();
            match mark.deadline.get() {
                Some(deadline) if deadline <= now => {
                    mark.queued.set(false);
                    mark.deadline.set(None);
                    waiter.expire();
                }
                // Idle again since it was queued: its new deadline.
                Some(deadline) => heap.push(Reverse(Entry(deadline, waiter))),
                None => mark.queued.set(false),
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

/// The idle deadline of one task's waits (a tunnel's two directions) on
/// the worker's one timer: about 80 bytes where a timer of its own would
/// be 640. The task is polled as a whole, so the deadline's expiry re-polls
/// all its waits; each then checks its own deadline.
pub struct IdleClock {
    /// Weak: the deadlines hold the clock while it is queued.
    deadlines: Weak<IdleDeadlines>,
    mark: IdleMark,
    waker: RefCell<Option<Waker>>,
}

impl IdleWaiter for IdleClock {
    fn mark(&self) -> &IdleMark {
        &self.mark
    }

    fn expire(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl IdleClock {
    pub fn new(deadlines: &Rc<IdleDeadlines>) -> Rc<Self> {
        Rc::new(IdleClock {
            deadlines: Rc::downgrade(deadlines),
            mark: IdleMark::default(),
            waker: RefCell::default(),
        })
    }

    /// Ready once `deadline` has passed; until then the worker's reaper
    /// wakes `cx`'s task by `deadline`.
    pub fn poll_deadline(self: &Rc<Self>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        {
            let mut slot = self.waker.borrow_mut();
            match &*slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        // The waits of one task arm it for the same deadline (their
        // shared last activity plus the idle timeout), or a later one.
        if self.mark.deadline.get() != Some(deadline) {
            if let Some(deadlines) = self.deadlines.upgrade() {
                deadlines.arm(self, deadline);
            }
        }
        Poll::Pending
    }
}

/// The worker's reaper task: sleeps until the earliest idle deadline and
/// aborts the waits that reached theirs.
pub async fn reap(deadlines: Rc<IdleDeadlines>) {
    let timer = ReaperTimer::default();
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

/// The reaper's timer: one monoio `Sleep`, allocated at its first wait and
/// moved to each next deadline.
#[derive(Default)]
struct ReaperTimer {
    sleep: RefCell<Option<Pin<Box<monoio::time::Sleep>>>>,
}

impl ReaperTimer {
    /// Ready once `deadline` has passed; until then the timer fires by
    /// `deadline` at the latest, and wakes `cx`'s task.
    fn poll_deadline(&self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        let at = monoio::time::Instant::from_std(deadline);
        let mut slot = self.sleep.borrow_mut();
        let sleep = slot.get_or_insert_with(|| Box::pin(monoio::time::sleep_until(at)));
        if sleep.deadline() > at || sleep.is_elapsed() {
            sleep.as_mut().reset(at);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            // The wheel's millisecond may end just before `deadline`:
            // come back rather than wait without a timer.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::ConnControl;

    #[test]
    fn a_wait_past_its_deadline_is_aborted_and_one_that_ended_is_not() {
        let deadlines = IdleDeadlines::default();
        let t0 = Instant::now();
        let late = Rc::new(ConnControl::default());
        let woke = Rc::new(ConnControl::default());
        deadlines.arm(&late, t0 + Duration::from_secs(1));
        deadlines.arm(&woke, t0 + Duration::from_secs(1));
        IdleDeadlines::disarm(&*woke);
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
            IdleDeadlines::disarm(&*conn);
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

    struct CountWakes(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_clock_wakes_its_task_at_the_latest_deadline_its_waits_armed() {
        let deadlines = Rc::new(IdleDeadlines::default());
        let clock = IdleClock::new(&deadlines);
        let wakes = std::sync::Arc::new(CountWakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let t0 = Instant::now();
        let first = t0 + Duration::from_secs(60);
        let later = t0 + Duration::from_secs(90);
        // Both directions wait; then bytes move and they wait again, for
        // a later deadline: one entry.
        assert!(clock.poll_deadline(first, &mut cx).is_pending());
        assert!(clock.poll_deadline(first, &mut cx).is_pending());
        assert!(clock.poll_deadline(later, &mut cx).is_pending());
        assert_eq!(deadlines.len(), 1);
        // The first deadline is stale: no wake, the entry moves on.
        assert_eq!(deadlines.expire(first), Some(later));
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(deadlines.expire(later), None);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A tunnel that ended is dropped from the deadlines when its entry
        // comes due, waking no one.
        let ended = IdleClock::new(&deadlines);
        assert!(ended.poll_deadline(first, &mut cx).is_pending());
        IdleDeadlines::disarm(&*ended);
        deadlines.expire(first);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(Rc::strong_count(&ended), 1);
    }
}
