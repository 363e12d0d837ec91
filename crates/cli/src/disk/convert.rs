//! `vmedia disk convert`: qemu-img convert between any formats, several inputs concatenated,
//! sparse output, parallel compression, progress bar.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmedia_disk::convert::{convert, Concat, ConvertOptions};
use vmedia_disk::factory;
use vmedia_disk::image::{CreateOptions, Format};
use vmedia_disk::profile::{self, Target};

use super::{parse_format, parse_o_options, parse_size, RefArgs};
use crate::progress::Bar;
use vmedia_io::Progress;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk convert -O qcow2 disk.raw disk.qcow2\n  vmedia disk convert -c -O qcow2 -o compression_type=zstd disk.raw small.qcow2\n  vmedia disk convert -p -O vmdk -o subformat=streamOptimized disk.qcow2 disk.vmdk\n  vmedia disk convert -O vmdk /dev/sdb physical.vmdk      (capture a whole disk)\n  vmedia disk convert -O qcow2 -B base.qcow2 -F qcow2 overlay.qcow2 new-overlay.qcow2\n  vmedia disk convert --target azure disk.qcow2 azure.vhd   (fixed VHD, whole MiB)\n  vmedia disk convert --target esxi disk.raw esxi.vmdk     (streamOptimized for vSphere)\n  vmedia disk convert --target hyperv disk.raw hyperv.vhdx\n  vmedia disk convert -O qcow2 --object secret,id=s,file=pass.txt -o encrypt.format=luks,encrypt.key-secret=s disk.raw secret.qcow2\n  vmedia disk convert --secret-file pass.txt -O raw secret.qcow2 disk.raw\n  vmedia disk convert -f sesparse --size 16M -O raw delta-sesparse.vmdk delta.raw   (bare ESXi seSparse extent)\n\nThe output replaces an existing file, as qemu-img does; it appears only when complete.\nReading, compression and writing overlap on all cores (-m limits the threads); -W is\naccepted for compatibility."
)]
pub struct Args {
    /// Format of the inputs (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Output format: raw (default), qcow2, vmdk, vpc (or vhd), vhdx
    #[arg(short = 'O', value_name = "OUTPUT_FMT")]
    output_format: Option<String>,
    /// Output format options (key=value,...)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Compress the output's data clusters (qcow2, streamOptimized vmdk)
    #[arg(short = 'c')]
    compress: bool,
    /// Show a progress bar
    #[arg(short = 'p')]
    progress: bool,
    /// Zero runs at least this long become holes (default 4k; 0 writes every byte)
    #[arg(short = 'S', value_name = "SPARSE_SIZE")]
    sparse_size: Option<String>,
    /// Worker threads (default: all cores)
    #[arg(short = 'm', value_name = "NUM")]
    threads: Option<usize>,
    /// Allow out-of-order writes (vmedia always pipelines; accepted for compatibility)
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Backing file of the output: ranges not allocated in the input's top layer stay unallocated
    #[arg(short = 'B', value_name = "BACKING")]
    backing: Option<String>,
    /// Format of the output's backing file
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// Cache mode of the output: unsafe (default, as qemu-img convert: no flush), writeback,
    /// writethrough, directsync or none (all flush the output to disk before it is renamed)
    #[arg(short = 't', value_name = "CACHE")]
    cache: Option<String>,
    /// Cache mode of the inputs (accepted for compatibility; vmedia reads through the page cache)
    #[arg(short = 'T', value_name = "SRC_CACHE")]
    src_cache: Option<String>,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    /// Make an image the platform imports: esxi (alias vsphere), azure, hyperv (alias hyper-v).
    /// Sets the format and its fields, rounds the size up where the target needs it (the source
    /// reads as zeros past its end), then checks the result; exit 2 if it would be refused
    #[arg(long = "target", value_name = "TARGET")]
    target: Option<String>,
    #[command(flatten)]
    refs: RefArgs,
    #[command(flatten)]
    bare: super::BareSizeArg,
    /// Input images, then the output
    #[arg(required = true, num_args = 2..)]
    files: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    a.bare.apply()?;
    let _ = a.out_of_order;
    let (output, inputs) = match a.files.split_last() {
        Some((o, i)) if !i.is_empty() => (o.clone(), i.to_vec()),
        _ => bail!("Expecting at least one input and an output file"),
    };
    let in_format = parse_format(a.format.as_deref())?;
    let out_format = parse_format(a.output_format.as_deref())?.unwrap_or(Format::Raw);
    let open_opts = a.refs.open_options(in_format)?;
    let mut images = Vec::with_capacity(inputs.len());
    for input in &inputs {
        if std::fs::canonicalize(input)
            .ok()
            .is_some_and(|p| std::fs::canonicalize(&output).ok() == Some(p))
        {
            bail!("{}: the output is also an input", output.display());
        }
        images.push(super::open_data_image(input, &open_opts)?);
    }
    let mut source = Concat::new(&images)?;
    let mut opts = CreateOptions::new(out_format, source.size());
    parse_o_options(&a.options, &mut opts)?;
    let target = a.target.as_deref().map(Target::from_name).transpose()?;
    if let Some(t) = target {
        if a.output_format.is_some() && out_format != t.format() {
            bail!(
                "--target {t} writes {} images; drop -O or use -O {}",
                t.format(),
                t.format()
            );
        }
        opts.format = Format::Raw;
        profile::apply(t, &mut opts).with_context(|| format!("--target {t}"))?;
        source.pad_to(opts.virtual_size)?;
    }
    opts.compress = a.compress;
    opts.secret = a.refs.create_secret(&opts.options)?;
    opts.flush = match a.cache.as_deref() {
        None | Some("unsafe") => false,
        Some("writeback" | "writethrough" | "directsync" | "none") => true,
        Some(other) => bail!("Invalid cache option: {other} (expected none, writeback, writethrough, directsync or unsafe)"),
    };
    if let Some(src) = a.src_cache.as_deref() {
        if !["none", "writeback", "writethrough", "directsync", "unsafe"].contains(&src) {
            bail!("Invalid source cache option: {src}");
        }
    }
    let backing_name = a
        .backing
        .clone()
        .or_else(|| opts.options.remove("backing_file"));
    let backing_fmt = parse_format(
        a.backing_format
            .as_deref()
            .or(opts.options.get("backing_fmt").map(String::as_str)),
    )?;
    opts.options.remove("backing_fmt");
    let mut backing_img = None;
    if let Some(name) = &backing_name {
        // The new backing file must exist and be allowed, as qemu-img checks it.
        let b = factory::open_reference(&output, name, open_opts.format, &open_opts)
            .with_context(|| format!("Could not open backing file '{name}'"))?;
        opts.backing = Some((name.clone(), backing_fmt.or(Some(b.format()))));
        backing_img = Some(b);
    }
    // VHD and VHDX deltas leave every unit that reads the same in the parent unallocated
    // (qemu-img cannot write these deltas at all); qcow2 and VMDK keep qemu's -B layout.
    if let Some(b) = &backing_img {
        if matches!(opts.format, Format::Vhd | Format::Vhdx) {
            source.skip_units_equal_to(b.as_ref());
        }
    }
    let sparse_size = match &a.sparse_size {
        Some(s) => {
            let v = parse_size(s)?;
            if v != 0 && (v % 512 != 0) {
                bail!(
                    "Invalid buffer size for sparse output specified: -S must be a multiple of 512"
                );
            }
            v
        }
        None => 4096,
    };
    let copts = ConvertOptions {
        sparse_size,
        threads: a.threads.unwrap_or(0),
        target_has_backing: backing_name.is_some(),
    };
    let writer = factory::create(&output, &opts)
        .with_context(|| format!("{}: cannot create the output", output.display()))?;
    let bar = Bar::bytes(!a.progress || a.quiet);
    bar.phase("converting");
    convert(&source, writer, &copts, &bar)
        .with_context(|| format!("converting to {}", output.display()))?;
    bar.finish();
    if let Some(t) = target {
        let img = factory::open(
            &output,
            &vmedia_disk::OpenOptions {
                format: Some(opts.format),
                ..Default::default()
            },
        )
        .with_context(|| format!("{}: cannot reopen the output to check it", output.display()))?;
        let problems = profile::check_target(img.as_ref(), t);
        if !problems.is_empty() {
            for p in &problems {
                eprintln!(
                    "vmedia: {t} would refuse {}: {}: {}",
                    output.display(),
                    p.field,
                    p.message
                );
            }
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
