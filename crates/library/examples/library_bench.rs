//! Times the library's main operations on one image, on a folder library:
//! `cargo run --release -p vmedia-library --example library_bench -- IMAGE SCRATCH [REPACKED] [KEYFILE]`.
//! Prints one line per operation (seconds, MB/s, new and stored bytes).

use std::path::PathBuf;
use std::time::Instant;

use vmedia_io::{NoProgress, OverwritePolicy};
use vmedia_library::{AddOptions, AddSource, InitOptions, Library, OpenConfig, VersionSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: library_bench IMAGE SCRATCH [REPACKED] [KEYFILE]");
        std::process::exit(2);
    }
    let image = PathBuf::from(&args[1]);
    let scratch = PathBuf::from(&args[2]);
    let repacked = args.get(3).filter(|a| !a.is_empty()).map(PathBuf::from);
    let key = args.get(4).map(std::fs::read).transpose()?;
    let lib_dir = scratch.join("lib");
    let _ = std::fs::remove_dir_all(&lib_dir);
    let mut config = OpenConfig::folder(&lib_dir, "bench@host");
    let library = Library::init(
        &config,
        &InitOptions {
            encrypt_key: key.clone(),
            ..Default::default()
        },
    )?;
    config.key = key;
    let size = std::fs::metadata(&image)?.len() as f64;
    let rate = |seconds: f64| size / seconds / 1e6;

    let started = Instant::now();
    let first = library.add(
        "bench",
        AddSource::File(image.clone()),
        &AddOptions::default(),
        &NoProgress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "add      {seconds:8.2}s {:8.0} MB/s new {} stored {}",
        rate(seconds),
        first.new_bytes,
        first.stored_bytes
    );
    if let Some(repacked) = repacked {
        let started = Instant::now();
        let second = library.add(
            "bench",
            AddSource::File(repacked),
            &AddOptions::default(),
            &NoProgress,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "add2     {seconds:8.2}s {:8.0} MB/s new {} stored {}",
            rate(seconds),
            second.new_bytes,
            second.stored_bytes
        );
    }
    let out = scratch.join("got.img");
    let started = Instant::now();
    library.get(
        &VersionSpec::parse("bench@1")?,
        &out,
        OverwritePolicy::Replace,
        &NoProgress,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    println!("get      {seconds:8.2}s {:8.0} MB/s", rate(seconds));
    let started = Instant::now();
    let report = library.verify(None, &NoProgress)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "verify   {seconds:8.2}s {:8.0} MB/s ok {}",
        rate(seconds),
        report.ok()
    );
    Ok(())
}
