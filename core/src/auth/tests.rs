//! Unit tests of route authentication with keys made here (aws-lc-rs) and
//! tokens encoded by `jsonwebtoken`; the integration tests sign their own
//! tokens with another library.

use super::*;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

struct Es256 {
    pkcs8: Vec<u8>,
    jwks: String,
}

fn es256(kid: &str) -> Es256 {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..65]));
    Es256 {
        pkcs8: doc.as_ref().to_vec(),
        jwks: json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "x": x, "y": y}]})
            .to_string(),
    }
}

fn settings() -> jwt::JwtSettings {
    jwt::JwtSettings {
        issuer: Some("https://issuer.test".into()),
        audiences: vec!["api".into()],
        leeway_secs: 30,
        consumer_claim: "sub".into(),
        claims_to_headers: vec![("tier".into(), "x-tier".into())],
    }
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": NOW + 60, "tier": "gold"})
}

fn sign(key: &Es256, kid: &str, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    encode(&h, claims, &EncodingKey::from_ec_der(&key.pkcs8)).unwrap()
}

fn route(key: &Es256) -> RouteAuth {
    let v = JwtVerifier::from_jwks(&key.jwks, settings()).unwrap();
    RouteAuth::new(Some(v), None, None, Some("x-consumer".into()), "api")
}

fn bearer(token: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes()
}

fn check(auth: &RouteAuth, head: &[u8]) -> Result<Identity, Reason> {
    let mut out = Identity::default();
    auth.check(&mut Guard::default(), head, b"/", NOW, &mut out)
        .map(|()| out)
}

#[test]
fn a_valid_es256_token_names_its_consumer_and_claims() {
    let key = es256("k1");
    let auth = route(&key);
    let id = check(&auth, &bearer(&sign(&key, "k1", &claims()))).unwrap();
    assert_eq!(id.consumer, b"alice");
    assert_eq!(
        String::from_utf8(id.lines).unwrap(),
        "x-consumer: alice\r\nx-tier: gold\r\n"
    );
    assert!(auth.strips(b"X-Tier") && auth.strips(b"x-consumer") && !auth.strips(b"host"));
}

#[test]
fn each_bad_token_gets_its_reason() {
    let key = es256("k1");
    let other = es256("k1");
    let auth = route(&key);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        sign(&key, "k1", &c)
    };
    let good = sign(&key, "k1", &claims());
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        B64.encode(claims().to_string())
    );
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(key.jwks.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases: Vec<(String, Reason)> = vec![
        (none, Reason::Malformed),
        (hs256, Reason::UnknownKey),
        (with(&|c| c["exp"] = json!(NOW - 31)), Reason::Expired),
        (with(&|c| c["nbf"] = json!(NOW + 31)), Reason::NotYetValid),
        (
            with(&|c| c["iss"] = json!("https://evil.test")),
            Reason::WrongIssuer,
        ),
        (
            with(&|c| c["aud"] = json!(["other"])),
            Reason::WrongAudience,
        ),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Reason::Malformed,
        ),
        (sign(&other, "k1", &claims()), Reason::BadSignature),
        (sign(&key, "k2", &claims()), Reason::UnknownKey),
        (good[..good.len() - 5].to_string(), Reason::Malformed),
        (
            format!("{good}{}", "A".repeat(jwt::MAX_TOKEN_BYTES)),
            Reason::TooLarge,
        ),
        ("not.a.jwt".into(), Reason::Malformed),
    ];
    for (i, (token, want)) in cases.iter().enumerate() {
        assert_eq!(check(&auth, &bearer(token)), Err(*want), "case {i}");
    }
    // Leeway: 29 s past exp still passes.
    assert!(check(&auth, &bearer(&with(&|c| c["exp"] = json!(NOW - 29)))).is_ok());
    assert_eq!(
        check(&auth, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Err(Reason::Missing)
    );
    assert_eq!(
        check(
            &auth,
            b"GET / HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n"
        ),
        Err(Reason::Missing),
        "a scheme the route does not take is no credential"
    );
}

#[test]
fn two_credentials_of_one_kind_are_ambiguous_even_when_the_first_is_valid() {
    let key = es256("k1");
    let auth = route(&key);
    let good = sign(&key, "k1", &claims());
    let two = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nauthorization: Bearer forged\r\n\r\n"
    );
    assert_eq!(check(&auth, two.as_bytes()).err(), Some(Reason::Ambiguous));
    let underscore = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nAuthorization_: x\r\nAuthorization: Basic Zm9v\r\n\r\n"
    );
    assert_eq!(
        check(&auth, underscore.as_bytes()).err(),
        Some(Reason::Ambiguous)
    );
    assert!(check(&auth, &bearer(&good)).is_ok());
}

#[test]
fn a_verified_token_is_cached_until_it_expires() {
    let key = es256("k1");
    let auth = route(&key);
    let mut guard = Guard::default();
    let token = sign(&key, "k1", &claims());
    let mut out = Identity::default();
    auth.check(&mut guard, &bearer(&token), b"/", NOW, &mut out)
        .unwrap();
    assert_eq!(guard.cached(), (1, 0));
    let mut again = Identity::default();
    auth.check(&mut guard, &bearer(&token), b"/", NOW + 1, &mut again)
        .unwrap();
    assert_eq!(out, again, "a cache hit gives the same identity");
    assert_eq!(
        auth.check(&mut guard, &bearer(&token), b"/", NOW + 91, &mut again),
        Err(Reason::Expired),
        "an expired cached token is checked again, and refused"
    );
}

