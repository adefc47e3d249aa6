//! A worker's view of one upstream: its backends, the round-robin cursor and
//! a bounded keep-alive pool per backend. Owned by one worker, never shared:
//! `RefCell` borrows here never live across an `.await`.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringgate_config::Upstream;
use ringgate_core::balance::RoundRobin;

use crate::io::{Reader, Writer};

/// An upstream connection, split so an exchange can send a request body and
/// read the response at the same time.
pub struct UpstreamConn {
    pub r: Reader,
    pub w: Writer,
    pub backend: usize,
    /// Came from the pool: the backend may have closed it meanwhile.
    pub reused: bool,
}

struct Idle {
    r: Reader,
    w: Writer,
    since: Instant,
}

pub struct UpstreamState {
    pub config: Upstream,
    cursor: RefCell<RoundRobin>,
    pools: Vec<RefCell<Vec<Idle>>>,
}

#[derive(Debug)]
pub enum ConnectError {
    TimedOut,
    Failed,
}

impl UpstreamState {
    pub fn new(config: Upstream, worker_id: usize) -> Self {
        let pools = config
            .backends
            .iter()
            .map(|_| RefCell::new(Vec::new()))
            .collect();
        UpstreamState {
            // Workers start at different backends so that N workers do not
            // send their first N requests to the same one.
            cursor: RefCell::new(RoundRobin::starting_at(worker_id)),
            pools,
            config,
        }
    }

    pub fn pick(&self) -> Option<usize> {
        self.cursor.borrow_mut().pick(self.config.backends.len())
    }

    pub fn backend_addr(&self, backend: usize) -> SocketAddr {
        self.config.backends[backend].address
    }

    /// A pooled connection if a fresh enough one is idle (and `fresh` is not
    /// asked), else a new one.
    pub async fn checkout(
        &self,
        backend: usize,
        fresh: bool,
    ) -> Result<UpstreamConn, ConnectError> {
        if !fresh {
            let mut pool = self.pools[backend].borrow_mut();
            while let Some(idle) = pool.pop() {
                if idle.since.elapsed() < self.config.idle_timeout {
                    return Ok(UpstreamConn {
                        r: idle.r,
                        w: idle.w,
                        backend,
                        reused: true,
                    });
                }
            }
        }
        let stream = connect(self.backend_addr(backend), self.config.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Ok(UpstreamConn {
            r,
            w,
            backend,
            reused: false,
        })
    }

    /// Returns a connection after a complete exchange that left it reusable.
    pub fn checkin(&self, conn: UpstreamConn) {
        let mut pool = self.pools[conn.backend].borrow_mut();
        if pool.len() < self.config.max_idle_per_backend {
            pool.push(Idle {
                r: conn.r,
                w: conn.w,
                since: Instant::now(),
            });
        }
    }
}

/// TCP connect with a timeout. A connect op holds no buffer of ours, so on
/// timeout it is dropped: monoio then submits an async cancel for it.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let mut connecting = pin!(TcpStream::connect_addr(addr));
    let mut sleep = pin!(monoio::time::sleep(timeout));
    poll_fn(|cx| {
        if let Poll::Ready(res) = connecting.as_mut().poll(cx) {
            return Poll::Ready(res.map_err(|_| ConnectError::Failed));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(ConnectError::TimedOut));
        }
        Poll::Pending
    })
    .await
}
