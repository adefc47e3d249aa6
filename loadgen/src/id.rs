//! Per-request ids (`--check-id NAME`): where a request's id sits in its
//! encoded bytes, and whether a response body carries it.
//!
//! Every request's target gets a query parameter `NAME=<20 digits>`; the
//! digits are reserved once when the request is encoded and overwritten in
//! place before each send, so ids cost no allocation. The response body must
//! contain the same `NAME=<digits>` bytes: a body with another request's id
//! is a response crossed between requests (a stray or hidden response served
//! to the wrong client), a body without one is counted too. Pure: no I/O.

/// Digits of an id: any `u64` in fixed-width decimal, so an id never
/// changes the request's length and one id is never a prefix of another.
pub const ID_DIGITS: usize = 20;
/// Longest `NAME`: a query parameter name, not a document.
pub const ID_NAME_MAX_BYTES: usize = 32;
/// Bytes of a response body searched for the id. Bodies in this mode are
/// small echoes of the request; a larger one is searched only this far.
pub const ID_SCAN_BYTES: usize = 4096;

/// Can `name` go in a query string as it is (RFC 3986 §2.3 unreserved)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ID_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Where a request's `NAME=<digits>` sits in its encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSlot {
    /// Offset of `NAME=` in the request bytes.
    pub at: usize,
    /// Length of `NAME=`; the digits follow it.
    pub name_len: usize,
}

impl IdSlot {
    /// `NAME=` and `ID_DIGITS` zeros, as first encoded.
    pub fn placeholder(name: &str) -> Vec<u8> {
        let mut v = Vec::with_capacity(name.len() + 1 + ID_DIGITS);
        v.extend_from_slice(name.as_bytes());
        v.push(b'=');
        v.extend_from_slice(&[b'0'; ID_DIGITS]);
        v
    }

    /// Bytes of `NAME=<digits>`.
    pub fn len(&self) -> usize {
        self.name_len + ID_DIGITS
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The same slot in the `k`-th copy of a request of `request_len` bytes
    /// (pipelined requests are copies written back to back).
    pub fn in_copy(&self, k: usize, request_len: usize) -> IdSlot {
        IdSlot {
            at: self.at + k * request_len,
            name_len: self.name_len,
        }
    }

    /// Overwrites the digits in `request` with `id`.
    pub fn write(&self, request: &mut [u8], id: u64) {
        let start = self.at + self.name_len;
        write_digits(&mut request[start..start + ID_DIGITS], id);
    }

    /// `NAME=<digits>` as the request carries it: what its response must hold.
    pub fn needle<'a>(&self, request: &'a [u8]) -> &'a [u8] {
        &request[self.at..self.at + self.len()]
    }
}

/// `id` in `out.len()` decimal digits, zero-padded on the left.
fn write_digits(out: &mut [u8], mut id: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (id % 10) as u8;
        id /= 10;
    }
}

/// What a response body said about its request's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSeen {
    /// No check asked for.
    Unchecked,
    /// The body carries the request's own id.
    Match,
    /// The body carries `NAME=` with another id (the first one found).
    Other(u64),
    /// No `NAME=<digits>` in the scanned part of the body.
    Missing,
}

impl IdSeen {
    pub fn is_mismatch(self) -> bool {
        matches!(self, IdSeen::Other(_) | IdSeen::Missing)
    }
}

/// Checks a body (its first `ID_SCAN_BYTES`) against the needle
/// `NAME=<digits>` of its request. The needle must not be followed by a
/// digit, so `rid=1` does not pass for `rid=12` even with other widths.
pub fn check(body: &[u8], needle: &[u8]) -> IdSeen {
    debug_assert!(needle.len() > ID_DIGITS);
    let body = &body[..body.len().min(ID_SCAN_BYTES)];
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&body[from..], needle) {
        let end = from + i + needle.len();
        if !body.get(end).is_some_and(u8::is_ascii_digit) {
            return IdSeen::Match;
        }
        from += i + 1;
    }
    // Not ours: is there another id under the same name?
    let name = &needle[..needle.len() - ID_DIGITS];
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&body[from..], name) {
        let digits = &body[from + i + name.len()..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n > 0 {
            let id = digits[..n.min(ID_DIGITS)].iter().fold(0u64, |v, d| {
                v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
            });
            return IdSeen::Other(id);
        }
        from += i + 1;
    }
    IdSeen::Missing
}

/// The first `ID_SCAN_BYTES` of one response body, gathered across reads
/// into a buffer allocated once per connection.
#[derive(Debug, Default)]
pub struct BodyScan {
    buf: Vec<u8>,
}

