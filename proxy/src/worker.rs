//! Workers: one per core, each pinned to its CPU and running its own monoio
//! runtime (io_uring, or the legacy epoll driver where io_uring is blocked).
//! This module starts them: the plan, pinning, ring set-up, binding, the
//! accept loop and the drain; what a worker owns lives in `state`. Nothing
//! is shared between workers but the immutable config (plus the access-log
//! file, appended to in whole lines, and the channel to the admin thread,
//! which only the ticker uses).

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use ringgate_config::{Config, Listener, ListenerProtocol, LogLevel, RingSetup, Workers};
use ringgate_core::gossip::GossipMsg;
use ringgate_core::proxy_protocol::ConnAddrs;
use socket2::{Domain, Protocol, Socket, Type};

use crate::accept;
use crate::downstream::{self, Http2Start, Opened};
use crate::error_log::{Errno, ErrorLog, Kind};
use crate::gossip::{Gossip, Mesh};
use crate::health;
use crate::http2;
use crate::metrics::{Counters, SnapshotTx};
use crate::proxy_protocol;
use crate::schema::Schemas;
use crate::state::{ConnControl, Worker};
use crate::stop::StopFlag;
use crate::ticker::Ticker;
use crate::tls::{ListenerTlsConfig, UpstreamTlsConfig};
use crate::tunnel;
pub use ringgate_loadgen::ring_flags::RingFlags;

/// Submission queue size: enough to batch a loop iteration's operations for
/// a few thousand connections into one io_uring_enter.
const URING_ENTRIES: u32 = 4096;

/// Pause after a failed accept, doubled while accepts keep failing (out of
/// file descriptors fails every one until some close) up to the maximum:
/// the loop neither spins nor leaves a freed descriptor unused for long.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one accept-error line per worker this often; the line counts
/// the failures it stands for.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often a draining worker looks whether its last connection is gone.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// What a worker gets from the process besides its sockets and its mesh.
pub struct Shared {
    pub config: Arc<Config>,
    pub stop: StopFlag,
    /// The access log, opened for appending, when one is configured.
    pub log_file: Option<std::fs::File>,
    /// Where this worker's error log goes.
    pub error_log: std::fs::File,
    /// To the admin thread, when `[admin]` is set; used by the ticker.
    pub metrics_tx: Option<SnapshotTx>,
    /// Which config generation this worker runs (a reload starts the next).
    pub generation: u64,
    /// Each listener's TLS configuration as loaded from its files.
    pub tls: Arc<Vec<Option<ListenerTlsConfig>>>,
    /// Each upstream's client TLS configuration.
    pub upstream_tls: Arc<Vec<Option<UpstreamTlsConfig>>>,
    /// Each route's compiled `body_schema`.
    pub schemas: Arc<Schemas>,
    /// Each route's auth files as loaded.
    pub auth: crate::auth::Loaded,
    /// Whether the node reaches the fleet's Redis (`None`: no fleet).
    pub fleet_status: Option<Arc<crate::fleet::FleetStatus>>,
    /// This worker's end of the resolver's channel, and its counters
    /// (`None`: no DNS backends).
    pub dns: Option<(crate::dns::UpdateRx, Arc<crate::dns::DnsStatus>)>,
}

/// What the worker keeps of [`Shared`] once its error log is made.
struct Owned {
    config: Arc<Config>,
    stop: StopFlag,
    log_file: Option<std::fs::File>,
    metrics_tx: Option<SnapshotTx>,
    generation: u64,
    tls: Arc<Vec<Option<ListenerTlsConfig>>>,
    upstream_tls: Arc<Vec<Option<UpstreamTlsConfig>>>,
    schemas: Arc<Schemas>,
    auth: crate::auth::Loaded,
    fleet_status: Option<Arc<crate::fleet::FleetStatus>>,
    dns: Option<(crate::dns::UpdateRx, Arc<crate::dns::DnsStatus>)>,
}

/// Counts a live connection, and keeps it in the worker's table, for as
/// long as it is held.
struct ConnectionSlot {
    worker: Rc<Worker>,
    key: usize,
    listener: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let w = &self.worker;
        w.connections.set(w.connections.get() - 1);
        let of_listener = &w.listener_connections[self.listener];
        of_listener.set(of_listener.get() - 1);
        w.conns.borrow_mut().remove(self.key);
    }
}

