//! Three-level delta chains in every format that has them (qcow2, VMDK delta disks made by
//! qemu-img and by vmedia, VHD and VHDX differencing disks made by vmedia): the chain reads
//! like the pattern written into it, `commit` and `rebase` (safe and unsafe) keep the guest's
//! view, and the real qemu-img agrees wherever it reads the format (qemu 7.2 does not follow
//! VHD parents and refuses VHDX differencing disks: there it checks the committed bases).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{require_tool, run_any, run_ok, vmedia};

const MIB: u64 = 1 << 20;
/// Requested virtual size; VHD rounds it up to whole CHS cylinders, so the real size is read
/// back from `vmedia disk info`.
const SIZE: u64 = 8 * MIB;

/// One write into a layer: a byte pattern, or zeros (qemu-io `write -z`).
#[derive(Clone, Copy)]
struct Write {
    offset: u64,
    len: u64,
    pattern: Option<u8>,
}

const fn pattern(offset: u64, len: u64, byte: u8) -> Write {
    Write {
        offset,
        len,
        pattern: Some(byte),
    }
}

const fn zeros(offset: u64, len: u64) -> Write {
    Write {
        offset,
        len,
        pattern: None,
    }
}

/// Distinct, overlapping patterns per level; the top also zeroes a range that the base holds.
const BASE_WRITES: &[Write] = &[pattern(0, 3 * MIB, 0x11)];
const MID_WRITES: &[Write] = &[pattern(2 * MIB, 3 * MIB, 0x22)];
const TOP_WRITES: &[Write] = &[
    pattern(4 * MIB, 2 * MIB, 0x33),
    zeros(MIB, 128 << 10),
    pattern(7 * MIB, 64 << 10, 0x44),
];

fn apply(view: &mut [u8], writes: &[Write]) {
    for w in writes {
        let range = w.offset as usize..(w.offset + w.len) as usize;
        view[range].fill(w.pattern.unwrap_or(0));
    }
}

fn qemu_img() -> Command {
    Command::new(require_tool("qemu-img"))
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Qcow2,
    /// VMDK delta disks made by `qemu-img create -f vmdk -b`.
    VmdkByQemu,
    /// VMDK delta disks made by `vmedia disk create -f vmdk -b`.
    VmdkByVmedia,
    /// qemu-img deltas over a twoGbMaxExtentSparse base (text descriptor + extent file).
    VmdkSplitBase,
    Vhd,
    Vhdx,
}

impl Kind {
    fn format(self) -> &'static str {
        match self {
            Kind::Qcow2 => "qcow2",
            Kind::VmdkByQemu | Kind::VmdkByVmedia | Kind::VmdkSplitBase => "vmdk",
            Kind::Vhd => "vpc",
            Kind::Vhdx => "vhdx",
        }
    }
    fn ext(self) -> &'static str {
        match self {
            Kind::Vhd => "vhd",
            other => other.format(),
        }
    }
    /// qemu-img follows the chain (reads the top correctly).
    fn qemu_reads_chain(self) -> bool {
        !matches!(self, Kind::Vhd | Kind::Vhdx)
    }
    /// qemu can write into the format with qemu-io.
    fn qemu_writes(self) -> bool {
        self.qemu_reads_chain()
    }
}

struct Chain {
    kind: Kind,
    dir: PathBuf,
    size: u64,
}

impl Chain {
    fn file(&self, level: &str) -> PathBuf {
        self.dir.join(format!("{level}.{}", self.kind.ext()))
    }
    fn name(&self, level: &str) -> String {
        format!("{level}.{}", self.kind.ext())
    }
}

fn virtual_size(image: &Path) -> u64 {
    let info = json_of(&run_ok(
        vmedia()
            .args(["disk", "info", "--output", "json"])
            .arg(image),
    ));
    info["virtual-size"].as_u64().expect("virtual-size")
}

