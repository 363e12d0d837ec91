//! `vmedia disk info`: qemu-img info, human or JSON, optionally for the whole backing chain.

use std::path::PathBuf;
use std::process::ExitCode;

use vmedia_disk::image::{self, ImageInfo};

use super::{human_size, parse_format, print_json, OutputArg, OutputFormat, RefArgs};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vmedia disk info disk.qcow2\n  vmedia disk info --output json --backing-chain overlay.qcow2\n\nJSON keys are qemu-img's (virtual-size, actual-size, cluster-size, format-specific, ...)."
)]
pub struct Args {
    /// Format of the image (probed when absent)
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    #[command(flatten)]
    output: OutputArg,
    /// Show every image of the backing chain
    #[arg(long = "backing-chain")]
    backing_chain: bool,
    #[command(flatten)]
    refs: RefArgs,
    #[command(flatten)]
    bare: super::BareSizeArg,
    file: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    a.bare.apply()?;
    let format = parse_format(a.format.as_deref())?;
    let mut infos: Vec<ImageInfo> = Vec::new();
    if a.backing_chain {
        let opts = a.refs.open_options(format)?;
        let top = super::open_image(&a.file, &opts)?;
        let mut layer: Option<&dyn image::DiskImage> = Some(top.as_ref());
        while let Some(img) = layer {
            infos.push(img.info()?);
            layer = img.backing();
        }
    } else {
        let mut opts = a.refs.open_options(format)?;
        opts.skip_backing = true;
        let img = super::open_image(&a.file, &opts)?;
        infos.push(img.info()?);
    }
    match (a.output.format(), a.backing_chain) {
        (OutputFormat::Json, true) => print_json(&infos)?,
        (OutputFormat::Json, false) => print_json(&infos[0])?,
        (OutputFormat::Human, _) => {
            for (i, info) in infos.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", human(info));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One format-specific field; objects and lists nest as qemu-img prints them (the "encrypt"
/// object of a LUKS qcow2 and its slot list).
fn human_value(s: &mut String, depth: usize, key: &str, v: &serde_json::Value) {
    let pad = "    ".repeat(depth);
    match v {
        serde_json::Value::Object(map) => {
            s.push_str(&format!("{pad}{key}:\n"));
            for (k, v) in map {
                human_value(s, depth + 1, &k.replace('-', " "), v);
            }
        }
        serde_json::Value::Array(items) if items.iter().all(|i| i.is_object()) => {
            s.push_str(&format!("{pad}{key}:\n"));
            for (i, item) in items.iter().enumerate() {
                human_value(s, depth + 1, &format!("[{i}]"), item);
            }
        }
        serde_json::Value::String(t) => s.push_str(&format!("{pad}{key}: {t}\n")),
        other => s.push_str(&format!("{pad}{key}: {other}\n")),
    }
}

/// qemu-img info's text layout.
fn human(info: &ImageInfo) -> String {
    let mut s = String::new();
    s.push_str(&format!("image: {}\n", info.filename));
    s.push_str(&format!("file format: {}\n", info.format));
    s.push_str(&format!(
        "virtual size: {} ({} bytes)\n",
        human_size(info.virtual_size),
        info.virtual_size
    ));
    if let Some(a) = info.actual_size {
        s.push_str(&format!("disk size: {}\n", human_size(a)));
    }
    if info.encrypted == Some(true) {
        s.push_str("encrypted: yes\n");
    }
    if let Some(c) = info.cluster_size {
        s.push_str(&format!("cluster_size: {c}\n"));
    }
    if let Some(b) = &info.backing_filename {
        match &info.full_backing_filename {
            Some(full) if full != b => {
                s.push_str(&format!("backing file: {b} (actual path: {full})\n"))
            }
            _ => s.push_str(&format!("backing file: {b}\n")),
        }
        if let Some(f) = &info.backing_filename_format {
            s.push_str(&format!("backing file format: {f}\n"));
        }
    }
    if !info.snapshots.is_empty() {
        s.push_str("Snapshot list:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n");
        for snap in &info.snapshots {
            let clock = snap.vm_clock_sec;
            s.push_str(&format!(
                "{:<9} {:<17} {:>7} {:>19} {:02}:{:02}:{:02}.{:03} {:>10}\n",
                snap.id,
                snap.name,
                human_size(snap.vm_state_size),
                snap.date_utc(),
                clock / 3600,
                (clock / 60) % 60,
                clock % 60,
                snap.vm_clock_nsec / 1_000_000,
                snap.icount.map(|i| i.to_string()).unwrap_or_default()
            ));
        }
    }
    if info.dirty_flag {
        s.push_str("dirty flag: yes\n");
    }
    if let Some(spec) = &info.format_specific {
        if let Some(data) = spec.get("data").and_then(|d| d.as_object()) {
            s.push_str("Format specific information:\n");
            for (k, v) in data {
                human_value(&mut s, 1, &k.replace('-', " "), v);
            }
        }
    }
    s
}
