//! criterion micro-benchmarks of ringgate-core's per-request functions: head
//! parsing, the chunked decoder, router lookup and backend choice. Pure
//! functions only, no sockets: I/O is measured by the comparison runner.
//! Also each balancing algorithm's pick, the Maglev table build and the
//! rate limiter's admit, and writing the forwarding headers.
//!
//! Run: `cargo bench -p ringgate-bench` (figures quoted in docs/BENCHMARKS.md).
//! Inputs are built once, outside the timed loop; each timed call does what a
//! worker does per request (or per read, for the decoder).
#![forbid(unsafe_code)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringgate_core::backend_view::{BackendSpec, BackendView, ViewConfig};
use ringgate_core::balance::{Algorithm, Balancer, Maglev, RoundRobin, MAGLEV_TABLE_SIZE};
use ringgate_core::chunked::{ChunkLimits, ChunkedDecoder};
use ringgate_core::http::{
    parse_request, write_request_patch, ForwardedClient, HeadLimits, HeadScratch,
};
use ringgate_core::ratelimit::{KeyedLimiter, TokenBucket};
use ringgate_core::router::{RouteSpec, Router};
use std::time::{Duration, Instant};

/// The proxy's default limits (ringgate-config: 16 KiB head, 100 headers).
const HEAD_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 * 1024,
    max_headers: 100,
};

const CHUNK_LIMITS: ChunkLimits = ChunkLimits {
    max_line_bytes: 4096,
    max_trailer_bytes: 16 * 1024,
};

const SMALL_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// What a desktop browser sends for a page: 20 header fields.
const BROWSER_GET: &[u8] = b"GET /articles/2024/io-uring-proxies?ref=home&utm_source=feed HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-GB,en;q=0.7,de;q=0.3\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://www.example.com/\r\n\
Connection: keep-alive\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; consent=1; _ga=GA1.2.1234567890.1700000000\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-User: ?1\r\n\
Priority: u=0, i\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
DNT: 1\r\n\
Sec-GPC: 1\r\n\
If-None-Match: \"5d8c72a5edda8d6a\"\r\n\
If-Modified-Since: Tue, 12 Nov 2024 08:12:31 GMT\r\n\
\r\n";

/// A head of exactly 8 KiB: a browser-like request padded with `X-Pad-*`
/// fields of ~120 bytes (large cookies and tracing headers do this).
fn head_8kib() -> Vec<u8> {
    const TARGET: usize = 8 * 1024;
    let mut head = b"GET /search?q=ringgate HTTP/1.1\r\nHost: www.example.com\r\n".to_vec();
    let mut i = 0;
    // Leave room for one last exact-size field and the blank line.
    while head.len() + 128 + 160 < TARGET {
        head.extend_from_slice(format!("X-Pad-{i:02}: {}\r\n", "v".repeat(110)).as_bytes());
        i += 1;
    }
    let last_prefix = b"X-Pad-last: ".len();
    let fill = TARGET - head.len() - last_prefix - 2 - 2;
    head.extend_from_slice(format!("X-Pad-last: {}\r\n\r\n", "w".repeat(fill)).as_bytes());
    assert_eq!(head.len(), TARGET);
    head
}

fn bench_parse_request(c: &mut Criterion) {
    let big = head_8kib();
    let mut group = c.benchmark_group("parse_request");
    let cases: [(&str, &[u8]); 3] = [
        ("small_get", SMALL_GET),
        ("browser_20_headers", BROWSER_GET),
        ("head_8KiB", &big),
    ];
    for (name, head) in cases {
        let mut scratch = HeadScratch::default();
        // Fail here, not silently benchmark an error path.
        let parsed = parse_request(head, HEAD_LIMITS, &mut scratch);
        assert!(matches!(parsed, Ok(Some(_))), "{name}: {parsed:?}");
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_request(black_box(head), HEAD_LIMITS, &mut scratch))
        });
    }
    group.finish();
}

/// A chunked body of `total` payload bytes in `chunk`-byte chunks, with the
/// last chunk and an empty trailer section.
fn chunked_body(total: usize, chunk: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(total + total / chunk * 8 + 8);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        body.extend(std::iter::repeat_n(b'x', n));
        body.extend_from_slice(b"\r\n");
        left -= n;
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn bench_chunked(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunked_decode");
    // Large chunks: the payload pass-through dominates. Small chunks: the
    // per-byte framing state machine dominates. Reads of 16 KiB, the size of
    // a pooled read buffer, split the body the way the proxy sees it.
    let cases = [
        ("64KiB_in_4KiB_chunks", chunked_body(64 * 1024, 4096)),
        ("64KiB_in_64B_chunks", chunked_body(64 * 1024, 64)),
    ];
    for (name, body) in cases {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut decoder = ChunkedDecoder::new(CHUNK_LIMITS);
                let mut payload_bytes = 0usize;
                let mut sink = |p: &[u8]| payload_bytes += p.len();
                for read in black_box(&body).chunks(16 * 1024) {
                    let fed = decoder.feed(read, &mut sink);
                    debug_assert!(fed.is_ok());
                }
                assert!(decoder.is_done());
                payload_bytes
            })
        });
    }
    group.finish();
}