/// Writes into one layer of a chain. qemu-io does it for the formats qemu writes; for VHD and
/// VHDX, vmedia's own in-place editors do: the pattern goes into a scratch qcow2 that is then
/// given the layer as its backing file (`rebase -u`) and committed into it.
fn write_layer(chain: &Chain, level: &str, writes: &[Write]) {
    let file = chain.file(level);
    if chain.kind.qemu_writes() {
        let mut cmd = Command::new(require_tool("qemu-io"));
        cmd.current_dir(&chain.dir)
            .args(["-f", chain.kind.format()]);
        for w in writes {
            let c = match w.pattern {
                Some(p) => format!("write -P {p:#x} {} {}", w.offset, w.len),
                None => format!("write -z {} {}", w.offset, w.len),
            };
            cmd.args(["-c", &c]);
        }
        run_ok(cmd.arg(chain.name(level)));
        return;
    }
    let scratch = chain.dir.join("scratch.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&scratch)
            .arg(virtual_size(&file).to_string()),
    );
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-f", "qcow2"]);
    for w in writes {
        let c = match w.pattern {
            Some(p) => format!("write -P {p:#x} {} {}", w.offset, w.len),
            None => format!("write -z {} {}", w.offset, w.len),
        };
        cmd.args(["-c", &c]);
    }
    run_ok(cmd.arg(&scratch));
    run_ok(
        vmedia()
            .current_dir(&chain.dir)
            .args(["disk", "rebase", "-u", "-b", &chain.name(level)])
            .args(["-F", chain.kind.format(), "scratch.qcow2"]),
    );
    run_ok(
        vmedia()
            .current_dir(&chain.dir)
            .args(["disk", "commit", "-q", "scratch.qcow2"]),
    );
    fs::remove_file(scratch).unwrap();
}

fn create_layer(chain: &Chain, level: &str, parent: Option<&str>) {
    let fmt = chain.kind.format();
    let mut cmd = match chain.kind {
        Kind::Qcow2 | Kind::VmdkByQemu | Kind::VmdkSplitBase => {
            let mut c = qemu_img();
            c.args(["create", "-q", "-f", fmt]);
            if chain.kind == Kind::VmdkSplitBase && parent.is_none() {
                c.args(["-o", "subformat=twoGbMaxExtentSparse"]);
            }
            c
        }
        Kind::VmdkByVmedia | Kind::Vhd | Kind::Vhdx => {
            let mut c = vmedia();
            c.args(["disk", "create", "-f", fmt]);
            c
        }
    };
    cmd.current_dir(&chain.dir);
    if let Some(p) = parent {
        cmd.args(["-b", &chain.name(p), "-F", fmt]);
    }
    cmd.arg(chain.name(level));
    if parent.is_none() {
        cmd.arg(SIZE.to_string());
    }
    run_ok(&mut cmd);
}

/// base <- mid <- top, each with its own writes.
fn build_chain(kind: Kind, dir: &Path) -> Chain {
    fs::create_dir_all(dir).unwrap();
    let mut chain = Chain {
        kind,
        dir: dir.to_path_buf(),
        size: 0,
    };
    create_layer(&chain, "base", None);
    chain.size = virtual_size(&chain.file("base"));
    write_layer(&chain, "base", BASE_WRITES);
    create_layer(&chain, "mid", Some("base"));
    write_layer(&chain, "mid", MID_WRITES);
    create_layer(&chain, "top", Some("mid"));
    write_layer(&chain, "top", TOP_WRITES);
    chain
}

/// What the guest sees through `top` of a fresh chain.
fn expected_view(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    apply(&mut v, BASE_WRITES);
    apply(&mut v, MID_WRITES);
    apply(&mut v, TOP_WRITES);
    v
}

fn copy_chain(chain: &Chain, to: &Path) -> Chain {
    fs::create_dir_all(to).unwrap();
    // Every file: extent files of split descriptors come along.
    for entry in fs::read_dir(&chain.dir).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    Chain {
        kind: chain.kind,
        dir: to.to_path_buf(),
        size: chain.size,
    }
}