#[test]
fn jwks_problems_are_found_at_load() {
    let cases = [
        (r#"{"keys": []}"#, "no keys"),
        (
            r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
            "needs \"alg\"",
        ),
        (
            r#"{"keys": [{"kty": "oct", "alg": "HS256", "k": "c2VjcmV0"}]}"#,
            "at least 32 bytes",
        ),
        (
            r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#,
            "needs \"alg\"",
        ),
        (
            r#"{"keys": [{"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"}]}"#,
            "does not match",
        ),
        (
            r#"{"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES384", "x": "AA", "y": "AA"}]}"#,
            "does not match",
        ),
        (
            r#"{"keys": [{"kty": "EC", "crv": "P-256", "d": "AA", "x": "AA", "y": "AA"}]}"#,
            "private key",
        ),
        (r#"{"kes": []}"#, "no \"keys\""),
        ("nope", "not a JWKS"),
    ];
    for (text, says) in cases {
        let e = JwtVerifier::from_jwks(text, settings()).err().unwrap();
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[test]
fn api_keys_from_a_header_or_the_query() {
    let digest: String = digest_of(&[b"k-123"])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = format!("[[keys]]\nconsumer = \"billing\"\nsha256 = \"{digest}\"\n");
    let header = RouteAuth::new(
        None,
        Some((
            ApiKeys::parse(&file).unwrap(),
            KeySource::Header("x-api-key".into()),
        )),
        None,
        Some("x-consumer".into()),
        "r",
    );
    let id = check(&header, b"GET / HTTP/1.1\r\nX-Api-Key: k-123\r\n\r\n").unwrap();
    assert_eq!(id.lines, b"x-consumer: billing\r\n");
    assert_eq!(
        check(&header, b"GET / HTTP/1.1\r\nX-Api-Key: k-124\r\n\r\n"),
        Err(Reason::UnknownApiKey)
    );
    let query = RouteAuth::new(
        None,
        Some((
            ApiKeys::parse(&file).unwrap(),
            KeySource::Query("api_key".into()),
        )),
        None,
        None,
        "r",
    );
    let mut out = Identity::default();
    let mut g = Guard::default();
    query
        .check(
            &mut g,
            b"GET /?a=1&api_key=k-123 HTTP/1.1\r\n\r\n",
            b"/?a=1&api_key=k-123",
            NOW,
            &mut out,
        )
        .unwrap();
    assert_eq!(out.consumer, b"billing");
    assert!(out.lines.is_empty(), "no consumer_header, no line");
    assert_eq!(
        query.check(&mut g, b"", b"/?api_key=nope", NOW, &mut out),
        Err(Reason::UnknownApiKey)
    );
    assert!(String::from_utf8_lossy(query.challenge())
        .contains("ApiKey realm=\"r\", query=\"api_key\""));
}

#[test]
fn basic_credentials_are_verified_once_then_cached() {
    let users = Htpasswd::parse(&format!("alice:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    let auth = RouteAuth::new(None, None, Some(users), Some("x-consumer".into()), "r");
    let head = |cred: &str| {
        format!(
            "GET / HTTP/1.1\r\nAuthorization: basic {}\r\n\r\n",
            base64::engine::general_purpose::STANDARD.encode(cred)
        )
        .into_bytes()
    };
    let mut g = Guard::default();
    let mut out = Identity::default();
    auth.check(&mut g, &head("alice:pw"), b"/", NOW, &mut out)
        .unwrap();
    assert_eq!(out.lines, b"x-consumer: alice\r\n");
    assert_eq!(g.cached(), (0, 1));
    auth.check(&mut g, &head("alice:pw"), b"/", NOW, &mut out)
        .unwrap();
    assert_eq!(g.cached(), (0, 1));
    assert_eq!(
        auth.check(&mut g, &head("alice:pX"), b"/", NOW, &mut out),
        Err(Reason::BadPassword)
    );
    assert_eq!(
        auth.check(
            &mut g,
            b"GET / HTTP/1.1\r\nAuthorization: Basic !!\r\n\r\n",
            b"/",
            NOW,
            &mut out
        ),
        Err(Reason::Malformed)
    );
    assert_eq!(g.cached(), (0, 1), "failures are not cached");
    assert!(String::from_utf8_lossy(auth.challenge())
        .starts_with("WWW-Authenticate: Basic realm=\"r\""));
}

#[test]
fn any_one_method_admits_and_the_first_presented_failure_is_the_reason() {
    let key = es256("k1");
    let users = Htpasswd::parse(&format!("bob:{}\n", bcrypt::hash("pw", 4).unwrap())).unwrap();
    let v = JwtVerifier::from_jwks(&key.jwks, settings()).unwrap();
    let auth = RouteAuth::new(Some(v), None, Some(users), None, "r");
    let basic = format!(
        "GET / HTTP/1.1\r\nAuthorization: Basic {}\r\n\r\n",
        base64::engine::general_purpose::STANDARD.encode("bob:pw")
    );
    assert_eq!(check(&auth, basic.as_bytes()).unwrap().consumer, b"bob");
    assert_eq!(check(&auth, &bearer("x.y.z")), Err(Reason::Malformed));
    let challenge = String::from_utf8_lossy(auth.challenge()).into_owned();
    assert!(
        challenge.contains("Bearer realm") && challenge.contains("Basic realm"),
        "{challenge}"
    );
}
