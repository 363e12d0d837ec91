//! `vmedia vm`: PENDING, being written (replace this whole file).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum VmCommand {
    /// Not available yet
    Pending,
}

pub fn run(_cmd: VmCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmedia vm is not available in this build yet")
}