/// The number of workers `workers` resolves to, and the CPUs to pin them to.
pub fn plan(workers: Workers) -> (usize, Vec<core_affinity::CoreId>) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let count = match workers {
        Workers::Count(n) => n,
        Workers::Auto => cores.len().max(1),
    };
    (count, cores)
}

/// Does another socket already listen on `addr`? A bind without
/// `SO_REUSEPORT` fails then, where ours (with it) would quietly succeed
/// and split the traffic. Only asked for addresses this process does not
/// hold yet: a reload reuses its own sockets.
fn held_elsewhere(addr: SocketAddr) -> io::Result<bool> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections of an earlier run in TIME_WAIT do not count.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(true),
        Err(e) => Err(e),
    }
}

/// For `check --bind`: would start-up bind `addr`? Binds it the way a
/// worker does and hands the socket back for the caller to release.
pub fn probe_bind(addr: SocketAddr, share_ports: bool) -> io::Result<std::net::TcpListener> {
    if !share_ports && held_elsewhere(addr)? {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use by another process",
        ));
    }
    bind(addr, 1)
}

fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Each worker binds its own socket on the port; the kernel spreads
    // connections across them, so no accept lock is shared.
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit it: one call here instead of one per
    // connection.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// How a listening socket hands over its connections: `defer_accept` and
/// `delayed_ack` (see the config's `Listener`). Set after `listen`, which
/// resets the socket's ACK state; accepted sockets inherit both.
fn tune_accepts(socket: &std::net::TcpListener, listener: &Listener) -> io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    sock.set_quickack(!listener.delayed_ack)?;
    // nginx's `deferred` uses one second too: a connection whose client
    // stays silent that long is handed over anyway, when its ACK of the
    // retransmitted SYN-ACK arrives.
    let seconds: libc::c_int = i32::from(listener.defer_accept);
    // SAFETY: an int option on a descriptor the socket owns, with its size.
    let set = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listener's sockets (one per worker, duplicated file descriptors) kept
/// by the main thread for the next generation, by configured address.
pub struct InheritedListener {
    pub configured: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Each worker's listening sockets (indexed like `config.listeners`), the
/// address each listener is bound to, and duplicates for the next
/// generation.
type Bound = (
    Vec<Vec<std::net::TcpListener>>,
    Vec<SocketAddr>,
    Vec<InheritedListener>,
);

/// Binds every listener once per worker. Port 0 resolves on the first bind
/// and the other workers join that port. A listener whose address was
/// already listened on by the previous generation (`inherit`) takes over
/// those sockets: the accept queues carry over, so a reload refuses and
/// loses nothing.
pub fn bind_all(
    config: &Config,
    workers: usize,
    inherit: &[InheritedListener],
) -> io::Result<Bound> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut keep = Vec::new();
    for listener in &config.listeners {
        let old = inherit
            .iter()
            .find(|l| l.configured == listener.address)
            .map(|l| &l.sockets[..])
            .unwrap_or_default();
        let mut sockets = Vec::with_capacity(workers);
        let mut addr = None;
        for w in 0..workers {
            let socket = match (old.get(w), addr) {
                (Some(s), _) => s.try_clone()?,
                (None, Some(a)) => bind(a, config.server.backlog)?,
                (None, None) => {
                    let named = |e: io::Error| {
                        io::Error::new(
                            e.kind(),
                            format!("listener {} on {}: {e}", listener.name, listener.address),
                        )
                    };
                    if !config.server.share_ports
                        && held_elsewhere(listener.address).map_err(named)?
                    {
                        return Err(named(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "address already in use by another process (every listener uses \
                             SO_REUSEPORT, so starting would quietly take part of its traffic; \
                             set [server] share_ports = true to share it on purpose)",
                        )));
                    }
                    bind(listener.address, config.server.backlog).map_err(named)?
                }
            };
            addr.get_or_insert(socket.local_addr()?);
            // Inherited sockets too: a reload may have changed the keys.
            tune_accepts(&socket, listener)?;
            sockets.push(socket);
        }
        bound.push(addr.unwrap_or(listener.address));
        keep.push(InheritedListener {
            configured: listener.address,
            sockets: sockets
                .iter()
                .map(|s| s.try_clone())
                .collect::<io::Result<_>>()?,
        });
        for (w, socket) in sockets.into_iter().enumerate() {
            per_worker[w].push(socket);
        }
    }
    Ok((per_worker, bound, keep))
}

