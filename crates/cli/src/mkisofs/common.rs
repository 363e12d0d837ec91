//! Helpers the ISO-making commands share (`mkisofs`, `iso create`, `iso seed`, `iso repack`):
//! dates, sort files, pathspec placement, writing with a progress bar, the summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use vmedia_io::OverwritePolicy;
use vmedia_iso::spec::{IsoSpec, SortRule};
use vmedia_iso::write::{write_image, WriteReport};

use crate::progress::Bar;

/// Largest `-sort` file read; a sort file lists boot files, not millions of paths.
const MAX_SORT_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// `SOURCE_DATE_EPOCH` from the environment (reproducible builds), when set.
pub fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("SOURCE_DATE_EPOCH is not valid UTF-8"),
    }
}

/// Parses `--date` with the one parser every command shares (`vmedia_iso::date::parse_date`,
/// whose doc lists the accepted forms).
pub fn parse_date(text: &str) -> anyhow::Result<i64> {
    Ok(vmedia_iso::date::parse_date(text)?)
}

/// Reads a mkisofs `-sort` file: `PATH WEIGHT` per line (the weight is the last word, so
/// paths may hold spaces); higher weights are written first.
pub fn read_sort_file(path: &Path) -> anyhow::Result<Vec<SortRule>> {
    let meta = std::fs::metadata(path).with_context(|| format!("sort file {}", path.display()))?;
    if meta.len() > MAX_SORT_FILE_BYTES {
        bail!(
            "sort file {}: {} bytes is over the {MAX_SORT_FILE_BYTES}-byte limit",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("sort file {} (must be UTF-8 text)", path.display()))?;
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((pattern, weight)) = line.rsplit_once(char::is_whitespace) else {
            bail!(
                "sort file {} line {}: expected `PATH WEIGHT`",
                path.display(),
                index + 1
            );
        };
        let weight: i32 = weight.parse().with_context(|| {
            format!(
                "sort file {} line {}: weight {weight:?} is not a number",
                path.display(),
                index + 1
            )
        })?;
        rules.push(SortRule {
            pattern: pattern.trim_end().to_string(),
            weight,
        });
    }
    Ok(rules)
}

/// The writer's absolute form of a user ISO path (the one rule lives in vmedia-iso).
pub use vmedia_iso::spec::absolute_iso_path;

/// Writes `spec` to `out` with a progress bar on stderr (hidden when `quiet` or not a terminal).
pub fn write_with_bar(
    spec: &IsoSpec,
    out: &Path,
    policy: OverwritePolicy,
    quiet: bool,
) -> anyhow::Result<WriteReport> {
    let bar = Bar::bytes(quiet);
    let result = write_image(spec, out, policy, &bar);
    bar.finish();
    // "make", not "write": the failing step may be reading a source file, which the cause names.
    result.with_context(|| format!("cannot make {}", out.display()))
}

/// The human summary printed after writing (stderr for mkisofs, which keeps stdout clean
/// like its peers; stdout for native commands).
pub fn summary(report: &WriteReport) -> String {
    let mut s = format!(
        "{}: {} sectors ({} bytes), {} files, {} folders",
        report.path.display(),
        report.sectors,
        report.bytes,
        report.files,
        report.directories
    );
    for entry in &report.boot_entries {
        s.push_str(&format!(
            "\n  boot {:?}: image at LBA {}, {} bytes, load {} sectors",
            entry.platform, entry.image_lba, entry.image_bytes, entry.load_sectors
        ));
    }
    for part in &report.partitions {
        s.push_str(&format!(
            "\n  {} partition {}: type {}, start {}, {} sectors{}",
            part.table,
            part.number,
            part.part_type,
            part.start_sector,
            part.sectors,
            if part.bootable { ", bootable" } else { "" }
        ));
    }
    if let Some(integrity) = &report.integrity {
        if let Some(md5) = &integrity.md5 {
            s.push_str(&format!("\n  md5 (checkisomd5): {md5}"));
        }
        if let Some(sha) = &integrity.sha256 {
            s.push_str(&format!("\n  sha256: {sha}"));
        }
        if integrity.signed {
            s.push_str("\n  signed (ed25519)");
        }
    }
    s
}

/// The output path given by the user, checked to have a file name.
pub fn output_path(path: &Path) -> anyhow::Result<PathBuf> {
    if path.file_name().is_none() {
        bail!("output {} is not a file name", path.display());
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_accepts_seconds_and_calendar_times() {
        assert_eq!(parse_date("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_date("@5").unwrap(), 5);
        assert_eq!(parse_date("1970-01-02").unwrap(), 86_400);
        assert_eq!(parse_date("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert_eq!(parse_date("2000-03-01 00:00").unwrap(), 951_868_800);
    }

    #[test]
    fn date_rejects_out_of_range_fields() {
        assert!(parse_date("2023-13-01").is_err());
        assert!(parse_date("2023-01-01T25:00:00").is_err());
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn iso_paths_become_absolute() {
        assert_eq!(absolute_iso_path("boot/grub"), "/boot/grub");
        assert_eq!(absolute_iso_path("/boot//grub/"), "/boot/grub/");
        assert_eq!(absolute_iso_path("/"), "/");
        assert_eq!(absolute_iso_path("./x"), "/x");
    }

    #[test]
    fn sort_file_weight_is_the_last_word() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sort");
        std::fs::write(&file, "/src/my file 10\n\n# c\n/src/b -3\n").unwrap();
        let rules = read_sort_file(&file).unwrap();
        assert_eq!(
            rules[0],
            SortRule {
                pattern: "/src/my file".into(),
                weight: 10
            }
        );
        assert_eq!(rules[1].weight, -3);
        std::fs::write(&file, "/src/nope\n").unwrap();
        assert!(read_sort_file(&file).is_err());
    }
}
