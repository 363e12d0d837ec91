//! `vmedia disk ...`: PENDING, being written (replace this whole file). qemu-img's subcommands.

mod wrap;

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Make a VMDK whose flat extent is an ISO file (nothing copied)
    WrapIso(wrap::Args),
}

pub fn run(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DiskCommand::WrapIso(a) => wrap::run(a),
    }
}