/// The I/O driver every worker starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring, with the ring set-up flags the kernel accepted.
    IoUring(RingFlags),
    Legacy,
}

impl Driver {
    /// How the start-up line names it.
    pub fn describe(self) -> String {
        match self {
            Driver::IoUring(flags) => format!("io_uring ({})", flags.name()),
            Driver::Legacy => "epoll (legacy)".to_string(),
        }
    }
}

/// `RINGGATE_DRIVER`: whether the operator forces the epoll driver. Unset,
/// empty or `auto` leaves the choice to the kernel; `legacy` forces epoll;
/// any other value is refused rather than silently ignored (a typo such as
/// `legasy` would otherwise leave io_uring on).
pub fn legacy_forced() -> Result<bool, String> {
    match std::env::var("RINGGATE_DRIVER") {
        Err(std::env::VarError::NotPresent) => Ok(false),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!(
            "RINGGATE_DRIVER={v:?} is not a driver; write RINGGATE_DRIVER=legacy (epoll) or auto, or unset it"
        )),
        Ok(v) => match v.as_str() {
            "" | "auto" => Ok(false),
            "legacy" => Ok(true),
            other => Err(format!(
                "RINGGATE_DRIVER={other:?} is not a driver; write RINGGATE_DRIVER=legacy (the epoll driver) \
                 or auto (io_uring where the kernel allows it), or unset it"
            )),
        },
    }
}

/// Decides the driver and the ring flags once for the process, and says
/// so when it is not what was asked: one log line, not one per worker.
/// `RINGGATE_DRIVER` was checked by `main` before anything started.
pub fn choose_driver(setup: RingSetup, log: &ErrorLog) -> Driver {
    let say = |level, what: &str| {
        log.event(level, Kind::Lifecycle, |b| {
            b.extend_from_slice(what.as_bytes())
        });
    };
    if legacy_forced() == Ok(true) {
        say(
            LogLevel::Info,
            "RINGGATE_DRIVER=legacy; workers use the legacy epoll driver",
        );
        return Driver::Legacy;
    }
    if !monoio::utils::detect_uring() {
        say(
            LogLevel::Warn,
            "io_uring is not available (kernel, seccomp or io_uring_disabled); \
             workers use the legacy epoll driver",
        );
        return Driver::Legacy;
    }
    let wanted: &[RingFlags] = match setup {
        RingSetup::Auto => &RingFlags::PREFERENCE,
        RingSetup::DeferTaskrun => &[RingFlags::DeferTaskrun],
        RingSetup::CoopTaskrun => &[RingFlags::CoopTaskrun],
        RingSetup::Plain => &[RingFlags::Plain],
    };
    match wanted.iter().copied().find(|f| f.supported()) {
        Some(flags) => Driver::IoUring(flags),
        None => {
            say(
                LogLevel::Warn,
                &format!(
                    "this kernel refuses io_uring set-up {setup:?}; workers use the legacy epoll driver"
                ),
            );
            Driver::Legacy
        }
    }
}

