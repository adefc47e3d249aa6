//! Checks a route's `auth` table (see `docs/CONFIG.md`, `auth`): methods,
//! header names the proxy will write, the realm, the JWT claim rules. The
//! files are checked by the binary when it loads them (`ringgate check`,
//! start-up, SIGHUP), with errors at the key that names them.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::{header_name, Checker};
use crate::auth::*;
use crate::model::{HeaderEdits, MANAGED_HEADERS};

/// Headers an auth table may not write: the ones the proxy manages, Host,
/// and the credentials themselves.
fn writable_header(c: &mut Checker<'_>, value: &Spanned<String>, key: &str) -> Option<String> {
    match header_name(value.get_ref()) {
        Ok(name) if MANAGED_HEADERS.contains(&name.as_str()) => {
            c.err(
                value.span(),
                key,
                format!("{name:?} is a header the proxy manages itself"),
            );
            None
        }
        Ok(name) if name == "host" || name == "authorization" => {
            c.err(
                value.span(),
                key,
                format!("{name:?} cannot carry the caller's identity"),
            );
            None
        }
        Ok(name) => Some(name),
        Err(why) => {
            c.err(value.span(), key, why);
            None
        }
    }
}

fn file(c: &mut Checker<'_>, value: &Spanned<String>, key: String) -> PathBuf {
    let text = value.get_ref().trim();
    if text.is_empty() {
        c.err(value.span(), key, "must name a file");
    }
    PathBuf::from(text)
}

fn text(c: &mut Checker<'_>, value: &Spanned<String>, key: String) -> String {
    let t = value.get_ref();
    if t.is_empty() || t.chars().any(char::is_control) {
        c.err(
            value.span(),
            key,
            "must not be empty or hold control characters",
        );
    }
    t.clone()
}

pub(super) fn auth(
    c: &mut Checker<'_>,
    key: &str,
    raw: &Spanned<RawAuth>,
    request_headers: &HeaderEdits,
) -> Option<Auth> {
    let a = raw.get_ref();
    if a.jwt.is_none() && a.api_keys.is_none() && a.basic.is_none() {
        c.err(
            raw.span(),
            key,
            "names no method; give at least one of jwt, api_keys, basic",
        );
    }
    let jwt = a.jwt.as_ref().map(|j| jwt(c, &format!("{key}.jwt"), j));
    let api_keys = a.api_keys.as_ref().map(|k| {
        let key = format!("{key}.api_keys");
        let raw = k.get_ref();
        let source = match (&raw.header, &raw.query) {
            (Some(_), Some(q)) => {
                c.err(
                    q.span(),
                    format!("{key}.query"),
                    "give header or query, not both",
                );
                ApiKeySource::Header(DEFAULT_API_KEY_HEADER.into())
            }
            (Some(h), None) => writable_header(c, h, &format!("{key}.header"))
                .map_or(ApiKeySource::Header(DEFAULT_API_KEY_HEADER.into()), ApiKeySource::Header),
            (None, Some(q)) => {
                let name = q.get_ref();
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                {
                    c.err(
                        q.span(),
                        format!("{key}.query"),
                        format!("invalid query parameter name {name:?}: use letters, digits, `-`, `.`, `_`, `~`"),
                    );
                }
                ApiKeySource::Query(name.clone())
            }
            (None, None) => ApiKeySource::Header(DEFAULT_API_KEY_HEADER.into()),
        };
        ApiKeyAuth {
            file: file(c, &raw.file, format!("{key}.file")),
            source,
        }
    });
    let basic = a.basic.as_ref().map(|b| BasicAuth {
        htpasswd: file(c, &b.get_ref().htpasswd, format!("{key}.basic.htpasswd")),
    });
    let consumer_header = a
        .consumer_header
        .as_ref()
        .and_then(|h| writable_header(c, h, &format!("{key}.consumer_header")));
    let realm = match &a.realm {
        None => DEFAULT_REALM.to_owned(),
        Some(r) => {
            let t = r.get_ref();
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
            {
                c.err(
                    r.span(),
                    format!("{key}.realm"),
                    "must be 1 to 128 printable ASCII characters, without `\"` or `\\`",
                );
            }
            t.clone()
        }
    };
    let auth = Auth {
        jwt,
        api_keys,
        basic,
        consumer_header,
        realm,
    };
    // Each written header once, and not also edited by request_headers.
    let mut seen: Vec<&str> = Vec::new();
    for name in auth.header_names() {
        if seen.contains(&name) {
            c.err(
                raw.span(),
                key,
                format!("header {name:?} is written twice (consumer_header, claims_to_headers)"),
            );
        } else if request_headers.drops(name.as_bytes()) {
            c.err(
                raw.span(),
                key,
                format!("header {name:?} is also in request_headers; auth writes it"),
            );
        }
        seen.push(name);
    }
    Some(auth)
}

