//! The response half of an exchange: reads the backend's response and
//! streams it to the client, interim responses included, with a deadline on
//! every read and write, and decides whether the upstream connection is
//! clean enough to pool.

use std::cell::Cell;
use std::time::{Duration, Instant};

use ringgate_config::HeaderEdits;
use ringgate_core::chunked::ChunkedDecoder;
use ringgate_core::http::{
    check_switching_head, parse_response, write_replaced_fields, HeadScratch, ResponseBody, Version,
};

use super::error::{ExchangeError, Fault, CLOSE_LINE, KEEP_ALIVE_LINE};
use super::request::{length_body, write_set_fields, BodyLeft, BODY_READ_BYTES};
use super::Context;
use crate::access_log::Sent;
use crate::io::{Abort, Gather, Part, ReadFail, WriteFail};
use crate::stream::{StreamReader, StreamWriter};

/// Read size for heads, requests' and responses'; a head larger than this
/// grows its buffer up to the configured limit.
pub const HEAD_READ_BYTES: usize = 16 * 1024;

/// Interim (1xx) responses relayed before the final one; a backend sending
/// more is broken or hostile (RFC 9110 §15.2 sets no limit; nginx relays
/// none, HAProxy a handful).
pub(super) const MAX_INTERIM_RESPONSES: usize = 16;

/// What the relay needs to know about the request and the route.
pub(super) struct RelaySpec<'a> {
    pub request_was_head: bool,
    pub client_version: Version,
    pub client_closing: bool,
    pub edits: &'a HeaderEdits,
    /// Fields the proxy adds to the final response.
    pub added: Added<'a>,
    /// The protocol the request asked to switch to, when the route allows
    /// it: a `101` naming it is relayed as it came and ends the relay (a
    /// tunnel follows).
    pub upgrade: Option<&'a [u8]>,
    /// Longest wait for the next upstream read (nginx's proxy_read_timeout).
    pub response_timeout: Duration,
    /// A retry can follow a 5xx: report it instead of forwarding it.
    pub hold_5xx: bool,
    /// The request body is still streaming up.
    pub sending: &'a Cell<bool>,
    /// When the request's last bytes went up: the response head is due
    /// `response_timeout` after that (interim responses do not extend it).
    pub progress: &'a Cell<Instant>,
}

/// Field lines the proxy adds to a final response, in place of the
/// backend's own of the same names.
pub(super) struct Added<'a> {
    pub fields: &'a [u8],
    /// The request-id field's name, when ids are on.
    pub request_id: Option<&'a str>,
    /// The fields include CORS ones: every `access-control-*` of the
    /// backend's goes.
    pub cors: bool,
}

impl Added<'_> {
    fn replaces(&self, name: &[u8]) -> bool {
        self.request_id
            .is_some_and(|n| name.eq_ignore_ascii_case(n.as_bytes()))
            || (self.cors && name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-"))
    }
}

/// The relay's halves and cancellers.
pub(super) struct RelayIo<'a> {
    pub up: &'a mut StreamReader,
    pub up_read_abort: &'a Abort,
    pub up_write_abort: &'a Abort,
    pub client: &'a mut StreamWriter,
    pub client_write_abort: &'a Abort,
    pub client_read_abort: &'a Abort,
    pub resp: &'a mut Gather,
    pub scratch: &'a mut HeadScratch,
    pub sent: &'a Sent,
}

pub(super) struct RelayDone {
    pub status: u16,
    /// Both messages may have ended cleanly: the response was framed,
    /// persistent, and nothing followed it. The caller still checks that
    /// the request body ended.
    pub upstream_reusable: bool,
    pub client_close: bool,
    /// The response ended while the request body was still uploading: the
    /// backend answered without reading it all, so whatever it reads next on
    /// this connection is the client's bytes, not ours. Never pooled.
    pub ended_before_request: bool,
    /// An error status answered before the request body was all read: the
    /// rest of the body is not forwarded and the client connection closes.
    pub early_error: bool,
    /// Bytes followed the response: the backend sent more than it was
    /// asked for.
    pub surplus: bool,
    /// A `101` switched protocols: its head (this many bytes of the
    /// response buffer) went to the client, and what follows it in the
    /// buffer is the new protocol's.
    pub upgraded: Option<usize>,
}

