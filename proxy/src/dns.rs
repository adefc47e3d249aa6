//! DNS discovery of backends: one resolver thread per config generation
//! follows every backend named by a host name (A and AAAA records) or a SRV
//! name, and hands each new address set to every worker through a bounded
//! crossbeam channel; each worker's ticker applies it to its slots
//! ([`UpstreamState::apply_dns`](crate::upstream::UpstreamState::apply_dns)).
//!
//! The thread blocks on plain std sockets (UDP, TCP when an answer is
//! truncated) with a deadline on every query: it runs beside the pinned
//! workers, never on them, and no request waits for it. Messages are
//! encoded and decoded with `hickory-proto`. Names are absolute: no search
//! list and no /etc/hosts, as a service's records are meant.
//!
//! A name is asked again when its records' TTL runs out, clamped to
//! `[dns] min_interval..=max_interval`. A failed or empty lookup keeps the
//! last good set, is counted (`ringgate_dns_lookup_failures_total`) and is
//! logged once when the name starts failing and once when it recovers.

use std::io::{Read, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use ringgate_config::{unusable_backend_address, BackendTarget, Config, Dns, LogLevel, WEIGHT_MAX};

use crate::error_log::{ErrorLog, Kind};
use crate::state::Worker;
use crate::stop::StopFlag;

/// A worker's end of the resolver's channel, drained by its ticker only
/// ([`apply`]), never by a request.
pub type UpdateRx = Receiver<Update>;

/// One backend entry's new address set, for every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub upstream: usize,
    pub entry: usize,
    /// Distinct, sorted, at most the entry's `max_addresses`; never empty.
    pub addrs: Vec<(SocketAddr, u32)>,
}

/// Lookups and failures per followed name, written by the resolver thread,
/// read by worker 0's snapshot for `/metrics` (never on the request path).
pub struct DnsStatus {
    /// (upstream name, backend name) per followed name.
    pub names: Vec<(String, String)>,
    lookups: Vec<AtomicU64>,
    failures: Vec<AtomicU64>,
}

impl DnsStatus {
    /// (upstream, name, lookups, failures) per followed name.
    pub fn counts(&self) -> Vec<(String, String, [u64; 2])> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, (u, n))| {
                let counts = [
                    self.lookups[i].load(Ordering::Relaxed),
                    self.failures[i].load(Ordering::Relaxed),
                ];
                (u.clone(), n.clone(), counts)
            })
            .collect()
    }
}

/// Room per worker channel beyond one message per name: updates queue only
/// while a worker is stalled, and one that stays full gets the newest set
/// once it drains (see `deliver`).
const QUEUE_SPARE: usize = 64;
/// How often the thread looks at its generation's stop flag while idle.
const STOP_POLL: Duration = Duration::from_millis(100);
/// A UDP answer without EDNS is at most 512 bytes; a TCP one at most 64 KiB.
const UDP_ANSWER_MAX: usize = 4096;
/// RFC 1035 §4.2.1's port.
const DNS_PORT: u16 = 53;

/// A backend entry the thread follows.
struct Followed {
    upstream: usize,
    entry: usize,
    target: BackendTarget,
    weight: u32,
    max_addresses: usize,
    /// The last good set (what the workers have, or will).
    current: Option<Vec<(SocketAddr, u32)>>,
    /// Workers that still need `current` (their channel was full).
    undelivered: Vec<bool>,
    due: Instant,
    failing: bool,
    truncated: bool,
}

/// The worker ends of the channels, and the counters.
pub struct Started {
    pub receivers: Vec<UpdateRx>,
    pub status: Arc<DnsStatus>,
}

