//! The one rule for sending a request again, whatever the path that wants
//! to (a pooled connection found dead, a configured retry, a 5xx held back):
//! RFC 9110 §9.2.2. A request may go out again only when the backend cannot
//! have acted on it (nothing was sent: the connect failed), or said it did
//! not (an HTTP/2 stream refused or left out of a GOAWAY, RFC 9113 §8.7)
//! and every byte of it is still in hand, or when it is idempotent and every
//! byte of it is still in hand. A POST that went out on a connection that
//! then closed is never sent twice: the backend may have done it.

use super::error::ExchangeError;

/// What decides whether one request may be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    idempotent: bool,
    /// The whole request (head and body) is still in the buffer: nothing of
    /// it was streamed through and dropped.
    in_hand: bool,
}

impl Replay {
    pub fn new(method: &[u8], in_hand: bool) -> Self {
        Replay {
            idempotent: is_idempotent(method),
            in_hand,
        }
    }

    /// May the request be sent again after `e`?
    pub fn allowed(&self, e: &ExchangeError) -> bool {
        if e.response_started {
            return false;
        }
        !e.request_may_have_reached_backend()
            || (self.in_hand && (self.idempotent || e.backend_did_not_act()))
    }

    /// Is a held-back 5xx worth waiting for, i.e. could the request go to
    /// another backend after one?
    pub fn can_resend_after_a_response(&self) -> bool {
        self.idempotent && self.in_hand
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect as one.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::super::error::Fault;
    use super::*;

    #[test]
    fn a_post_that_went_out_is_never_replayed() {
        let post = Replay::new(b"POST", true);
        for f in [
            Fault::UpstreamClosed,
            Fault::UpstreamWriteFailed,
            Fault::ResponseTimedOut,
            Fault::ServerError,
        ] {
            assert!(!post.allowed(&f.into()), "{f:?}");
        }
        assert!(!post.can_resend_after_a_response());
    }

    #[test]
    fn anything_is_replayed_when_the_connect_failed() {
        for method in [&b"POST"[..], b"PATCH", b"GET"] {
            let r = Replay::new(method, false);
            assert!(r.allowed(&Fault::ConnectFailed(libc::ECONNREFUSED).into()));
            assert!(r.allowed(&Fault::ConnectTimedOut.into()));
            assert!(r.allowed(&Fault::ConnectionLimit.into()));
        }
    }

    #[test]
    fn a_post_the_backend_did_not_act_on_is_replayed_while_in_hand() {
        let refused = Fault::UpstreamRefused.into();
        assert!(Replay::new(b"POST", true).allowed(&refused));
        assert!(!Replay::new(b"POST", false).allowed(&refused));
        assert!(
            !Replay::new(b"POST", true).allowed(&ExchangeError::started(Fault::UpstreamRefused))
        );
    }

    #[test]
    fn an_idempotent_request_is_replayed_only_while_in_hand() {
        assert!(Replay::new(b"GET", true).allowed(&Fault::UpstreamClosed.into()));
        assert!(Replay::new(b"PUT", true).allowed(&Fault::UpstreamClosed.into()));
        assert!(!Replay::new(b"PUT", false).allowed(&Fault::UpstreamClosed.into()));
    }

    #[test]
    fn nothing_is_replayed_once_the_response_started() {
        let get = Replay::new(b"GET", true);
        assert!(!get.allowed(&ExchangeError::started(Fault::UpstreamClosed)));
        assert!(!get.allowed(&ExchangeError::started(Fault::ConnectFailed(
            libc::ECONNREFUSED
        ))));
    }
}
