//! A SIGKILL loses no clone write whose FLUSH (or FUA) was acknowledged: a child process writes
//! and flushes, reporting each durable point on stdout, and is killed mid-stream; the reopened
//! clone holds every write it reported.

#[path = "support_clones.rs"]
mod support_clones;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use support_clones::{bases_with, pattern, read_all};
use vmedia_server::clones::CloneStore;

const SIZE: u64 = 64 << 20;
/// Each write has its own range: `STRIDE` apart, `LEN` long, so blocks are shared (partial
/// blocks need read-modify-write) but bytes are not.
const STRIDE: u64 = 70_001;
const LEN: usize = 60_000;
const WRITES: u64 = SIZE / STRIDE - 1;
const CHILD_ENV: &str = "VMEDIA_CLONES_CRASH_CHILD";

fn offset(i: u64) -> u64 {
    i * STRIDE
}

/// Write `i`: zeroes for every seventh, else its pattern.
fn expected(i: u64) -> Vec<u8> {
    if i % 7 == 3 {
        vec![0u8; LEN]
    } else {
        pattern(i + 1000, LEN)
    }
}

fn open(dir: &Path) -> (CloneStore, Arc<support_clones::FileBase>) {
    let (bases, base) = bases_with(dir, SIZE);
    (
        CloneStore::open(&dir.join("state"), bases as _).unwrap(),
        base,
    )
}

/// The child: runs only when the parent sets `CHILD_ENV`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (clones, _) = open(Path::new(&dir));
    let export = clones.open_export("crash").unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..WRITES {
        let fua = i % 5 == 4;
        if i % 7 == 3 {
            export.write_zeroes(offset(i), LEN as u64, fua).unwrap();
        } else {
            export.write_at(&expected(i), offset(i), fua).unwrap();
        }
        if fua {
            writeln!(out, "durable-one {i}").unwrap();
        }
        if i % 11 == 10 {
            export.flush().unwrap();
            writeln!(out, "durable-upto {i}").unwrap();
        }
        out.flush().unwrap();
    }
    // Never exit on our own: the parent kills us.
    std::thread::sleep(std::time::Duration::from_secs(600));
}

#[test]
fn a_sigkill_loses_no_flushed_or_fua_write() {
    let dir = tempfile::tempdir().unwrap();
    let original = {
        let (clones, base) = open(dir.path());
        clones.create("base", "crash", false).unwrap();
        base.bytes()
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap());
    let mut upto: Option<u64> = None;
    let mut fua = Vec::new();
    for line in lines.lines() {
        let line = line.unwrap();
        if let Some(i) = line.strip_prefix("durable-upto ") {
            upto = Some(i.parse().unwrap());
        } else if let Some(i) = line.strip_prefix("durable-one ") {
            fua.push(i.parse::<u64>().unwrap());
        }
        // Kill mid-stream: writes after this point are in flight or unflushed.
        if upto.is_some_and(|u| u >= 300) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let upto = upto.expect("the child reported no flush");

    let (clones, _) = open(dir.path());
    let content = read_all(clones.open_export("crash").unwrap().as_ref());
    let mut checked = 0;
    for i in (0..=upto).chain(fua.iter().copied()) {
        let at = offset(i) as usize;
        assert!(
            content[at..at + LEN] == expected(i)[..],
            "write {i} (flushed up to {upto}) was lost"
        );
        checked += 1;
    }
    // Bytes between writes that were made were never written: still the base's.
    for i in 0..=upto {
        let gap = offset(i) as usize + LEN..offset(i + 1) as usize;
        assert_eq!(content[gap.clone()], original[gap], "gap after write {i}");
    }
    assert!(checked > 300);
}
