//! Waiting for open-loop slots with microsecond precision. monoio's timer
//! wheel has a 1 ms tick and rounds every sleep up to it, which would send
//! each request up to a millisecond late and set off the bottleneck alarm;
//! so each worker has one pacer: a timerfd armed for the earliest waiting
//! slot and read through the ring, whose task wakes every connection whose
//! slot is due. Connections take a worker's slots in schedule order, so a
//! waiter almost always joins at the back of the queue.
//!
//! On the epoll driver (no io_uring), or if the timerfd cannot be made or
//! armed, slots are waited for with monoio's timer, rounded up to its
//! millisecond (the bottleneck alarm may then fire at high rates).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// At most one timer expiry per this interval: slots closer together than
/// this leave together, up to this late (counted in the send lag and the
/// generator delay, far below the bottleneck alarm's 1 ms). Each expiry
/// costs a `timerfd_settime`, a ring read and a timer interrupt; at a
/// slot every few µs that would cost a fifth of a core.
const MIN_TIMER_GAP: std::time::Duration = std::time::Duration::from_micros(20);
/// A next slot at most this far ahead is worth yielding for.
const YIELD_HORIZON: std::time::Duration = std::time::Duration::from_micros(50);
/// A yield that took less than this came straight back: nothing else ran.
const OTHERS_RAN: std::time::Duration = std::time::Duration::from_micros(2);

/// Lets every other ready task of the worker run once.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

thread_local! {
    /// Set by the engine when this thread's runtime is io_uring-driven.
    pub(crate) static ON_URING: Cell<bool> = const { Cell::new(false) };
}

struct Inner {
    /// Connections waiting for their slot, earliest first.
    waiting: RefCell<VecDeque<(Instant, Waker)>>,
    /// The pacer task's waker while nobody waits.
    idle_pacer: RefCell<Option<Waker>>,
    /// `None` when slots are waited for with monoio's timer. The ring reads
    /// the file; the fd (the same timer) is what `timerfd_settime` arms.
    timer: Option<(monoio::fs::File, std::os::fd::OwnedFd)>,
    /// The timerfd works: set false on its first failure.
    precise: Cell<bool>,
    /// The slot the timerfd is armed for.
    armed_for: Cell<Option<Instant>>,
    /// When the timerfd last expired.
    last_expiry: Cell<Option<Instant>>,
    /// No more waiters will come: the pacer task may end.
    done: Cell<bool>,
}

/// One worker's pacer, shared by its connections.
#[derive(Clone)]
pub struct Pacer(Rc<Inner>);

