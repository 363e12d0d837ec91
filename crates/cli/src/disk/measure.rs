//! `vmedia disk measure`: qemu-img measure (bytes a new image needs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use vmedia_disk::factory;
use vmedia_disk::image::{CreateOptions, Format};

use super::{
    parse_format, parse_o_options, parse_size, print_json, OutputArg, OutputFormat, RefArgs,
};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk measure -O qcow2 --size 100G\n  vmedia disk measure -O qcow2 --output json disk.raw"
)]
pub struct Args {
    /// Format of the source image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Format to measure for (default raw)
    #[arg(short = 'O', value_name = "OUTPUT_FMT")]
    output_format: Option<String>,
    /// Options of the output format
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Measure an empty image of this size instead of a source
    #[arg(long = "size", value_name = "SIZE")]
    size: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    #[command(flatten)]
    refs: RefArgs,
    file: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let out_format = parse_format(a.output_format.as_deref())?.unwrap_or(Format::Raw);
    let mut opts = CreateOptions::new(out_format, 0);
    parse_o_options(&a.options, &mut opts)?;
    let source = match (&a.file, &a.size) {
        (Some(_), Some(_)) => bail!("--size N cannot be used together with a filename"),
        (None, None) => bail!("Either --size N or one filename must be specified"),
        (Some(f), None) => Some(super::open_image(
            f,
            &a.refs.open_options(parse_format(a.format.as_deref())?)?,
        )?),
        (None, Some(s)) => {
            opts.virtual_size = parse_size(s)?;
            None
        }
    };
    if let Some(s) = &source {
        opts.virtual_size = s.virtual_size();
    }
    let m = factory::measure(&opts, source.as_deref())?;
    // qemu-img reports persistent bitmaps when both formats carry them (qcow2 to qcow2);
    // vmedia copies no bitmaps, so their size is 0.
    let bitmaps = (out_format == Format::Qcow2
        && source.as_ref().is_some_and(|s| s.format() == Format::Qcow2))
    .then_some(m.bitmaps);
    match a.output.format() {
        OutputFormat::Json => print_json(&vmedia_disk::image::MeasureReport::new(
            &m,
            bitmaps.is_some(),
        ))?,
        OutputFormat::Human => {
            println!("required size: {}", m.required);
            println!("fully allocated size: {}", m.fully_allocated);
            if let Some(b) = bitmaps {
                println!("bitmaps size: {b}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
