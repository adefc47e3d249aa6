//! What one worker owns, built on the worker's own thread: its routers,
//! upstream states, token buckets, counters, access log and its table of
//! client connections. The connection loop, the health probes, the gossip
//! round and the ticker read it; the worker module (start-up, accept loop)
//! builds it. No I/O and no tasks here, so nothing here depends on the
//! modules that use it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::io::Canceller;
use ringgate_config::Config;
use ringgate_core::chunked::ChunkLimits;
use ringgate_core::http::HeadLimits;
use ringgate_core::ratelimit::KeyedLimiter;
use ringgate_core::router::{RouteSpec, Router};
use slab::Slab;

use crate::access_log::AccessLog;
use crate::error_log::{ErrorLog, Kind};
use crate::exchange::{Buffers, RequestState};
use crate::io::Abort;
use crate::metrics::{BackendSnapshot, Counters, Snapshot};
use crate::request_id::RequestIds;
use crate::schema::Schemas;
use crate::upstream::UpstreamState;

/// What a worker may do to one of its client connections from outside.
#[derive(Default)]
pub struct ConnControl {
    /// Cancels the connection's pending client read.
    pub abort: Abort,
    /// Waiting for a next request on a kept-alive connection, nothing of it
    /// read yet: a drain closes such a connection at once.
    pub idle: Cell<bool>,
    /// The worker's idle ticket taken when it began waiting: the idle
    /// connection with the smallest has waited longest.
    pub idle_ticket: Cell<u64>,
    /// Idle for less than the buffer grace: a busy keep-alive client is
    /// probably sending its next request right now, so a drain lets that
    /// request in (its response says close) instead of cutting it.
    pub just_idle: Cell<bool>,
    /// An HTTP/2 connection: a drain reaches it even with streams open, so
    /// it says GOAWAY at once and lets them finish.
    pub http2: Cell<bool>,
    /// Its client's last request came later than the buffer grace after
    /// the response before: the next response skips the grace read and
    /// waits for readiness at once (a sparse client is not kept warm for
    /// requests that do not come).
    pub sparse: Cell<bool>,
    /// Its keep-alive deadline while idle past the buffer grace.
    pub idle_mark: crate::idle::IdleMark,
}

impl crate::idle::IdleWaiter for ConnControl {
    fn mark(&self) -> &crate::idle::IdleMark {
        &self.idle_mark
    }

    /// Past its keep-alive deadline: the connection closes.
    fn expire(&self) {
        self.abort.abort();
    }
}

