//! The one error of an exchange: what went wrong ([`Fault`]), and from it,
//! in one place, the status the client gets, the outcome the backend's view
//! and `/metrics` record, and which `retries.on` class it falls in.

use std::io::Write as _;

use ringgate_config::RetryOn;
use ringgate_core::backend_view::Outcome;
use ringgate_core::chunked::ChunkError;

/// A status the proxy answers itself, with a short reason as its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

impl Refusal {
    pub const fn new(status: u16, reason: &'static str) -> Self {
        Refusal { status, reason }
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The backend refused or reset the TCP connect, with the errno (0 when
    /// there was none).
    ConnectFailed(i32),
    ConnectTimedOut,
    /// The TLS handshake with the backend failed: its certificate did not
    /// verify for the name, or no version or cipher was shared.
    TlsHandshakeFailed,
    /// The backend's `max_connections` was reached and none came free in
    /// time: nothing was sent, and the backend did nothing wrong.
    ConnectionLimit,
    /// The connection closed or reset before a byte of response.
    UpstreamClosed,
    /// An HTTP/2 backend refused the stream, or left it out of a GOAWAY,
    /// before a byte of response: it says it did not act on the request
    /// (RFC 9113 §8.7).
    UpstreamRefused,
    /// Writing the request failed (the backend closed or reset).
    UpstreamWriteFailed,
    /// The backend stopped reading the request (`timeouts.send`).
    UpstreamSendTimedOut,
    /// No response within `timeouts.response`.
    ResponseTimedOut,
    /// The response could not be read as one HTTP/1.1 message.
    BadResponse(&'static str),
    /// A 5xx held back so that the request can be retried elsewhere.
    ServerError,
    /// The client's chunked body is malformed.
    BadChunk(ChunkError),
    /// The client sent its body too slowly (`body_read_timeout`).
    BodyTimedOut,
    /// The client went away, or stopped reading its response
    /// (`send_timeout`): nobody is left to answer.
    ClientGone,
    /// Cancelled by the other half of the exchange, which has the real
    /// cause.
    Aborted,
}

/// A fault, and whether part of the response already reached the client
/// (then nothing more can be said to it: the connection just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeError {
    pub fault: Fault,
    pub response_started: bool,
}

impl From<Fault> for ExchangeError {
    fn from(fault: Fault) -> Self {
        ExchangeError {
            fault,
            response_started: false,
        }
    }
}

impl ExchangeError {
    pub fn started(fault: Fault) -> Self {
        ExchangeError {
            fault,
            response_started: true,
        }
    }

    /// What the client is told, when it can still be told anything.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.response_started {
            return None;
        }
        Some(match self.fault {
            Fault::ConnectFailed(_) => Refusal::new(502, "upstream connect failed"),
            Fault::ConnectTimedOut => Refusal::new(504, "upstream connect timed out"),
            Fault::TlsHandshakeFailed => Refusal::new(502, "upstream TLS handshake failed"),
            Fault::ConnectionLimit => Refusal::new(503, "upstream connection limit reached"),
            Fault::UpstreamClosed => {
                Refusal::new(502, "upstream closed the connection without a response")
            }
            Fault::UpstreamRefused => Refusal::new(502, "upstream refused the request unprocessed"),
            Fault::UpstreamWriteFailed => Refusal::new(502, "upstream write failed"),
            Fault::UpstreamSendTimedOut => {
                Refusal::new(504, "upstream did not read the request in time")
            }
            Fault::ResponseTimedOut => Refusal::new(504, "upstream response timed out"),
            Fault::BadResponse(why) => Refusal::new(502, why),
            Fault::ServerError => Refusal::new(502, "upstream answered with a server error"),
            Fault::BadChunk(e) => chunk_refusal(e),
            Fault::BodyTimedOut => Refusal::new(408, "request body not received in time"),
            Fault::Aborted => Refusal::new(502, "upstream exchange aborted"),
            Fault::ClientGone => return None,
        })
    }

