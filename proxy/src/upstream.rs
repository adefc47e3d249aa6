//! A worker's view of one upstream: its backends' state (`BackendView`), the
//! balancer, the retry budget and a bounded keep-alive pool per backend. Owned by one worker, never shared:
//! `RefCell` borrows here never live across an `.await`.
//!
//! A backend that sent bytes nobody asked for (on an idle pooled connection,
//! or past the end of a response) is *tainted*: for `pool.stray_cooldown` none of
//! its connections is pooled or reused. HTTP/1.1 cannot tell a stray
//! response that arrives while a request is in flight from that request's
//! answer, so the only defence against a backend that sends them is not to
//! put another request on its connections; the first stray is still
//! served, the ones during the cooldown land on closed connections.
//!
//! With `send_proxy_protocol` a connection's first bytes name the client it
//! was opened for, so it is pooled for that client connection alone (its
//! addresses are the connection's tag), as HAProxy keeps `send-proxy`
//! connections private to their session.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use http::uri::Scheme;
use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringgate_config::{BackendTarget, Balance, Http2, LogLevel, Upstream, UpstreamProtocol};
use ringgate_core::backend_view::{
    BackendSpec, BackendView, BreakerPolicy, BreakerState, Outcome, OutlierPolicy, ViewConfig,
};
use ringgate_core::balance::{Algorithm, Balancer, MAGLEV_TABLE_SIZE};
use ringgate_core::proxy_protocol::ConnAddrs;
use ringgate_core::slots::{self, SlotChange};
use rustls::pki_types::ServerName;

use crate::error_log::{ErrorLog, Kind};
use crate::h2_upstream::{self, H2Link, LinkTimeouts, OpenError};
use crate::io::{pending_input, Abort, PendingInput, WriteFail};
use crate::metrics::{outcome_index, OUTCOMES};
use crate::proxy_protocol;
use crate::stream::{StreamReader, StreamWriter};
use crate::tls::{self, UpstreamTlsConfig};

/// An upstream connection, split so an exchange can send a request body and
/// read the response at the same time.
pub struct UpstreamConn {
    pub r: StreamReader,
    pub w: StreamWriter,
    pub backend: usize,
    /// Came from the pool: the backend may have closed it meanwhile.
    pub reused: bool,
    /// The slot's backend when the connection was opened: a connection
    /// outliving its slot's backend (DNS moved the slot) is never pooled.
    slot_epoch: u32,
    /// The client its PROXY header named: reused only for that client.
    tag: Option<ConnAddrs>,
    /// The socket, for the cleanliness check of a pooled connection; valid
    /// while `r` and `w` live (-1 for an HTTP/2 stream).
    fd: RawFd,
    /// Counts the connection as open until it is dropped; `None` for an
    /// HTTP/2 stream, whose connection is counted by its task.
    slot: Option<ConnSlot>,
}

impl UpstreamConn {
    /// Closes the connection after a tunnel ended both its directions
    /// (see [`crate::stream::close_connection`]).
    pub fn close_tunnel_end(self) {
        let UpstreamConn { r, w, slot, .. } = self;
        crate::stream::close_connection(r, w);
        drop(slot);
    }
}

struct Idle {
    r: StreamReader,
    w: StreamWriter,
    tag: Option<ConnAddrs>,
    fd: RawFd,
    since: Instant,
    slot: ConnSlot,
}

/// This worker's open connections per backend (idle and busy), and the
/// requests waiting for one to come free when `max_connections` is reached.
#[derive(Default)]
struct ConnTally {
    open: Vec<Cell<u32>>,
    waiters: Vec<RefCell<Vec<Waker>>>,
}

impl ConnTally {
    fn open(&self, backend: usize) -> u32 {
        self.open[backend].get()
    }