/// With DNS backends in `config`: resolves every name once (so workers
/// start with the addresses that answered), then spawns the resolver
/// thread, which runs until `stop` is set. `None` without DNS backends.
pub fn start(
    config: &Config,
    workers: usize,
    stop: StopFlag,
    log: ErrorLog,
) -> std::io::Result<Option<Started>> {
    let mut followed = Vec::new();
    let mut names = Vec::new();
    for (u, upstream) in config.upstreams.iter().enumerate() {
        for (e, b) in upstream.backends.iter().enumerate() {
            if b.target.is_name() {
                names.push((upstream.name.clone(), b.target.to_string()));
                followed.push(Followed {
                    upstream: u,
                    entry: e,
                    target: b.target.clone(),
                    weight: b.weight,
                    max_addresses: b.max_addresses,
                    current: None,
                    undelivered: vec![false; workers],
                    due: Instant::now(),
                    failing: false,
                    truncated: false,
                });
            }
        }
    }
    if followed.is_empty() {
        return Ok(None);
    }
    let (senders, receivers): (Vec<Sender<Update>>, Vec<Receiver<Update>>) = (0..workers)
        .map(|_| crossbeam_channel::bounded(followed.len() + QUEUE_SPARE))
        .unzip();
    let status = Arc::new(DnsStatus {
        lookups: names.iter().map(|_| AtomicU64::new(0)).collect(),
        failures: names.iter().map(|_| AtomicU64::new(0)).collect(),
        names,
    });
    let resolver = Resolver::new(&config.dns);
    let mut thread = Thread {
        resolver,
        followed,
        senders,
        status: status.clone(),
        log,
        stop,
        min_interval: config.dns.min_interval,
        max_interval: config.dns.max_interval,
    };
    // The first round before the workers start: the channels hold it.
    thread.round(Instant::now());
    std::thread::Builder::new()
        .name("ringgate-dns".into())
        .spawn(move || thread.run())?;
    Ok(Some(Started { receivers, status }))
}

struct Thread {
    resolver: Resolver,
    followed: Vec<Followed>,
    senders: Vec<Sender<Update>>,
    status: Arc<DnsStatus>,
    log: ErrorLog,
    stop: StopFlag,
    min_interval: Duration,
    max_interval: Duration,
}

impl Thread {
    /// Until the generation drains, or every worker is gone (they each
    /// hold the status; a generation that failed to start never had any).
    fn run(mut self) {
        while !self.stop.requested() && Arc::strong_count(&self.status) > 1 {
            let now = Instant::now();
            self.round(now);
            let next = self
                .followed
                .iter()
                .map(|f| f.due)
                .min()
                .unwrap_or(now + STOP_POLL);
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(STOP_POLL);
            std::thread::sleep(wait);
        }
    }

    /// Looks up every name that is due and delivers what changed.
    fn round(&mut self, now: Instant) {
        for i in 0..self.followed.len() {
            if self.followed[i].due <= now {
                self.lookup(i);
            }
        }
        self.deliver();
        self.log.flush();
    }

    fn lookup(&mut self, i: usize) {
        self.status.lookups[i].fetch_add(1, Ordering::Relaxed);
        let f = &mut self.followed[i];
        let (upstream, name) = &self.status.names[i];
        let result = match &f.target {
            BackendTarget::Host { name, port } => self
                .resolver
                .host(name, *port)
                .map(|(ips, ttl)| (ips.into_iter().map(|a| (a, f.weight)).collect(), ttl)),
            BackendTarget::Srv { name } => self.resolver.srv(name),
            BackendTarget::Address(_) => return,
        };
        let result = result.and_then(|(mut set, ttl): (Vec<(SocketAddr, u32)>, u32)| {
            if set.is_empty() {
                return Err("no addresses in the answer".to_owned());
            }
            set.sort_unstable();
            set.dedup_by_key(|(a, _)| *a);
            Ok((set, ttl))
        });
        let now = Instant::now();
        match result {
            Ok((mut set, ttl)) => {
                let ttl = Duration::from_secs(u64::from(ttl));
                f.due = now + ttl.clamp(self.min_interval, self.max_interval);
                if f.failing {
                    f.failing = false;
                    self.log.event(LogLevel::Info, Kind::Dns, |b| {
                        let _ =
                            write!(b, "upstream={upstream} backend={name} lookups answer again");
                    });
                }
                let truncated = set.len() > f.max_addresses;
                if truncated && !f.truncated {
                    let (n, max) = (set.len(), f.max_addresses);
                    self.log.event(LogLevel::Warn, Kind::Dns, |b| {
                        let _ = write!(
                            b,
                            "upstream={upstream} backend={name} has {n} addresses; only the first {max} (max_addresses) are used"
                        );
                    });
                }
                f.truncated = truncated;
                set.truncate(f.max_addresses);
                if f.current.as_ref() != Some(&set) {
                    self.log.event(LogLevel::Info, Kind::Dns, |b| {
                        let _ = write!(b, "upstream={upstream} backend={name} addresses:");
                        for (a, w) in &set {
                            let _ = write!(b, " {a} (weight {w})");
                        }
                    });
                    f.current = Some(set);
                    f.undelivered.iter_mut().for_each(|u| *u = true);
                }
            }
            Err(why) => {
                self.status.failures[i].fetch_add(1, Ordering::Relaxed);
                f.due = now + self.min_interval;
                if !f.failing {
                    f.failing = true;
                    let kept = f.current.as_ref().map_or(0, Vec::len);
                    self.log.event(LogLevel::Warn, Kind::Dns, |b| {
                        let _ = write!(
                            b,
                            "upstream={upstream} backend={name} lookup failed ({why}); keeping the last {kept} address(es)"
                        );
                    });
                }
            }
        }
    }