/// The guest view of `image` exported by vmedia (and by qemu-img where `by_qemu`).
fn assert_view(chain: &Chain, level: &str, want: &[u8], by_qemu: bool, what: &str) {
    let image = chain.file(level);
    let out = chain.dir.join("view.raw");
    run_ok(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(&image)
            .arg(&out),
    );
    let got = fs::read(&out).unwrap();
    assert!(
        got == want,
        "{:?} {what}: vmedia's raw export of {level} differs from the written pattern (first difference at {:#x})",
        chain.kind,
        first_difference(&got, want)
    );
    // vmedia's compare agrees with the byte comparison.
    let expected = chain.dir.join("expected.raw");
    fs::write(&expected, want).unwrap();
    let (code, o, e) = run_any(
        vmedia()
            .args(["disk", "compare", "-f", "raw", "-F", chain.kind.format()])
            .arg(&expected)
            .arg(&image),
    );
    assert_eq!(
        code, 0,
        "{:?} {what}: vmedia disk compare of {level}: {o}{e}",
        chain.kind
    );
    if by_qemu {
        run_ok(
            qemu_img()
                .args(["convert", "-f", chain.kind.format(), "-O", "raw"])
                .arg(&image)
                .arg(&out),
        );
        let q = fs::read(&out).unwrap();
        assert!(
            q == want,
            "{:?} {what}: qemu-img's raw export of {level} differs (first difference at {:#x})",
            chain.kind,
            first_difference(&q, want)
        );
        let (code, o, e) = run_any(
            qemu_img()
                .args(["compare", "-f", "raw", "-F", chain.kind.format()])
                .arg(&expected)
                .arg(&image),
        );
        assert_eq!(
            code, 0,
            "{:?} {what}: qemu-img compare of {level}: {o}{e}",
            chain.kind
        );
    }
    fs::remove_file(out).unwrap();
    fs::remove_file(expected).unwrap();
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// qemu-img check is clean where qemu checks the format (its vpc driver has no check, and
/// its vhdx driver refuses to open differencing disks: there only the standalone base).
fn assert_qemu_check(chain: &Chain, level: &str, what: &str) {
    if chain.kind == Kind::Vhdx && level != "base" {
        return;
    }
    let (code, o, e) = run_any(
        qemu_img()
            .args(["check", "-f", chain.kind.format()])
            .arg(chain.file(level)),
    );
    let unsupported = chain.kind == Kind::Vhd && code == 63 && e.contains("not support");
    assert!(
        code == 0 || unsupported,
        "{:?} {what}: qemu-img check {level} exited {code}: {o}{e}",
        chain.kind
    );
}

fn assert_vmedia_check(chain: &Chain, level: &str, what: &str) {
    let (code, o, e) =
        run_any(
            vmedia()
                .current_dir(&chain.dir)
                .args(["disk", "check", &chain.name(level)]),
        );
    assert_eq!(
        code, 0,
        "{:?} {what}: vmedia disk check {level}: {o}{e}",
        chain.kind
    );
}

fn vmedia_info(chain: &Chain, level: &str) -> Value {
    json_of(&run_ok(vmedia().current_dir(&chain.dir).args([
        "disk",
        "info",
        "--output",
        "json",
        &chain.name(level),
    ])))
}

/// VMDK: the child's parentCID is the parent's current CID (VMware refuses a mismatch).
fn assert_cid_link(chain: &Chain, child: &str, parent: &str) {
    if chain.kind.format() != "vmdk" {
        return;
    }
    let c = vmedia_info(chain, child);
    let p = vmedia_info(chain, parent);
    assert_eq!(
        c["format-specific"]["data"]["parent-cid"], p["format-specific"]["data"]["cid"],
        "{:?}: parentCID of {child} is not the CID of {parent}",
        chain.kind
    );
}

const KINDS: [Kind; 6] = [
    Kind::Qcow2,
    Kind::VmdkByQemu,
    Kind::VmdkByVmedia,
    Kind::VmdkSplitBase,
    Kind::Vhd,
    Kind::Vhdx,
];

#[test]
fn three_level_chains_read_like_the_written_patterns_and_like_qemu() {
    let root = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let chain = build_chain(
            kind,
            &root.path().join(kind.ext()).join(format!("{kind:?}")),
        );
        let want = expected_view(chain.size);
        assert_view(&chain, "top", &want, kind.qemu_reads_chain(), "fresh chain");
        for level in ["base", "mid", "top"] {
            assert_vmedia_check(&chain, level, "fresh chain");
        }
        assert_cid_link(&chain, "top", "mid");
        assert_cid_link(&chain, "mid", "base");
        // info --backing-chain: same files, formats, sizes and names as qemu-img where qemu
        // follows the chain; the base alone elsewhere.
        let v = json_of(&run_ok(
            vmedia()
                .current_dir(&chain.dir)
                .args(["disk", "info", "--backing-chain", "--output", "json"])
                .arg(chain.name("top")),
        ));
        let v = v.as_array().expect("a JSON list for --backing-chain");
        assert_eq!(v.len(), 3, "{kind:?}: vmedia's chain: {v:?}");
        for (entry, level) in v.iter().zip(["top", "mid", "base"]) {
            assert!(
                entry["filename"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(&chain.name(level))),
                "{kind:?}: {entry}"
            );
        }
        assert_eq!(v[0]["backing-filename"], chain.name("mid").as_str());
        assert_eq!(v[1]["backing-filename"], chain.name("base").as_str());
        assert!(v[2].get("backing-filename").is_none());
        if kind.qemu_reads_chain() {
            let q = json_of(&run_ok(
                qemu_img()
                    .current_dir(&chain.dir)
                    .args(["info", "--backing-chain", "--output", "json"])
                    .arg(chain.name("top")),
            ));
            let q = q.as_array().expect("qemu-img's list");
            assert_eq!(q.len(), v.len(), "{kind:?}: chain length");
            for (qe, ve) in q.iter().zip(v) {
                for key in [
                    "filename",
                    "format",
                    "virtual-size",
                    "backing-filename",
                    "full-backing-filename",
                    "backing-filename-format",
                ] {
                    assert_eq!(
                        qe.get(key),
                        ve.get(key),
                        "{kind:?}: {key} of {}",
                        qe["filename"]
                    );
                }
                if kind != Kind::Qcow2 {
                    // cid, parent-cid, create-type and the extent list, exactly.
                    assert_eq!(
                        qe["format-specific"], ve["format-specific"],
                        "{kind:?}: format-specific of {}",
                        qe["filename"]
                    );
                }
            }
        } else {
            let q = json_of(&run_ok(
                qemu_img()
                    .args(["info", "--output", "json", "-f", kind.format()])
                    .arg(chain.file("base")),
            ));
            assert_eq!(
                q["virtual-size"], v[2]["virtual-size"],
                "{kind:?}: base size"
            );
            assert_eq!(q["format"], v[2]["format"], "{kind:?}: base format");
        }
    }
}

