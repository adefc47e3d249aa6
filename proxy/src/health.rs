//! Active health checks. Each backend with a `health_check` is probed by
//! exactly one worker (`prober_of`), which applies transitions to its own
//! view and hands them to its ticker's gossip round for the others. Slots
//! of DNS names are probed at their current address, empty ones not at all.

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use ringgate_config::{HealthCheck, Http2, LogLevel, ProxyProtocolVersion, UpstreamProtocol};
use ringgate_core::backend_view::{HealthState, Transition};
use ringgate_core::http::{parse_response, HeadLimits, HeadScratch};
use rustls::pki_types::ServerName;

use crate::error_log::Kind;
use crate::h2_upstream;
use crate::io::Abort;
use crate::proxy_protocol;
use crate::state::Worker;
use crate::stream::{StreamReader, StreamWriter};
use crate::tls::{self, UpstreamTlsConfig};
use crate::upstream::connect;

/// A health response head larger than this is a failed probe.
const PROBE_HEAD_LIMIT: usize = 8 * 1024;

/// The worker that probes backend `b` of upstream `u`: spread over workers,
/// the same answer on every worker.
pub fn prober_of(u: usize, b: usize, workers: usize) -> usize {
    (u + b) % workers.max(1)
}

/// Probes slot `b` of upstream `u` every `interval` for as long as the
/// worker runs. A DNS name's slot is followed: an empty slot is not probed,
/// and a slot that took another address starts its rise/fall count afresh
/// (the view did the same when the address changed).
pub async fn probe_loop(worker: Rc<Worker>, u: usize, b: usize) {
    let upstream = &worker.upstreams[u];
    let Some(check) = upstream.config.health_check.clone() else {
        return;
    };
    let what = check.path.as_deref().unwrap_or("connect");
    let mut state = HealthState::new(check.rise, check.fall);
    let mut probed: Option<(u32, SocketAddr, String, Option<Vec<u8>>)> = None;
    loop {
        monoio::time::sleep(check.interval).await;
        let epoch = upstream.slot_epoch(b);
        let Some(addr) = upstream.slot_addr(b) else {
            probed = None;
            continue;
        };
        if probed.as_ref().is_none_or(|(e, ..)| *e != epoch) {
            let host = upstream.probe_host(b);
            let request = check.path.as_ref().map(|path| {
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringgate-health-check\r\nConnection: close\r\n\r\n",
                )
                .into_bytes()
            });
            state = HealthState::new(check.rise, check.fall);
            probed = Some((epoch, addr, host, request));
        }
        let Some((_, addr, host, request)) = &probed else {
            continue;
        };
        let addr = *addr;
        let h2 = (upstream.config.protocol == UpstreamProtocol::H2)
            .then_some((host.as_str(), &worker.config.http2));
        let ok = probe(
            addr,
            &check,
            request.clone(),
            upstream.tls.as_ref().map(|t| (t, upstream.tls_name(t, b))),
            upstream.config.send_proxy_protocol,
            h2,
        )
        .await;
        // The slot moved on while the probe ran: the result is not its.
        if upstream.slot_epoch(b) != epoch {
            continue;
        }
        if let Some(transition) = state.record_probe(ok) {
            let healthy = matches!(transition, Transition::BecameHealthy);
            let level = if healthy {
                LogLevel::Info
            } else {
                LogLevel::Warn
            };
            worker.error_log.event(level, Kind::Health, |b| {
                let _ = write!(
                    b,
                    "upstream {} backend {addr} is {} (health check {})",
                    upstream.config.name,
                    if healthy { "healthy" } else { "unhealthy" },
                    what
                );
            });
            upstream
                .view
                .borrow_mut()
                .apply_health(b, healthy, Instant::now());
            worker
                .pending_health
                .borrow_mut()
                .push((u as u32, b as u32, epoch, healthy));
        }
    }
}

/// One probe: the whole exchange must finish within `check.timeout` with
/// the expected status; without a `request` (no `path`), connecting (PROXY
/// header and TLS handshake included) is the whole probe.
async fn probe(
    addr: std::net::SocketAddr,
    check: &HealthCheck,
    request: Option<Vec<u8>>,
    tls: Option<(&UpstreamTlsConfig, ServerName<'static>)>,
    send_proxy_protocol: Option<ProxyProtocolVersion>,
    h2: Option<(&str, &Http2)>,
) -> bool {
    let deadline = Instant::now() + check.timeout;
    let Ok(stream) = connect(addr, check.timeout).await else {
        return false;
    };
    let (r, mut w) = stream.into_split();
    let abort = Abort::default();
    let write_abort = Abort::default();
    // A backend that expects a PROXY header would refuse a probe without
    // one: the probe's names no client.
    if let Some(version) = send_proxy_protocol {
        let left = deadline.saturating_duration_since(Instant::now());
        if proxy_protocol::send(&mut w, version, None, left, &write_abort)
            .await
            .is_err()
        {
            return false;
        }
    }
    // A TLS upstream is probed over TLS, as its requests go: a backend
    // whose certificate stopped verifying is unhealthy.
    let (mut r, mut w) = match tls {
        None => (StreamReader::Plain(r), StreamWriter::Plain(w)),
        Some((t, name)) => {
            let left = deadline.saturating_duration_since(Instant::now());
            match tls::connect(r, w, t.config.clone(), name, left, &abort, &write_abort).await {
                Ok((r, w)) => (StreamReader::Tls(r), StreamWriter::Tls(w)),
                Err(_) => return false,
            }
        }
    };
    let Some(request) = request else {
        w.close(
            deadline.saturating_duration_since(Instant::now()),
            &write_abort,
        )
        .await;
        return true;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if let Some((authority, settings)) = h2 {
        let path = check.path.as_deref().unwrap_or("/");
        let expect = check.expect_status;
        return h2_upstream::probe(r, w, settings, authority, path, expect, left).await;
    }
    let len = request.len();
    let (res, _) = w.send_range(request, 0..len, left, &write_abort).await;
    if res.is_err() {
        return false;
    }
    let mut scratch = HeadScratch::default();
    let limits = HeadLimits {
        max_head_bytes: PROBE_HEAD_LIMIT,
        max_headers: 100,
    };
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Ok(Some(head)) = parse_response(&buf, limits, false, &mut scratch) {
            return head.status == check.expect_status;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left == Duration::ZERO || buf.len() >= PROBE_HEAD_LIMIT {
            return false;
        }
        let res = r.read_more(&mut buf, 1024, left, &abort).await;
        if !matches!(res, Ok(n) if n > 0) {
            return false;
        }
    }
}
