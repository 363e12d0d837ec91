//! The library's rules on the folder backend: round trips, dedup, timeline, retention and gc,
//! concurrency, corruption and repair, encryption, signatures, crash leftovers and hostile
//! objects. (The CLI's tests run the same scenarios end to end on SeaweedFS.)

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmedia_io::{NoProgress, OverwritePolicy, ReadAt};
use vmedia_library::{
    AddOptions, AddSource, ImageKind, InitOptions, Library, LibraryError, OpenConfig,
    RollbackTarget, VersionSpec,
};

/// Deterministic bytes that look like real content: random runs and repeated text.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state % 4 == 0 {
            out.extend_from_slice(b"Package: vmedia-test\nVersion: 1.0\nDescription: text\n");
        } else {
            out.extend_from_slice(&state.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn spec(text: &str) -> VersionSpec {
    VersionSpec::parse(text).unwrap()
}

fn ts(text: &str) -> jiff::Timestamp {
    text.parse().unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn config(&self, name: &str) -> OpenConfig {
        OpenConfig::folder(self.path(name), "tester@host")
    }
    fn init(&self, name: &str) -> Library {
        Library::init(&self.config(name), &InitOptions::default()).unwrap()
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

fn add_file(library: &Library, name: &str, path: &Path) -> vmedia_library::AddReport {
    library
        .add(
            name,
            AddSource::File(path.to_path_buf()),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap()
}

fn add_at(library: &Library, name: &str, bytes: Vec<u8>, now: &str) -> vmedia_library::AddReport {
    library
        .add(
            name,
            AddSource::Reader(Box::new(Cursor::new(bytes))),
            &AddOptions {
                now: Some(ts(now)),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Every file under `root`, recursively.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn chunk_files(root: &Path) -> Vec<PathBuf> {
    files_under(&root.join("chunks"))
}

fn image_with_holes() -> Vec<u8> {
    let mut image = content(1, 5 << 20);
    image.extend(std::iter::repeat_n(0u8, 3 << 20));
    image.extend(content(2, (2 << 20) + 12345));
    image
}

#[test]
fn an_image_with_holes_round_trips_through_get_cat_and_read_at() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let image = image_with_holes();
    let source = fx.file("disk.raw", &image);
    let report = add_file(&library, "disk", &source);
    assert_eq!(report.version, 1);
    assert_eq!(report.size, image.len() as u64);
    assert_eq!(report.digest, sha256_hex(&image));
    assert_eq!(report.new_bytes + report.reused_bytes, image.len() as u64);
    assert!(
        report.stored_bytes < image.len() as u64,
        "zeros and text compress"
    );

    let out = fx.path("out.raw");
    let got = library
        .get(&spec("disk"), &out, OverwritePolicy::Refuse, &NoProgress)
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), image);
    assert!(
        got.hole_bytes >= 2 << 20,
        "zero runs are left as holes: {got:?}"
    );

    let mut catted = Vec::new();
    library.cat(&spec("disk@1"), &mut catted).unwrap();
    assert_eq!(catted, image);

    let reader = library.open_version(&spec("disk")).unwrap();
    assert_eq!(reader.size(), image.len() as u64);
    for (offset, len) in [
        (0usize, 10usize),
        (262_000, 300_000),
        (5 << 20, 4096),
        (image.len() - 7, 7),
    ] {
        let mut buf = vec![0u8; len];
        reader.read_exact_at(&mut buf, offset as u64).unwrap();
        assert_eq!(buf, image[offset..offset + len], "at {offset}");
    }
    let mut past = [0u8; 4];
    assert_eq!(reader.read_at(&mut past, image.len() as u64).unwrap(), 0);
}

/// `get` used to wait forever when its hash, having caught up with every fetched chunk, ran
/// over a zero run past the fetch window onto a chunk nobody had fetched. Here zero runs
/// alternate with short data chunks for well over one window, and the version is got a few
/// times (the hang depended on timing).
#[test]
fn get_never_waits_forever_when_zero_runs_alternate_with_chunks() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let mut image = Vec::new();
    for cycle in 0..48u64 {
        image.extend(content(100 + cycle, 70 << 10));
        // Past the data chunk's end, at least one maximal chunk of zeros: a zero entry.
        image.extend(std::iter::repeat_n(0u8, 3 << 20));
    }
    let source = fx.file("alternating.raw", &image);
    add_file(&library, "alternating", &source);
    let out = fx.path("out.raw");
    for _ in 0..3 {
        let got = library
            .get(
                &spec("alternating"),
                &out,
                OverwritePolicy::Replace,
                &NoProgress,
            )
            .unwrap();
        assert!(got.hole_bytes >= 48 << 20, "{got:?}");
        assert_eq!(fs::read(&out).unwrap(), image);
    }
}

#[test]
fn a_stream_of_unknown_length_stores_the_same_version_as_the_file() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let image = content(3, (3 << 20) + 1);
    let source = fx.file("a.img", &image);
    let from_file = add_file(&library, "a", &source);
    let from_stream = library
        .add(
            "b",
            AddSource::Reader(Box::new(Cursor::new(image.clone()))),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(from_file.digest, from_stream.digest);
    assert_eq!(from_stream.new_bytes, 0, "every chunk was already stored");
    assert_eq!(from_stream.reused_bytes, image.len() as u64);
}

#[test]
fn an_empty_image_is_a_version_too() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let report = add_at(&library, "empty", Vec::new(), "2026-01-01T00:00:00Z");
    assert_eq!(report.size, 0);
    let mut out = Vec::new();
    library.cat(&spec("empty"), &mut out).unwrap();
    assert!(out.is_empty());
}

fn write_iso(dir: &Path, out: &Path) {
    let spec = vmedia_iso::spec::IsoSpec {
        volume: vmedia_iso::spec::VolumeIds {
            volume_id: Some("LIBTEST".into()),
            ..Default::default()
        },
        sources: vec![vmedia_iso::spec::GraftPoint {
            iso_path: "/".into(),
            host_path: dir.to_path_buf(),
        }],
        integrity: vmedia_iso::spec::IntegritySpec {
            md5: true,
            sha256: true,
            signing_key: None,
        },
        date: Some(1_700_000_000),
        ..Default::default()
    };
    vmedia_iso::write::write_image(&spec, out, OverwritePolicy::Replace, &NoProgress).unwrap();
}

#[test]
fn dedup_of_a_repacked_iso_adds_at_most_five_percent() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let tree = fx.path("tree");
    fs::create_dir_all(tree.join("pool")).unwrap();
    for i in 0..80u64 {
        let size = 300_000 + (i as usize * 37_000) % 1_500_000;
        fs::write(
            tree.join(format!("pool/package-{i:02}.deb")),
            content(100 + i, size),
        )
        .unwrap();
    }
    fs::write(tree.join("README.txt"), b"library test image\n").unwrap();
    let first = fx.path("first.iso");
    write_iso(&tree, &first);
    let v1 = add_file(&library, "demo.iso", &first);
    match &v1.kind {
        ImageKind::Iso {
            volume_id,
            embedded_checks,
            ..
        } => {
            assert_eq!(volume_id, "LIBTEST");
            // The SHA-256 record covers every byte the MD5 does, so a matching SHA-256 stands
            // for the MD5 (the slowest hash) and the MD5 is recorded as covered by it.
            assert!(
                embedded_checks
                    .iter()
                    .any(|c| c.check == "sha256" && c.outcome == "ok"),
                "{embedded_checks:?}"
            );
            assert!(
                embedded_checks.iter().any(|c| c.check == "md5"
                    && c.outcome == "unchecked: the SHA-256 record covers the same bytes"),
                "{embedded_checks:?}"
            );
        }
        other => panic!("not recorded as an ISO: {other:?}"),
    }

    fs::write(tree.join("pool/added-1mib.deb"), content(999, 1 << 20)).unwrap();
    let second = fx.path("second.iso");
    write_iso(&tree, &second);
    let size = fs::metadata(&second).unwrap().len();
    let v2 = add_file(&library, "demo.iso", &second);
    assert_eq!(v2.version, 2);
    assert!(
        v2.new_bytes * 20 <= size,
        "repack added {} new bytes of {size} ({:.1}%)",
        v2.new_bytes,
        v2.new_bytes as f64 * 100.0 / size as f64
    );

    // The ISO reader works on the library version in place.
    let reader: Arc<dyn ReadAt> = Arc::new(library.open_version(&spec("demo.iso@2")).unwrap());
    let iso = vmedia_iso::read::IsoImage::open(reader, Default::default()).unwrap();
    let files: Vec<_> = iso
        .walk()
        .map(|w| w.unwrap())
        .filter(|w| w.entry.is_file())
        .collect();
    assert_eq!(
        files.len(),
        82,
        "80 packages, the README and the added file"
    );
    assert!(files.iter().any(|w| w.entry.size == 1 << 20));
}

#[test]
fn a_damaged_iso_download_is_refused() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let tree = fx.path("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("data.bin"), content(5, 2 << 20)).unwrap();
    let iso = fx.path("bad.iso");
    write_iso(&tree, &iso);
    let mut bytes = fs::read(&iso).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    fs::write(&iso, &bytes).unwrap();
    let err = library
        .add(
            "bad",
            AddSource::File(iso),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(
        matches!(err, LibraryError::EmbeddedChecksum { .. }),
        "{err}"
    );
}

fn embedded_checks_of(report: &vmedia_library::AddReport) -> Vec<(String, String)> {
    match &report.kind {
        ImageKind::Iso {
            embedded_checks, ..
        } => embedded_checks
            .iter()
            .map(|c| (c.check.clone(), c.outcome.clone()))
            .collect(),
        other => panic!("not recorded as an ISO: {other:?}"),
    }
}

#[test]
fn a_damaged_iso_of_the_same_size_as_a_verified_version_is_still_refused() {
    // A re-added image of a verified version's size skips the streamed check and reuses the
    // recorded outcome only when its digest proves the bytes are the same; otherwise it checks.
    let fx = Fixture::new();
    let library = fx.init("lib");
    let tree = fx.path("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("data.bin"), content(6, 2 << 20)).unwrap();
    let iso = fx.path("good.iso");
    write_iso(&tree, &iso);
    let first = add_file(&library, "live", &iso);
    let again = add_file(&library, "live", &iso);
    assert_eq!(again.digest, first.digest);
    assert_eq!(embedded_checks_of(&again), embedded_checks_of(&first));
    assert!(embedded_checks_of(&first).contains(&("sha256".into(), "ok".into())));

    let mut bytes = fs::read(&iso).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    let damaged = fx.file("damaged.iso", &bytes);
    let err = library
        .add(
            "live",
            AddSource::File(damaged),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            LibraryError::EmbeddedChecksum {
                check: "sha256",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_iso_streamed_from_stdin_is_checked_as_it_passes() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let tree = fx.path("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("data.bin"), content(7, 2 << 20)).unwrap();
    let iso = fx.path("live.iso");
    write_iso(&tree, &iso);
    let bytes = fs::read(&iso).unwrap();
    let from_file = add_file(&library, "file", &iso);
    let streamed = add_at(&library, "stream", bytes.clone(), "2026-01-01T00:00:00Z");
    assert_eq!(
        embedded_checks_of(&streamed),
        embedded_checks_of(&from_file)
    );

    let mut damaged = bytes;
    let at = damaged.len() - 5000;
    damaged[at] ^= 0x01;
    let err = library
        .add(
            "stream",
            AddSource::Reader(Box::new(Cursor::new(damaged))),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(
        matches!(err, LibraryError::EmbeddedChecksum { .. }),
        "{err}"
    );
}

#[test]
fn versions_are_numbered_and_named_by_digest_prefix() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let images: Vec<Vec<u8>> = (0..3).map(|i| content(10 + i, 100_000)).collect();
    for (i, image) in images.iter().enumerate() {
        let report = add_at(
            &library,
            "item",
            image.clone(),
            &format!("2026-01-0{}T00:00:00Z", i + 1),
        );
        assert_eq!(report.version, i as u64 + 1);
    }
    let digest = sha256_hex(&images[1]);
    let prefix = &digest["sha256:".len().."sha256:".len() + 8];
    let shown = library
        .show(&spec(&format!("item@sha256:{prefix}")))
        .unwrap();
    assert_eq!(shown.version, 2);
    assert_eq!(shown.digest, digest);
    assert!(!shown.current);
    assert!(library.show(&spec("item")).unwrap().current);
    assert!(matches!(
        library.show(&spec("item@9")),
        Err(LibraryError::NoSuchVersion { .. })
    ));
    assert!(matches!(
        library.show(&spec("nothing")),
        Err(LibraryError::NoSuchItem { .. })
    ));
}

#[test]
fn rollback_by_version_and_by_time_and_history_shows_every_event() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    for day in 1..=3 {
        add_at(
            &library,
            "os",
            content(day, 50_000),
            &format!("2026-01-0{day}T00:00:00Z"),
        );
    }
    let event = library
        .rollback_at(
            "os",
            RollbackTarget::Version(1),
            Some("bad update"),
            ts("2026-01-04T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(event.version, Some(1));
    assert_eq!(library.show(&spec("os")).unwrap().version, 1);
    library
        .rollback_at(
            "os",
            RollbackTarget::At(ts("2026-01-02T12:00:00Z")),
            None,
            ts("2026-01-05T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(library.show(&spec("os")).unwrap().version, 2);
    assert!(matches!(
        library.rollback_at(
            "os",
            RollbackTarget::At(ts("2025-01-01T00:00:00Z")),
            None,
            ts("2026-01-06T00:00:00Z")
        ),
        Err(LibraryError::NothingCurrentAt { .. })
    ));

    library
        .remove_at("os", Some("retired"), ts("2026-01-06T00:00:00Z"))
        .unwrap();
    assert!(library.list(false).unwrap().is_empty());
    assert_eq!(library.list(true).unwrap().len(), 1);
    assert!(matches!(
        library.show(&spec("os")),
        Err(LibraryError::ItemRemoved { .. })
    ));
    let restored = library
        .rollback_at(
            "os",
            RollbackTarget::Version(3),
            None,
            ts("2026-01-07T00:00:00Z"),
        )
        .unwrap();
    assert_eq!(restored.kind, vmedia_library::EventKind::Restore);

    let history = library.history("os").unwrap();
    let kinds: Vec<&str> = history
        .events
        .iter()
        .map(|e| match e.kind {
            vmedia_library::EventKind::Add => "add",
            vmedia_library::EventKind::Rollback => "rollback",
            vmedia_library::EventKind::Remove => "remove",
            vmedia_library::EventKind::Restore => "restore",
        })
        .collect();
    assert_eq!(
        kinds,
        ["add", "add", "add", "rollback", "rollback", "remove", "restore"]
    );
    assert_eq!(history.current, Some(3));
    assert_eq!(history.events[3].note.as_deref(), Some("bad update"));
    assert_eq!(history.versions.len(), 3);
}

#[test]
fn prune_keeps_exactly_what_the_policy_says_and_gc_frees_what_it_released() {
    let fx = Fixture::new();
    let library = Library::init(
        &fx.config("lib"),
        &InitOptions {
            keep_within: std::time::Duration::from_secs(72 * 3600),
            ..Default::default()
        },
    )
    .unwrap();
    // Distinct content per version, so each version owns its chunks.
    for day in 1..=4 {
        add_at(
            &library,
            "img",
            content(day * 7, 600_000),
            &format!("2026-01-0{day}T00:00:00Z"),
        );
    }
    // Now Jan 6 12:00: the window starts Jan 3 12:00; v3 was current then, v4 since Jan 4.
    let now = ts("2026-01-06T12:00:00Z");
    let dry = library.prune(true, now).unwrap();
    let gone: Vec<u64> = dry.pruned.iter().map(|p| p.version).collect();
    assert_eq!(gone, [1, 2]);
    assert_eq!(
        library
            .history("img")
            .unwrap()
            .versions
            .iter()
            .filter(|v| v.pruned.is_some())
            .count(),
        0,
        "dry run changes nothing"
    );
    let chunks_before = chunk_files(&fx.path("lib")).len();

    let real = library.prune(false, now).unwrap();
    assert_eq!(real.pruned.len(), 2);
    assert!(matches!(
        library.show(&spec("img@1")),
        Err(LibraryError::VersionPruned { .. })
    ));
    assert!(library.show(&spec("img@3")).is_ok());

    let gc = library.gc(&NoProgress).unwrap();
    assert!(gc.ran);
    assert!(gc.deleted_chunks > 0 && gc.freed_bytes > 0, "{gc:?}");
    assert_eq!(
        chunks_before - chunk_files(&fx.path("lib")).len(),
        gc.deleted_chunks as usize
    );
    assert!(library.verify(None, &NoProgress).unwrap().ok());
    let again = library.gc(&NoProgress).unwrap();
    assert_eq!(again.deleted_chunks, 0);
}

#[test]
fn eight_concurrent_adds_to_one_item_all_land() {
    let fx = Fixture::new();
    fx.init("lib");
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let config = fx.config("lib");
            std::thread::spawn(move || {
                let library = Library::open(&config).unwrap();
                library
                    .add(
                        "shared",
                        AddSource::Reader(Box::new(Cursor::new(content(500 + i, 400_000)))),
                        &AddOptions::default(),
                        &NoProgress,
                    )
                    .unwrap()
                    .version
            })
        })
        .collect();
    let mut versions: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    let library = Library::open(&fx.config("lib")).unwrap();
    assert_eq!(library.history("shared").unwrap().versions.len(), 8);
    assert!(library.verify(None, &NoProgress).unwrap().ok());
}

#[test]
fn gc_during_adds_deletes_nothing_still_needed() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    add_at(
        &library,
        "base",
        content(1, 2 << 20),
        "2026-01-01T00:00:00Z",
    );
    let adders: Vec<_> = (0..4u64)
        .map(|i| {
            let config = fx.config("lib");
            std::thread::spawn(move || {
                let library = Library::open(&config).unwrap();
                // Half of each image is the base's content: reused chunks are the risk.
                let mut image = content(1, 2 << 20);
                image.extend(content(700 + i, 1 << 20));
                library
                    .add(
                        "grow",
                        AddSource::Reader(Box::new(Cursor::new(image))),
                        &AddOptions::default(),
                        &NoProgress,
                    )
                    .unwrap();
            })
        })
        .collect();
    for _ in 0..3 {
        library.gc(&NoProgress).unwrap();
    }
    for adder in adders {
        adder.join().unwrap();
    }
    library.gc(&NoProgress).unwrap();
    let report = library.verify(None, &NoProgress).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(library.history("grow").unwrap().versions.len(), 4);
}

#[test]
fn a_flipped_byte_and_a_deleted_chunk_are_named_and_repaired() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let backup = fx.init("backup");
    let image = content(42, 3 << 20);
    let source = fx.file("img", &image);
    add_file(&library, "img", &source);
    add_file(&backup, "img", &source);
    let chunks = chunk_files(&fx.path("lib"));
    assert!(chunks.len() >= 3);
    let mut flipped = fs::read(&chunks[0]).unwrap();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    fs::write(&chunks[0], &flipped).unwrap();
    fs::remove_file(&chunks[1]).unwrap();

    let report = library.verify(None, &NoProgress).unwrap();
    assert!(!report.ok());
    assert_eq!(report.damaged_chunks.len(), 2, "{report:?}");
    assert!(report
        .damaged_chunks
        .iter()
        .all(|d| d.versions == ["img@1"]));
    assert_eq!(report.broken_versions.len(), 1);
    let names: Vec<&str> = report
        .damaged_chunks
        .iter()
        .map(|d| d.chunk.as_str())
        .collect();
    for chunk in &chunks[..2] {
        let key = chunk
            .strip_prefix(fx.path("lib"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            names.contains(&key.as_str()),
            "{key} not named in {names:?}"
        );
    }
    let out = fx.path("out");
    assert!(library
        .get(&spec("img"), &out, OverwritePolicy::Refuse, &NoProgress)
        .is_err());
    assert!(!out.exists(), "a failed get leaves no output");
    let mut sink = Vec::new();
    assert!(library.cat(&spec("img"), &mut sink).is_err());

    let repair = library.repair(&backup, &NoProgress).unwrap();
    assert_eq!(repair.repaired.len(), 2);
    assert!(repair.after.ok());
    library
        .get(&spec("img"), &out, OverwritePolicy::Refuse, &NoProgress)
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), image);
}

#[test]
fn an_encrypted_store_reveals_no_content_refuses_a_wrong_key_and_detects_swaps() {
    let fx = Fixture::new();
    let key = content(77, 32);
    let library = Library::init(
        &fx.config("lib"),
        &InitOptions {
            encrypt_key: Some(key.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let marker: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let mut image = content(8, 1 << 20);
    image.extend_from_slice(&marker);
    image.extend(content(9, 1 << 20));
    let digest_hex = sha256_hex(&image);
    add_at(
        &library,
        "secret-image",
        image.clone(),
        "2026-01-01T00:00:00Z",
    );

    for file in files_under(&fx.path("lib")) {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !bytes.windows(64).any(|w| w == marker.as_slice()),
            "marker in {}",
            file.display()
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("secret-image"),
            "item name in {}",
            file.display()
        );
        assert!(
            !text.contains(&digest_hex[7..]),
            "digest in {}",
            file.display()
        );
        assert!(!file.to_string_lossy().contains("secret-image"));
    }

    let mut no_key = fx.config("lib");
    assert!(matches!(
        Library::open(&no_key),
        Err(LibraryError::KeyRequired { .. })
    ));
    no_key.key = Some(content(78, 32));
    assert!(matches!(
        Library::open(&no_key),
        Err(LibraryError::WrongKey { .. })
    ));
    let mut right = fx.config("lib");
    right.key = Some(key);
    let reopened = Library::open(&right).unwrap();
    let mut out = Vec::new();
    reopened.cat(&spec("secret-image"), &mut out).unwrap();
    assert_eq!(out, image);

    // Swap two chunk objects: both fail authentication.
    let chunks = chunk_files(&fx.path("lib"));
    let a = fs::read(&chunks[0]).unwrap();
    let b = fs::read(&chunks[1]).unwrap();
    fs::write(&chunks[0], &b).unwrap();
    fs::write(&chunks[1], &a).unwrap();
    let report = reopened.verify(None, &NoProgress).unwrap();
    assert_eq!(report.damaged_chunks.len(), 2, "{report:?}");
    assert!(reopened
        .cat(&spec("secret-image"), &mut Vec::new())
        .is_err());
}

const SIGNING_KEY_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

#[test]
fn a_require_signed_library_refuses_unsigned_adds_and_manifests_verify_offline() {
    let fx = Fixture::new();
    let signing = vmedia_library::parse_signing_key(SIGNING_KEY_HEX).unwrap();
    let public_hex = hex::encode(signing.verifying_key().to_bytes());
    let library = Library::init(
        &fx.config("lib"),
        &InitOptions {
            require_signed: vec![public_hex.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    let image = content(4, 200_000);
    let unsigned = library.add(
        "signed",
        AddSource::Reader(Box::new(Cursor::new(image.clone()))),
        &AddOptions::default(),
        &NoProgress,
    );
    assert!(matches!(unsigned, Err(LibraryError::Unsigned { .. })));
    let other_key = "1".repeat(64);
    let untrusted = library.add(
        "signed",
        AddSource::Reader(Box::new(Cursor::new(image.clone()))),
        &AddOptions {
            sign_key_pem: Some(other_key),
            ..Default::default()
        },
        &NoProgress,
    );
    assert!(matches!(untrusted, Err(LibraryError::Untrusted { .. })));
    let report = library
        .add(
            "signed",
            AddSource::Reader(Box::new(Cursor::new(image))),
            &AddOptions {
                sign_key_pem: Some(SIGNING_KEY_HEX.into()),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    assert!(report.signed_by.is_some());

    let manifest = library.export_manifest(&spec("signed")).unwrap();
    let check = vmedia_library::verify_signature(&manifest, &public_hex).unwrap();
    assert!(check.ok(), "{check:?}");
    // Change one byte of the header (the recorded size's digit): parses, no longer verifies.
    let text_at = manifest.windows(7).position(|w| w == b"\"size\":").unwrap() + 7;
    let mut tampered = manifest.clone();
    tampered[text_at] = if tampered[text_at] == b'1' {
        b'2'
    } else {
        b'1'
    };
    let check = vmedia_library::verify_signature(&tampered, &public_hex);
    assert!(!check.map(|c| c.ok()).unwrap_or(false));
}

#[test]
fn a_read_of_an_unsigned_version_is_refused_in_a_require_signed_library() {
    let fx = Fixture::new();
    let plain = fx.init("lib");
    add_at(&plain, "x", content(1, 1000), "2026-01-01T00:00:00Z");
    // The store gains a trust requirement afterwards (a copied library.json): reads refuse.
    let signing = vmedia_library::parse_signing_key(SIGNING_KEY_HEX).unwrap();
    let other = fx.path("signed-lib");
    Library::init(
        &OpenConfig::folder(&other, "t"),
        &InitOptions {
            require_signed: vec![hex::encode(signing.verifying_key().to_bytes())],
            ..Default::default()
        },
    )
    .unwrap();
    fs::copy(
        other.join("library.json"),
        fx.path("lib").join("library.json"),
    )
    .unwrap();
    let reopened = Library::open(&fx.config("lib")).unwrap();
    assert!(matches!(
        reopened.open_version(&spec("x")),
        Err(LibraryError::Unsigned { .. })
    ));
}

#[test]
fn leftovers_of_a_killed_add_verify_clean_and_gc_removes_them() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    add_at(
        &library,
        "kept",
        content(1, 500_000),
        "2026-01-01T00:00:00Z",
    );
    // What a SIGKILL after the chunks and the manifest but before the timeline swap leaves:
    // orphan chunks, an orphan manifest, and an add marker of a process that is gone.
    let lib = fx.path("lib");
    fs::create_dir_all(lib.join("chunks/00")).unwrap();
    fs::write(
        lib.join(format!("chunks/00/00{}", "ab".repeat(31))),
        b"\x00orphan",
    )
    .unwrap();
    fs::create_dir_all(lib.join("manifests")).unwrap();
    fs::write(
        lib.join(format!("manifests/{}", "cd".repeat(32))),
        b"partial",
    )
    .unwrap();
    fs::create_dir_all(lib.join("locks")).unwrap();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    fs::write(
        lib.join("locks/add-dead"),
        format!(
            r#"{{"kind":"add","actor":"x","boot_id":"{}","pid":4000000,"heartbeat":"{}"}}"#,
            boot_id.trim(),
            jiff::Timestamp::now()
        ),
    )
    .unwrap();
    fs::write(lib.join("chunks/00/.tmp-1-2-x"), b"half written").unwrap();

    assert!(library.verify(None, &NoProgress).unwrap().ok());
    let gc = library.gc(&NoProgress).unwrap();
    assert!(gc.ran, "a dead add's marker blocks nothing: {gc:?}");
    assert_eq!(gc.deleted_chunks, 1);
    assert_eq!(gc.deleted_manifests, 1);
    assert_eq!(gc.stale_markers_removed, 1);
    assert!(library.verify(None, &NoProgress).unwrap().ok());
    assert_eq!(library.show(&spec("kept")).unwrap().version, 1);
}

#[test]
fn hostile_objects_give_clear_errors() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    add_at(&library, "x", content(1, 100_000), "2026-01-01T00:00:00Z");
    let lib = fx.path("lib");
    // A rewritten manifest no longer matches its content-addressed name.
    let manifest = files_under(&lib.join("manifests")).remove(0);
    let mut bytes = fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&manifest, &bytes).unwrap();
    let err = library.show(&spec("x")).unwrap_err();
    assert!(matches!(err, LibraryError::Tampered { .. }), "{err}");
    // A timeline that is not JSON.
    fs::write(lib.join("items/x"), b"{not json").unwrap();
    let err = library.show(&spec("x")).unwrap_err();
    assert!(matches!(err, LibraryError::Corrupt { .. }), "{err}");
    // An absurdly large timeline is refused before it is read.
    let big = fs::File::create(lib.join("items/x")).unwrap();
    big.set_len(64 << 20).unwrap();
    let err = library.history("x").unwrap_err();
    assert!(matches!(err, LibraryError::TooLarge { .. }), "{err}");
}

#[test]
fn init_twice_and_opening_nothing_are_clear_errors() {
    let fx = Fixture::new();
    fx.init("lib");
    assert!(matches!(
        Library::init(&fx.config("lib"), &InitOptions::default()),
        Err(LibraryError::AlreadyExists { .. })
    ));
    assert!(matches!(
        Library::open(&fx.config("none")),
        Err(LibraryError::NotALibrary { .. })
    ));
}

#[test]
fn new_bytes_of_a_version_count_only_chunks_no_earlier_version_uses() {
    let fx = Fixture::new();
    let library = fx.init("lib");
    let v1 = content(7, 6 << 20);
    // Version 2: one 100 KiB region in the middle rewritten; the rest is shared.
    let mut v2 = v1.clone();
    let changed = 100 << 10;
    v2[3 << 20..(3 << 20) + changed].copy_from_slice(&content(8, changed));
    add_at(&library, "disk.img", v1.clone(), "2026-03-01T00:00:00Z");
    add_at(&library, "disk.img", v2.clone(), "2026-03-02T00:00:00Z");
    // Version 3 brings version 1's bytes back: nothing in it is new to the item.
    add_at(&library, "disk.img", v1.clone(), "2026-03-03T00:00:00Z");

    let history = library.history("disk.img").unwrap();
    let figures: Vec<(u64, Option<u64>, Option<u64>)> = history
        .versions
        .iter()
        .map(|v| (v.size, v.new_bytes, v.shared_bytes))
        .collect();
    assert_eq!(
        figures[0],
        (v1.len() as u64, Some(v1.len() as u64), Some(0))
    );
    let (size, new, shared) = figures[1];
    let (new, shared) = (new.unwrap(), shared.unwrap());
    assert_eq!(new + shared, size);
    // The changed region plus at most the chunks it touches (1 MiB max each, two of them
    // when the region straddles a boundary).
    assert!(
        new >= changed as u64 && new <= changed as u64 + (2 << 20),
        "version 2 has {new} new bytes for a {changed}-byte change"
    );
    assert!(shared >= (3 << 20), "version 2 shares only {shared} bytes");
    assert_eq!(
        figures[2],
        (v1.len() as u64, Some(0), Some(v1.len() as u64))
    );

    // `show` gives the same split as `history`.
    let shown = library.show(&spec("disk.img@2")).unwrap();
    assert_eq!(
        (shown.new_bytes, shown.shared_bytes),
        (Some(new), Some(shared))
    );
    let shown = library.show(&spec("disk.img@1")).unwrap();
    assert_eq!(shown.new_bytes, Some(v1.len() as u64));
}

#[test]
fn a_version_added_over_its_predecessor_is_indexed_as_a_fresh_add_would_index_it() {
    // The second add takes the digests of unchanged chunks from the first version's
    // fingerprints instead of computing them: its index must equal the one an add into an
    // empty library computes with a SHA-256 of every chunk.
    let fx = Fixture::new();
    let v1 = content(11, 5 << 20);
    let mut v2 = v1.clone();
    v2[2 << 20..(2 << 20) + 4096].copy_from_slice(&content(12, 4096));
    v2.extend_from_slice(&[0u8; 3 << 20]);
    v2.extend_from_slice(&v1[..1 << 20]);
    let library = fx.init("lib");
    add_at(&library, "img", v1, "2026-03-01T00:00:00Z");
    let second = add_at(&library, "img", v2.clone(), "2026-03-02T00:00:00Z");
    // The changed chunk and the appended tail's first chunks (cut differently after the zeros)
    // are new; the rest of the 9 MiB is not.
    assert!(
        second.new_bytes < (4 << 20),
        "{} new bytes for a 4 KiB change and a 1 MiB tail",
        second.new_bytes
    );
    let fresh = fx.init("fresh");
    add_at(&fresh, "img", v2.clone(), "2026-03-02T00:00:00Z");

    let parse = |library: &Library, version: &str| {
        let bytes = library.export_manifest(&spec(version)).unwrap();
        vmedia_library::manifest::Manifest::parse(version, &bytes).unwrap()
    };
    let over = parse(&library, "img@2");
    let alone = parse(&fresh, "img@1");
    assert_eq!(over.entries, alone.entries);
    assert_eq!(over.fingerprints, alone.fingerprints);
    let fingerprints = alone.fingerprints.expect("an add records fingerprints");
    assert_eq!(fingerprints.len(), alone.entries.len());
    assert!(alone.entries.iter().any(|e| e.zero));
    for (entry, fingerprint) in alone.entries.iter().zip(&fingerprints) {
        let bytes = &v2[entry.offset as usize..entry.end() as usize];
        if entry.zero {
            assert_eq!(*fingerprint, [0; 32]);
            continue;
        }
        assert_eq!(
            format!("sha256:{}", hex::encode(entry.digest)),
            sha256_hex(bytes)
        );
        assert_eq!(fingerprint, blake3::hash(bytes).as_bytes());
    }
}
