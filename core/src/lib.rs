//! ringgate-core: the proxy's pure logic. HTTP/1.1 head parsing and framing
//! (RFC 9112), the chunked decoder, hop-by-hop handling, the router, the
//! per-worker backend view (health, ejection, circuit breaker, load, latency)
//! and balancing algorithms, token buckets, the gossip message types, route
//! authentication (JWT, API keys, Basic) over files the proxy reads, the
//! PROXY protocol header (read from balancers, written to backends), and the
//! ledger and RESP2 pipeline of fleet-wide counters in Redis, and where a
//! DNS name's addresses go among its backend slots.
//! No sockets, no runtime, no clock, no I/O here: time comes in as `now`, and
//! everything is unit-tested and benchmarked without a network.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backend_view;
pub mod balance;
pub mod chunked;
pub mod fleet;
pub mod gossip;
pub mod http;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod router;
pub mod slots;
