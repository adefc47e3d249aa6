//! The process-wide stop request: set by the signal thread, read by each
//! worker's gossip ticker once per tick, never on the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Asks every worker to drain; returns whether that was already asked.
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::Relaxed)
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// SIGTERM, SIGINT or SIGQUIT requests a graceful stop; a second one exits
/// at once, status 1.
pub fn watch_signals(stop: StopFlag, drain_timeout: Duration) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT])?;
    std::thread::Builder::new()
        .name("ringgate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
                if stop.request() {
                    eprintln!("ringgate: {name} again: exiting without waiting");
                    std::process::exit(1);
                }
                eprintln!(
                    "ringgate: {name}: draining (closing listeners, up to {})",
                    humantime::format_duration(drain_timeout)
                );
            }
        })?;
    Ok(())
}
