//! Readiness and reload notifications to a service manager (sd_notify(3)):
//! one datagram per state change to the socket named by `$NOTIFY_SOCKET`,
//! so a `Type=notify` systemd unit (docs/DEPLOY.md, deploy/ringgate.service)
//! counts the service started only once its listeners are bound, and a
//! reload finished only once the new workers run. Without the variable
//! every call does nothing. Never on the request path: the main thread
//! sends at start-up, reload and stop.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go; `None` when no service manager asked for them.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`: a path, or an abstract name written with a
    /// leading `@`. An unusable value is reported once and ignored: the
    /// proxy serves either way, and the service manager times out on its own.
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        match connect(&name) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(e) => {
                eprintln!(
                    "ringgate: NOTIFY_SOCKET={}: {e}; no readiness notifications",
                    name.to_string_lossy()
                );
                Notifier { target: None }
            }
        }
    }

    /// The listeners are bound and the workers run.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload starts (SIGHUP); `ready` follows when it is over, whether
    /// the new config was taken or refused. MONOTONIC_USEC lets systemd's
    /// `Type=notify-reload` (253+) match it to the signal it sent.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
    }

    /// A graceful stop (drain) starts.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            eprintln!("ringgate: cannot notify the service manager: {e}");
        }
    }
}

fn connect(name: &std::ffi::OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name)?
        }
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(name)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor an @abstract name",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd reads for
/// MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}