/// Everything one worker owns. Built on the worker's own thread.
pub struct Worker {
    pub id: usize,
    pub config: Arc<Config>,
    pub head_limits: HeadLimits,
    pub chunk_limits: ChunkLimits,
    /// One router per listener, indexed like `config.listeners`.
    pub routers: Vec<Router>,
    /// Indexed like `config.upstreams`.
    pub upstreams: Vec<UpstreamState>,
    /// Token buckets of rate-limited routes, indexed like `config.routes`.
    pub limiters: Vec<Option<RefCell<KeyedLimiter>>>,
    /// Health transitions this worker's probes found since the last tick:
    /// (upstream, slot, slot epoch, healthy).
    pub pending_health: RefCell<Vec<(u32, u32, u32, bool)>>,
    pub workers: usize,
    pub(crate) connections: Cell<usize>,
    /// Of them, each listener's (indexed like `config.listeners`), for its
    /// `max_connections_per_worker`.
    pub(crate) listener_connections: Vec<Cell<usize>>,
    pub(crate) over_limit_logged: Cell<bool>,
    /// Next idle ticket (see `ConnControl::idle_ticket`).
    pub(crate) idle_tickets: Cell<u64>,
    /// No new connections, no new requests on kept-alive ones.
    pub draining: Cell<bool>,
    /// Cancels the accept loops' pending accepts when the drain starts.
    pub(crate) accept_canceller: RefCell<Canceller>,
    /// The keep-alive deadlines of the connections idle past the grace.
    pub idle_deadlines: Rc<crate::idle::IdleDeadlines>,
    /// Every open client connection, to close the idle ones on drain.
    pub(crate) conns: RefCell<Slab<Rc<ConnControl>>>,
    pub access_log: Option<AccessLog>,
    pub error_log: Rc<ErrorLog>,
    pub counters: Counters,
    /// Buffers of the connections that are not in an exchange.
    pub buffers: BufferPool,
    /// Request states of the connections that are not serving a request,
    /// lent with the buffers.
    pub request_states: Pool<Box<RequestState>>,
    /// Relay buffers of the tunnels that are not moving bytes.
    pub relay_buffers: Pool<Vec<u8>>,
    /// The config generation this worker runs.
    pub generation: u64,
    /// This worker's TLS configuration of each listener (`None`: plain),
    /// indexed like `config.listeners`.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    pub request_ids: RequestIds,
    /// Each route's compiled `body_schema`, shared with the other workers
    /// (read-only).
    pub schemas: Arc<Schemas>,
    /// Each route's authentication on this worker (`None`: open), indexed
    /// like `config.routes`.
    pub auth: Vec<Option<crate::auth::RouteGuard>>,
    /// Whether the node's fleet syncer reaches Redis (`None`: no route is
    /// fleet-scoped).
    pub fleet_status: Option<Arc<crate::fleet::FleetStatus>>,
    /// This worker's fleet-scoped limiters use their fallback.
    pub fleet_fallback_on: Cell<bool>,
    /// Address sets from the resolver thread (`None`: no DNS backends),
    /// applied by the ticker.
    pub dns_rx: Option<crate::dns::UpdateRx>,
    /// The resolver's counters; worker 0 reports them.
    pub dns_status: Option<Arc<crate::dns::DnsStatus>>,
    /// The other nodes' consumption the syncer learned, for the next gossip
    /// message to the other workers: (route, key, tokens).
    pub fleet_news: RefCell<Vec<(u32, Vec<u8>, u32)>>,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        workers: usize,
        config: Arc<Config>,
        log_file: Option<std::fs::File>,
        error_log: Rc<ErrorLog>,
        generation: u64,
    ) -> Self {
        // Router targets are route indices: a route carries its own limits.
        let routers = (0..config.listeners.len())
            .map(|listener| {
                Router::new(
                    config
                        .routes
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.listener == listener)
                        .map(|(index, r)| RouteSpec {
                            host: r.host.clone(),
                            path_prefix: r.path_prefix.clone(),
                            methods: r.methods.clone(),
                            headers: r.headers.clone(),
                            target: index,
                        })
                        .collect(),
                )
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| UpstreamState::new(u.clone(), &config.http2, id, workers, error_log.clone()))
            .collect();
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                r.rate_limit.as_ref().map(|limit| {
                    let limiter = KeyedLimiter::new(
                        limit.rate_per_sec(),
                        f64::from(limit.burst),
                        config.server.rate_limit_max_keys,
                    );
                    // Worker 0 syncs the node's consumption with the fleet.
                    RefCell::new(if limit.fleet.is_some() && id == 0 {
                        limiter.track_node_usage()
                    } else {
                        limiter
                    })
                })
            })
            .collect();
        let limits = &config.limits;
        Worker {
            id,
            head_limits: HeadLimits {
                max_head_bytes: limits.max_head_bytes,
                max_headers: limits.max_headers,
            },
            chunk_limits: ChunkLimits {
                max_line_bytes: limits.max_chunk_line_bytes,
                // A trailer section is a head; the same bound applies.
                max_trailer_bytes: limits.max_head_bytes,
            },
            routers,
            upstreams,
            limiters,
            pending_health: RefCell::new(Vec::new()),
            workers,
            connections: Cell::new(0),
            listener_connections: config.listeners.iter().map(|_| Cell::new(0)).collect(),
            over_limit_logged: Cell::new(false),
            idle_tickets: Cell::new(0),
            draining: Cell::new(false),
            accept_canceller: RefCell::new(Canceller::new()),
            idle_deadlines: Rc::default(),
            conns: RefCell::new(Slab::new()),
            access_log: log_file
                .zip(config.access_log.as_ref())
                .map(|(file, log)| AccessLog::new(file, log.buffer)),
            error_log,
            counters: Counters::default(),
            buffers: Pool::new(BUFFER_POOL_SPARE),
            request_states: Pool::new(BUFFER_POOL_SPARE),
            relay_buffers: Pool::new(RELAY_POOL_SPARE),
            generation,
            tls: vec![None; config.listeners.len()],
            request_ids: RequestIds::new(id),
            schemas: Arc::default(),
            auth: Vec::new(),
            fleet_status: None,
            fleet_fallback_on: Cell::new(false),
            dns_rx: None,
            dns_status: None,
            fleet_news: RefCell::new(Vec::new()),
            config,
        }
    }

    /// Writes the access log's buffered lines; a write that begins to fail
    /// is said in the error log.
    pub fn flush_access_log(&self) {
        if let Some(e) = self.access_log.as_ref().and_then(AccessLog::flush) {
            self.access_log_failed(&e);
        }
    }

    pub fn access_log_failed(&self, e: &std::io::Error) {
        self.error_log
            .event(ringgate_config::LogLevel::Error, Kind::AccessLog, |b| {
                use std::io::Write as _;
                let _ = write!(b, "write failed ({e}); dropping lines until it works again");
            });
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.get()
    }

    /// A number that orders connections by when they began to wait for a
    /// next request: a counter, not a clock read per request.
    pub fn idle_ticket(&self) -> u64 {
        let ticket = self.idle_tickets.get();
        self.idle_tickets.set(ticket + 1);
        ticket
    }

    /// Closes the keep-alive connection that has waited longest for a next
    /// request, as nginx reuses its idle connections when it runs out.
    /// Returns false when no connection is idle. A scan of the table: it
    /// runs only when the worker is full or out of descriptors.
    pub(crate) fn close_longest_idle(&self) -> bool {
        let conns = self.conns.borrow();
        let Some(conn) = conns
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.idle.get())
            .min_by_key(|c| c.idle_ticket.get())
        else {
            return false;
        };
        // Not idle any more as far as the next caller is concerned: it is
        // closing, and leaves the table within a turn of the loop.
        conn.idle.set(false);
        conn.abort.abort();
        true
    }

    /// Starts this worker's drain (once). The ticker calls it when
    /// the process was asked to stop, so a stop is noticed within one
    /// `gossip_interval`.
    pub fn begin_drain(&self) {
        if self.draining.get() {
            return;
        }
        self.draining.set(true);
        // The accept loops wake up, see `draining` and drop their listeners.
        let accepts = std::mem::take(&mut *self.accept_canceller.borrow_mut());
        *self.accept_canceller.borrow_mut() = accepts.cancel();
        for (_, conn) in self.conns.borrow().iter() {
            if (conn.idle.get() && !conn.just_idle.get()) || conn.http2.get() {
                conn.abort.abort();
            }
        }
    }

    /// This worker's counters and backend views, as the admin thread sums them.
    pub fn snapshot(&self, gossip_dropped: u64) -> Snapshot {
        let worker = self;
        let now = Instant::now();
        let mut s = Snapshot::new(worker.id, &worker.counters);
        s.generation = worker.generation;
        s.open = worker.open_connections() as u64;
        s.gossip_dropped = gossip_dropped;
        if self.id == 0 {
            s.fleet_reachable = self.fleet_status.as_ref().map(|f| f.reachable());
            s.dns = self
                .dns_status
                .as_ref()
                .map_or_else(Vec::new, |d| d.counts());
        }
        s.draining = worker.draining.get();
        for upstream in &worker.upstreams {
            let view = upstream.view.borrow();
            for b in 0..view.len() {
                // An empty slot (a DNS name's) is no backend.
                let Some(addr) = upstream.slot_addr(b) else {
                    continue;
                };
                s.backends.push(BackendSnapshot {
                    upstream: upstream.config.name.clone(),
                    backend: addr,
                    present: true,
                    healthy: view.is_healthy(b),
                    ejected: view.is_ejected(b, now),
                    in_flight: view.in_flight(b),
                    connections: upstream.open_connections(b),
                    outcomes: std::array::from_fn(|i| upstream.outcomes[b][i].get()),
                });
            }
            // Backends DNS took away: their counters, no gauges.
            for (addr, outcomes) in upstream.retired.borrow().iter() {
                s.backends.push(BackendSnapshot {
                    upstream: upstream.config.name.clone(),
                    backend: *addr,
                    present: false,
                    healthy: true,
                    ejected: false,
                    in_flight: 0,
                    connections: 0,
                    outcomes: *outcomes,
                });
            }
        }
        s
    }
}

