//! The validated [`Config`] written back as TOML, with every default filled
//! in (`ringgate --print-config`). The text parses back to the same config:
//! every value is written in a form the parser reads as itself (sizes as
//! byte counts, durations as humantime strings, references by name).

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::*;

/// `config` as a TOML document that [`parse`](crate::parse) turns back
/// into the same config.
pub fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    server(&mut out, &config.server);
    limits(&mut out, &config.limits);
    http2(&mut out, &config.http2);
    error_log(&mut out, &config.error_log);
    if let Some(f) = &config.fleet {
        fleet(&mut out, f);
    }
    dns(&mut out, &config.dns);
    if let Some(admin) = &config.admin {
        let _ = write!(
            out,
            "\n[admin]\naddress = {}\n",
            quote(&admin.address.to_string())
        );
    }
    if let Some(log) = &config.access_log {
        let _ = write!(
            out,
            "\n[access_log]\npath = {}\nbuffer = {}\n",
            quote(&log.path.to_string_lossy()),
            log.buffer
        );
    }
    for l in &config.listeners {
        let _ = write!(
            out,
            "\n[[listeners]]\nname = {}\naddress = {}\n",
            quote(&l.name),
            quote(&l.address.to_string()),
        );
        match l.protocol {
            ListenerProtocol::Http => {
                let _ = writeln!(out, "http2 = {}", l.http2);
            }
            ListenerProtocol::Tcp { upstream } => {
                let _ = writeln!(
                    out,
                    "protocol = \"tcp\"\nupstream = {}",
                    quote(&config.upstreams[upstream].name)
                );
            }
        }
        if let Some(n) = l.max_connections_per_worker {
            let _ = writeln!(out, "max_connections_per_worker = {n}");
        }
        let _ = writeln!(
            out,
            "defer_accept = {}\ndelayed_ack = {}",
            l.defer_accept, l.delayed_ack
        );
        let _ = writeln!(out, "proxy_protocol = {}", l.proxy_protocol_from.is_some());
        if let Some(from) = &l.proxy_protocol_from {
            let _ = writeln!(out, "proxy_protocol_from = [{}]", quoted_networks(from));
        }
        if let Some(t) = &l.tls {
            listener_tls(&mut out, t);
        }
    }
    for r in &config.routes {
        route(&mut out, config, r);
    }
    for u in &config.upstreams {
        upstream(&mut out, u);
    }
    out
}

fn server(out: &mut String, s: &Server) {
    let workers = match s.workers {
        Workers::Auto => quote("auto"),
        Workers::Count(n) => n.to_string(),
    };
    let setup = match s.io_uring_setup {
        RingSetup::Auto => "auto",
        RingSetup::DeferTaskrun => "defer_taskrun",
        RingSetup::CoopTaskrun => "coop_taskrun",
        RingSetup::Plain => "plain",
    };
    let _ = writeln!(out, "[server]");
    let _ = writeln!(out, "workers = {workers}");
    let _ = writeln!(out, "pin = {}", s.pin);
    let _ = writeln!(out, "backlog = {}", s.backlog);
    let _ = writeln!(
        out,
        "max_connections_per_worker = {}",
        s.max_connections_per_worker
    );
    let _ = writeln!(out, "gossip_interval = {}", duration(s.gossip_interval));
    let _ = writeln!(out, "gossip_inbox = {}", s.gossip_inbox);
    let _ = writeln!(out, "rate_limit_max_keys = {}", s.rate_limit_max_keys);
    let _ = writeln!(out, "drain_timeout = {}", duration(s.drain_timeout));
    let _ = writeln!(out, "io_uring_setup = {}", quote(setup));
    let _ = writeln!(out, "share_ports = {}", s.share_ports);
    let _ = writeln!(
        out,
        "trusted_proxies = [{}]",
        quoted_networks(&s.trusted_proxies)
    );
    if let Some(name) = &s.request_id {
        let _ = writeln!(out, "request_id = {}", quote(name));
    }
    let via = match &s.via {
        Via::Auto => "auto",
        Via::Off => "off",
        Via::Named(name) => name,
    };
    let _ = writeln!(out, "via = {}", quote(via));
}

fn quoted_networks(networks: &TrustedProxies) -> String {
    let quoted: Vec<String> = networks.0.iter().map(|n| quote(&n.to_string())).collect();
    quoted.join(", ")
}

