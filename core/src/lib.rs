//! ringgate-core: the proxy's pure logic. HTTP/1.1 head parsing and framing
//! (RFC 9112), the chunked decoder, hop-by-hop handling, the router and backend
//! choice. No sockets, no runtime, no I/O here: everything is unit-tested and
//! benchmarked without a network.
#![forbid(unsafe_code)]

pub mod balance;
pub mod chunked;
pub mod http;
pub mod router;
