//! The request half of an exchange: the head as it goes upstream (the
//! parser's ranges plus a patch: rewritten request line, route edits,
//! forwarding fields) and the body streamed from the client to the backend
//! in bounded memory, every wait under a deadline.

use std::cell::Cell;
use std::ops::Range;
use std::time::{Duration, Instant};

use ringgate_config::{HashKey, HeaderEdits, Route};
use ringgate_core::chunked::{ChunkError, ChunkedDecoder};
use ringgate_core::http::{
    cookie_value, header_value, same_field_name, upgrade_protocol_name, via_names,
    write_request_line, write_request_patch, ForwardedClient, RequestBody, RequestHead, Version,
};

use super::error::{chunk_refusal, Fault, Refusal, KEEP_ALIVE_LINE};
use super::retry::Replay;
use super::{Buffers, Context};
use crate::io::{Abort, Part, ReadFail, WriteFail};
use crate::metrics::TunnelKind;
use crate::stream::{StreamReader, StreamWriter};
use crate::upstream::UpstreamState;

/// Read size while streaming bodies: large enough to amortise a syscall,
/// small enough to keep 10k connections cheap.
pub(super) const BODY_READ_BYTES: usize = 64 * 1024;

/// What of a body is still to come from its sender.
pub(super) enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// Of a body of `length` bytes, how much is already buffered (`available`
/// bytes follow the head) and what is still to come.
pub(super) fn length_body(available: usize, length: u64) -> (usize, Option<BodyLeft>) {
    let have = (available as u64).min(length);
    (
        have as usize,
        (length > have).then_some(BodyLeft::Length(length - have)),
    )
}

/// A request ready to go upstream.
pub(super) struct Plan {
    /// Bytes of the client buffer this request covers (head and the body
    /// bytes read with it).
    pub forwarded_len: usize,
    /// Body still to stream from the client, taken by the attempt that
    /// sends it.
    pub body_left: Option<BodyLeft>,
    /// The request asks to switch to a protocol the route allows: its
    /// index in the route's `upgrade`. A `101` naming that protocol turns
    /// the exchange into a tunnel ([`tunnel_kind`]).
    pub upgrade: Option<usize>,
    pub replay: Replay,
}

/// Who sent the request, as the upstream head tells it.
pub(super) struct Origin<'a> {
    pub addr: &'a ForwardedClient,
    /// `http` or `https`, for the forwarding fields.
    pub scheme: &'a str,
    /// The protocol the request came in, for `Via`.
    pub received: &'a str,
    /// The listener's mTLS subject header and the client's verified subject.
    pub subject: Option<(&'a str, Option<&'a str>)>,
    /// The route's auth and the caller's identity (see `Client::auth`).
    pub auth: Option<(
        &'a ringgate_core::auth::RouteAuth,
        &'a ringgate_core::auth::Identity,
    )>,
}