fn listener_tls(out: &mut String, t: &ListenerTls) {
    let certificates: Vec<String> = t
        .certificates
        .iter()
        .map(|c| {
            format!(
                "{{ cert = {}, key = {} }}",
                quote(&c.cert.to_string_lossy()),
                quote(&c.key.to_string_lossy())
            )
        })
        .collect();
    let versions: Vec<&str> = t
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        })
        .collect();
    let _ = write!(
        out,
        "tls = {{ certificates = [{}], versions = {}",
        certificates.join(", "),
        array(&versions)
    );
    if !t.cipher_suites.is_empty() {
        let _ = write!(out, ", cipher_suites = {}", array(&t.cipher_suites));
    }
    if let Some(ca) = &t.client_ca {
        let mode = if t.client_certificate_required {
            "required"
        } else {
            "optional"
        };
        let _ = write!(
            out,
            ", client_ca = {}, client_certificate = {}",
            quote(&ca.to_string_lossy()),
            quote(mode)
        );
        if let Some(h) = &t.client_subject_header {
            let _ = write!(out, ", client_subject_header = {}", quote(h));
        }
    }
    let _ = writeln!(
        out,
        ", session_cache = {}, session_tickets = {} }}",
        t.session_cache, t.session_tickets
    );
}

fn error_log(out: &mut String, e: &ErrorLog) {
    let _ = writeln!(out, "\n[error_log]");
    // No path is stderr, which has no spelling in the file.
    if let Some(path) = &e.path {
        let _ = writeln!(out, "path = {}", quote(&path.to_string_lossy()));
    }
    let _ = writeln!(out, "level = {}", quote(e.level.name()));
    let _ = writeln!(out, "lines_per_second = {}", e.lines_per_second);
}

fn limits(out: &mut String, l: &Limits) {
    let _ = writeln!(out, "\n[limits]");
    let _ = writeln!(out, "max_head_size = {}", l.max_head_bytes);
    let _ = writeln!(out, "max_headers = {}", l.max_headers);
    let _ = writeln!(
        out,
        "header_read_timeout = {}",
        duration(l.header_read_timeout)
    );
    let _ = writeln!(out, "keepalive_timeout = {}", duration(l.keepalive_timeout));
    let _ = writeln!(out, "body_read_timeout = {}", duration(l.body_read_timeout));
    let _ = writeln!(out, "send_timeout = {}", duration(l.send_timeout));
    let _ = writeln!(out, "max_chunk_line_size = {}", l.max_chunk_line_bytes);
    let _ = writeln!(out, "lingering_time = {}", duration(l.lingering_time));
    let _ = writeln!(out, "lingering_timeout = {}", duration(l.lingering_timeout));
    let _ = writeln!(
        out,
        "tls_handshake_timeout = {}",
        duration(l.tls_handshake_timeout)
    );
}

fn http2(out: &mut String, h: &Http2) {
    let _ = writeln!(out, "\n[http2]");
    let _ = writeln!(out, "max_concurrent_streams = {}", h.max_concurrent_streams);
    let _ = writeln!(out, "max_header_list_size = {}", h.max_header_list_bytes);
    let _ = writeln!(out, "header_table_size = {}", h.header_table_bytes);
    let _ = writeln!(out, "initial_window_size = {}", h.initial_window_bytes);
    let _ = writeln!(
        out,
        "connection_window_size = {}",
        h.connection_window_bytes
    );
    let _ = writeln!(out, "max_frame_size = {}", h.max_frame_bytes);
    let _ = writeln!(out, "max_send_buffer = {}", h.max_send_buffer_bytes);
    let _ = writeln!(out, "max_frames_per_second = {}", h.max_frames_per_second);
    let _ = writeln!(out, "max_resets_per_second = {}", h.max_resets_per_second);
    let _ = writeln!(
        out,
        "max_control_frames_per_second = {}",
        h.max_control_frames_per_second
    );
    let _ = writeln!(
        out,
        "max_continuation_frames = {}",
        h.max_continuation_frames
    );
}

