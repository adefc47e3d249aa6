//! Raw → validated, once. Every check runs even after one fails, so a file
//! with five mistakes reports five errors; a failed value is replaced by its
//! default only so later checks can go on, and the result is then discarded.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::error::{did_you_mean, line_column, ConfigError, ConfigErrors, Source};
use crate::model::*;
use crate::raw::*;

mod auth;

/// (listener, host, path_prefix, headers): routes sharing one may only
/// differ by methods.
type MatchKey = (usize, Option<String>, String, Vec<(String, String)>);

struct Checker<'a> {
    src: &'a Source<'a>,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(self.src.error(span, key, message));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_column(self.src.text, span.start).0
    }

    /// An integer in `range`, or `default` after recording an error.
    fn int<T>(
        &mut self,
        value: Option<&Spanned<i64>>,
        key: &str,
        range: RangeInclusive<T>,
        default: T,
    ) -> T
    where
        T: TryFrom<i64> + PartialOrd + Display + Copy,
    {
        let Some(value) = value else { return default };
        match T::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let message = format!(
                    "{} is out of range; must be in {}..={}",
                    value.get_ref(),
                    range.start(),
                    range.end()
                );
                self.err(value.span(), key, message);
                default
            }
        }
    }

    /// A byte size in `range`, or `default` after recording an error.
    fn size(
        &mut self,
        value: Option<&Spanned<Size>>,
        key: &str,
        range: RangeInclusive<usize>,
        default: usize,
    ) -> usize {
        let Some(value) = value else { return default };
        match usize::try_from(value.get_ref().0) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let message = format!(
                    "{} bytes is out of range; must be in {}..={} bytes ({}..={})",
                    value.get_ref().0,
                    range.start(),
                    range.end(),
                    human_size(*range.start()),
                    human_size(*range.end())
                );
                self.err(value.span(), key, message);
                default
            }
        }
    }

    /// A byte size in `range` for a value the protocol carries in 32 bits
    /// (HTTP/2 settings), or `default` after recording an error.
    fn size_u32(
        &mut self,
        value: Option<&Spanned<Size>>,
        key: &str,
        range: RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        let widen = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let n = self.size(
            value,
            key,
            widen(*range.start())..=widen(*range.end()),
            widen(default),
        );
        // In `range`, so it fits.
        u32::try_from(n).unwrap_or(default)
    }

    /// A timeout in `1ms..=TIMEOUT_MAX`, or `default` after recording an error.
    fn timeout(
        &mut self,
        value: Option<&Spanned<HumanDuration>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        self.duration(value, key, Duration::from_millis(1)..=TIMEOUT_MAX, default)
    }

    /// A duration in `range`, or `default` after recording an error.
    fn duration(
        &mut self,
        value: Option<&Spanned<HumanDuration>>,
        key: &str,
        range: RangeInclusive<Duration>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let d = value.get_ref().0;
        if !range.contains(&d) {
            let message = format!(
                "{} is out of range; must be in {}..={}",
                humantime::format_duration(d),
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            );
            self.err(value.span(), key, message);
            return default;
        }
        d
    }

    /// A unique, non-empty name of safe characters (it ends up in logs and metric labels).
    fn name(
        &mut self,
        name: &Spanned<String>,
        key: &str,
        seen: &mut HashMap<String, Range<usize>>,
    ) {
        let text = name.get_ref();
        if text.is_empty() {
            self.err(name.span(), key, "must not be empty");
        } else if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            self.err(
                name.span(),
                key,
                format!("{text:?} may only contain A-Z, a-z, 0-9, '_', '-' and '.'"),
            );
        }
        match seen.get(text) {
            Some(first) => {
                let line = self.line_of(first);
                self.err(
                    name.span(),
                    key,
                    format!("duplicate name {text:?}; first defined on line {line}"),
                );
            }
            None => {
                seen.insert(text.clone(), name.span());
            }
        }
    }

    fn address(&mut self, address: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        let text = address.get_ref();
        match text.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    address.span(),
                    key,
                    format!(
                        r#"invalid socket address {text:?}; write IP:port such as "127.0.0.1:8080" or "[::1]:8080" (host names are not resolved)"#
                    ),
                );
                None
            }
        }
    }
}

/// A backend entry's `address` (an IP:port or a host name:port) or `srv`
/// name, with the span errors about it point at.
fn backend_target(
    c: &mut Checker<'_>,
    b: &RawBackend,
    key: &str,
    entry: Range<usize>,
) -> Option<(BackendTarget, Range<usize>)> {
    match (&b.address, &b.srv) {
        (Some(a), Some(s)) => {
            c.err(
                s.span(),
                format!("{key}.srv"),
                format!(
                    "give address or srv, not both (address is on line {})",
                    c.line_of(&a.span())
                ),
            );
            None
        }
        (None, None) => {
            c.err(
                entry,
                format!("{key}.address"),
                r#"a backend needs address = "IP:port" or "host:port", or srv = "_service._proto.name""#,
            );
            None
        }
        (Some(a), None) => {
            let text = a.get_ref().trim();
            if let Ok(address) = text.parse::<SocketAddr>() {
                if let Some(why) = unusable_backend_address(address) {
                    c.err(
                        a.span(),
                        format!("{key}.address"),
                        format!("{address}: {why}"),
                    );
                    return None;
                }
                return Some((BackendTarget::Address(address), a.span()));
            }
            match parse_host_port(text) {
                Ok((name, port)) => Some((BackendTarget::Host { name, port }, a.span())),
                Err(why) => {
                    c.err(a.span(), format!("{key}.address"), why);
                    None
                }
            }
        }
        (None, Some(s)) => match parse_srv_name(s.get_ref().trim()) {
            Ok(name) => Some((BackendTarget::Srv { name }, s.span())),
            Err(why) => {
                c.err(s.span(), format!("{key}.srv"), why);
                None
            }
        },
    }
}

/// Why an IP:port cannot be a backend's, whether a config names it or DNS
/// answers it: no backend listens on port 0, a connect to the unspecified
/// address reaches this host (HAProxy reads `0.0.0.0` as "the client's
/// destination", and DNS sinkholes answer it), and TCP has no multicast or
/// broadcast peers.
pub fn unusable_backend_address(address: SocketAddr) -> Option<&'static str> {
    let ip = address.ip();
    Some(if address.port() == 0 {
        "port 0 is not in 1..=65535"
    } else if ip.is_unspecified() {
        "the unspecified address is not a backend's (a connect to it reaches this host); write the backend's own address, 127.0.0.1 for this one"
    } else if ip.is_multicast() {
        "a multicast address cannot be a TCP peer"
    } else if ip == std::net::Ipv4Addr::BROADCAST {
        "the broadcast address cannot be a TCP peer"
    } else {
        return None;
    })
}

/// `host.name:port`, the name lowercased and without a trailing dot.
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let shape =
        r#"write IP:port ("127.0.0.1:8080", "[::1]:8080") or host:port ("api.internal:8080")"#;
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port; {shape}"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "{text:?}: port {port:?} is not in 1..=65535; {shape}"
            ))
        }
    };
    if host.starts_with('[') || host.contains(':') {
        return Err(format!("{text:?} is not a valid IPv6 address; {shape}"));
    }
    if host
        .split('.')
        .all(|l| l.chars().all(|ch| ch.is_ascii_digit()))
    {
        return Err(format!("{text:?} is not a valid IPv4 address; {shape}"));
    }
    dns_name(host, false)
        .map(|name| (name, port))
        .map_err(|why| format!("{text:?}: {why}; {shape}"))
}

/// `_service._proto.name` (RFC 2782).
fn parse_srv_name(text: &str) -> Result<String, String> {
    let name = dns_name(text, true).map_err(|why| format!("{text:?}: {why}"))?;
    let mut labels = name.split('.');
    let service = labels.next().unwrap_or("");
    let proto = labels.next().unwrap_or("");
    if !service.starts_with('_') || !proto.starts_with('_') || labels.next().is_none() {
        return Err(format!(
            r#"{text:?} is not a SRV name; write "_service._proto.name" such as "_http._tcp.api.internal" (RFC 2782)"#
        ));
    }
    Ok(name)
}

