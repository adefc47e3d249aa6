//! Route authentication: who is calling, decided from the request head
//! alone, before anything goes upstream. A route's [`RouteAuth`] holds what
//! its files said (JWKS, API key digests, htpasswd), parsed once and shared
//! read-only by every worker; each worker keeps a [`Guard`] per route with
//! its caches of credentials it already verified. [`RouteAuth::check`]
//! admits the request when any configured method passes and writes the
//! caller's [`Identity`] (consumer name and the header lines that carry it
//! upstream), or says why it refused.
//!
//! No I/O and no clock: the proxy reads the files and passes `now`.

pub mod api_key;
pub mod basic;
pub mod cache;
pub mod jwt;

use base64::Engine as _;

use api_key::ApiKeys;
use basic::Htpasswd;
use cache::{digest_of, VerifiedCache};
use jwt::JwtVerifier;

/// Why a request was refused; `LABELS` names them in metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credentials of any method the route accepts.
    Missing = 0,
    /// A credential that does not parse (not a JWT, bad base64, a token
    /// without `exp`, a signature that does not decode).
    Malformed,
    /// A token over [`jwt::MAX_TOKEN_BYTES`].
    TooLarge,
    /// No key of the JWKS matches the token's `kid` and algorithm
    /// (`alg: none` and algorithm confusion end here).
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// An API key that is not in the file.
    UnknownApiKey,
    /// Basic credentials that do not match the htpasswd file.
    BadPassword,
    /// Two credentials of one kind (two `Authorization` fields, two API-key
    /// fields or query parameters): the proxy would check one while a
    /// backend that reads the last, or all, reads another.
    Ambiguous,
}

impl Reason {
    pub const COUNT: usize = 12;
    pub const LABELS: [&'static str; Reason::COUNT] = [
        "missing",
        "malformed",
        "too_large",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "unknown_api_key",
        "bad_password",
        "ambiguous",
    ];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// Where an API key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (lowercase name).
    Header(String),
    /// A query parameter of the target, compared as sent (not decoded).
    Query(String),
}

/// A consumer name as it may appear in a header and the access log.
pub fn valid_consumer(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("a consumer name must be 1 to 256 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(
            "a consumer name may only hold visible ASCII characters, without `\"` or `\\`".into(),
        );
    }
    Ok(())
}

/// What a route's `auth` table says, with its files parsed.
pub struct RouteAuth {
    pub jwt: Option<JwtVerifier>,
    pub api_keys: Option<(ApiKeys, KeySource)>,
    pub basic: Option<Htpasswd>,
    /// The header that carries the consumer upstream (lowercase).
    pub consumer_header: Option<String>,
    /// Lowercase names the client may not send upstream: the consumer
    /// header and every `claims_to_headers` target.
    pub strip: Vec<String>,
    /// The `WWW-Authenticate` lines of a 401, each ending in CRLF.
    challenge: Vec<u8>,
}

/// The caller, as established by [`RouteAuth::check`]. Reused from request
/// to request so a warm connection does not allocate for it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The consumer's name; empty when the credential names none (a JWT
    /// without the consumer claim).
    pub consumer: Vec<u8>,
    /// Header lines for the upstream head (`name: value\r\n`).
    pub lines: Vec<u8>,
}

impl Identity {
    pub fn clear(&mut self) {
        self.consumer.clear();
        self.lines.clear();
    }
}

/// One worker's caches for one route.
#[derive(Default)]
pub struct Guard {
    tokens: VerifiedCache<Identity>,
    /// Verified Basic credentials → the user.
    passwords: VerifiedCache<Box<str>>,
}

impl Guard {
    /// Cached verified tokens and passwords (for tests and benches).
    pub fn cached(&self) -> (usize, usize) {
        (self.tokens.len(), self.passwords.len())
    }
}

