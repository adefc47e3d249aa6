//! Fleet-wide rate limits: the task that syncs a node's consumption with
//! Redis, and how every worker follows whether Redis can be reached.
//!
//! Worker 0 runs [`sync_loop`] beside its connections when a route has
//! `scope = "fleet"`. Every `sync_interval` it takes the node's consumption
//! from its limiters (they count the other workers' through gossip), adds it
//! to the fleet's counters in one pipelined round trip on its own io_uring
//! socket (see `ringgate_core::fleet`), and charges what the other nodes
//! consumed to its buckets and, through its next gossip message, to the
//! other workers'. No request waits for Redis. A failed sync marks the node's
//! [`FleetStatus`] unreachable; each worker's ticker then switches its
//! fleet-scoped limiters to their `fleet_fallback` ([`follow_status`]), and
//! back once a sync succeeds again.

use std::io::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use ringgate_config::{Fleet, FleetFallback, LogLevel};
use ringgate_core::fleet::{self as ledger, Ledger, Reply};
use ringgate_core::ratelimit::Verdicts;

use crate::error_log::Kind;
use crate::io::{Abort, ReadFail, WriteFail};
use crate::state::Worker;
use crate::stream::{StreamReader, StreamWriter};
use crate::tls::{self, UpstreamTlsConfig};

/// Counters live this long in Redis after their last sync: a node that
/// comes back within it carries on; a key nobody uses for this long goes.
const COUNTER_TTL: Duration = Duration::from_secs(60);
/// A counter no node consumed for this long is let go of by the ledger.
const FORGET_QUIET: Duration = Duration::from_secs(10);
/// The replies of one sync: two small integers per counter. Past this the
/// server is not Redis or not well.
const MAX_REPLY_BYTES: usize = 16 << 20;
const READ_CHUNK: usize = 16 << 10;

/// Whether the node's fleet syncer reaches Redis: written by worker 0's
/// syncer after each sync, read by every worker's ticker. One per config
/// generation.
#[derive(Debug)]
pub struct FleetStatus {
    reachable: AtomicBool,
}

impl Default for FleetStatus {
    fn default() -> Self {
        // Until a sync says otherwise: a node starts on its buckets.
        FleetStatus {
            reachable: AtomicBool::new(true),
        }
    }
}

impl FleetStatus {
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn set(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }
}

/// Switches this worker's fleet-scoped limiters to their fallback when
/// Redis became unreachable, and back when it is reached again. Called on
/// every tick; does nothing when nothing changed.
pub fn follow_status(worker: &Worker, now: Instant) {
    let (Some(status), Some(fleet)) = (&worker.fleet_status, &worker.config.fleet) else {
        return;
    };
    let down = !status.reachable();
    if down == worker.fleet_fallback_on.get() {
        return;
    }
    worker.fleet_fallback_on.set(down);
    for (route, limiter) in worker.config.routes.iter().zip(&worker.limiters) {
        let (Some(limit), Some(limiter)) = (&route.rate_limit, limiter) else {
            continue;
        };
        let Some(scope) = &limit.fleet else { continue };
        let mut limiter = limiter.borrow_mut();
        let (rate, burst) = (limit.rate_per_sec(), f64::from(limit.burst));
        match (down, scope.fallback) {
            (false, _) => {
                limiter.set_verdicts(Verdicts::Buckets);
                limiter.set_rate(rate, burst, now);
            }
            (true, FleetFallback::LocalShare) => {
                let nodes = f64::from(fleet.nodes);
                limiter.set_rate(rate / nodes, (burst / nodes).max(1.0), now);
            }
            (true, FleetFallback::Open) => limiter.set_verdicts(Verdicts::AdmitAll),
            (true, FleetFallback::Closed) => limiter.set_verdicts(Verdicts::RefuseAll),
        }
    }
}

/// Does this config have a route to sync?
pub fn has_fleet_routes(config: &ringgate_config::Config) -> bool {
    config.fleet.is_some()
        && config
            .routes
            .iter()
            .any(|r| r.rate_limit.as_ref().is_some_and(|l| l.fleet.is_some()))
}

/// Why a sync failed, for the log.
enum SyncError {
    Connect(String),
    Io(std::io::Error),
    TimedOut,
    Closed,
    Protocol(String),
    Refused(String),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Connect(why) => write!(f, "connect: {why}"),
            SyncError::Io(e) => write!(f, "{e}"),
            SyncError::TimedOut => write!(f, "no answer within fleet.timeout"),
            SyncError::Closed => write!(f, "connection closed by Redis"),
            SyncError::Protocol(why) => write!(f, "not a RESP2 reply: {why}"),
            SyncError::Refused(why) => write!(f, "Redis answered {why}"),
        }
    }
}

