//! The load engine: one monoio runtime (io_uring) per worker core, each owning its
//! connections, its share of the schedule and its [`Recorder`]; the workers
//! share nothing but the start time and a pair of progress counters.
//!
//! A connection is one readable loop: take a slot (open loop) or go at once
//! (closed loop) → connect if needed → write the request(s) → read the
//! response(s) → record → keep or drop the connection. Requests whose slot
//! falls in the warm-up are sent but not recorded; no slot at or after the
//! end of the window is taken, and each request still in flight then has
//! `--timeout` to finish, so a run always ends.

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::client::{self, Conn, Failure, Response, Tls};
use crate::config::RunConfig;
use crate::id::{IdSeen, ID_DIGITS};
use crate::pacer::{Pacer, ON_URING};
use crate::record::{ErrorClass, Measured, Recorder, Stamps, Window};
use crate::report::Report;
use crate::ring_flags::RingFlags;
use crate::schedule::{Arrival, Schedule};
use crate::target::Target;
use crate::Error;

/// Submission ring entries per worker: one batch per loop covers a few
/// hundred connections.
const RING_DEPTH: u32 = 256;
/// Time for the workers to start and connect before the first slot.
const STARTUP: Duration = Duration::from_millis(150);
/// A closed-loop connection that cannot connect waits this long before
/// trying again, so a dead server is not hammered in a busy loop.
const CONNECT_RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// How often the live progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Seed of the Poisson arrivals: runs are reproducible.
const POISSON_SEED: u64 = 0x5EED_0F71_A66A_7E00;

/// Responses and errors so far, read by the progress line only.
#[derive(Default)]
struct Progress {
    responses: AtomicU64,
    errors: AtomicU64,
}

#[derive(Clone, Copy)]
struct Clock {
    /// The schedule's origin: first slot, warm-up starts.
    t0: Instant,
    /// End of the measured window; no slot at or after it is sent.
    end: Instant,
}

/// What one connection sends; owned by its connection, which writes each
/// request's id into `pipelined` in place.
struct Load {
    target: Target,
    /// The request repeated `pipeline` times, written as one slice.
    pipelined: Vec<u8>,
}

/// Settings every connection of a worker reads.
struct Settings {
    pipeline: usize,
    keepalive: bool,
    timeout: Duration,
    tls: Option<Tls>,
    open_loop: bool,
}

/// A worker's state, owned by its thread.
struct WorkerState {
    settings: Settings,
    clock: Clock,
    schedule: RefCell<Option<Schedule>>,
    /// Wakes connections at their slots (open loop).
    pacer: Pacer,
    recorder: RefCell<Recorder>,
    progress: Arc<Progress>,
    /// Requests this worker has given an id (`--check-id`).
    ids_taken: Cell<u64>,
    /// Worker `w` of `W` hands out ids `1 + n·W + w`: unique over the run
    /// with nothing shared between workers (0 is the probe's).
    index: u64,
    workers: u64,
}

impl WorkerState {
    /// The next slot of this worker's schedule, if it is before the end
    /// (and, with `due_by`, already due by then).
    fn take_slot(&self, due_by: Option<Instant>) -> Option<Instant> {
        let mut schedule = self.schedule.borrow_mut();
        let s = schedule.as_mut()?;
        let at = self.clock.t0 + s.peek();
        if at >= self.clock.end || due_by.is_some_and(|d| at > d) {
            return None;
        }
        s.take();
        Some(at)
    }

    fn take_id(&self) -> u64 {
        let n = self.ids_taken.get();
        self.ids_taken.set(n + 1);
        1 + n * self.workers + self.index
    }

    fn response(&self, stamps: &Stamps, r: &Response) {
        self.recorder
            .borrow_mut()
            .response(stamps, r.status, r.bytes);
        self.progress.responses.fetch_add(1, Ordering::Relaxed);
    }

    fn errors(&self, class: ErrorClass, intended: &[Option<Instant>], sent: Instant, now: Instant) {
        let mut rec = self.recorder.borrow_mut();
        for &i in intended {
            rec.error(class, 1, i, sent, now);
        }
        self.progress
            .errors
            .fetch_add(intended.len() as u64, Ordering::Relaxed);
    }
}

async fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        monoio::time::sleep_until(monoio::time::Instant::from_std(t)).await;
    }
}

/// A mismatched response in words, for the error output.
fn id_example(needle: &[u8], seen: IdSeen, status: u16, body: &[u8]) -> String {
    const BODY_SHOWN_BYTES: usize = 120;
    let name_len = needle.len() - ID_DIGITS;
    let got = match seen {
        IdSeen::Other(id) => format!(
            "{}{id:0width$}",
            String::from_utf8_lossy(&needle[..name_len]),
            width = ID_DIGITS
        ),
        _ => "no id".to_string(),
    };
    let shown = &body[..body.len().min(BODY_SHOWN_BYTES)];
    format!(
        "request {} got a {status} response with {got}: body {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(shown)
    )
}

/// One connection's loop, until the schedule (or the window) is exhausted.
async fn connection(st: Rc<WorkerState>, mut load: Load) {
    let set = &st.settings;
    let mut conn: Option<Conn> = None;
    if set.keepalive {
        // Connect before the first slot so set-up is not charged to it; a
        // failure here is retried (and counted) on the first request.
        conn = Conn::connect(&load.target, set.tls.as_ref(), Instant::now() + set.timeout)
            .await
            .ok();
    }
    sleep_until(st.clock.t0).await;
    let request_len = load.target.request.len();
    let mut intended: Vec<Option<Instant>> = Vec::with_capacity(set.pipeline);
    // When the connection became free: the last response's done stamp, so
    // the loop reads the clock only for `sent` and `done` on the way through.
    let mut free_at = Instant::now();
    loop {
        intended.clear();
        let sent = if set.open_loop {
            let Some(first) = st.take_slot(None) else {
                break;
            };
            // A slot at or before `free_at` is already due: no wait. The
            // pacer's last clock read (at or after the slot) is the send time.
            let now = if first > free_at {
                st.pacer.until(first).await
            } else {
                Instant::now()
            };
            intended.push(Some(first));
            // Pipelining in open loop: slots already due leave together.
            while intended.len() < set.pipeline {
                match st.take_slot(Some(now)) {
                    Some(at) => intended.push(Some(at)),
                    None => break,
                }
            }
            now
        } else {
            // The send time itself decides: a request sent at or after the
            // end would go out unmeasured (and skew counts against the server).
            let now = Instant::now();
            if now >= st.clock.end {
                break;
            }
            intended.resize(set.pipeline, None);
            now
        };
        let k = intended.len();
        let deadline = sent + set.timeout;
        let mut failure: Option<(Failure, usize)> = None;
        let mut reusable = set.keepalive;
        // The clock reading the send's time left is computed from.
        if conn.is_none() {
            match Conn::connect(&load.target, set.tls.as_ref(), deadline).await {
                Ok(c) => conn = Some(c),
                Err(f) => failure = Some((f, 0)),
            }
        }
        let mut last_done = None;
        if let Some(slot) = load.target.id {
            for j in 0..k {
                let id = st.take_id();
                slot.in_copy(j, request_len).write(&mut load.pipelined, id);
            }
        }
        if let (None, Some(c)) = (&failure, conn.as_mut()) {
            let len = k * request_len;
            // Responses complete so far: a deadline fails the rest.
            let complete = Cell::new(0usize);
            let exchange = async {
                c.send(&mut load.pipelined, len).await.map_err(|f| (f, 0))?;
                st.recorder.borrow_mut().add_sent_bytes(len as u64);
                for (j, &slot) in intended.iter().enumerate() {
                    let needle = load
                        .target
                        .id
                        .map(|s| s.in_copy(j, request_len).needle(&load.pipelined));
                    let r = c
                        .read_response(load.target.head_method, needle)
                        .await
                        .map_err(|f| (f, j))?;
                    if let Some(needle) = needle {
                        st.recorder.borrow_mut().ids.count(r.id, || {
                            id_example(needle, r.id, r.status, c.scanned_body())
                        });
                    }
                    let done = Instant::now();
                    let stamps = Stamps {
                        intended: slot,
                        free_at,
                        sent,
                        done,
                    };
                    st.response(&stamps, &r);
                    reusable &= r.reusable;
                    last_done = Some(done);
                    complete.set(j + 1);
                }
                Ok(())
            };
            failure = match client::by(deadline, exchange).await {
                Ok(Ok(())) => None,
                Ok(Err(failed)) => Some(failed),
                Err(timeout) => Some((timeout, complete.get())),
            };
            if load.pipelined.is_empty() {
                // A send the deadline dropped kept the buffer.
                load.pipelined = load.target.request.repeat(set.pipeline);
            }
        }
        if let Some((f, from)) = failure {
            st.errors(f.class, &intended[from..], sent, Instant::now());
            conn = None;
            if f.class == ErrorClass::Connect && !set.open_loop {
                monoio::time::sleep(CONNECT_RETRY_BACKOFF).await;
            }
            free_at = Instant::now();
        } else {
            if !reusable {
                conn = None;
            }
            // Every response came in, so there was a last one.
            free_at = last_done.unwrap_or_else(Instant::now);
        }
    }
}

