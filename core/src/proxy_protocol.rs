//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2):
//! reading the header a load balancer in front of the proxy puts before a
//! connection's first byte, and writing the one the proxy puts before its
//! own connections to backends. The byte-level parsing is the `ppp`
//! crate's; this module bounds it, decides when a header is complete,
//! malformed or may still grow, and which addresses it carries. No I/O.

use std::net::{IpAddr, SocketAddr};

use ppp::v1;
use ppp::v2;
use ppp::PartialResult;

/// The two ends of a client connection as the proxy accounts for them: the
/// client (`src`) and the address it connected to (`dst`). Either the
/// socket's own addresses or those a PROXY header carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnAddrs {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The largest header accepted. A v1 header is at most 107 bytes (the
/// specification's bound); v2's 16-bit length would allow 64 KiB, but what
/// real balancers send (addresses plus a few TLVs: a VPC endpoint or link
/// id, TLS facts) is well under 1 KiB, so 4 KiB refuses only what no
/// balancer sends and bounds what a connection buffers before it is vouched
/// for.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The v2 signature (12 bytes), then version/command, family/protocol and
/// the 16-bit length: 16 bytes before the addresses.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_BYTES: usize = 16;

/// What the bytes read so far make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header that may still be valid: read more.
    Incomplete,
    /// A whole header of `len` bytes. `addrs` is `None` when it carries no
    /// client (v2 `LOCAL`, v1 `UNKNOWN`, a UNIX or unspecified family): the
    /// balancer's own connection, such as its health check, which the
    /// specification says to account to the connection's real addresses.
    Complete {
        len: usize,
        addrs: Option<ConnAddrs>,
    },
}

/// Why bytes are not a PROXY header: the connection is closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// The v1 line's start, and its longest form (the specification's 107
/// bytes, CRLF included).
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX_BYTES: usize = 107;

