//! The fuzz corpora as the crates' replay tests read them (included with `#[path]` by each
//! crate's `tests/*corpus*.rs`, so the reading and the naming rules live once): samples sorted
//! by name, and the rule that `valid-*` samples are accepted and `bad-*` samples refused.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` of the workspace (the including crate sits in `crates/<name>`).
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Every sample of `target` as (file name, bytes), sorted by name; at least `at_least` of them.
pub fn samples(target: &str, at_least: usize) -> Vec<(String, Vec<u8>)> {
    let dir = dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
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

/// Runs `accept` over every sample of `target` (at least five): none may panic, `valid-*`
/// must be accepted, `bad-*` refused, and at least one sample accepted.
pub fn replay(target: &str, accept: fn(&[u8]) -> bool) {
    let mut accepted = 0;
    for (name, bytes) in samples(target, 5) {
        let ok = accept(&bytes);
        if name.starts_with("valid-") {
            assert!(ok, "{name} should be accepted");
        }
        if name.starts_with("bad-") {
            assert!(!ok, "{name} should be refused");
        }
        accepted += ok as usize;
    }
    assert!(accepted >= 1, "{target}: no valid seed");
}