fn route(out: &mut String, config: &Config, r: &Route) {
    let _ = writeln!(out, "\n[[routes]]");
    let _ = writeln!(
        out,
        "listener = {}",
        quote(&config.listeners[r.listener].name)
    );
    let mut matcher = Vec::new();
    if let Some(host) = &r.host {
        matcher.push(format!("host = {}", quote(host)));
    }
    matcher.push(format!("path_prefix = {}", quote(&r.path_prefix)));
    if !r.methods.is_empty() {
        matcher.push(format!("methods = {}", array(&r.methods)));
    }
    if !r.headers.is_empty() {
        matcher.push(format!("headers = {}", map(&r.headers)));
    }
    let _ = writeln!(out, "match = {{ {} }}", matcher.join(", "));
    if let Some(u) = r.upstream {
        let _ = writeln!(out, "upstream = {}", quote(&config.upstreams[u].name));
    }
    if let Some(d) = &r.respond {
        let _ = writeln!(
            out,
            "respond = {{ status = {}, body = {}, headers = {} }}",
            d.status,
            quote(&d.body),
            map(&d.headers)
        );
    }
    if let Some(d) = &r.compose {
        let calls: Vec<String> = d
            .calls
            .iter()
            .map(|k| {
                format!(
                    "{{ upstream = {}, path = {}, key = {} }}",
                    quote(&config.upstreams[k.upstream].name),
                    quote(&k.path),
                    quote(&k.key)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "compose = {{ calls = [{}], timeout = {}, on_failure = {}, max_body = {} }}",
            calls.join(", "),
            duration(d.timeout),
            quote(if d.partial { "partial" } else { "fail" }),
            d.max_body
        );
    }
    if let Some(d) = &r.redirect {
        let _ = writeln!(
            out,
            "redirect = {{ to = {}, status = {} }}",
            quote(&d.to),
            d.status
        );
    }
    if let Some(rl) = &r.rate_limit {
        let key = match &rl.key {
            RateLimitKey::ClientIp => "client_ip".to_owned(),
            RateLimitKey::Route => "route".to_owned(),
            RateLimitKey::Header(name) => format!("header:{name}"),
            RateLimitKey::Consumer => "consumer".to_owned(),
        };
        let per = if rl.per == Duration::from_secs(60) {
            "m"
        } else {
            "s"
        };
        let fleet = rl.fleet.as_ref().map_or_else(String::new, |f| {
            format!(
                ", scope = \"fleet\", name = {}, fleet_fallback = {}",
                quote(&f.counter),
                quote(f.fallback.as_str())
            )
        });
        let _ = writeln!(
            out,
            "rate_limit = {{ key = {}, rate = {}, burst = {}{fleet} }}",
            quote(&key),
            quote(&format!("{}/{per}", rl.requests)),
            rl.burst
        );
    }
    if let Some(a) = &r.auth {
        let _ = writeln!(out, "auth = {}", auth(a));
    }
    if let Some(prefix) = &r.rewrite_prefix {
        let _ = writeln!(out, "rewrite = {{ prefix = {} }}", quote(prefix));
    }
    for (name, edits) in [
        ("request_headers", &r.request_headers),
        ("response_headers", &r.response_headers),
    ] {
        if !edits.is_empty() {
            let _ = writeln!(
                out,
                "{name} = {{ set = {}, remove = {} }}",
                map(&edits.set),
                array(&edits.remove)
            );
        }
    }
    if let Some(cors) = &r.cors {
        let mut fields = vec![
            format!("origins = {}", array(&cors.origins)),
            format!("methods = {}", array(&cors.methods)),
            format!("headers = {}", array(&cors.headers)),
            format!("expose_headers = {}", array(&cors.expose_headers)),
            format!("credentials = {}", cors.credentials),
        ];
        if let Some(age) = cors.max_age {
            fields.push(format!("max_age = {}", duration(age)));
        }
        let _ = writeln!(out, "cors = {{ {} }}", fields.join(", "));
    }
    if !r.upgrade.is_empty() {
        let _ = writeln!(out, "upgrade = {}", array(&r.upgrade));
    }
    let checks = &r.checks;
    if let Some(max) = checks.max_body {
        let _ = writeln!(out, "max_body = {max}");
    }
    if let Some(path) = &checks.body_schema {
        let _ = writeln!(out, "body_schema = {}", quote(&path.to_string_lossy()));
    }
    for (name, list) in [
        ("content_types", &checks.content_types),
        ("required_headers", &checks.required_headers),
        ("required_query", &checks.required_query),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "{name} = {}", array(list));
        }
    }
}