/// A DNS name (RFC 1123 §2.1 labels; `_` too where `underscore`),
/// lowercased, without its trailing dot.
fn dns_name(text: &str, underscore: bool) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > DNS_NAME_MAX {
        return Err(format!("the name is longer than {DNS_NAME_MAX} bytes"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= DNS_LABEL_MAX
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || (underscore && ch == '_'));
        if !ok {
            return Err(format!(
                "label {label:?} is not a DNS label (1 to {DNS_LABEL_MAX} of A-Z, a-z, 0-9 and '-', not at either end)"
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// RFC 1035 §2.3.4: names of 255 octets on the wire, 253 as text; labels of 63.
const DNS_NAME_MAX: usize = 253;
const DNS_LABEL_MAX: usize = 63;

fn dns(c: &mut Checker<'_>, raw: Option<&RawDns>) -> Dns {
    let Some(raw) = raw else {
        return Dns::default();
    };
    let mut nameservers = Vec::new();
    if let Some(list) = &raw.nameservers {
        if list.get_ref().len() > DNS_NAMESERVERS_MAX {
            c.err(
                list.span(),
                "dns.nameservers",
                format!("at most {DNS_NAMESERVERS_MAX} nameservers"),
            );
        }
        for (i, text) in list.get_ref().iter().enumerate() {
            if let Some(a) = c.address(text, &format!("dns.nameservers[{i}]")) {
                nameservers.push(a);
            }
        }
    }
    let min_interval = c.duration(
        raw.min_interval.as_ref(),
        "dns.min_interval",
        DNS_MIN_INTERVAL_MIN..=DNS_INTERVAL_MAX,
        DEFAULT_DNS_MIN_INTERVAL,
    );
    let max_interval = c.duration(
        raw.max_interval.as_ref(),
        "dns.max_interval",
        DNS_MIN_INTERVAL_MIN..=DNS_INTERVAL_MAX,
        DEFAULT_DNS_MAX_INTERVAL.max(min_interval),
    );
    if max_interval < min_interval {
        if let Some(m) = &raw.max_interval {
            c.err(
                m.span(),
                "dns.max_interval",
                format!(
                    "must be at least min_interval ({})",
                    humantime::format_duration(min_interval)
                ),
            );
        }
    }
    let timeout = c.duration(
        raw.timeout.as_ref(),
        "dns.timeout",
        Duration::from_millis(1)..=DNS_TIMEOUT_MAX,
        DEFAULT_DNS_TIMEOUT,
    );
    Dns {
        nameservers,
        min_interval,
        max_interval,
        timeout,
    }
}

fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

/// Splits an optional spanned array into its span and items; a missing array
/// is located at the start of the file.
fn spanned_vec<T>(value: Option<Spanned<Vec<T>>>) -> (Range<usize>, Vec<T>) {
    match value {
        Some(v) => (v.span(), v.into_inner()),
        None => (0..0, Vec::new()),
    }
}

pub(crate) fn validate(raw: RawConfig, src: &Source<'_>) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        src,
        errors: Vec::new(),
    };

    let server = server(&mut c, raw.server.as_ref());
    let limits = limits(&mut c, raw.limits.as_ref());
    let http2 = http2(&mut c, raw.http2.as_ref());
    let fleet = raw.fleet.as_ref().and_then(|raw| fleet(&mut c, raw));
    let dns = dns(&mut c, raw.dns.as_ref());

    let (span, raw_listeners) = spanned_vec(raw.listeners);
    if raw_listeners.is_empty() {
        c.err(
            span,
            "listeners",
            "at least one [[listeners]] table is required",
        );
    }
    let mut listener_names = HashMap::new();
    let mut listener_addrs: HashMap<SocketAddr, Range<usize>> = HashMap::new();
    let mut listeners = Vec::with_capacity(raw_listeners.len());
    for (i, l) in raw_listeners.iter().enumerate() {
        c.name(
            &l.name,
            &format!("listeners[{i}].name"),
            &mut listener_names,
        );
        let key = format!("listeners[{i}].address");
        let Some(address) = c.address(&l.address, &key) else {
            // Kept under its name, so routes naming it get no second error.
            listeners.push(Listener {
                name: l.name.get_ref().clone(),
                address: SocketAddr::from(([0, 0, 0, 0], 0)),
                tls: None,
                http2: false,
                proxy_protocol_from: None,
                protocol: ListenerProtocol::Http,
                max_connections_per_worker: None,
                defer_accept: false,
                delayed_ack: false,
            });
            continue;
        };
        let clash = listener_addrs
            .iter()
            .find_map(|(other, first)| clash(*other, address, c.line_of(first)));
        match clash {
            Some(why) => c.err(l.address.span(), key, why),
            None => {
                listener_addrs.insert(address, l.address.span());
            }
        }
        let tls = l
            .tls
            .as_ref()
            .map(|t| listener_tls(&mut c, &format!("listeners[{i}].tls"), t));
        // On by default where ALPN lets a client choose, so no client gets
        // a protocol it did not ask for; off on plain listeners, where only
        // prior-knowledge clients would use it.
        let http2 = l.http2.unwrap_or(tls.is_some());
        let proxy_protocol_from = proxy_protocol(&mut c, i, l);
        let max_connections_per_worker = l.max_connections_per_worker.as_ref().map(|n| {
            c.int(
                Some(n),
                &format!("listeners[{i}].max_connections_per_worker"),
                1..=MAX_CONNECTIONS_PER_WORKER_MAX,
                MAX_CONNECTIONS_PER_WORKER_MAX,
            )
        });
        // Where the client speaks first; a tcp listener's protocol may have
        // the server speak first, and its client would wait for nothing.
        let client_speaks_first = l
            .protocol
            .as_ref()
            .is_none_or(|p| *p.get_ref() == RawListenerProtocol::Http);
        listeners.push(Listener {
            name: l.name.get_ref().clone(),
            address,
            tls,
            http2,
            proxy_protocol_from,
            // A tcp listener's upstream is resolved once the upstreams are.
            protocol: ListenerProtocol::Http,
            max_connections_per_worker,
            defer_accept: l.defer_accept.unwrap_or(client_speaks_first),
            delayed_ack: l.delayed_ack.unwrap_or(client_speaks_first),
        });
    }

    let (span, raw_upstreams) = spanned_vec(raw.upstreams);
    if raw_upstreams.is_empty() {
        c.err(
            span,
            "upstreams",
            "at least one [[upstreams]] table is required",
        );
    }
    let mut upstream_names = HashMap::new();
    let upstreams: Vec<Upstream> = raw_upstreams
        .into_iter()
        .enumerate()
        .map(|(i, u)| upstream(&mut c, i, u, &mut upstream_names))
        .collect();

    let upstream_index = index_by_name(upstreams.iter().map(|u| u.name.as_str()));
    for (i, l) in raw_listeners.iter().enumerate() {
        if let Some(listener) = listeners.get_mut(i) {
            listener.protocol = listener_protocol(&mut c, i, l, &upstream_index, &upstreams);
        }
    }
    let (span, raw_routes) = spanned_vec(raw.routes);
    // A node of tcp listeners only has nothing to route.
    let any_http = raw_listeners.is_empty()
        || listeners
            .iter()
            .any(|l| l.protocol == ListenerProtocol::Http);
    if raw_routes.is_empty() && any_http {
        c.err(span, "routes", "at least one [[routes]] table is required");
    }
    let listener_index = index_by_name(listeners.iter().map(|l| l.name.as_str()));
    let mut routes = Vec::with_capacity(raw_routes.len());
    // (listener, host, path_prefix) → earlier routes with their methods, for the ambiguity check.
    let mut seen_matches: HashMap<MatchKey, Vec<(usize, Vec<String>)>> = HashMap::new();
    for (i, r) in raw_routes.iter().enumerate() {
        let listener = lookup(
            &mut c,
            &r.listener,
            &format!("routes[{i}].listener"),
            &listener_index,
            "listener",
        );
        let upstream = r.upstream.as_ref().map(|u| {
            lookup(
                &mut c,
                u,
                &format!("routes[{i}].upstream"),
                &upstream_index,
                "upstream",
            )
        });
        let (respond, redirect) = direct_answer(&mut c, i, r);
        let compose = r
            .compose
            .as_ref()
            .map(|raw| compose(&mut c, i, raw, &upstream_index));
        let (host, path_prefix, methods, headers) = route_match(&mut c, i, r.matcher.as_ref());
        let rate_limit = r
            .rate_limit
            .as_ref()
            .and_then(|rl| rate_limit(&mut c, i, rl, fleet.is_some()));
        let rewrite_prefix = r.rewrite.as_ref().map(|rw| {
            let text = rw.prefix.get_ref();
            if !text.starts_with('/') || text.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                c.err(
                    rw.prefix.span(),
                    format!("routes[{i}].rewrite.prefix"),
                    format!("{text:?} must start with \"/\" and contain no whitespace or control characters"),
                );
            }
            text.clone()
        });
        let request_headers = r
            .request_headers
            .as_ref()
            .map(|raw| header_edits(&mut c, &format!("routes[{i}].request_headers"), raw))
            .unwrap_or_default();
        let response_headers = r
            .response_headers
            .as_ref()
            .map(|raw| header_edits(&mut c, &format!("routes[{i}].response_headers"), raw))
            .unwrap_or_default();
        let checks = request_checks(&mut c, i, r);
        let cors = r.cors.as_ref().map(|raw| cors(&mut c, i, raw));
        let mut upgrade: Vec<String> = Vec::new();
        for p in r.upgrade.iter().flat_map(|u| u.get_ref()) {
            let lower = p.get_ref().trim().to_ascii_lowercase();
            let why = if lower.is_empty() || !lower.bytes().all(is_tchar) {
                Some(format!("{:?} is not a protocol token", p.get_ref()))
            } else if lower == "h2c" {
                Some("h2c upgrades are never forwarded (HTTP/2 to backends is `protocol = \"h2\"` on the upstream)".to_owned())
            } else if upgrade.contains(&lower) {
                Some(format!("{lower:?} is listed twice"))
            } else {
                None
            };
            match why {
                Some(why) => c.err(p.span(), format!("routes[{i}].upgrade"), why),
                None => upgrade.push(lower),
            }
        }
        let auth = r
            .auth
            .as_ref()
            .and_then(|a| auth::auth(&mut c, &format!("routes[{i}].auth"), a, &request_headers));
        if let (Some(rl), None) = (&rate_limit, &auth) {
            if rl.key == RateLimitKey::Consumer {
                if let Some(raw) = &r.rate_limit {
                    c.err(
                        raw.key.span(),
                        format!("routes[{i}].rate_limit.key"),
                        "\"consumer\" needs auth on the route (it names the consumer)",
                    );
                }
            }
        }
        // `Some(None)`: an upstream named but not found (already reported).
        let (Some(listener), None | Some(Some(_))) = (listener, upstream) else {
            continue;
        };
        if let ListenerProtocol::Tcp { .. } = listeners[listener].protocol {
            c.err(
                r.listener.span(),
                format!("routes[{i}].listener"),
                format!(
                    "listener {:?} has protocol = \"tcp\": it relays bytes to its own upstream, and routes apply to http listeners only",
                    r.listener.get_ref()
                ),
            );
            continue;
        }
        let upstream = upstream.flatten();
        let earlier = seen_matches
            .entry((listener, host.clone(), path_prefix.clone(), headers.clone()))
            .or_default();
        let overlaps = |other: &Vec<String>| {
            (other.is_empty() && methods.is_empty()) || other.iter().any(|m| methods.contains(m))
        };
        if let Some((j, _)) = earlier.iter().find(|(_, m)| overlaps(m)) {
            let message = format!(
                "matches the same requests as routes[{j}] (same listener, host, path_prefix and headers, overlapping methods); routing would be ambiguous"
            );
            c.err(r.listener.span(), format!("routes[{i}]"), message);
        }
        earlier.push((i, methods.clone()));
        routes.push(Route {
            listener,
            host,
            path_prefix,
            methods,
            headers,
            upstream,
            respond,
            redirect,
            compose,
            rate_limit,
            rewrite_prefix,
            request_headers,
            response_headers,
            checks,
            cors,
            auth,
            upgrade,
        });
    }

    let access_log = raw.access_log.as_ref().map(|raw| access_log(&mut c, raw));
    let error_log = raw
        .error_log
        .as_ref()
        .map_or_else(ErrorLog::default, |raw| error_log(&mut c, raw));
    let admin = raw.admin.as_ref().and_then(|raw| {
        let address = c.address(&raw.address, "admin.address")?;
        // The admin socket binds without SO_REUSEPORT: any overlap with a
        // listener fails start-up.
        let clash = listener_addrs
            .iter()
            .find_map(|(other, first)| clash(*other, address, c.line_of(first)));
        if let Some(why) = clash {
            c.err(raw.address.span(), "admin.address", why);
        }
        Some(Admin { address })
    });

    if c.errors.is_empty() {
        Ok(Config {
            server,
            limits,
            listeners,
            routes,
            upstreams,
            access_log,
            error_log,
            admin,
            http2,
            fleet,
            dns,
        })
    } else {
        c.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(c.errors))
    }
}

/// Why `address` cannot be bound beside `other`, if it cannot. Port 0
/// asks the kernel for a fresh port each time, so it never clashes. A
/// wildcard and a specific address of one family on one port overlap:
/// with SO_REUSEPORT both bind, and which listener (and so which routes) a
/// client reaches depends on the address it dialled. `[::]` is dual-stack
/// (the proxy leaves IPV6_V6ONLY to the kernel's default, off), so it
/// overlaps every IPv4 address on its port too.
fn clash(other: SocketAddr, address: SocketAddr, line: usize) -> Option<String> {
    if address.port() == 0 || other.port() != address.port() {
        return None;
    }
    let dual_stack =
        |a: SocketAddr, b: SocketAddr| a.is_ipv6() && a.ip().is_unspecified() && b.is_ipv4();
    if other == address {
        Some(format!(
            "address {address} is already used by the listener on line {line}"
        ))
    } else if other.is_ipv4() == address.is_ipv4()
        && other.ip().is_unspecified() != address.ip().is_unspecified()
    {
        Some(format!(
            "address {address} overlaps {other}, used by the listener on line {line}: \
             a wildcard and a specific address cannot share a port"
        ))
    } else if dual_stack(other, address) || dual_stack(address, other) {
        Some(format!(
            "address {address} overlaps {other}, used by the listener on line {line}: \
             [::] also accepts IPv4 on its port (dual-stack)"
        ))
    } else {
        None
    }
}

fn index_by_name<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        // A duplicate name is already an error; resolve it to the first.
        index.entry(name).or_insert(i);
    }
    index
}

