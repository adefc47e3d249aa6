//! ringgate: the binary. Parses the command line and the config, binds the
//! listeners, starts one pinned worker per core and waits for them; turns
//! SIGHUP into a new generation of workers and SIGTERM into a drain.
//! The request path lives in `downstream` and `exchange`; everything
//! runtime-free in ringgate-core.

mod accept;
mod access_log;
mod admin;
mod auth;
mod checks;
mod compose;
mod cors;
mod demo;
mod dns;
mod downstream;
mod error_log;
mod exchange;
mod fleet;
mod gossip;
mod h2_upstream;
mod health;
mod http2;
mod idle;
mod io;
mod log_buffer;
mod metrics;
mod notify;
mod proxy_protocol;
mod request_id;
mod schema;
mod state;
mod stop;
mod stream;
mod ticker;
mod tls;
mod tunnel;
mod upstream;
mod via;
mod worker;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ringgate_config::LogLevel;

use crate::error_log::{ErrorLog, Kind};
use crate::stop::{Control, StopFlag};

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
    /// Print the effective configuration of -c FILE, every default filled
    /// in, as TOML that `check` accepts; then exit.
    #[arg(long, requires = "config")]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file without starting: `check FILE`,
    /// `check -c FILE` or `-c FILE check`.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Also bind every listener and the admin address, then release
        /// them: catches addresses in use or not on this host.
        #[arg(long)]
        bind: bool,
    },
    /// Start embedded backends, the proxy and a short load run; print latency.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    abort_on_panic();
    let cli = Cli::parse();
    // Refused before anything starts, by `check` as by start-up.
    if let Err(e) = worker::legacy_forced() {
        eprintln!("ringgate: {e}");
        return ExitCode::from(2);
    }
    match (cli.command, cli.config) {
        (Some(Command::Check { config, file, bind }), outer) => {
            let Some(config) = config.or(file).or(outer) else {
                eprintln!("ringgate: check needs a file: `ringgate check FILE`");
                return ExitCode::from(2);
            };
            match ringgate_config::load(&config) {
                Ok(loaded) => {
                    let problems = start_up_problems(&loaded, bind);
                    // Located like every other config error, by the key
                    // whose value start-up could not use.
                    let text = std::fs::read_to_string(&config).unwrap_or_default();
                    for (key, message) in &problems {
                        let (line, column) = ringgate_config::locate(&text, key).unwrap_or((1, 1));
                        let error = ringgate_config::ConfigError {
                            file: config.display().to_string(),
                            line,
                            column,
                            key: key.clone(),
                            message: message.clone(),
                        };
                        eprintln!("{error}");
                    }
                    if !problems.is_empty() {
                        return ExitCode::from(2);
                    }
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(2)
                }
            }
        }
        (Some(_), _) if cli.print_config => {
            eprintln!(
                "ringgate: --print-config takes no subcommand: `ringgate --print-config -c FILE`"
            );
            ExitCode::from(2)
        }
        (Some(Command::Demo(args)), _) => demo::run(args),
        (None, Some(path)) if cli.print_config => match ringgate_config::load(&path) {
            Ok(config) => {
                print!(
                    "# The effective configuration of {}: every default filled in.\n{}",
                    path.display(),
                    ringgate_config::to_toml(&config)
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        (None, Some(path)) => match ringgate_config::load(&path) {
            Ok(config) => serve(&path, config),
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

/// What start-up would refuse beyond the file itself, as (dotted key,
/// message): an access or error log that cannot be opened for appending
/// and, with `bind`, listener and admin addresses that cannot be bound.
/// Every socket is held until all are bound, admin first as at start-up,
/// so addresses of one config that collide with each other are found too.
fn start_up_problems(config: &ringgate_config::Config, bind: bool) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let logs = [
        (
            "access_log.path",
            config.access_log.as_ref().map(|l| &l.path),
        ),
        ("error_log.path", config.error_log.path.as_ref()),
    ];
    for (key, path) in logs {
        let Some(path) = path else { continue };
        let existed = path.exists();
        match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            Ok(_) if !existed => {
                // Only a check: leave no empty file behind.
                let _ = std::fs::remove_file(path);
            }
            Ok(_) => {}
            Err(e) => problems.push((
                key.to_owned(),
                format!("cannot open {} for appending: {e}", path.display()),
            )),
        }
    }
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(t) = &listener.tls {
            if let Err(e) = tls::load(&format!("listeners[{i}].tls"), t, listener.http2) {
                problems.push(keyed(e, "listeners"));
            }
        }
    }
    if let Err(e) = schema::load_all(config) {
        problems.push(keyed(e, "routes"));
    }
    for (i, upstream) in config.upstreams.iter().enumerate() {
        if let Some(t) = &upstream.tls {
            let alpn = tls::ClientAlpn::of(upstream);
            if let Err(e) = tls::load_upstream(&format!("upstreams[{i}].tls"), t, alpn) {
                problems.push(keyed(e, "upstreams"));
            }
        }
    }
    if let Some(t) = config.fleet.as_ref().and_then(|f| f.tls.as_ref()) {
        if let Err(e) = tls::load_upstream("fleet.tls", t, tls::ClientAlpn::None) {
            problems.push(keyed(e, "fleet"));
        }
    }
    if let Err(errors) = auth::load(config) {
        problems.extend(errors.into_iter().map(|e| keyed(e, "routes")));
    }
    if bind {
        let mut held = Vec::new();
        if let Some(admin) = &config.admin {
            match std::net::TcpListener::bind(admin.address) {
                Ok(socket) => held.push(socket),
                Err(e) => problems.push((
                    "admin.address".to_owned(),
                    format!("cannot bind {}: {e}", admin.address),
                )),
            }
        }
        for (i, listener) in config.listeners.iter().enumerate() {
            match worker::probe_bind(listener.address, config.server.share_ports) {
                Ok(socket) => held.push(socket),
                Err(e) => problems.push((
                    format!("listeners[{i}].address"),
                    format!(
                        "cannot bind {} (listener {}): {e}",
                        listener.address, listener.name
                    ),
                )),
            }
        }
    }
    problems
}

/// A `tls` loading error as (key, message): its errors lead with the key
/// they are about.
fn keyed(error: String, fallback: &str) -> (String, String) {
    match error.split_once(": ") {
        Some((key, message)) => (key.to_owned(), message.to_owned()),
        None => (fallback.to_owned(), error),
    }
}

/// Makes any panic, on any thread, end the process after its message is
/// printed. A worker that died alone would leave its `SO_REUSEPORT` socket
/// (the main thread holds a duplicate for the next generation) queueing
/// connections nobody accepts; an edge proxy had better exit and let its
/// supervisor restart it (`Restart=on-failure`, docs/DEPLOY.md). The
/// release profile sets `panic = "abort"` already; this makes every build,
/// whose panics would otherwise unwind, behave the same.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Runs generations of workers until a stop signal: the first from
/// `config`; each SIGHUP that finds a valid file at `path` starts the next
/// on the same sockets and drains the previous one.
pub fn serve(path: &Path, config: ringgate_config::Config) -> ExitCode {
    let (control_tx, control) = crossbeam_channel::unbounded();
    if let Err(e) = stop::watch_signals(control_tx) {
        eprintln!("ringgate: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let mut log = match ErrorLog::open(&config.error_log) {
        Ok(target) => ErrorLog::for_main(target, &config.error_log),
        Err(e) => {
            eprintln!("ringgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    raise_open_file_limit(&log);
    // Set on a stop (not on a reload): /healthz turns 503.
    let stopping = StopFlag::default();
    let metrics_tx = match config.admin {
        None => None,
        Some(admin) => {
            let (tx, rx) = metrics::channel();
            let admin_log = match log.file().try_clone() {
                Ok(target) => ErrorLog::for_thread(target, &config.error_log, "admin"),
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = admin::spawn(admin.address, rx, stopping.clone(), admin_log) {
                eprintln!("ringgate: {e}");
                return ExitCode::FAILURE;
            }
            Some(tx)
        }
    };
    let admin = config.admin;
    let mut current = match start(
        config,
        StopFlag::default(),
        metrics_tx.clone(),
        &[],
        0,
        &log,
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ringgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = notify::Notifier::from_env();
    notifier.ready(&format!("serving {}", path.display()));
    let mut draining: Vec<Generation> = Vec::new();
    // A worker ends only by draining (a panic ends the process), so there
    // is nothing to watch between signals.
    while let Ok(request) = control.recv() {
        draining.retain_mut(|g| !g.finished());
        match request {
            Control::Stop(signal) => {
                stopping.request();
                notifier.stopping();
                log.event(LogLevel::Info, Kind::Lifecycle, |b| {
                    let _ = write!(
                        b,
                        "{signal}: draining (closing listeners, up to {})",
                        humantime::format_duration(current.config.server.drain_timeout)
                    );
                });
                current.drain.request();
                // The workers close their sockets as they drain; these
                // duplicates must go too, or the port keeps queueing
                // connections nobody will accept.
                current.sockets.clear();
                break;
            }
            Control::Reload => {
                notifier.reloading();
                let config = match ringgate_config::load(path) {
                    Ok(config) => config,
                    Err(errors) => {
                        // One line per config error, each whole.
                        for e in &errors.0 {
                            log.event(LogLevel::Error, Kind::Reload, |b| {
                                let _ = write!(
                                    b,
                                    "SIGHUP: not reloaded, the running config stays: {e}"
                                );
                            });
                        }
                        notifier.ready("reload refused: invalid config; serving the previous one");
                        continue;
                    }
                };
                if config.admin != admin {
                    log.event(LogLevel::Warn, Kind::Reload, |b| {
                        b.extend_from_slice(
                            b"SIGHUP: [admin] changes take effect at the next restart",
                        );
                    });
                }
                // The new generation logs where its config says.
                let next_log = match ErrorLog::open(&config.error_log) {
                    Ok(target) => ErrorLog::for_main(target, &config.error_log),
                    Err(e) => {
                        log.event(LogLevel::Error, Kind::Reload, |b| {
                            let _ =
                                write!(b, "SIGHUP: not reloaded ({e}); the running config stays");
                        });
                        continue;
                    }
                };
                let generation = current.generation + 1;
                match start(
                    config,
                    StopFlag::default(),
                    metrics_tx.clone(),
                    &current.sockets,
                    generation,
                    &next_log,
                ) {
                    Ok(next) => {
                        let mut previous = std::mem::replace(&mut current, next);
                        previous.drain.request();
                        // The new generation holds its own duplicates.
                        previous.sockets.clear();
                        log = next_log;
                        log.event(LogLevel::Info, Kind::Reload, |b| {
                            let _ = write!(
                                b,
                                "SIGHUP: reloaded {} (generation {generation}); the previous workers drain, up to {}",
                                path.display(),
                                humantime::format_duration(previous.config.server.drain_timeout)
                            );
                        });
                        draining.push(previous);
                        notifier.ready(&format!(
                            "serving {} (generation {generation})",
                            path.display()
                        ));
                    }
                    Err(e) => {
                        log.event(LogLevel::Error, Kind::Reload, |b| {
                            let _ =
                                write!(b, "SIGHUP: not reloaded ({e}); the running config stays");
                        });
                        notifier.ready("reload refused: start-up failed; serving the previous one");
                    }
                }
            }
        }
    }
    for generation in draining.into_iter().chain([current]) {
        for handle in generation.handles {
            let _ = handle.join();
        }
    }
    log.event(LogLevel::Info, Kind::Lifecycle, |b| {
        b.extend_from_slice(b"stopped")
    });
    ExitCode::SUCCESS
}

/// One set of workers started from one config.
pub struct Generation {
    pub config: Arc<ringgate_config::Config>,
    generation: u64,
    /// Asks these workers to drain.
    pub drain: StopFlag,
    pub handles: Vec<std::thread::JoinHandle<()>>,
    /// Duplicates of the workers' listening sockets: the next generation
    /// accepts on the same sockets, so a reload loses no queued connection.
    sockets: Vec<worker::InheritedListener>,
}

impl Generation {
    fn finished(&mut self) -> bool {
        self.handles.retain(|h| !h.is_finished());
        self.handles.is_empty()
    }
}

/// Raises the soft open-file limit to the hard one: every client and
/// upstream connection is a descriptor, and the soft default (often 1024)
/// is far below what a worker may hold.
fn raise_open_file_limit(log: &ErrorLog) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let e = std::io::Error::last_os_error();
            log.event(LogLevel::Warn, Kind::Lifecycle, |b| {
                let _ = write!(
                    b,
                    "cannot raise the open-file limit from {} to {}: {e}",
                    limit.rlim_cur, limit.rlim_max
                );
            });
        }
    }
}

/// Descriptors the process keeps for itself: listeners and their
/// duplicates, rings, the access log, the admin endpoint, stdio.
const OWN_DESCRIPTORS: u64 = 64;

/// Says once per config when the open-file limit cannot hold every
/// connection the config allows (docs/DEPLOY.md has the same budget):
/// past it, new clients wait in the accept queue.
fn check_open_file_budget(config: &ringgate_config::Config, workers: usize, log: &ErrorLog) {
    let pools: u64 = config
        .upstreams
        .iter()
        .map(|u| (u.slot_count() * u.max_idle_per_backend) as u64)
        .sum();
    let per_worker = config.server.max_connections_per_worker as u64 + pools;
    let budget = (workers as u64)
        .saturating_mul(per_worker)
        .saturating_add(OWN_DESCRIPTORS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && budget > limit.rlim_cur {
        log.event(LogLevel::Warn, Kind::Lifecycle, |b| {
            let _ = write!(
                b,
                "the open-file limit ({}) is below the {budget} descriptors this config may use \
                 ({workers} workers x (max_connections_per_worker {} + {pools} pooled upstream connections) + {OWN_DESCRIPTORS}); \
                 past it new clients wait in the accept queue. Raise LimitNOFILE or ulimit -n, or lower max_connections_per_worker",
                limit.rlim_cur, config.server.max_connections_per_worker
            );
        });
    }
}

/// Loads the certificates and keys of every TLS listener, indexed like
/// `config.listeners`; the first problem found is the error.
fn load_tls(
    config: &ringgate_config::Config,
) -> Result<Vec<Option<tls::ListenerTlsConfig>>, String> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.tls
                .as_ref()
                .map(|t| tls::load(&format!("listeners[{i}].tls"), t, l.http2))
                .transpose()
        })
        .collect()
}

/// The client TLS configuration of every upstream that has one, indexed
/// like `config.upstreams`.
fn load_upstream_tls(
    config: &ringgate_config::Config,
) -> Result<Vec<Option<tls::UpstreamTlsConfig>>, String> {
    config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            u.tls
                .as_ref()
                .map(|t| {
                    tls::load_upstream(&format!("upstreams[{i}].tls"), t, tls::ClientAlpn::of(u))
                })
                .transpose()
        })
        .collect()
}

/// Binds every listener (or takes it over from `inherit`) and spawns the
/// workers.
pub fn start(
    config: ringgate_config::Config,
    drain: StopFlag,
    metrics_tx: Option<metrics::SnapshotTx>,
    inherit: &[worker::InheritedListener],
    generation: u64,
    log: &ErrorLog,
) -> std::io::Result<Generation> {
    let config = Arc::new(config);
    let (count, cores) = worker::plan(config.server.workers);
    check_open_file_budget(&config, count, log);
    let (mut listeners, bound, sockets) = worker::bind_all(&config, count, inherit)?;
    let driver = worker::choose_driver(config.server.io_uring_setup, log);
    let error_log = ErrorLog::open(&config.error_log)?;
    let mut meshes = gossip::mesh(count, config.server.gossip_inbox);
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
    let tls = Arc::new(load_tls(&config).map_err(std::io::Error::other)?);
    let upstream_tls = Arc::new(load_upstream_tls(&config).map_err(std::io::Error::other)?);
    let schemas = Arc::new(schema::load_all(&config).map_err(std::io::Error::other)?);
    let auth = auth::load(&config).map_err(|e| std::io::Error::other(e.join("; ")))?;
    let fleet_status =
        fleet::has_fleet_routes(&config).then(|| Arc::new(fleet::FleetStatus::default()));
    // Stops with this generation's workers (the drain flag a reload or a
    // stop sets).
    let dns_log = ErrorLog::for_thread(error_log.try_clone()?, &config.error_log, "dns");
    let mut dns =
        dns::start(&config, count, drain.clone(), dns_log)?.map(|d| (d.receivers, d.status));
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
        let stop = drain.clone();
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
            error_log: error_log.try_clone()?,
            metrics_tx: metrics_tx.clone(),
            generation,
            tls: tls.clone(),
            upstream_tls: upstream_tls.clone(),
            schemas: schemas.clone(),
            auth: auth.clone(),
            fleet_status: fleet_status.clone(),
            dns: dns
                .as_mut()
                .and_then(|(rx, status)| Some((rx.pop()?, status.clone()))),
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
    log.event(LogLevel::Info, Kind::Lifecycle, |b| {
        let _ = write!(
            b,
            "ringgate {}: {count} worker(s) on {}, listening on {}",
            env!("CARGO_PKG_VERSION"),
            driver.describe(),
            addrs.join(", ")
        );
    });
    Ok(Generation {
        config,
        generation,
        drain,
        handles,
        sockets,
    })
}
