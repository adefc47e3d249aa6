//! The end of a draining worker's accepts: taking the clients its
//! cancelled accept owed.
//!
//! Generations share each listening socket (a reload hands the next
//! generation duplicates of the same sockets), and an io_uring accept
//! waits on its socket exclusively: a client's arrival wakes one waiting
//! accept only. When the client arrives as the drain cancels this worker's
//! accept, the wake-up is this worker's, and the cancel ends it: the next
//! generation's accept sleeps on with the client queued until someone else
//! connects, so a lone client waits out its own timeout. So after the
//! cancel, the draining worker takes what is queued itself, until it sees
//! the queue empty; a client arriving after that wakes the next
//! generation's accept, the only one left waiting.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};

/// How long an accept for a client seen queued may wait: another worker
/// sharing the socket may take the client first, and then this accept
/// would wait for the next one.
const QUEUED_ACCEPT_WAIT: Duration = Duration::from_millis(5);

/// At most this many tries for one queued client: each accept the wait
/// above cancelled may itself have taken a newcomer's wake-up, but under a
/// stream of newcomers the next one wakes the next generation anyway.
const QUEUED_ACCEPT_TRIES: u32 = 16;

/// The next client queued on `listener`, for a worker whose accepts the
/// drain cancelled; `None` once the queue is seen empty (or the tries
/// ran out). Serve what it returns and call again.
pub(crate) async fn take_queued(
    listener: &TcpListener,
) -> Option<io::Result<(TcpStream, SocketAddr)>> {
    for _ in 0..QUEUED_ACCEPT_TRIES {
        if !readable_now(listener) {
            return None;
        }
        let canceller = Canceller::new();
        let handle = canceller.handle();
        // The accept is cancelled, not dropped: a dropped accept that had
        // completed would leak its client's descriptor.
        monoio::spawn(async move {
            monoio::time::sleep(QUEUED_ACCEPT_WAIT).await;
            canceller.cancel();
        });
        match listener.cancelable_accept(handle).await {
            Ok(accepted) => return Some(Ok(accepted)),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => continue,
            Err(e) => return Some(Err(e)),
        }
    }
    None
}

/// Whether a client is queued on the listener, without waiting.
fn readable_now(listener: &TcpListener) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, owned here, and a zero timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::Read;
    use std::sync::mpsc;
    use std::task::{Context, Poll, Waker};
    use std::time::Instant;

    use monoio::io::AsyncWriteRentExt;
    use monoio::{IoUringDriver, RuntimeBuilder};

    use crate::worker::RingFlags;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>> {
        let flags = RingFlags::PREFERENCE
            .iter()
            .copied()
            .find(|f| f.supported())
            .expect("an io_uring set-up this kernel accepts");
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(64)
            .uring_builder(flags.builder())
            .enable_timer()
            .build()
            .expect("io_uring runtime")
    }

    /// Answers whoever it accepts, so the client sees which worker took it.
    async fn answer(stream: TcpStream, who: &'static [u8]) {
        let mut stream = stream;
        let _ = stream.write_all(who).await;
    }

    /// The old worker's accept waits first, so a newcomer's wake-up is
    /// its; its thread is busy (not in the ring) when the client arrives,
    /// so the wake-up is still pending when the drain cancels the accept.
    /// The next generation's accept, on a duplicate of the socket, waits
    /// behind it.
    #[test]
    fn a_client_whose_wake_up_a_cancelled_accept_took_is_still_taken() {
        if !monoio::utils::detect_uring() {
            return;
        }
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        let next_socket = std_listener.try_clone().expect("dup");
        let (armed_tx, armed_rx) = mpsc::channel();
        let (arrived_tx, arrived_rx) = mpsc::channel::<()>();

        let old = {
            let armed_tx = armed_tx.clone();
            std::thread::spawn(move || {
                runtime().block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let canceller = Canceller::new();
                    let accept = listener.cancelable_accept(canceller.handle());
                    let mut accept = std::pin::pin!(accept);
                    // Poll once so the accept is submitted, then let the
                    // ring take it (arm its wait) before saying so.
                    let mut cx = Context::from_waker(Waker::noop());
                    assert!(accept.as_mut().poll(&mut cx).is_pending());
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    armed_tx.send("old").expect("armed");
                    // Busy, outside the ring, while the client arrives.
                    arrived_rx.recv().expect("arrived");
                    canceller.cancel();
                    match accept.await {
                        Ok((stream, _)) => answer(stream, b"old-accept").await,
                        Err(e) => {
                            assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
                            while let Some(taken) = take_queued(&listener).await {
                                answer(taken.expect("queued client").0, b"old-queued").await;
                            }
                        }
                    }
                })
            })
        };
        assert_eq!(armed_rx.recv().expect("old armed"), "old");

        let next = std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = TcpListener::from_std(next_socket).expect("listener");
                let canceller = Canceller::new();
                let handle = canceller.handle();
                // Only if the test fails before its second client.
                monoio::spawn(async move {
                    monoio::time::sleep(Duration::from_secs(5)).await;
                    canceller.cancel();
                });
                let accept = listener.cancelable_accept(handle);
                let mut accept = std::pin::pin!(accept);
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(r) = accept.as_mut().poll(&mut cx) {
                    panic!(
                        "nothing queued yet, but the accept gave {:?}",
                        r.map(|_| ())
                    );
                }
                monoio::time::sleep(Duration::from_millis(20)).await;
                armed_tx.send("next").expect("armed");
                if let Ok((stream, _)) = accept.await {
                    answer(stream, b"next").await;
                }
            })
        });
        assert_eq!(armed_rx.recv().expect("next armed"), "next");

        let who_answers = |client: &mut std::net::TcpStream| {
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let started = Instant::now();
            let mut who = Vec::new();
            client
                .read_to_end(&mut who)
                .map(|_| String::from_utf8_lossy(&who).into_owned())
                .map_err(|e| format!("{e} after {:?}", started.elapsed()))
        };
        let mut first = std::net::TcpStream::connect(addr).expect("connect");
        // Give the kernel's wake-up time to land before the cancel.
        std::thread::sleep(Duration::from_millis(20));
        arrived_tx.send(()).expect("old worker");
        let first_answer = who_answers(&mut first);
        old.join().expect("old worker");
        // The old worker is gone; the next generation takes what comes.
        let mut second = std::net::TcpStream::connect(addr).expect("connect");
        let second_answer = who_answers(&mut second);
        next.join().expect("next worker");
        // With the wake-up deferred to the ring (the default set-up) the
        // cancel ends the accept and the queue is swept ("old-queued");
        // a ring that runs it at once completes the accept instead.
        assert!(
            matches!(first_answer.as_deref(), Ok("old-queued" | "old-accept")),
            "the client whose wake-up the cancelled accept took: {first_answer:?}"
        );
        assert_eq!(second_answer.as_deref(), Ok("next"));
    }
}
