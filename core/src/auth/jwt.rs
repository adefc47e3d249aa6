//! JWT bearer tokens (RFC 7519, RFC 7515) checked against the keys of a
//! JWKS document (RFC 7517): signature by `jsonwebtoken` on aws-lc-rs, then
//! `exp`, `nbf`, `iss` and `aud` here, against the `now` passed in.
//!
//! The algorithm is the key's, fixed when the JWKS is loaded (its `alg`, or
//! for EC and OKP keys their curve), never the token's: a token whose
//! header names another algorithm than the key it is checked against is
//! refused, which is what stops `alg: none` and HMAC-with-a-public-key
//! confusion.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Reason;

/// Tokens longer than this are refused before any parsing: real tokens are
/// a few hundred bytes to 2 KiB, and parsing and hashing cost grows with
/// length.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What the route's `jwt` table asks besides the keys.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// A token's `aud` must name one of these; empty: a token carrying `aud`
    /// is refused (RFC 7519 §4.1.3: a recipient not named must reject).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// The claim whose value is the consumer's name.
    pub consumer_claim: String,
    /// (claim, lowercase header name): claims sent upstream as headers.
    pub claims_to_headers: Vec<(String, String)>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    /// Checks the signature only: claims are checked here, against `now`.
    validation: Validation,
}

/// The keys of one JWKS file and the route's claim rules.
pub struct JwtVerifier {
    keys: Vec<Key>,
    settings: JwtSettings,
}

/// A verified token's claims as the proxy uses them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The consumer claim's value, when the token has it.
    pub consumer: Option<String>,
    /// (header, value) for each configured claim the token carries.
    pub headers: Vec<(String, String)>,
    /// `exp` (Unix seconds) plus the leeway: until when this holds.
    pub valid_until: u64,
}

/// HMAC keys shorter than the hash output are refused (RFC 7518 §3.2).
fn min_hmac_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        _ => 64,
    }
}

fn algorithm_of(jwk: &Jwk) -> Result<Algorithm, String> {
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(
            Algorithm::try_from(a)
                .map_err(|_| format!("alg {a:?} is not a signature algorithm ringgate verifies"))?,
        ),
    };
    let family_ok = |alg: Algorithm, allowed: &[Algorithm]| allowed.contains(&alg);
    use Algorithm::*;
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let by_curve = match p.curve {
                EllipticCurve::P256 => ES256,
                EllipticCurve::P384 => ES384,
                ref c => return Err(format!("EC curve {c:?} is not supported; use P-256 or P-384")),
            };
            match named {
                Some(a) if a != by_curve => Err(format!(
                    "alg {a:?} does not match the key's curve {:?} ({by_curve:?})",
                    p.curve
                )),
                _ => Ok(by_curve),
            }
        }
        AlgorithmParameters::OctetKeyPair(p) => match (p.curve.clone(), named) {
            (EllipticCurve::Ed25519, None | Some(EdDSA)) => Ok(EdDSA),
            (EllipticCurve::Ed25519, Some(a)) => Err(format!("alg {a:?} does not match an Ed25519 key (EdDSA)")),
            (c, _) => Err(format!("OKP curve {c:?} is not supported; use Ed25519")),
        },
        AlgorithmParameters::RSA(_) => match named {
            Some(a) if family_ok(a, &[RS256, RS384, RS512, PS256, PS384, PS512]) => Ok(a),
            Some(a) => Err(format!("alg {a:?} does not match an RSA key")),
            None => Err("an RSA key needs \"alg\" (RS256, RS384, RS512, PS256, PS384 or PS512): the algorithm comes from the key, never from a token".into()),
        },
        AlgorithmParameters::OctetKey(_) => match named {
            Some(a) if family_ok(a, &[HS256, HS384, HS512]) => Ok(a),
            Some(a) => Err(format!("alg {a:?} does not match a symmetric (oct) key")),
            None => Err("a symmetric (oct) key needs \"alg\" (HS256, HS384 or HS512): the algorithm comes from the key, never from a token".into()),
        },
        _ => Err("unsupported key type; use EC, OKP, RSA or oct".into()),
    }
}

