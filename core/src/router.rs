//! Request routing: picks a route's target from the Host header, the path,
//! the method and, where a route asks for them, header values.
//!
//! Owns the route table, built once per config snapshot by [`Router::new`]
//! and indexed by host, then by header value; [`Router::find`] runs on every
//! request and allocates nothing, and its cost does not grow with the number
//! of hosts or of header values routed on. The target is
//! an index into the caller's upstream list: this module knows nothing of
//! upstreams or backends. No I/O here.
//!
//! Matching is on raw bytes: the caller percent-decodes or normalises the
//! path (or refuses it) before routing if it wants that. A path prefix matches
//! byte-wise, so `/api` also matches `/apix`; write `/api/` to stop at a
//! segment boundary.

use std::collections::HashMap;

use crate::http::header_value;

/// One route as the config describes it.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Lowercase exact host (`api.example.com`) or wildcard (`*.example.com`,
    /// matching any subdomain depth of `example.com` but not `example.com`
    /// itself). `None` matches any host, and requests without one.
    pub host: Option<String>,
    /// Byte prefix of the path; `""` or `"/"` matches every origin-form path.
    pub path_prefix: String,
    /// Methods accepted, compared case-sensitively (RFC 9110 §9.1); empty
    /// accepts any method.
    pub methods: Vec<String>,
    /// Header fields the request must carry with exactly these values (name
    /// case-insensitive, the first field of that name counts); empty: none.
    pub headers: Vec<(String, String)>,
    /// What the route leads to (an upstream index, for the proxy).
    pub target: usize,
}

/// How a route constrains the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostMatch {
    /// Lowercase host, no trailing dot.
    Exact(Box<[u8]>),
    /// Lowercase suffix including its leading dot: `*.example.com` is stored
    /// as `.example.com`.
    Wildcard(Box<[u8]>),
    Any,
}

