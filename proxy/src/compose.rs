//! API composition (`compose` on a route): one client request fanned out to
//! several upstreams at once, each a `GET` through that upstream's balancer,
//! health, outlier view and connection pool, their JSON bodies merged into
//! one object under each call's key (KrakenD's aggregation). The calls run
//! concurrently on the worker, so the answer takes as long as the slowest
//! call, not their sum; one deadline covers them all.

use std::io::Write as _;
use std::time::Instant;

use ringgate_config::{Compose, ComposeCall};
use ringgate_core::backend_view::Outcome;
use ringgate_core::chunked::ChunkedDecoder;
use ringgate_core::http::{parse_response, HeadScratch, ResponseBody};
use ringgate_core::proxy_protocol::ConnAddrs;

use crate::io::{Abort, ReadFail};
use crate::state::Worker;
use crate::upstream::UpstreamState;

/// Read size of a call's response.
const READ_BYTES: usize = 16 * 1024;

/// The merged answer: the JSON object's bytes and whether every call
/// succeeded. `Err`: a call failed and the route does not take partial
/// answers, with what failed.
pub async fn run(
    worker: &Worker,
    compose: &Compose,
    conn: ConnAddrs,
) -> Result<(Vec<u8>, bool), String> {
    let deadline = Instant::now() + compose.timeout;
    let calls = compose
        .calls
        .iter()
        .map(|call| one_call(worker, call, compose.max_body, deadline, conn));
    let results = futures_util::future::join_all(calls).await;
    // Written by hand, in the calls' order, each body as the backend sent
    // it (already checked to be one JSON value).
    let mut merged = Vec::with_capacity(64 + results.iter().flatten().map(Vec::len).sum::<usize>());
    merged.push(b'{');
    let mut complete = true;
    for (i, (call, result)) in compose.calls.iter().zip(results).enumerate() {
        if i > 0 {
            merged.push(b',');
        }
        serde_json::to_writer(&mut merged, &call.key).map_err(|e| e.to_string())?;
        merged.push(b':');
        match result {
            Ok(value) => merged.extend_from_slice(value.trim_ascii()),
            Err(why) if compose.partial => {
                complete = false;
                merged.extend_from_slice(b"null");
                worker.error_log.event(
                    ringgate_config::LogLevel::Warn,
                    crate::error_log::Kind::AttemptFailed,
                    |b| {
                        let _ = write!(
                            b,
                            "compose call {:?} failed: {why}; answered without it",
                            call.key
                        );
                    },
                );
            }
            Err(why) => return Err(format!("compose call {:?} failed: {why}", call.key)),
        }
    }
    merged.push(b'}');
    Ok((merged, complete))
}