struct WorkerPlan {
    index: usize,
    workers: usize,
    /// One entry per connection of this worker: what it sends.
    loads: Vec<Load>,
    settings: Settings,
    clock: Clock,
    window: Window,
    rate: Option<f64>,
    arrival: Arrival,
    progress: Arc<Progress>,
}

async fn worker(plan: WorkerPlan) -> Recorder {
    let schedule = plan
        .rate
        .map(|r| Schedule::new(plan.arrival, r, plan.workers, plan.index, POISSON_SEED));
    let st = Rc::new(WorkerState {
        settings: plan.settings,
        clock: plan.clock,
        schedule: RefCell::new(schedule),
        pacer: Pacer::new(plan.loads.len()),
        recorder: RefCell::new(Recorder::new(plan.window, plan.index)),
        progress: plan.progress,
        ids_taken: Cell::new(0),
        index: plan.index as u64,
        workers: plan.workers as u64,
    });
    let tasks: Vec<_> = plan
        .loads
        .into_iter()
        .map(|load| monoio::spawn(connection(st.clone(), load)))
        .collect();
    let busy = monoio::spawn(busy_share(plan.window));
    let pacer = st.pacer.clone();
    let pacing = monoio::spawn(async move { pacer.run().await });
    for t in tasks {
        t.await;
    }
    st.pacer.finish();
    pacing.await;
    let busy = busy.await;
    let mut recorder = match Rc::try_unwrap(st) {
        Ok(st) => st.recorder.into_inner(),
        // Every task has finished, so no other reference is left.
        Err(st) => {
            let empty = Recorder::new(plan.window, plan.index);
            st.recorder.replace(empty)
        }
    };
    recorder.busy = busy;
    recorder
}

/// This thread's time on a CPU plus its time waiting in a run queue, in ns
/// (/proc/thread-self/schedstat): the time it wanted a CPU.
fn thread_wanted_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some(f.next()?? + f.next()??)
}

/// The share of the measured window this worker's thread wanted a CPU. A
/// worker that keeps up sleeps between events; one near 1 never idled, so
/// it, not the server, set the pace.
async fn busy_share(window: Window) -> Option<f64> {
    sleep_until(window.start).await;
    let (t0, a) = (Instant::now(), thread_wanted_cpu_ns());
    sleep_until(window.end).await;
    let (t1, b) = (Instant::now(), thread_wanted_cpu_ns());
    let wall = t1.duration_since(t0).as_secs_f64();
    match (a, b) {
        (Some(a), Some(b)) if wall > 0.0 => {
            Some((b.saturating_sub(a) as f64 / 1e9 / wall).min(1.0))
        }
        _ => None,
    }
}

/// Runs `fut` to completion on this thread in a monoio runtime: io_uring
/// with the first flags the kernel accepts, else the epoll driver (no
/// io_uring: old kernel, seccomp, `kernel.io_uring_disabled`).
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, Error> {
    for flags in RingFlags::PREFERENCE {
        if let Ok(mut rt) = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_DEPTH)
            .uring_builder(flags.builder())
            .enable_timer()
            .build()
        {
            ON_URING.with(|u| u.set(true));
            return Ok(rt.block_on(fut));
        }
    }
    ON_URING.with(|u| u.set(false));
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => Ok(rt.block_on(fut)),
        // Only fails when epoll itself cannot be created (out of fds).
        Err(e) => Err(Error::Executor(format!(
            "cannot start an io_uring or epoll event loop: {e}"
        ))),
    }
}

