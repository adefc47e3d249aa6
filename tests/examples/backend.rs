//! The test suite's recording backend as a standalone server, for
//! benchmarks that need a misbehaving backend (e.g. one that fails a share
//! of its connections). Runs until killed.
//!
//! `cargo run --release -p ringgate-tests --example backend -- ADDR [FAIL_NUM/FAIL_DEN] [close|reset]`

use std::net::SocketAddr;
use std::time::Duration;

use ringgate_tests::{Backend, Behaviour, ConnFault};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: backend ADDR [FAIL_NUM/FAIL_DEN] [close|reset]");
        std::process::exit(2);
    };
    let mut builder = Backend::builder("bench")
        .default_behaviour(Behaviour::Ok)
        .bind(addr);
    if let Some(ratio) = args.next() {
        let fault = match args.next().as_deref() {
            Some("reset") => ConnFault::ResetOnData,
            _ => ConnFault::CloseAfterAccept,
        };
        let parsed = ratio
            .split_once('/')
            .and_then(|(n, d)| Some((n.parse().ok()?, d.parse().ok()?)));
        let Some((num, den)) = parsed else {
            eprintln!("bad ratio {ratio:?}: want NUM/DEN");
            std::process::exit(2);
        };
        builder = builder.fail_connections(num, den, fault);
    }
    let backend = builder.start();
    eprintln!("backend listening on {}", backend.addr());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
