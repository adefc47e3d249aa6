//! Parses a small and a browser-sized request head N times (default
//! 100 000), for instruction counts that do not depend on the machine's
//! load: `valgrind --tool=callgrind target/release/examples/parse_heads 20000`
//! (docs/BENCHMARKS.md, "Request-head checks").
use ringgate_core::http::{parse_request, HeadLimits, HeadScratch};
const SMALL: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n";
const BROWSER: &[u8] = b"GET /search?q=ringgate&lang=en HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://www.example.com/\r\nConnection: keep-alive\r\nCookie: session=abcdef0123456789; theme=dark; consent=yes\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-User: ?1\r\nDNT: 1\r\nCache-Control: max-age=0\r\nIf-None-Match: \"abc123\"\r\nIf-Modified-Since: Tue, 01 Dec 2026 10:00:00 GMT\r\nX-Requested-With: XMLHttpRequest\r\nPragma: no-cache\r\n\r\n";
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().unwrap());
    let limits = HeadLimits {
        max_head_bytes: 16384,
        max_headers: 100,
    };
    let mut scratch = HeadScratch::default();
    let mut total = 0usize;
    for _ in 0..n {
        for head in [SMALL, BROWSER] {
            let h = parse_request(std::hint::black_box(head), limits, &mut scratch)
                .unwrap()
                .unwrap();
            total += h.head_len;
        }
    }
    println!("{total}");
}