/// A worker thread, pinned to `cpu` when given, running `fut` to its end.
fn spawn_worker<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    name: String,
    cpu: Option<usize>,
    fut: impl FnOnce() -> F + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T, Error>>, Error> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Some(id) = cpu {
                // A CPU outside the mask is refused; the worker then floats.
                let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            block_on(fut())
        })
        .map_err(|e| Error::Executor(e.to_string()))
}

fn join_error(_: Box<dyn std::any::Any + Send>) -> Error {
    Error::Executor("a load worker stopped unexpectedly".into())
}

/// Sends one request to each target and reads the response, so a dead,
/// wrong or garbage-speaking server is reported before any load.
fn probe(config: &RunConfig) -> Result<(), Error> {
    let targets = config.targets.clone();
    let tls = config.tls.clone();
    let timeout = config.timeout;
    let handle = spawn_worker("ringload-probe".into(), None, move || async move {
        for t in &targets {
            let deadline = Instant::now() + timeout;
            let what = |f: Failure| Error::Probe {
                url: t.url.original.clone(),
                addr: t.addr,
                class: f.class,
                why: f.why,
            };
            let mut c = Conn::connect(t, tls.as_ref(), deadline)
                .await
                .map_err(what)?;
            let mut request = t.request.clone();
            client::by(deadline, c.send(&mut request, t.request.len()))
                .await
                .and_then(|sent| sent)
                .map_err(what)?;
            // The probe's id is the placeholder, 0.
            let needle = t.id.map(|s| s.needle(&t.request));
            let r = client::by(deadline, c.read_response(t.head_method, needle))
                .await
                .and_then(|r| r)
                .map_err(what)?;
            if let (Some(needle), true) = (needle, r.id.is_mismatch()) {
                // A server that does not echo ids would fail every
                // request: say so once, before the load.
                return Err(Error::IdProbe {
                    url: t.url.original.clone(),
                    name: String::from_utf8_lossy(&needle[..needle.len() - ID_DIGITS - 1])
                        .into_owned(),
                    why: id_example(needle, r.id, r.status, c.scanned_body()),
                });
            }
        }
        Ok(())
    })?;
    handle.join().map_err(join_error)??
}

/// Runs the load described by `config` and returns the merged report.
pub fn run(config: &RunConfig) -> Result<Report, Error> {
    if config.probe {
        probe(config)?;
    }
    let cpu_before = (Instant::now(), process_cpu_seconds());
    let workers = config.cpus.len();
    let t0 = Instant::now() + STARTUP;
    let start = t0 + config.warmup;
    let end = start + config.duration;
    let clock = Clock { t0, end };
    // The timeline covers the window and the drain after it.
    let timeline_seconds = (config.duration + config.timeout).as_secs() as usize + 2;
    let window = Window {
        start,
        end,
        timeline_seconds,
        open_loop: config.rate.is_some(),
        raw_limit: config.raw_limit / workers,
    };
    let progress: Vec<Arc<Progress>> = (0..workers).map(|_| Arc::default()).collect();
    let mut handles = Vec::with_capacity(workers);
    let mut conn_index = 0usize;
    for (w, &cpu) in config.cpus.iter().enumerate() {
        // Connections split as evenly as they go; URLs round-robin over them.
        let n = config.connections / workers + usize::from(w < config.connections % workers);
        let loads = (0..n)
            .map(|_| {
                let t = config.targets[conn_index % config.targets.len()].clone();
                conn_index += 1;
                let pipelined = t.request.repeat(config.pipeline);
                Load {
                    target: t,
                    pipelined,
                }
            })
            .collect();
        let plan = WorkerPlan {
            index: w,
            workers,
            loads,
            settings: Settings {
                pipeline: config.pipeline,
                keepalive: config.keepalive,
                timeout: config.timeout,
                tls: config.tls.clone(),
                open_loop: config.rate.is_some(),
            },
            clock,
            window,
            rate: config.rate,
            arrival: config.arrival,
            progress: progress[w].clone(),
        };
        let pin = config.pin.then_some(cpu);
        let handle = spawn_worker(format!("ringload-{w}"), pin, move || worker(plan))?;
        handles.push(handle);
    }
    let done = Arc::new(AtomicBool::new(false));
    let progress_thread = if config.progress && std::io::stderr().is_terminal() {
        let done = done.clone();
        let progress = progress.clone();
        let (warmup, duration) = (config.warmup, config.duration);
        std::thread::Builder::new()
            .name("ringload-progress".into())
            .spawn(move || show_progress(&progress, &done, t0, warmup, duration))
            .ok()
    } else {
        None
    };
    let mut recorders = Vec::with_capacity(workers);
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => recorders.push(r),
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(join_error(e)),
        }
    }
    done.store(true, Ordering::Relaxed);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let measured = Measured::merge(recorders);
    let cores_used = match (cpu_before.1, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / cpu_before.0.elapsed().as_secs_f64()),
        _ => None,
    };
    Ok(Report::new(config, measured, cores_used))
}

