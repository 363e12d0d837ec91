//! Times one `add` into an existing folder library (profile the second add of a changed image):
//! `cargo run --profile ci -p vmedia-library --example library_add -- LIBRARY NAME IMAGE`.

use std::path::PathBuf;
use std::time::Instant;

use vmedia_io::NoProgress;
use vmedia_library::{AddOptions, AddSource, Library, OpenConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: library_add LIBRARY NAME IMAGE");
        std::process::exit(2);
    }
    let config = OpenConfig::folder(PathBuf::from(&args[1]), "bench@host");
    let library = Library::open(&config)?;
    let started = Instant::now();
    let report = library.add(
        &args[2],
        AddSource::File(PathBuf::from(&args[3])),
        &AddOptions::default(),
        &NoProgress,
    )?;
    println!(
        "add {:.2}s new {} stored {}",
        started.elapsed().as_secs_f64(),
        report.new_bytes,
        report.stored_bytes
    );
    Ok(())
}