#[test]
fn commit_top_into_mid_then_mid_into_base_keeps_the_guest_view() {
    let root = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let chain = build_chain(kind, &root.path().join(format!("{kind:?}")));
        let want = expected_view(chain.size);
        run_ok(
            vmedia()
                .current_dir(&chain.dir)
                .args(["disk", "commit", &chain.name("top")]),
        );
        assert_view(
            &chain,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after commit top",
        );
        assert_view(
            &chain,
            "mid",
            &want,
            kind.qemu_reads_chain(),
            "after commit top",
        );
        assert_qemu_check(&chain, "mid", "after commit top");
        for level in ["base", "mid", "top"] {
            assert_vmedia_check(&chain, level, "after commit top");
        }
        assert_cid_link(&chain, "top", "mid");
        run_ok(
            vmedia()
                .current_dir(&chain.dir)
                .args(["disk", "commit", &chain.name("mid")]),
        );
        // The base stands alone: qemu-img reads it in every format.
        assert_view(&chain, "base", &want, true, "after commit mid");
        assert_qemu_check(&chain, "base", "after commit mid");
        assert_view(
            &chain,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after commit mid",
        );
        for level in ["base", "mid", "top"] {
            assert_vmedia_check(&chain, level, "after commit mid");
        }
        // Emptying mid kept its content id, so top's link to it is still valid.
        assert_cid_link(&chain, "top", "mid");
        assert_cid_link(&chain, "mid", "base");
    }
}

