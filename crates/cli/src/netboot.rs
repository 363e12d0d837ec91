//! `vmedia netboot`: PENDING, being written (replace this whole file).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum NetbootCommand {
    /// Not available yet
    Pending,
}

pub fn run(_cmd: NetbootCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("vmedia netboot is not available in this build yet")
}
