//! `vmedia iso`: PENDING, being written (replace this whole file).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum IsoCommand {
    /// Not available yet
    Pending,
}

pub fn run(_cmd: IsoCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmedia iso is not available in this build yet")
}