fn upstream(out: &mut String, u: &Upstream) {
    let balance = match u.balance {
        Balance::RoundRobin => "round_robin",
        Balance::WeightedRoundRobin => "weighted_round_robin",
        Balance::LeastConn => "least_conn",
        Balance::P2cEwma => "p2c_ewma",
        Balance::MaglevHash => "maglev_hash",
        Balance::Random => "random",
    };
    let _ = writeln!(out, "\n[[upstreams]]");
    let _ = writeln!(out, "name = {}", quote(&u.name));
    let _ = writeln!(out, "balance = {}", quote(balance));
    if let Some(key) = &u.hash_key {
        let key = match key {
            HashKey::ClientIp => "client_ip".to_owned(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Cookie(name) => format!("cookie:{name}"),
        };
        let _ = writeln!(out, "hash_key = {}", quote(&key));
    }
    if let Some(v) = u.send_proxy_protocol {
        let v = match v {
            ProxyProtocolVersion::V1 => "v1",
            ProxyProtocolVersion::V2 => "v2",
        };
        let _ = writeln!(out, "send_proxy_protocol = {}", quote(v));
    }
    let backends: Vec<String> = u
        .backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Address(_) => format!(
                "{{ address = {}, weight = {} }}",
                quote(&b.target.to_string()),
                b.weight
            ),
            BackendTarget::Host { .. } => format!(
                "{{ address = {}, weight = {}, max_addresses = {} }}",
                quote(&b.target.to_string()),
                b.weight,
                b.max_addresses
            ),
            BackendTarget::Srv { name } => format!(
                "{{ srv = {}, max_addresses = {} }}",
                quote(name),
                b.max_addresses
            ),
        })
        .collect();
    let _ = writeln!(out, "backends = [{}]", backends.join(", "));
    let _ = writeln!(
        out,
        "timeouts = {{ connect = {}, response = {}, send = {}, idle = {}, tunnel_idle = {} }}",
        duration(u.connect_timeout),
        duration(u.response_timeout),
        duration(u.send_timeout),
        duration(u.idle_timeout),
        duration(u.tunnel_idle_timeout)
    );
    let _ = writeln!(
        out,
        "pool = {{ max_idle_per_backend = {}, stray_cooldown = {} }}",
        u.max_idle_per_backend,
        duration(u.stray_cooldown)
    );
    if let Some(h) = &u.health_check {
        // A connect probe has no path, and so no status to expect.
        let http = h
            .path
            .as_ref()
            .map(|p| format!("path = {}, ", quote(p)))
            .unwrap_or_default();
        let status = h
            .path
            .as_ref()
            .map(|_| format!(", expect_status = {}", h.expect_status))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "health_check = {{ {http}interval = {}, timeout = {}, rise = {}, fall = {}{status} }}",
            duration(h.interval),
            duration(h.timeout),
            h.rise,
            h.fall,
        );
    }
    let o = &u.outlier_detection;
    let _ = writeln!(
        out,
        "outlier_detection = {{ consecutive_failures = {}, base_ejection_time = {}, max_ejection_time = {}, max_ejection_percent = {} }}",
        o.consecutive_failures,
        duration(o.base_ejection_time),
        duration(o.max_ejection_time),
        o.max_ejection_percent
    );
    if let Some(r) = &u.retries {
        let on: Vec<&str> = [
            (r.on.connect_failure, "connect_failure"),
            (r.on.reset, "reset"),
            (r.on.timeout, "timeout"),
            (r.on.status_5xx, "5xx"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        let _ = writeln!(
            out,
            "retries = {{ attempts = {}, on = {}, budget = {} }}",
            r.attempts,
            array(&on),
            quote(&format!("{}%", r.budget_percent))
        );
    }
    if let Some(cb) = &u.circuit_breaker {
        let _ = writeln!(
            out,
            "circuit_breaker = {{ max_pending = {}, max_connections = {}, consecutive_failures = {}, open_for = {} }}",
            cb.max_pending,
            cb.max_connections,
            cb.consecutive_failures,
            duration(cb.open_for)
        );
    }
    if let Some(t) = &u.tls {
        upstream_tls(out, t);
    }
    if u.protocol == UpstreamProtocol::H2 {
        let _ = writeln!(out, "protocol = \"h2\"");
    }
}

fn upstream_tls(out: &mut String, t: &UpstreamTls) {
    let mut fields = Vec::new();
    if let Some(name) = &t.server_name {
        fields.push(format!("server_name = {}", quote(name)));
    }
    if let Some(ca) = &t.ca {
        fields.push(format!("ca = {}", quote(&ca.to_string_lossy())));
    }
    if let Some(c) = &t.client_certificate {
        fields.push(format!(
            "client_certificate = {{ cert = {}, key = {} }}",
            quote(&c.cert.to_string_lossy()),
            quote(&c.key.to_string_lossy())
        ));
    }
    let _ = writeln!(out, "tls = {{ {} }}", fields.join(", "));
}

fn fleet(out: &mut String, f: &Fleet) {
    let credentials = match (&f.username, &f.password) {
        (_, None) => String::new(),
        (user, Some(password)) => format!("{}:{password}@", user.as_deref().unwrap_or("")),
    };
    let _ = writeln!(out, "\n[fleet]");
    let _ = writeln!(
        out,
        "redis = {}",
        quote(&format!(
            "{}://{credentials}{}/{}",
            if f.tls.is_some() { "rediss" } else { "redis" },
            f.redis,
            f.database
        ))
    );
    let _ = writeln!(out, "key_prefix = {}", quote(&f.key_prefix));
    let _ = writeln!(out, "sync_interval = {}", duration(f.sync_interval));
    let _ = writeln!(out, "timeout = {}", duration(f.timeout));
    let _ = writeln!(out, "nodes = {}", f.nodes);
    if let Some(t) = &f.tls {
        upstream_tls(out, t);
    }
}

fn dns(out: &mut String, d: &Dns) {
    let servers: Vec<String> = d.nameservers.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "\n[dns]");
    let _ = writeln!(out, "nameservers = {}", array(&servers));
    let _ = writeln!(out, "min_interval = {}", duration(d.min_interval));
    let _ = writeln!(out, "max_interval = {}", duration(d.max_interval));
    let _ = writeln!(out, "timeout = {}", duration(d.timeout));
}