fn lookup(
    c: &mut Checker<'_>,
    name: &Spanned<String>,
    key: &str,
    index: &HashMap<&str, usize>,
    what: &str,
) -> Option<usize> {
    let found = index.get(name.get_ref().as_str()).copied();
    // With none defined, the missing section is the error already reported.
    if found.is_none() && !index.is_empty() {
        let mut known: Vec<&str> = index.keys().copied().collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        let close = did_you_mean(name.get_ref(), index.keys().copied())
            .map(|n| format!("; did you mean {n:?}?"))
            .unwrap_or_default();
        c.err(
            name.span(),
            key,
            format!(
                "no {what} named {:?}{close} (defined: {known})",
                name.get_ref()
            ),
        );
    }
    found
}

fn server(c: &mut Checker<'_>, raw: Option<&RawServer>) -> Server {
    let d = Server::default();
    let Some(raw) = raw else { return d };
    Server {
        workers: raw.workers.unwrap_or(d.workers),
        pin: raw.pin.unwrap_or(d.pin),
        backlog: c.int(
            raw.backlog.as_ref(),
            "server.backlog",
            1..=BACKLOG_MAX,
            d.backlog,
        ),
        max_connections_per_worker: c.int(
            raw.max_connections_per_worker.as_ref(),
            "server.max_connections_per_worker",
            1..=MAX_CONNECTIONS_PER_WORKER_MAX,
            d.max_connections_per_worker,
        ),
        gossip_interval: c.duration(
            raw.gossip_interval.as_ref(),
            "server.gossip_interval",
            GOSSIP_INTERVAL_MIN..=GOSSIP_INTERVAL_MAX,
            d.gossip_interval,
        ),
        gossip_inbox: c.int(
            raw.gossip_inbox.as_ref(),
            "server.gossip_inbox",
            1..=GOSSIP_INBOX_MAX,
            d.gossip_inbox,
        ),
        rate_limit_max_keys: c.int(
            raw.rate_limit_max_keys.as_ref(),
            "server.rate_limit_max_keys",
            1..=RATE_LIMIT_MAX_KEYS_MAX,
            d.rate_limit_max_keys,
        ),
        drain_timeout: c.duration(
            raw.drain_timeout.as_ref(),
            "server.drain_timeout",
            DRAIN_TIMEOUT_MIN..=DRAIN_TIMEOUT_MAX,
            d.drain_timeout,
        ),
        io_uring_setup: raw.io_uring_setup.unwrap_or(d.io_uring_setup),
        share_ports: raw.share_ports.unwrap_or(d.share_ports),
        trusted_proxies: raw
            .trusted_proxies
            .as_ref()
            .map_or(d.trusted_proxies, |list| {
                networks(c, "server.trusted_proxies", list)
            }),
        via: raw.via.as_ref().map_or(Via::Auto, |v| match v.get_ref().as_str() {
            "auto" => Via::Auto,
            "off" => Via::Off,
            name if (1..=64).contains(&name.len())
                && name.bytes().all(is_tchar) =>
            {
                Via::Named(name.to_owned())
            }
            other => {
                c.err(
                    v.span(),
                    "server.via",
                    format!("{other:?}: write \"auto\", \"off\" or a pseudonym of 1 to 64 token characters (letters, digits, -._~ and the like)"),
                );
                Via::Auto
            }
        }),
        request_id: raw.request_id.as_ref().and_then(|name| {
            let checked = header_name(name.get_ref()).and_then(|lower| {
                if MANAGED_HEADERS.contains(&lower.as_str()) || lower == "host" {
                    Err(format!("{lower:?} is a field the proxy manages itself"))
                } else {
                    Ok(lower)
                }
            });
            checked
                .map_err(|why| c.err(name.span(), "server.request_id", why))
                .ok()
        }),
    }
}

/// A listener's `protocol`, with the `upstream` a `tcp` listener relays to
/// and the keys only one of the two kinds reads.
fn listener_protocol(
    c: &mut Checker<'_>,
    i: usize,
    l: &RawListener,
    upstream_index: &HashMap<&str, usize>,
    upstreams: &[Upstream],
) -> ListenerProtocol {
    let tcp = l
        .protocol
        .as_ref()
        .is_some_and(|p| *p.get_ref() == RawListenerProtocol::Tcp);
    let key = |what: &str| format!("listeners[{i}].{what}");
    if !tcp {
        if let Some(u) = &l.upstream {
            c.err(
                u.span(),
                key("upstream"),
                "is only read with protocol = \"tcp\"; an http listener's routes choose the upstream",
            );
        }
        return ListenerProtocol::Http;
    }
    if let Some(t) = &l.tls {
        c.err(
            t.span(),
            key("tls"),
            "a tcp listener relays bytes untouched; TLS termination on it is not built (leave tls out, or use protocol = \"http\")",
        );
    }
    if l.http2.is_some() {
        let at = l.protocol.as_ref().map_or(0..0, |p| p.span());
        c.err(at, key("http2"), "is only read on an http listener");
    }
    let Some(name) = &l.upstream else {
        let at = l.protocol.as_ref().map_or(0..0, |p| p.span());
        c.err(
            at,
            key("protocol"),
            "protocol = \"tcp\" needs upstream = \"NAME\", the upstream whose backends the connections are relayed to",
        );
        return ListenerProtocol::Http;
    };
    let Some(upstream) = lookup(c, name, &key("upstream"), upstream_index, "upstream") else {
        return ListenerProtocol::Http;
    };
    if let Some(HashKey::Header(_) | HashKey::Cookie(_)) = &upstreams[upstream].hash_key {
        c.err(
            name.span(),
            key("upstream"),
            format!(
                "upstream {:?} hashes on a header or cookie, which a tcp connection does not carry; use hash_key = \"client_ip\"",
                name.get_ref()
            ),
        );
    }
    ListenerProtocol::Tcp { upstream }
}

/// A listener's `proxy_protocol` and `proxy_protocol_from`: the networks
/// allowed to send the header, required with it and refused without it.
fn proxy_protocol(c: &mut Checker<'_>, i: usize, l: &RawListener) -> Option<TrustedProxies> {
    let on = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
    match (&l.proxy_protocol, &l.proxy_protocol_from) {
        (Some(p), None) if on => {
            c.err(
                p.span(),
                format!("listeners[{i}].proxy_protocol"),
                "proxy_protocol = true needs proxy_protocol_from, the networks of the load \
                 balancers allowed to send the header (any other peer could claim any client address)",
            );
            None
        }
        (_, Some(from)) if !on => {
            c.err(
                from.span(),
                format!("listeners[{i}].proxy_protocol_from"),
                "is only read with proxy_protocol = true",
            );
            None
        }
        (_, Some(from)) => {
            let key = format!("listeners[{i}].proxy_protocol_from");
            if from.get_ref().is_empty() {
                c.err(
                    from.span(),
                    key.clone(),
                    "must list at least one network (like \"10.0.0.0/8\") or address",
                );
            }
            Some(networks(c, &key, from))
        }
        _ => None,
    }
}

/// `"10.0.0.0/8"`, `"fd00::/8"`, or a single address (`"127.0.0.1"`), for
/// the list at `key`.
fn networks(
    c: &mut Checker<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> TrustedProxies {
    if list.get_ref().len() > TRUSTED_PROXIES_MAX {
        c.err(
            list.span(),
            key,
            format!(
                "{} networks is too many; at most {TRUSTED_PROXIES_MAX}",
                list.get_ref().len()
            ),
        );
    }
    let mut nets = Vec::new();
    for (i, entry) in list.get_ref().iter().enumerate() {
        let text = entry.get_ref().trim();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .map(|net| net.trunc())
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => c.err(
                entry.span(),
                format!("{key}[{i}]"),
                format!("{text:?} is not an IP network (like \"10.0.0.0/8\") or address"),
            ),
        }
    }
    nets.truncate(TRUSTED_PROXIES_MAX);
    TrustedProxies(nets)
}

fn access_log(c: &mut Checker<'_>, raw: &RawAccessLog) -> AccessLog {
    let path = raw.path.get_ref().trim();
    if path.is_empty() {
        c.err(raw.path.span(), "access_log.path", "must name a file");
    }
    AccessLog {
        path: path.into(),
        buffer: c.size(
            raw.buffer.as_ref(),
            "access_log.buffer",
            ACCESS_LOG_BUFFER_MIN..=ACCESS_LOG_BUFFER_MAX,
            DEFAULT_ACCESS_LOG_BUFFER,
        ),
    }
}

fn error_log(c: &mut Checker<'_>, raw: &RawErrorLog) -> ErrorLog {
    let d = ErrorLog::default();
    let path = raw.path.as_ref().map(|p| {
        let path = p.get_ref().trim();
        if path.is_empty() {
            c.err(
                p.span(),
                "error_log.path",
                "must name a file (leave it out for stderr)",
            );
        }
        path.into()
    });
    ErrorLog {
        path,
        level: raw.level.unwrap_or(d.level),
        lines_per_second: c.int(
            raw.lines_per_second.as_ref(),
            "error_log.lines_per_second",
            1..=ERROR_LOG_LINES_PER_SECOND_MAX,
            d.lines_per_second,
        ),
    }
}