/// CPU time (user + system) this process has used, from /proc/self/stat,
/// whose times are in USER_HZ ticks, 100 a second on every Linux ABI.
fn process_cpu_seconds() -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// The live line at `since_t0` into the run: the warm-up is marked as not
/// recorded, the measured window counts up to its duration, and after the
/// window there is no line (`None`): only stragglers are still in flight.
fn progress_line(
    since_t0: Duration,
    warmup: Duration,
    duration: Duration,
    responses: u64,
    rate: f64,
    errors: u64,
) -> Option<String> {
    let counts = format!("{responses} responses  {rate:9.0} req/s  {errors} errors");
    if since_t0 < warmup {
        Some(format!(
            "  warm-up {:5.1}s / {:.1}s (not recorded)  {counts}",
            since_t0.as_secs_f64(),
            warmup.as_secs_f64()
        ))
    } else if since_t0 < warmup + duration {
        Some(format!(
            "  {:6.1}s / {:.1}s  {counts}",
            (since_t0 - warmup).as_secs_f64(),
            duration.as_secs_f64()
        ))
    } else {
        None
    }
}

fn show_progress(
    progress: &[Arc<Progress>],
    done: &AtomicBool,
    t0: Instant,
    warmup: Duration,
    duration: Duration,
) {
    let mut last = (Instant::now(), 0u64);
    let mut err = std::io::stderr();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(PROGRESS_EVERY);
        let responses: u64 = progress
            .iter()
            .map(|p| p.responses.load(Ordering::Relaxed))
            .sum();
        let errors: u64 = progress
            .iter()
            .map(|p| p.errors.load(Ordering::Relaxed))
            .sum();
        let now = Instant::now();
        let rate = (responses - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, responses);
        let since_t0 = now.saturating_duration_since(t0);
        let Some(line) = progress_line(since_t0, warmup, duration, responses, rate, errors) else {
            break;
        };
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
    let _ = write!(err, "\r\x1b[2K");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_line_marks_the_warm_up_and_stops_at_the_duration() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let warm = progress_line(ms(500), s(1), s(5), 10, 20.0, 0).unwrap();
        assert!(
            warm.contains("warm-up") && warm.contains("not recorded"),
            "{warm}"
        );
        assert!(warm.contains("0.5s / 1.0s"), "{warm}");
        let measured = progress_line(ms(3500), s(1), s(5), 10, 20.0, 1).unwrap();
        assert!(!measured.contains("warm-up"), "{measured}");
        assert!(measured.contains("2.5s / 5.0s"), "{measured}");
        assert!(measured.contains("1 errors"), "{measured}");
        assert_eq!(progress_line(s(6), s(1), s(5), 10, 20.0, 0), None);
        assert_eq!(progress_line(s(9), s(1), s(5), 10, 20.0, 0), None);
        let no_warmup = progress_line(ms(100), Duration::ZERO, s(5), 1, 1.0, 0).unwrap();
        assert!(!no_warmup.contains("warm-up"), "{no_warmup}");
    }
}
