//! CORS on a route (`cors = { ... }`): preflights (`OPTIONS` with `Origin`
//! and `Access-Control-Request-Method`) answered by the proxy, and the
//! `Access-Control-*` fields of an allowed origin added to the responses
//! of its other requests (the backend's own are replaced).

use std::io::Write as _;

use ringgate_config::Cors;
use ringgate_core::http::{header_value, RequestHead};

/// What a preflight asks: its origin, method and header list.
pub struct Preflight<'a> {
    pub origin: &'a [u8],
    pub method: &'a [u8],
    pub headers: Option<&'a [u8]>,
}

/// The head as a preflight, if it is one.
pub fn preflight<'a>(src: &'a [u8], head: &RequestHead) -> Option<Preflight<'a>> {
    if &src[head.method.clone()] != b"OPTIONS" {
        return None;
    }
    let fields = &src[..head.head_len];
    Some(Preflight {
        origin: header_value(fields, b"origin")?,
        method: header_value(fields, b"access-control-request-method")?,
        headers: header_value(fields, b"access-control-request-headers"),
    })
}

/// The answer to a preflight: `Ok` with the fields of a 204 (`out`), or
/// `Err` with why it is refused (403).
pub fn answer_preflight(cors: &Cors, p: &Preflight<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    if !cors.allows_origin(p.origin) {
        return Err("CORS preflight refused: origin not allowed".into());
    }
    if !cors.methods.iter().any(|m| m.as_bytes() == p.method) {
        return Err(format!(
            "CORS preflight refused: method {} not allowed",
            String::from_utf8_lossy(p.method)
        ));
    }
    let any_header = cors.headers.iter().any(|h| h == "*");
    if let Some(asked) = p.headers {
        for name in asked.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if name.is_empty() {
                continue;
            }
            if !any_header
                && !cors
                    .headers
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            {
                return Err(format!(
                    "CORS preflight refused: header {} not allowed",
                    String::from_utf8_lossy(name)
                ));
            }
        }
    }
    allow_origin(cors, p.origin, out);
    out.extend_from_slice(b"Access-Control-Allow-Methods: ");
    out.extend_from_slice(cors.methods.join(", ").as_bytes());
    out.extend_from_slice(b"\r\n");
    match (any_header, p.headers) {
        // `*` with credentials is refused by browsers: echo what was asked.
        (true, Some(asked)) => {
            out.extend_from_slice(b"Access-Control-Allow-Headers: ");
            out.extend_from_slice(asked);
            out.extend_from_slice(b"\r\n");
        }
        (false, _) if !cors.headers.is_empty() => {
            out.extend_from_slice(b"Access-Control-Allow-Headers: ");
            out.extend_from_slice(cors.headers.join(", ").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    if let Some(age) = cors.max_age {
        let _ = write!(out, "Access-Control-Max-Age: {}\r\n", age.as_secs());
    }
    out.extend_from_slice(
        b"Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n",
    );
    Ok(())
}

/// The fields an allowed origin's (non-preflight) response carries;
/// `false` (nothing written) when `origin` is not allowed.
pub fn response_fields(cors: &Cors, origin: &[u8], out: &mut Vec<u8>) -> bool {
    if !cors.allows_origin(origin) {
        return false;
    }
    allow_origin(cors, origin, out);
    if !cors.expose_headers.is_empty() {
        out.extend_from_slice(b"Access-Control-Expose-Headers: ");
        out.extend_from_slice(cors.expose_headers.join(", ").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Vary: Origin\r\n");
    true
}

fn allow_origin(cors: &Cors, origin: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"Access-Control-Allow-Origin: ");
    if cors.origins.iter().any(|o| o == "*") && !cors.credentials {
        out.push(b'*');
    } else {
        out.extend_from_slice(origin);
    }
    out.extend_from_slice(b"\r\n");
    if cors.credentials {
        out.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            origins: vec!["https://app.test".into(), "https://*.example.test".into()],
            methods: vec!["GET".into(), "PUT".into()],
            headers: vec!["content-type".into(), "x-token".into()],
            expose_headers: vec!["x-total".into()],
            credentials: true,
            max_age: Some(std::time::Duration::from_secs(600)),
        }
    }

    #[test]
    fn origins_match_exactly_or_by_wildcard_label() {
        let c = cors();
        assert!(c.allows_origin(b"https://app.test"));
        assert!(c.allows_origin(b"HTTPS://APP.TEST"));
        assert!(c.allows_origin(b"https://a.example.test"));
        assert!(c.allows_origin(b"https://a.b.example.test"));
        assert!(!c.allows_origin(b"https://example.test"));
        assert!(!c.allows_origin(b"https://evilexample.test"));
        assert!(!c.allows_origin(b"http://a.example.test"));
        assert!(!c.allows_origin(b"https://app.test.evil"));
        assert!(!c.allows_origin(b"https://x/y.example.test"));
        assert!(!c.allows_origin(b"null"));
    }

    #[test]
    fn a_preflight_is_checked_and_answered() {
        let c = cors();
        let mut out = Vec::new();
        let ok = Preflight {
            origin: b"https://app.test",
            method: b"PUT",
            headers: Some(b"Content-Type, X-Token"),
        };
        answer_preflight(&c, &ok, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Access-Control-Allow-Origin: https://app.test\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Access-Control-Allow-Credentials: true\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Access-Control-Allow-Methods: GET, PUT\r\n"),
            "{text}"
        );
        assert!(text.contains("Access-Control-Max-Age: 600\r\n"), "{text}");
        let mut out = Vec::new();
        let bad_method = Preflight {
            method: b"DELETE",
            ..ok
        };
        assert!(answer_preflight(&c, &bad_method, &mut out).is_err());
        let bad_header = Preflight {
            headers: Some(b"x-other"),
            ..ok
        };
        assert!(answer_preflight(&c, &bad_header, &mut out).is_err());
        let bad_origin = Preflight {
            origin: b"https://evil.test",
            ..ok
        };
        assert!(answer_preflight(&c, &bad_origin, &mut out).is_err());
    }
}
