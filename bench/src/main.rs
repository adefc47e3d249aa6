//! `ringgate-bench compare`: the side-by-side comparison of ringgate, nginx
//! and HAProxy (see the crate docs and docs/BENCHMARKS.md).
#![deny(unsafe_code)]

use clap::{Parser, Subcommand};
use ringgate_bench::compare::{self, BackendChoice, LoadChoice, Options, DEFAULT_LADDER_PERCENT};
use ringgate_bench::proxy::ProxyKind;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ringgate-bench",
    version,
    about = "ringgate's benchmark runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ringgate, nginx and HAProxy side by side; write a Markdown table
    /// and SVG plots.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Proxies to compare, in order; those not installed are skipped.
    #[arg(long, value_delimiter = ',', default_value = "ringgate,nginx,haproxy", value_parser = parse_proxy)]
    proxies: Vec<ProxyKind>,
    /// Length of each measured point (the maximum and every ladder rate).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Directory for results.md, results.json and the SVG plots.
    #[arg(long, default_value = "target/ringgate-bench")]
    out: PathBuf,
    /// A bounded smoke run (1 s points, 8 connections, one ladder rate).
    #[arg(long)]
    quick: bool,
    /// Offered rates of the latency ladder, in percent of the best maximum.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_LADDER_PERCENT)]
    ladder: Vec<u32>,
    /// Load tool.
    #[arg(long, value_enum, default_value = "auto")]
    load: LoadChoice,
    /// Backend behind every proxy.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// The ringgate binary [default: $RINGGATE_BIN, else target/{release,debug}/ringgate].
    #[arg(long, env = "RINGGATE_BIN")]
    ringgate_bin: Option<PathBuf>,
    /// The ringload binary [default: $RINGLOAD_BIN, else target/{release,debug}/ringload].
    #[arg(long, env = "RINGLOAD_BIN")]
    ringload_bin: Option<PathBuf>,
}

fn parse_proxy(s: &str) -> Result<ProxyKind, String> {
    ProxyKind::parse(s).ok_or_else(|| format!("unknown proxy {s:?} (ringgate, nginx, haproxy)"))
}

fn main() -> ExitCode {
    let command_line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let Command::Compare(args) = Cli::parse().command;
    let opts = Options {
        proxies: args.proxies,
        duration: args.duration,
        connections: args.connections,
        out: args.out.clone(),
        quick: args.quick,
        ladder_percent: args.ladder,
        load: args.load,
        backend: args.backend,
        ringgate_bin: args.ringgate_bin,
        ringload_bin: args.ringload_bin,
        command: format!("cargo run -p ringgate-bench --release -- {command_line}"),
    };
    match compare::run(opts) {
        Ok(c) => {
            print!("{}", ringgate_bench::report::markdown(&c));
            eprintln!(
                "wrote {}/results.md, results.json and the SVG plots",
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
