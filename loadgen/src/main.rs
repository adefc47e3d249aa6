//! `ringload`: parses the command line, runs the load (or the sweep),
//! prints the table and writes the requested files. Maps every failure to
//! one message on stderr and a non-zero exit: 1 for a failed run, 2 for bad
//! usage (clap's convention), 3 for a run in which `--check-id` found
//! responses that did not carry their request's id, 4 for a `--sweep` in
//! which no rate met the objective.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use ringgate_loadgen::cli::Cli;
use ringgate_loadgen::{sweep, Error, Report, RunConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })
}

fn write_outputs(cli: &Cli, report: &Report, json: serde_json::Value) -> Result<(), Error> {
    if let Some(p) = &cli.json {
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        write_file(p, &(text + "\n"))?;
    }
    if let Some(p) = &cli.hgrm {
        write_file(p, &report.hgrm())?;
    }
    if let Some(p) = &cli.raw {
        write_file(p, &report.raw_csv())?;
    }
    Ok(())
}

fn real_main(cli: &Cli) -> Result<(), Error> {
    let config = RunConfig::new(cli.options()?)?;
    if let Some(note) = config.cpu_note() {
        if !cli.quiet || note.starts_with("WARNING") {
            eprintln!("ringload: {note}");
        }
    }
    let report = if cli.sweep {
        let result = sweep::run(&config, cli.slo, cli.sweep_step / 100.0, |line| {
            if !cli.quiet {
                eprintln!("{line}");
            }
        })?;
        print!("{}", result.headline().table());
        print!("{}", result.table());
        write_outputs(cli, result.headline(), result.to_json())?;
        if result.best().is_none() {
            return Err(Error::NoRateWithinObjective(result.miss_summary()));
        }
        result.headline().clone()
    } else {
        let report = ringgate_loadgen::run(&config)?;
        print!("{}", report.table());
        write_outputs(cli, &report, report.to_json())?;
        report
    };
    // The table already carries the warnings; repeat them on stderr when
    // stdout goes to a file, so they are never missed.
    if !std::io::stdout().is_terminal() {
        for w in &report.warnings {
            eprintln!("ringload: WARNING: {w}");
        }
    }
    if report.measured.ids.mismatches() > 0 {
        return Err(Error::IdMismatch(report.measured.ids.clone()));
    }
    if report.measured.ok_responses() == 0 {
        return Err(Error::NoResponse(format!(
            "no successful (2xx/3xx) response in the measured window: {} response(s), {} error(s)",
            report.requests(),
            report.measured.errors.total()
        )));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringload: {e}");
            match e {
                Error::IdMismatch(_) => ExitCode::from(3),
                Error::NoRateWithinObjective(_) => ExitCode::from(4),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