/// `n` routes: one exact host per route with a path prefix, a wildcard and a
/// host-less catch-all at the end, as a large multi-tenant config would have.
fn routes(n: usize) -> Vec<RouteSpec> {
    let mut specs: Vec<RouteSpec> = (0..n.saturating_sub(2))
        .map(|i| RouteSpec {
            host: Some(format!("tenant{i}.example.com")),
            path_prefix: if i % 2 == 0 { "/api/" } else { "/" }.to_owned(),
            methods: Vec::new(),
            headers: Vec::new(),
            target: i,
        })
        .collect();
    specs.push(RouteSpec {
        host: Some("*.example.com".to_owned()),
        path_prefix: "/".to_owned(),
        methods: Vec::new(),
        headers: Vec::new(),
        target: n - 2,
    });
    specs.push(RouteSpec {
        host: None,
        path_prefix: "/".to_owned(),
        methods: Vec::new(),
        headers: Vec::new(),
        target: n - 1,
    });
    specs
}

fn bench_router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_find");
    for n in [10usize, 10_000] {
        let router = Router::new(routes(n));
        let middle = format!("tenant{}.example.com:8080", (n - 2) / 2);
        // Exact host in the middle of the table, and a host no route names,
        // which scans the whole table down to the catch-all.
        let cases: [(&str, &[u8], usize); 2] = [
            ("exact_host", middle.as_bytes(), (n - 2) / 2),
            ("fallback", b"unknown.org", n - 1),
        ];
        for (case, host, want) in cases {
            assert_eq!(
                router.find(Some(host), b"/api/users?id=7", b"GET"),
                Some(want)
            );
            group.bench_with_input(BenchmarkId::new(case, n), &host, |b, host| {
                b.iter(|| router.find(Some(black_box(host)), black_box(b"/api/users?id=7"), b"GET"))
            });
        }
    }
    group.finish();
}

/// `n` routes that differ only by a header value (`x-tenant: t{i}`), then a
/// host-less catch-all: the shape of issue 8's slow config.
fn header_routes(n: usize) -> Vec<RouteSpec> {
    let mut specs: Vec<RouteSpec> = (0..n - 1)
        .map(|i| RouteSpec {
            host: None,
            path_prefix: "/".to_owned(),
            methods: Vec::new(),
            headers: vec![("x-tenant".to_owned(), format!("t{i}"))],
            target: i,
        })
        .collect();
    specs.push(RouteSpec {
        host: None,
        path_prefix: "/".to_owned(),
        methods: Vec::new(),
        headers: Vec::new(),
        target: n - 1,
    });
    specs
}

fn bench_router_headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_find_headers");
    for n in [10usize, 1_000, 10_000] {
        let router = Router::new(header_routes(n));
        let head = |tenant: &str| {
            format!(
                "GET /api/users?id=7 HTTP/1.1\r\nHost: app.example.com\r\n\
                 User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Tenant: {tenant}\r\n\r\n"
            )
            .into_bytes()
        };
        let middle = (n - 1) / 2;
        // A tenant in the middle of the table, and one no route names, which
        // ends at the catch-all.
        let cases = [
            ("tenant", head(&format!("t{middle}")), middle),
            ("no_tenant_route", head("nobody"), n - 1),
        ];
        for (case, head, want) in cases {
            let find = |head: &[u8]| {
                router.find_request(Some(b"app.example.com"), b"/api/users?id=7", b"GET", head)
            };
            assert_eq!(find(&head), Some(want));
            group.bench_with_input(BenchmarkId::new(case, n), &head, |b, head| {
                b.iter(|| find(black_box(head)))
            });
        }
    }
    group.finish();
}

/// Backend ids as the proxy passes them (address text), weights 1..=3.
fn backend_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
        .collect()
}

fn view_of(ids: &[String]) -> BackendView {
    let specs: Vec<BackendSpec<'_>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| BackendSpec {
            id: id.as_bytes(),
            weight: (i % 3 + 1) as u32,
            present: true,
        })
        .collect();
    BackendView::new(&specs, 2, ViewConfig::default())
}

