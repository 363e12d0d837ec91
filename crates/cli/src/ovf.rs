//! `vmedia ovf export/info/import`: OVA and OVF packages (vmedia-ovf does the work).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use vmedia_disk::image::{Format, OpenOptions};
use vmedia_io::{NoProgress, OverwritePolicy};
use vmedia_ovf::descriptor::VirtualSystem;
use vmedia_ovf::{Firmware, ImportOptions, InfoReport, Package, SystemSpec};

use crate::disk::human_size;
use crate::progress::Bar;

#[derive(clap::Subcommand)]
pub enum OvfCommand {
    /// Package disks as an OVA (descriptor, streamOptimized VMDKs, SHA-256 manifest)
    #[command(
        after_help = "Examples:\n  vmedia ovf export disk.qcow2 -o vm.ova --name web --cpus 2 --memory 2048\n  vmedia ovf export boot.raw data.vhdx -o vm.ova --firmware efi --network \"VM Network\"\n  vmedia ovf export disk.raw -o vm.ova --sign key.pem cert.pem\n\nThe OVA appears only when complete; an existing one is replaced only with --force."
    )]
    Export(ExportArgs),
    /// Show what an OVA or OVF holds and check its manifest
    #[command(
        after_help = "Examples:\n  vmedia ovf info vm.ova\n  vmedia ovf info --json appliance.ovf\n\nExit 1 if a digest of the manifest does not match."
    )]
    Info(InfoArgs),
    /// Check an OVA or OVF and write its descriptor and disks into a folder
    #[command(
        after_help = "Examples:\n  vmedia ovf import vm.ova -o vm/\n  vmedia ovf import --format qcow2 appliance.ovf -o vm/\n\nThe manifest is checked before anything is written."
    )]
    Import(ImportArgs),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Disks of any format vmedia reads, in controller order
    #[arg(required = true)]
    disks: Vec<PathBuf>,
    /// The OVA to write
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Virtual machine name (also the member names)
    #[arg(long, default_value = "vm")]
    name: String,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory in MiB
    #[arg(long, default_value_t = 1024)]
    memory: u64,
    /// bios or efi
    #[arg(long, default_value = "bios")]
    firmware: String,
    /// A network to attach an E1000 adapter to (repeatable)
    #[arg(long = "network")]
    networks: Vec<String>,
    /// Sign the manifest: PEM private key (RSA or P-256) and PEM certificate
    #[arg(long, num_args = 2, value_names = ["KEY", "CERT"])]
    sign: Option<Vec<PathBuf>>,
    /// Replace an existing OVA
    #[arg(long)]
    force: bool,
    /// Flush the OVA to stable storage before it appears
    #[arg(long)]
    sync: bool,
    /// Print the written members as JSON
    #[arg(long)]
    json: bool,
    /// No progress bar
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    package: PathBuf,
    /// Do not hash the files named by the manifest
    #[arg(long = "no-verify")]
    no_verify: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    package: PathBuf,
    /// Folder to write into (created if missing); default: the package's name
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Convert the disks: raw, qcow2, vmdk, vpc (vhd), vhdx; default: as stored
    #[arg(long)]
    format: Option<String>,
    /// Replace files that exist in the folder
    #[arg(long)]
    force: bool,
    /// Skip the manifest check
    #[arg(long = "no-verify")]
    no_verify: bool,
    #[arg(long)]
    sync: bool,
    #[arg(long)]
    json: bool,
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(cmd: OvfCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OvfCommand::Export(a) => export(a),
        OvfCommand::Info(a) => info(a),
        OvfCommand::Import(a) => import(a),
    }
}

fn overwrite(force: bool) -> OverwritePolicy {
    if force {
        OverwritePolicy::Replace
    } else {
        OverwritePolicy::Refuse
    }
}

fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let firmware = match a.firmware.to_ascii_lowercase().as_str() {
        "bios" => Firmware::Bios,
        "efi" | "uefi" => Firmware::Efi,
        other => bail!("--firmware {other}: expected bios or efi"),
    };
    let sign = a.sign.map(|v| (v[0].clone(), v[1].clone()));
    let opts = vmedia_ovf::ExportOptions {
        system: SystemSpec {
            name: a.name,
            cpus: a.cpus,
            memory_mib: a.memory,
            firmware,
            networks: a.networks,
        },
        overwrite: overwrite(a.force),
        durability: crate::env::durability(a.sync),
        sign,
        open: OpenOptions::default(),
    };
    let bar = Bar::bytes(a.quiet || a.json);
    let report = vmedia_ovf::export(&a.disks, &a.output, &opts, &bar);
    bar.finish();
    let report = report.with_context(|| format!("{}: export", a.output.display()))?;
    if a.json {
        crate::print_json(&report)?;
    } else {
        println!("{}:", report.path.display());
        for m in &report.members {
            println!(
                "  {:<28} {:>10}  sha256 {}",
                m.name,
                human_size(m.size),
                m.sha256
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info(a: InfoArgs) -> anyhow::Result<ExitCode> {
    let pkg = Package::open(&a.package)?;
    let checks = if a.no_verify {
        None
    } else {
        Some(pkg.verify(&NoProgress)?)
    };
    let report = pkg.report(checks.as_deref());
    if a.json {
        crate::print_json(&report)?;
    } else {
        print!("{}", human(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn human(r: &InfoReport) -> String {
    let mut s = String::new();
    let kind = match r.kind {
        vmedia_ovf::Kind::Ova => "OVA",
        vmedia_ovf::Kind::Ovf => "OVF",
    };
    s.push_str(&format!(
        "package:     {} ({kind}, OVF {}, {} style)\n",
        r.path.display(),
        r.ovf_version,
        r.producer
    ));
    s.push_str(&format!("descriptor:  {}\n", r.descriptor));
    if let Some(m) = &r.members {
        s.push_str(&format!("members:     {}\n", m.join(", ")));
    }
    for sys in &r.systems {
        s.push_str(&system(sys));
    }
    for d in &r.disks {
        s.push_str(&format!(
            "disk {}: {} ({} bytes), file {}{}{}\n",
            d.id,
            human_size(d.capacity),
            d.capacity,
            d.file.as_deref().unwrap_or("(none: an empty disk)"),
            d.file_size
                .map(|z| format!(" ({})", human_size(z)))
                .unwrap_or_default(),
            d.format
                .as_deref()
                .map(|f| format!(", {f}"))
                .unwrap_or_default()
        ));
    }
    if !r.networks.is_empty() {
        s.push_str(&format!("networks:    {}\n", r.networks.join(", ")));
    }
    match (&r.manifest, &r.manifest_checked) {
        (None, _) => s.push_str("manifest:    none\n"),
        (Some(m), Some(c)) => {
            let algs: std::collections::BTreeSet<&str> =
                c.iter().map(|c| c.algorithm.name()).collect();
            s.push_str(&format!(
                "manifest:    {m}: {} files OK ({})\n",
                c.len(),
                algs.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        (Some(m), None) => s.push_str(&format!("manifest:    {m} (not checked)\n")),
    }
    if let Some(c) = &r.certificate {
        s.push_str(&format!("certificate: {c} (signature not checked)\n"));
    }
    for w in &r.warnings {
        s.push_str(&format!("warning:     {w}\n"));
    }
    s
}

fn system(v: &VirtualSystem) -> String {
    let mut s = format!(
        "system {}: {}{}\n",
        v.id,
        v.name.as_deref().unwrap_or("(no name)"),
        v.system_type
            .as_deref()
            .map(|t| format!(" [{t}]"))
            .unwrap_or_default()
    );
    s.push_str(&format!(
        "  cpus {}, memory {}, firmware {}{}\n",
        v.cpus.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
        v.memory_bytes.map(human_size).unwrap_or_else(|| "?".into()),
        v.firmware.name(),
        v.os_type
            .as_deref()
            .map(|o| format!(", os {o}"))
            .unwrap_or_default()
    ));
    for n in &v.nics {
        s.push_str(&format!(
            "  nic {} on {}{}\n",
            n.adapter.as_deref().unwrap_or("?"),
            n.network.as_deref().unwrap_or("?"),
            n.mac
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
    }
    for d in &v.disks {
        s.push_str(&format!(
            "  disk {} on {}{}\n",
            d.disk_id,
            d.controller.as_deref().unwrap_or("?"),
            d.address
                .as_deref()
                .map(|a| format!(" unit {a}"))
                .unwrap_or_default()
        ));
    }
    s
}

fn import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let format = match a.format.as_deref() {
        None => None,
        Some(f) => Some(Format::from_name(f)?),
    };
    let folder = match a.output {
        Some(f) => f,
        None => {
            let stem = a
                .package
                .file_stem()
                .context("the package path has no file name")?;
            PathBuf::from(stem)
        }
    };
    let pkg = Package::open(&a.package)?;
    let opts = ImportOptions {
        format,
        overwrite: overwrite(a.force),
        durability: crate::env::durability(a.sync),
        verify: !a.no_verify,
    };
    let bar = Bar::bytes(a.quiet || a.json);
    let report = vmedia_ovf::import(&pkg, &folder, &opts, &bar);
    bar.finish();
    let report = report.with_context(|| format!("{}: import", a.package.display()))?;
    if a.json {
        crate::print_json(&report)?;
    } else {
        if !report.manifest_checked.is_empty() {
            println!("manifest: {} files OK", report.manifest_checked.len());
        }
        println!("{}", report.descriptor.display());
        for d in &report.disks {
            println!(
                "{} ({}, {})",
                d.path.display(),
                d.format,
                human_size(d.capacity)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
