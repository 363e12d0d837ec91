//! What the image-making commands (`iso create`, `iso repack`, `iso seed`) share: the output
//! flags and report, the reproducibility and integrity flags, and `ISO_PATH=SRC` splitting.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use vmedia_io::{Durability, OverwritePolicy};
use vmedia_iso::spec::{IntegritySpec, IsoSpec};
use vmedia_iso::write::WriteReport;

use crate::mkisofs::common;

/// Where the image goes and how the result is reported.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// The image to write.
    #[arg(short, long, value_name = "OUT.iso")]
    pub output: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Flush the image to stable storage before renaming it into place (also VMEDIA_SYNC=1).
    /// Without it the image still appears only when complete, as with genisoimage and xorriso.
    #[arg(long)]
    pub sync: bool,
}

impl OutputArgs {
    /// The output path and overwrite policy. Refuses an existing output at once, before any
    /// long work (an ESP build, a scan), since native commands never overwrite without --force.
    pub fn prepare(&self) -> anyhow::Result<(PathBuf, OverwritePolicy)> {
        let out = common::output_path(&self.output)?;
        let policy = if self.force {
            OverwritePolicy::Replace
        } else {
            OverwritePolicy::Refuse
        };
        if policy == OverwritePolicy::Refuse && out.symlink_metadata().is_ok() {
            bail!(
                "{} already exists; pass --force to replace it",
                out.display()
            );
        }
        Ok((out, policy))
    }

    /// Writes the image (progress bar on stderr) and prints the report: JSON, a summary, or
    /// nothing with --quiet.
    pub fn write(
        &self,
        mut spec: IsoSpec,
        out: &std::path::Path,
        policy: OverwritePolicy,
    ) -> anyhow::Result<ExitCode> {
        spec.durability = self.durability();
        let report = common::write_with_bar(&spec, out, policy, self.hide_progress())?;
        self.print_report(&report)
    }

    /// Whether the image is flushed before it is renamed into place (--sync or VMEDIA_SYNC).
    pub fn durability(&self) -> Durability {
        crate::env::durability(self.sync)
    }

    /// Whether the progress bar is hidden.
    pub fn hide_progress(&self) -> bool {
        self.quiet || self.json
    }

    /// Prints the report of a written image: JSON, a summary, or nothing with --quiet.
    pub fn print_report(&self, report: &WriteReport) -> anyhow::Result<ExitCode> {
        if self.json {
            crate::print_json(report)?;
        } else if !self.quiet {
            println!("{}", common::summary(report));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Reproducible dates and the embedded checksums and signature (on by default).
#[derive(clap::Args)]
pub struct StampArgs {
    /// Reproducible build time: Unix seconds (@ optional) or YYYY-MM-DD[THH:MM[:SS]][Z] UTC
    /// (default: SOURCE_DATE_EPOCH when set).
    #[arg(long)]
    pub date: Option<String>,
    /// ed25519 private key (PKCS#8 PEM) to sign the image with.
    #[arg(long, value_name = "KEY.pem")]
    pub sign_key: Option<PathBuf>,
    /// Do not embed MD5 (checkisomd5) and SHA-256 checksums.
    #[arg(long, conflicts_with = "sign_key")]
    pub no_integrity: bool,
}

impl StampArgs {
    /// Sets the spec's date (flag, else SOURCE_DATE_EPOCH) and integrity.
    pub fn apply(&self, spec: &mut IsoSpec) -> anyhow::Result<()> {
        spec.date = self.date()?;
        spec.integrity = self.integrity();
        Ok(())
    }

    /// The build time: --date, else SOURCE_DATE_EPOCH, else none (now).
    pub fn date(&self) -> anyhow::Result<Option<i64>> {
        match &self.date {
            Some(text) => Ok(Some(common::parse_date(text)?)),
            None => common::source_date_epoch(),
        }
    }

    /// The embedded checksums and signature asked for.
    pub fn integrity(&self) -> IntegritySpec {
        IntegritySpec {
            md5: !self.no_integrity,
            sha256: !self.no_integrity,
            signing_key: self.sign_key.clone(),
        }
    }
}

/// Splits `ISO_PATH=SRC` at the first unescaped '='; on both sides `\=` and `\\` stand for a
/// '=' and a '\'. Returns the ISO side and, when there was a '=', the source side.
pub fn split_assignment(word: &OsStr) -> (Vec<u8>, Option<Vec<u8>>) {
    let bytes = word.as_bytes();
    let mut iso = Vec::new();
    let mut src: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes[i] == b'\\' && matches!(bytes.get(i + 1), Some(b'=' | b'\\'));
        if !escaped && bytes[i] == b'=' && src.is_none() {
            src = Some(Vec::new());
            i += 1;
            continue;
        }
        let (byte, step) = if escaped {
            (bytes[i + 1], 2)
        } else {
            (bytes[i], 1)
        };
        src.as_mut().unwrap_or(&mut iso).push(byte);
        i += step;
    }
    (iso, src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_splits_at_the_first_unescaped_equals() {
        let (iso, src) = split_assignment(OsStr::new(r"boot/a\=b=src=x"));
        assert_eq!(iso, b"boot/a=b");
        assert_eq!(src.as_deref(), Some(&b"src=x"[..]));
    }

    #[test]
    fn assignment_without_equals_has_no_source() {
        let (iso, src) = split_assignment(OsStr::new(r"tree\\x"));
        assert_eq!(iso, br"tree\x");
        assert!(src.is_none());
    }

    #[test]
    fn assignment_keeps_an_empty_source() {
        assert_eq!(split_assignment(OsStr::new("boot=")).1, Some(Vec::new()));
    }
}
