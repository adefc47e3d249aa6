//! ringgate: the binary. Parses the command line and the config, binds the
//! listeners, starts one pinned worker per core and waits for them.
//! The request path lives in `conn`; everything runtime-free in ringgate-core.

mod access_log;
mod conn;
mod demo;
mod gossip;
mod health;
mod io;
mod metrics;
mod stop;
mod upstream;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::stop::StopFlag;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "io_uring thread-per-core HTTP reverse proxy"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file without starting.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start embedded backends, the proxy and a short load run; print latency.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::Check { config }), _) => match ringgate_config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        (Some(Command::Demo(args)), _) => demo::run(args),
        (None, Some(path)) => match ringgate_config::load(&path) {
            Ok(config) => serve(config),
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        (None, None) => {
            eprintln!("ringgate: no configuration given: use -c FILE (or `ringgate demo`)");
            ExitCode::from(2)
        }
    }
}

/// Binds, starts the workers and blocks while they run; a stop signal
/// drains them (see `stop::watch_signals`) and the process exits 0.
pub fn serve(config: ringgate_config::Config) -> ExitCode {
    let stop = StopFlag::default();
    if let Err(e) = stop::watch_signals(stop.clone(), config.server.drain_timeout) {
        eprintln!("ringgate: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match start(config, stop) {
        Ok(handles) => {
            for handle in handles {
                let _ = handle.join();
            }
            eprintln!("ringgate: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds every listener and spawns the workers; returns their threads.
pub fn start(
    config: ringgate_config::Config,
    stop: StopFlag,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let config = Arc::new(config);
    let (count, cores) = worker::plan(config.server.workers);
    let (mut listeners, bound) = worker::bind_all(&config, count)?;
    let driver = worker::choose_driver();
    let mut meshes = gossip::mesh(count, config.server.gossip_inbox);
    let metrics_tx = match config.admin {
        None => None,
        Some(admin) => {
            let (tx, rx) = metrics::channel(count);
            metrics::spawn_admin(admin.address, config.clone(), count, rx, stop.clone())?;
            Some(tx)
        }
    };
    let log_file = match &config.access_log {
        None => None,
        Some(log) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log.path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("access_log.path {}: {e}", log.path.display()),
                    )
                })?,
        ),
    };
    let mut handles = Vec::with_capacity(count);
    for id in (0..count).rev() {
        let sockets = listeners.pop().unwrap_or_default();
        let Some(mesh) = meshes.pop() else {
            break;
        };
        let cpu = if config.server.pin && !cores.is_empty() {
            Some(cores[id % cores.len()])
        } else {
            None
        };
        let config = config.clone();
        let stop = stop.clone();
        // One open file description shared by every worker: O_APPEND makes
        // each worker's write land whole at the end.
        let log_file = log_file
            .as_ref()
            .map(std::fs::File::try_clone)
            .transpose()?;
        let shared = worker::Shared {
            config,
            stop,
            log_file,
            metrics_tx: metrics_tx.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("ringgate-w{id}"))
                .spawn(move || worker::run(id, cpu, driver, sockets, mesh, shared))?,
        );
    }
    let addrs: Vec<String> = config
        .listeners
        .iter()
        .zip(&bound)
        .map(|(l, a)| format!("{}={a}", l.name))
        .collect();
    eprintln!(
        "ringgate {}: {count} worker(s) on {}, listening on {}",
        env!("CARGO_PKG_VERSION"),
        match driver {
            worker::Driver::IoUring => "io_uring",
            worker::Driver::Legacy => "epoll (legacy)",
        },
        addrs.join(", ")
    );
    Ok(handles)
}
