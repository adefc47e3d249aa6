//! Request ids (`[server] request_id`): a client's well-formed id is kept,
//! any other request gets one made by its worker (a per-worker random
//! prefix and a counter: unique without a lock or a shared counter). The
//! id goes upstream, back to the client and into the access log.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;

use ringgate_core::http::header_value;

/// Longest id kept from a client.
pub const MAX_ID_BYTES: usize = 128;

/// One worker's id maker.
pub struct RequestIds {
    prefix: u64,
    next: Cell<u64>,
}

impl RequestIds {
    pub fn new(worker: usize) -> Self {
        // Random per process and worker (std's hasher keys come from the
        // OS): ids from two workers or two runs do not collide.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(worker);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        RequestIds {
            prefix: h.finish(),
            next: Cell::new(0),
        }
    }

    /// Writes this request's id into `id` (cleared first): the client's
    /// own when `head` carries a well-formed one under `name`. `true` when
    /// the id was made here (it then replaces any the client sent).
    pub fn assign(&self, name: &str, head: &[u8], id: &mut Vec<u8>) -> bool {
        id.clear();
        if let Some(theirs) = header_value(head, name.as_bytes()).filter(|v| well_formed(v)) {
            id.extend_from_slice(theirs);
            return false;
        }
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let _ = write!(id, "{:016x}{:016x}", self.prefix, n);
        true
    }
}

/// 1..=`MAX_ID_BYTES` of letters, digits and `-_.:+/=@~` (UUIDs, trace
/// ids, base64): nothing that could break a header or a log line.
pub fn well_formed(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ID_BYTES
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_id_is_kept_and_others_are_replaced() {
        let ids = RequestIds::new(0);
        let mut id = Vec::new();
        let head = b"GET / HTTP/1.1\r\nX-Request-Id: 3f2a-77\r\n\r\n";
        assert!(!ids.assign("x-request-id", head, &mut id));
        assert_eq!(id, b"3f2a-77");
        let bad = b"GET / HTTP/1.1\r\nX-Request-Id: a b\"c\r\n\r\n";
        assert!(ids.assign("x-request-id", bad, &mut id));
        assert_eq!(id.len(), 32);
        let first = id.clone();
        assert!(ids.assign("x-request-id", b"GET / HTTP/1.1\r\n\r\n", &mut id));
        assert_ne!(id, first, "each made id is new");
        let long = format!(
            "GET / HTTP/1.1\r\nX-Request-Id: {}\r\n\r\n",
            "a".repeat(129)
        );
        assert!(ids.assign("x-request-id", long.as_bytes(), &mut id));
    }

    #[test]
    fn two_workers_make_different_ids() {
        let (a, b) = (RequestIds::new(0), RequestIds::new(1));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.assign("x-request-id", b"GET / HTTP/1.1\r\n\r\n", &mut x);
        b.assign("x-request-id", b"GET / HTTP/1.1\r\n\r\n", &mut y);
        assert_ne!(x, y);
    }
}