fn limits(c: &mut Checker<'_>, raw: Option<&RawLimits>) -> Limits {
    let d = Limits::default();
    let Some(raw) = raw else { return d };
    Limits {
        max_head_bytes: c.size(
            raw.max_head_size.as_ref(),
            "limits.max_head_size",
            MAX_HEAD_BYTES_MIN..=MAX_HEAD_BYTES_MAX,
            d.max_head_bytes,
        ),
        max_headers: c.int(
            raw.max_headers.as_ref(),
            "limits.max_headers",
            1..=MAX_HEADERS_MAX,
            d.max_headers,
        ),
        header_read_timeout: c.timeout(
            raw.header_read_timeout.as_ref(),
            "limits.header_read_timeout",
            d.header_read_timeout,
        ),
        keepalive_timeout: c.timeout(
            raw.keepalive_timeout.as_ref(),
            "limits.keepalive_timeout",
            d.keepalive_timeout,
        ),
        body_read_timeout: c.timeout(
            raw.body_read_timeout.as_ref(),
            "limits.body_read_timeout",
            d.body_read_timeout,
        ),
        send_timeout: c.timeout(
            raw.send_timeout.as_ref(),
            "limits.send_timeout",
            d.send_timeout,
        ),
        max_chunk_line_bytes: c.size(
            raw.max_chunk_line_size.as_ref(),
            "limits.max_chunk_line_size",
            MAX_CHUNK_LINE_BYTES_MIN..=MAX_CHUNK_LINE_BYTES_MAX,
            d.max_chunk_line_bytes,
        ),
        tls_handshake_timeout: c.timeout(
            raw.tls_handshake_timeout.as_ref(),
            "limits.tls_handshake_timeout",
            d.tls_handshake_timeout,
        ),
        // Zero turns lingering off: the connection closes at once.
        lingering_time: c.duration(
            raw.lingering_time.as_ref(),
            "limits.lingering_time",
            Duration::ZERO..=TIMEOUT_MAX,
            d.lingering_time,
        ),
        lingering_timeout: c.timeout(
            raw.lingering_timeout.as_ref(),
            "limits.lingering_timeout",
            d.lingering_timeout,
        ),
    }
}

fn http2(c: &mut Checker<'_>, raw: Option<&RawHttp2>) -> Http2 {
    let d = Http2::default();
    let Some(raw) = raw else { return d };
    Http2 {
        max_concurrent_streams: c.int(
            raw.max_concurrent_streams.as_ref(),
            "http2.max_concurrent_streams",
            1..=HTTP2_MAX_CONCURRENT_STREAMS_MAX,
            d.max_concurrent_streams,
        ),
        max_header_list_bytes: c.size_u32(
            raw.max_header_list_size.as_ref(),
            "http2.max_header_list_size",
            HTTP2_MAX_HEADER_LIST_BYTES_MIN..=HTTP2_MAX_HEADER_LIST_BYTES_MAX,
            d.max_header_list_bytes,
        ),
        header_table_bytes: c.size_u32(
            raw.header_table_size.as_ref(),
            "http2.header_table_size",
            0..=HTTP2_HEADER_TABLE_BYTES_MAX,
            d.header_table_bytes,
        ),
        initial_window_bytes: c.size_u32(
            raw.initial_window_size.as_ref(),
            "http2.initial_window_size",
            HTTP2_INITIAL_WINDOW_BYTES_MIN..=HTTP2_INITIAL_WINDOW_BYTES_MAX,
            d.initial_window_bytes,
        ),
        connection_window_bytes: c.size_u32(
            raw.connection_window_size.as_ref(),
            "http2.connection_window_size",
            HTTP2_CONNECTION_WINDOW_BYTES_MIN..=HTTP2_CONNECTION_WINDOW_BYTES_MAX,
            d.connection_window_bytes,
        ),
        max_frame_bytes: c.size_u32(
            raw.max_frame_size.as_ref(),
            "http2.max_frame_size",
            HTTP2_MAX_FRAME_BYTES_MIN..=HTTP2_MAX_FRAME_BYTES_MAX,
            d.max_frame_bytes,
        ),
        max_send_buffer_bytes: c.size(
            raw.max_send_buffer.as_ref(),
            "http2.max_send_buffer",
            HTTP2_MAX_SEND_BUFFER_BYTES_MIN..=HTTP2_MAX_SEND_BUFFER_BYTES_MAX,
            d.max_send_buffer_bytes,
        ),
        max_frames_per_second: c.int(
            raw.max_frames_per_second.as_ref(),
            "http2.max_frames_per_second",
            HTTP2_MAX_FRAMES_PER_SECOND_MIN..=HTTP2_MAX_FRAMES_PER_SECOND_MAX,
            d.max_frames_per_second,
        ),
        max_resets_per_second: c.int(
            raw.max_resets_per_second.as_ref(),
            "http2.max_resets_per_second",
            1..=HTTP2_MAX_RESETS_PER_SECOND_MAX,
            d.max_resets_per_second,
        ),
        max_control_frames_per_second: c.int(
            raw.max_control_frames_per_second.as_ref(),
            "http2.max_control_frames_per_second",
            1..=HTTP2_MAX_CONTROL_FRAMES_PER_SECOND_MAX,
            d.max_control_frames_per_second,
        ),
        max_continuation_frames: c.int(
            raw.max_continuation_frames.as_ref(),
            "http2.max_continuation_frames",
            1..=HTTP2_MAX_CONTINUATION_FRAMES_MAX,
            d.max_continuation_frames,
        ),
    }
}

fn listener_tls(c: &mut Checker<'_>, key: &str, raw: &Spanned<RawListenerTls>) -> ListenerTls {
    let t = raw.get_ref();
    let path = |c: &mut Checker<'_>, value: &Spanned<String>, key: String| -> PathBuf {
        let text = value.get_ref().trim();
        if text.is_empty() {
            c.err(value.span(), key, "must name a file");
        }
        PathBuf::from(text)
    };
    if t.certificates.get_ref().is_empty() {
        c.err(
            t.certificates.span(),
            format!("{key}.certificates"),
            "a TLS listener needs at least one { cert = \"...\", key = \"...\" }",
        );
    }
    let certificates = t
        .certificates
        .get_ref()
        .iter()
        .enumerate()
        .map(|(j, pair)| CertificateFiles {
            cert: path(c, &pair.cert, format!("{key}.certificates[{j}].cert")),
            key: path(c, &pair.key, format!("{key}.certificates[{j}].key")),
        })
        .collect();
    let mut versions = Vec::new();
    for v in t.versions.iter().flatten() {
        let version = match v.get_ref().trim() {
            "1.2" | "TLSv1.2" => TlsVersion::Tls12,
            "1.3" | "TLSv1.3" => TlsVersion::Tls13,
            other => {
                let why = if matches!(
                    other,
                    "1.0" | "1.1" | "TLSv1" | "TLSv1.0" | "TLSv1.1" | "SSLv3"
                ) {
                    format!("{other:?} is not offered: TLS before 1.2 is broken (RFC 8996); use \"1.2\" and \"1.3\"")
                } else {
                    format!("unknown TLS version {other:?}; use \"1.2\" or \"1.3\"")
                };
                c.err(v.span(), format!("{key}.versions"), why);
                continue;
            }
        };
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    if t.versions.as_ref().is_some_and(|v| v.is_empty()) {
        c.err(
            raw.span(),
            format!("{key}.versions"),
            "must name at least one version",
        );
    }
    if versions.is_empty() {
        versions = vec![TlsVersion::Tls12, TlsVersion::Tls13];
    }
    let mut cipher_suites = Vec::new();
    for s in t.cipher_suites.iter().flatten() {
        let name = s.get_ref().trim();
        if TLS_CIPHER_SUITES.contains(&name) {
            cipher_suites.push(name.to_string());
        } else {
            c.err(
                s.span(),
                format!("{key}.cipher_suites"),
                format!(
                    "unknown cipher suite {name:?}; known: {}",
                    TLS_CIPHER_SUITES.join(", ")
                ),
            );
        }
    }
    let client_ca = t
        .client_ca
        .as_ref()
        .map(|ca| path(c, ca, format!("{key}.client_ca")));
    let client_certificate_required = match &t.client_certificate {
        None => true,
        Some(v) => match v.get_ref().as_str() {
            "required" => true,
            "optional" => false,
            other => {
                c.err(
                    v.span(),
                    format!("{key}.client_certificate"),
                    format!("{other:?} is not a mode; use \"required\" or \"optional\""),
                );
                true
            }
        },
    };
    if client_ca.is_none() {
        let needing = [
            ("client_certificate", t.client_certificate.as_ref()),
            ("client_subject_header", t.client_subject_header.as_ref()),
        ];
        for (name, value) in needing {
            if let Some(v) = value {
                c.err(
                    v.span(),
                    format!("{key}.{name}"),
                    "needs client_ca (the CA that verifies client certificates)",
                );
            }
        }
    }
    let client_subject_header =
        t.client_subject_header
            .as_ref()
            .and_then(|h| match header_name(h.get_ref()) {
                Ok(name) if MANAGED_HEADERS.contains(&name.as_str()) => {
                    c.err(
                        h.span(),
                        format!("{key}.client_subject_header"),
                        format!("{name:?} is a header the proxy manages itself"),
                    );
                    None
                }
                Ok(name) => Some(name),
                Err(why) => {
                    c.err(h.span(), format!("{key}.client_subject_header"), why);
                    None
                }
            });
    ListenerTls {
        certificates,
        versions,
        cipher_suites,
        client_ca,
        client_certificate_required,
        client_subject_header,
        session_cache: c.int(
            t.session_cache.as_ref(),
            &format!("{key}.session_cache"),
            0..=TLS_SESSION_CACHE_MAX,
            DEFAULT_TLS_SESSION_CACHE,
        ),
        session_tickets: t.session_tickets.unwrap_or(true),
    }
}

