//! Stop and reload requests. A stop flag is set by the main thread and read
//! by each worker's ticker (ticker.rs) once per tick, never on the request path;
//! the signal thread turns signals into [`Control`] messages for the main
//! thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

#[derive(Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Sets the flag; returns whether it was already set.
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::Relaxed)
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the signal thread asks of the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: read the config file again and, if it is valid, switch to it.
    Reload,
    /// SIGTERM, SIGINT or SIGQUIT (named): drain and exit.
    Stop(&'static str),
}

/// SIGHUP asks for a reload; SIGTERM, SIGINT or SIGQUIT for a graceful
/// stop, and a second one of those exits at once, status 1.
pub fn watch_signals(control: Sender<Control>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP])?;
    std::thread::Builder::new()
        .name("ringgate-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
                if signal == SIGHUP {
                    let _ = control.send(Control::Reload);
                } else if stopping {
                    eprintln!("ringgate: {name} again: exiting without waiting");
                    std::process::exit(1);
                } else {
                    stopping = true;
                    let _ = control.send(Control::Stop(name));
                }
            }
        })?;
    Ok(())
}
