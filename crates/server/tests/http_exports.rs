//! The library exports the daemon's front ends share: extents, the disk export, and the
//! commit path the clone store uses.

#[path = "support_http.rs"]
mod support_http;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use support_http::*;
use vmedia_server::cache::{CacheOptions, SharedCache};
use vmedia_server::export::ExportResolver;
use vmedia_server::exports::LibraryExports;

fn exports(library: vmedia_library::Library) -> LibraryExports {
    let cache = SharedCache::new(&CacheOptions {
        memory_bytes: 16 << 20,
        disk: None,
    })
    .unwrap();
    LibraryExports::new(library, Arc::new(cache), None)
}

#[test]
fn version_extents_show_the_zero_runs_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("sparse.raw");
    let mut content = noise(5, 1 << 20);
    content.extend(vec![0u8; 8 << 20]);
    content.extend(noise(6, 1 << 20));
    std::fs::write(&image, &content).unwrap();
    let library = new_library(dir.path());
    add(&library, "sparse", &image);
    let exports = exports(library);
    let export = exports.open("sparse").unwrap();
    assert_eq!(export.name(), "sparse@1");
    assert_eq!(export.size(), content.len() as u64);
    let extents = export.extents(0, export.size()).unwrap();
    let holes: u64 = extents.iter().filter(|e| e.hole).map(|e| e.length).sum();
    let total: u64 = extents.iter().map(|e| e.length).sum();
    assert_eq!(total, export.size());
    assert!(
        holes >= 6 << 20,
        "only {holes} bytes of holes in {extents:?}"
    );
    assert!(extents.iter().all(|e| e.hole == e.zero));
    let mut buf = vec![0u8; 4096];
    export.read_at(&mut buf, (1 << 20) - 2048).unwrap();
    assert_eq!(buf, content[(1 << 20) - 2048..(1 << 20) + 2048]);
    assert!(matches!(
        exports.open("nothere"),
        Err(vmedia_server::export::ExportError::NotFound(_))
    ));
    // Without a clone store, clone names are simply not there.
    assert!(exports.open("clone/x").is_err());
}

#[test]
fn commit_streams_a_source_into_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let library = new_library(dir.path());
    let exports = exports(library.clone());
    let data = noise(9, (3 << 20) + 12345);
    let report = exports
        .commit("committed", &data, data.len() as u64)
        .unwrap();
    let expected = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    assert_eq!(report.digest, expected);
    let export = exports.open("committed").unwrap();
    let mut back = vec![0u8; data.len()];
    export.read_at(&mut back, 0).unwrap();
    assert!(back == data);
}
