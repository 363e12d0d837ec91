//! `CloneStore` driven directly: isolation, persistence, ephemeral clones, write / zero / trim
//! / flush / FUA semantics, partial blocks, extents, names, journal torn tails and compaction.

#[path = "support_clones.rs"]
mod support_clones;

use std::sync::Arc;

use support_clones::{bases_with, pattern, read_all};
use vmedia_server::clones::{CloneError, CloneStore, BLOCK_SIZE, CLONES_DIR};
use vmedia_server::export::{ExportError, Extent};

const MIB: u64 = 1 << 20;
const BS: u64 = BLOCK_SIZE as u64;

fn store(dir: &std::path::Path, bases: &Arc<support_clones::TestBases>) -> CloneStore {
    CloneStore::open(&dir.join("state"), Arc::clone(bases) as _).unwrap()
}

#[test]
fn two_clones_of_one_base_are_isolated_and_the_base_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), 8 * MIB);
    let original = base.bytes();
    let clones = store(dir.path(), &bases);
    let a = clones.create("base", "vm-a", false).unwrap();
    assert_eq!(a.base, "base@1");
    assert_eq!(a.base_digest, "sha256:base");
    assert_eq!((a.size, a.bytes_written), (8 * MIB, 0));
    clones.create("base", "vm-b", false).unwrap();
    let ea = clones.open_export("vm-a").unwrap();
    let eb = clones.open_export("vm-b").unwrap();
    assert_eq!(ea.name(), "clone/vm-a");
    assert!(!ea.read_only());
    assert_eq!(read_all(ea.as_ref()), original);

    ea.write_at(&pattern(1, 100_000), 3 * MIB + 5, false)
        .unwrap();
    eb.write_at(&pattern(2, 4096), 3 * MIB + 4096, false)
        .unwrap();

    let mut want_a = original.clone();
    want_a[3 * MIB as usize + 5..][..100_000].copy_from_slice(&pattern(1, 100_000));
    let mut want_b = original.clone();
    want_b[3 * MIB as usize + 4096..][..4096].copy_from_slice(&pattern(2, 4096));
    assert_eq!(read_all(ea.as_ref()), want_a);
    assert_eq!(read_all(eb.as_ref()), want_b);
    assert_eq!(base.bytes(), original, "the base file changed");
    // Two connections to one clone share its overlay.
    let again = clones.open_export("vm-a").unwrap();
    assert_eq!(read_all(again.as_ref()), want_a);
    assert!(ea.can_multi_conn());

    let listed = clones.list();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].name, "vm-a");
    // 100_000 bytes from 3 MiB + 5 touch two 64 KiB blocks.
    assert_eq!(listed[0].bytes_written, 2 * BS);
    assert_eq!(listed[1].bytes_written, BS);
}

#[test]
fn flushed_writes_survive_a_reopen_and_base_reads_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), 4 * MIB + 1000);
    let mut want = base.bytes();
    {
        let clones = store(dir.path(), &bases);
        clones.create("base@1", "keep", false).unwrap();
        let export = clones.open_export("keep").unwrap();
        // Across a block boundary, unaligned; and the short last block.
        export
            .write_at(&pattern(3, 70_000), BS - 10, false)
            .unwrap();
        export
            .write_at(&pattern(4, 900), 4 * MIB + 50, true)
            .unwrap();
        export.write_zeroes(MIB, 2 * BS, false).unwrap();
        export.flush().unwrap();
        want[BS as usize - 10..][..70_000].copy_from_slice(&pattern(3, 70_000));
        want[4 * MIB as usize + 50..][..900].copy_from_slice(&pattern(4, 900));
        want[MIB as usize..][..2 * BS as usize].fill(0);
        assert_eq!(read_all(export.as_ref()), want);
    }
    let clones = store(dir.path(), &bases);
    let export = clones.open_export("keep").unwrap();
    assert_eq!(export.size(), 4 * MIB + 1000);
    assert_eq!(read_all(export.as_ref()), want);
    let info = clones.get("keep").unwrap();
    // Blocks 0 to 2 (the write), 16 and 17 (the zeroes), 64 (the short last block: 1000).
    assert_eq!(info.bytes_written, 5 * BS + 1000);
}

