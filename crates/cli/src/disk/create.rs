//! `vmedia disk create`: a new empty image, optionally over a backing file (qemu-img create).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmedia_disk::factory;
use vmedia_disk::image::{CreateOptions, Format};

use super::{parse_format, parse_o_options, parse_size, RefArgs};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk create -f qcow2 disk.qcow2 20G\n  vmedia disk create -f qcow2 -o cluster_size=2M,lazy_refcounts=on disk.qcow2 100G\n  vmedia disk create -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2\n  vmedia disk create -f vmdk -o subformat=streamOptimized disk.vmdk 8G\n  vmedia disk create -f qcow2 --object secret,id=sec0,file=pass.txt -o encrypt.format=luks,encrypt.key-secret=sec0 secret.qcow2 20G\n\nThe new file replaces an existing one, as qemu-img does."
)]
pub struct Args {
    /// Image format: raw (default), qcow2, vmdk, vpc (or vhd), vhdx
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Format options as key=value[,key=value...] (e.g. cluster_size=64k,compat=1.1)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Backing file (relative names are relative to the new image's folder)
    #[arg(short = 'b', value_name = "BACKING")]
    backing: Option<String>,
    /// Format of the backing file
    #[arg(short = 'F', value_name = "BACKING_FMT")]
    backing_format: Option<String>,
    /// Do not open the backing file (the size must then be given)
    #[arg(short = 'u')]
    unsafe_backing: bool,
    /// Print nothing
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    refs: RefArgs,
    /// The image to create
    file: PathBuf,
    /// Virtual size, with optional k, M, G, T suffix (default: the backing file's size)
    size: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let format = parse_format(a.format.as_deref())?.unwrap_or(Format::Raw);
    let mut opts = CreateOptions::new(format, 0);
    parse_o_options(&a.options, &mut opts)?;
    let backing_name = a
        .backing
        .clone()
        .or_else(|| opts.options.remove("backing_file"));
    let backing_fmt_name = a
        .backing_format
        .clone()
        .or_else(|| opts.options.remove("backing_fmt"));
    let backing_fmt = parse_format(backing_fmt_name.as_deref())?;
    let size_text = a.size.clone().or_else(|| opts.options.remove("size"));
    let mut size = size_text.as_deref().map(parse_size).transpose()?;
    if let Some(name) = &backing_name {
        if !a.unsafe_backing {
            let mut open_opts = a.refs.open_options(backing_fmt)?;
            open_opts.skip_backing = false;
            let backing = factory::open_reference(&a.file, name, backing_fmt, &open_opts)
                .with_context(|| format!("Could not open backing file '{name}'"))?;
            if size.is_none() {
                size = Some(backing.virtual_size());
            }
            if backing_fmt.is_none() {
                opts.backing = Some((name.clone(), Some(backing.format())));
            }
        }
        if opts.backing.is_none() {
            opts.backing = Some((name.clone(), backing_fmt));
        }
    }
    let Some(size) = size else {
        bail!("Image creation needs a size parameter")
    };
    opts.virtual_size = size;
    opts.secret = a.refs.create_secret(&opts.options)?;
    if !a.quiet {
        let mut line = format!(
            "Formatting '{}', fmt={}",
            a.file.display(),
            format.qemu_name()
        );
        for (k, v) in &opts.options {
            line.push_str(&format!(" {k}={v}"));
        }
        if let Some((name, fmt)) = &opts.backing {
            line.push_str(&format!(" backing_file={name}"));
            if let Some(f) = fmt {
                line.push_str(&format!(" backing_fmt={f}"));
            }
        }
        line.push_str(&format!(" size={size}"));
        println!("{line}");
    }
    let writer = factory::create(&a.file, &opts)
        .with_context(|| format!("{}: cannot create the image", a.file.display()))?;
    writer
        .finish()
        .with_context(|| format!("{}: cannot write the image", a.file.display()))?;
    Ok(ExitCode::SUCCESS)
}
