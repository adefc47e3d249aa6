//! I/O primitives on monoio's rent-style API: reads that time out by
//! cancelling the io_uring operation (never by dropping it, so the buffer
//! comes back), an abort switch one half of an exchange can pull on the other,
//! and `Gather`, a writev over slices of an owned buffer plus a patch.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::ops::Range;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf};
use monoio::io::{
    CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRent, Canceller, OwnedReadHalf,
    OwnedWriteHalf,
};
use monoio::net::TcpStream;

use crate::idle::IdleClock;

pub type Reader = OwnedReadHalf<TcpStream>;
pub type Writer = OwnedWriteHalf<TcpStream>;

/// Cancels the pending reads of one connection: on a timeout, or when the
/// other half of an exchange fails. One per connection, reused for every
/// read, so a read allocates nothing once warm.
#[derive(Default)]
pub struct Abort {
    /// Made at the first op it may cancel and dropped by `release`: a
    /// canceller is a shared set of op handles (about 200 bytes once an
    /// op has used it), which an idle connection need not hold.
    canceller: RefCell<Option<Canceller>>,
    aborted: Cell<bool>,
    /// A wait that is not a kernel op (an HTTP/2 stream's body or window)
    /// parks its waker here, so an abort reaches it as it reaches a read.
    waiter: RefCell<Option<Waker>>,
}

impl Abort {
    /// Fails the pending read, and every read after it until `reset`.
    pub fn abort(&self) {
        self.aborted.set(true);
        self.cancel_pending();
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Registers `waker` to be woken by the next `abort`.
    pub fn wake_on_abort(&self, waker: &Waker) {
        let mut slot = self.waiter.borrow_mut();
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    pub fn reset(&self) {
        self.aborted.set(false);
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    fn cancel_pending(&self) {
        let old = self.canceller.borrow_mut().take();
        if let Some(old) = old {
            *self.canceller.borrow_mut() = Some(old.cancel());
        }
    }

    /// A handle for the next op, which `abort` (or a timeout) cancels.
    fn handle(&self) -> CancelHandle {
        self.canceller
            .borrow_mut()
            .get_or_insert_with(Canceller::new)
            .handle()
    }

    /// Drops the canceller, to be made again by the next op; only when no
    /// op that it may have to cancel is in flight (a connection going
    /// idle).
    pub fn release(&self) {
        self.canceller.borrow_mut().take();
    }
}

/// Why a read did not return bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFail {
    TimedOut,
    Aborted,
    Io(io::ErrorKind),
}

/// Appends what the peer sends next to `buf`, first making room for at
/// least `min_spare` bytes; gives up after `timeout`. `Ok(0)` is end of
/// stream. The buffer moves into the kernel op and back (rent-style).
pub async fn read_more(
    r: &mut Reader,
    buf: &mut Vec<u8>,
    min_spare: usize,
    timeout: Duration,
    abort: &Abort,
) -> Result<usize, ReadFail> {
    reserve_spare(buf, min_spare);
    let (res, back) = read_append(r, std::mem::take(buf), timeout, abort).await;
    *buf = back;
    res
}

/// Reads into the spare capacity of `buf` (appending), giving up after
/// `timeout`.
async fn read_append(
    r: &mut Reader,
    buf: Vec<u8>,
    timeout: Duration,
    abort: &Abort,
) -> (Result<usize, ReadFail>, Vec<u8>) {
    if abort.is_aborted() {
        return (Err(ReadFail::Aborted), buf);
    }
    let start = buf.len();
    let end = buf.capacity();
    debug_assert!(end > start, "caller must reserve space before reading");
    let handle = abort.handle();
    let mut read = pin!(r.cancelable_read(buf.slice_mut(start..end), handle));
    let mut sleep = pin!(monoio::time::sleep(timeout));
    let mut timed_out = false;
    let (res, slice) = poll_fn(|cx| {
        if let Poll::Ready(out) = read.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if !timed_out && sleep.as_mut().poll(cx).is_ready() {
            // The read is still in the kernel: cancel it and wait for it to
            // hand the buffer back (it may still complete with data).
            timed_out = true;
            abort.cancel_pending();
            if let Poll::Ready(out) = read.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
        }
        Poll::Pending
    })
    .await;
    let buf = slice.into_inner();
    let res = match res {
        Ok(n) => Ok(n),
        // What a cancelled io_uring operation completes with.
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Err(if timed_out {
            ReadFail::TimedOut
        } else {
            ReadFail::Aborted
        }),
        Err(e) => Err(ReadFail::Io(e.kind())),
    };
    (res, buf)
}

/// The stream a connection's halves share, for a readiness op or a direct
/// system call on its descriptor.
fn shared_stream(half: &std::cell::UnsafeCell<TcpStream>) -> &TcpStream {
    // SAFETY: the halves share the stream through an `UnsafeCell`, and
    // monoio's own halves take a reference from it for every op they
    // start in the same way. The callers only use its fd (a readiness op
    // clones the fd handle into itself); nothing moves or replaces the
    // stream while a half of it lives, and this worker's thread is the
    // only one that touches it.
    unsafe { &*half.get() }
}

/// Waits until `r`'s socket has something to read (bytes, an end of
/// stream or an error) without lending it a buffer, so an idle connection
/// holds none; gives up once `deadline` has passed on its timer (which the
/// waits of one task share; `None`: only `abort` ends it, as the worker's
/// idle deadlines do), and `abort` ends the wait as it ends a read.
/// The wait is a readiness op (io_uring `POLL_ADD`, or the epoll driver's
/// readiness) that carries no buffer: dropping it on a timeout or an abort
/// leaves the kernel nothing to write into, and monoio's `async-cancel`
/// cancels it.
pub async fn wait_readable_by(
    r: &Reader,
    deadline: Option<(&Rc<IdleClock>, Instant)>,
    abort: &Abort,
) -> Result<(), ReadFail> {
    if abort.is_aborted() {
        return Err(ReadFail::Aborted);
    }
    let stream = shared_stream(&r.0);
    // Not relaxed: on the epoll driver, a readiness left over from bytes
    // already read is checked with poll(2) before it is believed.
    let mut ready = pin!(stream.readable(false));
    poll_fn(|cx| {
        if abort.is_aborted() {
            return Poll::Ready(Err(ReadFail::Aborted));
        }
        if let Poll::Ready(res) = ready.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|e| ReadFail::Io(e.kind())));
        }
        if let Some((clock, deadline)) = deadline {
            if clock.poll_deadline(deadline, cx).is_ready() {
                return Poll::Ready(Err(ReadFail::TimedOut));
            }
        }
        abort.wake_on_abort(cx.waker());
        Poll::Pending
    })
    .await
}