/// Reads the upstream response and streams it to the client. On failure the
/// client read and the upstream write are cancelled, so the upload stops.
pub(super) async fn relay(
    cx: &Context<'_>,
    spec: &RelaySpec<'_>,
    io: RelayIo<'_>,
) -> Result<RelayDone, ExchangeError> {
    let client_read_abort = io.client_read_abort;
    let up_write_abort = io.up_write_abort;
    let result = relay_inner(cx, spec, io).await;
    let stop_upload = match &result {
        Err(_) => true,
        // An early error answer ends the exchange: the rest of the body is
        // not forwarded, and the client is told the connection closes.
        Ok(done) => done.early_error,
    };
    if stop_upload {
        client_read_abort.abort();
        up_write_abort.abort();
    }
    result
}

async fn relay_inner(
    cx: &Context<'_>,
    spec: &RelaySpec<'_>,
    io: RelayIo<'_>,
) -> Result<RelayDone, ExchangeError> {
    let RelayIo {
        up,
        up_read_abort,
        client,
        client_write_abort,
        resp,
        scratch,
        sent,
        ..
    } = io;
    let send_timeout = cx.limits.send_timeout;
    resp.source.clear();
    let mut started = false;
    let mut interim_count = 0usize;
    let fail = |started: bool, f: Fault| {
        if started {
            ExchangeError::started(f)
        } else {
            ExchangeError::from(f)
        }
    };
    loop {
        let head = loop {
            let switching = spec
                .upgrade
                .filter(|_| resp.source.starts_with(b"HTTP/1.1 101 "));
            if let Some(protocol) = switching {
                let end = memchr::memmem::find(&resp.source, b"\r\n\r\n");
                // A head ended by bare LFs would never show its CRLF end.
                if memchr::memmem::find(&resp.source, b"\n\n")
                    .is_some_and(|lf| end.is_none_or(|e| lf < e))
                {
                    return Err(fail(
                        started,
                        Fault::BadResponse("bare LF line terminator in a 101"),
                    ));
                }
                if let Some(end) = end {
                    let head_len = end + 4;
                    check_switching_head(&resp.source[..head_len], protocol)
                        .map_err(|why| fail(started, Fault::BadResponse(why)))?;
                    let (res, buf) = client
                        .send_range(
                            std::mem::take(&mut resp.source),
                            0..head_len,
                            send_timeout,
                            client_write_abort,
                        )
                        .await;
                    resp.source = buf;
                    if let Err(e) = res {
                        return Err(fail(started, client_write_fault(e)));
                    }
                    sent.status.set(101);
                    return Ok(RelayDone {
                        status: 101,
                        upstream_reusable: false,
                        client_close: true,
                        ended_before_request: false,
                        early_error: false,
                        surplus: false,
                        upgraded: Some(head_len),
                    });
                }
                if resp.source.len() > cx.head_limits.max_head_bytes {
                    return Err(fail(started, Fault::BadResponse("101 head too large")));
                }
            } else if !resp.source.is_empty() {
                match parse_response(&resp.source, cx.head_limits, spec.request_was_head, scratch) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return Err(fail(started, Fault::BadResponse(e.reason()))),
                }
            }
            // The head is due response_timeout after the request's last
            // byte went up; while the body still uploads, that moves on.
            let due = spec.progress.get() + spec.response_timeout;
            let now = Instant::now();
            if now >= due {
                return Err(fail(started, Fault::ResponseTimedOut));
            }
            let res = up
                .read_more(&mut resp.source, HEAD_READ_BYTES, due - now, up_read_abort)
                .await;
            match res {
                Ok(0) | Err(ReadFail::Io(_)) if resp.source.is_empty() && !started => {
                    return Err(Fault::UpstreamClosed.into())
                }
                Ok(0) | Err(ReadFail::Io(_)) => {
                    return Err(fail(
                        started,
                        Fault::BadResponse("upstream closed mid-head"),
                    ))
                }
                Ok(_) | Err(ReadFail::TimedOut) => {}
                Err(ReadFail::Aborted) => return Err(fail(started, Fault::Aborted)),
            }
        };
        let available = resp.source.len() - head.head_len;
        let (initial, mut left) = match head.body {
            ResponseBody::Empty => (0, None),
            ResponseBody::Length(n) => length_body(available, n),
            ResponseBody::Chunked => {
                if spec.client_version == Version::Http10 {
                    return Err(fail(
                        started,
                        Fault::BadResponse("chunked response to an HTTP/1.0 request"),
                    ));
                }
                let mut decoder = ChunkedDecoder::new(cx.chunk_limits);
                let feed = decoder
                    .feed(&resp.source[head.head_len..], &mut |_| {})
                    .map_err(|_| {
                        fail(started, Fault::BadResponse("invalid chunked response body"))
                    })?;
                (
                    feed.consumed,
                    (!feed.done).then_some(BodyLeft::Chunked(decoder)),
                )
            }
            ResponseBody::UntilClose => (available, None),
        };
        let interim = head.is_interim();
        if interim {
            interim_count += 1;
            if interim_count > MAX_INTERIM_RESPONSES {
                return Err(fail(
                    started,
                    Fault::BadResponse("too many interim responses"),
                ));
            }
            // RFC 9110 §15.2: never a 1xx to an HTTP/1.0 client, which would
            // take it for the response and the real one for stray bytes.
            if spec.client_version == Version::Http10 {
                resp.source.drain(..head.head_len);
                continue;
            }
        }
        if spec.hold_5xx && head.status >= 500 && !started {
            // Discarded with its connection; the caller retries elsewhere.
            return Err(Fault::ServerError.into());
        }
        let until_close = head.body == ResponseBody::UntilClose;
        // An error answered before the request body was all read ends the
        // exchange; the client connection cannot stay in sync, so it says so.
        let early_error = !interim && spec.sending.get() && head.status >= 400;
        // A draining worker announces the close on every response it starts.
        let client_close = spec.client_closing || until_close || early_error || cx.draining.get();
        resp.patch.clear();
        if !interim && (!spec.edits.is_empty() || !spec.added.fields.is_empty()) {
            // Edited and added fields go as patch bytes; the rest stays as
            // read.
            let (edits, added) = (spec.edits, &spec.added);
            scratch.retain_lines(&resp.source, true, |name| {
                !edits.drops(name) && !added.replaces(name)
            });
            write_set_fields(&mut resp.patch, edits);
            resp.patch.extend_from_slice(added.fields);
        }
        write_replaced_fields(&mut resp.patch, &resp.source, scratch);
        if !interim && !head.has_date {
            super::write_date_line(&mut resp.patch);
        }
        if client_close && !interim {
            resp.patch.extend_from_slice(CLOSE_LINE.as_bytes());
        } else if spec.client_version == Version::Http10 && !interim {
            resp.patch.extend_from_slice(KEEP_ALIVE_LINE.as_bytes());
        }
        resp.patch.extend_from_slice(b"\r\n");
        resp.clear_segments();
        for range in &scratch.forward {
            resp.push(Part::Source, range.clone());
        }
        resp.push(Part::Patch, 0..resp.patch.len());
        resp.push(Part::Source, head.head_len..head.head_len + initial);
        let gather = std::mem::take(resp);
        let (res, gather) = client
            .send_gather(gather, send_timeout, client_write_abort)
            .await;
        *resp = gather;
        if let Err(e) = res {
            return Err(ExchangeError::started(client_write_fault(e)));
        }
        started = true;
        if interim {
            resp.source.drain(..head.head_len);
            continue;
        }
        sent.status.set(head.status);
        sent.body_bytes.set(initial as u64);
        let mut surplus = resp.source.len() > head.head_len + initial;
        // Stream the rest of the body, reusing the same buffer.
        loop {
            if left.is_none() && !until_close {
                break;
            }
            resp.source.clear();
            let res = up
                .read_more(
                    &mut resp.source,
                    BODY_READ_BYTES,
                    spec.response_timeout,
                    up_read_abort,
                )
                .await;
            let n = match res {
                Ok(0) if until_close => break,
                Ok(0) => {
                    return Err(ExchangeError::started(Fault::BadResponse(
                        "upstream closed mid-body",
                    )))
                }
                Ok(n) => n,
                Err(ReadFail::TimedOut) => {
                    return Err(ExchangeError::started(Fault::ResponseTimedOut))
                }
                Err(ReadFail::Aborted) => return Err(ExchangeError::started(Fault::Aborted)),
                Err(ReadFail::Io(_)) => return Err(ExchangeError::started(Fault::UpstreamClosed)),
            };
            let take = match &mut left {
                None => n,
                Some(BodyLeft::Length(remaining)) => {
                    let take = (n as u64).min(*remaining);
                    *remaining -= take;
                    if *remaining == 0 {
                        left = None;
                    }
                    take as usize
                }
                Some(BodyLeft::Chunked(decoder)) => {
                    let feed = decoder.feed(&resp.source[..n], &mut |_| {}).map_err(|_| {
                        ExchangeError::started(Fault::BadResponse("invalid chunked response body"))
                    })?;
                    if feed.done {
                        left = None;
                    }
                    feed.consumed
                }
            };
            surplus |= take < n;
            let (res, buf) = client
                .send_range(
                    std::mem::take(&mut resp.source),
                    0..take,
                    send_timeout,
                    client_write_abort,
                )
                .await;
            resp.source = buf;
            if let Err(e) = res {
                return Err(ExchangeError::started(client_write_fault(e)));
            }
            sent.add_body(take);
        }
        return Ok(RelayDone {
            status: head.status,
            // Bytes past the response mean the upstream is out of sync.
            upstream_reusable: head.reusable && !surplus,
            client_close,
            ended_before_request: spec.sending.get(),
            early_error,
            surplus,
            upgraded: None,
        });
    }
}