/// What a [`Pool`] lends: made when the pool has none spare, and emptied
/// and put back to its normal size when it comes back.
pub trait Pooled {
    fn fresh() -> Self;
    /// `false`: not worth keeping (it is dropped instead).
    fn recycle(&mut self) -> bool;
}

/// A connection's request state, lent with its buffers. Boxed, as they
/// are: a connection holds it as one pointer.
impl Pooled for Box<RequestState> {
    fn fresh() -> Self {
        Box::default()
    }

    /// Each request sets what it uses of it.
    fn recycle(&mut self) -> bool {
        true
    }
}

/// A connection's exchange buffers. Boxed: a connection holds its set as
/// one pointer, and a set moves between connection and pool without
/// copying its ~300-byte header.
impl Pooled for Box<Buffers> {
    fn fresh() -> Self {
        Box::default()
    }

    fn recycle(&mut self) -> bool {
        Buffers::recycle(self);
        true
    }
}

/// The worker's spare buffers of one kind, lent while bytes flow and given
/// back when a connection goes idle: exchange buffer sets (`buffers`: a
/// connection takes a set when a request arrives and gives it back when it
/// goes idle, so idle keep-alive connections hold none) and tunnel relay
/// buffers (`relay_buffers`: a tunnel direction holds one only while bytes
/// move). Bounded: it keeps `reserve` spares plus enough to lend out as
/// many as at the recent peak, so bursts (waves of hundreds of HTTP/2
/// streams) reuse what they gave back instead of allocating; the peak
/// decays every metrics snapshot (`settle`), and with it the surplus, once
/// the bursts stop.
pub struct Pool<T> {
    spare: RefCell<Vec<T>>,
    reserve: usize,
    lent: Cell<usize>,
    /// The most lent out at once lately (see `settle`).
    peak: Cell<usize>,
}