/// Makes room for at least `min_spare` more bytes, growing in steps.
fn reserve_spare(buf: &mut Vec<u8>, min_spare: usize) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare.max(buf.capacity()));
    }
}

/// Where a `Gather` segment points.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Source,
    Patch,
}

/// A writev of ranges of `source` (bytes as read from a peer) interleaved
/// with `patch` (the few bytes the proxy adds), so a head goes out as the
/// original bytes, not re-serialized.
///
/// Segments are kept as (part, range), never as addresses: `source` and
/// `patch` are public and may be changed or reallocated between `push` and
/// the write. The iovecs are built by [`send_gather`] from the buffers as
/// they are then, and handed to the kernel inside a [`Prepared`] that
/// nothing else can reach until the write completes.
#[derive(Default)]
pub struct Gather {
    pub source: Vec<u8>,
    pub patch: Vec<u8>,
    segments: Vec<(Part, Range<usize>)>,
    /// Scratch for the iovecs of one writev: reused, so a write allocates
    /// nothing once warm.
    iov: Vec<libc::iovec>,
}

impl Gather {
    pub fn with_capacity(source: usize) -> Self {
        Gather {
            source: Vec::with_capacity(source),
            patch: Vec::with_capacity(256),
            segments: Vec::with_capacity(16),
            iov: Vec::with_capacity(16),
        }
    }

    pub fn clear_segments(&mut self) {
        self.segments.clear();
        self.iov.clear();
    }

    /// Appends a segment: `range` of `part` as it is when the write starts.
    /// A range that runs past its buffer then fails the write.
    pub fn push(&mut self, part: Part, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        debug_assert!(
            range.end <= self.bytes(part).len(),
            "segment past its buffer"
        );
        if let Some((last_part, last)) = self.segments.last_mut() {
            if *last_part == part && last.end == range.start {
                last.end = range.end;
                return;
            }
        }
        self.segments.push((part, range));
    }

    fn bytes(&self, part: Part) -> &[u8] {
        match part {
            Part::Source => &self.source,
            Part::Patch => &self.patch,
        }
    }

    pub fn is_written(&self) -> bool {
        self.segments.is_empty()
    }

