//! `vmedia disk compare`: qemu-img compare (exit 0 identical, 1 different, 2 error).

use std::path::PathBuf;
use std::process::ExitCode;

use vmedia_disk::compare::{compare, CompareOutcome};

use super::{parse_format, RefArgs};
use crate::progress::Bar;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk compare disk.raw disk.qcow2\n  vmedia disk compare -f qcow2 -F vmdk -s a.qcow2 b.vmdk\n  vmedia disk compare --object secret,id=a,file=pa --object secret,id=b,file=pb x.qcow2 y.qcow2\n\nExit codes: 0 identical, 1 different, 2 an image could not be read."
)]
pub struct Args {
    /// Format of the first image
    #[arg(short = 'f', value_name = "FMT")]
    format_a: Option<String>,
    /// Format of the second image
    #[arg(short = 'F', value_name = "FMT")]
    format_b: Option<String>,
    /// Strict: sizes and allocation must match too
    #[arg(short = 's')]
    strict: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    progress: bool,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    refs: RefArgs,
    #[command(flatten)]
    bare: super::BareSizeArg,
    first: PathBuf,
    second: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match run_inner(&a) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("vmedia: error: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

fn run_inner(a: &Args) -> anyhow::Result<ExitCode> {
    a.bare.apply()?;
    let img_a = super::open_data_image(
        &a.first,
        &a.refs.open_options(parse_format(a.format_a.as_deref())?)?,
    )?;
    let img_b = super::open_data_image(
        &a.second,
        &a.refs.open_options(parse_format(a.format_b.as_deref())?)?,
    )?;
    if !a.strict && !a.quiet && img_a.virtual_size() != img_b.virtual_size() {
        println!("Warning: Image size mismatch!");
    }
    let bar = Bar::bytes(!a.progress);
    let outcome = compare(img_a.as_ref(), img_b.as_ref(), a.strict, &bar)?;
    bar.finish();
    let (msg, code) = match outcome {
        CompareOutcome::Identical => ("Images are identical.".to_string(), 0),
        CompareOutcome::ContentMismatch(at) => (format!("Content mismatch at offset {at}!"), 1),
        CompareOutcome::SizeMismatch => ("Strict mode: Image size mismatch!".to_string(), 1),
        CompareOutcome::StatusMismatch(at) => (
            format!("Strict mode: Offset {at} block status mismatch!"),
            1,
        ),
    };
    if !a.quiet {
        println!("{msg}");
    }
    Ok(ExitCode::from(code))
}
