//! This proxy's name in the `Via` field it adds to forwarded requests
//! (`[server] via`, RFC 9110 §7.6.3), which is also how it recognises a
//! request that has come back to it: a route or upstream that points at
//! its own listener would otherwise forward one request to itself until
//! every connection and descriptor is spent.

use std::sync::OnceLock;

use ringgate_config::Via;

/// The pseudonym `setting` names: `auto` is `ringgate-` and 12 hex digits,
/// random per process (std's hasher keys come from the OS), so two
/// ringgates in a chain never take each other for a loop, and a reload
/// keeps it.
pub fn pseudonym(setting: &Via) -> Option<&str> {
    static AUTO: OnceLock<String> = OnceLock::new();
    match setting {
        Via::Off => None,
        Via::Named(name) => Some(name),
        Via::Auto => Some(AUTO.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            format!("ringgate-{:012x}", h.finish() & 0xffff_ffff_ffff)
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_one_token_per_process() {
        let a = pseudonym(&Via::Auto).expect("auto names");
        assert_eq!(Some(a), pseudonym(&Via::Auto));
        assert!(
            a.starts_with("ringgate-") && a.len() == "ringgate-".len() + 12,
            "{a}"
        );
        assert_eq!(pseudonym(&Via::Off), None);
        assert_eq!(pseudonym(&Via::Named("edge".into())), Some("edge"));
    }
}
