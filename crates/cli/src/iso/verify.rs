//! `vmedia iso verify`: checks an image's embedded MD5 (isomd5sum), SHA-256 and signature.

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmedia_iso::integrity::{self, CheckOutcome, IntegrityError, VerifyReport};
use vmedia_iso::report::{VerifyDocument, VerifyFailure};

use crate::progress::Bar;

/// Exit code when every present check passed.
const EXIT_OK: u8 = 0;
/// Exit code when a check failed (or the image is truncated).
const EXIT_MISMATCH: u8 = 1;
/// Exit code when the image carries nothing to verify.
const EXIT_NOTHING: u8 = 3;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia iso verify distro.iso
  vmedia iso verify signed.iso --key release.pub
  vmedia iso verify distro.iso --json

Checks, when the image carries them:
  md5        isomd5sum's implanted MD5 (what checkisomd5 and installer media checks verify),
             with its fragment checkpoints, which locate damage to a twentieth of the image
  sha256     vmedia's SHA-256 of the whole image file
  signature  vmedia's ed25519 signature of that SHA-256; checked with --key (a PEM public key
             from `openssl pkey -pubout`, or 64 hex digits). With --key a missing signature fails.

Exit codes: 0 every present check passed; 1 a check failed (expected and actual are printed)
or the image is truncated; 2 usage error; 3 the image carries no checksum to verify.")]
pub struct Args {
    /// The ISO image (or block device)
    image: PathBuf,
    /// ed25519 public key to check the signature with
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = args
        .key
        .as_deref()
        .map(integrity::load_verifying_key)
        .transpose()
        .context("loading the public key")?;
    let file =
        File::open(&args.image).with_context(|| format!("opening {}", args.image.display()))?;
    let bar = Bar::bytes(args.quiet || args.json);
    let outcome = integrity::verify(&file, key.as_ref(), &bar);
    bar.finish();
    let report = match outcome {
        Ok(report) => report,
        Err(err @ IntegrityError::Truncated { .. }) => {
            if args.json {
                // One line, as this document has always been printed.
                let failure = VerifyFailure::new(args.image.clone(), &err);
                println!("{}", serde_json::to_value(&failure)?);
            } else {
                println!("{}: FAILED: {err}", args.image.display());
            }
            return Ok(ExitCode::from(EXIT_MISMATCH));
        }
        Err(err) => return Err(err).with_context(|| format!("verifying {}", args.image.display())),
    };
    let code = exit_code(&report);
    if args.json {
        super::read::print_json(&VerifyDocument {
            image: args.image.clone(),
            ok: code == EXIT_OK,
            report,
        })?;
    } else {
        print_report(&args.image, &report, code);
    }
    Ok(ExitCode::from(code))
}

fn exit_code(report: &VerifyReport) -> u8 {
    if report.any_mismatch() {
        EXIT_MISMATCH
    } else if !report.anything_checked() {
        EXIT_NOTHING
    } else {
        EXIT_OK
    }
}

fn print_report(image: &std::path::Path, report: &VerifyReport, code: u8) {
    println!("{}:", image.display());
    line("md5", &report.md5);
    line("fragments", &report.fragments);
    if let Some(bad) = &report.first_bad_fragment {
        println!(
            "  {:<10} first damaged fragment {} (the damage lies before byte {:#x})",
            "", bad.index, bad.checkpoint_offset
        );
    }
    line("sha256", &report.sha256);
    line("signature", &report.signature);
    let verdict = match code {
        EXIT_OK => "OK: every embedded check passed",
        EXIT_NOTHING => "NOTHING TO VERIFY: the image carries no embedded checksum",
        _ => "FAILED: the image does not match its embedded checks",
    };
    println!("{verdict}");
}

fn line(name: &str, outcome: &CheckOutcome) {
    match outcome {
        CheckOutcome::Absent => println!("  {name:<10} absent"),
        CheckOutcome::Ok => println!("  {name:<10} ok"),
        CheckOutcome::Mismatch { expected, actual } => {
            println!("  {name:<10} MISMATCH");
            println!("  {:<10}   expected {expected}", "");
            println!("  {:<10}   actual   {actual}", "");
        }
        CheckOutcome::Unchecked { reason } => {
            println!("  {name:<10} present, not checked: {reason}")
        }
    }
}
