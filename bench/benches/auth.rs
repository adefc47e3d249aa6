//! criterion micro-benchmarks of route authentication as a worker runs it
//! per request: an ES256 JWT checked with its claims (a cache miss: the
//! signature verified), the same token again from the worker's cache of
//! verified tokens, and the SHA-256 of the token that keys that cache.
//!
//! Run: `cargo bench -p ringgate-bench --bench auth` (figures in
//! docs/BENCHMARKS.md). The key and tokens are made once, outside the
//! timed loop.
#![forbid(unsafe_code)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringgate_core::auth::cache::digest_of;
use ringgate_core::auth::jwt::{JwtSettings, JwtVerifier};
use ringgate_core::auth::{Guard, Identity, RouteAuth};

const NOW: u64 = 1_800_000_000;

/// A route with an ES256 JWKS, issuer, audience and two claims to headers;
/// and a head carrying a typical token (about 400 bytes).
fn setup() -> (RouteAuth, Vec<u8>, String) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}]})
    .to_string();
    let settings = JwtSettings {
        issuer: Some("https://id.example.com".into()),
        audiences: vec!["api".into()],
        leeway_secs: 30,
        consumer_claim: "sub".into(),
        claims_to_headers: vec![
            ("sub".into(), "x-user".into()),
            ("tier".into(), "x-tier".into()),
        ],
    };
    let verifier = JwtVerifier::from_jwks(&jwks, settings).unwrap();
    let auth = RouteAuth::new(Some(verifier), None, None, Some("x-consumer".into()), "api");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({"sub": "user-4711", "iss": "https://id.example.com",
        "aud": "api", "exp": NOW + 3600, "iat": NOW, "tier": "gold", "scope": "read write"});
    let token = encode(&header, &claims, &EncodingKey::from_ec_der(doc.as_ref())).unwrap();
    let head = format!(
        "GET /v1/orders HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer {token}\r\nAccept: */*\r\n\r\n"
    );
    (auth, head.into_bytes(), token)
}

fn bench_jwt(c: &mut Criterion) {
    let (auth, head, token) = setup();
    let mut out = Identity::default();
    let verifier = auth.jwt.as_ref().unwrap();
    c.bench_function("auth/jwt_es256_verify (cache miss)", |b| {
        // What a miss costs: header and claims decoded, signature verified,
        // exp/nbf/iss/aud checked, claims to header values.
        b.iter(|| verifier.verify(black_box(token.as_bytes()), NOW).unwrap())
    });
    let mut guard = Guard::default();
    auth.check(&mut guard, &head, b"/v1/orders", NOW, &mut out)
        .unwrap();
    c.bench_function("auth/jwt_es256_cached (cache hit)", |b| {
        b.iter(|| {
            auth.check(&mut guard, black_box(&head), b"/v1/orders", NOW, &mut out)
                .unwrap();
        })
    });
    c.bench_function("auth/sha256_of_token", |b| {
        b.iter(|| digest_of(&[black_box(token.as_bytes())]))
    });
}

criterion_group!(benches, bench_jwt);
criterion_main!(benches);