    /// Copies the first bytes of the segments, up to `max`, onto `out` and
    /// drops them from the segments: a write that must go through a copy
    /// (TLS encrypts) gathers one record's worth at a time.
    pub fn take_into(&mut self, out: &mut Vec<u8>, max: usize) {
        let mut taken = 0;
        for (part, range) in &self.segments {
            if taken == max {
                break;
            }
            let bytes = match part {
                Part::Source => &self.source,
                Part::Patch => &self.patch,
            };
            let n = range.len().min(max - taken);
            // A range past its buffer stops the copy here, as it fails a writev.
            let Some(piece) = bytes.get(range.start..range.start + n) else {
                break;
            };
            out.extend_from_slice(piece);
            taken += n;
        }
        self.advance(taken);
    }

    /// Drops the first `n` bytes of the segments (a partial write).
    fn advance(&mut self, mut n: usize) {
        let mut done = 0;
        for (_, range) in &mut self.segments {
            let len = range.len();
            if n < len {
                range.start += n;
                break;
            }
            n -= len;
            done += 1;
        }
        self.segments.drain(..done);
    }
}

/// A `Gather` whose iovecs point into its own buffers as they are now. Only
/// [`send_gather`] makes one, right before moving it into a write: while
/// the write runs the runtime owns it, so the buffers cannot move.
struct Prepared(Gather);

impl Prepared {
    /// Builds the iovecs of the remaining segments; fails on a segment that
    /// runs past its buffer instead of pointing outside it.
    fn new(mut g: Gather) -> Result<Prepared, Gather> {
        let mut iov = std::mem::take(&mut g.iov);
        iov.clear();
        for (part, range) in &g.segments {
            let Some(bytes) = g.bytes(*part).get(range.clone()) else {
                g.iov = iov;
                return Err(g);
            };
            iov.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        g.iov = iov;
        Ok(Prepared(g))
    }
}

// SAFETY: `Prepared::new` built every iovec from a live slice of `source`
// or `patch`, and a `Prepared` is only ever moved into one write and taken
// apart after it: nothing can change or reallocate the buffers in between,
// and moving the `Gather` does not move their heap storage. `iov` holds
// exactly `read_iovec_len` valid iovecs.
unsafe impl IoVecBuf for Prepared {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.0.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.0.iov.len()
    }
}

/// Why a write did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFail {
    /// No progress within the send timeout: the peer stopped reading.
    TimedOut,
    /// The other half of the exchange gave up.
    Aborted,
    Io(io::ErrorKind),
}

/// Runs one cancelable write op, cancelling it through `abort` when
/// `timeout` passes first; like reads, the op is awaited until the kernel
/// hands the buffer back.
async fn write_op<T, F>(op: F, timeout: Duration, abort: &Abort) -> (Result<usize, WriteFail>, T)
where
    F: Future<Output = monoio::BufResult<usize, T>>,
{
    let mut op = pin!(op);
    let mut sleep = pin!(monoio::time::sleep(timeout));
    let mut timed_out = false;
    let (res, buf) = poll_fn(|cx| {
        if let Poll::Ready(out) = op.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if !timed_out && sleep.as_mut().poll(cx).is_ready() {
            timed_out = true;
            abort.cancel_pending();
            if let Poll::Ready(out) = op.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
        }
        Poll::Pending
    })
    .await;
    let res = match res {
        Ok(0) => Err(WriteFail::Io(io::ErrorKind::WriteZero)),
        Ok(n) => Ok(n),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Err(if timed_out {
            WriteFail::TimedOut
        } else {
            WriteFail::Aborted
        }),
        Err(e) => Err(WriteFail::Io(e.kind())),
    };
    (res, buf)
}

/// Writes every segment of `g`; each writev must make progress within
/// `timeout` (nginx's `send_timeout`), and `abort` cancels it. The segments
/// are consumed (the buffers are left as they were).
pub async fn send_gather(
    w: &mut Writer,
    mut g: Gather,
    timeout: Duration,
    abort: &Abort,
) -> (Result<(), WriteFail>, Gather) {
    while !g.is_written() {
        if abort.is_aborted() {
            return (Err(WriteFail::Aborted), g);
        }
        let prepared = match Prepared::new(g) {
            Ok(p) => p,
            Err(back) => return (Err(WriteFail::Io(io::ErrorKind::InvalidInput)), back),
        };
        let handle = abort.handle();
        let (res, back) = write_op(w.cancelable_writev(prepared, handle), timeout, abort).await;
        g = back.0;
        match res {
            Ok(n) => g.advance(n),
            Err(WriteFail::Io(io::ErrorKind::Interrupted)) => {}
            Err(e) => return (Err(e), g),
        }
    }
    g.iov.clear();
    (Ok(()), g)
}