/// Runs worker `id` on the current thread until the process exits.
pub fn run(
    id: usize,
    cpu: Option<core_affinity::CoreId>,
    driver: Driver,
    listeners: Vec<std::net::TcpListener>,
    mesh: Mesh<GossipMsg>,
    shared: Shared,
) {
    let Shared {
        config,
        stop,
        log_file,
        error_log,
        metrics_tx,
        generation,
        tls,
        upstream_tls,
        schemas,
        auth,
        fleet_status,
        dns,
    } = shared;
    let log = Rc::new(ErrorLog::for_worker(error_log, &config.error_log, id));
    let shared = Owned {
        config,
        stop,
        log_file,
        metrics_tx,
        generation,
        tls,
        upstream_tls,
        schemas,
        auth,
        fleet_status,
        dns,
    };
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(cpu) {
            log.event(LogLevel::Warn, Kind::Lifecycle, |b| {
                let _ = write!(b, "could not pin to cpu {}", cpu.id);
            });
        }
    }
    if let Driver::IoUring(flags) = driver {
        match RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .uring_builder(flags.builder())
            .enable_timer()
            .build()
        {
            Ok(mut rt) => return rt.block_on(worker_main(id, listeners, mesh, shared, log)),
            Err(e) => log.event(LogLevel::Warn, Kind::Lifecycle, |b| {
                let _ = write!(
                    b,
                    "io_uring setup failed ({e}); using the legacy epoll driver"
                );
            }),
        }
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut rt) => rt.block_on(worker_main(id, listeners, mesh, shared, log)),
        Err(e) => {
            log.event(LogLevel::Error, Kind::Lifecycle, |b| {
                let _ = write!(b, "cannot start any runtime: {e}");
            });
            log.flush();
            std::process::exit(1);
        }
    }
}

async fn worker_main(
    id: usize,
    listeners: Vec<std::net::TcpListener>,
    mesh: Mesh<GossipMsg>,
    shared: Owned,
    log: Rc<ErrorLog>,
) {
    let Owned {
        config,
        stop,
        log_file,
        metrics_tx,
        generation,
        tls,
        upstream_tls,
        schemas,
        auth,
        fleet_status,
        dns,
    } = shared;
    let workers = mesh.workers();
    let mut worker = Worker::new(id, workers, config, log_file, log, generation);
    worker.schemas = schemas;
    worker.tls = tls
        .iter()
        .map(|t| t.as_ref().map(ListenerTlsConfig::for_worker))
        .collect();
    for (upstream, tls) in worker.upstreams.iter_mut().zip(upstream_tls.iter()) {
        upstream.tls = tls.clone();
    }
    worker.auth = crate::auth::RouteGuard::for_worker(&auth);
    worker.fleet_status = fleet_status;
    if let Some((rx, status)) = dns {
        worker.dns_rx = Some(rx);
        worker.dns_status = Some(status);
    }
    // The resolver's first answers are queued already: the worker serves
    // with them from its first request.
    crate::dns::apply(&worker, std::time::Instant::now());
    let worker = Rc::new(worker);
    if id == 0 && worker.fleet_status.is_some() {
        monoio::spawn(crate::fleet::sync_loop(worker.clone()));
    }
    // Each backend with active checks is probed by exactly one worker.
    for (u, upstream) in worker.config.upstreams.iter().enumerate() {
        if upstream.health_check.is_some() {
            for b in 0..upstream.slot_count() {
                if health::prober_of(u, b, workers) == id {
                    monoio::spawn(health::probe_loop(worker.clone(), u, b));
                }
            }
        }
    }
    let ticker = Rc::new(Ticker::new(
        worker.clone(),
        Gossip::new(mesh),
        stop,
        metrics_tx,
    ));
    monoio::spawn(ticker.clone().run());
    monoio::spawn(crate::idle::reap(worker.idle_deadlines.clone()));
    let mut loops = Vec::new();
    for (index, std_listener) in listeners.into_iter().enumerate() {
        match monoio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => loops.push(monoio::spawn(accept_loop(worker.clone(), index, listener))),
            Err(e) => {
                worker
                    .error_log
                    .event(LogLevel::Error, Kind::Lifecycle, |b| {
                        let _ = write!(b, "listener {index}: {e}");
                    });
                worker.error_log.flush();
                std::process::exit(1);
            }
        }
    }
    // The accept loops end when the drain starts.
    for handle in loops {
        handle.await;
    }
    let deadline = Instant::now() + worker.config.server.drain_timeout;
    while worker.connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    let left = worker.connections.get();
    if left > 0 {
        worker
            .error_log
            .event(LogLevel::Warn, Kind::Lifecycle, |b| {
                let _ = write!(b, "drain_timeout reached, closing {left} connection(s)");
            });
    }
    worker.flush_access_log();
    ticker.finish();
    worker.error_log.tick();
    // Returning ends the runtime: what is left is dropped, and dropping an
    // in-flight io_uring operation cancels it.
}