#[test]
fn ephemeral_clones_go_on_restart_and_any_clone_goes_on_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), MIB);
    let root = dir.path().join("state").join(CLONES_DIR);
    {
        let clones = store(dir.path(), &bases);
        clones.create("base", "scratch", true).unwrap();
        clones.create("base", "kept", false).unwrap();
        clones.create("base", "gone", false).unwrap();
        let gone = clones.open_export("gone").unwrap();
        gone.write_at(b"x", 0, true).unwrap();
        clones.remove("gone").unwrap();
        assert!(!root.join("gone").exists());
        // A connection still open to a removed clone gets errors, not a resurrected file.
        assert_eq!(
            gone.write_at(b"y", 0, false).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        assert!(matches!(
            clones.remove("gone"),
            Err(CloneError::NotFound(_))
        ));
        assert!(root.join("scratch").exists());
        // A create interrupted before its rename leaves a hidden folder.
        std::fs::create_dir(root.join(".half.creating-1-1")).unwrap();
    }
    let clones = store(dir.path(), &bases);
    let names: Vec<String> = clones.list().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["kept"]);
    assert!(!root.join("scratch").exists());
    assert!(!root.join(".half.creating-1-1").exists());
    assert!(matches!(
        clones.open_export("scratch"),
        Err(ExportError::NotFound(_))
    ));
    // The name of a removed clone is free again.
    clones.create("base", "gone", false).unwrap();
    assert_eq!(read_all(clones.open_export("gone").unwrap().as_ref())[0], {
        support_clones::pattern(7, 1)[0]
    });
}

#[test]
fn zeroes_and_trim_read_as_zero_and_show_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), 2 * MIB);
    let clones = store(dir.path(), &bases);
    clones.create("base", "z", false).unwrap();
    let e = clones.open_export("z").unwrap();
    let mut want = base.bytes();
    // Partial blocks on both ends: the base bytes beside the range stay.
    e.write_zeroes(1000, 2 * BS, false).unwrap();
    want[1000..][..2 * BS as usize].fill(0);
    e.trim(5 * BS, BS).unwrap();
    want[5 * BS as usize..][..BS as usize].fill(0);
    e.write_at(&pattern(9, 10), 7 * BS, false).unwrap();
    want[7 * BS as usize..][..10].copy_from_slice(&pattern(9, 10));
    assert_eq!(read_all(e.as_ref()), want);

    let extents = e.extents(0, 2 * MIB).unwrap();
    let total: u64 = extents.iter().map(|x| x.length).sum();
    assert_eq!(total, 2 * MIB);
    let data = |length| Extent {
        length,
        hole: false,
        zero: false,
    };
    let hole = |length| Extent {
        length,
        hole: true,
        zero: true,
    };
    assert_eq!(
        extents,
        [
            // blocks 0 and 2 (partial zeroes over base data) are the clone's; block 1 is zero
            data(BS),
            hole(BS),
            data(3 * BS),
            hole(BS),
            data(MIB - 6 * BS),
            // the base's own hole in its second half
            hole(MIB),
        ]
    );
    // A window inside one run, and a request past the end clipped to the disk.
    assert_eq!(e.extents(BS + 10, 20).unwrap(), [hole(20)]);
    assert_eq!(e.extents(2 * MIB - 5, 100).unwrap(), [hole(5)]);
    // Zeroes over a data block in the base's hole, then a write there.
    e.write_at(&pattern(10, 3), MIB + 7, false).unwrap();
    assert_eq!(e.extents(MIB, BS).unwrap(), [data(BS)]);
    e.write_zeroes(MIB, BS, true).unwrap();
    assert_eq!(e.extents(MIB, BS).unwrap(), [hole(BS)]);
}

