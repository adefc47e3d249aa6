//! The serde-shaped mirror of the TOML file: every table denies unknown keys,
//! every value validation must point at keeps its span. Nothing here is trusted;
//! `validate` turns it into the types in `model` exactly once.
//!
//! Values whose shape alone is wrong (a duration that does not parse, a size
//! with an unknown unit, `workers = 0`) fail here, inside serde, so the TOML
//! deserializer attaches the span of the offending value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::model::{LogLevel, ProxyProtocolVersion, RingSetup, Workers, WORKERS_MAX};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: Option<RawServer>,
    pub limits: Option<RawLimits>,
    pub listeners: Option<Spanned<Vec<RawListener>>>,
    pub routes: Option<Spanned<Vec<RawRoute>>>,
    pub upstreams: Option<Spanned<Vec<RawUpstream>>>,
    pub access_log: Option<RawAccessLog>,
    pub error_log: Option<RawErrorLog>,
    pub admin: Option<RawAdmin>,
    pub http2: Option<RawHttp2>,
    pub fleet: Option<RawFleet>,
    pub dns: Option<RawDns>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub nameservers: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_interval: Option<Spanned<HumanDuration>>,
    pub max_interval: Option<Spanned<HumanDuration>>,
    pub timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub redis: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub sync_interval: Option<Spanned<HumanDuration>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub nodes: Option<Spanned<i64>>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp2 {
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub max_header_list_size: Option<Spanned<Size>>,
    pub header_table_size: Option<Spanned<Size>>,
    pub initial_window_size: Option<Spanned<Size>>,
    pub connection_window_size: Option<Spanned<Size>>,
    pub max_frame_size: Option<Spanned<Size>>,
    pub max_send_buffer: Option<Spanned<Size>>,
    pub max_frames_per_second: Option<Spanned<i64>>,
    pub max_resets_per_second: Option<Spanned<i64>>,
    pub max_control_frames_per_second: Option<Spanned<i64>>,
    pub max_continuation_frames: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawErrorLog {
    pub path: Option<Spanned<String>>,
    pub level: Option<LogLevel>,
    pub lines_per_second: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub path: Spanned<String>,
    pub buffer: Option<Spanned<Size>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub workers: Option<Workers>,
    pub pin: Option<bool>,
    pub backlog: Option<Spanned<i64>>,
    pub max_connections_per_worker: Option<Spanned<i64>>,
    pub gossip_interval: Option<Spanned<HumanDuration>>,
    pub gossip_inbox: Option<Spanned<i64>>,
    pub rate_limit_max_keys: Option<Spanned<i64>>,
    pub drain_timeout: Option<Spanned<HumanDuration>>,
    pub io_uring_setup: Option<RingSetup>,
    pub share_ports: Option<bool>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub request_id: Option<Spanned<String>>,
    pub via: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_head_size: Option<Spanned<Size>>,
    pub max_headers: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<HumanDuration>>,
    pub keepalive_timeout: Option<Spanned<HumanDuration>>,
    pub body_read_timeout: Option<Spanned<HumanDuration>>,
    pub send_timeout: Option<Spanned<HumanDuration>>,
    pub max_chunk_line_size: Option<Spanned<Size>>,
    pub tls_handshake_timeout: Option<Spanned<HumanDuration>>,
    pub lingering_time: Option<Spanned<HumanDuration>>,
    pub lingering_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub tls: Option<Spanned<RawListenerTls>>,
    pub http2: Option<bool>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    pub protocol: Option<Spanned<RawListenerProtocol>>,
    pub upstream: Option<Spanned<String>>,
    pub max_connections_per_worker: Option<Spanned<i64>>,
    pub defer_accept: Option<bool>,
    pub delayed_ack: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawListenerProtocol {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub certificates: Spanned<Vec<RawCertificate>>,
    pub versions: Option<Vec<Spanned<String>>>,
    pub cipher_suites: Option<Vec<Spanned<String>>>,
    pub client_ca: Option<Spanned<String>>,
    pub client_certificate: Option<Spanned<String>>,
    pub client_subject_header: Option<Spanned<String>>,
    pub session_cache: Option<Spanned<i64>>,
    pub session_tickets: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub listener: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub upstream: Option<Spanned<String>>,
    pub rate_limit: Option<RawRateLimit>,
    pub rewrite: Option<RawRewrite>,
    pub request_headers: Option<RawHeaderEdits>,
    pub response_headers: Option<RawHeaderEdits>,
    pub max_body: Option<Spanned<Size>>,
    pub content_types: Option<Spanned<Vec<Spanned<String>>>>,
    pub required_headers: Option<Spanned<Vec<Spanned<String>>>>,
    pub required_query: Option<Spanned<Vec<Spanned<String>>>>,
    pub body_schema: Option<Spanned<String>>,
    pub respond: Option<Spanned<RawRespond>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub cors: Option<Spanned<RawCors>>,
    pub compose: Option<Spanned<RawCompose>>,
    pub auth: Option<Spanned<crate::auth::RawAuth>>,
    pub upgrade: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCompose {
    pub calls: Spanned<Vec<RawComposeCall>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub on_failure: Option<Spanned<String>>,
    pub max_body: Option<Spanned<Size>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawComposeCall {
    pub upstream: Spanned<String>,
    pub path: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    pub origins: Spanned<Vec<Spanned<String>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<Vec<Spanned<String>>>,
    pub expose_headers: Option<Vec<Spanned<String>>>,
    pub credentials: Option<bool>,
    pub max_age: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub status: Spanned<i64>,
    pub body: Option<Spanned<String>>,
    pub headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirect {
    pub to: Spanned<String>,
    pub status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRewrite {
    pub prefix: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderEdits {
    pub set: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub remove: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub key: Spanned<String>,
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<i64>>,
    pub scope: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub fleet_fallback: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub name: Spanned<String>,
    pub balance: Option<Spanned<RawBalance>>,
    pub hash_key: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<RawBackend>>>,
    pub timeouts: Option<RawTimeouts>,
    pub pool: Option<RawPool>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier_detection: Option<RawOutlierDetection>,
    pub retries: Option<RawRetries>,
    pub circuit_breaker: Option<RawCircuitBreaker>,
    pub tls: Option<RawUpstreamTls>,
    pub protocol: Option<Spanned<RawUpstreamProtocol>>,
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawUpstreamProtocol {
    Http1,
    H2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub server_name: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub client_certificate: Option<Spanned<RawCertificate>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawBalance {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    P2cEwma,
    MaglevHash,
    Random,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub interval: Spanned<HumanDuration>,
    pub timeout: Spanned<HumanDuration>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub expect_status: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlierDetection {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection_time: Option<Spanned<HumanDuration>>,
    pub max_ejection_time: Option<Spanned<HumanDuration>>,
    pub max_ejection_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    pub attempts: Option<Spanned<i64>>,
    pub on: Option<Spanned<Vec<Spanned<RawRetryOn>>>>,
    pub budget: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawRetryOn {
    #[serde(rename = "connect_failure")]
    ConnectFailure,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "5xx")]
    Status5xx,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCircuitBreaker {
    pub max_pending: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub consecutive_failures: Option<Spanned<i64>>,
    pub open_for: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub address: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
    pub max_addresses: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<Spanned<HumanDuration>>,
    pub response: Option<Spanned<HumanDuration>>,
    pub send: Option<Spanned<HumanDuration>>,
    pub idle: Option<Spanned<HumanDuration>>,
    pub tunnel_idle: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub max_idle_per_backend: Option<Spanned<i64>>,
    pub stray_cooldown: Option<Spanned<HumanDuration>>,
}

/// A duration written as a humantime string: "250ms", "2s", "1m 30s", "1h".
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string such as "250ms", "2s", "1m" or "1h""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(HumanDuration)
                    .map_err(|e| {
                        E::custom(format!(
                            r#"invalid duration "{s}": {e}; write e.g. "250ms", "2s", "1m" or "1h""#
                        ))
                    })
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A byte count: a bare TOML integer, or a string of digits with an optional
/// unit `B`, `KiB`, `MiB` or `GiB`. Decimal units (`KB`, `MB`) are refused
/// rather than guessed: "16KB" meaning 16000 or 16384 is exactly the ambiguity
/// a limit must not have.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Size(pub u64);

const SIZE_HINT: &str =
    r#"write a byte count such as 512, "512", "16KiB", "1MiB" or "1GiB" (units: B, KiB, MiB, GiB)"#;

pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(r#"invalid size "{text}": no number; {SIZE_HINT}"#));
    }
    let multiplier: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            let hint = crate::error::did_you_mean(other, ["B", "KiB", "MiB", "GiB"])
                .map(|unit| format!(r#" (did you mean "{number}{unit}"?)"#))
                .unwrap_or_default();
            return Err(format!(
                r#"invalid size "{text}": unknown unit "{other}"{hint}; {SIZE_HINT}"#
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!(r#"invalid size "{text}": too large"#))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // "expected a byte count such as ...", not "expected write ...".
                f.write_str(SIZE_HINT.trim_start_matches("write "))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {n}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, r#""auto" or an integer in 1..={WORKERS_MAX}"#)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Workers, E> {
                match usize::try_from(n) {
                    Ok(n) if (1..=WORKERS_MAX).contains(&n) => Ok(Workers::Count(n)),
                    _ => Err(E::custom(format!(
                        r#"invalid worker count {n}: write "auto" or an integer in 1..={WORKERS_MAX}"#
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Workers, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Workers, E> {
                if s == "auto" {
                    Ok(Workers::Auto)
                } else if s.trim().parse::<i64>().is_ok() {
                    Err(E::custom(format!(
                        r#"invalid worker count "{s}": a count is written without quotes, such as workers = {}"#,
                        s.trim()
                    )))
                } else {
                    Err(E::custom(format!(
                        r#"invalid worker count "{s}": write "auto" or an integer in 1..={WORKERS_MAX}"#
                    )))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}