fn upstream(
    c: &mut Checker<'_>,
    i: usize,
    raw: RawUpstream,
    names: &mut HashMap<String, Range<usize>>,
) -> Upstream {
    let key = format!("upstreams[{i}]");
    c.name(&raw.name, &format!("{key}.name"), names);

    let backends_key = format!("{key}.backends");
    let (span, raw_backends) = match raw.backends {
        Some(b) => (b.span(), b.into_inner()),
        None => (raw.name.span(), Vec::new()),
    };
    if raw_backends.is_empty() {
        c.err(
            span.clone(),
            &backends_key,
            "at least one backend is required",
        );
    }
    let mut seen: HashMap<BackendTarget, Range<usize>> = HashMap::new();
    let mut backends = Vec::with_capacity(raw_backends.len());
    // A weight out of range is already reported; comparing its stand-in
    // default with the others would report it again as "weights differ".
    let mut weights_valid = true;
    for (j, b) in raw_backends.iter().enumerate() {
        let entry_key = format!("{backends_key}[{j}]");
        let weight = c.int(
            b.weight.as_ref(),
            &format!("{entry_key}.weight"),
            1..=WEIGHT_MAX,
            DEFAULT_WEIGHT,
        );
        weights_valid &= b
            .weight
            .as_ref()
            .is_none_or(|w| i64::from(weight) == *w.get_ref());
        let Some((target, at)) = backend_target(c, b, &entry_key, span.clone()) else {
            continue;
        };
        let max_addresses = match (&target, &b.max_addresses) {
            (BackendTarget::Address(_), Some(m)) => {
                c.err(
                    m.span(),
                    format!("{entry_key}.max_addresses"),
                    "only read for a host name or a srv name; an address is one backend",
                );
                1
            }
            (BackendTarget::Address(_), None) => 1,
            (_, m) => c.int(
                m.as_ref(),
                &format!("{entry_key}.max_addresses"),
                1..=MAX_ADDRESSES_MAX,
                DEFAULT_MAX_ADDRESSES,
            ),
        };
        if let (BackendTarget::Srv { .. }, Some(w)) = (&target, &b.weight) {
            c.err(
                w.span(),
                format!("{entry_key}.weight"),
                "a srv name's addresses take the weights of its SRV records; remove weight",
            );
        }
        if let Some(first) = seen.get(&target) {
            let line = c.line_of(first);
            let message = format!(
                "backend {target} is already listed on line {line}; raise its weight instead"
            );
            c.err(at, format!("{entry_key}.address"), message);
        } else {
            seen.insert(target.clone(), at);
        }
        backends.push(Backend {
            target,
            weight,
            max_addresses,
        });
    }

    let balance = match raw.balance.as_ref().map(|b| *b.get_ref()) {
        None => DEFAULT_BALANCE,
        Some(RawBalance::RoundRobin) => Balance::RoundRobin,
        Some(RawBalance::WeightedRoundRobin) => Balance::WeightedRoundRobin,
        Some(RawBalance::LeastConn) => Balance::LeastConn,
        Some(RawBalance::P2cEwma) => Balance::P2cEwma,
        Some(RawBalance::MaglevHash) => Balance::MaglevHash,
        Some(RawBalance::Random) => Balance::Random,
    };
    if let Some(b) = raw.balance.as_ref() {
        let weights_differ = backends.windows(2).any(|w| w[0].weight != w[1].weight);
        let srv = backends
            .iter()
            .any(|b| matches!(b.target, BackendTarget::Srv { .. }));
        if balance == Balance::RoundRobin && weights_differ && weights_valid && !srv {
            c.err(
                b.span(),
                format!("{key}.balance"),
                r#""round_robin" ignores weights, but the backends have different weights; write "weighted_round_robin""#,
            );
        }
    }
    let hash_key = match (&raw.hash_key, balance) {
        (Some(h), Balance::MaglevHash) => parse_hash_key(h.get_ref())
            .map_err(|why| c.err(h.span(), format!("{key}.hash_key"), why))
            .ok(),
        (Some(h), _) => {
            c.err(
                h.span(),
                format!("{key}.hash_key"),
                r#"only used with balance = "maglev_hash"; remove it or change balance"#,
            );
            None
        }
        (None, Balance::MaglevHash) => {
            let span = raw.balance.as_ref().map_or(raw.name.span(), |b| b.span());
            c.err(
                span,
                format!("{key}.hash_key"),
                r#"required with balance = "maglev_hash"; write "client_ip", "header:NAME" or "cookie:NAME""#,
            );
            None
        }
        (None, _) => None,
    };
    let health_check = raw
        .health_check
        .as_ref()
        .map(|h| health_check(c, &format!("{key}.health_check"), h));
    let outlier_detection = raw
        .outlier_detection
        .as_ref()
        .map_or(DEFAULT_OUTLIER_DETECTION, |o| {
            outlier_detection(c, &format!("{key}.outlier_detection"), o)
        });
    let retries = raw
        .retries
        .as_ref()
        .map(|r| retries(c, &format!("{key}.retries"), r));
    let circuit_breaker = raw
        .circuit_breaker
        .as_ref()
        .map(|b| circuit_breaker(c, &format!("{key}.circuit_breaker"), b));

    let t = raw.timeouts.as_ref();
    let tls = raw
        .tls
        .as_ref()
        .map(|t| upstream_tls(c, &format!("{key}.tls"), t));
    let protocol = match raw.protocol.as_ref().map(|p| *p.get_ref()) {
        None | Some(RawUpstreamProtocol::Http1) => UpstreamProtocol::Http1,
        Some(RawUpstreamProtocol::H2) => UpstreamProtocol::H2,
    };
    if let (UpstreamProtocol::H2, Some(_), Some(p)) =
        (protocol, raw.send_proxy_protocol, raw.protocol.as_ref())
    {
        // A PROXY header names one client; an HTTP/2 connection carries
        // the streams of many.
        c.err(
            p.span(),
            format!("{key}.protocol"),
            "\"h2\" cannot be used with send_proxy_protocol: a multiplexed connection carries many clients' requests, a PROXY header names one",
        );
    }
    Upstream {
        tls,
        protocol,
        send_proxy_protocol: raw.send_proxy_protocol,
        name: raw.name.into_inner(),
        balance,
        hash_key,
        health_check,
        outlier_detection,
        retries,
        circuit_breaker,
        backends,
        connect_timeout: c.timeout(
            t.and_then(|t| t.connect.as_ref()),
            &format!("{key}.timeouts.connect"),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        response_timeout: c.timeout(
            t.and_then(|t| t.response.as_ref()),
            &format!("{key}.timeouts.response"),
            DEFAULT_RESPONSE_TIMEOUT,
        ),
        send_timeout: c.timeout(
            t.and_then(|t| t.send.as_ref()),
            &format!("{key}.timeouts.send"),
            DEFAULT_SEND_TIMEOUT,
        ),
        idle_timeout: c.timeout(
            t.and_then(|t| t.idle.as_ref()),
            &format!("{key}.timeouts.idle"),
            DEFAULT_IDLE_TIMEOUT,
        ),
        tunnel_idle_timeout: c.timeout(
            t.and_then(|t| t.tunnel_idle.as_ref()),
            &format!("{key}.timeouts.tunnel_idle"),
            DEFAULT_TUNNEL_IDLE_TIMEOUT,
        ),
        max_idle_per_backend: c.int(
            raw.pool
                .as_ref()
                .and_then(|p| p.max_idle_per_backend.as_ref()),
            &format!("{key}.pool.max_idle_per_backend"),
            0..=MAX_IDLE_PER_BACKEND_MAX,
            DEFAULT_MAX_IDLE_PER_BACKEND,
        ),
        stray_cooldown: c.timeout(
            raw.pool.as_ref().and_then(|p| p.stray_cooldown.as_ref()),
            &format!("{key}.pool.stray_cooldown"),
            DEFAULT_STRAY_COOLDOWN,
        ),
    }
}

fn rate_limit(
    c: &mut Checker<'_>,
    route: usize,
    raw: &RawRateLimit,
    have_fleet: bool,
) -> Option<RateLimit> {
    let key = &format!("routes[{route}].rate_limit");
    let limit_key = match parse_rate_limit_key(raw.key.get_ref()) {
        Ok(k) => Some(k),
        Err(why) => {
            c.err(raw.key.span(), format!("{key}.key"), why);
            None
        }
    };
    let rate = match parse_rate(raw.rate.get_ref()) {
        Ok(r) => Some(r),
        Err(why) => {
            c.err(raw.rate.span(), format!("{key}.rate"), why);
            None
        }
    };
    // A bucket that holds one second of traffic, and at least one request.
    let default_burst = rate.map_or(1, |(requests, per)| {
        let per_sec = u64::from(requests) / per.as_secs().max(1);
        u32::try_from(per_sec).unwrap_or(BURST_MAX).max(1)
    });
    let burst = c.int(
        raw.burst.as_ref(),
        &format!("{key}.burst"),
        1..=BURST_MAX,
        default_burst,
    );
    let fleet = fleet_scope(c, key, route, raw, have_fleet);
    let (requests, per) = rate?;
    Some(RateLimit {
        key: limit_key?,
        requests,
        per,
        burst,
        fleet: fleet?,
    })
}

/// `scope`, `name` and `fleet_fallback` of a rate limit: `Some(None)` for a
/// node-wide one, `None` after recording an error.
fn fleet_scope(
    c: &mut Checker<'_>,
    key: &str,
    route: usize,
    raw: &RawRateLimit,
    have_fleet: bool,
) -> Option<Option<FleetScope>> {
    let fleet = match raw.scope.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "node")) => false,
        Some((_, "fleet")) => true,
        Some((scope, other)) => {
            c.err(
                scope.span(),
                format!("{key}.scope"),
                format!(
                    r#"unknown scope {other:?}{}; write "node" or "fleet""#,
                    close_to(other, &["node", "fleet"])
                ),
            );
            return None;
        }
    };
    if !fleet {
        for (value, field) in [(&raw.name, "name"), (&raw.fleet_fallback, "fleet_fallback")] {
            if let Some(value) = value {
                c.err(
                    value.span(),
                    format!("{key}.{field}"),
                    r#"is only read with scope = "fleet""#,
                );
            }
        }
        return Some(None);
    }
    if !have_fleet {
        if let Some(scope) = &raw.scope {
            c.err(
                scope.span(),
                format!("{key}.scope"),
                r#""fleet" needs a [fleet] section naming the Redis server the nodes share"#,
            );
        }
        return None;
    }
    let fallback = match raw
        .fleet_fallback
        .as_ref()
        .map(|f| (f, f.get_ref().as_str()))
    {
        None | Some((_, "local_share")) => FleetFallback::LocalShare,
        Some((_, "open")) => FleetFallback::Open,
        Some((_, "closed")) => FleetFallback::Closed,
        Some((value, other)) => {
            const ALL: [&str; 3] = ["local_share", "open", "closed"];
            c.err(
                value.span(),
                format!("{key}.fleet_fallback"),
                format!(
                    r#"unknown fallback {other:?}{}; write "local_share", "open" or "closed""#,
                    close_to(other, &ALL)
                ),
            );
            return None;
        }
    };
    let counter = match &raw.name {
        None => format!("route{route}"),
        Some(name) => {
            let text = name.get_ref();
            let fine = !text.is_empty()
                && text.len() <= 64
                && text
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
            if !fine {
                c.err(
                    name.span(),
                    format!("{key}.name"),
                    "must be 1 to 64 letters, digits, '_', '-' or '.' (it names a Redis key)",
                );
                return None;
            }
            text.clone()
        }
    };
    Some(Some(FleetScope { counter, fallback }))
}

/// An upstream's (or the fleet's Redis's) `tls` table; `key` names it.
fn upstream_tls(c: &mut Checker<'_>, key: &str, t: &RawUpstreamTls) -> UpstreamTls {
    UpstreamTls {
        server_name: t.server_name.as_ref().and_then(|n| {
            let name = n
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if name.is_empty() || name.starts_with("*.") || check_host(&name).is_err() {
                c.err(
                    n.span(),
                    format!("{key}.server_name"),
                    format!("{:?} is not a host name", n.get_ref()),
                );
                None
            } else {
                Some(name)
            }
        }),
        ca: t.ca.as_ref().map(|ca| {
            let text = ca.get_ref().trim();
            if text.is_empty() {
                c.err(ca.span(), format!("{key}.ca"), "must name a file");
            }
            PathBuf::from(text)
        }),
        client_certificate: t.client_certificate.as_ref().map(|pair| {
            let file = |c: &mut Checker<'_>, value: &Spanned<String>, name: &str| {
                let text = value.get_ref().trim();
                if text.is_empty() {
                    c.err(
                        value.span(),
                        format!("{key}.client_certificate.{name}"),
                        "must name a file",
                    );
                }
                PathBuf::from(text)
            };
            let pair = pair.get_ref();
            CertificateFiles {
                cert: file(c, &pair.cert, "cert"),
                key: file(c, &pair.key, "key"),
            }
        }),
    }
}