#[test]
fn commit_with_a_deeper_base_writes_both_layers_into_it() {
    let root = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let chain = build_chain(kind, &root.path().join(format!("{kind:?}")));
        let want = expected_view(chain.size);
        run_ok(vmedia().current_dir(&chain.dir).args([
            "disk",
            "commit",
            "-b",
            &chain.name("base"),
            &chain.name("top"),
        ]));
        assert_view(&chain, "base", &want, true, "after commit -b base");
        assert_qemu_check(&chain, "base", "after commit -b base");
        // -b implies -d: the top keeps its data and still reads the same.
        assert_view(
            &chain,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after commit -b base",
        );
    }
}

#[test]
fn commit_keeping_the_top_relinks_it_to_the_changed_parent() {
    let root = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let chain = build_chain(kind, &root.path().join(format!("{kind:?}")));
        let want = expected_view(chain.size);
        let top_len = fs::metadata(chain.file("top")).unwrap().len();
        run_ok(
            vmedia()
                .current_dir(&chain.dir)
                .args(["disk", "commit", "-d", &chain.name("top")]),
        );
        assert_view(
            &chain,
            "mid",
            &want,
            kind.qemu_reads_chain(),
            "after commit -d",
        );
        // The top keeps its data, and qemu (which checks VMDK parentCIDs) still reads it.
        assert_eq!(fs::metadata(chain.file("top")).unwrap().len(), top_len);
        assert_view(
            &chain,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after commit -d",
        );
        assert_cid_link(&chain, "top", "mid");
        for level in ["base", "mid", "top"] {
            assert_vmedia_check(&chain, level, "after commit -d");
        }
    }
}

#[test]
fn safe_rebase_onto_the_base_keeps_the_view_and_unsafe_rebase_only_renames() {
    let root = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let fresh = build_chain(kind, &root.path().join(format!("{kind:?}")));
        let want = expected_view(fresh.size);

        let safe = copy_chain(&fresh, &root.path().join(format!("{kind:?}-safe")));
        run_ok(vmedia().current_dir(&safe.dir).args([
            "disk",
            "rebase",
            "-b",
            &safe.name("base"),
            "-F",
            kind.format(),
            &safe.name("top"),
        ]));
        assert_view(
            &safe,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after safe rebase",
        );
        assert_qemu_check(&safe, "top", "after safe rebase");
        assert_vmedia_check(&safe, "top", "after safe rebase");
        assert_eq!(
            vmedia_info(&safe, "top")["backing-filename"],
            safe.name("base").as_str(),
            "{kind:?}: backing file after safe rebase"
        );
        assert_cid_link(&safe, "top", "base");
        if kind.qemu_reads_chain() {
            let q = json_of(&run_ok(
                qemu_img()
                    .args(["info", "--output", "json"])
                    .arg(safe.file("top")),
            ));
            assert_eq!(q["backing-filename"], safe.name("base").as_str());
        }

        // Unsafe: only the reference changes, so the guest now sees the top's own writes
        // straight over the base (mid's data is gone from the view).
        let raw = copy_chain(&fresh, &root.path().join(format!("{kind:?}-unsafe")));
        run_ok(vmedia().current_dir(&raw.dir).args([
            "disk",
            "rebase",
            "-u",
            "-b",
            &raw.name("base"),
            "-F",
            kind.format(),
            &raw.name("top"),
        ]));
        let mut renamed = vec![0u8; raw.size as usize];
        apply(&mut renamed, BASE_WRITES);
        apply(&mut renamed, TOP_WRITES);
        assert_view(
            &raw,
            "top",
            &renamed,
            kind.qemu_reads_chain(),
            "after unsafe rebase",
        );
        assert_eq!(
            vmedia_info(&raw, "top")["backing-filename"],
            raw.name("base").as_str()
        );
        assert_cid_link(&raw, "top", "base");

        // Onto a file outside the chain (a copy of the base): every range is compared.
        let copy = copy_chain(&fresh, &root.path().join(format!("{kind:?}-copy")));
        let other = format!("other.{}", kind.ext());
        fs::copy(copy.file("base"), copy.dir.join(&other)).unwrap();
        run_ok(vmedia().current_dir(&copy.dir).args([
            "disk",
            "rebase",
            "-b",
            &other,
            "-F",
            kind.format(),
            &copy.name("top"),
        ]));
        assert_view(
            &copy,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after safe rebase onto a copy",
        );
        assert_eq!(
            vmedia_info(&copy, "top")["backing-filename"],
            other.as_str()
        );

        // Rebasing onto nothing makes a standalone image with the same view.
        let alone = copy_chain(&fresh, &root.path().join(format!("{kind:?}-alone")));
        run_ok(vmedia().current_dir(&alone.dir).args([
            "disk",
            "rebase",
            "-b",
            "",
            &alone.name("top"),
        ]));
        assert!(vmedia_info(&alone, "top").get("backing-filename").is_none());
        assert_view(
            &alone,
            "top",
            &want,
            kind.qemu_reads_chain(),
            "after rebase -b \"\"",
        );
    }
}

