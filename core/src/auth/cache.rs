//! A worker's bounded table of credentials it has already verified, keyed by
//! the SHA-256 of the credential bytes, so a keep-alive client that sends
//! the same token or password again does not pay the signature check or
//! the password hash again. Only verified credentials go in, so a client
//! sending garbage cannot evict anything but by presenting valid ones.
//! Direct-mapped: a slot per digest prefix, a newer entry replaces the one
//! in its slot. No clock here: expiry is compared with the `now` passed in.

use aws_lc_rs::digest;

/// A SHA-256 digest of credential bytes.
pub type Digest = [u8; 32];

/// Slots per table. Each holds one verified credential and its identity
/// (about 100 bytes plus the header lines), so a table stays near 100 KiB
/// per route per worker when full; enough for the distinct tokens one core
/// sees between two reloads in any realistic keep-alive mix.
pub const CACHE_SLOTS: usize = 1024;
const _: () = assert!(CACHE_SLOTS.is_power_of_two());

pub fn digest_of(parts: &[&[u8]]) -> Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

struct Slot<V> {
    digest: Digest,
    /// Unix seconds after which the entry no longer counts (`u64::MAX`:
    /// never, for passwords, which the next reload forgets).
    expires: u64,
    value: V,
}

pub struct VerifiedCache<V> {
    /// Empty until the first insert: a route nobody authenticates against
    /// costs nothing.
    slots: Vec<Option<Slot<V>>>,
}

impl<V> Default for VerifiedCache<V> {
    fn default() -> Self {
        VerifiedCache { slots: Vec::new() }
    }
}

impl<V> VerifiedCache<V> {
    fn index(digest: &Digest) -> usize {
        let mut n = [0u8; 8];
        n.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(n) as usize) & (CACHE_SLOTS - 1)
    }

    /// The value cached for `digest`, if it has not expired by `now`.
    pub fn get(&self, digest: &Digest, now: u64) -> Option<&V> {
        let slot = self.slots.get(Self::index(digest))?.as_ref()?;
        // The digest is of a secret the client sent; it is compared whole,
        // and a timing difference tells nothing about any stored secret.
        (slot.digest == *digest && now <= slot.expires).then_some(&slot.value)
    }

    pub fn insert(&mut self, digest: Digest, expires: u64, value: V) {
        if self.slots.is_empty() {
            self.slots.resize_with(CACHE_SLOTS, || None);
        }
        let i = Self::index(&digest);
        self.slots[i] = Some(Slot {
            digest,
            expires,
            value,
        });
    }

    /// Entries held now (for tests).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_until_it_expires() {
        let mut c = VerifiedCache::default();
        let d = digest_of(&[b"token"]);
        assert!(c.get(&d, 0).is_none());
        c.insert(d, 100, 7u8);
        assert_eq!(c.get(&d, 100), Some(&7));
        assert!(c.get(&d, 101).is_none());
        assert!(c.get(&digest_of(&[b"other"]), 0).is_none());
    }

    #[test]
    fn the_table_never_holds_more_than_its_slots() {
        let mut c = VerifiedCache::default();
        for i in 0..(CACHE_SLOTS * 4) as u32 {
            c.insert(digest_of(&[&i.to_le_bytes()]), u64::MAX, i);
        }
        assert!(c.len() <= CACHE_SLOTS);
        let last = (CACHE_SLOTS * 4 - 1) as u32;
        assert_eq!(
            c.get(&digest_of(&[&last.to_le_bytes()]), 0),
            Some(&last),
            "the newest entry replaces the one in its slot"
        );
    }
}