    /// Sends each worker the sets it lacks. A full channel (a stalled
    /// worker) gets the newest set at a later round instead: the updates
    /// are whole sets, so skipping one loses nothing.
    fn deliver(&mut self) {
        for f in &mut self.followed {
            let Some(set) = &f.current else { continue };
            for (w, tx) in self.senders.iter().enumerate() {
                if !f.undelivered[w] {
                    continue;
                }
                let update = Update {
                    upstream: f.upstream,
                    entry: f.entry,
                    addrs: set.clone(),
                };
                match tx.try_send(update) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => f.undelivered[w] = false,
                    Err(TrySendError::Full(_)) => {}
                }
            }
        }
    }
}

/// Applies what the resolver sent since the last tick to the worker's
/// upstreams. Run by the ticker and once at start-up, never per request.
pub fn apply(worker: &Worker, now: Instant) {
    let Some(rx) = &worker.dns_rx else { return };
    while let Ok(update) = rx.try_recv() {
        if let Some(upstream) = worker.upstreams.get(update.upstream) {
            upstream.apply_dns(update.entry, &update.addrs, now);
        }
    }
}

/// Queries the configured nameservers (else resolv.conf's) in turn.
struct Resolver {
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
}

impl Resolver {
    fn new(dns: &Dns) -> Self {
        let nameservers = if dns.nameservers.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let found = resolv_conf_nameservers(&text);
            if found.is_empty() {
                vec![SocketAddr::from(([127, 0, 0, 1], DNS_PORT))]
            } else {
                found
            }
        } else {
            dns.nameservers.clone()
        };
        Resolver {
            nameservers,
            timeout: dns.timeout,
        }
    }

    /// The A and AAAA addresses of `name` with `port`, and the least TTL.
    /// Fails only when both queries fail.
    fn host(&self, name: &str, port: u16) -> Result<(Vec<SocketAddr>, u32), String> {
        let name = absolute(name)?;
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        let mut errors = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.query(&name, rtype) {
                Ok(reply) => {
                    for r in &reply.answers {
                        if let Some(address) = backend_at(&r.data, port) {
                            addrs.push(address);
                            ttl = ttl.min(r.ttl);
                        }
                    }
                }
                Err(e) => errors.push(format!("{rtype}: {e}")),
            }
        }
        if errors.len() == 2 {
            return Err(errors.join("; "));
        }
        Ok((addrs, ttl))
    }

    /// The targets of `name`'s SRV records of the lowest priority, at their
    /// ports, with their weights mapped into `1..=WEIGHT_MAX`.
    fn srv(&self, name: &str) -> Result<(Vec<(SocketAddr, u32)>, u32), String> {
        let qname = absolute(name)?;
        let reply = self.query(&qname, RecordType::SRV)?;
        let mut ttl = u32::MAX;
        let records: Vec<_> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                // RFC 2782: a target of "." means the service is not here.
                RData::SRV(srv) if !srv.target.is_root() => Some((srv, r.ttl)),
                _ => None,
            })
            .collect();
        let Some(priority) = records.iter().map(|(s, _)| s.priority).min() else {
            return Ok((Vec::new(), ttl));
        };
        let group: Vec<_> = records
            .into_iter()
            .filter(|(s, _)| s.priority == priority)
            .collect();
        let max_weight = group.iter().map(|(s, _)| s.weight).max().unwrap_or(0);
        let mut set = Vec::new();
        for (srv, record_ttl) in group {
            ttl = ttl.min(record_ttl);
            let weight = srv_weight(srv.weight, max_weight);
            // The server may put the targets' addresses in the additional
            // section; otherwise they are asked for.
            let mut found = false;
            for r in &reply.additionals {
                if r.name == srv.target {
                    if let Some(address) = backend_at(&r.data, srv.port) {
                        set.push((address, weight));
                        ttl = ttl.min(r.ttl);
                        found = true;
                    }
                }
            }
            if !found {
                let target = srv.target.to_ascii();
                let target = target.trim_end_matches('.');
                let (ips, host_ttl) = self.host(target, srv.port)?;
                ttl = ttl.min(host_ttl);
                set.extend(ips.into_iter().map(|a| (a, weight)));
            }
        }
        Ok((set, ttl))
    }

    /// The first answer from the nameservers in turn: NOERROR (records or
    /// none); NXDOMAIN, SERVFAIL and the like are errors.
    fn query(&self, name: &Name, rtype: RecordType) -> Result<Message, String> {
        let mut last = String::from("no nameserver");
        for &server in &self.nameservers {
            match self.query_one(server, name, rtype) {
                Ok(reply) => return Ok(reply),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(last)
    }

    fn query_one(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Message, String> {
        let deadline = Instant::now() + self.timeout;
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name.clone(), rtype));
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        let local = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
        socket.connect(server).map_err(|e| e.to_string())?;
        socket.send(&bytes).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; UDP_ANSWER_MAX];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".to_owned());
            }
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("timed out".to_owned())
                }
                Err(e) => return Err(e.to_string()),
            };
            // Anything but the answer to this query is ignored (RFC 5452).
            let Ok(reply) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if reply.metadata.id != msg.metadata.id
                || reply.metadata.message_type != MessageType::Response
                || reply.queries != msg.queries
            {
                continue;
            }
            if reply.metadata.truncation {
                return checked(query_tcp(server, &bytes, msg.metadata.id, deadline)?);
            }
            return checked(reply);
        }
    }
}