/// Builds the upstream head's patch in `bufs` and works out the body.
/// `Err`: a bad chunk already visible, refused before anything goes up.
pub(super) fn prepare(
    cx: &Context<'_>,
    bufs: &mut Buffers,
    route: &Route,
    upstream: &UpstreamState,
    head: &RequestHead,
    origin: Origin<'_>,
) -> Result<Plan, Refusal> {
    let Origin {
        addr: client,
        scheme,
        received,
        subject,
        auth,
    } = origin;
    let available = bufs.req.source.len() - head.head_len;
    let (initial_body, body_left) = match head.body {
        RequestBody::Empty => (0, None),
        RequestBody::Length(n) => length_body(available, n),
        RequestBody::Chunked => {
            // Check what is already here before anything goes upstream.
            let mut decoder = ChunkedDecoder::new(cx.chunk_limits)
                .with_max_body(route.checks.max_body.unwrap_or(u64::MAX));
            let feed = decoder
                .feed(&bufs.req.source[head.head_len..], &mut |_| {})
                .map_err(chunk_refusal)?;
            (
                feed.consumed,
                (!feed.done).then_some(BodyLeft::Chunked(decoder)),
            )
        }
    };
    if let Some(name) = cx.via {
        if via_names(&bufs.req.source, &bufs.req_scratch, name.as_bytes()) {
            // Forwarding it again would only come back again, each time
            // holding another pair of connections.
            return Err(Refusal::new(
                508,
                "request loop: it has already passed through this proxy",
            ));
        }
    }
    let replay = Replay::new(&bufs.req.source[head.method.clone()], body_left.is_none());
    let patch = &mut bufs.req.patch;
    patch.clear();
    bufs.patch_prefix = 0;
    let new_request_line =
        route.rewrite_prefix.is_some() || head.absolute_form || head.path_normalized;
    if new_request_line {
        // The target with the matched prefix replaced, or an absolute-form
        // target's path, in origin-form (RFC 9112 §3.2.1), as the request
        // line's first patch bytes.
        let replace = route
            .rewrite_prefix
            .as_ref()
            .map(|p| (route.path_prefix.len(), p.as_bytes()));
        write_request_line(patch, &bufs.req.source, head, replace);
        bufs.patch_prefix = patch.len();
    }
    write_set_fields(patch, &route.request_headers);
    if let Some(name) = cx.via {
        // After the client's own Via lines (forwarded as read): the list's
        // last element.
        patch.extend_from_slice(b"Via: ");
        patch.extend_from_slice(received.as_bytes());
        patch.push(b' ');
        patch.extend_from_slice(name.as_bytes());
        patch.extend_from_slice(b"\r\n");
    }
    if let Some(hops) = head.max_forwards {
        // Zero was answered here; this hop is spent.
        use std::io::Write as _;
        let _ = write!(patch, "Max-Forwards: {}\r\n", hops.saturating_sub(1));
    }
    let upgrade = upgrade_asked(route, &bufs.req.source[..head.head_len], head);
    if let Some((_, protocol)) = upgrade {
        // Hop-by-hop, so dropped from the forwarded fields: said again for
        // the backend, as the client said it.
        patch.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        patch.extend_from_slice(protocol);
        patch.extend_from_slice(b"\r\n");
    }
    // A request id made here goes up in place of the client's own.
    let made_id = cx.request_id.filter(|_| bufs.request_id_made);
    if let Some(name) = made_id {
        write_field(patch, name.as_bytes(), &bufs.request_id);
    }
    if let Some((name, Some(value))) = subject {
        patch.extend_from_slice(name.as_bytes());
        patch.extend_from_slice(b": ");
        patch.extend_from_slice(value.as_bytes());
        patch.extend_from_slice(b"\r\n");
    }
    if let Some((_, identity)) = auth {
        patch.extend_from_slice(&identity.lines);
    }
    let subject_name = subject.map(|(name, _)| name.as_bytes());
    if new_request_line
        || !route.request_headers.is_empty()
        || subject_name.is_some()
        || made_id.is_some()
        || auth.is_some()
    {
        // The request line and edited fields go as patch bytes instead; a
        // client's own copy of the subject header, or of a header auth
        // writes, never goes up.
        let edits = &route.request_headers;
        bufs.req_scratch
            .retain_lines(&bufs.req.source, !new_request_line, |name| {
                !edits.drops(name)
                    && subject_name.is_none_or(|s| !same_field_name(name, s))
                    && made_id.is_none_or(|n| !same_field_name(name, n.as_bytes()))
                    && auth.is_none_or(|(a, _)| !a.strips(name))
            });
    }
    if head.version == Version::Http10 {
        // The request line stays HTTP/1.0; without this the backend would
        // close the upstream connection after every such request.
        patch.extend_from_slice(KEEP_ALIVE_LINE.as_bytes());
    }
    write_request_patch(patch, &bufs.req.source, &bufs.req_scratch, client, scheme);
    bufs.hash_key.clear();
    bufs.has_hash_key = false;
    if let Some(hash_key) = &upstream.config.hash_key {
        if let Some(key) = balance_key(hash_key, &bufs.req.source[..head.head_len], client) {
            bufs.hash_key.extend_from_slice(key);
            bufs.has_hash_key = true;
        }
    }
    Ok(Plan {
        forwarded_len: head.head_len + initial_body,
        body_left,
        replay,
        upgrade: upgrade.map(|(allowed, _)| allowed),
    })
}

/// What a tunnel to one of a route's `upgrade` protocols counts as.
pub(super) fn tunnel_kind(protocol: &str) -> TunnelKind {
    if protocol.eq_ignore_ascii_case("websocket") {
        TunnelKind::WebSocket
    } else {
        TunnelKind::Upgrade
    }
}

