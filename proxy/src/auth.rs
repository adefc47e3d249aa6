//! Route authentication as the binary runs it: reads the files each
//! route's `auth` names (JWKS, API key digests, htpasswd) on the main thread
//! (start-up, `ringgate check`, every SIGHUP, so a changed file is picked up
//! by a reload like a renewed certificate), and gives each worker its own
//! [`RouteGuard`]s: the parsed files, shared read-only, plus the worker's
//! caches of verified credentials. The checks themselves are
//! `ringgate_core::auth`; nothing here runs per request but
//! [`RouteGuard::check`], which takes the clock once.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ringgate_config::{ApiKeySource, Auth, Config};
use ringgate_core::auth::api_key::ApiKeys;
use ringgate_core::auth::basic::Htpasswd;
use ringgate_core::auth::jwt::{JwtSettings, JwtVerifier};
use ringgate_core::auth::{Guard, Identity, KeySource, Reason, RouteAuth};

/// Every route's parsed auth files, indexed like `config.routes`.
pub type Loaded = Arc<Vec<Option<Arc<RouteAuth>>>>;

fn read(key: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

/// One route's files; errors lead with the key that names the file.
fn load_route(key: &str, a: &Auth) -> Result<RouteAuth, String> {
    let jwt = match &a.jwt {
        None => None,
        Some(j) => {
            let key = format!("{key}.jwt.keys");
            let settings = JwtSettings {
                issuer: j.issuer.clone(),
                audiences: j.audiences.clone(),
                leeway_secs: j.leeway.as_secs(),
                consumer_claim: j.consumer_claim.clone(),
                claims_to_headers: j.claims_to_headers.clone(),
            };
            let text = read(&key, &j.keys)?;
            Some(
                JwtVerifier::from_jwks(&text, settings)
                    .map_err(|e| format!("{key}: {}: {e}", j.keys.display()))?,
            )
        }
    };
    let api_keys = match &a.api_keys {
        None => None,
        Some(k) => {
            let key = format!("{key}.api_keys.file");
            let keys = ApiKeys::parse(&read(&key, &k.file)?)
                .map_err(|e| format!("{key}: {}: {e}", k.file.display()))?;
            let source = match &k.source {
                ApiKeySource::Header(h) => KeySource::Header(h.clone()),
                ApiKeySource::Query(q) => KeySource::Query(q.clone()),
            };
            Some((keys, source))
        }
    };
    let basic = match &a.basic {
        None => None,
        Some(b) => {
            let key = format!("{key}.basic.htpasswd");
            Some(
                Htpasswd::parse(&read(&key, &b.htpasswd)?)
                    .map_err(|e| format!("{key}: {}: {e}", b.htpasswd.display()))?,
            )
        }
    };
    Ok(RouteAuth::new(
        jwt,
        api_keys,
        basic,
        a.consumer_header.clone(),
        &a.realm,
    ))
}

/// Loads every route's files; `Err` holds every problem found, each as
/// `key: message`.
pub fn load(config: &Config) -> Result<Loaded, Vec<String>> {
    let mut problems = Vec::new();
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let a = r.auth.as_ref()?;
            match load_route(&format!("routes[{i}].auth"), a) {
                Ok(loaded) => Some(Arc::new(loaded)),
                Err(e) => {
                    problems.push(e);
                    None
                }
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(Arc::new(routes))
    } else {
        Err(problems)
    }
}

/// A route's auth on one worker.
pub struct RouteGuard {
    pub auth: Arc<RouteAuth>,
    guard: RefCell<Guard>,
}

impl RouteGuard {
    /// The worker's guards, indexed like `config.routes`.
    pub fn for_worker(loaded: &Loaded) -> Vec<Option<RouteGuard>> {
        loaded
            .iter()
            .map(|a| {
                a.as_ref().map(|auth| RouteGuard {
                    auth: auth.clone(),
                    guard: RefCell::new(Guard::default()),
                })
            })
            .collect()
    }

    /// Checks a request's credentials; on success `out` holds the caller.
    /// Synchronous: the cache borrow never crosses an `.await`.
    pub fn check(&self, head: &[u8], target: &[u8], out: &mut Identity) -> Result<(), Reason> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.auth
            .check(&mut self.guard.borrow_mut(), head, target, now, out)
    }
}

/// The body of a 401 (and the error log's reason) for each refusal.
pub fn refusal_text(reason: Reason) -> &'static str {
    match reason {
        Reason::Missing => "authentication required",
        Reason::Malformed => "invalid credentials: malformed",
        Reason::TooLarge => "invalid credentials: token too large",
        Reason::UnknownKey => "invalid token: no matching key",
        Reason::BadSignature => "invalid token: bad signature",
        Reason::Expired => "invalid token: expired",
        Reason::NotYetValid => "invalid token: not yet valid",
        Reason::WrongIssuer => "invalid token: wrong issuer",
        Reason::WrongAudience => "invalid token: wrong audience",
        Reason::UnknownApiKey => "invalid credentials: unknown API key",
        Reason::BadPassword => "invalid credentials: user or password",
        Reason::Ambiguous => "invalid credentials: more than one of a kind",
    }
}
