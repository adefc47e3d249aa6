//! A chunked body, whole or split at any byte: the decoder never panics,
//! never consumes more than it was given, and reaches the same verdict
//! and the same payload however the body arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate_core::chunked::{ChunkLimits, ChunkedDecoder};

fn decode(parts: &[&[u8]]) -> (Result<(usize, bool), ()>, Vec<u8>) {
    let limits = ChunkLimits {
        max_line_bytes: 64,
        max_trailer_bytes: 256,
    };
    let mut d = ChunkedDecoder::new(limits);
    let mut payload = Vec::new();
    let mut consumed = 0;
    for part in parts {
        match d.feed(part, &mut |p| payload.extend_from_slice(p)) {
            Ok(f) => {
                assert!(f.consumed <= part.len());
                consumed += f.consumed;
                if f.done {
                    return (Ok((consumed, true)), payload);
                }
            }
            Err(_) => return (Err(()), payload),
        }
    }
    (Ok((consumed, false)), payload)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = decode(&[body]);
    let at = (cut as usize).min(body.len());
    let split = decode(&[&body[..at], &body[at..]]);
    assert_eq!(whole.0, split.0, "verdict differs split at {at}");
    if whole.0.is_ok() {
        assert_eq!(whole.1, split.1, "payload differs split at {at}");
    }
});
