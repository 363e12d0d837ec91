//! `vmedia iso esp`: a FAT EFI system partition image from a folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmedia_fat::{FatImage, FatOptions, FatType};
use vmedia_io::{AtomicFile, OverwritePolicy};

use crate::progress::Bar;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia iso esp ./esp-tree -o esp.img
  vmedia iso esp ./esp-tree -o esp.img --label EFI --date 2024-01-01 --json
  vmedia iso esp ./esp-tree -o esp.img --size 64M --fat-type 32 --force
  SOURCE_DATE_EPOCH=1700000000 vmedia iso esp ./esp-tree -o esp.img

The tree is copied as is: put the loader at EFI/BOOT/BOOTX64.EFI for removable-media boot.
Without --size the image is the smallest FAT12/16/32 volume holding the tree plus 1/8 (at least
256 KiB) free space. With --date (or SOURCE_DATE_EPOCH) every timestamp and the serial number
come from that date, so the same tree always gives the same bytes.")]
pub struct Args {
    /// Folder whose contents become the volume's root
    source: PathBuf,
    /// Image file to write
    #[arg(short, long)]
    output: PathBuf,
    /// Volume label (up to 11 characters)
    #[arg(long, default_value = "EFI")]
    label: String,
    /// Exact image size: bytes or with a K/M/G suffix (binary units)
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// FAT type: 12, 16 or 32 (default: whichever gives the smallest image)
    #[arg(long)]
    fat_type: Option<FatType>,
    /// Timestamp for every entry: Unix seconds (@ optional), or YYYY-MM-DD[THH:MM[:SS]][Z] in UTC
    /// (default: $SOURCE_DATE_EPOCH, else each file's own time)
    #[arg(long, value_parser = parse_date)]
    date: Option<i64>,
    /// Volume serial number in hex, e.g. 1234ABCD (default: derived from --date)
    #[arg(long, value_parser = parse_serial)]
    volume_id: Option<u32>,
    /// Replace the output file if it exists
    #[arg(long)]
    force: bool,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let date = match args.date {
        Some(d) => Some(d),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => Some(
                v.trim()
                    .parse::<i64>()
                    .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not Unix seconds"))?,
            ),
            Err(_) => None,
        },
    };
    let opts = FatOptions {
        label: Some(args.label.clone()),
        volume_id: args.volume_id,
        date,
        size: args.size,
        fat_type: args.fat_type,
    };
    let plan = FatImage::plan(&args.source, &opts)
        .with_context(|| format!("planning a FAT image of {}", args.source.display()))?;
    let policy = if args.force {
        OverwritePolicy::Replace
    } else {
        OverwritePolicy::Refuse
    };
    let out = AtomicFile::create(&args.output, policy)?;
    let bar = Bar::bytes(args.quiet || args.json);
    let summary = plan
        .write_to_file(out.file(), &bar)
        .with_context(|| format!("writing {}", args.output.display()))?;
    bar.finish();
    out.commit()
        .with_context(|| format!("saving {}", args.output.display()))?;
    if args.json {
        crate::print_json(&summary)?;
    } else {
        println!(
            "{}: {:?}, {} bytes, {} files in {} folders, {} of {} clusters of {} bytes free, serial {:04X}-{:04X}, label {}",
            args.output.display(),
            summary.fat_type,
            summary.size_bytes,
            summary.files,
            summary.directories,
            summary.free_clusters,
            summary.cluster_count,
            summary.cluster_bytes,
            summary.volume_id >> 16,
            summary.volume_id & 0xFFFF,
            summary.label
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        _ => return Err(format!("unknown size unit {unit:?} (use K, M or G)")),
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_serial(text: &str) -> Result<u32, String> {
    let hex: String = text.chars().filter(|&c| c != '-').collect();
    u32::from_str_radix(hex.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{text:?} is not a hex serial like 1234-ABCD"))
}

/// `--date`, with the one parser every command shares (`vmedia_iso::date::parse_date`, whose
/// doc lists the accepted forms).
fn parse_date(text: &str) -> Result<i64, String> {
    vmedia_iso::date::parse_date(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1474560"), Ok(1_474_560));
        assert!(parse_size("3X").is_err());
    }

    #[test]
    fn dates_parse_in_utc() {
        assert_eq!(parse_date("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_date("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(parse_date("1970-01-02"), Ok(86_400));
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn serials_parse_as_hex() {
        assert_eq!(parse_serial("1234-ABCD"), Ok(0x1234_ABCD));
        assert!(parse_serial("xyz").is_err());
    }
}