/// A connection as accepted.
struct Accepted {
    slot: ConnectionSlot,
    protocol: ListenerProtocol,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
    ctl: Rc<ConnControl>,
}

/// One accepted connection's task. What a connection does only while it
/// is busy (reading a PROXY header, a TLS handshake, an exchange, an L4
/// relay) runs in futures boxed for that while, so the task itself, which
/// lives as long as the connection, is sized for its idle wait: an idle
/// keep-alive client costs little more than its socket. (Its start comes
/// boxed too: an async fn keeps its arguments for its whole life.)
async fn serve_connection(accepted: Box<Accepted>) {
    let Some((slot, started)) = Box::pin(open_connection(*accepted)).await else {
        return;
    };
    match started {
        Started::Http(Opened::Http1(d)) => {
            if let Some(tunnel) = downstream::serve(&slot.worker, slot.listener, d).await {
                // The tunnel goes on in a task of its own, sized for its
                // relay, still counted (`slot`).
                monoio::spawn(tunnel::run_upgraded(slot.worker.clone(), tunnel, slot));
            }
        }
        Started::Http(Opened::Http2(h2)) => {
            let Http2Start { r, w, conn } = *h2;
            Box::pin(http2::serve(slot.worker.clone(), r, w, conn)).await;
        }
        Started::Tcp(tcp) => {
            let TcpStart {
                upstream,
                stream,
                addrs,
            } = *tcp;
            let worker = slot.worker.clone();
            Box::pin(tunnel::serve(
                worker,
                slot.listener,
                upstream,
                stream,
                addrs,
            ))
            .await;
        }
    }
}

/// A connection after its set-up, for its protocol's loop, which runs
/// once the set-up's future is dropped: it is not kept for the life of a
/// long connection (6.6 KiB per HTTP/2 or L4 connection when it was).
enum Started {
    Http(Opened),
    /// A `tcp` listener's connection, for [`tunnel::serve`]; boxed, as
    /// the task of every connection would otherwise make room for it.
    Tcp(Box<TcpStart>),
}

/// What a `tcp` listener's relay starts from.
struct TcpStart {
    upstream: usize,
    stream: monoio::net::TcpStream,
    addrs: ConnAddrs,
}

/// A connection's start: its PROXY header, then its protocol's set-up.
async fn open_connection(a: Accepted) -> Option<(ConnectionSlot, Started)> {
    let worker = a.slot.worker.clone();
    let index = a.slot.listener;
    let addrs = proxy_protocol::accept(&worker, index, &a.stream, a.peer).await?;
    match a.protocol {
        ListenerProtocol::Http => downstream::open(&worker, index, a.stream, addrs, a.ctl)
            .await
            .map(|opened| (a.slot, Started::Http(opened))),
        ListenerProtocol::Tcp { upstream } => Some((
            a.slot,
            Started::Tcp(Box::new(TcpStart {
                upstream,
                stream: a.stream,
                addrs,
            })),
        )),
    }
}

async fn accept_loop(worker: Rc<Worker>, index: usize, listener: monoio::net::TcpListener) {
    let mut errors = AcceptErrors::default();
    loop {
        if worker.draining.get() {
            // A connection accepted as the drain began was served below;
            // the clients the cancelled accept owed are served too. Then
            // the loop ends and dropping the listener closes this
            // worker's duplicate of the socket.
            while let Some(Ok((stream, peer))) = accept::take_queued(&listener).await {
                admit(&worker, index, stream, peer);
            }
            return;
        }
        let cancel = worker.accept_canceller.borrow().handle();
        match listener.cancelable_accept(cancel).await {
            Ok((stream, peer)) => {
                errors.recovered();
                admit(&worker, index, stream, peer);
            }
            // The accept the drain cancelled.
            Err(_) if worker.draining.get() => {}
            Err(e) => {
                // Out of descriptors, the pending client waits in the accept
                // queue: an idle keep-alive connection gives it one back.
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    worker.close_longest_idle();
                }
                let pause = errors.failed(&worker.error_log, &e);
                monoio::time::sleep(pause).await;
            }
        }
    }
}

