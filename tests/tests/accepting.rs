//! How an HTTP listener takes its connections: a client is handed to a
//! worker only once it has sent something (`defer_accept`), and the ACK of
//! its first request rides on the response (`delayed_ack`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringgate_tests::proxy::{metrics, sample};
use ringgate_tests::{eventually, free_port, Backend, Behaviour, Client, Proxy, ProxyConfig};

const ACCEPTED: &str = "ringgate_connections_accepted_total";

/// One `Connection: close` exchange on a fresh connection; the segments the
/// client received for it, handshake to FIN, from the kernel's count.
fn segments_received_for_one_exchange(port: u16) -> u32 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    get_until_closed(&mut s);
    segments_in(&s)
}

/// A `Connection: close` GET on `s`, its 200 read to the proxy's close.
fn get_until_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("response to the end");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

fn segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: zeroed plain data, filled by the kernel up to `len`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a TCP socket the stream owns; `info` and `len` as above.
    let got = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(got, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

/// The SYN-ACK, the response (acknowledging the request) and the FIN: no
/// bare ACK of the request ahead of its response. The fewest of a few
/// tries, as a stalled machine may let the delayed-ACK timer (40 ms) fire.
#[test]
fn a_new_connections_request_is_acknowledged_by_its_response() {
    let backend = Backend::start("b", Behaviour::Ok);
    let proxy = ProxyConfig::new(backend.addr()).start();
    let fewest = (0..5)
        .map(|_| segments_received_for_one_exchange(proxy.port))
        .min()
        .expect("tries");
    assert_eq!(
        fewest, 3,
        "segments the client received: SYN-ACK, response, FIN (a fourth is a bare ACK)"
    );
}

fn proxy_with_admin(listener: &[(&str, &str)]) -> (Backend, Proxy, u16) {
    let backend = Backend::start("b", Behaviour::Ok);
    let admin = free_port();
    let mut config = ProxyConfig::new(backend.addr());
    for (key, value) in listener {
        config = config.listener_extra(key, value);
    }
    let toml = config.to_toml() + &format!("\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    (backend, Proxy::start(&toml), admin)
}

/// The count of accepted connections once it has settled at `want`.
fn accepted_reaches(admin: u16, want: u64) -> Result<(), String> {
    accepted_reaches_within(admin, want, Duration::from_secs(3))
}

/// Well inside the second a deferred accept holds a silent client, and
/// several metrics snapshots (10 gossip intervals each) long.
const SOONER_THAN_DEFERRED: Duration = Duration::from_millis(600);

fn accepted_reaches_within(admin: u16, want: u64, within: Duration) -> Result<(), String> {
    eventually(within, || {
        let got = sample(&metrics(admin), ACCEPTED);
        (got == want)
            .then_some(())
            .ok_or(format!("{ACCEPTED} {got}, not {want}"))
    })
}

/// The harness's own connection to see the listener up (closed without a
/// request: its FIN is something sent, so it is accepted).
const HARNESS: u64 = 1;

#[test]
fn a_client_that_has_sent_nothing_is_not_yet_handed_to_a_worker() {
    let (_backend, proxy, admin) = proxy_with_admin(&[]);
    accepted_reaches(admin, HARNESS).unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    let page = metrics(admin);
    assert_eq!(
        sample(&page, ACCEPTED),
        HARNESS,
        "a silent client was accepted"
    );
    // Once it speaks, it is served as any other.
    get_until_closed(&mut silent);
    accepted_reaches(admin, HARNESS + 1).unwrap();
}

#[test]
fn with_defer_accept_off_a_silent_client_is_accepted_at_once() {
    let (_backend, proxy, admin) = proxy_with_admin(&[("defer_accept", "false")]);
    accepted_reaches(admin, HARNESS).unwrap();
    let _silent = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    accepted_reaches_within(admin, HARNESS + 1, SOONER_THAN_DEFERRED).unwrap();
    // And it is served.
    assert_eq!(Client::connect(proxy.port).get("/x").status, 200);
}

/// A reload that turns `defer_accept` off applies to the listening sockets
/// the new generation takes over from the old one.
#[test]
fn a_reload_turning_defer_accept_off_applies_to_the_kept_sockets() {
    let (_backend, proxy, admin) = proxy_with_admin(&[]);
    accepted_reaches(admin, HARNESS).unwrap();
    let toml = std::fs::read_to_string(&proxy.config_path).expect("config");
    let address_line = toml
        .lines()
        .find(|l| l.starts_with("address = \"127.0.0.1:") && l.contains(&proxy.port.to_string()))
        .expect("the listener's address line")
        .to_owned();
    let off = toml.replacen(
        &address_line,
        &format!("{address_line}\ndefer_accept = false"),
        1,
    );
    std::fs::write(&proxy.config_path, off).expect("write the new config");
    proxy.signal("-HUP");
    eventually(Duration::from_secs(5), || {
        let log = proxy.stderr();
        log.contains("SIGHUP: reloaded").then_some(()).ok_or(log)
    })
    .expect("reloaded");
    let before = sample(&metrics(admin), ACCEPTED);
    let _silent = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    accepted_reaches_within(admin, before + 1, SOONER_THAN_DEFERRED).unwrap();
}