/// One call, under the shared deadline: its body, checked to be one JSON
/// value.
async fn one_call(
    worker: &Worker,
    call: &ComposeCall,
    max_body: usize,
    deadline: Instant,
    conn: ConnAddrs,
) -> Result<Vec<u8>, String> {
    let upstream = &worker.upstreams[call.upstream];
    let now = Instant::now();
    let backend = upstream
        .pick(None, None, now)
        .ok_or("no healthy backend available")?;
    upstream.count_request();
    upstream.on_start(backend, now);
    let left = deadline.saturating_duration_since(now);
    // Past the deadline the call is dropped: its connection closes.
    let fetched = monoio::time::timeout(left, fetch(upstream, backend, call, max_body, conn))
        .await
        .map_err(|_| ());
    let outcome = match &fetched {
        Ok(Ok(_)) => Outcome::Success {
            latency_us: now.elapsed().as_micros() as u64,
        },
        Ok(Err(Failure::Status(s))) if *s >= 500 => Outcome::Status5xx,
        Ok(Err(Failure::Connect(_))) => Outcome::ConnectFailure,
        Ok(Err(Failure::Status(_) | Failure::Body(_))) => Outcome::Success {
            latency_us: now.elapsed().as_micros() as u64,
        },
        Ok(Err(Failure::Broken(_))) => Outcome::Reset,
        Err(()) => Outcome::Timeout,
    };
    upstream.on_end(backend, outcome, Instant::now());
    let body = match fetched {
        Ok(Ok(body)) => body,
        Ok(Err(f)) => return Err(f.to_string()),
        Err(()) => return Err(format!("no answer within {:?}", left)),
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .map_err(|e| format!("body is not JSON: {e}"))?;
    Ok(body)
}

enum Failure {
    Connect(&'static str),
    Broken(&'static str),
    Status(u16),
    Body(&'static str),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(why) | Failure::Broken(why) | Failure::Body(why) => f.write_str(why),
            Failure::Status(s) => write!(f, "upstream answered {s}"),
        }
    }
}

/// `GET path` on a connection to `backend`, the response body read whole
/// (at most `max_body` bytes); the connection goes back to the pool only
/// when the response ended cleanly.
async fn fetch(
    upstream: &UpstreamState,
    backend: usize,
    call: &ComposeCall,
    max_body: usize,
    client: ConnAddrs,
) -> Result<Vec<u8>, Failure> {
    let mut conn = upstream
        .checkout(backend, false, client)
        .await
        .map_err(|_| Failure::Connect("upstream connect failed"))?;
    let host = upstream.backend_addr(backend);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n",
        call.path
    )
    .into_bytes();
    let (read_abort, write_abort) = (Abort::default(), Abort::default());
    let timeout = upstream.config.send_timeout;
    let len = request.len();
    let (sent, _) = conn
        .w
        .send_range(request, 0..len, timeout, &write_abort)
        .await;
    sent.map_err(|_| Failure::Broken("upstream write failed"))?;
    let read_timeout = upstream.config.response_timeout;
    let mut buf = Vec::with_capacity(READ_BYTES);
    let mut scratch = HeadScratch::default();
    let limits = ringgate_core::http::HeadLimits {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
    };
    let head = loop {
        match parse_response(&buf, limits, false, &mut scratch) {
            Ok(Some(head)) if head.is_interim() => {
                buf.drain(..head.head_len);
            }
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(_) => return Err(Failure::Broken("invalid response head")),
        }
        match conn
            .r
            .read_more(&mut buf, READ_BYTES, read_timeout, &read_abort)
            .await
        {
            Ok(0) => return Err(Failure::Broken("upstream closed before a response")),
            Ok(_) => {}
            Err(ReadFail::TimedOut) => return Err(Failure::Broken("upstream response timed out")),
            Err(_) => return Err(Failure::Broken("upstream read failed")),
        }
    };
    if !(200..300).contains(&head.status) {
        return Err(Failure::Status(head.status));
    }
    let mut body = Vec::new();
    let mut at = head.head_len;
    let mut decoder = ChunkedDecoder::new(ringgate_core::chunked::ChunkLimits {
        max_line_bytes: 4096,
        max_trailer_bytes: 16 * 1024,
    })
    .with_max_body(max_body as u64);
    let clean = loop {
        let fresh = &buf[at..];
        let done = match head.body {
            ResponseBody::Empty => true,
            ResponseBody::Length(n) => {
                let want = usize::try_from(n).unwrap_or(usize::MAX);
                if want > max_body {
                    return Err(Failure::Body("body larger than compose.max_body"));
                }
                let take = fresh.len().min(want - body.len());
                body.extend_from_slice(&fresh[..take]);
                at += take;
                body.len() == want
            }
            ResponseBody::Chunked => {
                let feed = decoder
                    .feed(fresh, &mut |p| body.extend_from_slice(p))
                    .map_err(|_| Failure::Body("invalid or oversized chunked body"))?;
                at += feed.consumed;
                feed.done
            }
            ResponseBody::UntilClose => {
                body.extend_from_slice(fresh);
                at = buf.len();
                if body.len() > max_body {
                    return Err(Failure::Body("body larger than compose.max_body"));
                }
                false
            }
        };
        if done {
            break head.reusable && at == buf.len();
        }
        buf.clear();
        at = 0;
        match conn
            .r
            .read_more(&mut buf, READ_BYTES, read_timeout, &read_abort)
            .await
        {
            Ok(0) if head.body == ResponseBody::UntilClose => break false,
            Ok(0) => return Err(Failure::Broken("upstream closed mid-body")),
            Ok(_) => {}
            Err(_) => return Err(Failure::Broken("upstream body read failed")),
        }
    };
    if clean {
        upstream.checkin(conn);
    }
    Ok(body)
}