/// Writes `buf[range]` completely under the same deadline rule as
/// [`send_gather`], and hands `buf` back (an owned `Vec` or static bytes).
pub async fn send_range<B: IoBuf>(
    w: &mut Writer,
    mut buf: B,
    range: Range<usize>,
    timeout: Duration,
    abort: &Abort,
) -> (Result<(), WriteFail>, B) {
    let mut at = range.start;
    while at < range.end {
        if abort.is_aborted() {
            return (Err(WriteFail::Aborted), buf);
        }
        let handle = abort.handle();
        let op = w.cancelable_write(buf.slice(at..range.end), handle);
        let (res, slice) = write_op(op, timeout, abort).await;
        buf = slice.into_inner();
        match res {
            Ok(n) => at += n,
            Err(WriteFail::Io(io::ErrorKind::Interrupted)) => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// What an idle connection holds, without consuming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingInput {
    /// Nothing to read: clean.
    Nothing,
    /// Bytes nobody asked for: the peer is out of sync.
    Bytes,
    /// EOF or an error (a reset): the peer closed it.
    Closed,
}

/// Is anything waiting to be read on `fd`, or has the peer closed it? A
/// pooled upstream connection is clean only when neither: bytes nobody
/// asked for, or an EOF, mean it must not carry another request.
pub fn pending_input(fd: std::os::fd::RawFd) -> PendingInput {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of
    // the call; the buffer is one valid, writable byte.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        1.. => PendingInput::Bytes,
        0 => PendingInput::Closed,
        _ => match io::Error::last_os_error().kind() {
            // EAGAIN: nothing there, the connection is clean.
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => PendingInput::Nothing,
            // Any other error (a reset) makes it unusable too.
            _ => PendingInput::Closed,
        },
    }
}

/// Waits up to `timeout` for `r` to be readable, then drops what is
/// waiting on it without copying it anywhere (`recv` with `MSG_TRUNC`, which
/// discards TCP data): a lingering close holds no buffer. `Ok(false)` at
/// the end of the stream; `Ok(true)` when bytes were dropped or none were
/// there after all.
pub async fn discard_waiting(
    r: &Reader,
    timeout: Duration,
    abort: &Abort,
) -> Result<bool, ReadFail> {
    match monoio::time::timeout(timeout, wait_readable_by(r, None, abort)).await {
        // The readiness op holds no buffer: dropping it on timeout is safe
        // (monoio cancels it).
        Err(_) => return Err(ReadFail::TimedOut),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(shared_stream(&r.0));
    // SAFETY: with MSG_TRUNC a TCP socket discards the bytes instead of
    // copying them, so no buffer is written (a null one would fail with
    // EFAULT, not overflow, were the flag ignored).
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            DISCARD_BYTES,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Ok(false),
        1.. => Ok(true),
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(true),
            kind => Err(ReadFail::Io(kind)),
        },
    }
}

/// What was already waiting behind a short read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// Nothing yet (or a failure, which the next read reports).
    Nothing,
    /// This many more bytes, appended.
    More(usize),
    /// The end of the stream: the peer's FIN came with the bytes.
    End,
}

/// Appends what is already waiting on `r` into `buf`'s spare room, never
/// blocking (`recv` with `MSG_DONTWAIT`).
pub fn read_waiting(r: &Reader, buf: &mut Vec<u8>) -> Behind {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() {
        return Behind::Nothing;
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(shared_stream(&r.0));
    // SAFETY: the kernel writes at most `spare.len()` bytes into the spare
    // room, which `set_len` then covers exactly.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match usize::try_from(n) {
        Ok(0) => Behind::End,
        Ok(n) => {
            // SAFETY: the kernel initialised these `n` bytes.
            unsafe { buf.set_len(buf.len() + n) };
            Behind::More(n)
        }
        Err(_) => Behind::Nothing,
    }
}