/// For a bodiless HTTP/1.1 request whose one `Upgrade` protocol is one of
/// the route's and that says `Connection: upgrade` (RFC 9110 §7.8): that
/// protocol's index in the route's `upgrade`, and the `Upgrade` value.
/// HTTP/1.0 has no 101, and §7.8 has a server ignore its `Upgrade`.
fn upgrade_asked<'a>(
    route: &Route,
    fields: &'a [u8],
    head: &RequestHead,
) -> Option<(usize, &'a [u8])> {
    if route.upgrade.is_empty()
        || head.body != RequestBody::Empty
        || head.version == Version::Http10
    {
        return None;
    }
    let value = header_value(fields, b"upgrade")?;
    let protocol = upgrade_protocol_name(value);
    let allowed = route
        .upgrade
        .iter()
        .position(|p| protocol.eq_ignore_ascii_case(p.as_bytes()))?;
    let connection_says = header_value(fields, b"connection").is_some_and(|c| {
        c.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    (connection_says && !value.contains(&b',')).then_some((allowed, value))
}

/// Lays out the upstream head as segments: patched request line, kept
/// ranges, the rest of the patch, then the body bytes already read.
pub(super) fn lay_out_head(bufs: &mut Buffers, head_len: usize, forwarded_len: usize) {
    bufs.req.clear_segments();
    bufs.req.push(Part::Patch, 0..bufs.patch_prefix);
    for range in &bufs.req_scratch.forward {
        bufs.req.push(Part::Source, range.clone());
    }
    bufs.req
        .push(Part::Patch, bufs.patch_prefix..bufs.req.patch.len());
    bufs.req.push(Part::Source, head_len..forwarded_len);
}

/// One field line.
pub(super) fn write_field(patch: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    patch.extend_from_slice(name);
    patch.extend_from_slice(b": ");
    patch.extend_from_slice(value);
    patch.extend_from_slice(b"\r\n");
}

/// The field lines a route's `set` edits add to a head's patch.
pub(super) fn write_set_fields(patch: &mut Vec<u8>, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        patch.extend_from_slice(name.as_bytes());
        patch.extend_from_slice(b": ");
        patch.extend_from_slice(value.as_bytes());
        patch.extend_from_slice(b"\r\n");
    }
}

/// The bytes a consistent hash is keyed on; `None` when the request does
/// not carry them (it is then balanced like `random`, weighted).
fn balance_key<'a>(
    key: &'a HashKey,
    head: &'a [u8],
    client: &'a ForwardedClient,
) -> Option<&'a [u8]> {
    match key {
        HashKey::ClientIp => Some(client.ip_bytes()),
        HashKey::Header(name) => header_value(head, name.as_bytes()),
        HashKey::Cookie(name) => cookie_value(head, name.as_bytes()),
    }
}

/// The halves and deadlines `send_body` works with.
pub(super) struct Upload<'a> {
    pub client: &'a mut StreamReader,
    pub client_read_abort: &'a Abort,
    pub body_read_timeout: Duration,
    pub up: &'a mut StreamWriter,
    pub up_write_abort: &'a Abort,
    pub up_read_abort: &'a Abort,
    pub send_timeout: Duration,
    /// Cleared when the upload ends, however it ends.
    pub sending: &'a Cell<bool>,
    /// When body bytes last went upstream: the response deadline runs
    /// from there while the body uploads.
    pub progress: &'a Cell<Instant>,
}

/// Streams the rest of a request body from the client to the upstream.
/// Returns the range of `body` that belongs to the next request.
pub(super) async fn send_body(
    u: Upload<'_>,
    body: &mut Vec<u8>,
    mut left: BodyLeft,
) -> Result<Range<usize>, Fault> {
    let result = async {
        loop {
            body.clear();
            let n = match u
                .client
                .read_more(
                    body,
                    BODY_READ_BYTES,
                    u.body_read_timeout,
                    u.client_read_abort,
                )
                .await
            {
                Ok(0) | Err(ReadFail::Io(_)) => return Err(Fault::ClientGone),
                Ok(n) => n,
                Err(ReadFail::TimedOut) => return Err(Fault::BodyTimedOut),
                Err(ReadFail::Aborted) => return Err(Fault::Aborted),
            };
            let (take, done) = match &mut left {
                BodyLeft::Length(remaining) => {
                    let take = (n as u64).min(*remaining);
                    *remaining -= take;
                    (take as usize, *remaining == 0)
                }
                BodyLeft::Chunked(decoder) => {
                    let feed = decoder
                        .feed(&body[..n], &mut |_| {})
                        .map_err(|e: ChunkError| Fault::BadChunk(e))?;
                    (feed.consumed, feed.done)
                }
            };
            let (res, buf) =
                u.up.send_range(
                    std::mem::take(body),
                    0..take,
                    u.send_timeout,
                    u.up_write_abort,
                )
                .await;
            *body = buf;
            match res {
                Ok(()) => u.progress.set(Instant::now()),
                Err(WriteFail::TimedOut) => return Err(Fault::UpstreamSendTimedOut),
                Err(WriteFail::Aborted) => return Err(Fault::Aborted),
                Err(WriteFail::Io(_)) => return Err(Fault::UpstreamWriteFailed),
            }
            if done {
                return Ok(take..n);
            }
        }
    }
    .await;
    u.sending.set(false);
    if let Err(
        Fault::ClientGone | Fault::BodyTimedOut | Fault::BadChunk(_) | Fault::UpstreamSendTimedOut,
    ) = result
    {
        // The upstream holds half a request it will never complete (or has
        // stopped reading it): stop waiting for its answer. The connection
        // is dropped, not pooled. A failed write is different: the backend
        // may have closed after answering early, and that answer is read.
        u.up_read_abort.abort();
    }
    result
}