/// Serves an accepted connection in a task of its own, or refuses it when
/// the worker or its listener is at its connection limit.
fn admit(worker: &Rc<Worker>, index: usize, stream: monoio::net::TcpStream, peer: SocketAddr) {
    let max = worker.config.server.max_connections_per_worker;
    let listener_max = worker.config.listeners[index].max_connections_per_worker;
    // A full worker gives a new client the place of its longest-idle
    // keep-alive connection; the count may exceed `max` by the connections
    // being closed, for a turn of the loop. With none idle it refuses.
    if worker.connections.get() >= max && !worker.close_longest_idle() {
        Counters::bump(&worker.counters.refused);
        // Shed load at the door rather than degrade every connection; say
        // so once per episode.
        if !worker.over_limit_logged.replace(true) {
            worker
                .error_log
                .event(LogLevel::Warn, Kind::ConnectionLimit, |b| {
                    let _ = write!(b, "max_connections_per_worker ({max}) reached, refusing");
                });
        }
        return;
    }
    // The listener's own cap sheds nothing: its connections may be busy
    // tunnels, not idle keep-alive ones.
    let of_listener = &worker.listener_connections[index];
    if listener_max.is_some_and(|cap| of_listener.get() >= cap) {
        Counters::bump(&worker.counters.refused);
        if !worker.over_limit_logged.replace(true) {
            worker
                .error_log
                .event(LogLevel::Warn, Kind::ConnectionLimit, |b| {
                    let _ = write!(
                        b,
                        "listener {} at its max_connections_per_worker ({}), refusing",
                        worker.config.listeners[index].name,
                        listener_max.unwrap_or_default()
                    );
                });
        }
        return;
    }
    worker.over_limit_logged.set(false);
    Counters::bump(&worker.counters.accepted);
    worker.connections.set(worker.connections.get() + 1);
    of_listener.set(of_listener.get() + 1);
    let ctl = Rc::new(ConnControl::default());
    let key = worker.conns.borrow_mut().insert(ctl.clone());
    let slot = ConnectionSlot {
        worker: worker.clone(),
        key,
        listener: index,
    };
    monoio::spawn(serve_connection(Box::new(Accepted {
        slot,
        protocol: worker.config.listeners[index].protocol,
        stream,
        peer,
        ctl,
    })));
}

/// Accept failures of one accept loop: how long to pause, and when to say so.
#[derive(Default)]
struct AcceptErrors {
    backoff: Duration,
    last_logged: Option<Instant>,
    /// Failures since the last line.
    unlogged: u64,
}

impl AcceptErrors {
    /// Counts a failure, logs it (rate-limited) and returns the pause.
    fn failed(&mut self, log: &ErrorLog, e: &io::Error) -> Duration {
        self.backoff = (self.backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_EVERY)
        {
            let more = self.unlogged - 1;
            log.event(LogLevel::Error, Kind::Accept, |b| {
                let _ = write!(b, "{e}");
                if let Some(errno) = e.raw_os_error() {
                    let _ = write!(b, " errno={}", Errno(errno));
                }
                if more > 0 {
                    let _ = write!(b, " ({more} more since the last line)");
                }
                let _ = write!(
                    b,
                    "; pausing accepts up to {} ms while it lasts",
                    ACCEPT_BACKOFF_MAX.as_millis()
                );
            });
            self.last_logged = Some(now);
            self.unlogged = 0;
        }
        self.backoff
    }

    fn recovered(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F: std::future::Future>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The task of every connection, kept alive or not, is sized for an
    /// idle connection's wait: a PROXY header's read and an L4 relay are
    /// boxed for their while.
    #[test]
    fn a_connections_task_is_sized_for_its_idle_wait() {
        let task = future_size(serve_connection);
        // 560 bytes when an L4 connection's start was kept unboxed in it:
        // 190 bytes more per idle HTTP/1.1 connection (idle-memory.sh).
        assert!(task <= 512, "serve_connection's future is {task} bytes");
    }

    /// Accepted sockets inherit TCP_NODELAY from the listener, so no
    /// connection pays a `setsockopt` of its own.
    #[test]
    fn an_accepted_connection_sends_without_nagles_delay() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 8).expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        listener.set_nonblocking(false).expect("blocking");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("TCP_NODELAY"));
    }
}
