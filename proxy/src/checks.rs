//! A route's request validation (`max_body`, `content_types`,
//! `required_headers`, `required_query`), decided on the request head before
//! anything of the request goes upstream. A chunked body's size is also held
//! to `max_body` while it is read (`ChunkedDecoder::with_max_body`): small
//! enough ones are read whole before the exchange starts
//! ([`reads_body_whole`], as is every body checked against a `body_schema`),
//! larger ones are cut mid-stream.

use std::io::Write as _;

use ringgate_config::RequestChecks;
use ringgate_core::http::{field_lines, header_value, same_field_name, RequestBody, RequestHead};

/// A chunked body on a route whose `max_body` is at most this is read whole
/// before it goes upstream, so one over the limit never reaches the
/// backend; above it, bodies stream and one over the limit is cut.
pub const CHUNKED_BUFFER_MAX: u64 = 1 << 20;

/// Whether the request's body is read whole before it goes upstream, and
/// the most of it that may be: a body checked against a schema, and a
/// chunked one on a route whose `max_body` is small.
pub fn reads_body_whole(checks: &RequestChecks, head: &RequestHead) -> Option<u64> {
    if head.body == RequestBody::Empty {
        return None;
    }
    if checks.body_schema.is_some() {
        return Some(checks.schema_body_max());
    }
    let max = checks.max_body?;
    (head.body == RequestBody::Chunked && max <= CHUNKED_BUFFER_MAX).then_some(max)
}

/// Why a request was refused: its status, and the reason (written into
/// `reason`, which names what was missing).
pub struct Failed {
    pub status: u16,
    /// The label `/metrics` counts it under.
    pub rule: &'static str,
}

/// Checks the head (`src[..head.head_len]`) against the route's rules.
/// On failure `reason` holds the text for the client.
pub fn check(
    checks: &RequestChecks,
    src: &[u8],
    head: &RequestHead,
    reason: &mut Vec<u8>,
) -> Result<(), Failed> {
    reason.clear();
    let fields = &src[..head.head_len];
    if let (Some(max), RequestBody::Length(n)) = (checks.max_body, head.body) {
        if n > max {
            let _ = write!(reason, "request body of {n} bytes is larger than {max}");
            return Err(Failed {
                status: 413,
                rule: "max_body",
            });
        }
    }
    for name in &checks.required_headers {
        if header_value(fields, name.as_bytes()).is_none() {
            let _ = write!(reason, "missing header {name}");
            return Err(Failed {
                status: 400,
                rule: "required_headers",
            });
        }
    }
    if !checks.required_query.is_empty() {
        let path = &src[head.path.clone()];
        let query = path
            .iter()
            .position(|&b| b == b'?')
            .map_or(&[][..], |q| &path[q + 1..]);
        for name in &checks.required_query {
            if !has_query_parameter(query, name.as_bytes()) {
                let _ = write!(reason, "missing query parameter {name}");
                return Err(Failed {
                    status: 400,
                    rule: "required_query",
                });
            }
        }
    }
    let has_body = match head.body {
        RequestBody::Empty => false,
        RequestBody::Length(n) => n > 0,
        RequestBody::Chunked => true,
    };
    if has_body && !checks.content_types.is_empty() {
        // Content-Type is one field (RFC 9110 §8.3): with two, the proxy
        // would check one while the backend parses the body by the other.
        let content_types = field_lines(fields)
            .filter(|(name, _)| same_field_name(name, b"content-type"))
            .count();
        if content_types > 1 {
            reason.extend_from_slice(b"more than one Content-Type");
            return Err(Failed {
                status: 400,
                rule: "content_types",
            });
        }
        let allowed = header_value(fields, b"content-type")
            .is_some_and(|value| media_type_allowed(value, &checks.content_types));
        if !allowed {
            reason.extend_from_slice(b"content type must be one of ");
            for (i, t) in checks.content_types.iter().enumerate() {
                if i > 0 {
                    reason.extend_from_slice(b", ");
                }
                reason.extend_from_slice(t.as_bytes());
            }
            return Err(Failed {
                status: 415,
                rule: "content_types",
            });
        }
    }
    Ok(())
}

/// `name` appears as a parameter of `query` (`name`, `name=` or
/// `name=value`), compared as written.
fn has_query_parameter(query: &[u8], name: &[u8]) -> bool {
    query.split(|&b| b == b'&').any(|pair| {
        let key = pair
            .iter()
            .position(|&b| b == b'=')
            .map_or(pair, |eq| &pair[..eq]);
        key == name
    })
}

/// The value's media type (parameters dropped, case folded) is one of
/// `allowed` (`type/subtype` or `type/*`, lowercase).
fn media_type_allowed(value: &[u8], allowed: &[String]) -> bool {
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    let Some(slash) = essence.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (ty, sub) = (&essence[..slash], &essence[slash + 1..]);
    allowed.iter().any(|a| {
        let (a_ty, a_sub) = a.split_once('/').unwrap_or((a, ""));
        ty.eq_ignore_ascii_case(a_ty.as_bytes())
            && (a_sub == "*" || sub.eq_ignore_ascii_case(a_sub.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_match_by_name() {
        assert!(has_query_parameter(b"a=1&page=2", b"page"));
        assert!(has_query_parameter(b"page", b"page"));
        assert!(has_query_parameter(b"x&page=", b"page"));
        assert!(!has_query_parameter(b"pages=1", b"page"));
        assert!(!has_query_parameter(b"", b"page"));
        assert!(!has_query_parameter(b"a=page", b"page"));
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        let allowed = ["application/json".to_owned(), "text/*".to_owned()];
        assert!(media_type_allowed(
            b"application/json; charset=utf-8",
            &allowed
        ));
        assert!(media_type_allowed(b"Application/JSON", &allowed));
        assert!(media_type_allowed(b"text/csv", &allowed));
        assert!(!media_type_allowed(b"application/xml", &allowed));
        assert!(!media_type_allowed(b"json", &allowed));
        assert!(!media_type_allowed(b"application/jsonx", &allowed));
    }
}
