//! `vmedia disk commit`, `rebase`, `resize`: in-place changes to existing images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmedia_disk::modify;

use super::{parse_format, RefArgs};
use crate::progress::Bar;
use vmedia_io::Progress;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk commit overlay.qcow2\n  vmedia disk commit -d -b base.qcow2 top.qcow2\n  vmedia disk commit disk-000002.vmdk      (VMware snapshot delta into its parent)\n  vmedia disk commit child.vhdx\n\nWorks for qcow2, VMDK (hosted sparse and flat; streamOptimized is refused), VHD and VHDX\nchains, and across formats (a qcow2 overlay over a VMDK base). Commits into the direct\nbacking file unless -b names a deeper one (-b implies -d); the overlay is emptied\nafterwards unless -d is given. The changed base gets a new content id (VMDK CID and\nlongContentID, VHDX DataWriteGuid) and the image above it is re-linked to it, so qemu and\nVMware keep reading the chain."
)]
pub struct CommitArgs {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// The backing file to commit into (default: the direct backing file)
    #[arg(short = 'b', value_name = "BASE")]
    base: Option<PathBuf>,
    /// Keep the overlay's data (do not empty it)
    #[arg(short = 'd')]
    keep: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    progress: bool,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    refs: RefArgs,
    file: PathBuf,
}

pub fn run_commit(a: CommitArgs) -> anyhow::Result<ExitCode> {
    let opts = a.refs.open_options(parse_format(a.format.as_deref())?)?;
    let bar = Bar::bytes(!a.progress || a.quiet);
    bar.phase("committing");
    modify::commit(&a.file, a.base.as_deref(), !a.keep, &opts, &bar)
        .with_context(|| format!("commit of {}", a.file.display()))?;
    bar.finish();
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk rebase -b new-base.qcow2 -F qcow2 overlay.qcow2\n  vmedia disk rebase -u -b moved/base.qcow2 overlay.qcow2\n  vmedia disk rebase -b base.vmdk top.vmdk        (skip the middle delta)\n  vmedia disk rebase -b \"\" overlay.qcow2      (make it standalone)\n\nSafe mode copies every range where the old and new backing files differ into the overlay,\nso the guest sees the same data; -u only rewrites the reference. VMDK deltas record the\nnew parent's CID with its name (the name must fit the descriptor's reserved sectors); VHD\nand VHDX record the parent's identity and locators. A parent must have the overlay's\nformat, except under qcow2."
)]
pub struct RebaseArgs {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// The new backing file ("" for none)
    #[arg(short = 'b', value_name = "BACKING", required = true)]
    backing: String,
    /// Format of the new backing file
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// Unsafe: only change the recorded name, copy nothing
    #[arg(short = 'u')]
    unsafe_mode: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    progress: bool,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    refs: RefArgs,
    file: PathBuf,
}

pub fn run_rebase(a: RebaseArgs) -> anyhow::Result<ExitCode> {
    let opts = a.refs.open_options(parse_format(a.format.as_deref())?)?;
    let new_fmt = parse_format(a.backing_format.as_deref())?;
    let bar = Bar::bytes(!a.progress || a.quiet);
    bar.phase("rebasing");
    let new_backing = (!a.backing.is_empty()).then_some(a.backing.as_str());
    modify::rebase(&a.file, new_backing, new_fmt, !a.unsafe_mode, &opts, &bar)
        .with_context(|| format!("rebase of {}", a.file.display()))?;
    bar.finish();
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk resize disk.qcow2 +10G\n  vmedia disk resize --shrink disk.raw 1G"
)]
pub struct ResizeArgs {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Allow the size to go down (data past the new end is lost)
    #[arg(long = "shrink")]
    shrink: bool,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    refs: RefArgs,
    file: PathBuf,
    /// New size, or +SIZE / -SIZE relative to the current one
    #[arg(allow_hyphen_values = true)]
    size: String,
}

pub fn run_resize(a: ResizeArgs) -> anyhow::Result<ExitCode> {
    let mut opts = a.refs.open_options(parse_format(a.format.as_deref())?)?;
    opts.skip_backing = true;
    let img = super::open_image(&a.file, &opts)?;
    let current = img.virtual_size();
    drop(img);
    let new_size = if let Some(rest) = a.size.strip_prefix('+') {
        current
            .checked_add(super::parse_size(rest)?)
            .context("size overflow")?
    } else if let Some(rest) = a.size.strip_prefix('-') {
        current
            .checked_sub(super::parse_size(rest)?)
            .context("New image size must be positive")?
    } else {
        super::parse_size(&a.size)?
    };
    if new_size < current && !a.shrink {
        anyhow::bail!("Use the --shrink option to perform a shrink operation.");
    }
    modify::resize(&a.file, new_size, &opts)
        .with_context(|| format!("resize of {}", a.file.display()))?;
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(ExitCode::SUCCESS)
}
