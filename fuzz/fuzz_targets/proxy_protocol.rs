//! A PROXY protocol header (v1 or v2) from an untrusted peer: parsing never
//! panics, and a complete header never claims more bytes than were read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate_core::proxy_protocol::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete { len, .. }) = parse(data) {
        assert!(len <= data.len());
    }
});