/// The scheme's token after `Authorization: <scheme> ` (RFC 9110 §11.1:
/// the scheme is case-insensitive).
fn authorization<'a>(head: &'a [u8], scheme: &[u8]) -> Result<Option<&'a [u8]>, Reason> {
    let Some(value) = only_header_value(head, b"authorization")? else {
        return Ok(None);
    };
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return Ok(None);
    };
    let (s, rest) = value.split_at(space);
    Ok(s.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_ascii_start()))
}

/// The value of the one field `name` (`_` read as `-`, as a CGI backend
/// reads it); [`Reason::Ambiguous`] when there are two.
fn only_header_value<'a>(head: &'a [u8], name: &[u8]) -> Result<Option<&'a [u8]>, Reason> {
    let mut found = None;
    for (field, value) in crate::http::field_lines(head) {
        if crate::http::same_field_name(field, name) {
            if found.is_some() {
                return Err(Reason::Ambiguous);
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// The value of query parameter `name` in a request target;
/// [`Reason::Ambiguous`] when it is given twice.
fn query_value<'a>(target: &'a [u8], name: &[u8]) -> Result<Option<&'a [u8]>, Reason> {
    let Some(q) = target.iter().position(|&b| b == b'?') else {
        return Ok(None);
    };
    let mut found = None;
    for pair in target[q + 1..].split(|&b| b == b'&') {
        let eq = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        if &pair[..eq] == name {
            if found.is_some() {
                return Err(Reason::Ambiguous);
            }
            found = Some(pair.get(eq + 1..).unwrap_or(b""));
        }
    }
    Ok(found)
}

/// A quoted-string's content for a challenge: no `"`, `\` or controls.
fn realm_ok(realm: &str) -> bool {
    realm
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

impl RouteAuth {
    pub fn new(
        jwt: Option<JwtVerifier>,
        api_keys: Option<(ApiKeys, KeySource)>,
        basic: Option<Htpasswd>,
        consumer_header: Option<String>,
        realm: &str,
    ) -> RouteAuth {
        debug_assert!(realm_ok(realm), "the config checks the realm");
        let mut strip: Vec<String> = consumer_header.iter().cloned().collect();
        if let Some(j) = &jwt {
            strip.extend(
                j.settings()
                    .claims_to_headers
                    .iter()
                    .map(|(_, h)| h.clone()),
            );
        }
        let mut challenge = Vec::new();
        // RFC 6750 §3 for Bearer, RFC 7617 §2 for Basic; API keys have no
        // registered scheme, so theirs names the header or parameter.
        if jwt.is_some() {
            challenge.extend_from_slice(
                format!("WWW-Authenticate: Bearer realm=\"{realm}\"\r\n").as_bytes(),
            );
        }
        if basic.is_some() {
            challenge.extend_from_slice(
                format!("WWW-Authenticate: Basic realm=\"{realm}\", charset=\"UTF-8\"\r\n")
                    .as_bytes(),
            );
        }
        if let Some((_, source)) = &api_keys {
            let (kind, name) = match source {
                KeySource::Header(h) => ("header", h),
                KeySource::Query(q) => ("query", q),
            };
            challenge.extend_from_slice(
                format!("WWW-Authenticate: ApiKey realm=\"{realm}\", {kind}=\"{name}\"\r\n")
                    .as_bytes(),
            );
        }
        RouteAuth {
            jwt,
            api_keys,
            basic,
            consumer_header,
            strip,
            challenge,
        }
    }

    /// The `WWW-Authenticate` lines a refusal carries, each ending in CRLF.
    pub fn challenge(&self) -> &[u8] {
        &self.challenge
    }

    /// Whether the client's copy of header `name` must be dropped.
    pub fn strips(&self, name: &[u8]) -> bool {
        // `_` read as `-`, as a CGI or WSGI backend reads it.
        self.strip
            .iter()
            .any(|s| crate::http::same_field_name(name, s.as_bytes()))
    }

    fn consumer_line(&self, out: &mut Identity) {
        if let (Some(h), false) = (&self.consumer_header, out.consumer.is_empty()) {
            out.lines.extend_from_slice(h.as_bytes());
            out.lines.extend_from_slice(b": ");
            out.lines.extend_from_slice(&out.consumer);
            out.lines.extend_from_slice(b"\r\n");
        }
    }

    /// Admits the request when one configured method accepts its
    /// credentials, writing the caller into `out`. `head` is the request
    /// head, `target` its request-target, `now` Unix seconds. When every
    /// method fails, the reason is that of the first method the client
    /// sent credentials for (JWT, then API key, then Basic), or `Missing`.
    pub fn check(
        &self,
        guard: &mut Guard,
        head: &[u8],
        target: &[u8],
        now: u64,
        out: &mut Identity,
    ) -> Result<(), Reason> {
        out.clear();
        let mut first_failure: Option<Reason> = None;
        let mut fail = |r: Reason| {
            first_failure.get_or_insert(r);
        };
        if let Some(verifier) = &self.jwt {
            if let Some(token) = authorization(head, b"bearer")? {
                match self.check_jwt(verifier, guard, token, now, out) {
                    Ok(()) => return Ok(()),
                    Err(r) => fail(r),
                }
            }
        }
        if let Some((keys, source)) = &self.api_keys {
            let presented = match source {
                KeySource::Header(h) => only_header_value(head, h.as_bytes())?,
                KeySource::Query(q) => query_value(target, q.as_bytes())?,
            };
            if let Some(key) = presented {
                match keys.consumer(key) {
                    Some(consumer) => {
                        out.consumer.extend_from_slice(consumer.as_bytes());
                        self.consumer_line(out);
                        return Ok(());
                    }
                    None => fail(Reason::UnknownApiKey),
                }
            }
        }
        if let Some(users) = &self.basic {
            if let Some(encoded) = authorization(head, b"basic")? {
                match Self::check_basic(users, guard, encoded, now) {
                    Ok(user) => {
                        out.consumer.extend_from_slice(user.as_bytes());
                        self.consumer_line(out);
                        return Ok(());
                    }
                    Err(r) => fail(r),
                }
            }
        }
        Err(first_failure.unwrap_or(Reason::Missing))
    }

    fn check_jwt(
        &self,
        verifier: &JwtVerifier,
        guard: &mut Guard,
        token: &[u8],
        now: u64,
        out: &mut Identity,
    ) -> Result<(), Reason> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(Reason::TooLarge);
        }
        let digest = digest_of(&[token]);
        if let Some(hit) = guard.tokens.get(&digest, now) {
            out.consumer.extend_from_slice(&hit.consumer);
            out.lines.extend_from_slice(&hit.lines);
            return Ok(());
        }
        let verified = verifier.verify(token, now)?;
        if let Some(c) = &verified.consumer {
            out.consumer.extend_from_slice(c.as_bytes());
        }
        self.consumer_line(out);
        for (header, value) in &verified.headers {
            out.lines.extend_from_slice(header.as_bytes());
            out.lines.extend_from_slice(b": ");
            out.lines.extend_from_slice(value.as_bytes());
            out.lines.extend_from_slice(b"\r\n");
        }
        guard
            .tokens
            .insert(digest, verified.valid_until, out.clone());
        Ok(())
    }

    fn check_basic<'g>(
        users: &Htpasswd,
        guard: &'g mut Guard,
        encoded: &[u8],
        now: u64,
    ) -> Result<&'g str, Reason> {
        // Base64 of `user:password`; anything longer is not a credential.
        if encoded.len() > 1024 {
            return Err(Reason::Malformed);
        }
        let digest = digest_of(&[b"basic\0", encoded]);
        if guard.passwords.get(&digest, now).is_none() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| Reason::Malformed)?;
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or(Reason::Malformed)?;
            let user = std::str::from_utf8(&decoded[..colon]).map_err(|_| Reason::BadPassword)?;
            if !users.verify(user, &decoded[colon + 1..]) {
                return Err(Reason::BadPassword);
            }
            guard.passwords.insert(digest, u64::MAX, user.into());
        }
        guard
            .passwords
            .get(&digest, now)
            .map(|u| &**u)
            .ok_or(Reason::BadPassword)
    }
}

#[cfg(test)]
mod tests;
