//! HTTP Basic credentials (RFC 7617) checked against an htpasswd file of
//! bcrypt (`$2a$`, `$2b$`, `$2y$`) or argon2 (`$argon2id$`, `$argon2i$`,
//! `$argon2d$`) hashes. Plain text, crypt(3), MD5 (`$apr1$`) and SHA-1
//! (`{SHA}`) entries are refused when the file is loaded: they either are
//! the password or can be brute-forced at GPU speed. Work factors are
//! capped, since every check runs on a worker's core.

use std::collections::HashMap;
use std::str::FromStr;

use argon2::{Argon2, PasswordHash, PasswordVerifier};

use super::valid_consumer;

/// bcrypt costs above this take longer than 100 ms per check on one core.
pub const BCRYPT_COST_MAX: u32 = 14;
/// argon2 memory per check, KiB: a check allocates it on the worker.
pub const ARGON2_MEMORY_KIB_MAX: u32 = 64 * 1024;
pub const ARGON2_TIME_MAX: u32 = 10;
pub const ARGON2_LANES_MAX: u32 = 4;

enum Hash {
    Bcrypt(String),
    Argon2(String),
}

pub struct Htpasswd {
    users: HashMap<String, Hash>,
}

fn classify(hash: &str) -> Result<Hash, String> {
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        let parts = bcrypt::HashParts::from_str(hash)
            .map_err(|e| format!("not a valid bcrypt hash: {e}"))?;
        if parts.get_cost() > BCRYPT_COST_MAX {
            return Err(format!(
                "bcrypt cost {} is above {BCRYPT_COST_MAX}: every check would hold a worker for seconds",
                parts.get_cost()
            ));
        }
        return Ok(Hash::Bcrypt(hash.to_owned()));
    }
    if hash.starts_with("$argon2") {
        let parsed =
            PasswordHash::new(hash).map_err(|e| format!("not a valid argon2 hash: {e}"))?;
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("not a valid argon2 hash: {e}"))?;
        if params.m_cost() > ARGON2_MEMORY_KIB_MAX
            || params.t_cost() > ARGON2_TIME_MAX
            || params.p_cost() > ARGON2_LANES_MAX
        {
            return Err(format!(
                "argon2 parameters m={} t={} p={} exceed m={ARGON2_MEMORY_KIB_MAX} t={ARGON2_TIME_MAX} p={ARGON2_LANES_MAX}",
                params.m_cost(),
                params.t_cost(),
                params.p_cost()
            ));
        }
        return Ok(Hash::Argon2(hash.to_owned()));
    }
    let what = if hash.starts_with("{SHA}") {
        "a SHA-1 hash"
    } else if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        "an MD5 hash"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt hash"
    } else if hash.starts_with('$') {
        "an unknown hash format"
    } else {
        "a plain-text password (or crypt(3) DES)"
    };
    Err(format!(
        "{what} is refused; use bcrypt (`htpasswd -B`) or argon2"
    ))
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Htpasswd({} users)", self.users.len())
    }
}

impl Htpasswd {
    /// Parses `user:hash` lines; blank lines and `#` comments are skipped.
    /// Errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: String| format!("line {}: {why}", n + 1);
            let Some((user, hash)) = line.split_once(':') else {
                return Err(at("not `user:hash`".into()));
            };
            valid_consumer(user).map_err(|why| at(format!("user {user:?}: {why}")))?;
            let hash = classify(hash).map_err(|why| at(format!("user {user:?}: {why}")))?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(at(format!("user {user:?} is listed twice")));
            }
        }
        if users.is_empty() {
            return Err("no users: every request would be refused".into());
        }
        Ok(Htpasswd { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s; a bcrypt or argon2 computation (the
    /// expensive part, which the caller caches).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            None => false,
            Some(Hash::Bcrypt(h)) => bcrypt::verify(password, h).unwrap_or(false),
            Some(Hash::Argon2(h)) => PasswordHash::new(h)
                .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn bcrypt_and_argon2_entries_verify() {
        let b = bcrypt::hash("pw1", 4).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"pw2", &salt)
            .unwrap()
            .to_string();
        let file = Htpasswd::parse(&format!("# users\nalice:{b}\n\nbob:{a}\n")).unwrap();
        assert!(file.verify("alice", b"pw1"));
        assert!(!file.verify("alice", b"pw2"));
        assert!(file.verify("bob", b"pw2"));
        assert!(!file.verify("bob", b"pw1"));
        assert!(!file.verify("carol", b"pw1"));
    }

    #[test]
    fn weak_or_unknown_formats_are_refused_with_their_line() {
        for (entry, says) in [
            ("alice:secret", "plain-text"),
            ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("alice:$apr1$abc$def", "MD5"),
            ("alice:$6$salt$hash", "SHA-crypt"),
            (
                "alice:$2y$31$L6Bc/AlTQHyd9liGgGEZyOFLPHNgyxeEPfgYfBCVxJ7JIlwxyVU3u",
                "cost",
            ),
            ("alice", "user:hash"),
        ] {
            let e = Htpasswd::parse(&format!("\n{entry}\n")).unwrap_err();
            assert!(e.starts_with("line 2:") && e.contains(says), "{entry}: {e}");
        }
    }
}
