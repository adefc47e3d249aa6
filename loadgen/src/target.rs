//! What to load: URLs parsed into validated [`Target`]s and the request bytes
//! each connection sends.
//!
//! Parse, don't validate: a `Target` holds a resolved address, a TLS server
//! name when the scheme is https, and the complete request, so the hot path
//! never looks at a string again. No I/O here except name resolution in
//! [`Target::resolve`].

use std::net::{SocketAddr, ToSocketAddrs};

use thiserror::Error;

use crate::id::{self, IdSlot};

/// A problem with the URL or the request options, reported before any load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("malformed URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("cannot resolve {host:?} (from {url}): {why}")]
    Resolve {
        url: String,
        host: String,
        why: String,
    },
    #[error("bad header {header:?}: {why}")]
    Header { header: String, why: &'static str },
    #[error("bad method {0:?}: a method is one token of letters, digits or !#$%&'*+-.^_`|~")]
    Method(String),
    #[error("bad --check-id name {0:?}: 1 to {max} letters, digits or -._~", max = id::ID_NAME_MAX_BYTES)]
    IdName(String),
    #[error("--check-id needs response bodies, and HEAD responses have none")]
    IdWithHead,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A URL split into its parts; not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Host as written, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Origin-form request target: path and query, at least `/`.
    pub path: String,
    /// The URL as given, for reports.
    pub original: String,
}

fn url_err(url: &str, why: &'static str) -> TargetError {
    TargetError::Url {
        url: url.to_string(),
        why,
    }
}

