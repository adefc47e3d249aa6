//! A route's `auth` table: the serde-shaped mirror (`Raw*`, checked once
//! by `validate::auth`) and the validated types. The files it names (JWKS,
//! API key digests, htpasswd) are read by the binary, not here: this crate
//! reads no file but the config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::raw::HumanDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub jwt: Option<Spanned<RawJwt>>,
    pub api_keys: Option<Spanned<RawApiKeys>>,
    pub basic: Option<Spanned<RawBasic>>,
    pub consumer_header: Option<Spanned<String>>,
    pub realm: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    pub keys: Spanned<String>,
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Spanned<Vec<Spanned<String>>>>,
    pub leeway: Option<Spanned<HumanDuration>>,
    pub consumer_claim: Option<Spanned<String>>,
    pub claims_to_headers: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKeys {
    pub file: Spanned<String>,
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBasic {
    pub htpasswd: Spanned<String>,
}

/// `routes[].auth`: at least one method; a request passes when any passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub jwt: Option<JwtAuth>,
    pub api_keys: Option<ApiKeyAuth>,
    pub basic: Option<BasicAuth>,
    /// Lowercase header that carries the consumer upstream.
    pub consumer_header: Option<String>,
    /// The realm of the `WWW-Authenticate` challenges.
    pub realm: String,
}

impl Auth {
    /// Lowercase names of every header the proxy writes for this route's
    /// callers (and so removes from what the client sent).
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.consumer_header.iter().map(String::as_str).chain(
            self.jwt
                .iter()
                .flat_map(|j| j.claims_to_headers.iter().map(|(_, h)| h.as_str())),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuth {
    /// The JWKS file.
    pub keys: PathBuf,
    pub issuer: Option<String>,
    /// Empty: tokens carrying `aud` are refused.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, whole seconds.
    pub leeway: Duration,
    /// The claim whose value names the consumer.
    pub consumer_claim: String,
    /// (claim, lowercase header), sorted by claim.
    pub claims_to_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    pub file: PathBuf,
    pub source: ApiKeySource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// Lowercase header name.
    Header(String),
    /// Query parameter name.
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub htpasswd: PathBuf,
}

pub const DEFAULT_REALM: &str = "ringgate";
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
pub const DEFAULT_CONSUMER_CLAIM: &str = "sub";
/// Clock skew beyond a few minutes is a broken clock, not skew.
pub const LEEWAY_MAX: Duration = Duration::from_secs(300);