impl JwtVerifier {
    /// Parses a JWKS document (`{"keys": [...]}`); every key must be usable,
    /// so a typo is found by `check`, not by the first token it rejects.
    pub fn from_jwks(text: &str, settings: JwtSettings) -> Result<JwtVerifier, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS (JSON): {e}"))?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS: no \"keys\" array".into());
        };
        if list.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        let mut keys = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            let at = |why: String| format!("keys[{i}]: {why}");
            if raw.get("d").is_some() || raw.get("p").is_some() {
                return Err(at(
                    "holds a private key; publish only public parameters".into()
                ));
            }
            let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| at(e.to_string()))?;
            if let Some(u) = &jwk.common.public_key_use {
                if *u != PublicKeyUse::Signature {
                    return Err(at(format!(
                        "\"use\" is {u:?}; a verification key has \"sig\""
                    )));
                }
            }
            let alg = algorithm_of(&jwk).map_err(at)?;
            let key = DecodingKey::from_jwk(&jwk).map_err(|e| at(format!("unusable key: {e}")))?;
            if let AlgorithmParameters::OctetKey(_) = jwk.algorithm {
                let len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
                if len < min_hmac_bytes(alg) {
                    return Err(at(format!(
                        "a {alg:?} key must have at least {} bytes (RFC 7518 §3.2); this one has {len}",
                        min_hmac_bytes(alg)
                    )));
                }
            }
            let kid = jwk.common.key_id.clone();
            if kid.is_some() && keys.iter().any(|k: &Key| k.kid == kid) {
                return Err(at(format!(
                    "kid {:?} is used by an earlier key",
                    kid.unwrap_or_default()
                )));
            }
            let mut validation = Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            keys.push(Key {
                kid,
                alg,
                key,
                validation,
            });
        }
        Ok(JwtVerifier { keys, settings })
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` (the bytes after `Bearer `) at `now` (Unix seconds).
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Verified, Reason> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Malformed)?;
        // A token naming a key by kid is checked against that key alone;
        // without kid, against every key of the token's algorithm. Either
        // way the key's algorithm must be the one the header names.
        let mut candidates = self.keys.iter().filter(|k| match &header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        });
        let mut reason = Reason::UnknownKey;
        let claims = loop {
            let Some(k) = candidates.next() else {
                return Err(reason);
            };
            if k.alg != header.alg {
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &k.validation) {
                Ok(data) => break data.claims,
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    reason = match e.kind() {
                        ErrorKind::InvalidSignature => Reason::BadSignature,
                        _ => Reason::Malformed,
                    };
                }
            }
        };
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<Verified, Reason> {
        let s = &self.settings;
        let exp = numeric_date(claims.get("exp")).ok_or(Reason::Malformed)?;
        let valid_until = exp.saturating_add(s.leeway_secs);
        if now > valid_until {
            return Err(Reason::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(Some(nbf)).ok_or(Reason::Malformed)?;
            if nbf > now.saturating_add(s.leeway_secs) {
                return Err(Reason::NotYetValid);
            }
        }
        if let Some(issuer) = &s.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(Reason::WrongIssuer);
            }
        }
        match claims.get("aud") {
            None if s.audiences.is_empty() => {}
            None => return Err(Reason::WrongAudience),
            Some(aud) => {
                let named = |a: &Value| {
                    a.as_str()
                        .is_some_and(|a| s.audiences.iter().any(|x| x == a))
                };
                let ok = match aud {
                    Value::String(_) => named(aud),
                    Value::Array(list) => list.iter().any(named),
                    _ => false,
                };
                if !ok {
                    return Err(Reason::WrongAudience);
                }
            }
        }
        let consumer = claims.get(&s.consumer_claim).map(claim_text);
        let headers = s
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                claims.get(claim).map(|v| (header.clone(), claim_text(v)))
            })
            .collect();
        Ok(Verified {
            consumer,
            headers,
            valid_until,
        })
    }
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; truncated.
fn numeric_date(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

/// A claim as header text: strings as they are, anything else as compact
/// JSON. Control characters become `?` so a claim can never end the line.
fn claim_text(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
