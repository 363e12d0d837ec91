//! Replays fuzz/corpus/metrics_text through the `metrics_text` fuzz target's code path
//! (`vmedia_server::scrape::exercise`): no input may panic, the scrapes written with the daemon's
//! metric names must parse into their exports, and the malformed samples must be refused.

use std::path::{Path, PathBuf};

use vmedia_server::scrape;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/metrics_text");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{}: only {} samples",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn metrics_text_corpus_replays() {
    let mut refused = Vec::new();
    for (name, data) in corpus() {
        let result = scrape::exercise(&data);
        if name.starts_with("vmedia-") {
            let view = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                view.exports.iter().any(|e| e.row.export == "debian@3"),
                "{name}: {view:?}"
            );
        } else if result.is_err() {
            refused.push(name);
        }
    }
    for malformed in ["bad-escape.prom", "bucket-without-le.prom", "garbage.prom"] {
        assert!(
            refused.iter().any(|n| n == malformed),
            "{malformed} was accepted"
        );
    }
}
