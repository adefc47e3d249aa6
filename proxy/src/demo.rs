//! `ringgate demo`: placeholder until written.
#[derive(clap::Args)]
pub struct DemoArgs {}
pub fn run(_args: DemoArgs) -> std::process::ExitCode { std::process::ExitCode::FAILURE }
