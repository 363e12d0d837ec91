//! `vmedia multiboot`: a bootable stick image holding several ISOs and a GRUB menu of them
//! (create, add, remove, ls, default). Flags, printing and exit codes only; the work is in
//! `vmedia_multiboot`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use vmedia_io::OverwritePolicy;
use vmedia_multiboot::{BootMethod, Convention, CreateOptions, GrubTools, StickRecord};

use crate::disk::{human_size, parse_size};
use crate::progress::Bar;

#[derive(Subcommand)]
pub enum MultibootCommand {
    /// Make a stick image (GPT, BIOS and UEFI GRUB) holding ISO files and a menu of them
    #[command(after_help = "Examples:
  vmedia multiboot create -o stick.img debian-live.iso ubuntu.iso
  vmedia multiboot create -o stick.img *.iso --size 16G --default ubuntu.iso --timeout 5

Write the image to a USB stick with dd (or boot it in a VM). Each ISO boots through its own
/boot/grub/loopback.cfg when it has one, else through the kernel and initrd its isolinux or GRUB
config names, with findiso= (Debian live) or iso-scan/filename= (Ubuntu) added so the system
finds its ISO. The data partition is FAT32: each ISO must be under 4 GiB.")]
    Create(CreateArgs),
    /// Add ISOs to a stick (the stick is rebuilt under a temporary name, then renamed)
    Add(ChangeArgs),
    /// Remove ISOs (by file name) from a stick (rebuilt under a temporary name, then renamed)
    #[command(alias = "rm")]
    Remove(RemoveArgs),
    /// List the ISOs on a stick and how each boots
    Ls(LsArgs),
    /// Choose the entry booted when the menu times out (rewrites the ESP and record in place)
    Default(DefaultArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// ISO files to put on the stick (the menu lists them in this order)
    #[arg(required = true)]
    isos: Vec<PathBuf>,
    /// Stick image to write
    #[arg(short, long)]
    output: PathBuf,
    /// Whole image size, bytes or with a k/M/G/T suffix (default: the ISOs plus 1/8 free)
    #[arg(long, value_parser = size_arg)]
    size: Option<u64>,
    /// Replace the output if it exists
    #[arg(long)]
    force: bool,
    /// The ISO (file name) booted when the menu times out (default: the first)
    #[arg(long)]
    default: Option<String>,
    /// Menu timeout in seconds (0 boots the default at once)
    #[arg(long, default_value_t = vmedia_multiboot::DEFAULT_TIMEOUT)]
    timeout: u32,
    /// Print the stick's record as JSON
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct ChangeArgs {
    /// Stick image made by `vmedia multiboot create`
    stick: PathBuf,
    /// ISO files to add
    #[arg(required = true)]
    isos: Vec<PathBuf>,
    /// New whole image size (default: the stick's own size if it was given one, else fitted)
    #[arg(long, value_parser = size_arg)]
    size: Option<u64>,
    #[arg(long)]
    json: bool,
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    stick: PathBuf,
    /// File names of the ISOs to remove (as `multiboot ls` shows them)
    #[arg(required = true)]
    names: Vec<String>,
    #[arg(long, value_parser = size_arg)]
    size: Option<u64>,
    #[arg(long)]
    json: bool,
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct LsArgs {
    stick: PathBuf,
    /// Print the partitions and record as JSON
    #[arg(long)]
    json: bool,
    /// Print the generated GRUB menu (grub.cfg) instead
    #[arg(long, conflicts_with = "json")]
    menu: bool,
}

#[derive(clap::Args)]
pub struct DefaultArgs {
    stick: PathBuf,
    /// ISO file name to boot by default; omit to boot the first entry
    name: Option<String>,
    /// Also set the menu timeout in seconds
    #[arg(long)]
    timeout: Option<u32>,
}

fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

pub fn run(cmd: MultibootCommand) -> anyhow::Result<ExitCode> {
    let grub = GrubTools::default();
    match cmd {
        MultibootCommand::Create(args) => {
            let opts = CreateOptions {
                size: args.size,
                overwrite: if args.force {
                    OverwritePolicy::Replace
                } else {
                    OverwritePolicy::Refuse
                },
                default: args.default.clone(),
                timeout: args.timeout,
                grub,
            };
            let bar = Bar::bytes(args.quiet || args.json);
            let record = vmedia_multiboot::create(&args.output, &args.isos, &opts, &bar)
                .with_context(|| format!("creating {}", args.output.display()))?;
            bar.finish();
            done(&args.output, &record, args.json)
        }
        MultibootCommand::Add(args) => {
            let bar = Bar::bytes(args.quiet || args.json);
            let record = vmedia_multiboot::add(&args.stick, &args.isos, args.size, &grub, &bar)
                .with_context(|| format!("adding to {}", args.stick.display()))?;
            bar.finish();
            done(&args.stick, &record, args.json)
        }
        MultibootCommand::Remove(args) => {
            let bar = Bar::bytes(args.quiet || args.json);
            let record = vmedia_multiboot::remove(&args.stick, &args.names, args.size, &grub, &bar)
                .with_context(|| format!("removing from {}", args.stick.display()))?;
            bar.finish();
            done(&args.stick, &record, args.json)
        }
        MultibootCommand::Ls(args) => {
            let report = vmedia_multiboot::list(&args.stick)
                .with_context(|| format!("reading {}", args.stick.display()))?;
            if args.json {
                crate::print_json(&report)?;
            } else if args.menu {
                print!("{}", vmedia_multiboot::menu_text(&report.record));
            } else {
                println!(
                    "{}: {}, {} ISO(s), menu timeout {} s",
                    args.stick.display(),
                    human_size(report.size_bytes),
                    report.record.isos.len(),
                    report.record.timeout
                );
                print_isos(&report.record);
            }
            Ok(ExitCode::SUCCESS)
        }
        MultibootCommand::Default(args) => {
            let record = vmedia_multiboot::set_default(
                &args.stick,
                args.name.as_deref(),
                args.timeout,
                &grub,
            )
            .with_context(|| format!("changing the menu of {}", args.stick.display()))?;
            println!(
                "{}: boots {} after {} s",
                args.stick.display(),
                record
                    .default
                    .as_deref()
                    .or(record.isos.first().map(|i| i.name.as_str()))
                    .unwrap_or("nothing"),
                record.timeout
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn done(stick: &Path, record: &StickRecord, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        crate::print_json(record)?;
    } else {
        let size = std::fs::metadata(stick).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}: {}, {} ISO(s), boots under BIOS and UEFI",
            stick.display(),
            human_size(size),
            record.isos.len()
        );
        print_isos(record);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_isos(record: &StickRecord) {
    let first = record.isos.first().map(|i| i.name.as_str());
    let default = record.default.as_deref().or(first);
    for iso in &record.isos {
        let how = match &iso.boot {
            BootMethod::LoopbackCfg { path } => format!("its own {path}"),
            BootMethod::Kernel {
                kernel, convention, ..
            } => match convention {
                Convention::DebianLive => format!("{kernel} with findiso="),
                Convention::Casper => format!("{kernel} with iso-scan/filename="),
                Convention::Plain => format!("{kernel} (its own command line)"),
            },
        };
        println!(
            "{} {:<32} {:>10}  {:<16} {how}",
            if Some(iso.name.as_str()) == default {
                "*"
            } else {
                " "
            },
            iso.name,
            human_size(iso.size),
            iso.volume_id.as_deref().unwrap_or("-"),
        );
    }
}
