//! Keys, JWKS documents and signed JWTs for the authentication tests, made
//! with `ring` (RSA keys by the `openssl` CLI, which ring cannot generate)
//! and encoded here by hand: none of it shares code with the proxy's
//! verifier (`jsonwebtoken` on aws-lc-rs).

use std::path::Path;
use std::process::Command;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (RFC 7515 §2).
pub fn b64url(bytes: &[u8]) -> String {
    b64(bytes, B64URL, false)
}

/// Standard base64 with padding (RFC 7617's `user:password`).
pub fn b64std(bytes: &[u8]) -> String {
    b64(bytes, B64STD, true)
}

/// SHA-256 in lowercase hex, as an API keys file stores a key.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

enum Signer {
    Hmac(ring::hmac::Key),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key with its JWK (public parameters only).
pub struct TestKey {
    pub alg: &'static str,
    pub kid: String,
    pub jwk: String,
    signer: Signer,
    /// The RSA public key as DER (for the HMAC-confusion token).
    pub public_der: Vec<u8>,
}

/// Reads one DER length at `at`; returns (length, bytes it took).
fn der_len(d: &[u8], at: usize) -> (usize, usize) {
    match d[at] {
        n if n < 0x80 => (n as usize, 1),
        0x81 => (d[at + 1] as usize, 2),
        _ => ((d[at + 1] as usize) << 8 | d[at + 2] as usize, 3),
    }
}

/// (n, e) of a PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }.
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, l) = der_len(der, 1);
    let mut at = 1 + l;
    let mut ints = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "INTEGER");
        let (len, l) = der_len(der, at + 1);
        let start = at + 1 + l;
        let mut v = &der[start..start + len];
        while v.len() > 1 && v[0] == 0 {
            v = &v[1..];
        }
        ints.push(v.to_vec());
        at = start + len;
    }
    (ints[0].clone(), ints[1].clone())
}

impl TestKey {
    pub fn hmac(alg: &'static str, kid: &str) -> TestKey {
        let (algorithm, len) = match alg {
            "HS256" => (ring::hmac::HMAC_SHA256, 32),
            "HS384" => (ring::hmac::HMAC_SHA384, 48),
            _ => (ring::hmac::HMAC_SHA512, 64),
        };
        let secret: Vec<u8> = (0..len).map(|i| (i * 7 + kid.len()) as u8).collect();
        TestKey {
            alg,
            kid: kid.into(),
            jwk: format!(
                r#"{{"kty":"oct","alg":"{alg}","kid":"{kid}","k":"{}"}}"#,
                b64url(&secret)
            ),
            signer: Signer::Hmac(ring::hmac::Key::new(algorithm, &secret)),
            public_der: Vec::new(),
        }
    }

    /// An RSA-2048 key for RS256 or PS256, made by `openssl genpkey` in `dir`.
    pub fn rsa(alg: &'static str, kid: &str, dir: &Path) -> TestKey {
        let file = dir.join(format!("{kid}.der"));
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .args(["-outform", "DER", "-out"])
            .arg(&file)
            .output()
            .expect("openssl genpkey (the openssl CLI must be on PATH)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // OpenSSL 3 writes a DER key as PKCS#1 RSAPrivateKey.
        let der = std::fs::read(&file).expect("the RSA key");
        let pair = RsaKeyPair::from_der(&der).expect("an RSA PKCS#1 key");
        let public_der = pair.public().as_ref().to_vec();
        let (n, e) = rsa_components(&public_der);
        let encoding: &'static dyn signature::RsaEncoding = match alg {
            "RS256" => &signature::RSA_PKCS1_SHA256,
            _ => &signature::RSA_PSS_SHA256,
        };
        TestKey {
            alg,
            kid: kid.into(),
            jwk: format!(
                r#"{{"kty":"RSA","alg":"{alg}","kid":"{kid}","use":"sig","n":"{}","e":"{}"}}"#,
                b64url(&n),
                b64url(&e)
            ),
            signer: Signer::Rsa(pair, encoding),
            public_der,
        }
    }

    /// ES256 or ES384; the JWK names the curve, not the algorithm.
    pub fn ec(alg: &'static str, kid: &str) -> TestKey {
        let (signing, crv, half) = match alg {
            "ES256" => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            _ => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
        };
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(signing, &rng).expect("EC key");
        let pair = EcdsaKeyPair::from_pkcs8(signing, doc.as_ref(), &rng).expect("EC key");
        let point = pair.public_key().as_ref();
        TestKey {
            alg,
            kid: kid.into(),
            jwk: format!(
                r#"{{"kty":"EC","crv":"{crv}","kid":"{kid}","x":"{}","y":"{}"}}"#,
                b64url(&point[1..1 + half]),
                b64url(&point[1 + half..])
            ),
            signer: Signer::Ec(pair),
            public_der: Vec::new(),
        }
    }

    pub fn ed25519(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("Ed25519 key");
        TestKey {
            alg: "EdDSA",
            kid: kid.into(),
            jwk: format!(
                r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{}"}}"#,
                b64url(pair.public_key().as_ref())
            ),
            signer: Signer::Ed(pair),
            public_der: Vec::new(),
        }
    }

    /// A JWT with this key's algorithm and kid over `claims` (JSON).
    pub fn sign(&self, claims: &str) -> String {
        let header = format!(
            r#"{{"alg":"{}","typ":"JWT","kid":"{}"}}"#,
            self.alg, self.kid
        );
        self.sign_raw(&header, claims)
    }

    /// A JWS over exactly `header` and `claims`, signed with this key.
    pub fn sign_raw(&self, header: &str, claims: &str) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Hmac(k) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(pair, enc) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(*enc, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA sign");
                sig
            }
            Signer::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .expect("EC sign")
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64url(&sig))
    }
}

/// A JWT signed with HMAC-SHA256 keyed by `secret` (the algorithm-confusion
/// attack uses an RSA public key as the secret).
pub fn hs256_with_secret(secret: &[u8], kid: &str, claims: &str) -> String {
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#);
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{input}.{}",
        b64url(ring::hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

/// `{"keys": [...]}` of these keys.
pub fn jwks(keys: &[&TestKey]) -> String {
    let list: Vec<&str> = keys.iter().map(|k| k.jwk.as_str()).collect();
    format!(r#"{{"keys":[{}]}}"#, list.join(","))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, std, url) in [
            ("", "", ""),
            ("f", "Zg==", "Zg"),
            ("fo", "Zm8=", "Zm8"),
            ("foo", "Zm9v", "Zm9v"),
            ("foobar", "Zm9vYmFy", "Zm9vYmFy"),
        ] {
            assert_eq!(b64std(plain.as_bytes()), std);
            assert_eq!(b64url(plain.as_bytes()), url);
        }
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }
}
