//! I/O primitives on monoio's rent-style API: reads that time out by
//! cancelling the io_uring operation (never by dropping it, so the buffer
//! comes back), an abort switch one half of an exchange can pull on the other,
//! and `Gather`, a writev over slices of an owned buffer plus a patch.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::ops::Range;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf};
use monoio::io::{
    CancelableAsyncReadRent, CancelableAsyncWriteRent, Canceller, OwnedReadHalf, OwnedWriteHalf,
};
use monoio::net::TcpStream;

pub type Reader = OwnedReadHalf<TcpStream>;
pub type Writer = OwnedWriteHalf<TcpStream>;

/// ECANCELED: what a cancelled io_uring operation completes with.
const ECANCELED: i32 = 125;

/// Cancels the pending reads of one connection: on a timeout, or when the
/// other half of an exchange fails. One per connection, reused for every
/// read, so a read allocates nothing once warm.
#[derive(Default)]
pub struct Abort {
    canceller: RefCell<Canceller>,
    aborted: Cell<bool>,
}

impl Abort {
    /// Fails the pending read, and every read after it until `reset`.
    pub fn abort(&self) {
        self.aborted.set(true);
        self.cancel_pending();
    }

    pub fn reset(&self) {
        self.aborted.set(false);
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.get()
    }

    fn cancel_pending(&self) {
        let old = std::mem::take(&mut *self.canceller.borrow_mut());
        *self.canceller.borrow_mut() = old.cancel();
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
    let handle = abort.canceller.borrow().handle();
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
        Err(e) if e.raw_os_error() == Some(ECANCELED) => Err(if timed_out {
            ReadFail::TimedOut
        } else {
            ReadFail::Aborted
        }),
        Err(e) => Err(ReadFail::Io(e.kind())),
    };
    (res, buf)
}

/// Makes room for at least `min_spare` more bytes, growing in steps.
fn reserve_spare(buf: &mut Vec<u8>, min_spare: usize) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare.max(buf.capacity()));
    }
}

/// Where a `Gather` segment points.
#[derive(Clone, Copy)]
pub enum Part {
    Source,
    Patch,
}

/// A writev of ranges of `source` (bytes as read from a peer) interleaved
/// with `patch` (the few bytes the proxy adds), so a head goes out as the
/// original bytes, not re-serialized.
#[derive(Default)]
pub struct Gather {
    pub source: Vec<u8>,
    pub patch: Vec<u8>,
    iov: Vec<libc::iovec>,
    first: usize,
}

impl Gather {
    pub fn with_capacity(source: usize) -> Self {
        Gather {
            source: Vec::with_capacity(source),
            patch: Vec::with_capacity(256),
            iov: Vec::with_capacity(16),
            first: 0,
        }
    }

    pub fn clear_segments(&mut self) {
        self.iov.clear();
        self.first = 0;
    }

    /// Appends a segment. The buffers must not change until the write is done
    /// and `clear_segments` is called: the segments point into them.
    pub fn push(&mut self, part: Part, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let bytes = match part {
            Part::Source => &self.source[range],
            Part::Patch => &self.patch[range],
        };
        if let Some(last) = self.iov.last_mut() {
            if last.iov_base as usize + last.iov_len == bytes.as_ptr() as usize {
                last.iov_len += bytes.len();
                return;
            }
        }
        self.iov.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.first < self.iov.len() {
            let v = &mut self.iov[self.first];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.first += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }
}

// SAFETY: every iovec points into `source` or `patch`, whose heap storage does
// not move or change while the runtime owns the Gather (nothing can touch it
// then), and `first..len` are valid iovecs.
unsafe impl IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.first..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.first
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
/// `timeout` (nginx's `send_timeout`), and `abort` cancels it.
pub async fn send_gather(
    w: &mut Writer,
    mut g: Gather,
    timeout: Duration,
    abort: &Abort,
) -> (Result<(), WriteFail>, Gather) {
    while g.first < g.iov.len() {
        if abort.is_aborted() {
            return (Err(WriteFail::Aborted), g);
        }
        let handle = abort.canceller.borrow().handle();
        let (res, back) = write_op(w.cancelable_writev(g, handle), timeout, abort).await;
        g = back;
        match res {
            Ok(n) => g.advance(n),
            Err(WriteFail::Io(io::ErrorKind::Interrupted)) => {}
            Err(e) => return (Err(e), g),
        }
    }
    (Ok(()), g)
}

/// Writes `buf[range]` completely under the same deadline rule as
/// [`send_gather`], and hands `buf` back.
pub async fn send_range(
    w: &mut Writer,
    mut buf: Vec<u8>,
    range: Range<usize>,
    timeout: Duration,
    abort: &Abort,
) -> (Result<(), WriteFail>, Vec<u8>) {
    let mut at = range.start;
    while at < range.end {
        if abort.is_aborted() {
            return (Err(WriteFail::Aborted), buf);
        }
        let handle = abort.canceller.borrow().handle();
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

/// Writes a static response in full under the same deadline rule as
/// [`send_gather`].
pub async fn send_static(
    w: &mut Writer,
    bytes: &'static [u8],
    timeout: Duration,
    abort: &Abort,
) -> Result<(), WriteFail> {
    let mut at = 0;
    while at < bytes.len() {
        if abort.is_aborted() {
            return Err(WriteFail::Aborted);
        }
        let handle = abort.canceller.borrow().handle();
        let (res, _) = write_op(w.cancelable_write(&bytes[at..], handle), timeout, abort).await;
        match res {
            Ok(n) => at += n,
            Err(WriteFail::Io(io::ErrorKind::Interrupted)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