pub type BufferPool = Pool<Box<Buffers>>;

/// Spare exchange sets kept per worker beyond what the recent peak keeps
/// (about 36 KiB each, 100 KiB with a body buffer): a few connections
/// waking at once after a quiet spell take one without allocating. Kept
/// small: the spares and the freed sets around them stay resident, which
/// idle connections pay for (64 spares cost 100-130 bytes per connection
/// at 5 000 idle ones).
pub const BUFFER_POOL_SPARE: usize = 16;

/// Spare relay buffers kept per worker (64 KiB each): a tunnel direction
/// holds one for 50 ms after its last byte, so this covers a few dozen
/// tunnels waking at once without allocating.
pub const RELAY_POOL_SPARE: usize = 16;

impl<T: Pooled> Pool<T> {
    pub fn new(reserve: usize) -> Self {
        Pool {
            spare: RefCell::new(Vec::new()),
            reserve,
            lent: Cell::new(0),
            peak: Cell::new(0),
        }
    }

    pub fn take(&self) -> T {
        let lent = self.lent.get() + 1;
        self.lent.set(lent);
        self.peak.set(self.peak.get().max(lent));
        self.spare.borrow_mut().pop().unwrap_or_else(T::fresh)
    }

    pub fn give(&self, mut item: T) {
        let lent = self.lent.get().saturating_sub(1);
        self.lent.set(lent);
        let mut spare = self.spare.borrow_mut();
        if spare.len() < self.keep() && item.recycle() {
            spare.push(item);
        }
    }

    /// Spares worth keeping: the fixed reserve, plus what the recent peak
    /// would lend beyond what is lent now.
    fn keep(&self) -> usize {
        self.reserve + self.peak.get().saturating_sub(self.lent.get())
    }

    /// Lets the peak decay by a quarter toward what is lent now, and frees
    /// the spares it no longer justifies. Called every metrics snapshot
    /// (100 ms by default): a burst's spares are gone about a second after
    /// it.
    pub fn settle(&self) {
        let (lent, peak) = (self.lent.get(), self.peak.get());
        self.peak.set(lent.max(peak - peak.div_ceil(4)));
        let keep = self.keep();
        self.spare.borrow_mut().truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_reuses_its_sets_and_the_pool_shrinks_when_it_ends() {
        let pool = BufferPool::new(BUFFER_POOL_SPARE);
        let burst: Vec<_> = (0..500).map(|_| pool.take()).collect();
        let addrs: Vec<*const Buffers> = burst.iter().map(|b| &**b as *const _).collect();
        // Half the burst ends and the next requests come: they get the
        // returned sets, none newly allocated.
        let mut burst = burst.into_iter();
        for b in burst.by_ref().take(250) {
            pool.give(b);
        }
        let again: Vec<_> = (0..250).map(|_| pool.take()).collect();
        assert!(again.iter().all(|b| addrs.contains(&(&**b as *const _))));
        for b in burst.chain(again) {
            pool.give(b);
        }
        assert_eq!(pool.lent.get(), 0);
        // Between two waves the sets stay for the next one...
        assert_eq!(pool.spare.borrow().len(), 500);
        let wave: Vec<_> = (0..500).map(|_| pool.take()).collect();
        assert!(wave.iter().all(|b| addrs.contains(&(&**b as *const _))));
        wave.into_iter().for_each(|b| pool.give(b));
        // ...and go once the waves stop.
        for _ in 0..40 {
            pool.settle();
        }
        assert_eq!(pool.spare.borrow().len(), BUFFER_POOL_SPARE);
    }
}