fn bench_balance(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance_pick");
    // The bare cursor, as the first proxy version calls it.
    let mut rr = RoundRobin::new();
    group.bench_function("round_robin_cursor_8_backends", |b| {
        b.iter(|| rr.pick(black_box(8)))
    });
    // Each algorithm through the worker's `Balancer`, over 8 weighted
    // backends, all available. Picks only: in-flight counts and EWMAs stay
    // at their start values, so least_conn and p2c_ewma read, never update.
    let ids = backend_ids(8);
    let view = view_of(&ids);
    let algorithms = [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_conn", Algorithm::LeastConn),
        ("p2c_ewma", Algorithm::P2cEwma),
        (
            "maglev_hash",
            Algorithm::MaglevHash {
                table_size: MAGLEV_TABLE_SIZE,
            },
        ),
        ("random", Algorithm::Random),
    ];
    let key: &[u8] = b"session=8f14e45fceea167a5a36dedd4bea2543";
    for (name, algorithm) in algorithms {
        let mut balancer = Balancer::new(algorithm, &view, 1);
        assert!(balancer.pick(&view, Some(key)).is_some(), "{name}");
        group.bench_function(format!("{name}_8_backends"), |b| {
            b.iter(|| balancer.pick(&view, Some(black_box(key))))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(20);
    for n in [8usize, 100] {
        let ids = backend_ids(n);
        let view = view_of(&ids);
        group.bench_with_input(BenchmarkId::new("table_65537", n), &view, |b, view| {
            b.iter(|| Maglev::new(view, MAGLEV_TABLE_SIZE))
        });
    }
    group.finish();
}

fn bench_ratelimit(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_admit");
    // A clock that advances 1 µs per request, so each admit refills.
    let start = Instant::now();
    let tick = Duration::from_micros(1);
    let mut bucket = TokenBucket::new(1e6, 1000.0, start);
    let mut now = start;
    group.bench_function("token_bucket", |b| {
        b.iter(|| {
            now += tick;
            bucket.admit(black_box(now)).allowed
        })
    });
    // Keyed by client address, 1000 clients live in a table of 4096.
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("192.0.2.{}:{}", i % 250, i))
        .collect();
    let mut limiter = KeyedLimiter::new(100.0, 200.0, 4096);
    let mut now = start;
    let mut i = 0;
    group.bench_function("keyed_1000_clients", |b| {
        b.iter(|| {
            now += tick;
            i = (i + 1) % keys.len();
            limiter.admit(black_box(keys[i].as_bytes()), now).allowed
        })
    });
    // The same with scope = "fleet": each admission also counts the node's
    // usage, which the syncer drains every 50 ms (50 000 requests at this
    // clock), as worker 0 does.
    let mut fleet = KeyedLimiter::new(100.0, 200.0, 4096).track_node_usage();
    let mut now = start;
    let mut i = 0;
    let mut since_sync = 0;
    group.bench_function("keyed_1000_clients_fleet_scope", |b| {
        b.iter(|| {
            now += tick;
            i = (i + 1) % keys.len();
            since_sync += 1;
            if since_sync == 50_000 {
                since_sync = 0;
                fleet.take_node_usage(|key, tokens| {
                    black_box((key, tokens));
                });
            }
            fleet.admit(black_box(keys[i].as_bytes()), now).allowed
        })
    });
    group.finish();
}

/// The forwarding headers of one request: from an untrusted peer (the
/// default: the client's claims replaced), and from a trusted proxy whose
/// three-hop `X-Forwarded-For` is walked for the client address first.
fn bench_forwarding(c: &mut Criterion) {
    const CHAIN: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\
X-Forwarded-For: 203.0.113.7, 10.1.0.2, 10.1.0.3\r\nX-Forwarded-Proto: https\r\n\r\n";
    let mut scratch = HeadScratch::default();
    assert!(matches!(
        parse_request(CHAIN, HEAD_LIMITS, &mut scratch),
        Ok(Some(_))
    ));
    let peer: std::net::IpAddr = "10.1.0.4".parse().unwrap();
    let trusted =
        |ip: std::net::IpAddr| matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[0] == 10);
    let mut out = Vec::with_capacity(512);
    let mut group = c.benchmark_group("forwarding");
    for (name, trust) in [("untrusted_peer", false), ("trusted_3_hop_chain", true)] {
        let mut client = ForwardedClient::new(peer);
        // Resolved once here too: a filtered run never calls the closure,
        // and the check below must still hold.
        if trust {
            client.resolve(CHAIN, &scratch, trusted);
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                if trust {
                    client.resolve(black_box(CHAIN), &scratch, trusted);
                }
                out.clear();
                write_request_patch(&mut out, black_box(CHAIN), &scratch, &client, "http");
                black_box(client.ip_bytes().len())
            })
        });
        assert_eq!(
            client.ip_bytes(),
            if trust {
                &b"203.0.113.7"[..]
            } else {
                b"10.1.0.4"
            }
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_parse_request,
    bench_forwarding,
    bench_chunked,
    bench_router,
    bench_router_headers,
    bench_balance,
    bench_ratelimit
);
criterion_main!(benches);