/// Parses the start of a connection. Bytes after the header are not looked
/// at; `Complete::len` says where it ends.
pub fn parse(buf: &[u8]) -> Result<Parsed, Malformed> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Err(Malformed("not a PROXY header"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Malformed> {
    if buf.len() >= V2_FIXED_BYTES {
        // Refused on its declared length, before waiting for the bytes.
        let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if V2_FIXED_BYTES + declared > MAX_HEADER_BYTES {
            return Err(Malformed("PROXY v2 header longer than 4096 bytes"));
        }
    }
    let result = v2::Header::try_from(buf);
    if result.is_incomplete() {
        return Ok(Parsed::Incomplete);
    }
    match result {
        Ok(h) => Ok(Parsed::Complete {
            len: h.len(),
            addrs: v2_addrs(&h),
        }),
        Err(_) => Err(Malformed("malformed PROXY v2 header")),
    }
}

/// The specification has the receiver wait for the whole line (up to its
/// CRLF) before parsing it, so a line cut anywhere waits for the rest.
fn parse_v1(buf: &[u8]) -> Result<Parsed, Malformed> {
    let window = &buf[..buf.len().min(V1_MAX_BYTES)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(Malformed("PROXY v1 line longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = &buf[..=lf];
    let Ok(h) = v1::Header::try_from(line) else {
        return Err(Malformed("malformed PROXY v1 line"));
    };
    if h.header.len() != line.len() {
        return Err(Malformed("malformed PROXY v1 line"));
    }
    let addrs = match h.addresses {
        v1::Addresses::Tcp4(a) => Some(ConnAddrs {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        v1::Addresses::Tcp6(a) => Some(ConnAddrs {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        v1::Addresses::Unknown => None,
    };
    Ok(Parsed::Complete {
        len: line.len(),
        addrs,
    })
}

fn v2_addrs(h: &v2::Header<'_>) -> Option<ConnAddrs> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(ConnAddrs {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        v2::Addresses::IPv6(a) => Some(ConnAddrs {
            src: SocketAddr::new(a.source_address.into(), a.source_port),
            dst: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
    }
}

/// Which version the proxy sends to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Both addresses in one family, as both versions need: IPv4-mapped IPv6
/// (a dual-stack listener's view of an IPv4 peer) becomes IPv4, and when
/// the families still differ the IPv4 one is written mapped into IPv6.
fn same_family(a: ConnAddrs) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (src, dst) = (canon(a.src), canon(a.dst));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// Appends the header announcing `addrs` (a `PROXY` command over TCP).
pub fn write(out: &mut Vec<u8>, version: Version, addrs: ConnAddrs) {
    let (src, dst) = same_family(addrs);
    match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            // `format!` into the Vec: the header is built once per upstream
            // connection, not per request.
            let line = format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            );
            out.extend_from_slice(line.as_bytes());
        }
        Version::V2 => {
            out.extend_from_slice(V2_SIGNATURE);
            // Version 2, command PROXY.
            out.push(0x21);
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM; 12 bytes of addresses.
                    out.push(0x11);
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                        IpAddr::V6(ip) => ip,
                    };
                    // AF_INET6, STREAM; 36 bytes of addresses.
                    out.push(0x21);
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
}

/// Appends a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`): the
/// proxy's own connections, such as health probes, which the receiver
/// accounts to the connection's real addresses.
pub fn write_local(out: &mut Vec<u8>, version: Version) {
    match version {
        Version::V1 => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        Version::V2 => {
            out.extend_from_slice(V2_SIGNATURE);
            // Version 2, command LOCAL; AF_UNSPEC; no addresses.
            out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs(src: &str, dst: &str) -> ConnAddrs {
        ConnAddrs {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(command);
        b.push(family);
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn v1_tcp4_carries_both_addresses_and_stops_at_its_crlf() {
        let input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(input),
            Ok(Parsed::Complete {
                len: input.len() - b"GET / HTTP/1.1\r\n".len(),
                addrs: Some(addrs("203.0.113.7:51234", "10.0.0.1:443")),
            })
        );
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let input = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(input),
            Ok(Parsed::Complete {
                len: input.len(),
                addrs: Some(addrs("[2001:db8::1]:1", "[2001:db8::2]:2")),
            })
        );
        let input = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(input),
            Ok(Parsed::Complete {
                len: 15,
                addrs: None
            })
        );
    }

    #[test]
    fn v2_proxy_ipv4_with_a_tlv_ends_where_its_length_says() {
        let mut payload = vec![192, 0, 2, 1, 10, 0, 0, 1];
        payload.extend_from_slice(&40000u16.to_be_bytes());
        payload.extend_from_slice(&8443u16.to_be_bytes());
        // A NOOP TLV the proxy skips.
        payload.extend_from_slice(&[0x04, 0x00, 0x02, 0xaa, 0xbb]);
        let mut input = v2(0x21, 0x11, &payload);
        let len = input.len();
        input.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&input),
            Ok(Parsed::Complete {
                len,
                addrs: Some(addrs("192.0.2.1:40000", "10.0.0.1:8443")),
            })
        );
    }

    #[test]
    fn v2_local_and_unix_carry_no_client() {
        for (command, family, payload) in [
            (0x20, 0x00, vec![]),
            (0x20, 0x11, vec![0; 12]),
            (0x21, 0x31, vec![0; 216]),
            (0x21, 0x00, vec![]),
        ] {
            let input = v2(command, family, &payload);
            assert_eq!(
                parse(&input),
                Ok(Parsed::Complete {
                    len: input.len(),
                    addrs: None
                }),
                "{command:#x} {family:#x}"
            );
        }
    }

    #[test]
    fn prefixes_of_a_header_ask_for_more() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n";
        let v2 = v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for whole in [&v1[..], &v2[..]] {
            for cut in 0..whole.len() {
                assert_eq!(parse(&whole[..cut]), Ok(Parsed::Incomplete), "{cut}");
            }
        }
    }

    #[test]
    fn what_is_not_a_header_is_malformed() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                parse(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Version 3, command 2, family 4.
        for (command, family) in [(0x31, 0x11), (0x22, 0x11), (0x21, 0x41)] {
            assert!(parse(&v2(command, family, &[0; 12])).is_err());
        }
        // Shorter than its family's addresses.
        assert!(parse(&v2(0x21, 0x21, &[0; 12])).is_err());
    }

    #[test]
    fn a_header_past_the_bound_is_refused_without_waiting_for_it() {
        let mut long = V2_SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11]);
        long.extend_from_slice(&5000u16.to_be_bytes());
        assert!(parse(&long).is_err());
        // A v1 line that never ends.
        let mut v1 = b"PROXY TCP4 ".to_vec();
        v1.resize(200, b'1');
        assert!(parse(&v1).is_err());
    }

    #[test]
    fn what_is_written_parses_back_in_both_versions() {
        for (src, dst, want) in [
            (
                "192.0.2.1:1000",
                "10.0.0.1:80",
                ("192.0.2.1:1000", "10.0.0.1:80"),
            ),
            (
                "[2001:db8::1]:1000",
                "[2001:db8::2]:80",
                ("[2001:db8::1]:1000", "[2001:db8::2]:80"),
            ),
            // A dual-stack listener's IPv4 client is written as IPv4.
            (
                "[::ffff:192.0.2.1]:1000",
                "[::ffff:10.0.0.1]:80",
                ("192.0.2.1:1000", "10.0.0.1:80"),
            ),
            (
                "192.0.2.1:1000",
                "[2001:db8::2]:80",
                ("[::ffff:192.0.2.1]:1000", "[2001:db8::2]:80"),
            ),
        ] {
            for version in [Version::V1, Version::V2] {
                let mut out = Vec::new();
                write(&mut out, version, addrs(src, dst));
                assert_eq!(
                    parse(&out),
                    Ok(Parsed::Complete {
                        len: out.len(),
                        addrs: Some(addrs(want.0, want.1)),
                    }),
                    "{version:?} {src} {dst}"
                );
            }
        }
        let mut out = Vec::new();
        write(
            &mut out,
            Version::V1,
            addrs("192.0.2.1:1000", "10.0.0.1:80"),
        );
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 10.0.0.1 1000 80\r\n");
    }

    #[test]
    fn a_local_header_parses_back_as_naming_no_client() {
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            write_local(&mut out, version);
            assert_eq!(
                parse(&out),
                Ok(Parsed::Complete {
                    len: out.len(),
                    addrs: None
                })
            );
        }
    }

    fn header() -> impl Strategy<Value = Vec<u8>> {
        let addr = prop_oneof![
            any::<([u8; 4], u16)>().prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            any::<([u8; 16], u16)>().prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ];
        (addr.clone(), addr, any::<bool>()).prop_map(|(src, dst, v1)| {
            let mut out = Vec::new();
            let version = if v1 { Version::V1 } else { Version::V2 };
            write(&mut out, version, ConnAddrs { src, dst });
            out
        })
    }

    proptest! {
        /// A header read in any number of pieces is incomplete until its
        /// last byte arrives, and then the same header.
        #[test]
        fn any_split_gives_the_same_header(h in header(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
            let whole = parse(&h);
            let complete = matches!(whole, Ok(Parsed::Complete { len, .. }) if len == h.len());
            prop_assert!(complete, "{:?}", whole);
            for cut in 0..h.len() {
                prop_assert_eq!(parse(&h[..cut]), Ok(Parsed::Incomplete));
            }
            let mut more = h.clone();
            more.extend_from_slice(&tail);
            prop_assert_eq!(parse(&more), whole);
        }

        /// Bad input is refused or waits for more; it never panics, and
        /// never waits past the bound.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Parsed::Complete { len, .. }) = parse(&bytes) {
                prop_assert!(len <= bytes.len() && len <= MAX_HEADER_BYTES);
            }
        }

        #[test]
        fn arbitrary_bytes_after_either_start_never_panic(
            v1 in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut input = if v1 { V1_PREFIX.to_vec() } else { V2_SIGNATURE.to_vec() };
            input.extend_from_slice(&bytes);
            if let Ok(Parsed::Complete { len, .. }) = parse(&input) {
                prop_assert!(len <= input.len());
            }
        }

        #[test]
        fn mangled_headers_never_panic(h in header(), at in any::<usize>(), byte in any::<u8>()) {
            let mut h = h;
            let i = at % h.len();
            h[i] = byte;
            if let Ok(Parsed::Complete { len, .. }) = parse(&h) {
                prop_assert!(len <= h.len());
            }
        }
    }
}
