//! API keys: a TOML file of SHA-256 digests, each with the consumer it
//! names, so the file never holds a usable key. A presented key is hashed
//! and looked up by its digest, then compared in constant time.
//!
//! ```toml
//! [[keys]]
//! consumer = "billing"
//! sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! ```

use std::collections::HashMap;

use aws_lc_rs::constant_time;
use serde::Deserialize;

use super::cache::{digest_of, Digest};
use super::valid_consumer;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    consumer: String,
    sha256: String,
}

/// Keys longer than this are refused unhashed: no real key is this long.
pub const MAX_KEY_BYTES: usize = 1024;

pub struct ApiKeys {
    /// Digest → consumer. Looking a digest up by its bytes reveals, by
    /// timing, at most how much of an attacker's own digest matches a
    /// stored one, which gives no way to a key (that would need a SHA-256
    /// preimage); the final compare is constant-time anyway.
    by_digest: HashMap<Digest, String>,
}

fn parse_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.by_digest.len())
    }
}

impl ApiKeys {
    /// Parses the keys file. Errors name the entry (`keys[2]`) and, for
    /// TOML errors, the line.
    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })?;
        if file.keys.is_empty() {
            return Err("no [[keys]] entries: every request would be refused".into());
        }
        let mut by_digest = HashMap::with_capacity(file.keys.len());
        for (i, e) in file.keys.into_iter().enumerate() {
            let digest = parse_hex(e.sha256.trim()).ok_or_else(|| {
                format!("keys[{i}].sha256: not a SHA-256 digest (64 hex digits); store `printf %s KEY | sha256sum`, never the key")
            })?;
            valid_consumer(&e.consumer).map_err(|why| format!("keys[{i}].consumer: {why}"))?;
            if let Some(other) = by_digest.insert(digest, e.consumer) {
                return Err(format!(
                    "keys[{i}].sha256: the same key is listed already (for {other:?})"
                ));
            }
        }
        Ok(ApiKeys { by_digest })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The consumer a presented key belongs to.
    pub fn consumer(&self, key: &[u8]) -> Option<&str> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest = digest_of(&[key]);
        let (stored, consumer) = self.by_digest.get_key_value(&digest)?;
        constant_time::verify_slices_are_equal(stored, &digest)
            .ok()
            .map(|()| consumer.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &Digest) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_listed_key_names_its_consumer_and_others_do_not() {
        let text = format!(
            "[[keys]]\nconsumer = \"billing\"\nsha256 = \"{}\"\n",
            hex(&digest_of(&[b"s3cret"]))
        );
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.consumer(b"s3cret"), Some("billing"));
        assert_eq!(keys.consumer(b"s3cret "), None);
        assert_eq!(keys.consumer(b""), None);
    }

    #[test]
    fn a_plain_key_or_a_repeated_digest_is_refused() {
        let e = ApiKeys::parse("[[keys]]\nconsumer = \"a\"\nsha256 = \"s3cret\"\n").unwrap_err();
        assert!(e.starts_with("keys[0].sha256: not a SHA-256 digest"), "{e}");
        let d = hex(&digest_of(&[b"k"]));
        let text = format!(
            "[[keys]]\nconsumer = \"a\"\nsha256 = \"{d}\"\n[[keys]]\nconsumer = \"b\"\nsha256 = \"{d}\"\n"
        );
        let e = ApiKeys::parse(&text).unwrap_err();
        assert!(e.contains("keys[1].sha256: the same key"), "{e}");
        let e = ApiKeys::parse("[[keys]]\nconsumer = \"a\"\nsha = \"x\"\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
    }
}
