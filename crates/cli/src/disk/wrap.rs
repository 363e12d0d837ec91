//! `vmedia disk wrap-iso`: a descriptor-only VMDK whose flat extent is an ISO file, so tools
//! that only attach disks can use the ISO. Nothing is copied; the format logic lives in
//! `vmedia_disk::vmdk::wrap_flat`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vmedia_disk::vmdk::{wrap_flat, WrapOptions, WrapReport};
use vmedia_io::OverwritePolicy;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    vmedia disk wrap-iso debian.iso -o debian.vmdk\n  \
    vmedia disk wrap-iso tools.iso -o tools.vmdk --adapter lsilogic --read-only\n  \
    qemu-img info debian.vmdk    # vmdk, virtual size = the ISO's size\n\n\
The VMDK holds one FLAT extent naming the ISO (relative when both sit in one folder, else the\n\
absolute path). The extent is RW, because qemu ignores extents that are not RW; attach the\n\
disk read-only (or qemu's snapshot=on) to keep the ISO unchanged. --read-only writes an\n\
RDONLY extent, which VMware honours but qemu-img cannot open.\n\
An ISO whose size is not a multiple of 512 gets its last sector padded with zeros when read.")]
pub struct Args {
    /// The ISO (or any file) to wrap
    iso: PathBuf,
    /// The VMDK descriptor to write
    #[arg(short = 'o', long = "output", value_name = "VMDK")]
    output: PathBuf,
    /// ddb.adapterType: ide, buslogic, lsilogic, legacyESX, pvscsi
    #[arg(long = "adapter", default_value = "ide")]
    adapter: String,
    /// Write an RDONLY extent (VMware honours it; qemu cannot open such a VMDK)
    #[arg(long)]
    read_only: bool,
    /// Replace an existing output file
    #[arg(long)]
    force: bool,
    /// Print what was written as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = WrapOptions {
        adapter_type: args.adapter.clone(),
        read_only: args.read_only,
        overwrite: if args.force {
            OverwritePolicy::Replace
        } else {
            OverwritePolicy::Refuse
        },
    };
    let wrapped = wrap_flat(&args.iso, &args.output, &opts).with_context(|| {
        format!(
            "cannot wrap {} as {}",
            args.iso.display(),
            args.output.display()
        )
    })?;
    if args.json {
        let report = WrapReport::new(&args.output, &wrapped, &opts);
        crate::print_json(&report)?;
    } else {
        println!(
            "{}: {} FLAT extent \"{}\", {} sectors ({} bytes{}), adapter {}; nothing copied",
            args.output.display(),
            if args.read_only { "RDONLY" } else { "RW" },
            wrapped.extent_name,
            wrapped.sectors,
            wrapped.sectors * 512,
            if wrapped.padding > 0 {
                format!(", last sector padded with {} zero bytes", wrapped.padding)
            } else {
                String::new()
            },
            args.adapter,
        );
    }
    Ok(ExitCode::SUCCESS)
}
