//! A request head from a hostile client: parsing never panics, every range
//! it returns lies inside the head, and the path's normal form is what
//! routing and the backend see (no `//`, no escaped unreserved character,
//! no dot segment, the query untouched, a fixed point), whatever the bytes.
//! The path as backends read it (`%2F`, `%5C`, `\` as `/`, `;parameters`
//! dropped) has no dot segment either, and is its own reading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate_core::http::{
    normalize_path, parse_request, path_as_backends_read, HeadLimits, HeadScratch,
};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_head_bytes: 4096,
        max_headers: 32,
    };
    let mut scratch = HeadScratch::default();
    let Ok(Some(mut head)) = parse_request(data, limits, &mut scratch) else {
        return;
    };
    let len = head.head_len;
    assert!(len <= data.len());
    for r in [&head.method, &head.target, &head.path] {
        assert!(r.start <= r.end && r.end <= len, "{r:?} outside {len}");
    }
    for r in &scratch.forward {
        assert!(r.start <= r.end && r.end <= len, "{r:?} outside {len}");
    }
    if let Some(a) = &head.authority {
        assert!(a.end <= len);
    }
    let query_before = {
        let path = &data[head.path.clone()];
        path.iter()
            .position(|&b| b == b'?')
            .map(|q| path[q..].to_vec())
    };
    let mut buf = data.to_vec();
    normalize_path(&mut buf, &mut head);
    let path = &buf[head.path.clone()];
    let (only_path, query) = match path.iter().position(|&b| b == b'?') {
        Some(q) => (&path[..q], Some(path[q..].to_vec())),
        None => (path, None),
    };
    assert_eq!(query, query_before, "the query changed");
    assert!(
        !only_path.windows(2).any(|w| w == b"//"),
        "a // survived: {:?}",
        String::from_utf8_lossy(only_path)
    );
    for w in only_path.windows(3) {
        if w[0] == b'%' {
            if let (Some(h), Some(l)) = (hex(w[1]), hex(w[2])) {
                let c = h * 16 + l;
                assert!(
                    !(c.is_ascii_alphanumeric() || b"-._~".contains(&c)),
                    "an escaped unreserved character survived: {:?}",
                    String::from_utf8_lossy(only_path)
                );
            }
        }
    }
    assert!(
        !has_dot_segment(only_path),
        "a dot segment appeared: {:?}",
        String::from_utf8_lossy(only_path)
    );
    // The reading some backends make of the path: a refused dot segment
    // cannot hide behind a separator only they see.
    let mut read = Vec::new();
    if path_as_backends_read(only_path, &mut read) {
        assert!(
            !has_dot_segment(&read),
            "a dot segment as backends read {:?}: {:?}",
            String::from_utf8_lossy(only_path),
            String::from_utf8_lossy(&read)
        );
        assert!(!read.windows(2).any(|w| w == b"//"), "{read:?}");
        let mut twice = Vec::new();
        assert!(!path_as_backends_read(&read, &mut twice) || twice == read);
    }
    // Normalizing again changes nothing.
    let mut again = head.clone();
    assert!(!normalize_path(&mut buf, &mut again));
});

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A `.` or `..` segment between slashes.
fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|&b| b == b'/')
        .any(|segment| segment == b"." || segment == b"..")
}