fn fleet(c: &mut Checker<'_>, raw: &RawFleet) -> Option<Fleet> {
    let parsed = parse_redis_url(raw.redis.get_ref());
    if let Err(why) = &parsed {
        c.err(raw.redis.span(), "fleet.redis", why.clone());
    }
    let key_prefix = match &raw.key_prefix {
        None => DEFAULT_FLEET_KEY_PREFIX.to_owned(),
        Some(p) => {
            let text = p.get_ref();
            if text.len() > FLEET_KEY_PREFIX_MAX || text.chars().any(|ch| ch.is_control()) {
                c.err(
                    p.span(),
                    "fleet.key_prefix",
                    format!(
                        "must be at most {FLEET_KEY_PREFIX_MAX} bytes with no control characters"
                    ),
                );
            }
            text.clone()
        }
    };
    let sync_interval = c.duration(
        raw.sync_interval.as_ref(),
        "fleet.sync_interval",
        FLEET_SYNC_INTERVAL_MIN..=FLEET_SYNC_INTERVAL_MAX,
        DEFAULT_FLEET_SYNC_INTERVAL,
    );
    let timeout = c.timeout(raw.timeout.as_ref(), "fleet.timeout", DEFAULT_FLEET_TIMEOUT);
    let nodes = c.int(raw.nodes.as_ref(), "fleet.nodes", 1..=FLEET_NODES_MAX, 1);
    let (redis, username, url_password, database, secure) = parsed.ok()?;
    let tls = match (&raw.tls, secure) {
        (Some(t), true) => Some(upstream_tls(c, "fleet.tls", t.get_ref())),
        (None, true) => Some(UpstreamTls {
            server_name: None,
            ca: None,
            client_certificate: None,
        }),
        (Some(t), false) => {
            c.err(
                t.span(),
                "fleet.tls",
                "TLS to Redis needs a rediss:// URL in fleet.redis",
            );
            None
        }
        (None, false) => None,
    };
    let password = match (&raw.password, url_password) {
        (Some(p), Some(_)) => {
            c.err(
                p.span(),
                "fleet.password",
                "the redis URL carries a password already; give it in one place",
            );
            None
        }
        (Some(p), None) => Some(p.get_ref().clone()),
        (None, from_url) => from_url,
    };
    Some(Fleet {
        redis,
        username,
        password,
        database,
        key_prefix,
        sync_interval,
        timeout,
        nodes,
        tls,
    })
}

/// The address, user, password and database of
/// `redis[s]://[[user]:password@]IP:port[/db]`, and whether it is `rediss`.
type RedisTarget = (SocketAddr, Option<String>, Option<String>, u32, bool);

fn parse_redis_url(text: &str) -> Result<RedisTarget, String> {
    const SHAPE: &str =
        r#"write redis[s]://[[user]:password@]IP:port[/db] such as "redis://127.0.0.1:6379""#;
    let (rest, secure) = match (
        text.strip_prefix("redis://"),
        text.strip_prefix("rediss://"),
    ) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err(format!("{text:?} is not a redis:// URL; {SHAPE}")),
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((c, r)) => (Some(c), r),
        None => (None, rest),
    };
    let (authority, database) = match rest.split_once('/') {
        None => (rest, 0),
        Some((a, "")) => (a, 0),
        Some((a, db)) => match db.parse::<u32>() {
            Ok(n) => (a, n),
            Err(_) => return Err(format!("database {db:?} is not a number; {SHAPE}")),
        },
    };
    let Ok(address) = authority.parse::<SocketAddr>() else {
        return Err(format!(
            "{authority:?} is not IP:port (host names are not resolved); {SHAPE}"
        ));
    };
    let (username, password) = match credentials {
        None => (None, None),
        Some(c) => match c.split_once(':') {
            Some((user, password)) => {
                let user = (!user.is_empty()).then(|| user.to_owned());
                (user, Some(password.to_owned()))
            }
            None => {
                return Err(format!(
                    "credentials need a ':' before the password; {SHAPE}"
                ))
            }
        },
    };
    Ok((address, username, password, database, secure))
}

fn parse_rate_limit_key(text: &str) -> Result<RateLimitKey, String> {
    const HINT: &str = r#"write "client_ip", "route", "consumer" or "header:NAME""#;
    match text {
        "client_ip" => Ok(RateLimitKey::ClientIp),
        "route" => Ok(RateLimitKey::Route),
        "consumer" => Ok(RateLimitKey::Consumer),
        _ => match text.strip_prefix("header:") {
            Some(name) => header_name(name).map(RateLimitKey::Header),
            None => Err(format!(
                "unknown key {text:?}{}; {HINT}",
                close_to(text, &["client_ip", "route", "consumer"])
            )),
        },
    }
}

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    if text == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return header_name(name).map(HashKey::Header);
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        // RFC 6265 §4.1.1: cookie-name = token.
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!(
                "invalid cookie name {name:?}: must be a token (RFC 6265 §4.1.1)"
            ));
        }
        return Ok(HashKey::Cookie(name.to_owned()));
    }
    let close = close_to(text, &["client_ip"]);
    Err(format!(
        r#"unknown hash key {text:?}{close}; write "client_ip", "header:NAME" or "cookie:NAME""#
    ))
}

/// `"; did you mean X?"` when `text` is a slip from one of `words`, else "".
fn close_to(text: &str, words: &[&str]) -> String {
    did_you_mean(text, words.iter().copied())
        .map(|w| format!(" (did you mean {w:?}?)"))
        .unwrap_or_default()
}

/// A header field name (RFC 9110 §5.1: a token), lowercased so the proxy
/// compares bytes.
fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!(
            "invalid header name {name:?}: must be a token (RFC 9110 §5.1)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// `"N/s"` or `"N/m"` → (N, period).
fn parse_rate(text: &str) -> Result<(u32, Duration), String> {
    const HINT: &str = r#"write "N/s" or "N/m", such as "100/s" or "600/m""#;
    let Some((n, unit)) = text.split_once('/') else {
        return Err(format!("invalid rate {text:?}; {HINT}"));
    };
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        other => {
            return Err(format!(
                "invalid rate {text:?}: unknown unit {other:?}; {HINT}"
            ))
        }
    };
    let n = n.trim();
    match n.parse::<u64>() {
        Ok(n) if (1..=u64::from(RATE_REQUESTS_MAX)).contains(&n) => Ok((n as u32, per)),
        Ok(_) => Err(format!(
            "invalid rate {text:?}: the count must be in 1..={RATE_REQUESTS_MAX}"
        )),
        Err(_) => Err(format!(
            "invalid rate {text:?}: {n:?} is not a whole number; {HINT}"
        )),
    }
}