/// Worker 0's fleet syncer: runs for as long as the worker's runtime.
pub async fn sync_loop(worker: Rc<Worker>) {
    let Some(fleet) = worker.config.fleet.clone() else {
        return;
    };
    let Some(status) = worker.fleet_status.clone() else {
        return;
    };
    let names: Vec<&str> = worker
        .config
        .routes
        .iter()
        .map(|r| {
            r.rate_limit
                .as_ref()
                .and_then(|l| l.fleet.as_ref())
                .map_or("", |f| f.counter.as_str())
        })
        .collect();
    let fleet_routes = names.iter().filter(|n| !n.is_empty()).count().max(1);
    let forget_after = (FORGET_QUIET.as_micros() / fleet.sync_interval.as_micros().max(1)) as u32;
    let mut ledger = Ledger::new(
        worker.config.server.rate_limit_max_keys * fleet_routes,
        forget_after,
    );
    let ttl_ms = COUNTER_TTL.as_millis() as u64;
    // Checked when the config was (`ringgate check`, start, reload).
    let tls = match fleet
        .tls
        .as_ref()
        .map(|t| tls::load_upstream("fleet.tls", t, tls::ClientAlpn::None))
    {
        None => None,
        Some(Ok(tls)) => Some(tls),
        Some(Err(why)) => {
            worker.error_log.event(LogLevel::Error, Kind::Fleet, |b| {
                let _ = write!(
                    b,
                    "{why}; fleet-scoped rate limits use their fleet_fallback"
                );
            });
            status.set(false);
            return;
        }
    };
    let mut conn: Option<RedisConn> = None;
    let mut out = Vec::new();
    let mut replies = Vec::new();
    let mut input = Vec::with_capacity(READ_CHUNK);
    let mut reachable = true;
    loop {
        monoio::time::sleep(fleet.sync_interval).await;
        for (route, limiter) in worker.limiters.iter().enumerate() {
            if let (Some(limiter), false) = (limiter, names[route].is_empty()) {
                limiter
                    .borrow_mut()
                    .take_node_usage(|key, tokens| ledger.add(route as u32, key, tokens));
            }
        }
        let expected = ledger.begin_sync(&mut out, fleet.key_prefix.as_bytes(), &names, ttl_ms);
        let result = sync_once(
            &fleet,
            tls.as_ref(),
            &mut conn,
            &mut out,
            expected,
            &mut input,
            &mut replies,
        )
        .await;
        let now = Instant::now();
        match result {
            Ok(()) => {
                worker
                    .counters
                    .fleet_syncs
                    .set(worker.counters.fleet_syncs.get() + 1);
                let mut news = worker.fleet_news.borrow_mut();
                ledger.finish_sync(&replies, |id, others| {
                    let tokens = u32::try_from(others).unwrap_or(u32::MAX);
                    if let Some(Some(limiter)) = worker.limiters.get(id.route as usize) {
                        limiter.borrow_mut().charge_remote(&id.key, tokens, now);
                    }
                    if worker.workers > 1 {
                        news.push((id.route, id.key.clone(), tokens));
                    }
                });
                if !reachable {
                    reachable = true;
                    log_transition(&worker, &fleet, None);
                }
            }
            Err(why) => {
                conn = None;
                ledger.abort_sync();
                worker
                    .counters
                    .fleet_failures
                    .set(worker.counters.fleet_failures.get() + 1);
                if reachable {
                    reachable = false;
                    log_transition(&worker, &fleet, Some(&why));
                }
            }
        }
        status.set(reachable);
        follow_status(&worker, now);
    }
}

fn log_transition(worker: &Worker, fleet: &Fleet, failure: Option<&SyncError>) {
    let addr = fleet.redis;
    match failure {
        Some(why) => worker.error_log.event(LogLevel::Warn, Kind::Fleet, |b| {
            let _ = write!(
                b,
                "Redis at {addr} unreachable ({why}); fleet-scoped rate limits use their fleet_fallback until it is back"
            );
        }),
        None => worker.error_log.event(LogLevel::Info, Kind::Fleet, |b| {
            let _ = write!(
                b,
                "Redis at {addr} reachable again; fleet-scoped rate limits are fleet-wide again"
            );
        }),
    }
}

/// The syncer's connection to Redis: plain TCP, or TLS over it for
/// `rediss://`. Its reads and writes are the worker's own io_uring ops.
struct RedisConn {
    r: StreamReader,
    w: StreamWriter,
    /// Never aborted: the sync's own deadline ends a wait.
    read_abort: Abort,
    write_abort: Abort,
}