    /// The fault as the error log names it.
    pub fn cause(&self) -> &'static str {
        match self.fault {
            Fault::ConnectFailed(_) => "connect_failed",
            Fault::ConnectTimedOut => "connect_timed_out",
            Fault::TlsHandshakeFailed => "tls_handshake_failed",
            Fault::ConnectionLimit => "connection_limit",
            Fault::UpstreamClosed => "upstream_closed",
            Fault::UpstreamRefused => "upstream_refused",
            Fault::UpstreamWriteFailed => "upstream_write_failed",
            Fault::UpstreamSendTimedOut => "upstream_send_timed_out",
            Fault::ResponseTimedOut => "response_timed_out",
            Fault::BadResponse(_) => "bad_response",
            Fault::ServerError => "server_error",
            Fault::BadChunk(_) => "bad_chunk",
            Fault::BodyTimedOut => "body_timed_out",
            Fault::ClientGone => "client_gone",
            Fault::Aborted => "aborted",
        }
    }

    /// Did the client's side cause it (nothing to tell an operator about
    /// the backend)?
    pub fn is_clients(&self) -> bool {
        matches!(
            self.fault,
            Fault::BadChunk(_) | Fault::BodyTimedOut | Fault::ClientGone
        )
    }

    /// What the attempt says about the backend.
    pub fn outcome(&self) -> Outcome {
        match self.fault {
            Fault::ConnectFailed(_) | Fault::ConnectTimedOut | Fault::TlsHandshakeFailed => {
                Outcome::ConnectFailure
            }
            Fault::UpstreamClosed
            | Fault::UpstreamRefused
            | Fault::UpstreamWriteFailed
            | Fault::BadResponse(_)
            | Fault::Aborted => Outcome::Reset,
            Fault::UpstreamSendTimedOut | Fault::ResponseTimedOut => Outcome::Timeout,
            Fault::ServerError => Outcome::Status5xx,
            Fault::ConnectionLimit
            | Fault::BadChunk(_)
            | Fault::BodyTimedOut
            | Fault::ClientGone => Outcome::Aborted,
        }
    }

    /// Is this a failure `retries.on` names? Whether the request may be
    /// sent again at all is [`super::retry`]'s call.
    pub fn retry_class(&self, on: RetryOn) -> bool {
        match self.fault {
            // A refused stream is, like a failed connect, a request the
            // backend did not act on.
            Fault::ConnectFailed(_)
            | Fault::ConnectTimedOut
            | Fault::ConnectionLimit
            | Fault::TlsHandshakeFailed
            | Fault::UpstreamRefused => on.connect_failure,
            Fault::UpstreamClosed | Fault::UpstreamWriteFailed | Fault::BadResponse(_) => on.reset,
            Fault::UpstreamSendTimedOut | Fault::ResponseTimedOut => on.timeout,
            Fault::ServerError => on.status_5xx,
            Fault::BadChunk(_) | Fault::BodyTimedOut | Fault::ClientGone | Fault::Aborted => false,
        }
    }

    /// Did the backend possibly see any byte of the request? Only a failed
    /// connect (or no connection at all) proves it did not.
    pub fn request_may_have_reached_backend(&self) -> bool {
        !matches!(
            self.fault,
            Fault::ConnectFailed(_)
                | Fault::ConnectTimedOut
                | Fault::ConnectionLimit
                | Fault::TlsHandshakeFailed
        )
    }

    /// Did the backend say it did not act on the request, whatever of it
    /// reached it?
    pub fn backend_did_not_act(&self) -> bool {
        self.fault == Fault::UpstreamRefused
    }
}

pub fn chunk_refusal(e: ChunkError) -> Refusal {
    Refusal::new(
        400,
        match e {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size overflows",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::LineTooLong => "chunk line too long",
            ChunkError::BareLf => "bare LF in chunked framing",
            ChunkError::MissingCrlfAfterData => "chunk data not followed by CRLF",
            ChunkError::InvalidTrailer => "invalid trailer field",
            ChunkError::TrailerTooLarge => "trailer section too large",
            ChunkError::ForbiddenTrailer => "field not allowed in a trailer section",
            ChunkError::BodyTooLarge => {
                return Refusal::new(413, "request body larger than max_body")
            }
        },
    )
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Error",
    }
}

pub const CLOSE_LINE: &str = "Connection: close\r\n";
/// An HTTP/1.0 client keeps its connection only when told so (RFC 9112
/// §9.3 and RFC 1945 practice): every response it may reuse carries this.
pub const KEEP_ALIVE_LINE: &str = "Connection: keep-alive\r\n";

/// Builds a small error response. Error paths may allocate; the happy path
/// does not come here.
pub fn error_response(refusal: &Refusal, connection_line: &str) -> Vec<u8> {
    error_text(refusal.status, refusal.reason, connection_line)
}

/// [`error_response`] with a reason made for this request (naming the
/// header a route requires, say).
pub fn error_text(status: u16, reason: &str, connection_line: &str) -> Vec<u8> {
    let body_len = reason.len() + 1;
    let mut out = Vec::with_capacity(160 + body_len);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}",
        status,
        status_text(status),
        body_len,
        connection_line,
    );
    super::write_date_line(&mut out);
    let _ = write!(out, "\r\n{reason}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_fault() {
        let status = |f: Fault| ExchangeError::from(f).refusal().map(|r| r.status);
        assert_eq!(status(Fault::ConnectFailed(libc::ECONNREFUSED)), Some(502));
        assert_eq!(status(Fault::ConnectTimedOut), Some(504));
        assert_eq!(status(Fault::ConnectionLimit), Some(503));
        assert_eq!(status(Fault::UpstreamClosed), Some(502));
        assert_eq!(status(Fault::UpstreamSendTimedOut), Some(504));
        assert_eq!(status(Fault::ResponseTimedOut), Some(504));
        assert_eq!(status(Fault::BodyTimedOut), Some(408));
        assert_eq!(status(Fault::BadChunk(ChunkError::InvalidSize)), Some(400));
        assert_eq!(status(Fault::ClientGone), None);
    }

    #[test]
    fn nothing_is_said_once_the_response_started() {
        assert_eq!(
            ExchangeError::started(Fault::UpstreamClosed).refusal(),
            None
        );
    }

    #[test]
    fn client_faults_are_not_the_backends() {
        for f in [
            Fault::BadChunk(ChunkError::BareLf),
            Fault::BodyTimedOut,
            Fault::ClientGone,
            Fault::ConnectionLimit,
        ] {
            assert_eq!(ExchangeError::from(f).outcome(), Outcome::Aborted, "{f:?}");
            assert!(!ExchangeError::from(f).outcome().is_failure());
        }
        assert!(ExchangeError::from(Fault::ResponseTimedOut)
            .outcome()
            .is_failure());
    }

    #[test]
    fn only_a_failed_connect_proves_the_backend_saw_nothing() {
        assert!(
            !ExchangeError::from(Fault::ConnectFailed(libc::ECONNREFUSED))
                .request_may_have_reached_backend()
        );
        assert!(ExchangeError::from(Fault::UpstreamClosed).request_may_have_reached_backend());
        assert!(ExchangeError::from(Fault::UpstreamWriteFailed).request_may_have_reached_backend());
    }
}
