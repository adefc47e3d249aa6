//! Asserting that the proxy refuses a request outright: the right status,
//! the connection closed, and not one byte of it reaching a backend.

use std::time::Duration;

use crate::client::{exchange, show, Client};
use crate::{Backend, Behaviour, ProxyConfig};

/// Time given to a wrongly forwarded request to show up at the backend.
const SETTLE: Duration = Duration::from_millis(100);

/// Sends each case on its own connection to a fresh proxy (route `/` to a
/// recording backend) and asserts, for every case, `status`, a close, and no
/// request at the backend. Then a valid request proves the backend was
/// reachable all along. All failures are reported together.
pub fn assert_refused(status: u16, cases: &[(&str, &[u8])]) {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let mut failures = Vec::new();
    let mut seen = 0;
    for (name, raw) in cases {
        let ex = exchange(proxy.port, raw);
        match &ex.response {
            Ok(r) if r.status == status => {}
            Ok(r) => failures.push(format!(
                "{name}: got {} {} (want {status}) for {}",
                r.status,
                r.reason,
                show(raw)
            )),
            Err(e) => failures.push(format!(
                "{name}: no response (want {status}): {e}; request {}",
                show(raw)
            )),
        }
        if let Err(e) = &ex.closed {
            failures.push(format!(
                "{name}: connection not closed after the refusal: {e}"
            ));
        }
        std::thread::sleep(SETTLE);
        let recs = backend.records();
        if recs.len() > seen {
            for r in &recs[seen..] {
                failures.push(format!(
                    "{name}: reached the backend as {} {} {} (raw head {})",
                    r.method,
                    r.target,
                    r.version,
                    show(&r.raw_head)
                ));
            }
            seen = recs.len();
        }
    }
    let r = Client::connect(proxy.port).get("/sanity");
    assert_eq!(
        r.status, 200,
        "the proxy no longer serves a valid request: {r:?}"
    );
    let targets = backend.targets();
    assert_eq!(
        targets.last().map(String::as_str),
        Some("/sanity"),
        "the valid request did not reach the backend"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(targets, ["/sanity"], "refused requests reached the backend");
}