#[test]
fn commit_into_a_stream_optimized_vmdk_is_refused_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        qemu_img()
            .current_dir(d)
            .args([
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .args(["base.vmdk", "4M"]),
    );
    run_ok(
        qemu_img()
            .current_dir(d)
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.vmdk",
                "-F",
                "vmdk",
            ])
            .arg("top.qcow2"),
    );
    run_ok(Command::new(require_tool("qemu-io")).current_dir(d).args([
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 0 64k",
        "top.qcow2",
    ]));
    let before = fs::read(d.join("base.vmdk")).unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .current_dir(d)
            .args(["disk", "commit", "top.qcow2"]),
    );
    assert_ne!(code, 0);
    assert!(err.contains("streamOptimized"), "{err}");
    assert_eq!(fs::read(d.join("base.vmdk")).unwrap(), before);
}

#[test]
fn damaged_primary_grain_directory_is_read_through_the_redundant_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        vmedia()
            .current_dir(d)
            .args(["disk", "create", "-f", "vmdk", "a.vmdk", "4M"]),
    );
    run_ok(Command::new(require_tool("qemu-io")).current_dir(d).args([
        "-f",
        "vmdk",
        "-c",
        "write -P 0x66 0 1M",
        "a.vmdk",
    ]));
    // The first primary directory entry now names a grain table far past the end.
    let mut bytes = fs::read(d.join("a.vmdk")).unwrap();
    let gd_sector = u64::from_le_bytes(bytes[56..64].try_into().unwrap());
    let at = (gd_sector * 512) as usize;
    bytes[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    fs::write(d.join("a.vmdk"), &bytes).unwrap();
    run_ok(
        vmedia()
            .current_dir(d)
            .args(["disk", "convert", "-O", "raw", "a.vmdk", "a.raw"]),
    );
    let raw = fs::read(d.join("a.raw")).unwrap();
    assert!(raw[..MIB as usize].iter().all(|b| *b == 0x66));
    assert!(raw[MIB as usize..].iter().all(|b| *b == 0));
    let (code, out, err) = run_any(vmedia().current_dir(d).args(["disk", "check", "a.vmdk"]));
    assert_eq!(code, 2, "{out}{err}");
    assert!(format!("{out}{err}").contains("redundant"), "{out}{err}");
}

