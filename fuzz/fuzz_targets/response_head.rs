//! A response head from a misbehaving backend: parsing never panics and
//! every range it returns lies inside the head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate_core::http::{parse_response, HeadLimits, HeadScratch};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let limits = HeadLimits {
        max_head_bytes: 4096,
        max_headers: 32,
    };
    let mut scratch = HeadScratch::default();
    let Ok(Some(head)) = parse_response(rest, limits, first & 1 == 1, &mut scratch) else {
        return;
    };
    assert!(head.head_len <= rest.len());
    assert!((100..=599).contains(&head.status), "status {}", head.status);
    for r in &scratch.forward {
        assert!(r.start <= r.end && r.end <= head.head_len);
    }
});