/// A TOML basic string, escaped by the toml crate.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A humantime string ("10ms", "1m 30s"), which the parser reads back exactly.
fn duration(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

fn array<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|i| quote(i.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// An inline table of string values; keys are quoted, so any header name is
/// a valid key.
fn map(pairs: &[(String, String)]) -> String {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    format!("{{ {} }}", pairs.join(", "))
}

/// A route's `auth` as one inline table (TOML inline tables are one line).
fn auth(a: &crate::auth::Auth) -> String {
    use crate::auth::ApiKeySource;
    let path = |p: &std::path::Path| quote(&p.display().to_string());
    let mut parts = Vec::new();
    if let Some(j) = &a.jwt {
        let mut jwt = vec![format!("keys = {}", path(&j.keys))];
        if let Some(i) = &j.issuer {
            jwt.push(format!("issuer = {}", quote(i)));
        }
        if !j.audiences.is_empty() {
            jwt.push(format!("audiences = {}", array(&j.audiences)));
        }
        jwt.push(format!("leeway = {}", duration(j.leeway)));
        jwt.push(format!("consumer_claim = {}", quote(&j.consumer_claim)));
        if !j.claims_to_headers.is_empty() {
            jwt.push(format!("claims_to_headers = {}", map(&j.claims_to_headers)));
        }
        parts.push(format!("jwt = {{ {} }}", jwt.join(", ")));
    }
    if let Some(k) = &a.api_keys {
        let source = match &k.source {
            ApiKeySource::Header(h) => format!("header = {}", quote(h)),
            ApiKeySource::Query(q) => format!("query = {}", quote(q)),
        };
        parts.push(format!(
            "api_keys = {{ file = {}, {source} }}",
            path(&k.file)
        ));
    }
    if let Some(b) = &a.basic {
        parts.push(format!("basic = {{ htpasswd = {} }}", path(&b.htpasswd)));
    }
    if let Some(h) = &a.consumer_header {
        parts.push(format!("consumer_header = {}", quote(h)));
    }
    parts.push(format!("realm = {}", quote(&a.realm)));
    format!("{{ {} }}", parts.join(", "))
}
