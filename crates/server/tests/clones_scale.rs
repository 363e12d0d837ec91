//! 500 clones of one base at once, each written with 1 MiB and read back, with the open data
//! files capped well below the clone count.

#[path = "support_clones.rs"]
mod support_clones;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use support_clones::{bases_with, pattern};
use vmedia_server::clones::CloneStore;

const CLONES: u64 = 500;
const MIB: u64 = 1 << 20;
const BASE_SIZE: u64 = 64 * MIB;
const OPEN_FILES: usize = 64;
const THREADS: u64 = 8;

/// Clone `i` writes 1 MiB at an unaligned offset of its own (partial blocks at both ends).
fn offset(i: u64) -> u64 {
    (i * 7 * MIB + (i + 1) * 4097) % (BASE_SIZE - 2 * MIB)
}

#[test]
fn five_hundred_clones_of_one_base_each_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, base) = bases_with(dir.path(), BASE_SIZE);
    let original = base.bytes();
    let started = std::time::Instant::now();
    {
        let clones = CloneStore::open_with_limit(
            &dir.path().join("state"),
            Arc::clone(&bases) as _,
            OPEN_FILES,
        )
        .unwrap();
        for i in 0..CLONES {
            clones.create("base", &format!("vm{i:03}"), false).unwrap();
        }
        let created = started.elapsed();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let clones = &clones;
                scope.spawn(move || {
                    for i in (t..CLONES).step_by(THREADS as usize) {
                        let export = clones.open_export(&format!("vm{i:03}")).unwrap();
                        export
                            .write_at(&pattern(i, MIB as usize), offset(i), false)
                            .unwrap();
                        export.flush().unwrap();
                    }
                });
            }
        });
        assert!(
            clones.open_files() <= OPEN_FILES,
            "{} open",
            clones.open_files()
        );
        eprintln!(
            "500 clones: created in {created:?}, written and flushed by {:?}",
            started.elapsed()
        );
        assert_eq!(bases.opens.load(Ordering::Relaxed), CLONES);
    }
    // After a restart every clone holds its own megabyte and nobody else's.
    let clones = CloneStore::open_with_limit(
        &dir.path().join("state"),
        Arc::clone(&bases) as _,
        OPEN_FILES,
    )
    .unwrap();
    let listed = clones.list();
    assert_eq!(listed.len(), CLONES as usize);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (clones, original) = (&clones, &original);
            scope.spawn(move || {
                let mut buf = vec![0u8; 3 * MIB as usize];
                for i in (t..CLONES).step_by(THREADS as usize) {
                    let export = clones.open_export(&format!("vm{i:03}")).unwrap();
                    // The megabyte and a megabyte of base on either side of it.
                    let from = offset(i).saturating_sub(MIB);
                    let len = (3 * MIB).min(BASE_SIZE - from) as usize;
                    export.read_at(&mut buf[..len], from).unwrap();
                    let mut want = original[from as usize..from as usize + len].to_vec();
                    let at = (offset(i) - from) as usize;
                    want[at..at + MIB as usize].copy_from_slice(&pattern(i, MIB as usize));
                    assert!(buf[..len] == want[..], "clone {i} reads wrong bytes");
                }
            });
        }
    });
    assert!(clones.open_files() <= OPEN_FILES);
    for info in listed {
        // 1 MiB at an unaligned offset covers 17 blocks.
        assert_eq!(info.bytes_written, 17 * 64 * 1024, "{}", info.name);
    }
    eprintln!(
        "500 clones: verified after a reopen by {:?}",
        started.elapsed()
    );
}

/// One clone written sequentially in 1 MiB requests, flushed, then read back: prints the
/// throughput (the figure the docs quote) and checks every byte.
#[test]
fn sequential_writes_and_reads_of_one_clone() {
    const SIZE: u64 = 128 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), SIZE);
    let clones = CloneStore::open(&dir.path().join("state"), bases as _).unwrap();
    clones.create("base", "seq", false).unwrap();
    let export = clones.open_export("seq").unwrap();
    let chunk = |i: u64| pattern(i + 77, MIB as usize);
    let started = std::time::Instant::now();
    for i in 0..SIZE / MIB {
        export.write_at(&chunk(i), i * MIB, false).unwrap();
    }
    export.flush().unwrap();
    let wrote = started.elapsed();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..SIZE / MIB {
        export.read_at(&mut buf, i * MIB).unwrap();
        assert!(buf == chunk(i), "MiB {i}");
    }
    let read = started.elapsed();
    let rate = |d: std::time::Duration| SIZE as f64 / MIB as f64 / d.as_secs_f64();
    eprintln!(
        "one clone, 128 MiB in 1 MiB requests: write+flush {:.0} MiB/s, read {:.0} MiB/s (both \
         include generating the test pattern)",
        rate(wrote),
        rate(read)
    );
}