impl RelayDone {
    /// May the upstream connection carry another request? Only when both
    /// messages ended cleanly (`request_ended`: the body upload finished)
    /// and in the right order, and nothing else arrived.
    pub fn leaves_upstream_clean(&self, request_ended: bool) -> bool {
        self.upstream_reusable && request_ended && !self.ended_before_request
    }
}

fn client_write_fault(e: WriteFail) -> Fault {
    match e {
        WriteFail::Aborted => Fault::Aborted,
        WriteFail::TimedOut | WriteFail::Io(_) => Fault::ClientGone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(reusable: bool, ended_before_request: bool) -> RelayDone {
        RelayDone {
            status: 200,
            upstream_reusable: reusable,
            client_close: false,
            ended_before_request,
            early_error: false,
            surplus: !reusable,
            upgraded: None,
        }
    }

    #[test]
    fn a_connection_is_pooled_only_when_both_messages_ended_in_order() {
        assert!(done(true, false).leaves_upstream_clean(true));
        // Surplus bytes, a close-delimited or non-persistent response.
        assert!(!done(false, false).leaves_upstream_clean(true));
        // The backend answered before it read the whole body.
        assert!(!done(true, true).leaves_upstream_clean(true));
        // The upload did not finish.
        assert!(!done(true, false).leaves_upstream_clean(false));
    }
}
