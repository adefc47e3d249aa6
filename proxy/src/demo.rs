//! `ringgate demo`: a self-contained run on loopback. Two embedded backends,
//! the proxy on all cores, a short closed-loop load run, then a latency
//! table. The load comes from ringload's engine (the ringgate-loadgen
//! library), on a runtime of its own: no runtime is shared with the proxy.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use monoio::buf::IoBufMut as _;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use ringgate_config::{Config, Workers, WORKERS_MAX};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Length of the measured load run.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Proxy workers: "auto" (one per CPU) or a count.
    #[arg(long, default_value = "auto", value_parser = parse_workers)]
    workers: Workers,
}

/// `--workers`, checked here so a bad value is the flag's error, not one
/// in the config the demo writes for itself.
fn parse_workers(text: &str) -> Result<Workers, String> {
    match text.trim() {
        "auto" => Ok(Workers::Auto),
        n => match n.parse::<usize>() {
            Ok(n) if (1..=WORKERS_MAX).contains(&n) => Ok(Workers::Count(n)),
            _ => Err(format!("write \"auto\" or a count in 1..={WORKERS_MAX}")),
        },
    }
}

pub fn run(args: DemoArgs) -> ExitCode {
    match demo(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringgate demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Connections each demo worker admits unless `--connections` asks for more.
const DEMO_MAX_CONNECTIONS_PER_WORKER: usize = 1024;

fn demo(args: DemoArgs) -> Result<(), String> {
    let err = |e: std::io::Error| e.to_string();
    let mut backends = Vec::new();
    for name in ["backend-1", "backend-2"] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        backends.push(listener.local_addr().map_err(err)?);
        std::thread::Builder::new()
            .name(format!("demo-{name}"))
            .spawn(move || run_backend(listener, name))
            .map_err(err)?;
    }
    let proxy_port = free_port().map_err(err)?;
    let workers = match args.workers {
        Workers::Auto => "\"auto\"".to_string(),
        Workers::Count(n) => n.to_string(),
    };
    // The load run's connections and room to spare, not the 10 000 a
    // production default allows: the demo's descriptor budget fits the
    // common 20 000 open-file limit, so a first run warns about nothing.
    let max_connections = args.connections.max(DEMO_MAX_CONNECTIONS_PER_WORKER);
    let toml = format!(
        "[server]\nworkers = {workers}\nmax_connections_per_worker = {max_connections}\n\n[[listeners]]\nname = \"demo\"\naddress = \"127.0.0.1:{proxy_port}\"\n\n\
         [[routes]]\nlistener = \"demo\"\nupstream = \"demo\"\n\n[[upstreams]]\nname = \"demo\"\n\
         backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n",
        backends[0], backends[1]
    );
    // Every value in it was checked as a flag: an error here is the demo's own.
    let config: Config = ringgate_config::parse(&toml, "(the demo's generated config)")
        .map_err(|e| format!("internal error, please report: {e}"))?;
    let worker_count = crate::worker::plan(config.server.workers).0;
    // Never stopped: the demo's process exits when its load run is done.
    let log_file = crate::error_log::ErrorLog::open(&config.error_log).map_err(err)?;
    let log = crate::error_log::ErrorLog::for_main(log_file, &config.error_log);
    crate::start(config, crate::stop::StopFlag::default(), None, &[], 0, &log).map_err(err)?;
    let target: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    println!(
        "ringgate demo: backends {} and {}, proxy on {target} ({worker_count} worker(s)), {} connections for {:?}",
        backends[0], backends[1], args.connections, args.duration
    );

    // ringload's engine, closed loop, on one unpinned worker of its own: the
    // proxy's workers own the pinned cores.
    let url = format!("http://{target}/demo");
    let report = ringgate_loadgen::closed_loop(&url, args.connections.max(1), args.duration, 1)
        .map_err(|e| e.to_string())?;
    print_table(&report);
    if report.measured.ok_responses() == 0 {
        return Err("no request succeeded".into());
    }
    Ok(())
}

/// Responses each embedded backend wrote, for the round-robin line.
static ANSWERED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn print_table(report: &ringgate_loadgen::Report) {
    let h = &report.measured.service_us;
    let q = |v: f64| report.service_us(v);
    println!();
    println!("| requests | errors | req/s | p50 | p90 | p99 | p99.9 | p99.99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {} µs | {} µs | {} µs | {} µs | {} µs | {} µs |",
        report.requests(),
        report.measured.errors.total(),
        report.achieved_rate(),
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        q(0.9999),
        h.max()
    );
    println!();
    println!(
        "latency is service time (closed loop); corrected for coordinated omission: p99 {} µs, p99.9 {} µs",
        report.latency_us(0.99),
        report.latency_us(0.999)
    );
    println!(
        "backend-1 answered {}, backend-2 answered {} (round robin)",
        ANSWERED[0].load(Ordering::Relaxed),
        ANSWERED[1].load(Ordering::Relaxed)
    );
}

fn run_backend(listener: std::net::TcpListener, name: &'static str) {
    let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    else {
        eprintln!("ringgate demo: {name}: cannot start a runtime");
        return;
    };
    rt.block_on(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        // Lives as long as the process, like the backend itself.
        let response: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\nhello from {name}\n",
                "hello from \n".len() + name.len()
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let answered = &ANSWERED[usize::from(name == "backend-2")];
        while let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(backend_conn(stream, response, answered));
        }
    });
}

/// Answers every request head with the same response; the demo's requests
/// carry no body.
async fn backend_conn(
    mut stream: TcpStream,
    response: &'static [u8],
    answered: &'static AtomicU64,
) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let (res, _) = stream.write_all(response).await;
            if res.is_err() {
                return;
            }
            answered.fetch_add(1, Ordering::Relaxed);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(8192);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, back) = stream.read(buf.slice_mut(len..cap)).await;
        buf = back.into_inner();
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
    }
}