    /// Wakes every request waiting on `backend`: each re-checks and the
    /// losers wait again. A waiter that gave up leaves a stale waker behind;
    /// waking all means it can never swallow the wake-up meant for another.
    fn wake(&self, backend: usize) {
        let waiters = std::mem::take(&mut *self.waiters[backend].borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// One open (or opening) connection to a backend, counted in the tally
/// until dropped, however the connection ends.
struct ConnSlot {
    tally: Rc<ConnTally>,
    backend: usize,
}

impl ConnSlot {
    fn take(tally: &Rc<ConnTally>, backend: usize) -> ConnSlot {
        let open = &tally.open[backend];
        open.set(open.get().saturating_add(1));
        ConnSlot {
            tally: tally.clone(),
            backend,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let open = &self.tally.open[self.backend];
        open.set(open.get().saturating_sub(1));
        self.tally.wake(self.backend);
    }
}

pub struct UpstreamState {
    pub config: Upstream,
    /// Each slot's backend address; `None` for a DNS name's empty slot.
    addrs: Vec<Cell<Option<SocketAddr>>>,
    /// Bumped each time a slot takes another backend or empties.
    epochs: Vec<Cell<u32>>,
    /// The first slot of each backend entry.
    first_slots: Vec<usize>,
    /// Attempt counts of backends that left their slots, for `/metrics`:
    /// counters never go back. Bounded by `RETIRED_MAX`.
    pub retired: RefCell<Vec<(SocketAddr, [u64; OUTCOMES])>>,
    /// Health, ejection, load and latency of each backend as this worker
    /// sees it (its own traffic plus gossip).
    pub view: RefCell<BackendView>,
    balancer: RefCell<Balancer>,
    pools: Vec<RefCell<Vec<Idle>>>,
    /// Per backend: no connection is pooled or reused before this (a stray
    /// was seen; see the module doc).
    tainted_until: Vec<Cell<Option<Instant>>>,
    /// Strays found here since the last gossip round, per backend.
    strays_seen: Vec<Cell<bool>>,
    tally: Rc<ConnTally>,
    retry_budget: RefCell<RetryBudget>,
    /// Attempts per backend by outcome, for `/metrics`.
    pub outcomes: Vec<[Cell<u64>; OUTCOMES]>,
    /// In-flight and connection levels last gossiped, to send a backend
    /// only when one changed.
    pub reported_levels: RefCell<Vec<(u32, u32)>>,
    /// The worker's error log: ejections, breaker changes, strays.
    log: Rc<ErrorLog>,
    /// HTTPS to the backends, as loaded from the upstream's `tls` table.
    pub tls: Option<UpstreamTlsConfig>,
    /// Per slot, the host name its entry was configured with
    /// (`address = "host:port"`): what TLS verifies and a health probe's
    /// `Host` names when the upstream sets no `tls.server_name`.
    slot_hosts: Vec<Option<(ServerName<'static>, String)>>,
    /// `protocol = "h2"`: the multiplexed connections per backend, and how
    /// they are set up.
    h2: Option<H2Pool>,
}

struct H2Pool {
    links: Vec<RefCell<Vec<H2Link>>>,
    /// Connections being opened, per backend: a request that finds no
    /// stream free waits for them rather than open one more each.
    connecting: Vec<Cell<u32>>,
    settings: Http2,
    scheme: Scheme,
}

#[derive(Debug)]
pub enum ConnectError {
    TimedOut,
    /// With the errno (0 when the failure carried none).
    Failed(i32),
    /// `max_connections` reached and none of this worker's came free in time.
    Overflow,
    /// The TLS handshake with the backend failed (its certificate did not
    /// verify, no shared version or cipher) or did not finish in time.
    Tls,
}

/// Linkerd-style retry budget: every request deposits `ratio` of a retry,
/// every retry withdraws one; a floor lets a quiet worker retry at all.
struct RetryBudget {
    tokens: f64,
    ratio: f64,
}

/// Addresses whose counts `retired` keeps per upstream per worker: a name
/// whose records churn through more than this loses its oldest counts.
const RETIRED_MAX: usize = 256;

/// Retries a worker may make before any request has paid for them, and the
/// most it may save up: enough for a burst of failures, not for a storm.
const RETRY_BUDGET_FLOOR: f64 = 10.0;
const RETRY_BUDGET_CAP: f64 = 100.0;

fn algorithm(balance: Balance) -> Algorithm {
    match balance {
        Balance::RoundRobin => Algorithm::RoundRobin,
        Balance::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        Balance::LeastConn => Algorithm::LeastConn,
        Balance::P2cEwma => Algorithm::P2cEwma,
        Balance::MaglevHash => Algorithm::MaglevHash {
            table_size: MAGLEV_TABLE_SIZE,
        },
        Balance::Random => Algorithm::Random,
    }
}

impl UpstreamState {
    pub fn new(
        config: Upstream,
        http2: &Http2,
        worker_id: usize,
        workers: usize,
        log: Rc<ErrorLog>,
    ) -> Self {
        let slots = config.slots();
        let ids: Vec<String> = slots
            .iter()
            .map(|(a, _)| a.map_or_else(String::new, |a| a.to_string()))
            .collect();
        let specs: Vec<BackendSpec<'_>> = ids
            .iter()
            .zip(&slots)
            .map(|(id, &(a, weight))| BackendSpec {
                id: id.as_bytes(),
                weight,
                present: a.is_some(),
            })
            .collect();
        let outlier = &config.outlier_detection;
        let view_config = ViewConfig {
            outlier: OutlierPolicy {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection_time: outlier.base_ejection_time,
                max_ejection_time: outlier.max_ejection_time,
                max_ejection_percent: outlier.max_ejection_percent,
            },
            breaker: config.circuit_breaker.map(|c| BreakerPolicy {
                max_pending: c.max_pending,
                max_connections: c.max_connections,
                consecutive_failures: c.consecutive_failures,
                open_for: c.open_for,
            }),
            ..ViewConfig::default()
        };
        let view = BackendView::new(&specs, workers, view_config);
        // Seeded by worker so that workers do not move in lockstep.
        let balancer = Balancer::new(algorithm(config.balance), &view, worker_id as u64);
        let pools = slots.iter().map(|_| RefCell::new(Vec::new())).collect();
        let ratio = config
            .retries
            .map_or(0.0, |r| f64::from(r.budget_percent) / 100.0);
        let tally = Rc::new(ConnTally {
            open: slots.iter().map(|_| Cell::new(0)).collect(),
            waiters: slots.iter().map(|_| RefCell::default()).collect(),
        });
        let h2 = (config.protocol == UpstreamProtocol::H2).then(|| H2Pool {
            links: slots.iter().map(|_| RefCell::default()).collect(),
            connecting: slots.iter().map(|_| Cell::new(0)).collect(),
            settings: http2.clone(),
            scheme: if config.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
        });
        UpstreamState {
            h2,
            outcomes: slots.iter().map(|_| Default::default()).collect(),
            reported_levels: RefCell::new(vec![(0, 0); slots.len()]),
            addrs: slots.iter().map(|&(a, _)| Cell::new(a)).collect(),
            epochs: slots.iter().map(|_| Cell::new(0)).collect(),
            first_slots: config.first_slots(),
            slot_hosts: slot_hosts(&config),
            retired: RefCell::default(),
            tally,
            view: RefCell::new(view),
            balancer: RefCell::new(balancer),
            pools,
            tainted_until: slots.iter().map(|_| Cell::new(None)).collect(),
            strays_seen: slots.iter().map(|_| Cell::new(false)).collect(),
            retry_budget: RefCell::new(RetryBudget {
                tokens: RETRY_BUDGET_FLOOR,
                ratio,
            }),
            config,
            log,
            tls: None,
        }
    }

    /// The name a TLS connection to `slot` asks for and verifies: the
    /// upstream's `tls.server_name`, else the host name the slot's entry
    /// names, else the slot's IP address (as nginx's `proxy_ssl_name`
    /// defaults to the proxied host).
    pub fn tls_name(&self, tls: &UpstreamTlsConfig, slot: usize) -> ServerName<'static> {
        match (&tls.server_name, self.slot_hosts.get(slot)) {
            (None, Some(Some((name, _)))) => name.clone(),
            _ => tls.name_for(self.backend_addr(slot)),
        }
    }

    /// The `Host` a health probe of `slot` sends: `tls.server_name`, else
    /// the entry's `host:port`, else the slot's address.
    pub fn probe_host(&self, slot: usize) -> String {
        let server_name = self.config.tls.as_ref().and_then(|t| t.server_name.clone());
        match (server_name, self.slot_hosts.get(slot)) {
            (Some(name), _) => name,
            (None, Some(Some((_, host)))) => host.clone(),
            _ => self.backend_addr(slot).to_string(),
        }
    }

    /// Picks an available backend, avoiding `avoid` (the one that just
    /// failed) when another is available.
    pub fn pick(&self, key: Option<&[u8]>, avoid: Option<usize>, now: Instant) -> Option<usize> {
        let mut view = self.view.borrow_mut();
        view.refresh(now);
        let mut balancer = self.balancer.borrow_mut();
        let first = balancer.pick(&view, key)?;
        if Some(first) != avoid || view.available_cached_count() < 2 {
            return Some(first);
        }
        // A hash pick repeats for the same key; the others move on.
        for _ in 0..view.len() {
            match balancer.pick(&view, None) {
                Some(b) if Some(b) != avoid => return Some(b),
                _ => {}
            }
        }
        Some(first)
    }

    pub fn on_start(&self, backend: usize, now: Instant) {
        self.view.borrow_mut().on_request_start(backend, now);
    }

    pub fn on_end(&self, backend: usize, outcome: Outcome, now: Instant) {
        let count = &self.outcomes[backend][outcome_index(outcome)];
        count.set(count.get() + 1);
        let mut view = self.view.borrow_mut();
        let was_ejected = view.is_ejected(backend, now);
        let breaker_was = breaker_phase(view.breaker_state(backend));
        view.on_request_end(backend, outcome, now);
        let ejected = !was_ejected && view.is_ejected(backend, now);
        let breaker = breaker_phase(view.breaker_state(backend));
        drop(view);
        if ejected {
            self.log.event(LogLevel::Warn, Kind::Ejection, |b| {
                self.write_backend(b, backend);
                b.extend_from_slice(b" ejected after consecutive failures (outlier_detection)");
            });
        }
        if breaker != breaker_was && breaker != "half_open" {
            let level = if breaker == "open" {
                LogLevel::Warn
            } else {
                LogLevel::Info
            };
            self.log.event(level, Kind::Breaker, |b| {
                self.write_backend(b, backend);
                let _ = write!(b, " circuit breaker {breaker_was} -> {breaker}");
            });
        }
    }

    /// `upstream=NAME backend=ADDR`, as error-log lines name a backend.
    pub fn write_backend(&self, b: &mut Vec<u8>, backend: usize) {
        let _ = write!(
            b,
            "upstream={} backend={}",
            self.config.name,
            self.backend_addr(backend)
        );
    }

    /// Every request pays into the retry budget.
    pub fn count_request(&self) {
        let mut budget = self.retry_budget.borrow_mut();
        budget.tokens = (budget.tokens + budget.ratio).min(RETRY_BUDGET_CAP);
    }

    pub fn retry_affordable(&self) -> bool {
        self.retry_budget.borrow().tokens >= 1.0
    }

    /// Withdraws one retry from the budget, if it holds one.
    pub fn take_retry(&self) -> bool {
        let mut budget = self.retry_budget.borrow_mut();
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The address of the backend in slot `backend`. An empty slot is
    /// never picked; asked anyway, it reads as `0.0.0.0:0`, which no
    /// connect reaches.
    pub fn backend_addr(&self, backend: usize) -> SocketAddr {
        self.addrs[backend]
            .get()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address in slot `backend`, `None` while it is empty.
    pub fn slot_addr(&self, backend: usize) -> Option<SocketAddr> {
        self.addrs[backend].get()
    }

    /// Counts the slot's changes of backend (see [`Self::apply_dns`]); 0 for a
    /// slot out of range, which every use then bounds itself.
    pub fn slot_epoch(&self, backend: usize) -> u32 {
        self.epochs.get(backend).map_or(0, Cell::get)
    }

    /// Backend entry `entry` (a DNS name) now resolves to `set` (address,
    /// weight; distinct, at most the entry's `max_addresses`). Addresses
    /// that stay keep their slots, pools, health and latency, taking the
    /// new weight; new ones fill empty slots with a fresh state; slots
    /// whose address left empty, their idle connections closed (requests
    /// in flight on them finish). The placement is `slots::plan`'s, the
    /// same on every worker given the same updates in the same order, so
    /// slots match across workers and gossip by slot index stays
    /// meaningful. Run by the ticker, never on the request path.
    pub fn apply_dns(&self, entry: usize, set: &[(SocketAddr, u32)], now: Instant) {
        let (Some(&first), Some(b)) =
            (self.first_slots.get(entry), self.config.backends.get(entry))
        else {
            return;
        };
        let held: Vec<Option<SocketAddr>> = (first..first + b.max_addresses)
            .map(|slot| self.addrs[slot].get())
            .collect();
        let mut view = self.view.borrow_mut();
        let mut changed = false;
        for change in slots::plan(&held, set) {
            match change {
                SlotChange::Keep { slot, weight } => {
                    if view.weight(first + slot) != weight.max(1) {
                        view.set_weight(first + slot, weight, now);
                        changed = true;
                    }
                }
                SlotChange::Remove { slot, .. } => {
                    let spec = BackendSpec {
                        id: b"",
                        weight: 1,
                        present: false,
                    };
                    view.replace(first + slot, &spec, now);
                    self.reset_slot(first + slot, None);
                    changed = true;
                }
                SlotChange::Add { slot, addr, weight } => {
                    let id = addr.to_string();
                    let spec = BackendSpec {
                        id: id.as_bytes(),
                        weight,
                        present: true,
                    };
                    view.replace(first + slot, &spec, now);
                    self.reset_slot(first + slot, Some(addr));
                    changed = true;
                }
            }
        }
        if changed {
            self.balancer.borrow_mut().backends_changed(&view);
        }
    }

    /// Slot `slot` takes `addr` (or empties): its pooled connections close,
    /// its counts move to `retired`, its stray cooldown ends.
    fn reset_slot(&self, slot: usize, addr: Option<SocketAddr>) {
        if let Some(old) = self.addrs[slot].replace(addr) {
            let counts: [u64; OUTCOMES] =
                std::array::from_fn(|i| self.outcomes[slot][i].replace(0));
            let mut retired = self.retired.borrow_mut();
            match retired.iter_mut().find(|(a, _)| *a == old) {
                Some((_, sum)) => {
                    for (sum, n) in sum.iter_mut().zip(counts) {
                        *sum += n;
                    }
                }
                None => {
                    if retired.len() >= RETIRED_MAX {
                        retired.remove(0);
                    }
                    retired.push((old, counts));
                }
            }
        }
        self.epochs[slot].set(self.epochs[slot].get().wrapping_add(1));
        self.tainted_until[slot].set(None);
        self.strays_seen[slot].set(false);
        let idle = std::mem::take(&mut *self.pools[slot].borrow_mut());
        // Dropped outside the pool's borrow: a slot's drop wakes waiters.
        drop(idle);
        if let Some(h2) = &self.h2 {
            let links = std::mem::take(&mut *h2.links[slot].borrow_mut());
            drop(links);
        }
    }

    /// This worker's open connections to `backend`, idle ones included.
    pub fn open_connections(&self, backend: usize) -> u32 {
        self.tally.open(backend)
    }

    /// A pooled connection if a fresh enough one is idle (and `fresh` is not
    /// asked), else a new one; with `send_proxy_protocol`, one opened for
    /// `client`, else a new one that starts with `client`'s PROXY header.
    /// At `max_connections` (node-wide) it waits up to `connect_timeout`
    /// for one of this worker's connections to that backend to come back
    /// or close; with none of its own, nothing would come back, so it
    /// overflows at once.
    pub async fn checkout(
        &self,
        backend: usize,
        fresh: bool,
        client: ConnAddrs,
    ) -> Result<UpstreamConn, ConnectError> {
        let tag = self.config.send_proxy_protocol.map(|_| client);
        let mut queue_deadline: Option<Instant> = None;
        loop {
            if !fresh {
                if let Some(conn) = self.h2_stream(backend, false) {
                    return Ok(conn);
                }
                if self.h2_connecting(backend) {
                    let now = Instant::now();
                    let deadline = *queue_deadline.get_or_insert(now + self.config.connect_timeout);
                    if now < deadline {
                        self.wait_for_connection(backend, deadline).await;
                        continue;
                    }
                }
                if let Some(idle) = self.take_idle(backend, tag) {
                    return Ok(UpstreamConn {
                        r: idle.r,
                        w: idle.w,
                        backend,
                        reused: true,
                        slot_epoch: self.slot_epoch(backend),
                        tag,
                        fd: idle.fd,
                        slot: Some(idle.slot),
                    });
                }
            }
            let local = self.tally.open(backend);
            if self.view.borrow().may_connect(backend, local) {
                break;
            }
            // At the connection limit, a busy HTTP/2 connection still takes
            // the stream: the backend's stream limit queues it.
            if let Some(conn) = self.h2_stream(backend, true) {
                return Ok(conn);
            }
            let now = Instant::now();
            let deadline = *queue_deadline.get_or_insert(now + self.config.connect_timeout);
            if local == 0 || now >= deadline {
                return Err(ConnectError::Overflow);
            }
            self.wait_for_connection(backend, deadline).await;
        }
        // Counted from before the connect, so that concurrent connects
        // cannot overshoot the limit.
        let slot = ConnSlot::take(&self.tally, backend);
        let _connecting = self
            .h2
            .as_ref()
            .map(|h2| Connecting::start(h2, &self.tally, backend));
        let started = Instant::now();
        let epoch = self.slot_epoch(backend);
        let stream = connect(self.backend_addr(backend), self.config.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let (r, mut w) = stream.into_split();
        if let Some(version) = self.config.send_proxy_protocol {
            let left = self
                .config
                .connect_timeout
                .saturating_sub(started.elapsed());
            match proxy_protocol::send(&mut w, version, tag, left, &Abort::default()).await {
                Ok(()) => {}
                Err(WriteFail::TimedOut) => return Err(ConnectError::TimedOut),
                Err(_) => return Err(ConnectError::Failed(0)),
            }
        }
        let (r, w) = match &self.tls {
            None => (StreamReader::Plain(r), StreamWriter::Plain(w)),
            Some(tls) => {
                // The handshake shares the connect timeout: together they
                // are "the connection", as nginx's proxy_connect_timeout.
                let left = self
                    .config
                    .connect_timeout
                    .saturating_sub(started.elapsed());
                let (abort_r, abort_w) = (Abort::default(), Abort::default());
                let name = self.tls_name(tls, backend);
                match tls::connect(r, w, tls.config.clone(), name, left, &abort_r, &abort_w).await {
                    Ok((r, w)) => (StreamReader::Tls(r), StreamWriter::Tls(w)),
                    Err(tls::HandshakeError::TimedOut) => return Err(ConnectError::TimedOut),
                    Err(e) => {
                        self.log.event(LogLevel::Error, Kind::AttemptFailed, |b| {
                            self.write_backend(b, backend);
                            let _ = write!(b, " TLS handshake failed: {e}");
                        });
                        return Err(ConnectError::Tls);
                    }
                }
            }
        };
        if let Some(h2) = &self.h2 {
            let timeouts = LinkTimeouts {
                settle: self
                    .config
                    .connect_timeout
                    .saturating_sub(started.elapsed()),
                idle: self.config.idle_timeout,
                send: self.config.send_timeout,
            };
            // The connection counts toward `max_connections` until its
            // task ends.
            let link = h2_upstream::open(r, w, &h2.settings, timeouts, move || drop(slot))
                .await
                .map_err(|e| match e {
                    OpenError::TimedOut => ConnectError::TimedOut,
                    OpenError::Refused => ConnectError::Failed(0),
                })?;
            let (r, w) = link.stream(&h2.scheme, &self.authority(backend));
            // A slot that took another backend meanwhile keeps none of
            // this one's connections.
            if epoch == self.slot_epoch(backend) {
                h2.links[backend].borrow_mut().push(link);
            }
            return Ok(UpstreamConn {
                r,
                w,
                backend,
                reused: false,
                slot_epoch: self.slot_epoch(backend),
                fd: -1,
                slot: None,
                tag: None,
            });
        }
        Ok(UpstreamConn {
            r,
            w,
            backend,
            reused: false,
            slot_epoch: epoch,
            tag,
            fd,
            slot: Some(slot),
        })
    }

    fn h2_connecting(&self, backend: usize) -> bool {
        self.h2
            .as_ref()
            .is_some_and(|h2| h2.connecting[backend].get() > 0)
    }

    /// A new stream on one of this worker's HTTP/2 connections to
    /// `backend`: the least busy one below its stream limit, or, when
    /// `even_full`, the least busy one at all. Ended connections leave the
    /// pool here.
    fn h2_stream(&self, backend: usize, even_full: bool) -> Option<UpstreamConn> {
        let h2 = self.h2.as_ref()?;
        let mut links = h2.links[backend].borrow_mut();
        links.retain(|l| !l.state.dead.get());
        let cap = h2.settings.max_concurrent_streams;
        let link = links
            .iter()
            .filter(|l| even_full || l.state.streams.get() < l.capacity(cap))
            .min_by_key(|l| l.state.streams.get())?;
        let reused = link.state.used.get();
        let (r, w) = link.stream(&h2.scheme, &self.authority(backend));
        Some(UpstreamConn {
            r,
            w,
            backend,
            reused,
            slot_epoch: self.slot_epoch(backend),
            fd: -1,
            slot: None,
            tag: None,
        })
    }

    /// `:authority` for a request without Host: the TLS name, else the
    /// backend's address.
    fn authority(&self, backend: usize) -> String {
        self.config
            .tls
            .as_ref()
            .and_then(|t| t.server_name.clone())
            .unwrap_or_else(|| self.backend_addr(backend).to_string())
    }

    /// The most recently used idle connection that has not idled out and
    /// is still clean: nothing arrived on it while it idled (a response
    /// nobody asked for, or the backend's close). Any other is closed; one
    /// holding a stray taints its backend.
    fn take_idle(&self, backend: usize, tag: Option<ConnAddrs>) -> Option<Idle> {
        loop {
            let idle = {
                let mut pool = self.pools[backend].borrow_mut();
                // Untagged, the last one: a LIFO pool.
                let at = pool.iter().rposition(|i| i.tag == tag)?;
                pool.remove(at)
            };
            let now = Instant::now();
            let fresh = now.duration_since(idle.since) < self.config.idle_timeout;
            match pending_input(idle.fd) {
                PendingInput::Nothing if fresh && !self.tainted(backend, now) => return Some(idle),
                // Bytes on a TLS connection may be a record that is not a
                // response (an alert, a KeyUpdate): closed, not held against
                // the backend.
                PendingInput::Bytes if !idle.r.is_tls() => self.taint(backend, now),
                PendingInput::Nothing | PendingInput::Closed | PendingInput::Bytes => {}
            }
            // Dropped outside the pool's borrow: a slot's drop wakes waiters.
            drop(idle);
        }
    }

    pub fn tainted(&self, backend: usize, now: Instant) -> bool {
        self.tainted_until[backend]
            .get()
            .is_some_and(|until| now < until)
    }

    /// `backend` sent bytes nobody asked for: no reuse of its connections
    /// for `pool.stray_cooldown` from now. Its idle ones go at the next checkout.
    pub fn taint(&self, backend: usize, now: Instant) {
        // The other workers hear of it at the next gossip round.
        self.strays_seen[backend].set(true);
        self.start_cooldown(backend, now);
    }

    /// Another worker found a stray from `backend` (gossip): the same
    /// cooldown here, without a log line of this worker's own.
    pub fn taint_remote(&self, backend: usize, now: Instant) {
        if backend < self.tainted_until.len() {
            self.tainted_until[backend].set(Some(now + self.config.stray_cooldown));
        }
    }

    /// Backends this worker caught sending strays since the last call.
    pub fn take_strays(&self, mut each: impl FnMut(usize)) {
        for (b, seen) in self.strays_seen.iter().enumerate() {
            if seen.replace(false) {
                each(b);
            }
        }
    }

    /// Starts (or restarts) the cooldown, saying so when it starts.
    fn start_cooldown(&self, backend: usize, now: Instant) {
        if !self.tainted(backend, now) {
            self.log.event(LogLevel::Warn, Kind::Stray, |b| {
                self.write_backend(b, backend);
                let _ = write!(
                    b,
                    " sent a response nobody asked for; its connections are not reused for {}s",
                    self.config.stray_cooldown.as_secs_f64()
                );
            });
        }
        self.tainted_until[backend].set(Some(now + self.config.stray_cooldown));
    }

    /// Until a connection to `backend` is checked in or closed on this
    /// worker, or `deadline`.
    async fn wait_for_connection(&self, backend: usize, deadline: Instant) {
        let mut sleep = pin!(monoio::time::sleep_until(deadline.into()));
        let mut registered = false;
        poll_fn(|cx| {
            if registered || sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.tally.waiters[backend]
                .borrow_mut()
                .push(cx.waker().clone());
            registered = true;
            Poll::Pending
        })
        .await;
    }

    /// Returns a connection after a complete exchange that left it reusable.
    pub fn checkin(&self, mut conn: UpstreamConn) {
        let backend = conn.backend;
        let now = Instant::now();
        // TLS may hold decrypted bytes past the response that the socket
        // check cannot see: such a connection is not clean. An HTTP/2
        // stream is done; its connection stays with its task.
        let Some(slot) = conn.slot.take() else {
            return;
        };
        if conn.r.holds_unread() || conn.slot_epoch != self.slot_epoch(backend) {
            return;
        }
        let mut evicted = None;
        {
            let mut pool = self.pools[backend].borrow_mut();
            let full = pool.len() >= self.config.max_idle_per_backend;
            // Tagged connections each serve one client: the one unused
            // longest (first in) makes room, or the pool would fill with
            // those of clients that left.
            let room = !full || (conn.tag.is_some() && !pool.is_empty());
            if !room || self.tainted(backend, now) {
                drop(pool);
                // Closed: the slot's drop wakes the waiters.
                return;
            }
            if full {
                evicted = Some(pool.remove(0));
            }
            pool.push(Idle {
                r: conn.r,
                w: conn.w,
                tag: conn.tag,
                fd: conn.fd,
                since: now,
                slot,
            });
        }
        // Dropped outside the pool's borrow: a slot's drop wakes waiters.
        drop(evicted);
        self.tally.wake(backend);
    }
}

/// One HTTP/2 connection being opened; when it is up or failed, the
/// requests waiting for it look again.
struct Connecting<'a> {
    count: &'a Cell<u32>,
    tally: &'a ConnTally,
    backend: usize,
}

impl<'a> Connecting<'a> {
    fn start(h2: &'a H2Pool, tally: &'a ConnTally, backend: usize) -> Self {
        let count = &h2.connecting[backend];
        count.set(count.get() + 1);
        Connecting {
            count,
            tally,
            backend,
        }
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.count.set(self.count.get().saturating_sub(1));
        self.tally.wake(self.backend);
    }
}

/// A breaker state as the error log names it.
fn breaker_phase(state: Option<BreakerState>) -> &'static str {
    match state {
        None | Some(BreakerState::Closed) => "closed",
        Some(BreakerState::Open { .. }) => "open",
        Some(BreakerState::HalfOpen) => "half_open",
    }
}

/// TCP connect with a timeout. A connect op holds no buffer of ours, so on
/// timeout it is dropped: monoio then submits an async cancel for it.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let mut connecting = pin!(TcpStream::connect_addr(addr));
    let mut sleep = pin!(monoio::time::sleep(timeout));
    poll_fn(|cx| {
        if let Poll::Ready(res) = connecting.as_mut().poll(cx) {
            return Poll::Ready(
                res.map_err(|e| ConnectError::Failed(e.raw_os_error().unwrap_or(0))),
            );
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(ConnectError::TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// Each slot's configured host name (for TLS, as a `ServerName`) and its
/// `host:port`; `None` for address and SRV entries (an SRV record's target
/// names are not kept: verify those through `tls.server_name`).
fn slot_hosts(config: &Upstream) -> Vec<Option<(ServerName<'static>, String)>> {
    let mut hosts = Vec::with_capacity(config.slot_count());
    for b in &config.backends {
        match &b.target {
            BackendTarget::Address(_) => hosts.push(None),
            BackendTarget::Host { name, port } => {
                // Checked as a host name by the config; a name rustls
                // would not take leaves the slot verified by its address.
                let host = ServerName::try_from(name.clone())
                    .ok()
                    .map(|n| (n, format!("{name}:{port}")));
                hosts.extend(std::iter::repeat_n(host, b.max_addresses));
            }
            BackendTarget::Srv { .. } => hosts.extend(std::iter::repeat_n(None, b.max_addresses)),
        }
    }
    hosts
}
