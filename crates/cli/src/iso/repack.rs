//! `vmedia iso repack`: add and remove files in an existing image and write a new one that
//! boots like the original. The work is `vmedia_iso::repack`; this file maps the flags to its
//! options and prints the report.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use vmedia_io::ReadAt;
use vmedia_iso::read::{IsoImage, OpenOptions};
use vmedia_iso::repack::{Addition, RepackError, RepackOptions};

use super::output::{split_assignment, OutputArgs, StampArgs};
use crate::progress::Bar;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia iso repack in.iso --add /extra.txt=./extra.txt -o out.iso
  vmedia iso repack in.iso --add /preseed/=./preseed.cfg --remove /pool/old -o out.iso --force
  vmedia iso repack in.iso --add boot/grub/grub.cfg=./grub.cfg -o out.iso

Keeps the El Torito entries (boot info tables and GRUB2 boot info re-patched for the new
addresses), the isohybrid or GRUB MBR, the GPT and appended partitions. A trailing '/' on
ISO_PATH keeps the host file's own name. Exit codes: 0 written, 1 failure, 2 usage error.")]
pub struct Args {
    /// The image to start from (never modified).
    #[arg(value_name = "IN.iso")]
    input: PathBuf,
    /// Add (or replace) a file or folder: ISO_PATH=HOST_PATH; repeatable.
    #[arg(long, value_name = "ISO_PATH=HOST_PATH")]
    add: Vec<OsString>,
    /// Remove a file or folder (with everything below it); repeatable.
    #[arg(long, value_name = "ISO_PATH")]
    remove: Vec<String>,
    /// New volume label (default: keep the original).
    #[arg(long, short = 'V', value_name = "LABEL")]
    volume_id: Option<String>,
    #[command(flatten)]
    stamp: StampArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (out, policy) = args.out.prepare()?;
    let additions = args
        .add
        .iter()
        .map(parse_addition)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = RepackOptions {
        input: args.input.clone(),
        additions,
        removals: args.remove.clone(),
        volume_id: args.volume_id.clone(),
        date: args.stamp.date()?,
        integrity: args.stamp.integrity(),
        durability: args.out.durability(),
    };
    let file =
        File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let source: Arc<dyn ReadAt> = Arc::new(file);
    let image = IsoImage::open(source, OpenOptions::default())
        .with_context(|| format!("{} is not a readable ISO image", args.input.display()))?;
    let bar = Bar::bytes(args.out.hide_progress());
    let result = vmedia_iso::repack::repack(&image, &options, &out, policy, &bar);
    bar.finish();
    let report = result.map_err(|e| match e {
        RepackError::Write(e) => {
            anyhow::Error::new(e).context(format!("cannot write {}", out.display()))
        }
        other => other.into(),
    })?;
    args.out.print_report(&report)
}

/// `--add ISO_PATH=HOST_PATH`, split at the first unescaped '='.
fn parse_addition(word: &OsString) -> anyhow::Result<Addition> {
    let (iso, host) = split_assignment(word);
    let host = match host {
        Some(host) if !host.is_empty() && !iso.is_empty() => host,
        _ => bail!(
            "--add {}: expected ISO_PATH=HOST_PATH",
            word.to_string_lossy()
        ),
    };
    let iso_path = String::from_utf8(iso).with_context(|| {
        format!(
            "--add {}: the ISO path is not UTF-8",
            word.to_string_lossy()
        )
    })?;
    Ok(Addition {
        iso_path,
        host_path: PathBuf::from(OsString::from_vec(host)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addition_needs_both_sides() {
        assert!(parse_addition(&OsString::from("/x")).is_err());
        assert!(parse_addition(&OsString::from("=/etc/hostname")).is_err());
    }
}