/// Sends what of `buf` the socket takes now, never blocking, held back
/// (`MSG_MORE`) for the half-close or close that the caller makes next:
/// the kernel puts the FIN on the same segment as the bytes, so the peer
/// sees one segment, not the bytes, its ACK, then the FIN. Returns how many
/// bytes were taken (0 on any failure: the caller's ordinary send follows
/// and reports it).
pub fn send_before_end(w: &Writer, buf: &[u8]) -> usize {
    let fd = std::os::fd::AsRawFd::as_raw_fd(shared_stream(&w.0));
    // SAFETY: the kernel reads at most `buf.len()` bytes of `buf`.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_MORE | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// At most this much is dropped per readiness of a lingering connection.
const DISCARD_BYTES: usize = 1 << 20;

/// Copies up to `max` bytes of what is waiting on `fd` into `buf` without
/// taking it off the socket (`MSG_PEEK`), never blocking: `Ok(0)` is end of
/// stream, `WouldBlock` means nothing is there yet. For a prelude (the
/// PROXY header) that must be taken off the socket exactly, leaving the
/// bytes after it for whoever reads the connection next.
pub fn peek_now(fd: std::os::fd::RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.clear();
    buf.reserve(max);
    recv_into_spare_max(fd, buf, max, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Takes exactly `n` bytes off `fd` into `buf`, never blocking; `n` bytes
/// must already be waiting (a peek saw them). Anything less is an error.
pub fn take_now(fd: std::os::fd::RawFd, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    buf.clear();
    buf.reserve(n);
    if recv_into_spare_max(fd, buf, n, libc::MSG_DONTWAIT)? == n {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// One `recv(2)` of at most `max` bytes (within `buf`'s capacity) into
/// `buf`, which must be empty; sets its length to what arrived.
fn recv_into_spare_max(
    fd: std::os::fd::RawFd,
    buf: &mut Vec<u8>,
    max: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    debug_assert!(buf.is_empty() && max <= buf.capacity());
    // SAFETY: `fd` is an open socket owned by the caller for the duration
    // of the call; the pointer and `max` describe `buf`'s allocated,
    // writable capacity, of which the kernel writes at most `max` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), max, flags) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n <= max <= capacity` bytes.
    unsafe { buf.set_len(n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::Splitable;
    use std::io::Read as _;

    /// Runs `body` on a runtime of each driver this machine has: a writev
    /// on io_uring reads the iovecs when the kernel takes the op, on epoll
    /// at once.
    fn on_each_driver<F: Future<Output = ()>>(body: impl Fn() -> F) {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("legacy runtime")
            .block_on(body());
        if monoio::utils::detect_uring() {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .expect("io_uring runtime")
                .block_on(body());
        }
    }

    /// Writes `g` to a loopback peer, closes, and returns what the peer read
    /// (it reads slowly, so a large write goes out in several parts).
    async fn send(g: Gather) -> (io::Result<()>, Vec<u8>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (_r, mut w) = stream.into_split();
        let (res, _g) = send_gather(&mut w, g, Duration::from_secs(10), &Abort::default()).await;
        drop((_r, w));
        (
            res.map_err(|e| io::Error::other(format!("{e:?}"))),
            peer.join().expect("peer"),
        )
    }

    #[test]
    fn segments_name_ranges_so_buffers_replaced_after_push_are_what_goes_out() {
        on_each_driver(|| async {
            let mut g = Gather::with_capacity(16);
            g.source.extend_from_slice(b"hello world");
            g.patch.extend_from_slice(b"!!");
            g.push(Part::Source, 0..5);
            g.push(Part::Patch, 0..2);
            // Safe code may move either buffer between push and the write.
            g.source = b"HELLO WORLD".to_vec();
            g.patch.reserve(1 << 20);
            let (res, got) = send(g).await;
            res.expect("write");
            assert_eq!(got, b"HELLO!!");
        });
    }

    #[test]
    fn a_gather_larger_than_the_socket_buffers_goes_out_whole_and_in_order() {
        on_each_driver(|| async {
            let mut g = Gather::with_capacity(16);
            g.source = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
            g.patch.extend_from_slice(b"--patch--");
            let mut want = Vec::new();
            for (part, range) in [
                (Part::Patch, 0..2),
                (Part::Source, 0..3 << 20),
                (Part::Patch, 2..9),
                (Part::Source, 3 << 20..8 << 20),
            ] {
                want.extend_from_slice(match part {
                    Part::Source => &g.source[range.clone()],
                    Part::Patch => &g.patch[range.clone()],
                });
                g.push(part, range);
            }
            let (res, got) = send(g).await;
            res.expect("write");
            assert!(got == want, "{} bytes, want {}", got.len(), want.len());
        });
    }
}