impl BodyScan {
    /// Starts a new body; keeps the buffer.
    pub fn clear(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(ID_SCAN_BYTES);
        }
        self.buf.clear();
    }

    /// The next bytes of the body (only the first `ID_SCAN_BYTES` are kept).
    pub fn push(&mut self, bytes: &[u8]) {
        let room = ID_SCAN_BYTES - self.buf.len();
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn check(&self, needle: &[u8]) -> IdSeen {
        check(&self.buf, needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_in(request: &mut Vec<u8>, name: &str) -> IdSlot {
        let at = request.len();
        request.extend_from_slice(&IdSlot::placeholder(name));
        IdSlot {
            at,
            name_len: name.len() + 1,
        }
    }

    #[test]
    fn an_id_overwrites_the_reserved_digits_in_place() {
        let mut req = b"GET /?".to_vec();
        let slot = slot_in(&mut req, "rid");
        req.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let len = req.len();
        assert_eq!(slot.needle(&req), b"rid=00000000000000000000");
        slot.write(&mut req, 7);
        assert_eq!(&req, b"GET /?rid=00000000000000000007 HTTP/1.1\r\n\r\n");
        slot.write(&mut req, u64::MAX);
        assert_eq!(slot.needle(&req), b"rid=18446744073709551615");
        assert_eq!(req.len(), len, "the request keeps its length");
    }

    #[test]
    fn each_pipelined_copy_has_its_own_id() {
        let mut one = b"GET /?".to_vec();
        let slot = slot_in(&mut one, "id");
        one.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let mut three = one.repeat(3);
        for k in 0..3 {
            slot.in_copy(k, one.len()).write(&mut three, 10 + k as u64);
        }
        let text = String::from_utf8(three).unwrap();
        assert!(text.contains("id=00000000000000000010 "));
        assert!(text.contains("id=00000000000000000011 "));
        assert!(text.contains("id=00000000000000000012 "));
    }

    #[test]
    fn a_body_with_its_own_id_matches() {
        let n = b"rid=00000000000000000042";
        assert_eq!(
            check(b"hello from a /?rid=00000000000000000042\n", n),
            IdSeen::Match
        );
        // Another id first does not hide ours.
        assert_eq!(
            check(b"rid=00000000000000000041 rid=00000000000000000042", n),
            IdSeen::Match
        );
    }

    #[test]
    fn a_body_with_another_id_is_a_mismatch_naming_it() {
        let n = b"rid=00000000000000000042";
        let seen = check(b"hello from b /?rid=00000000000000000007\n", n);
        assert_eq!(seen, IdSeen::Other(7));
        assert!(seen.is_mismatch());
        // A longer number that starts with our digits is not ours.
        assert_eq!(check(b"rid=000000000000000000421", n), IdSeen::Other(42));
    }

    #[test]
    fn a_body_without_an_id_is_a_mismatch() {
        let n = b"rid=00000000000000000042";
        assert_eq!(check(b"", n), IdSeen::Missing);
        assert_eq!(check(b"502 bad gateway rid= none", n), IdSeen::Missing);
        assert!(IdSeen::Missing.is_mismatch());
        assert!(!IdSeen::Match.is_mismatch());
        assert!(!IdSeen::Unchecked.is_mismatch());
    }

    #[test]
    fn an_id_split_across_reads_is_found_at_every_split() {
        let body = b"hello from a /?rid=00000000000000000042\n";
        let n = b"rid=00000000000000000042";
        let mut scan = BodyScan::default();
        for a in 0..=body.len() {
            for b in a..=body.len() {
                scan.clear();
                scan.push(&body[..a]);
                scan.push(&body[a..b]);
                scan.push(&body[b..]);
                assert_eq!(scan.check(n), IdSeen::Match, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn only_the_first_scan_bytes_are_searched_and_kept() {
        let n = b"rid=00000000000000000042";
        let mut scan = BodyScan::default();
        scan.clear();
        let cap = scan.buf.capacity();
        scan.push(&vec![b'x'; ID_SCAN_BYTES - 4]);
        scan.push(n);
        assert_eq!(scan.bytes().len(), ID_SCAN_BYTES);
        assert_eq!(scan.check(n), IdSeen::Missing);
        // The buffer never grows past its first allocation.
        scan.clear();
        scan.push(n);
        assert_eq!(scan.buf.capacity(), cap);
        assert_eq!(scan.check(n), IdSeen::Match);
    }

    #[test]
    fn names_are_unreserved_query_characters() {
        assert!(valid_name("rid"));
        assert!(valid_name("x-req_id.1~"));
        for bad in ["", "a b", "a=b", "a&b", "a%20", &"n".repeat(33)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
