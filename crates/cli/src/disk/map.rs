//! `vmedia disk map`: qemu-img map, human or JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{parse_format, parse_size, OutputArg, OutputFormat, RefArgs};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk map disk.qcow2\n  vmedia disk map --output json overlay.qcow2\n\nJSON entries: start, length, depth (layer of the chain), present, zero, data, offset (in the file)."
)]
pub struct Args {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    /// First guest byte to map
    #[arg(long = "start-offset", value_name = "OFFSET")]
    start_offset: Option<String>,
    /// Guest bytes to map
    #[arg(long = "max-length", value_name = "LEN")]
    max_length: Option<String>,
    #[command(flatten)]
    refs: RefArgs,
    file: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let img = super::open_image(
        &a.file,
        &a.refs.open_options(parse_format(a.format.as_deref())?)?,
    )?;
    let start = a
        .start_offset
        .as_deref()
        .map(parse_size)
        .transpose()?
        .unwrap_or(0);
    let len = a
        .max_length
        .as_deref()
        .map(parse_size)
        .transpose()?
        .unwrap_or(u64::MAX);
    let entries = vmedia_disk::map::map(img.as_ref(), start, len)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match a.output.format() {
        OutputFormat::Json => vmedia_disk::map::write_qemu_json(&entries, &mut out)?,
        OutputFormat::Human => {
            writeln!(
                out,
                "{:<16}{:<16}{:<16}File",
                "Offset", "Length", "Mapped to"
            )?;
            for e in entries.iter().filter(|e| e.data && e.offset.is_some()) {
                writeln!(
                    out,
                    "{:<#16x}{:<#16x}{:<#16x}{}",
                    e.start,
                    e.length,
                    e.offset.unwrap_or(0),
                    e.file
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