fn health_check(c: &mut Checker<'_>, key: &str, raw: &RawHealthCheck) -> HealthCheck {
    if let Some(path) = &raw.path {
        let text = path.get_ref();
        if !text.starts_with('/') {
            c.err(
                path.span(),
                format!("{key}.path"),
                format!("{text:?} must start with \"/\""),
            );
        } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
            c.err(
                path.span(),
                format!("{key}.path"),
                format!("{text:?} may only contain visible ASCII (percent-encode the rest)"),
            );
        }
    } else if let Some(status) = &raw.expect_status {
        c.err(
            status.span(),
            format!("{key}.expect_status"),
            "is only read with path: without one the probe is a connect, which has no status",
        );
    }
    let interval = c.timeout(
        Some(&raw.interval),
        &format!("{key}.interval"),
        Duration::from_secs(1),
    );
    let timeout = c.timeout(
        Some(&raw.timeout),
        &format!("{key}.timeout"),
        Duration::from_secs(1),
    );
    let both_valid = raw.timeout.get_ref().0 == timeout && raw.interval.get_ref().0 == interval;
    if timeout > interval && both_valid {
        c.err(
            raw.timeout.span(),
            format!("{key}.timeout"),
            format!(
                "{} is longer than interval {}; one probe per backend is outstanding at a time",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    HealthCheck {
        path: raw.path.as_ref().map(|p| p.get_ref().clone()),
        interval,
        timeout,
        rise: c.int(
            raw.rise.as_ref(),
            &format!("{key}.rise"),
            1..=HEALTH_THRESHOLD_MAX,
            DEFAULT_HEALTH_RISE,
        ),
        fall: c.int(
            raw.fall.as_ref(),
            &format!("{key}.fall"),
            1..=HEALTH_THRESHOLD_MAX,
            DEFAULT_HEALTH_FALL,
        ),
        expect_status: c.int(
            raw.expect_status.as_ref(),
            &format!("{key}.expect_status"),
            100..=599,
            DEFAULT_HEALTH_EXPECT_STATUS,
        ),
    }
}

fn outlier_detection(
    c: &mut Checker<'_>,
    key: &str,
    raw: &RawOutlierDetection,
) -> OutlierDetection {
    let d = DEFAULT_OUTLIER_DETECTION;
    let base = c.timeout(
        raw.base_ejection_time.as_ref(),
        &format!("{key}.base_ejection_time"),
        d.base_ejection_time,
    );
    let max = c.timeout(
        raw.max_ejection_time.as_ref(),
        &format!("{key}.max_ejection_time"),
        d.max_ejection_time.max(base),
    );
    // Only compare values that passed their own range checks.
    let as_given =
        |v: Option<&Spanned<HumanDuration>>, d: Duration| v.is_none_or(|v| v.get_ref().0 == d);
    if max < base
        && as_given(raw.base_ejection_time.as_ref(), base)
        && as_given(raw.max_ejection_time.as_ref(), max)
    {
        let span = raw
            .max_ejection_time
            .as_ref()
            .or(raw.base_ejection_time.as_ref())
            .map_or(0..0, Spanned::span);
        c.err(
            span,
            format!("{key}.max_ejection_time"),
            format!(
                "{} is shorter than base_ejection_time {}",
                humantime::format_duration(max),
                humantime::format_duration(base)
            ),
        );
    }
    OutlierDetection {
        consecutive_failures: c.int(
            raw.consecutive_failures.as_ref(),
            &format!("{key}.consecutive_failures"),
            1..=CONSECUTIVE_FAILURES_MAX,
            d.consecutive_failures,
        ),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: c.int(
            raw.max_ejection_percent.as_ref(),
            &format!("{key}.max_ejection_percent"),
            0..=100,
            d.max_ejection_percent,
        ),
    }
}

fn retries(c: &mut Checker<'_>, key: &str, raw: &RawRetries) -> Retries {
    let on = match &raw.on {
        None => DEFAULT_RETRY_ON,
        Some(list) => {
            if list.get_ref().is_empty() {
                c.err(
                    list.span(),
                    format!("{key}.on"),
                    "must name at least one of \"connect_failure\", \"reset\", \"timeout\", \"5xx\"; to turn retries off, remove the retries table",
                );
            }
            let mut on = RetryOn::default();
            for (j, item) in list.get_ref().iter().enumerate() {
                let flag = match item.get_ref() {
                    RawRetryOn::ConnectFailure => &mut on.connect_failure,
                    RawRetryOn::Reset => &mut on.reset,
                    RawRetryOn::Timeout => &mut on.timeout,
                    RawRetryOn::Status5xx => &mut on.status_5xx,
                };
                if *flag {
                    c.err(item.span(), format!("{key}.on[{j}]"), "is listed twice");
                }
                *flag = true;
            }
            on
        }
    };
    let budget_percent = match &raw.budget {
        None => DEFAULT_RETRY_BUDGET_PERCENT,
        Some(b) => match parse_percent(b.get_ref()) {
            Some(p) => p,
            None => {
                c.err(
                    b.span(),
                    format!("{key}.budget"),
                    format!(
                        r#"invalid budget {:?}; write a whole percentage in 0%..=100%, such as "20%""#,
                        b.get_ref()
                    ),
                );
                DEFAULT_RETRY_BUDGET_PERCENT
            }
        },
    };
    Retries {
        attempts: c.int(
            raw.attempts.as_ref(),
            &format!("{key}.attempts"),
            1..=RETRY_ATTEMPTS_MAX,
            DEFAULT_RETRY_ATTEMPTS,
        ),
        on,
        budget_percent,
    }
}

/// `"N%"` with N a whole number in 0..=100.
fn parse_percent(text: &str) -> Option<u8> {
    let n = text.trim().strip_suffix('%')?.trim_end();
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse::<u8>().ok().filter(|&p| p <= 100)
}

fn circuit_breaker(c: &mut Checker<'_>, key: &str, raw: &RawCircuitBreaker) -> CircuitBreaker {
    CircuitBreaker {
        max_pending: c.int(
            raw.max_pending.as_ref(),
            &format!("{key}.max_pending"),
            1..=MAX_PENDING_MAX,
            DEFAULT_MAX_PENDING,
        ),
        max_connections: c.int(
            raw.max_connections.as_ref(),
            &format!("{key}.max_connections"),
            1..=MAX_BACKEND_CONNECTIONS_MAX,
            DEFAULT_MAX_BACKEND_CONNECTIONS,
        ),
        consecutive_failures: c.int(
            raw.consecutive_failures.as_ref(),
            &format!("{key}.consecutive_failures"),
            1..=CONSECUTIVE_FAILURES_MAX,
            DEFAULT_BREAKER_FAILURES,
        ),
        open_for: c.timeout(
            raw.open_for.as_ref(),
            &format!("{key}.open_for"),
            DEFAULT_BREAKER_OPEN_FOR,
        ),
    }
}

/// Host, path prefix, methods and header conditions of a route's `match`.
type Match = (Option<String>, String, Vec<String>, Vec<(String, String)>);

fn route_match(c: &mut Checker<'_>, i: usize, raw: Option<&RawMatch>) -> Match {
    let key = format!("routes[{i}].match");
    let Some(raw) = raw else {
        return (None, "/".to_owned(), Vec::new(), Vec::new());
    };

    let host = raw.host.as_ref().and_then(|h| {
        // Host names are case-insensitive (RFC 9110 §4.2.3) and a trailing dot
        // names the same host; store one spelling so the router compares bytes.
        let host = h.get_ref().trim().to_ascii_lowercase();
        let host = host.strip_suffix('.').map_or(host.clone(), str::to_owned);
        match check_host(&host) {
            Ok(()) => Some(host),
            Err(why) => {
                c.err(
                    h.span(),
                    format!("{key}.host"),
                    format!("invalid host {:?}: {why}", h.get_ref()),
                );
                None
            }
        }
    });

    let path_prefix = match &raw.path_prefix {
        None => "/".to_owned(),
        Some(p) => {
            let text = p.get_ref();
            if !text.starts_with('/') {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!("{text:?} must start with \"/\""),
                );
            } else if text.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!("{text:?} must not contain whitespace or control characters"),
                );
            } else if !text.is_ascii() {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!(
                        "{text:?}: request paths are ASCII; percent-encode the other characters"
                    ),
                );
            } else if ringgate_core::http::path_as_backends_read(text.as_bytes(), &mut Vec::new()) {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!(
                        "{text:?} would never match: a request path with ;parameters, %2F, \\ or %5C is routed a second time as backends read it (without the parameters, those as /), and refused when that changes the route"
                    ),
                );
            } else if ringgate_core::http::has_stray_percent(text.as_bytes()) {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!(
                        "{text:?} would never match: a request path with a % that begins no %XX escape is refused (400); write % as %25"
                    ),
                );
            } else if text.as_bytes().windows(3).any(|w| w == b"%00") {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!(
                        "{text:?} would never match: a request path with an encoded NUL (%00) is refused (400)"
                    ),
                );
            } else if let Some(normal) = path_in_normal_form(text) {
                c.err(
                    p.span(),
                    format!("{key}.path_prefix"),
                    format!(
                        "{text:?} would never match: requests are routed with encoded letters, digits and -._~ decoded and repeated slashes merged; write {normal:?}"
                    ),
                );
            }
            text.clone()
        }
    };

    let mut methods: Vec<String> = Vec::new();
    for (j, m) in raw.methods.iter().flatten().enumerate() {
        let text = m.get_ref();
        let method_key = format!("{key}.methods[{j}]");
        if text.is_empty() || !text.bytes().all(is_tchar) {
            // RFC 9110 §9.1: method = token; §5.6.2: token = 1*tchar.
            c.err(
                m.span(),
                method_key,
                format!("{text:?} is not a valid HTTP method token (RFC 9110 §5.6.2)"),
            );
        } else if text.bytes().any(|b| b.is_ascii_lowercase()) {
            // RFC 9110 §9.1: methods are case-sensitive, so "get" would never match a GET.
            let upper = text.to_ascii_uppercase();
            c.err(m.span(), method_key, format!("{text:?} must be uppercase (methods are case-sensitive, RFC 9110 §9.1); write {upper:?}"));
        } else if methods.contains(text) {
            c.err(m.span(), method_key, format!("{text:?} is listed twice"));
        } else {
            methods.push(text.clone());
        }
    }

    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(table) = &raw.headers {
        for (name, value) in table.get_ref() {
            let lower = name.to_ascii_lowercase();
            let why = if name.is_empty() || !name.bytes().all(is_tchar) {
                Some(format!(
                    "{name:?} is not a valid header name (RFC 9110 §5.1)"
                ))
            } else if lower == "host" {
                Some("match the host with match.host, which normalises it".to_owned())
            } else if value.trim() != value || value.bytes().any(|b| b.is_ascii_control()) {
                Some(format!(
                    "the value for {name:?} must have no surrounding whitespace or control characters"
                ))
            } else if headers.iter().any(|(n, _)| *n == lower) {
                Some(format!(
                    "{name:?} is listed twice (names are case-insensitive)"
                ))
            } else {
                None
            };
            match why {
                Some(why) => c.err(table.span(), format!("{key}.headers"), why),
                None => headers.push((lower, value.clone())),
            }
        }
    }
    headers.sort();
    (host, path_prefix, methods, headers)
}

/// `respond` or `redirect`, and that a route says exactly one of them or
/// `upstream`, and nothing that only forwarding uses beside them.
fn direct_answer(
    c: &mut Checker<'_>,
    i: usize,
    r: &RawRoute,
) -> (Option<DirectResponse>, Option<Redirect>) {
    let key = |name: &str| format!("routes[{i}].{name}");
    let given = [
        r.upstream.as_ref().map(|u| u.span()),
        r.respond.as_ref().map(|x| x.span()),
        r.redirect.as_ref().map(|x| x.span()),
        r.compose.as_ref().map(|x| x.span()),
    ];
    let count = given.iter().flatten().count();
    if count != 1 {
        let span = given
            .iter()
            .flatten()
            .nth(1)
            .cloned()
            .unwrap_or_else(|| r.listener.span());
        c.err(
            span,
            format!("routes[{i}]"),
            "a route needs exactly one of upstream, respond, redirect or compose",
        );
    }
    if r.upstream.is_none() {
        for (name, present) in [
            ("rewrite", r.rewrite.is_some()),
            ("request_headers", r.request_headers.is_some()),
            ("response_headers", r.response_headers.is_some()),
        ] {
            if present {
                c.err(
                    r.listener.span(),
                    key(name),
                    "only used when the route forwards to an upstream",
                );
            }
        }
    }
    let respond = r.respond.as_ref().map(|raw| {
        let raw = raw.get_ref();
        let status = c.int(Some(&raw.status), &key("respond.status"), 200..=599, 200);
        let mut headers = Vec::new();
        if let Some(map) = &raw.headers {
            for (name, value) in map.get_ref() {
                let lower = name.to_ascii_lowercase();
                let why = if header_name(name).is_err() {
                    Some(format!(
                        "{name:?} is not a valid header name (RFC 9110 §5.1)"
                    ))
                } else if MANAGED_HEADERS.contains(&lower.as_str()) || lower == "location" {
                    Some(format!("{name:?} is written by the proxy itself"))
                } else if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                    Some(format!("the value of {name:?} has a control character"))
                } else {
                    None
                };
                match why {
                    Some(why) => c.err(map.span(), key("respond.headers"), why),
                    None => headers.push((lower, value.trim().to_owned())),
                }
            }
        }
        DirectResponse {
            status,
            body: raw
                .body
                .as_ref()
                .map(|b| b.get_ref().clone())
                .unwrap_or_default(),
            headers,
        }
    });
    let redirect = r.redirect.as_ref().map(|raw| {
        let raw = raw.get_ref();
        let status = raw.status.as_ref().map_or(301, |s| {
            let n = *s.get_ref();
            if [301, 302, 303, 307, 308].contains(&n) {
                n as u16
            } else {
                c.err(
                    s.span(),
                    key("redirect.status"),
                    format!("{n} is not a redirect status; write 301, 302, 303, 307 or 308"),
                );
                301
            }
        });
        let to = raw.to.get_ref();
        let rest = to.replace("$path", "").replace("$query", "");
        if to.is_empty() || to.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            c.err(
                raw.to.span(),
                key("redirect.to"),
                "must be a URL or path without spaces or control characters",
            );
        } else if rest.contains('$') {
            c.err(
                raw.to.span(),
                key("redirect.to"),
                format!("{to:?}: only $path and $query are replaced; no other $"),
            );
        }
        Redirect {
            to: to.clone(),
            status,
        }
    });
    (respond, redirect)
}

