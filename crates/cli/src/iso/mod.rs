//! `vmedia iso ...`: the ISO subcommands; each lives in its own file.

mod create;
mod esp;
mod output;
mod read;
mod repack;
mod seed;
mod verify;

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum IsoCommand {
    /// Make an ISO image from folders (Joliet, Rock Ridge, El Torito, hybrid, checksums)
    Create(Box<create::Args>),
    /// Show volume descriptors, boot entries, partitions and embedded checksums
    Info(read::InfoArgs),
    /// List files in an image
    Ls(read::LsArgs),
    /// Extract files from an image into a folder
    Extract(read::ExtractArgs),
    /// Write one file of an image to stdout
    Cat(read::CatArgs),
    /// Copy an optical drive or block device to an image file
    Rip(read::RipArgs),
    /// Check embedded MD5, SHA-256 and signature
    Verify(verify::Args),
    /// Make a cloud-init NoCloud seed image (volume "cidata")
    Seed(seed::Args),
    /// Add or remove files in an existing image, keeping its boot setup
    Repack(repack::Args),
    /// Make a FAT EFI system partition image from a folder
    Esp(esp::Args),
}

pub fn run(cmd: IsoCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IsoCommand::Create(a) => create::run(*a),
        IsoCommand::Info(a) => read::run_info(a),
        IsoCommand::Ls(a) => read::run_ls(a),
        IsoCommand::Extract(a) => read::run_extract(a),
        IsoCommand::Cat(a) => read::run_cat(a),
        IsoCommand::Rip(a) => read::run_rip(a),
        IsoCommand::Verify(a) => verify::run(a),
        IsoCommand::Seed(a) => seed::run(a),
        IsoCommand::Repack(a) => repack::run(a),
        IsoCommand::Esp(a) => esp::run(a),
    }
}
