//! The access log: one nginx `combined` line per request plus the request
//! time and the upstream address, written by every worker to one file.

use std::time::Duration;

use ringgate_tests::proxy::temp_path;
use ringgate_tests::{eventually, Backend, Behaviour, Client, Proxy, ProxyConfig};

fn lines(path: &std::path::Path, want: usize) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.len() == want {
        Ok(lines)
    } else {
        Err(format!("{} lines, want {want}:\n{text}", lines.len()))
    }
}

/// The fields after `combined`: request time (seconds, 3 decimals) and
/// upstream; the TLS version after them is `-` on these plain listeners.
fn tail_fields(line: &str) -> (String, String) {
    let mut fields = line.rsplitn(4, ' ');
    assert_eq!(
        fields.next(),
        Some("-"),
        "TLS version of a plain request: {line}"
    );
    let upstream = fields.next().unwrap_or_default().to_owned();
    let time = fields.next().unwrap_or_default().to_owned();
    (time, upstream)
}

#[test]
fn every_request_gets_one_combined_line_with_time_and_upstream() {
    let backend = Backend::start("b", Behaviour::Ok);
    let log_path = temp_path("ringgate-access", "log");
    let toml = ProxyConfig::new(backend.addr())
        .route_prefix("/a")
        .workers(2)
        .to_toml()
        + &format!(
            "\n[access_log]\npath = {:?}\n",
            log_path.display().to_string()
        );
    let proxy = Proxy::start(&toml);

    let mut c = Client::connect(proxy.port);
    let r = c.request(
        b"GET /a/one?q=1 HTTP/1.1\r\nHost: test\r\nReferer: https://r/\r\nUser-Agent: t\"ool/1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // A head that does not parse, on the same connection right after a
    // proxied request: its line must not inherit that request's upstream.
    let r = c.request(b"GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(Client::connect(proxy.port).get("/nowhere").status, 404);

    // Written within a gossip tick, whichever worker served each request.
    let lines = eventually(Duration::from_secs(2), || lines(&log_path, 3)).expect("3 lines");
    for line in &lines {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains(" +0000] \""), "{line}");
        let (time, _) = tail_fields(line);
        let (secs, ms) = time.split_once('.').unwrap_or_default();
        assert!(
            secs.parse::<u64>().is_ok() && ms.len() == 3 && ms.parse::<u32>().is_ok(),
            "request time {time:?} in {line}"
        );
    }
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
    };
    let ok = find("/a/one");
    let body_len = backend.ok_body("/a/one?q=1").len();
    assert!(
        ok.contains(&format!(
            "] \"GET /a/one?q=1 HTTP/1.1\" 200 {body_len} \"https://r/\" \"t\\x22ool/1\" "
        )),
        "{ok}"
    );
    assert_eq!(tail_fields(ok).1, backend.addr().to_string(), "{ok}");
    let not_found = find("/nowhere");
    assert!(
        not_found.contains("] \"GET /nowhere HTTP/1.1\" 404 9 \"-\" \"-\" "),
        "{not_found}"
    );
    assert_eq!(tail_fields(not_found).1, "-", "answered by the proxy");
    let refused = find("\" 400 ");
    assert!(
        refused.contains("] \"-\" 400 "),
        "a head that did not parse is logged as \"-\": {refused}"
    );
    assert_eq!(tail_fields(refused).1, "-", "{refused}");
    let _ = std::fs::remove_file(&log_path);
}

#[test]
fn an_access_log_that_cannot_be_opened_stops_start_up_with_its_path() {
    let backend = Backend::start("b", Behaviour::Ok);
    let toml = ProxyConfig::new(backend.addr()).to_toml()
        + "\n[access_log]\npath = \"/nonexistent-dir/access.log\"\n";
    let config = ringgate_tests::proxy::write_temp("ringgate-test", "toml", toml.as_bytes());
    let out = ringgate_tests::proxy::run_ringgate(&["-c".as_ref(), config.as_os_str()]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("access_log.path /nonexistent-dir/access.log: No such file or directory"),
        "{}",
        out.stderr
    );
}