impl Url {
    /// `http://host[:port][/path][?query]` or `https://...`. No user info,
    /// no fragment sent (it is dropped, as browsers do).
    pub fn parse(url: &str) -> Result<Url, TargetError> {
        let (scheme, rest) = if let Some(r) = strip_prefix_ci(url, "http://") {
            (Scheme::Http, r)
        } else if let Some(r) = strip_prefix_ci(url, "https://") {
            (Scheme::Https, r)
        } else {
            return Err(url_err(url, "it must start with http:// or https://"));
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() {
            return Err(url_err(url, "no host"));
        }
        if authority.contains('@') {
            return Err(url_err(url, "user info is not supported"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(url_err(url, "the path holds spaces or control characters"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some(end) = v6.find(']') else {
                return Err(url_err(url, "unclosed [ in an IPv6 host"));
            };
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(url, p)?,
                None if after.is_empty() => default_port,
                None => return Err(url_err(url, "junk after the IPv6 host")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(url, p)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(url_err(url, "no host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(url_err(url, "the host holds characters a host name cannot"));
        }
        Ok(Url {
            scheme,
            host,
            port,
            path,
            original: url.to_string(),
        })
    }

    /// The Host header value (RFC 9112 §3.2): the port only when not the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = matches!(
            (self.scheme, self.port),
            (Scheme::Http, 80) | (Scheme::Https, 443)
        );
        if default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_port(url: &str, p: &str) -> Result<u16, TargetError> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(url_err(url, "the port is not a number in 1..=65535")),
        Ok(n) => Ok(n),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What every request carries besides the URL.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub method: String,
    /// `(name, value)` pairs, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Ask the server to close after each response (`--no-keepalive`).
    pub close: bool,
    /// `--check-id NAME`: every request's target carries `NAME=<id>` and
    /// its response body must carry it back.
    pub check_id: Option<String>,
}

impl RequestSpec {
    /// Parses a `-H 'Name: value'` argument.
    pub fn parse_header(arg: &str) -> Result<(String, String), TargetError> {
        let err = |why| TargetError::Header {
            header: arg.to_string(),
            why,
        };
        let Some((name, value)) = arg.split_once(':') else {
            return Err(err("expected 'Name: value'"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(err("the name must be a token, with no spaces"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(err("the value holds a control character"));
        }
        for reserved in ["content-length", "transfer-encoding"] {
            if name.eq_ignore_ascii_case(reserved) {
                return Err(err(
                    "ringload sets the body framing itself (use --body or --body-file)",
                ));
            }
        }
        Ok((name.to_string(), value.to_string()))
    }

    /// The request as it goes on the wire, and with `check_id` where its
    /// id's digits sit (all zeros until a send writes them).
    pub fn encode(&self, url: &Url) -> Result<(Vec<u8>, Option<IdSlot>), TargetError> {
        if self.method.is_empty() || !self.method.bytes().all(is_tchar) {
            return Err(TargetError::Method(self.method.clone()));
        }
        let has = |n: &str| self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("{} {}", self.method, url.path).as_bytes());
        let mut slot = None;
        if let Some(name) = &self.check_id {
            if !id::valid_name(name) {
                return Err(TargetError::IdName(name.clone()));
            }
            if self.method.eq_ignore_ascii_case("HEAD") {
                return Err(TargetError::IdWithHead);
            }
            // RFC 3986 §3.4: a new query, or one more parameter of it.
            out.push(if url.path.contains('?') { b'&' } else { b'?' });
            slot = Some(IdSlot {
                at: out.len(),
                name_len: name.len() + 1,
            });
            out.extend_from_slice(&IdSlot::placeholder(name));
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !has("host") {
            out.extend_from_slice(format!("Host: {}\r\n", url.host_header()).as_bytes());
        }
        if !has("user-agent") {
            out.extend_from_slice(
                format!("User-Agent: ringload/{}\r\n", env!("CARGO_PKG_VERSION")).as_bytes(),
            );
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if self.close && !has("connection") {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        // RFC 9110 §8.6: a body is framed; POST/PUT without one say 0.
        if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        Ok((out, slot))
    }
}

/// A URL ready to load: resolved, with its request bytes.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Url,
    pub addr: SocketAddr,
    pub request: Vec<u8>,
    /// Where the request's id goes (`--check-id`).
    pub id: Option<IdSlot>,
    /// The request method is HEAD: responses carry no body.
    pub head_method: bool,
}

impl Target {
    /// Resolves the host (the first address wins) and encodes the request.
    pub fn resolve(url: Url, spec: &RequestSpec) -> Result<Target, TargetError> {
        let (request, id) = spec.encode(&url)?;
        let resolve_err = |why: String| TargetError::Resolve {
            url: url.original.clone(),
            host: url.host.clone(),
            why,
        };
        let mut addrs = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| resolve_err(e.to_string()))?;
        let addr = addrs
            .next()
            .ok_or_else(|| resolve_err("no address".to_string()))?;
        Ok(Target {
            head_method: spec.method.eq_ignore_ascii_case("HEAD"),
            url,
            addr,
            request,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_port_and_path() {
        let u = Url::parse("http://127.0.0.1:8080/a/b?x=1").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Http, "127.0.0.1", 8080, "/a/b?x=1")
        );
        let u = Url::parse("HTTPS://example.com").unwrap();
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (Scheme::Https, 443, "/")
        );
        assert_eq!(u.host_header(), "example.com");
        let u = Url::parse("http://[::1]:9000?q#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/?q")
        );
        assert_eq!(u.host_header(), "[::1]:9000");
    }

    #[test]
    fn malformed_urls_are_refused_with_a_reason() {
        for bad in [
            "localhost:8080",
            "ftp://x/",
            "http://",
            "http://:80/",
            "http://host:0/",
            "http://host:99999/",
            "http://host:port/",
            "http://user@host/",
            "http://[::1/",
            "http://ho st/",
            "http://host/a b",
        ] {
            assert!(
                matches!(Url::parse(bad), Err(TargetError::Url { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn the_request_carries_host_agent_headers_and_framed_body() {
        let url = Url::parse("http://h:81/p").unwrap();
        let spec = RequestSpec {
            method: "POST".into(),
            headers: vec![RequestSpec::parse_header("X-A:  1 ").unwrap()],
            body: b"hello".to_vec(),
            close: true,
            check_id: None,
        };
        let req = String::from_utf8(spec.encode(&url).unwrap().0).unwrap();
        assert!(req.starts_with("POST /p HTTP/1.1\r\nHost: h:81\r\nUser-Agent: ringload/"));
        assert!(req.contains("\r\nX-A: 1\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"));
    }

    #[test]
    fn a_user_host_header_replaces_ours() {
        let url = Url::parse("http://127.0.0.1/").unwrap();
        let spec = RequestSpec {
            method: "GET".into(),
            headers: vec![RequestSpec::parse_header("Host: api.example").unwrap()],
            ..Default::default()
        };
        let req = String::from_utf8(spec.encode(&url).unwrap().0).unwrap();
        assert_eq!(req.matches("Host:").count(), 1);
        assert!(req.contains("Host: api.example\r\n"));
        assert!(!req.contains("Content-Length"));
    }

    #[test]
    fn bad_headers_and_methods_are_refused() {
        for bad in [
            "NoColon",
            "Bad Name: v",
            ": v",
            "X: a\rb",
            "Content-Length: 3",
        ] {
            assert!(RequestSpec::parse_header(bad).is_err(), "{bad:?} accepted");
        }
        let url = Url::parse("http://h/").unwrap();
        let spec = RequestSpec {
            method: "GE T".into(),
            ..Default::default()
        };
        assert!(matches!(spec.encode(&url), Err(TargetError::Method(_))));
    }

    #[test]
    fn check_id_reserves_a_query_parameter_in_the_target() {
        let spec = RequestSpec {
            method: "POST".into(),
            body: b"x".to_vec(),
            check_id: Some("rid".into()),
            ..Default::default()
        };
        for (url, target) in [
            ("http://h/", "/?rid=00000000000000000000"),
            ("http://h/p?a=1", "/p?a=1&rid=00000000000000000000"),
            ("http://h?q", "/?q&rid=00000000000000000000"),
        ] {
            let (mut req, slot) = spec.encode(&Url::parse(url).unwrap()).unwrap();
            let slot = slot.expect("an id slot");
            let line = format!("POST {target} HTTP/1.1\r\n");
            assert!(req.starts_with(line.as_bytes()), "{url}");
            slot.write(&mut req, 99);
            assert_eq!(slot.needle(&req), b"rid=00000000000000000099");
            assert!(req.ends_with(b"Content-Length: 1\r\n\r\nx"));
        }
    }

    #[test]
    fn check_id_refuses_bad_names_and_head() {
        let url = Url::parse("http://h/").unwrap();
        let mut spec = RequestSpec {
            method: "GET".into(),
            check_id: Some("a&b".into()),
            ..Default::default()
        };
        assert!(matches!(spec.encode(&url), Err(TargetError::IdName(_))));
        spec.check_id = Some("rid".into());
        spec.method = "HEAD".into();
        assert!(matches!(spec.encode(&url), Err(TargetError::IdWithHead)));
        spec.check_id = None;
        assert_eq!(spec.encode(&url).unwrap().1, None);
    }
}
