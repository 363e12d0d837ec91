//! The library exports the daemon's front ends share: extents, the disk export, and the
//! commit path the clone store uses.

#[path = "support_http.rs"]
mod support_http;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use support_http::*;
use vmedia_server::cache::{CacheOptions, SharedCache};
use vmedia_server::clones::BaseOpener;
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

/// An image held in memory, as an export.
struct MemoryExport(Vec<u8>);

impl vmedia_server::export::Export for MemoryExport {
    fn name(&self) -> &str {
        "memory"
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_only(&self) -> bool {
        true
    }
    fn block_sizes(&self) -> vmedia_server::export::BlockSizes {
        vmedia_server::export::BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 1 << 20,
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
    fn extents(
        &self,
        _offset: u64,
        length: u64,
    ) -> std::io::Result<Vec<vmedia_server::export::Extent>> {
        Ok(vec![vmedia_server::export::Extent {
            length,
            hole: false,
            zero: false,
        }])
    }
}

#[test]
fn a_disk_naming_a_backing_file_is_refused_and_nothing_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    for args in [
        vec!["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"],
        vec![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "base.qcow2",
            overlay.to_str().unwrap(),
        ],
    ] {
        assert!(std::process::Command::new("qemu-img")
            .args(&args)
            .current_dir(dir.path())
            .status()
            .unwrap()
            .success());
    }
    let bytes = std::fs::read(&overlay).unwrap();
    let refused = vmedia_server::exports::DiskExport::open(
        "overlay@1/disk".into(),
        Arc::new(MemoryExport(bytes)),
    );
    match refused {
        Err(vmedia_server::export::ExportError::Unavailable { reason, .. }) => {
            assert!(reason.contains("backing"), "{reason}")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a disk with a backing file was opened"),
    }
    // The base alone is a fine disk: 1 MiB, unallocated (holes).
    let disk = vmedia_server::exports::DiskExport::open(
        "base@1/disk".into(),
        Arc::new(MemoryExport(std::fs::read(&base).unwrap())),
    )
    .unwrap();
    use vmedia_server::export::Export;
    assert_eq!(disk.size(), 1 << 20);
    let extents = disk.extents(0, 1 << 20).unwrap();
    assert!(extents.iter().all(|e| e.hole && e.zero), "{extents:?}");
}