impl Pacer {
    /// A pacer for up to `connections` waiters. [`Pacer::run`] must run on
    /// a task of the same worker.
    pub fn new(connections: usize) -> Pacer {
        let timer = if ON_URING.with(Cell::get) {
            timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC)
                .ok()
                .and_then(|fd| {
                    let file = std::fs::File::from(fd.try_clone().ok()?);
                    Some((monoio::fs::File::from_std(file).ok()?, fd))
                })
        } else {
            None
        };
        Pacer(Rc::new(Inner {
            waiting: RefCell::new(VecDeque::with_capacity(connections)),
            idle_pacer: RefCell::new(None),
            precise: Cell::new(timer.is_some()),
            timer,
            armed_for: Cell::new(None),
            last_expiry: Cell::new(None),
            done: Cell::new(false),
        }))
    }

    /// Resolves at `at` (within microseconds), or at once when it has
    /// passed, with the clock reading that found it passed.
    pub async fn until(&self, at: Instant) -> Instant {
        loop {
            let now = Instant::now();
            if now >= at {
                return now;
            }
            if !self.0.precise.get() {
                monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
                return Instant::now();
            }
            SlotWait {
                at,
                pacer: &self.0,
                queued: false,
            }
            .await;
        }
    }

    /// No connection will wait any more: lets [`Pacer::run`] end.
    pub fn finish(&self) {
        self.0.done.set(true);
        if let Some(w) = self.0.idle_pacer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Arms the timerfd for `at` (or `MIN_TIMER_GAP` after the last
    /// expiry, if later), relative to now.
    fn arm(inner: &Inner, at: Instant) -> bool {
        let Some((_, timer)) = &inner.timer else {
            return false;
        };
        let fire = match inner.last_expiry.get() {
            Some(last) => at.max(last + MIN_TIMER_GAP),
            None => at,
        };
        let left = fire.saturating_duration_since(Instant::now());
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: left.as_secs() as _,
                // Never all-zero, which would disarm the timer.
                tv_nsec: left.subsec_nanos().max(1) as _,
            },
        };
        let ok = timerfd_settime(timer, TimerfdTimerFlags::empty(), &spec).is_ok();
        inner.armed_for.set(ok.then_some(at));
        ok
    }

    /// The timerfd failed: every waiter rechecks and falls back to
    /// monoio's timer.
    fn fall_back(inner: &Inner) {
        inner.precise.set(false);
        for (_, w) in inner.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Wakes the connections whose slot is due and returns the next slot.
    fn wake_due(inner: &Inner) -> Option<Instant> {
        let mut waiting = inner.waiting.borrow_mut();
        let now = Instant::now();
        while waiting.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, w)) = waiting.pop_front() {
                w.wake();
            }
        }
        waiting.front().map(|(at, _)| *at)
    }

    /// Wakes the connections whose slot is due, sleeping on the timerfd in
    /// between, until [`Pacer::finish`] and nobody waits. While the worker
    /// has other tasks to run and the next slot is close, the pacer yields
    /// to them and looks again instead of arming the timer: a busy worker
    /// then pays no timer set-up, read and wake-up per slot. It arms the
    /// timer as soon as a yield comes straight back (nothing else ran), so
    /// an idle worker sleeps rather than spins.
    pub async fn run(&self) {
        let inner = &*self.0;
        let Some((timer, _)) = &inner.timer else {
            return;
        };
        let mut expirations: Vec<u8> = Vec::with_capacity(8);
        loop {
            let mut next = Self::wake_due(inner);
            let mut last = Instant::now();
            while next.is_some_and(|at| at.saturating_duration_since(last) <= YIELD_HORIZON) {
                YieldOnce(false).await;
                let now = Instant::now();
                let others_ran = now.duration_since(last) >= OTHERS_RAN;
                next = Self::wake_due(inner);
                last = now;
                if !others_ran {
                    break;
                }
            }
            match next {
                Some(at) => {
                    if inner.armed_for.get() != Some(at) && !Self::arm(inner, at) {
                        return Self::fall_back(inner);
                    }
                    expirations.clear();
                    let (res, buf) = timer.read_at(expirations, 0).await;
                    expirations = buf;
                    inner.armed_for.set(None);
                    inner.last_expiry.set(Some(Instant::now()));
                    if res.is_err() {
                        return Self::fall_back(inner);
                    }
                }
                None if inner.done.get() => return,
                None => {
                    Idle {
                        pacer: inner,
                        parked: false,
                    }
                    .await
                }
            }
        }
    }
}

/// A connection's wait in the queue.
struct SlotWait<'a> {
    at: Instant,
    pacer: &'a Inner,
    queued: bool,
}

impl Future for SlotWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Woken: the slot is due, or the pacer fell back (`until` rechecks;
        // it has just read the clock before the first poll).
        if self.queued {
            return Poll::Ready(());
        }
        self.queued = true;
        let at = self.at;
        let inner = self.pacer;
        let mut waiting = inner.waiting.borrow_mut();
        // From the back: waiters nearly always come in slot order.
        let pos = waiting
            .iter()
            .rposition(|(t, _)| *t <= at)
            .map_or(0, |i| i + 1);
        waiting.insert(pos, (at, cx.waker().clone()));
        drop(waiting);
        // A new earliest slot while the timerfd waits for a later one.
        if pos == 0
            && inner.armed_for.get().is_some_and(|armed| armed > at)
            && !Pacer::arm(inner, at)
        {
            Pacer::fall_back(inner);
        }
        if let Some(p) = inner.idle_pacer.borrow_mut().take() {
            p.wake();
        }
        Poll::Pending
    }
}

/// The pacer task's wait while nobody waits for a slot.
struct Idle<'a> {
    pacer: &'a Inner,
    parked: bool,
}

impl Future for Idle<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = self.pacer;
        if self.parked || !inner.waiting.borrow().is_empty() || inner.done.get() {
            *inner.idle_pacer.borrow_mut() = None;
            return Poll::Ready(());
        }
        *inner.idle_pacer.borrow_mut() = Some(cx.waker().clone());
        self.parked = true;
        Poll::Pending
    }
}