#[test]
fn zeroing_whole_blocks_releases_their_space() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), 4 * MIB);
    let clones = store(dir.path(), &bases);
    clones.create("base", "space", false).unwrap();
    let e = clones.open_export("space").unwrap();
    let data = dir
        .path()
        .join("state")
        .join(CLONES_DIR)
        .join("space")
        .join("data");
    let allocated = || std::fs::metadata(&data).unwrap().blocks() * 512;
    assert_eq!(allocated(), 0, "a new clone's data file is sparse");
    e.write_at(&pattern(11, 2 * MIB as usize), 0, true).unwrap();
    assert!(allocated() >= 2 * MIB);
    e.trim(0, 2 * MIB).unwrap();
    e.flush().unwrap();
    assert!(
        allocated() < MIB / 2,
        "{} bytes still allocated",
        allocated()
    );
    assert!(read_all(e.as_ref())[..2 * MIB as usize]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn a_second_store_on_one_state_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), MIB);
    let first = store(dir.path(), &bases);
    first.create("base", "mine", false).unwrap();
    let second = CloneStore::open(&dir.path().join("state"), Arc::clone(&bases) as _);
    assert!(matches!(second, Err(CloneError::Locked { .. })));
    drop(first);
    assert_eq!(store(dir.path(), &bases).list().len(), 1);
}

#[test]
fn out_of_range_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), MIB);
    let clones = store(dir.path(), &bases);
    clones.create("base", "r", false).unwrap();
    let e = clones.open_export("r").unwrap();
    let err = e.write_at(b"ab", MIB - 1, false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.write_zeroes(u64::MAX, 2, false).is_err());
    let mut buf = [0u8; 2];
    assert!(e.read_at(&mut buf, MIB - 1).is_err());
    assert_eq!(clones.get("r").unwrap().bytes_written, 0);
}

#[test]
fn names_are_checked_and_taken_names_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), MIB);
    let clones = store(dir.path(), &bases);
    for bad in [
        "",
        "a/b",
        "..",
        ".hidden",
        "-x",
        "a\nb",
        "tab\t",
        "é",
        &"n".repeat(129),
    ] {
        assert!(
            matches!(
                clones.create("base", bad, false),
                Err(CloneError::InvalidName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    clones.create("base", &"n".repeat(128), false).unwrap();
    clones.create("base", "vm1", false).unwrap();
    assert!(matches!(
        clones.create("base", "vm1", true),
        Err(CloneError::Exists(_))
    ));
    assert!(matches!(
        clones.create("nope", "vm2", false),
        Err(CloneError::Base {
            source: ExportError::NotFound(_),
            ..
        })
    ));
    assert!(matches!(
        clones.create("base@2", "vm2", false),
        Err(CloneError::Base { .. })
    ));
    assert_eq!(clones.list().len(), 2);
}

#[test]
fn a_clone_refuses_a_base_whose_digest_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), MIB);
    {
        let clones = store(dir.path(), &bases);
        clones.create("base", "pinned", false).unwrap();
    }
    bases.add(base, "sha256:other");
    let clones = store(dir.path(), &bases);
    let e = clones.open_export("pinned").unwrap();
    let mut buf = [0u8; 16];
    let err = e.read_at(&mut buf, 0).unwrap_err();
    assert!(err.to_string().contains("sha256:other"), "{err}");
}

#[test]
fn a_torn_journal_tail_is_dropped_and_later_appends_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), MIB);
    let journal = dir
        .path()
        .join("state")
        .join(CLONES_DIR)
        .join("t")
        .join("journal");
    let mut want = base.bytes();
    {
        let clones = store(dir.path(), &bases);
        clones.create("base", "t", false).unwrap();
        let e = clones.open_export("t").unwrap();
        e.write_at(&pattern(5, 10), 0, true).unwrap();
        want[..10].copy_from_slice(&pattern(5, 10));
    }
    // Half a record, as an append killed mid-write leaves.
    let mut bytes = std::fs::read(&journal).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 9]);
    std::fs::write(&journal, &bytes).unwrap();
    {
        let clones = store(dir.path(), &bases);
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), good as u64);
        let e = clones.open_export("t").unwrap();
        assert_eq!(read_all(e.as_ref()), want);
        e.write_at(&pattern(6, 10), 5 * BS, false).unwrap();
        e.flush().unwrap();
        want[5 * BS as usize..][..10].copy_from_slice(&pattern(6, 10));
    }
    let clones = store(dir.path(), &bases);
    assert_eq!(read_all(clones.open_export("t").unwrap().as_ref()), want);
}

