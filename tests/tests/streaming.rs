//! Bodies stream through the proxy: a body far larger than the proxy's
//! memory bound goes through while its peak RSS stays small.

use std::io::{self, Write};
use std::thread;
use std::time::Instant;

use ringgate_tests::procfs::vm_hwm_kib;
use ringgate_tests::{Backend, Behaviour, Client, Pattern, ProxyConfig};

/// Peak RSS allowed to the proxy while it streams the body.
const VM_HWM_MAX_KIB: u64 = 64 * 1024;

/// Body size in MiB; `RINGGATE_STREAM_MIB` overrides. The spec asks for
/// 1 GiB when the debug build streams it in under 15 s (it takes about 1 s
/// on 2 cores), else 256 MiB.
const STREAM_MIB_DEFAULT: u64 = 1024;

#[test]
fn large_body_streams_through_with_bounded_memory() {
    let mib = std::env::var("RINGGATE_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(STREAM_MIB_DEFAULT);
    let len = mib * 1024 * 1024;
    let backend = Backend::start("echo", Behaviour::Echo);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut c = Client::connect(proxy.port);
    let mut w = c.writer();
    let t = Instant::now();
    // The body is generated on the fly from a periodic pattern.
    let writer = thread::spawn(move || -> io::Result<()> {
        let pattern = Pattern::new(7);
        w.write_all(
            format!("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {len}\r\n\r\n")
                .as_bytes(),
        )?;
        let mut off = 0u64;
        while off < len {
            let piece = pattern.at(off);
            let n = (piece.len() as u64).min(len - off) as usize;
            w.write_all(&piece[..n])?;
            off += n as u64;
        }
        Ok(())
    });
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200, "{head:?}");
    let pattern = Pattern::new(7);
    let mut off = 0u64;
    c.read_body_with(&head, |p| {
        if !pattern.matches(off, p) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "echoed bytes differ within {} bytes from offset {off}",
                    p.len()
                ),
            ));
        }
        off += p.len() as u64;
        Ok(())
    })
    .unwrap_or_else(|e| panic!("after {off} of {len} echoed bytes: {e}"));
    writer.join().expect("writer").expect("writing the body");
    let took = t.elapsed();
    assert_eq!(off, len, "echoed length");
    let hwm = vm_hwm_kib(proxy.pid());
    eprintln!("{mib} MiB echoed through the proxy in {took:?}; proxy VmHWM {hwm} kB");
    assert!(
        hwm < VM_HWM_MAX_KIB,
        "proxy peak RSS {hwm} kB >= {VM_HWM_MAX_KIB} kB while streaming {mib} MiB"
    );
    assert_eq!(backend.records()[0].body_len, len);
}