fn checked(reply: Message) -> Result<Message, String> {
    match reply.metadata.response_code {
        ResponseCode::NoError => Ok(reply),
        code => Err(format!("answered {code}")),
    }
}

/// RFC 1035 §4.2.2: the query again over TCP, each message after its
/// two-byte length.
fn query_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    deadline: Instant,
) -> Result<Message, String> {
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero())
            .then_some(left)
            .ok_or("timed out".to_owned())
    };
    let mut stream = TcpStream::connect_timeout(&server, left()?).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_owned())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(query);
    stream.write_all(&out).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .set_read_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&answer).map_err(|e| e.to_string())?;
    if reply.metadata.id != id {
        return Err("answer to another query".to_owned());
    }
    Ok(reply)
}

fn absolute(name: &str) -> Result<Name, String> {
    Name::from_ascii(format!("{name}.")).map_err(|e| format!("{name}: {e}"))
}

/// The backend address an A or AAAA record gives with `port`; `None` for
/// other records and for addresses no backend could be at (a sinkhole's
/// 0.0.0.0, multicast, port 0), which `check` refuses in a config too.
fn backend_at(data: &RData, port: u16) -> Option<SocketAddr> {
    let ip = match data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(a) => IpAddr::V6(a.0),
        _ => return None,
    };
    let address = SocketAddr::new(ip, port);
    unusable_backend_address(address)
        .is_none()
        .then_some(address)
}

/// A SRV weight (0..=65535) as a backend weight: kept when the group's
/// largest fits under `WEIGHT_MAX`, else scaled down to it; never below 1
/// (RFC 2782's weight 0 is "rarely", not "never").
fn srv_weight(weight: u16, max_weight: u16) -> u32 {
    let (w, max) = (u32::from(weight), u32::from(max_weight));
    let w = if max <= WEIGHT_MAX {
        w
    } else {
        w * WEIGHT_MAX / max
    };
    w.clamp(1, WEIGHT_MAX)
}

/// The `nameserver` lines of a resolv.conf, on port 53; a scoped IPv6
/// address (`fe80::1%eth0`) is skipped.
fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_weights_map_into_the_weight_range() {
        assert_eq!(srv_weight(0, 10), 1);
        assert_eq!(srv_weight(10, 10), 10);
        assert_eq!(srv_weight(1000, 1000), 1000);
        assert_eq!(srv_weight(65535, 65535), WEIGHT_MAX);
        assert_eq!(srv_weight(2000, 4000), 500);
        assert_eq!(srv_weight(1, 65535), 1);
    }

    #[test]
    fn resolv_conf_gives_its_nameservers_on_port_53() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver  ::1\nnameserver fe80::1%eth0\noptions ndots:2\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
