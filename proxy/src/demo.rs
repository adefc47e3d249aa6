//! `ringgate demo`: a self-contained run on loopback. Two embedded backends,
//! the proxy on all cores, a short closed-loop load run, then a latency
//! table. The load engine here is a stand-in until ringload's engine (the
//! ringgate-loadgen library) exists.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::buf::IoBufMut as _;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use ringgate_config::Config;
use ringgate_core::http::{parse_response, HeadLimits, HeadScratch, ResponseBody};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Length of the measured load run.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Proxy workers ("auto" = one per CPU).
    #[arg(long, default_value = "auto")]
    workers: String,
}

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 * 1024,
    max_headers: 100,
};

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
    let workers = if args.workers == "auto" {
        "\"auto\"".to_string()
    } else {
        args.workers.clone()
    };
    let toml = format!(
        "[server]\nworkers = {workers}\n\n[[listeners]]\nname = \"demo\"\naddress = \"127.0.0.1:{proxy_port}\"\n\n\
         [[routes]]\nlistener = \"demo\"\nupstream = \"demo\"\n\n[[upstreams]]\nname = \"demo\"\n\
         backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n",
        backends[0], backends[1]
    );
    let config: Config = ringgate_config::parse(&toml, "demo.toml").map_err(|e| e.to_string())?;
    let worker_count = crate::worker::plan(config.server.workers).0;
    crate::start(config).map_err(err)?;
    let target: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    println!(
        "ringgate demo: backends {} and {}, proxy on {target} ({worker_count} worker(s)), {} connections for {:?}",
        backends[0], backends[1], args.connections, args.duration
    );

    let connections = args.connections.max(1);
    let duration = args.duration;
    let load = std::thread::Builder::new()
        .name("demo-load".into())
        .spawn(move || -> Result<LoadReport, String> {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(drive_load(target, connections, duration))
        })
        .map_err(err)?;
    let report = load
        .join()
        .map_err(|_| "load thread panicked".to_string())??;
    report.print();
    if report.requests == 0 {
        return Err("no request succeeded".into());
    }
    Ok(())
}

struct LoadReport {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    per_backend: [u64; 2],
}

impl LoadReport {
    fn print(&self) {
        let h = &self.latency_us;
        let rate = self.requests as f64 / self.elapsed.as_secs_f64();
        println!();
        println!("| requests | errors | req/s | p50 | p90 | p99 | p99.9 | p99.99 | max |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {:.0} | {} µs | {} µs | {} µs | {} µs | {} µs | {} µs |",
            self.requests,
            self.errors,
            rate,
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.value_at_quantile(0.9999),
            h.max()
        );
        println!();
        println!(
            "backend-1 answered {}, backend-2 answered {} (round robin)",
            self.per_backend[0], self.per_backend[1]
        );
    }
}

/// Closed loop: each connection sends a request as soon as the previous
/// response is in. Latency is service time; no coordinated-omission
/// correction (that is ringload's job).
async fn drive_load(
    target: SocketAddr,
    connections: usize,
    duration: Duration,
) -> Result<LoadReport, String> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(monoio::spawn(client_loop(target, deadline)));
    }
    let mut report = LoadReport {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
        per_backend: [0; 2],
    };
    for task in tasks {
        let part = task.await;
        report.requests += part.requests;
        report.errors += part.errors;
        report.per_backend[0] += part.per_backend[0];
        report.per_backend[1] += part.per_backend[1];
        report
            .latency_us
            .add(&part.latency_us)
            .map_err(|e| e.to_string())?;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits: bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn client_loop(target: SocketAddr, deadline: Instant) -> LoadReport {
    let mut report = LoadReport {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
        per_backend: [0; 2],
    };
    let request: &'static [u8] =
        b"GET /demo HTTP/1.1\r\nHost: demo\r\nUser-Agent: ringgate-demo\r\n\r\n";
    let mut scratch = HeadScratch::default();
    'connect: while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect_addr(target).await else {
            report.errors += 1;
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        while Instant::now() < deadline {
            let sent_at = Instant::now();
            let (res, _) = stream.write_all(request).await;
            if res.is_err() {
                report.errors += 1;
                continue 'connect;
            }
            buf.clear();
            let body = loop {
                if let Ok(Some(head)) = parse_response(&buf, LIMITS, false, &mut scratch) {
                    if let ResponseBody::Length(n) = head.body {
                        if buf.len() >= head.head_len + n as usize {
                            break Some((head.status, buf[head.head_len..].to_vec()));
                        }
                    } else {
                        break None;
                    }
                }
                if buf.capacity() == buf.len() {
                    buf.reserve(4096);
                }
                let (len, cap) = (buf.len(), buf.capacity());
                let (res, back) = stream.read(buf.slice_mut(len..cap)).await;
                buf = back.into_inner();
                match res {
                    Ok(0) | Err(_) => break None,
                    Ok(_) => {}
                }
            };
            match body {
                Some((200, body)) => {
                    report.requests += 1;
                    let _ = report
                        .latency_us
                        .record(sent_at.elapsed().as_micros() as u64);
                    let which = usize::from(body.ends_with(b"backend-2\n"));
                    report.per_backend[which] += 1;
                }
                _ => {
                    report.errors += 1;
                    continue 'connect;
                }
            }
        }
        return report;
    }
    report
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
        while let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(backend_conn(stream, response));
        }
    });
}

/// Answers every request head with the same response; the demo's requests
/// carry no body.
async fn backend_conn(mut stream: TcpStream, response: &'static [u8]) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let (res, _) = stream.write_all(response).await;
            if res.is_err() {
                return;
            }
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