impl HostMatch {
    fn parse(host: Option<&str>) -> Self {
        let Some(host) = host else {
            return HostMatch::Any;
        };
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => {
                HostMatch::Wildcard(suffix.as_bytes().into())
            }
            _ => HostMatch::Exact(host.as_bytes().into()),
        }
    }

    /// Order of host classes, most specific first: exact, then wildcards by
    /// longer suffix, then host-less.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostMatch::Exact(_) => (0, std::cmp::Reverse(0)),
            HostMatch::Wildcard(s) => (1, std::cmp::Reverse(s.len())),
            HostMatch::Any => (2, std::cmp::Reverse(0)),
        }
    }

    /// `host` is already normalised by [`normalize_host`] but not lowercased.
    fn matches(&self, host: Option<&[u8]>) -> bool {
        match (self, host) {
            (HostMatch::Any, _) => true,
            (_, None) => false,
            (HostMatch::Exact(want), Some(h)) => h.eq_ignore_ascii_case(want),
            (HostMatch::Wildcard(suffix), Some(h)) => {
                h.len() > suffix.len() && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    host: HostMatch,
    path_prefix: Box<[u8]>,
    methods: Box<[Box<[u8]>]>,
    headers: Box<[HeaderCondition]>,
    target: usize,
}

/// A header the request must carry with exactly this value.
#[derive(Debug, Clone)]
struct HeaderCondition {
    name: Box<[u8]>,
    value: Box<[u8]>,
}

#[cfg(test)]
thread_local! {
    /// Routes whose conditions lookups on this thread checked, for the tests
    /// that bound the work of one lookup.
    static ROUTES_EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Route {
    #[inline]
    fn takes(&self, path: &[u8], method: &[u8], head: &[u8]) -> bool {
        #[cfg(test)]
        ROUTES_EXAMINED.with(|n| n.set(n.get() + 1));
        path.starts_with(&self.path_prefix)
            && (self.methods.is_empty() || self.methods.iter().any(|m| **m == *method))
            && self
                .headers
                .iter()
                .all(|h| header_value(head, &h.name) == Some(&h.value[..]))
    }
}

/// The route table, sorted most specific first so the first match wins, and
/// indexed by host so a lookup only scans the routes its host can match, and
/// within a host by header value so it only checks the header routes whose
/// value the request carries.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Box<[Route]>,
    /// Lowercase exact host -> its routes.
    exact: HashMap<Box<[u8]>, Bucket>,
    /// Lowercase wildcard suffix (with its leading dot) -> its routes.
    wildcard: HashMap<Box<[u8]>, Bucket>,
    /// Host-less routes.
    any: Bucket,
    /// Some route lists methods: the method can change the route.
    by_method: bool,
}

/// The routes of one host key, as table indices in table order. Those with
/// header conditions are indexed by one condition's value, so that ten
/// thousand routes told apart by `x-tenant` cost a lookup one scan of the
/// head and a hash probe rather than ten thousand scans of it. A lookup
/// scans the head once per distinct indexed name, and checks every plain
/// route and every route sharing the request's value until one takes it.
#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Routes without header conditions.
    plain: Box<[u32]>,
    /// Routes with header conditions, by the field name of the condition
    /// they are indexed on; one entry per distinct name.
    by_header: Box<[HeaderIndex]>,
}

#[derive(Debug, Clone)]
struct HeaderIndex {
    /// Lowercase field name.
    name: Box<[u8]>,
    /// Exact value -> the routes indexed on `name` with that value. A route
    /// is a candidate only when the request's first `name` field has this
    /// value; [`Route::takes`] still checks all of its conditions.
    by_value: HashMap<Box<[u8]>, Box<[u32]>>,
}

impl Bucket {
    /// Indexes each route with header conditions on its most selective
    /// one: the (name, value) pair fewest routes of this bucket share, the
    /// first such on a tie. A tenant id beats a tier every tenant has.
    fn new(routes: &[Route], indices: &[u32]) -> Self {
        let lower = |h: &HeaderCondition| h.name.to_ascii_lowercase().into_boxed_slice();
        let mut shared: HashMap<(Box<[u8]>, &[u8]), usize> = HashMap::new();
        for &i in indices {
            for h in routes[i as usize].headers.iter() {
                *shared.entry((lower(h), &h.value[..])).or_default() += 1;
            }
        }
        let mut plain = Vec::new();
        let mut names: HashMap<Box<[u8]>, usize> = HashMap::new();
        type ByValue = HashMap<Box<[u8]>, Vec<u32>>;
        let mut by_header: Vec<(Box<[u8]>, ByValue)> = Vec::new();
        for &i in indices {
            let Some(h) = routes[i as usize]
                .headers
                .iter()
                .min_by_key(|h| shared[&(lower(h), &h.value[..])])
            else {
                plain.push(i);
                continue;
            };
            let name = lower(h);
            let slot = *names.entry(name.clone()).or_insert_with(|| {
                by_header.push((name, HashMap::new()));
                by_header.len() - 1
            });
            by_header[slot]
                .1
                .entry(h.value.clone())
                .or_default()
                .push(i);
        }
        Bucket {
            plain: plain.into(),
            by_header: by_header
                .into_iter()
                .map(|(name, by_value)| HeaderIndex {
                    name,
                    by_value: by_value.into_iter().map(|(v, r)| (v, r.into())).collect(),
                })
                .collect(),
        }
    }
}

/// Hosts longer than this are compared without the host index (RFC 1035 §2.3.4
/// caps a name at 255 octets, so no real host takes that path).
const MAX_INDEXED_HOST: usize = 255;

impl Router {
    /// Builds the table. Precedence, most important first:
    /// 1. host class: exact host, then wildcards (longer suffix first), then
    ///    host-less routes;
    /// 2. within a class, the longest path prefix;
    /// 3. a route with more header conditions before one with fewer;
    /// 4. a route listing methods before one accepting any method;
    /// 5. the order given, for routes equal on all of the above.
    ///
    /// A request that matches a class's host but none of its paths or methods
    /// falls through to the next, less specific class.
    ///
    /// A route listing `GET` takes `HEAD` too (RFC 9110 §9.3.2, as nginx's
    /// `limit_except GET` and HAProxy's `METH_GET` do), unless a route with
    /// the same host, path prefix and header conditions lists `HEAD` itself.
    pub fn new(routes: Vec<RouteSpec>) -> Self {
        let same_requests = |r: &RouteSpec| {
            let mut headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            headers.sort_unstable();
            (
                HostMatch::parse(r.host.as_deref()),
                r.path_prefix.clone(),
                headers,
            )
        };
        let lists = |r: &RouteSpec, method: &str| r.methods.iter().any(|m| m == method);
        let head_listed: std::collections::HashSet<_> = routes
            .iter()
            .filter(|r| lists(r, "HEAD"))
            .map(same_requests)
            .collect();
        let implies_head: Vec<bool> = routes
            .iter()
            .map(|r| {
                lists(r, "GET") && !lists(r, "HEAD") && !head_listed.contains(&same_requests(r))
            })
            .collect();
        let mut routes: Vec<Route> = routes
            .into_iter()
            .zip(implies_head)
            .map(|(r, implies_head)| Route {
                host: HostMatch::parse(r.host.as_deref()),
                path_prefix: r.path_prefix.into_bytes().into(),
                methods: r
                    .methods
                    .into_iter()
                    .chain(implies_head.then(|| "HEAD".to_owned()))
                    .map(|m| m.into_bytes().into())
                    .collect(),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(name, value)| HeaderCondition {
                        name: name.into_bytes().into(),
                        value: value.into_bytes().into(),
                    })
                    .collect(),
                target: r.target,
            })
            .collect();
        // Stable sort keeps config order for ties (rule 5).
        routes.sort_by_key(|r| {
            (
                r.host.rank(),
                std::cmp::Reverse(r.path_prefix.len()),
                std::cmp::Reverse(r.headers.len()),
                r.methods.is_empty(),
            )
        });
        let mut exact: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut wildcard: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut any = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let i = u32::try_from(i).expect("route tables hold fewer than 2^32 routes");
            match &r.host {
                HostMatch::Exact(h) => exact.entry(h.clone()).or_default().push(i),
                HostMatch::Wildcard(suffix) => wildcard.entry(suffix.clone()).or_default().push(i),
                HostMatch::Any => any.push(i),
            }
        }
        let buckets = |map: HashMap<Box<[u8]>, Vec<u32>>| {
            map.into_iter()
                .map(|(k, v)| (k, Bucket::new(&routes, &v)))
                .collect()
        };
        Router {
            exact: buckets(exact),
            wildcard: buckets(wildcard),
            any: Bucket::new(&routes, &any),
            by_method: routes.iter().any(|r| !r.methods.is_empty()),
            routes: routes.into(),
        }
    }

    /// Whether some route lists methods, so that the method a request is
    /// taken for can change its route.
    pub fn routes_by_method(&self) -> bool {
        self.by_method
    }

    /// The first route of `bucket` in table order that takes this path,
    /// method and head. Table indices rise with table order, so that is the
    /// smallest index that takes it: the first plain route that does,
    /// unless a header candidate before it does too.
    fn first_match(
        &self,
        bucket: &Bucket,
        path: &[u8],
        method: &[u8],
        head: &[u8],
    ) -> Option<usize> {
        let takes = |i: u32| self.routes[i as usize].takes(path, method, head);
        let mut best = bucket.plain.iter().copied().find(|&i| takes(i));
        for index in bucket.by_header.iter() {
            let Some(candidates) =
                header_value(head, &index.name).and_then(|v| index.by_value.get(v))
            else {
                continue;
            };
            if let Some(i) = candidates
                .iter()
                .copied()
                .take_while(|&i| best.is_none_or(|b| i < b))
                .find(|&i| takes(i))
            {
                best = Some(i);
            }
        }
        best.map(|i| self.routes[i as usize].target)
    }

    /// [`Router::find_request`] without a head: routes with header
    /// conditions never match.
    #[inline]
    pub fn find(&self, host: Option<&[u8]>, path: &[u8], method: &[u8]) -> Option<usize> {
        self.find_request(host, path, method, b"")
    }

    /// host: raw Host header value (may carry ":port", any case; may be None);
    /// path: request-target path bytes (the query, from '?', is ignored);
    /// method: exact, case-sensitive.
    ///
    /// Looks at the routes of the request's exact host, then of each
    /// wildcard suffix of it (longest first), then the host-less ones: the
    /// table's precedence, without scanning routes of other hosts, nor
    /// routes whose header conditions name a value the request does not
    /// carry. Allocates nothing (the host is lowercased into a stack buffer).
    /// head: the request head as parsed (request line first), where header
    /// conditions are looked up; only routes that have some read it.
    pub fn find_request(
        &self,
        host: Option<&[u8]>,
        path: &[u8],
        method: &[u8],
        head: &[u8],
    ) -> Option<usize> {
        let host = host.and_then(normalize_host);
        // RFC 9112 §3.2: origin-form = absolute-path [ "?" query ].
        let path = path
            .iter()
            .position(|&b| b == b'?')
            .map_or(path, |q| &path[..q]);
        if let Some(host) = host {
            if host.len() > MAX_INDEXED_HOST {
                return self.scan(Some(host), path, method, head);
            }
            let mut lower = [0u8; MAX_INDEXED_HOST];
            let lower = &mut lower[..host.len()];
            lower.copy_from_slice(host);
            lower.make_ascii_lowercase();
            let lower: &[u8] = lower;
            if let Some(found) = self
                .exact
                .get(lower)
                .and_then(|routes| self.first_match(routes, path, method, head))
            {
                return Some(found);
            }
            // Suffixes at each dot, longest first; a wildcard never matches
            // the bare domain, so the whole host is not a candidate.
            for (i, _) in lower.iter().enumerate().filter(|(_, &b)| b == b'.') {
                if let Some(found) = self
                    .wildcard
                    .get(&lower[i..])
                    .and_then(|routes| self.first_match(routes, path, method, head))
                {
                    return Some(found);
                }
            }
        }
        self.first_match(&self.any, path, method, head)
    }

    /// The lookup for hosts too long for the index: every route that names
    /// a host, in table order, then the host-less ones through their index
    /// (they come last in the table), so that a long Host header cannot make
    /// a request check every host-less header route.
    fn scan(&self, host: Option<&[u8]>, path: &[u8], method: &[u8], head: &[u8]) -> Option<usize> {
        self.routes
            .iter()
            .take_while(|r| r.host != HostMatch::Any)
            .find(|r| r.host.matches(host) && r.takes(path, method, head))
            .map(|r| r.target)
            .or_else(|| self.first_match(&self.any, path, method, head))
    }
}

