//! `clone commit` over a real (temporary) library through `LibraryBases`: the new version is
//! exactly the clone's content, the base version is untouched, and the library stores no more
//! new bytes than the clone changed, plus the chunks around each change.

#[path = "support_clones.rs"]
mod support_clones;

use std::io::Cursor;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use support_clones::{pattern, read_all};
use vmedia_io::{NoProgress, ReadAt};
use vmedia_library::{
    AddOptions, AddSource, InitOptions, Library, OpenConfig, VersionSpec, CHUNKING,
};
use vmedia_server::clones::{CloneError, CloneStore, LibraryBases};

const MIB: usize = 1 << 20;

fn library(dir: &std::path::Path) -> Library {
    Library::init(
        &OpenConfig::folder(dir.join("library"), "tester@host"),
        &InitOptions::default(),
    )
    .unwrap()
}

#[test]
fn commit_adds_the_clone_content_storing_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let library = library(dir.path());
    let image = pattern(42, 32 * MIB);
    let base = library
        .add(
            "disk.img",
            AddSource::Reader(Box::new(Cursor::new(image.clone()))),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let clones = CloneStore::open(
        &dir.path().join("state"),
        Arc::new(LibraryBases::new(library.clone())),
    )
    .unwrap();
    let info = clones.create("disk.img", "vm1", false).unwrap();
    assert_eq!(info.base, "disk.img@1");
    assert_eq!(info.base_digest, base.digest);
    let export = clones.open_export("vm1").unwrap();
    assert_eq!(read_all(export.as_ref()), image);

    let mut want = image.clone();
    let changes: [(usize, Vec<u8>); 2] = [
        (5 * MIB + 123, pattern(1, MIB)),
        (20 * MIB, pattern(2, 4096)),
    ];
    for (at, bytes) in &changes {
        export.write_at(bytes, *at as u64, false).unwrap();
        want[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    export
        .write_zeroes(30 * MIB as u64, MIB as u64, false)
        .unwrap();
    want[30 * MIB..31 * MIB].fill(0);

    let report = clones.commit("vm1", "disk.img").unwrap();
    assert_eq!((report.name.as_str(), report.version), ("disk.img", 2));
    assert_eq!(report.size, want.len() as u64);
    assert_eq!(
        report.digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&want)))
    );
    // Each changed range (two writes, one zeroed megabyte) re-chunks at most its own bytes
    // plus one largest chunk on either side.
    let written: usize = changes.iter().map(|(_, b)| b.len()).sum();
    let changed = written + MIB;
    let regions = changes.len() + 1;
    let bound = (changed + regions * 2 * CHUNKING.max as usize) as u64;
    assert!(
        report.new_bytes <= bound,
        "{} new bytes for {changed} changed (bound {bound})",
        report.new_bytes
    );
    assert!(report.new_bytes >= written as u64);
    eprintln!(
        "commit: {} bytes changed, {} new bytes stored ({} stored after compression)",
        changed, report.new_bytes, report.stored_bytes
    );

    // The new version reads as the clone; the base version is unchanged.
    let v2 = library
        .open_version(&VersionSpec::parse("disk.img@2").unwrap())
        .unwrap();
    let mut got = vec![0u8; want.len()];
    v2.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want);
    let v1 = library
        .open_version(&VersionSpec::parse("disk.img@1").unwrap())
        .unwrap();
    assert_eq!(v1.digest(), base.digest);
    // The clone stays pinned to version 1 and keeps working after the commit.
    export.write_at(b"after", 0, true).unwrap();
    assert_eq!(clones.get("vm1").unwrap().base, "disk.img@1");

    // Committing under an invalid item name fails cleanly.
    let refused = clones.commit("vm1", "../evil").unwrap_err();
    assert!(matches!(refused, CloneError::Commit { .. }));
    assert_eq!(
        vmedia_server::http::clone_status(&refused),
        axum::http::StatusCode::BAD_REQUEST
    );
    assert!(matches!(
        clones.commit("nope", "x"),
        Err(CloneError::NotFound(_))
    ));
}