fn jwt(c: &mut Checker<'_>, key: &str, raw: &Spanned<RawJwt>) -> JwtAuth {
    let j = raw.get_ref();
    let mut audiences = Vec::new();
    if let Some(list) = &j.audiences {
        if list.get_ref().is_empty() {
            c.err(
                list.span(),
                format!("{key}.audiences"),
                "is empty; leave it out to refuse tokens that carry aud",
            );
        }
        for a in list.get_ref() {
            let t = text(c, a, format!("{key}.audiences"));
            if audiences.contains(&t) {
                c.err(
                    a.span(),
                    format!("{key}.audiences"),
                    format!("{t:?} is listed twice"),
                );
            }
            audiences.push(t);
        }
    }
    let leeway = match &j.leeway {
        None => Duration::ZERO,
        Some(l) => {
            let d = l.get_ref().0;
            if d > LEEWAY_MAX || d.subsec_nanos() != 0 {
                c.err(
                    l.span(),
                    format!("{key}.leeway"),
                    "must be whole seconds in 0s..=5m",
                );
            }
            d
        }
    };
    let mut claims_to_headers = Vec::new();
    if let Some(map) = &j.claims_to_headers {
        for (claim, header) in map.get_ref() {
            let k = format!("{key}.claims_to_headers");
            if claim.is_empty() {
                c.err(map.span(), k.clone(), "a claim name must not be empty");
            }
            let spanned = Spanned::new(map.span(), header.clone());
            if let Some(h) = writable_header(c, &spanned, &k) {
                claims_to_headers.push((claim.clone(), h));
            }
        }
    }
    JwtAuth {
        keys: file(c, &j.keys, format!("{key}.keys")),
        issuer: j
            .issuer
            .as_ref()
            .map(|i| text(c, i, format!("{key}.issuer"))),
        audiences,
        leeway,
        consumer_claim: j.consumer_claim.as_ref().map_or_else(
            || DEFAULT_CONSUMER_CLAIM.to_owned(),
            |v| text(c, v, format!("{key}.consumer_claim")),
        ),
        claims_to_headers,
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse, to_toml, ApiKeySource, ConfigError, RateLimitKey};

    fn config(route_extra: &str) -> String {
        format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\n\n[[routes]]\nlistener = \"web\"\nupstream = \"api\"\n{route_extra}\n\n[[upstreams]]\nname = \"api\"\nbackends = [{{ address = \"127.0.0.1:9000\" }}]\n"
        )
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, "t.toml").expect_err("errors").0
    }

    #[track_caller]
    fn assert_error(route_extra: &str, key: &str, line: usize, fragment: &str) {
        let errors = errors(&config(route_extra));
        let Some(e) = errors.iter().find(|e| e.key == key) else {
            panic!("no error on {key}: {errors:#?}")
        };
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains(fragment), "{e} lacks {fragment:?}");
    }

    #[test]
    fn every_method_parses_and_prints_back() {
        let text = config(
            "auth = { jwt = { keys = \"jwks.json\", issuer = \"https://id\", audiences = [\"api\"], leeway = \"30s\", claims_to_headers = { sub = \"X-User\", tier = \"x-tier\" } }, api_keys = { file = \"keys.toml\", query = \"api_key\" }, basic = { htpasswd = \"users\" }, consumer_header = \"X-Consumer\" }\nrate_limit = { key = \"consumer\", rate = \"10/s\" }",
        );
        let c = parse(&text, "t.toml").unwrap();
        let a = c.routes[0].auth.as_ref().unwrap();
        let j = a.jwt.as_ref().unwrap();
        assert_eq!(j.leeway.as_secs(), 30);
        assert_eq!(j.consumer_claim, "sub");
        assert_eq!(
            j.claims_to_headers,
            [
                ("sub".into(), "x-user".into()),
                ("tier".into(), "x-tier".into())
            ]
        );
        assert_eq!(
            a.api_keys.as_ref().unwrap().source,
            ApiKeySource::Query("api_key".into())
        );
        assert_eq!(a.consumer_header.as_deref(), Some("x-consumer"));
        assert_eq!(a.realm, "ringgate");
        assert_eq!(
            c.routes[0].rate_limit.as_ref().unwrap().key,
            RateLimitKey::Consumer
        );
        let printed = to_toml(&c);
        let again = parse(&printed, "printed.toml").unwrap();
        assert_eq!(again.routes[0].auth, c.routes[0].auth);
        assert_eq!(to_toml(&again), printed);
    }

    #[test]
    fn api_keys_default_to_the_x_api_key_header() {
        let c = parse(&config("auth = { api_keys = { file = \"k\" } }"), "t.toml").unwrap();
        let k = c.routes[0]
            .auth
            .as_ref()
            .unwrap()
            .api_keys
            .as_ref()
            .unwrap();
        assert_eq!(k.source, ApiKeySource::Header("x-api-key".into()));
    }

    #[test]
    fn auth_mistakes_are_reported_at_their_key() {
        assert_error(
            "auth = { consumer_header = \"x-c\" }",
            "routes[0].auth",
            8,
            "names no method",
        );
        assert_error(
            "auth = { api_keys = { file = \"k\", header = \"x-k\", query = \"k\" } }",
            "routes[0].auth.api_keys.query",
            8,
            "not both",
        );
        assert_error(
            "auth = { basic = { htpasswd = \"u\" }, consumer_header = \"X-Forwarded-For\" }",
            "routes[0].auth.consumer_header",
            8,
            "manages itself",
        );
        assert_error(
            "auth = { jwt = { keys = \"j\", claims_to_headers = { sub = \"x-c\" } }, consumer_header = \"x-c\" }",
            "routes[0].auth",
            8,
            "written twice",
        );
        assert_error(
            "auth = { jwt = { keys = \"j\", leeway = \"1h\" } }",
            "routes[0].auth.jwt.leeway",
            8,
            "0s..=5m",
        );
        assert_error(
            "auth = { basic = { htpasswd = \"\" } }",
            "routes[0].auth.basic.htpasswd",
            8,
            "must name a file",
        );
        assert_error(
            "rate_limit = { key = \"consumer\", rate = \"1/s\" }",
            "routes[0].rate_limit.key",
            8,
            "needs auth",
        );
        assert_error(
            "auth = { basic = { htpasswd = \"u\" }, consumer_header = \"x-c\" }\nrequest_headers = { remove = [\"x-c\"] }",
            "routes[0].auth",
            8,
            "also in request_headers",
        );
        let e = errors(&config("auth = { jwt = { keys = \"j\", isuer = \"x\" } }"));
        assert!(
            e[0].message.contains("unknown field `isuer`") || e[0].message.contains("isuer"),
            "{e:?}"
        );
    }
}