/// A route's `compose` table.
fn compose(
    c: &mut Checker<'_>,
    i: usize,
    raw: &Spanned<RawCompose>,
    upstreams: &HashMap<&str, usize>,
) -> Compose {
    let key = |name: &str| format!("routes[{i}].compose.{name}");
    let raw = raw.get_ref();
    let list = raw.calls.get_ref();
    if list.is_empty() || list.len() > COMPOSE_CALLS_MAX {
        c.err(
            raw.calls.span(),
            key("calls"),
            format!("list 1..={COMPOSE_CALLS_MAX} calls"),
        );
    }
    let mut calls = Vec::new();
    for (j, call) in list.iter().enumerate() {
        let upstream = lookup(
            c,
            &call.upstream,
            &key(&format!("calls[{j}].upstream")),
            upstreams,
            "upstream",
        );
        let path = call.path.get_ref();
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            c.err(
                call.path.span(),
                key(&format!("calls[{j}].path")),
                format!("{path:?} must start with \"/\" and hold no spaces or control characters"),
            );
        }
        let name = call.key.get_ref();
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
            c.err(
                call.key.span(),
                key(&format!("calls[{j}].key")),
                "must be a non-empty string without control characters",
            );
        } else if calls.iter().any(|k: &ComposeCall| &k.key == name) {
            c.err(
                call.key.span(),
                key(&format!("calls[{j}].key")),
                format!("{name:?} is used by another call"),
            );
        }
        if let Some(upstream) = upstream {
            calls.push(ComposeCall {
                upstream,
                path: path.clone(),
                key: name.clone(),
            });
        }
    }
    let partial = match raw.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "fail")) => false,
        Some((_, "partial")) => true,
        Some((o, other)) => {
            c.err(
                o.span(),
                key("on_failure"),
                format!("{other:?}: write \"fail\" or \"partial\""),
            );
            false
        }
    };
    Compose {
        calls,
        timeout: c.timeout(
            raw.timeout.as_ref(),
            &key("timeout"),
            DEFAULT_COMPOSE_TIMEOUT,
        ),
        partial,
        max_body: c.size(
            raw.max_body.as_ref(),
            &key("max_body"),
            1..=COMPOSE_MAX_BODY_MAX,
            DEFAULT_COMPOSE_MAX_BODY,
        ),
    }
}

/// A route's `cors` table.
fn cors(c: &mut Checker<'_>, i: usize, raw: &Spanned<RawCors>) -> Cors {
    let key = |name: &str| format!("routes[{i}].cors.{name}");
    let raw = raw.get_ref();
    let credentials = raw.credentials.unwrap_or(false);
    let mut origins = Vec::new();
    if raw.origins.get_ref().is_empty() {
        c.err(
            raw.origins.span(),
            key("origins"),
            "list at least one origin",
        );
    }
    for o in raw.origins.get_ref() {
        let text = o
            .get_ref()
            .trim()
            .trim_end_matches('/')
            .to_ascii_lowercase();
        let host_part = text
            .split_once("://")
            .map(|(_, h)| h.trim_start_matches("*."));
        let valid = text == "*"
            || (text.starts_with("http://") || text.starts_with("https://"))
                && host_part.is_some_and(|h| {
                    !h.is_empty()
                        && !h.contains('*')
                        && !h.contains('/')
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
                });
        if !valid {
            c.err(
                o.span(),
                key("origins"),
                format!(
                    "{:?} is not an origin: write \"https://host[:port]\", \"https://*.suffix\" or \"*\"",
                    o.get_ref()
                ),
            );
        } else if text == "*" && credentials {
            c.err(
                o.span(),
                key("origins"),
                "\"*\" cannot be used with credentials = true (browsers refuse it); list the origins",
            );
        } else {
            origins.push(text);
        }
    }
    let tokens =
        |c: &mut Checker<'_>, list: &Option<Vec<Spanned<String>>>, name: &str, upper: bool| {
            let mut out = Vec::new();
            for item in list.iter().flatten() {
                let text = item.get_ref().trim();
                if text == "*" && name == "headers" {
                    if credentials {
                        c.err(
                            item.span(),
                            key(name),
                            "\"*\" cannot be used with credentials = true",
                        );
                    }
                    out.push("*".to_owned());
                } else if text.is_empty() || !text.bytes().all(is_tchar) {
                    c.err(item.span(), key(name), format!("{text:?} is not a token"));
                } else if upper {
                    out.push(text.to_owned());
                } else {
                    out.push(text.to_ascii_lowercase());
                }
            }
            out
        };
    let mut methods = tokens(c, &raw.methods, "methods", true);
    if raw.methods.is_none() {
        methods = ["GET", "HEAD", "POST"].map(String::from).to_vec();
    }
    let headers = tokens(c, &raw.headers, "headers", false);
    let expose_headers = tokens(c, &raw.expose_headers, "expose_headers", false);
    let max_age = raw.max_age.as_ref().map(|m| {
        c.duration(
            Some(m),
            &key("max_age"),
            Duration::from_secs(1)..=Duration::from_secs(86_400),
            Duration::from_secs(600),
        )
    });
    Cors {
        origins,
        methods,
        headers,
        expose_headers,
        credentials,
        max_age,
    }
}

/// `max_body`, `content_types`, `required_headers` and `required_query`.
fn request_checks(c: &mut Checker<'_>, i: usize, r: &RawRoute) -> RequestChecks {
    let key = |name: &str| format!("routes[{i}].{name}");
    let max_body = r
        .max_body
        .as_ref()
        .map(|m| c.size(Some(m), &key("max_body"), 1..=MAX_BODY_MAX, MAX_BODY_MAX) as u64);
    let list = |c: &mut Checker<'_>,
                raw: &Option<Spanned<Vec<Spanned<String>>>>,
                name: &str,
                check: &dyn Fn(&str) -> Result<String, String>| {
        let mut out: Vec<String> = Vec::new();
        let Some(raw) = raw else { return out };
        if raw.get_ref().is_empty() {
            c.err(
                raw.span(),
                key(name),
                "must not be empty; leave the key out to allow any",
            );
        }
        for item in raw.get_ref() {
            match check(item.get_ref()) {
                Ok(v) if out.contains(&v) => c.err(
                    item.span(),
                    key(name),
                    format!("{:?} is listed twice", item.get_ref()),
                ),
                Ok(v) => out.push(v),
                Err(why) => c.err(item.span(), key(name), why),
            }
        }
        out
    };
    let content_types = list(c, &r.content_types, "content_types", &|t: &str| {
        let lower = t.trim().to_ascii_lowercase();
        match lower.split_once('/') {
            Some((ty, sub))
                if !ty.is_empty()
                    && ty.bytes().all(is_tchar)
                    && (sub == "*" || (!sub.is_empty() && sub.bytes().all(is_tchar))) =>
            {
                Ok(lower)
            }
            _ => Err(format!(
                "{t:?} is not a media type: write \"type/subtype\" or \"type/*\" (no parameters)"
            )),
        }
    });
    let required_headers = list(c, &r.required_headers, "required_headers", &header_name);
    let required_query = list(c, &r.required_query, "required_query", &|q: &str| {
        let ok = !q.is_empty()
            && q.bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'#' | b'%'));
        if ok {
            Ok(q.to_owned())
        } else {
            Err(format!(
                "{q:?} is not a query parameter name: visible ASCII without & = # %"
            ))
        }
    });
    let body_schema = r.body_schema.as_ref().map(|p| {
        let text = p.get_ref().trim();
        if text.is_empty() {
            c.err(p.span(), key("body_schema"), "must name a file");
        }
        if max_body.is_some_and(|m| m > SCHEMA_BODY_MAX_MAX) {
            c.err(
                p.span(),
                key("body_schema"),
                format!(
                    "a body checked against a schema is read whole: max_body must be at most {} bytes (16MiB)",
                    SCHEMA_BODY_MAX_MAX
                ),
            );
        }
        PathBuf::from(text)
    });
    RequestChecks {
        max_body,
        content_types,
        required_headers,
        required_query,
        body_schema,
    }
}

fn header_edits(c: &mut Checker<'_>, key: &str, raw: &RawHeaderEdits) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    let check_name = |name: &str| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            Some(format!(
                "{name:?} is not a valid header name (RFC 9110 §5.1)"
            ))
        } else if MANAGED_HEADERS.contains(&lower.as_str()) {
            Some(format!("{name:?} is managed by the proxy (framing, hop-by-hop or forwarding) and cannot be changed"))
        } else {
            None
        }
    };
    if let Some(table) = &raw.set {
        for (name, value) in table.get_ref() {
            let lower = name.to_ascii_lowercase();
            let why = check_name(name)
                .or_else(|| {
                    value
                        .bytes()
                        .any(|b| b.is_ascii_control() && b != b'\t')
                        .then(|| {
                            format!("the value for {name:?} must not contain control characters")
                        })
                })
                .or_else(|| {
                    edits
                        .set
                        .iter()
                        .any(|(n, _)| *n == lower)
                        .then(|| format!("{name:?} is listed twice (names are case-insensitive)"))
                });
            match why {
                Some(why) => c.err(table.span(), format!("{key}.set"), why),
                None => edits.set.push((lower, value.trim().to_owned())),
            }
        }
        // One order however the names were capitalised.
        edits.set.sort();
    }
    for (j, name) in raw.remove.iter().flatten().enumerate() {
        let text = name.get_ref();
        let lower = text.to_ascii_lowercase();
        let why = check_name(text)
            .or_else(|| {
                (lower == "host").then(|| "Host cannot be removed: HTTP/1.1 requires it".to_owned())
            })
            .or_else(|| {
                edits
                    .set
                    .iter()
                    .any(|(n, _)| *n == lower)
                    .then(|| format!("{text:?} is also in set, which already replaces it"))
            });
        match why {
            Some(why) => c.err(name.span(), format!("{key}.remove[{j}]"), why),
            None => edits.remove.push(lower),
        }
    }
    edits
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A lowercased host name or IPv4 literal, optionally `*.` + suffix; no port.
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("must not be empty; omit host to match any host");
    }
    if host == "*" {
        return Err("\"*\" alone is not allowed; omit host to match any host");
    }
    if host.contains(':') {
        return Err("must not contain a port");
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "may only contain letters, digits, '-', '_' and '.', with \"*.\" only at the start",
            );
        }
    }
    Ok(())
}

/// `path`'s normal form, as the proxy routes requests
/// (`ringgate_core::http::normalize_path_bytes`); `None` when it already is.
fn path_in_normal_form(path: &str) -> Option<String> {
    let mut normal = path.as_bytes().to_vec();
    let len = ringgate_core::http::normalize_path_bytes(&mut normal);
    normal.truncate(len);
    (normal != path.as_bytes()).then(|| String::from_utf8_lossy(&normal).into_owned())
}