#[test]
fn a_damaged_clone_is_set_aside_and_the_others_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), MIB);
    let clone_dir = dir.path().join("state").join(CLONES_DIR).join("d");
    {
        let clones = store(dir.path(), &bases);
        clones.create("base", "d", false).unwrap();
        clones.create("base", "fine", false).unwrap();
    }
    let journal = clone_dir.join("journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[9] ^= 0x40;
    std::fs::write(&journal, &bytes).unwrap();
    // The store (and the daemon) still opens; the damaged clone is set aside, not served,
    // not deleted, its name still taken.
    let clones = CloneStore::open(&dir.path().join("state"), bases as _).unwrap();
    let damaged = clones.damaged();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].name, "d");
    assert!(
        damaged[0].problem.contains("journal"),
        "{}",
        damaged[0].problem
    );
    let names: Vec<String> = clones.list().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["fine"]);
    assert!(clones.open_export("d").is_err());
    assert!(matches!(
        clones.create("base", "d", false),
        Err(CloneError::Exists(_))
    ));
    assert!(clone_dir.join("journal").exists());
}

#[test]
fn the_journal_is_compacted_when_it_outgrows_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), 4 * MIB);
    let mut want = base.bytes();
    {
        let clones = store(dir.path(), &bases);
        clones.create("base", "c", false).unwrap();
        let e = clones.open_export("c").unwrap();
        // Alternate two blocks between data and zero (two records per four operations), all in
        // one flush.
        for i in 0..10_000u64 {
            let block = i % 2;
            if i % 4 < 2 {
                e.write_at(&[i as u8; 8], block * BS, false).unwrap();
            } else {
                e.write_zeroes(block * BS, BS, false).unwrap();
            }
        }
        e.flush().unwrap();
        for i in 9996..10_000u64 {
            let block = (i % 2) as usize * BS as usize;
            if i % 4 < 2 {
                want[block..][..BS as usize].fill(0);
                want[block..][..8].fill(i as u8);
            } else {
                want[block..][..BS as usize].fill(0);
            }
        }
        assert!(clones.journal_records("c").unwrap() <= 2);
        assert_eq!(read_all(e.as_ref()), want);
        // Appends after a compaction land in the new journal.
        e.write_at(&[0xEE; 3], 3 * BS, true).unwrap();
        want[3 * BS as usize..][..3].fill(0xEE);
    }
    let clones = store(dir.path(), &bases);
    assert!(clones.journal_records("c").unwrap() <= 3);
    assert_eq!(read_all(clones.open_export("c").unwrap().as_ref()), want);
}

#[test]
fn concurrent_writers_on_one_clone_are_all_covered_by_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), 16 * MIB);
    let mut want = base.bytes();
    {
        let clones = store(dir.path(), &bases);
        clones.create("base", "mc", false).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let e = clones.open_export("mc").unwrap();
                scope.spawn(move || {
                    // Interleaved 5000-byte writes: threads share blocks, never bytes.
                    for i in 0..200u64 {
                        let offset = (i * 4 + t) * 5000;
                        e.write_at(&pattern(offset, 5000), offset, false).unwrap();
                    }
                });
            }
        });
        clones.open_export("mc").unwrap().flush().unwrap();
    }
    for n in 0..800u64 {
        let offset = n * 5000;
        want[offset as usize..][..5000].copy_from_slice(&pattern(offset, 5000));
    }
    let clones = store(dir.path(), &bases);
    assert_eq!(read_all(clones.open_export("mc").unwrap().as_ref()), want);
}