/// Reduces a Host header value to the host name: surrounding whitespace, the
/// port (RFC 9110 §7.2: `Host = uri-host [ ":" port ]`) and a trailing root
/// dot go. `None` when nothing is left. Case is left alone; comparisons
/// ignore it.
fn normalize_host(raw: &[u8]) -> Option<&[u8]> {
    let raw = raw.trim_ascii();
    // RFC 3986 §3.2.2: an IP-literal is bracketed and holds colons itself.
    let host = if raw.first() == Some(&b'[') {
        raw.iter()
            .position(|&b| b == b']')
            .map_or(raw, |end| &raw[..=end])
    } else {
        raw.iter()
            .position(|&b| b == b':')
            .map_or(raw, |colon| &raw[..colon])
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(host: Option<&str>, prefix: &str, methods: &[&str], target: usize) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            headers: Vec::new(),
            target,
        }
    }

    fn find(router: &Router, host: Option<&str>, path: &str, method: &str) -> Option<usize> {
        router.find(host.map(str::as_bytes), path.as_bytes(), method.as_bytes())
    }

    #[test]
    fn exact_host_beats_wildcard_and_hostless() {
        let r = Router::new(vec![
            route(None, "/", &[], 1),
            route(Some("*.example.com"), "/", &[], 2),
            route(Some("api.example.com"), "/", &[], 3),
        ]);
        assert_eq!(find(&r, Some("api.example.com"), "/x", "GET"), Some(3));
        assert_eq!(find(&r, Some("www.example.com"), "/x", "GET"), Some(2));
        assert_eq!(find(&r, Some("other.org"), "/x", "GET"), Some(1));
        assert_eq!(find(&r, None, "/x", "GET"), Some(1));
    }

    #[test]
    fn longer_wildcard_suffix_beats_shorter() {
        let r = Router::new(vec![
            route(Some("*.example.com"), "/", &[], 1),
            route(Some("*.eu.example.com"), "/", &[], 2),
        ]);
        assert_eq!(find(&r, Some("a.eu.example.com"), "/", "GET"), Some(2));
        assert_eq!(find(&r, Some("eu.example.com"), "/", "GET"), Some(1));
        assert_eq!(find(&r, Some("a.b.example.com"), "/", "GET"), Some(1));
    }

    #[test]
    fn wildcard_does_not_match_its_bare_domain() {
        let r = Router::new(vec![route(Some("*.example.com"), "/", &[], 1)]);
        assert_eq!(find(&r, Some("example.com"), "/", "GET"), None);
        assert_eq!(find(&r, Some("badexample.com"), "/", "GET"), None);
        assert_eq!(find(&r, Some("x.y.example.com"), "/", "GET"), Some(1));
    }

    #[test]
    fn host_compare_ignores_case_port_and_root_dot() {
        let r = Router::new(vec![
            route(Some("api.example.com"), "/", &[], 1),
            route(Some("[::1]"), "/", &[], 2),
        ]);
        for host in [
            "API.Example.COM",
            "api.example.com:8080",
            "api.example.com.",
            "Api.Example.Com.:443",
            " api.example.com\t",
        ] {
            assert_eq!(find(&r, Some(host), "/", "GET"), Some(1), "{host}");
        }
        assert_eq!(find(&r, Some("[::1]:8080"), "/", "GET"), Some(2));
        assert_eq!(find(&r, Some("api.example.co"), "/", "GET"), None);
        assert_eq!(find(&r, Some(""), "/", "GET"), None);
    }

    #[test]
    fn route_host_is_lowercased_at_build() {
        let r = Router::new(vec![route(Some("API.Example.com"), "/", &[], 1)]);
        assert_eq!(find(&r, Some("api.example.com"), "/", "GET"), Some(1));
    }

    #[test]
    fn longest_path_prefix_wins_within_a_host_class() {
        let r = Router::new(vec![
            route(None, "/", &[], 1),
            route(None, "/api/", &[], 2),
            route(None, "/api/v2/", &[], 3),
        ]);
        assert_eq!(find(&r, None, "/api/v2/users", "GET"), Some(3));
        assert_eq!(find(&r, None, "/api/v1/users", "GET"), Some(2));
        assert_eq!(find(&r, None, "/static/a.css", "GET"), Some(1));
    }

    #[test]
    fn host_class_beats_a_longer_path_in_a_less_specific_class() {
        let r = Router::new(vec![
            route(None, "/api/v2/", &[], 1),
            route(Some("api.example.com"), "/", &[], 2),
        ]);
        assert_eq!(
            find(&r, Some("api.example.com"), "/api/v2/x", "GET"),
            Some(2)
        );
    }

    #[test]
    fn route_with_methods_beats_one_without() {
        let r = Router::new(vec![
            route(None, "/api/", &[], 1),
            route(None, "/api/", &["POST", "PUT"], 2),
        ]);
        assert_eq!(find(&r, None, "/api/x", "POST"), Some(2));
        assert_eq!(find(&r, None, "/api/x", "PUT"), Some(2));
        assert_eq!(find(&r, None, "/api/x", "GET"), Some(1));
    }

    #[test]
    fn head_takes_the_route_that_lists_get() {
        // RFC 9110 §9.3.2: HEAD is GET without content. nginx's
        // `limit_except GET` and HAProxy's `METH_GET` admit it too; a HEAD
        // that fell through to a catch-all would reach another backend.
        let r = Router::new(vec![
            route(None, "/", &[], 1),
            route(None, "/admin/", &["GET"], 2),
            route(None, "/files/", &["GET"], 3),
            route(None, "/files/", &["HEAD"], 4),
            route(None, "/post/", &["POST"], 5),
        ]);
        assert_eq!(find(&r, None, "/admin/x", "HEAD"), Some(2));
        assert_eq!(find(&r, None, "/admin/x", "GET"), Some(2));
        // A route listing HEAD itself keeps it.
        assert_eq!(find(&r, None, "/files/x", "HEAD"), Some(4));
        assert_eq!(find(&r, None, "/files/x", "GET"), Some(3));
        // Only GET implies HEAD.
        assert_eq!(find(&r, None, "/post/x", "HEAD"), Some(1));
        assert_eq!(find(&r, None, "/admin/x", "POST"), Some(1));
    }

    #[test]
    fn method_compare_is_case_sensitive() {
        let r = Router::new(vec![route(None, "/", &["GET"], 1)]);
        assert_eq!(find(&r, None, "/", "GET"), Some(1));
        assert_eq!(find(&r, None, "/", "get"), None);
    }

    #[test]
    fn unmatched_host_class_falls_through_to_less_specific() {
        let r = Router::new(vec![
            route(None, "/", &[], 1),
            route(Some("*.example.com"), "/static/", &[], 2),
            route(Some("api.example.com"), "/api/", &["GET"], 3),
        ]);
        assert_eq!(find(&r, Some("api.example.com"), "/api/x", "GET"), Some(3));
        // Exact class has the path but not the method.
        assert_eq!(find(&r, Some("api.example.com"), "/api/x", "POST"), Some(1));
        // Exact class lacks the path; the wildcard class has it.
        assert_eq!(
            find(&r, Some("api.example.com"), "/static/a", "GET"),
            Some(2)
        );
    }

    #[test]
    fn query_is_ignored() {
        let r = Router::new(vec![
            route(None, "/", &[], 1),
            route(None, "/search", &[], 2),
        ]);
        assert_eq!(find(&r, None, "/search?q=1", "GET"), Some(2));
        assert_eq!(find(&r, None, "/?/search", "GET"), Some(1));
    }

    #[test]
    fn no_route_gives_none() {
        let r = Router::new(vec![route(Some("a.example.com"), "/api/", &[], 1)]);
        assert_eq!(find(&r, Some("a.example.com"), "/web", "GET"), None);
        assert_eq!(find(&r, None, "/api/", "GET"), None);
        assert_eq!(Router::new(Vec::new()).find(None, b"/", b"GET"), None);
    }

    #[test]
    fn ties_keep_config_order() {
        let r = Router::new(vec![route(None, "/", &[], 1), route(None, "/", &[], 2)]);
        assert_eq!(find(&r, None, "/", "GET"), Some(1));
    }

    /// The precedence rules written as plainly as possible, allocating freely:
    /// the best-scoring matching route, config order breaking ties.
    fn reference(
        routes: &[RouteSpec],
        host: Option<&[u8]>,
        path: &[u8],
        method: &[u8],
    ) -> Option<usize> {
        reference_request(routes, host, path, method, &[])
    }

    /// [`reference`] for a request carrying `fields` (name, value), in order.
    fn reference_request(
        routes: &[RouteSpec],
        host: Option<&[u8]>,
        path: &[u8],
        method: &[u8],
        fields: &[(String, String)],
    ) -> Option<usize> {
        let host: Option<Vec<u8>> = host.and_then(|h| {
            let s = String::from_utf8(h.to_vec()).ok()?;
            let s = s.trim_matches([' ', '\t']).to_lowercase();
            let name = if s.starts_with('[') {
                match s.find(']') {
                    Some(end) => s[..=end].to_owned(),
                    None => s,
                }
            } else {
                s.split(':').next().unwrap_or("").to_owned()
            };
            let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
            (!name.is_empty()).then(|| name.into_bytes())
        });
        let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
        routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let host_score = match r.host.as_deref().map(str::to_lowercase) {
                    None => (0, 0),
                    Some(spec) => {
                        let spec = spec.strip_suffix('.').unwrap_or(&spec).to_owned();
                        let h = host.as_deref()?;
                        if let Some(suffix) = spec.strip_prefix("*.") {
                            let dotted = format!(".{suffix}");
                            if !h.ends_with(dotted.as_bytes()) || h.len() == dotted.len() {
                                return None;
                            }
                            (1, dotted.len())
                        } else if h == spec.as_bytes() {
                            (2, 0)
                        } else {
                            return None;
                        }
                    }
                };
                if !path.starts_with(r.path_prefix.as_bytes()) {
                    return None;
                }
                let lists = |r: &RouteSpec, m: &[u8]| r.methods.iter().any(|l| l.as_bytes() == m);
                let same_requests = |o: &RouteSpec| {
                    let key = |r: &RouteSpec| {
                        let host = r.host.as_deref().map(|h| {
                            let h = h.to_lowercase();
                            h.strip_suffix('.').unwrap_or(&h).to_owned()
                        });
                        let mut headers: Vec<(String, String)> = r
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_lowercase(), v.clone()))
                            .collect();
                        headers.sort();
                        (host, r.path_prefix.clone(), headers)
                    };
                    key(o) == key(r)
                };
                let head_as_get = method == b"HEAD"
                    && lists(r, b"GET")
                    && !routes.iter().any(|o| same_requests(o) && lists(o, b"HEAD"));
                if !r.methods.is_empty() && !lists(r, method) && !head_as_get {
                    return None;
                }
                let first_field = |name: &str| {
                    fields
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v)
                };
                if !r.headers.iter().all(|(n, v)| first_field(n) == Some(v)) {
                    return None;
                }
                let key = (
                    host_score,
                    r.path_prefix.len(),
                    r.headers.len(),
                    !r.methods.is_empty(),
                    std::cmp::Reverse(i),
                );
                Some((key, r.target))
            })
            .max_by_key(|(key, _)| *key)
            .map(|(_, target)| target)
    }

    const SPEC_HOSTS: &[Option<&str>] = &[
        None,
        Some("example.com"),
        Some("a.example.com"),
        Some("b.a.example.com"),
        Some("*.example.com"),
        Some("*.a.example.com"),
        Some("*.org"),
        Some("other.org"),
    ];
    const REQ_HOSTS: &[&str] = &[
        "example.com",
        "a.example.com",
        "b.a.example.com",
        "c.b.a.example.com",
        "z.example.com",
        "other.org",
        "x.other.org",
        "org",
        "",
    ];
    const PREFIXES: &[&str] = &["", "/", "/api", "/api/", "/api/v1/", "/static/"];
    const PATHS: &[&str] = &[
        "/",
        "/api",
        "/api/",
        "/api/v1/x",
        "/apix",
        "/static/a",
        "/x?/api/",
    ];
    fn with_headers(mut spec: RouteSpec, headers: &[(&str, &str)]) -> RouteSpec {
        spec.headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        spec
    }

    #[test]
    fn header_conditions_pick_a_route_and_rank_after_the_path() {
        let r = Router::new(vec![
            route(None, "/", &[], 0),
            with_headers(route(None, "/", &[], 1), &[("x-canary", "1")]),
            with_headers(
                route(None, "/", &["GET"], 2),
                &[("x-canary", "1"), ("x-tier", "gold")],
            ),
            route(None, "/api/", &[], 3),
            route(None, "/", &["POST"], 4),
        ]);
        let find = |path: &str, method: &str, head: &str| {
            r.find_request(None, path.as_bytes(), method.as_bytes(), head.as_bytes())
        };
        let head = |fields: &str| format!("GET / HTTP/1.1\r\n{fields}\r\n");
        assert_eq!(find("/x", "GET", &head("")), Some(0));
        assert_eq!(
            find("/x", "GET", &head("X-Canary: 1\r\n")),
            Some(1),
            "name is case-insensitive"
        );
        assert_eq!(
            find("/x", "GET", &head("x-canary: 2\r\n")),
            Some(0),
            "value is exact"
        );
        assert_eq!(
            find("/x", "GET", &head("x-tier: gold\r\nx-canary: 1\r\n")),
            Some(2),
            "more conditions rank first"
        );
        assert_eq!(
            find("/x", "PUT", &head("x-tier: gold\r\nx-canary: 1\r\n")),
            Some(1),
            "its methods still apply"
        );
        assert_eq!(
            find("/x", "POST", &head("x-canary: 1\r\n")),
            Some(1),
            "a header condition ranks before a method list"
        );
        assert_eq!(
            find("/api/x", "GET", &head("x-canary: 1\r\n")),
            Some(3),
            "the longer path wins first"
        );
        assert_eq!(
            r.find(None, b"/x", b"GET"),
            Some(0),
            "no head, no header route"
        );
    }

    /// `find_request` and the number of routes it examined.
    fn find_counting(
        r: &Router,
        host: Option<&str>,
        path: &str,
        head: &str,
    ) -> (Option<usize>, usize) {
        ROUTES_EXAMINED.with(|n| n.set(0));
        let found = r.find_request(
            host.map(str::as_bytes),
            path.as_bytes(),
            b"GET",
            head.as_bytes(),
        );
        (found, ROUTES_EXAMINED.with(std::cell::Cell::get))
    }

    #[test]
    fn ten_thousand_header_routes_cost_a_lookup_a_few_route_checks() {
        let n = 10_000;
        let mut specs: Vec<RouteSpec> = (0..n)
            .map(|i| with_headers(route(None, "/", &[], i), &[("x-tenant", &format!("t{i}"))]))
            .collect();
        // The same under an exact host, behind a condition every one of
        // them shares.
        specs.extend((0..n).map(|i| {
            with_headers(
                route(Some("api.example.com"), "/v1/", &[], n + i),
                &[("x-tier", "gold"), ("X-Tenant", &format!("t{i}"))],
            )
        }));
        specs.push(route(None, "/", &[], 2 * n));
        let r = Router::new(specs);
        let head = |fields: &str| format!("GET / HTTP/1.1\r\n{fields}\r\n");
        let cases = [
            (None, "/", head("X-Tenant: t0\r\n"), 0),
            (None, "/", head("x-tenant: t5000\r\n"), 5000),
            (None, "/", head("x-tenant: t9999\r\n"), 9999),
            (None, "/", head("x-tenant: nobody\r\n"), 2 * n),
            (None, "/", head(""), 2 * n),
            (
                Some("api.example.com"),
                "/v1/x",
                head("x-tier: gold\r\nx-tenant: t7000\r\n"),
                n + 7000,
            ),
            (
                Some("api.example.com"),
                "/v1/x",
                head("x-tier: silver\r\nx-tenant: t7000\r\n"),
                7000,
            ),
        ];
        // Too long for the host index: host-less routes still go through
        // theirs.
        let long_host = format!("{}.example.org", "a".repeat(MAX_INDEXED_HOST));
        let long = (
            Some(long_host.as_str()),
            "/",
            head("x-tenant: t5000\r\n"),
            5000,
        );
        for (host, path, head, want) in cases.into_iter().chain([long]) {
            let (found, examined) = find_counting(&r, host, path, &head);
            assert_eq!(found, Some(want), "{host:?} {path} {head:?}");
            // The linear scan examined up to 2n + 1 routes here.
            assert!(examined <= 4, "{examined} routes examined for {head:?}");
        }
    }

    const METHODS: &[&str] = &["GET", "POST", "PUT", "HEAD", "get"];

    fn spec_strategy() -> impl Strategy<Value = RouteSpec> {
        (
            0..SPEC_HOSTS.len(),
            0..PREFIXES.len(),
            prop::collection::vec(0..METHODS.len() - 1, 0..3),
            0usize..100,
        )
            .prop_map(|(h, p, ms, target)| RouteSpec {
                host: SPEC_HOSTS[h].map(str::to_owned),
                path_prefix: PREFIXES[p].to_owned(),
                methods: ms.into_iter().map(|m| METHODS[m].to_owned()).collect(),
                headers: Vec::new(),
                target,
            })
    }

    /// A request host with random case, and maybe a port or a root dot.
    fn host_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop::option::of(
            (
                0..REQ_HOSTS.len(),
                any::<u64>(),
                prop::option::of(0u16..),
                any::<bool>(),
            )
                .prop_map(|(h, case_bits, port, dot)| {
                    let mut host: Vec<u8> = REQ_HOSTS[h]
                        .bytes()
                        .enumerate()
                        .map(|(i, b)| {
                            if case_bits >> (i % 64) & 1 == 1 {
                                b.to_ascii_uppercase()
                            } else {
                                b
                            }
                        })
                        .collect();
                    if dot {
                        host.push(b'.');
                    }
                    if let Some(port) = port {
                        host.extend_from_slice(format!(":{port}").as_bytes());
                    }
                    host
                }),
        )
    }

    const FIELD_NAMES: &[&str] = &["x-a", "X-A", "x-b", "x-c"];
    const FIELD_VALUES: &[&str] = &["1", "2", "gold"];

    /// Up to three (name, value) pairs from small pools, so that routes and
    /// requests share names and values, repeated names included.
    fn fields_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((0..FIELD_NAMES.len(), 0..FIELD_VALUES.len()), 0..4).prop_map(
            |pairs| {
                pairs
                    .into_iter()
                    .map(|(n, v)| (FIELD_NAMES[n].to_owned(), FIELD_VALUES[v].to_owned()))
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn find_request_with_header_routes_agrees_with_the_reference(
            specs in prop::collection::vec((spec_strategy(), fields_strategy()), 0..16),
            requests in prop::collection::vec(
                (host_strategy(), 0..PATHS.len(), 0..METHODS.len(), fields_strategy()),
                1..16,
            ),
        ) {
            let specs: Vec<RouteSpec> = specs
                .into_iter()
                .map(|(mut spec, headers)| {
                    spec.headers = headers;
                    spec
                })
                .collect();
            let router = Router::new(specs.clone());
            for (host, p, m, fields) in requests {
                let path = PATHS[p].as_bytes();
                let method = METHODS[m].as_bytes();
                let mut head = format!("{} {} HTTP/1.1\r\n", METHODS[m], PATHS[p]);
                for (n, v) in &fields {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                prop_assert_eq!(
                    router.find_request(host.as_deref(), path, method, head.as_bytes()),
                    reference_request(&specs, host.as_deref(), path, method, &fields),
                    "host {:?} path {:?} method {:?} fields {:?}",
                    host.as_deref().map(String::from_utf8_lossy),
                    PATHS[p],
                    METHODS[m],
                    fields
                );
            }
        }

        #[test]
        fn find_agrees_with_the_reference(
            specs in prop::collection::vec(spec_strategy(), 0..12),
            requests in prop::collection::vec(
                (host_strategy(), 0..PATHS.len(), 0..METHODS.len()),
                1..16,
            ),
        ) {
            let router = Router::new(specs.clone());
            for (host, p, m) in requests {
                let path = PATHS[p].as_bytes();
                let method = METHODS[m].as_bytes();
                prop_assert_eq!(
                    router.find(host.as_deref(), path, method),
                    reference(&specs, host.as_deref(), path, method),
                    "host {:?} path {:?} method {:?}",
                    host.as_deref().map(String::from_utf8_lossy),
                    PATHS[p],
                    METHODS[m]
                );
            }
        }
    }
}