#[test]
fn commit_into_a_vmware_made_monolithic_sparse_disk_renews_cid_and_long_content_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("monolithicSparse.vmdk");
    fs::copy(
        support::shared_sample("vmdk-rs/monolithicSparse.vmdk.xz"),
        &base,
    )
    .unwrap();
    let base_before = vmedia_info_at(&base);
    run_ok(
        qemu_img()
            .current_dir(d)
            .args([
                "create",
                "-q",
                "-f",
                "vmdk",
                "-b",
                "monolithicSparse.vmdk",
                "-F",
                "vmdk",
            ])
            .arg("delta.vmdk"),
    );
    run_ok(
        Command::new(require_tool("qemu-io"))
            .current_dir(d)
            .args([
                "-f",
                "vmdk",
                "-c",
                "write -P 0x77 1M 1M",
                "-c",
                "write -z 4M 64k",
            ])
            .arg("delta.vmdk"),
    );
    let expected = d.join("expected.raw");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "raw"])
            .arg(d.join("delta.vmdk"))
            .arg(&expected),
    );
    run_ok(
        vmedia()
            .current_dir(d)
            .args(["disk", "commit", "delta.vmdk"]),
    );
    for image in [&base, &d.join("delta.vmdk")] {
        let (code, o, e) = run_any(
            qemu_img()
                .args(["compare", "-f", "raw"])
                .arg(&expected)
                .arg(image),
        );
        assert_eq!(code, 0, "qemu-img compare {}: {o}{e}", image.display());
        let (code, o, e) = run_any(qemu_img().arg("check").arg(image));
        assert_eq!(code, 0, "qemu-img check {}: {o}{e}", image.display());
        let (code, o, e) = run_any(vmedia().args(["disk", "check"]).arg(image));
        assert_eq!(code, 0, "vmedia disk check {}: {o}{e}", image.display());
    }
    let after = vmedia_info_at(&base);
    let cid = after["format-specific"]["data"]["cid"].as_u64().unwrap();
    assert_ne!(
        Some(cid),
        base_before["format-specific"]["data"]["cid"].as_u64()
    );
    let delta = vmedia_info_at(&d.join("delta.vmdk"));
    assert_eq!(
        delta["format-specific"]["data"]["parent-cid"].as_u64(),
        Some(cid)
    );
    // VMware's longContentID ends with the CID: both changed together.
    let text = String::from_utf8_lossy(&fs::read(&base).unwrap()[..64 << 10]).into_owned();
    let long = text
        .lines()
        .find_map(|l| l.strip_prefix("ddb.longContentID = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("longContentID kept");
    assert_eq!(long.len(), 32);
    assert!(long.ends_with(&format!("{cid:08x}")), "{long} vs {cid:08x}");
}

fn vmedia_info_at(image: &Path) -> Value {
    json_of(&run_ok(
        vmedia()
            .args(["disk", "info", "--output", "json"])
            .arg(image),
    ))
}

#[test]
fn zero_ranges_committed_into_a_zeroed_grain_vmdk_become_zeroed_grains_like_qemu_maps_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let qemu_io = |fmt: &str, cmds: &[&str], file: &str| {
        let mut c = Command::new(require_tool("qemu-io"));
        c.current_dir(d).args(["-f", fmt]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        run_ok(c.arg(file));
    };
    run_ok(qemu_img().current_dir(d).args([
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "base.vmdk",
        "8M",
    ]));
    qemu_io("vmdk", &["write -P 1 0 4M"], "base.vmdk");
    run_ok(qemu_img().current_dir(d).args([
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "mid.vmdk",
    ]));
    qemu_io("vmdk", &["write -P 2 2M 2M"], "mid.vmdk");
    run_ok(qemu_img().current_dir(d).args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.vmdk",
        "-F",
        "vmdk",
        "top.qcow2",
    ]));
    qemu_io("qcow2", &["write -z 0 1M", "write -z 2M 1M"], "top.qcow2");
    let before = d.join("before.raw");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "raw"])
            .arg(d.join("top.qcow2"))
            .arg(&before),
    );
    run_ok(
        vmedia()
            .current_dir(d)
            .args(["disk", "commit", "top.qcow2"]),
    );
    let (code, o, e) = run_any(
        qemu_img()
            .args(["compare", "-f", "raw"])
            .arg(&before)
            .arg(d.join("mid.vmdk")),
    );
    assert_eq!(code, 0, "{o}{e}");
    let (code, o, e) = run_any(qemu_img().arg("check").arg(d.join("mid.vmdk")));
    assert_eq!(code, 0, "{o}{e}");
    let q = json_of(&run_ok(
        qemu_img()
            .current_dir(d)
            .args(["map", "--output", "json", "mid.vmdk"]),
    ));
    let v = json_of(&run_ok(
        vmedia()
            .current_dir(d)
            .args(["disk", "map", "--output", "json", "mid.vmdk"]),
    ));
    assert_eq!(q, v, "allocation map of the committed delta");
    // The zeroed ranges are zeroed grains in mid (depth 0, zero), not written zeros.
    let first = &q.as_array().unwrap()[0];
    assert_eq!(first["depth"], 0);
    assert_eq!(first["zero"], true);
    assert_eq!(first["data"], false);
}
