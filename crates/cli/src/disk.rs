//! `vmedia disk`: PENDING, being written (replace this whole file).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Not available yet
    Pending,
}

pub fn run(_cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmedia disk is not available in this build yet")
}