/// One sync: (re)connects if need be, sends the pipeline in `out` and reads
/// `expected` replies into `replies`, all within `fleet.timeout`.
async fn sync_once(
    fleet: &Fleet,
    tls: Option<&UpstreamTlsConfig>,
    conn: &mut Option<RedisConn>,
    out: &mut Vec<u8>,
    expected: usize,
    input: &mut Vec<u8>,
    replies: &mut Vec<Reply>,
) -> Result<(), SyncError> {
    // Every step waits for what is left of one deadline.
    let deadline = Instant::now() + fleet.timeout;
    if conn.is_none() {
        *conn = Some(open(fleet, tls, deadline, input, replies).await?);
    }
    if expected == 0 {
        return Ok(());
    }
    let stream = conn.as_mut().ok_or(SyncError::Closed)?;
    round_trip(stream, out, expected, deadline, input, replies).await?;
    // NOAUTH, OOM, a read-only replica...: this Redis cannot count.
    match replies.iter().find(|r| matches!(r, Reply::Error(_))) {
        Some(Reply::Error(why)) => Err(SyncError::Refused(why.clone())),
        _ => Ok(()),
    }
}

/// Connects (with the TLS handshake for `rediss://`), and sends `AUTH` and
/// `SELECT` when the config asks for them.
async fn open(
    fleet: &Fleet,
    tls: Option<&UpstreamTlsConfig>,
    deadline: Instant,
    input: &mut Vec<u8>,
    replies: &mut Vec<Reply>,
) -> Result<RedisConn, SyncError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let tcp = match monoio::time::timeout(left, TcpStream::connect_addr(fleet.redis)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(SyncError::Connect(e.to_string())),
        Err(_) => return Err(SyncError::TimedOut),
    };
    // A sync is a few hundred bytes: send it now, not after an ACK.
    let _ = tcp.set_nodelay(true);
    let (r, w) = tcp.into_split();
    let (read_abort, write_abort) = (Abort::default(), Abort::default());
    let (r, w) = match tls {
        None => (StreamReader::Plain(r), StreamWriter::Plain(w)),
        Some(tls) => {
            let name = tls.name_for(fleet.redis);
            let left = deadline.saturating_duration_since(Instant::now());
            let config = tls.config.clone();
            match tls::connect(r, w, config, name, left, &read_abort, &write_abort).await {
                Ok((r, w)) => (StreamReader::Tls(r), StreamWriter::Tls(w)),
                Err(e) => return Err(SyncError::Connect(format!("TLS handshake: {e}"))),
            }
        }
    };
    let mut stream = RedisConn {
        r,
        w,
        read_abort,
        write_abort,
    };
    let mut hello = Vec::new();
    let mut expected = 0;
    if let Some(password) = &fleet.password {
        match &fleet.username {
            Some(user) => {
                ledger::encode(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()])
            }
            None => ledger::encode(&mut hello, &[b"AUTH", password.as_bytes()]),
        }
        expected += 1;
    }
    if fleet.database != 0 {
        let db = fleet.database.to_string();
        ledger::encode(&mut hello, &[b"SELECT", db.as_bytes()]);
        expected += 1;
    }
    if expected > 0 {
        round_trip(&mut stream, &mut hello, expected, deadline, input, replies).await?;
        if let Some(Reply::Error(why)) = replies.iter().find(|r| matches!(r, Reply::Error(_))) {
            return Err(SyncError::Refused(why.clone()));
        }
    }
    Ok(stream)
}

/// Writes `out` and reads `expected` replies into `replies`.
async fn round_trip(
    stream: &mut RedisConn,
    out: &mut Vec<u8>,
    expected: usize,
    deadline: Instant,
    input: &mut Vec<u8>,
    replies: &mut Vec<Reply>,
) -> Result<(), SyncError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let len = out.len();
    let (written, buf) = stream
        .w
        .send_range(std::mem::take(out), 0..len, left, &stream.write_abort)
        .await;
    *out = buf;
    written.map_err(|e| match e {
        WriteFail::TimedOut | WriteFail::Aborted => SyncError::TimedOut,
        WriteFail::Io(kind) => SyncError::Io(kind.into()),
    })?;
    replies.clear();
    input.clear();
    let mut parsed = 0;
    while replies.len() < expected {
        loop {
            match ledger::decode(&input[parsed..]) {
                Ok(Some((reply, used))) => {
                    parsed += used;
                    replies.push(reply);
                    if replies.len() == expected {
                        break;
                    }
                }
                Ok(None) => break,
                Err(why) => return Err(SyncError::Protocol(why)),
            }
        }
        if replies.len() == expected {
            break;
        }
        if input.len() >= MAX_REPLY_BYTES {
            return Err(SyncError::Protocol(format!(
                "more than {MAX_REPLY_BYTES} bytes of replies"
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match stream
            .r
            .read_more(input, READ_CHUNK / 4, left, &stream.read_abort)
            .await
        {
            Ok(0) => return Err(SyncError::Closed),
            Ok(_) => {}
            Err(ReadFail::TimedOut | ReadFail::Aborted) => return Err(SyncError::TimedOut),
            Err(ReadFail::Io(kind)) => return Err(SyncError::Io(kind.into())),
        }
    }
    // Anything after the last reply was not asked for: start clean.
    if parsed < input.len() {
        return Err(SyncError::Protocol("bytes after the last reply".into()));
    }
    Ok(())
}
