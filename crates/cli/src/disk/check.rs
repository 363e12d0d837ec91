//! `vmedia disk check`: metadata consistency (qemu-img check exit codes: 0 clean, 1 check could
//! not run, 2 corruptions, 3 leaks only, 63 format without checks).

use std::path::PathBuf;
use std::process::ExitCode;

use vmedia_disk::DiskError;

use super::{parse_format, print_json, OutputArg, OutputFormat, RefArgs};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk check disk.qcow2\n  vmedia disk check --output json disk.qcow2\n  vmedia disk check --target esxi disk.vmdk      (would vSphere import it?)\n  vmedia disk check --target azure --output json disk.vhd\n\nExit codes: 0 no errors, 1 the check could not run, 2 corruptions found (with --target: the\nplatform would refuse the image), 3 only leaked clusters, 63 the format has no checks."
)]
pub struct Args {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    /// Repair qcow2 refcounts: leaks (lower refcounts that are too high) or all (rebuild every
    /// refcount from the metadata and fix the COPIED flags)
    #[arg(short = 'r', value_name = "leaks|all")]
    repair: Option<String>,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    /// Instead of the metadata check, list what a platform would refuse in the image:
    /// esxi (alias vsphere), azure, hyperv (alias hyper-v). Exit 2 when it would be refused
    #[arg(long = "target", value_name = "TARGET")]
    target: Option<String>,
    #[command(flatten)]
    refs: RefArgs,
    file: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let repair_all = match a.repair.as_deref() {
        None => None,
        Some("leaks") => Some(false),
        Some("all") => Some(true),
        Some(other) => {
            eprintln!(
                "vmedia: error: Unknown option value for -r (expecting 'leaks' or 'all'): {other}"
            );
            return Ok(ExitCode::from(1));
        }
    };
    let mut opts = a.refs.open_options(parse_format(a.format.as_deref())?)?;
    opts.skip_backing = true;
    let img = match vmedia_disk::factory::open(&a.file, &opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vmedia: error: Could not open '{}': {e}", a.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(name) = a.target.as_deref() {
        return check_target(img.as_ref(), name, a.output.format(), a.quiet);
    }
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
    let mut report = report;
    if let Some(all) = repair_all {
        if report.corruptions > 0 || report.leaks > 0 {
            if img.format() != vmedia_disk::Format::Qcow2 {
                eprintln!("vmedia: error: repair is only implemented for qcow2 images");
                return Ok(ExitCode::from(1));
            }
            drop(img);
            let before = report.clone();
            if let Err(e) = vmedia_disk::qcow2::modify::Qcow2Editor::repair(&a.file, all) {
                eprintln!("vmedia: error: Repair failed: {e}");
                return Ok(ExitCode::from(1));
            }
            let again = match vmedia_disk::factory::open(&a.file, &opts)
                .and_then(|i| i.check(&vmedia_io::NoProgress))
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vmedia: error: Check after repair failed: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let leaks_fixed = before.leaks.saturating_sub(again.leaks);
            let corruptions_fixed = before.corruptions.saturating_sub(again.corruptions);
            if !a.quiet && a.output.format() == OutputFormat::Human {
                for m in &before.messages {
                    eprintln!("{m}");
                }
                println!("The following inconsistencies were found and repaired:\n\n    {leaks_fixed} leaked clusters\n    {corruptions_fixed} corruptions\n\nDouble checking the fixed image now...");
            }
            report = again;
            report.leaks_fixed = leaks_fixed;
            report.corruptions_fixed = corruptions_fixed;
            report.messages.clear();
        }
    }
    if !a.quiet {
        match a.output.format() {
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

/// `--target`: the platform's own rules instead of the metadata check.
fn check_target(
    img: &dyn vmedia_disk::DiskImage,
    name: &str,
    output: OutputFormat,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let target = match vmedia_disk::profile::Target::from_name(name) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("vmedia: error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let report = vmedia_disk::profile::TargetReport::new(img, target);
    if !quiet {
        match output {
            OutputFormat::Json => print_json(&report)?,
            OutputFormat::Human if report.accepted => {
                println!("No problems for {target} were found on the image.")
            }
            OutputFormat::Human => {
                for p in &report.problems {
                    println!(
                        "{target} would refuse the image: {}: {}",
                        p.field, p.message
                    );
                }
            }
        }
    }
    Ok(ExitCode::from(if report.accepted { 0 } else { 2 }))
}
