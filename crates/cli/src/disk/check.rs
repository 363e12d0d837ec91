//! `vmedia disk check`: metadata consistency (qemu-img check exit codes: 0 clean, 1 check could
//! not run, 2 corruptions, 3 leaks only, 63 format without checks).

use std::path::PathBuf;
use std::process::ExitCode;

use vmedia_disk::DiskError;

use super::{parse_format, print_json, OutputFormat, RefArgs};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk check disk.qcow2\n  vmedia disk check --output json disk.qcow2\n\nExit codes: 0 no errors, 1 the check could not run, 2 corruptions found, 3 only leaked clusters, 63 the format has no checks."
)]
pub struct Args {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// human or json
    #[arg(long = "output", value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Repair: vmedia checks only; it refuses -r rather than pretend to repair
    #[arg(short = 'r', value_name = "leaks|all")]
    repair: Option<String>,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    refs: RefArgs,
    file: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(mode) = &a.repair {
        eprintln!("vmedia: error: -r {mode}: vmedia disk check does not repair images; copy the data with `vmedia disk convert` instead");
        return Ok(ExitCode::from(1));
    }
    let mut opts = a.refs.open_options(parse_format(a.format.as_deref())?)?;
    opts.skip_backing = true;
    let img = match vmedia_disk::image::open(&a.file, &opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vmedia: error: Could not open '{}': {e}", a.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    let report = match img.check(&vmedia_io::NoProgress) {
        Ok(r) => r,
        Err(DiskError::NotSupportedFor { .. }) => {
            eprintln!("vmedia: error: This image format does not support checks");
            return Ok(ExitCode::from(63));
        }
        Err(e) => {
            eprintln!("vmedia: error: Check failed: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if !a.quiet {
        match a.output {
            OutputFormat::Json => print_json(&report)?,
            OutputFormat::Human => {
                for m in &report.messages {
                    eprintln!("{m}");
                }
                if report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0 {
                    println!("No errors were found on the image.");
                }
                if report.corruptions > 0 {
                    println!("\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.", report.corruptions);
                }
                if report.leaks > 0 {
                    println!("\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.", report.leaks);
                }
                if let Some(total) = report.total_clusters {
                    let alloc = report.allocated_clusters.unwrap_or(0);
                    let pct = |n: u64| {
                        if alloc == 0 {
                            0.0
                        } else {
                            n as f64 * 100.0 / alloc as f64
                        }
                    };
                    println!(
                        "{alloc}/{total} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                        alloc as f64 * 100.0 / total as f64,
                        pct(report.fragmented_clusters.unwrap_or(0)),
                        pct(report.compressed_clusters.unwrap_or(0))
                    );
                }
                if let Some(end) = report.image_end_offset {
                    println!("Image end offset: {end}");
                }
            }
        }
    }
    Ok(ExitCode::from(
        if report.corruptions > 0 || report.check_errors > 0 {
            2
        } else if report.leaks > 0 {
            3
        } else {
            0
        },
    ))
}
