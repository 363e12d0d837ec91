//! The disk gaps of issue 15, each proven against qemu-img 7.2: VMDK resize (hosted sparse
//! and flat subformats grow like a raw copy resized the same way; shrink and streamOptimized
//! refused), `convert -B` into VHD and VHDX deltas leaving blocks the parent already reads
//! unallocated, and VMDK deltas over parents of other formats (a raw parent wrapped in a flat
//! descriptor both qemu and vmedia follow; a converted parent still read by vmedia).
//!
//! Small sparse images only, no VM boots.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{require_tool, run_any, run_ok, vmedia};

const MIB: u64 = 1 << 20;

fn qemu_img() -> Command {
    Command::new(require_tool("qemu-img"))
}

fn qemu_io() -> Command {
    Command::new(require_tool("qemu-io"))
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// qemu-io writes `pattern` (hex byte) at each (offset, len) of `image` in `format`.
fn qemu_write(image: &Path, format: &str, writes: &[(u64, u64, u8)]) {
    let mut cmd = qemu_io();
    cmd.args(["-f", format]);
    for (offset, len, byte) in writes {
        cmd.arg("-c")
            .arg(format!("write -P {byte:#x} {offset} {len}"));
    }
    run_ok(cmd.arg(image));
}

fn qemu_virtual_size(image: &Path) -> u64 {
    json_of(&run_ok(
        qemu_img().args(["info", "--output", "json"]).arg(image),
    ))["virtual-size"]
        .as_u64()
        .expect("virtual-size")
}

fn assert_qemu_identical(a: &Path, b: &Path, what: &str) {
    let (code, o, e) = run_any(qemu_img().arg("compare").arg(a).arg(b));
    assert_eq!(code, 0, "{what}: qemu-img compare {a:?} {b:?}: {o}{e}");
}

fn assert_qemu_check_clean(image: &Path, what: &str) {
    let (code, o, e) = run_any(qemu_img().arg("check").arg(image));
    assert_eq!(code, 0, "{what}: qemu-img check {image:?}: {o}{e}");
}

/// Grows a raw reference copy the way `resize` grows the image.
fn grow_raw(raw: &Path, size: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(raw)
        .unwrap()
        .set_len(size)
        .unwrap();
}

/// Every file of a VMDK (descriptor and extents) with its bytes, to prove a refusal changed
/// nothing.
fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "vmdk"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn vmdk_resize_grows_sparse_and_flat_disks_like_a_resized_raw_copy() {
    // qemu-img 7.2 resizes no VMDK ("Image format driver does not support resize"); vmedia
    // grows them as vmware-vdiskmanager -x does, and qemu reads, checks and writes the result.
    let writes = [
        (0, 64 << 10, 0x11),
        (3 * MIB, MIB, 0x22),
        (10 * MIB - 4096, 4096, 0x33),
    ];
    for subformat in ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentFlat"] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.vmdk");
        let raw = dir.path().join("disk.raw");
        run_ok(
            qemu_img()
                .args(["create", "-q", "-f", "vmdk", "-o"])
                .arg(format!("subformat={subformat}"))
                .arg(&img)
                .arg("10M"),
        );
        qemu_write(&img, "vmdk", &writes);
        run_ok(
            qemu_img()
                .args(["convert", "-O", "raw"])
                .arg(&img)
                .arg(&raw),
        );
        let (code, _, _) = run_any(qemu_img().arg("resize").arg(&img).arg("+6M"));
        assert_ne!(code, 0, "{subformat}: qemu-img 7.2 now resizes VMDK");

        let out = run_ok(vmedia().args(["disk", "resize"]).arg(&img).arg("+6M"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Image resized.\n");
        grow_raw(&raw, 16 * MIB);
        assert_eq!(qemu_virtual_size(&img), 16 * MIB, "{subformat}");
        assert_qemu_check_clean(&img, subformat);
        assert_qemu_identical(&img, &raw, subformat);
        // The grown range is writable by qemu (its grain tables exist, its file is long enough).
        let later = [(12 * MIB, 128 << 10, 0x44), (16 * MIB - 512, 512, 0x55)];
        qemu_write(&img, "vmdk", &later);
        qemu_write(&raw, "raw", &later);
        assert_qemu_check_clean(&img, subformat);
        assert_qemu_identical(&img, &raw, subformat);
        let (code, o, e) = run_any(vmedia().args(["disk", "compare"]).arg(&img).arg(&raw));
        assert_eq!(code, 0, "{subformat}: vmedia compare: {o}{e}");

        // Shrinking is refused (VMware only expands, qemu resizes no VMDK) and changes nothing.
        let before = folder_bytes(dir.path());
        let (code, _, err) = run_any(
            vmedia()
                .args(["disk", "resize", "--shrink"])
                .arg(&img)
                .arg("8M"),
        );
        assert_ne!(code, 0, "{subformat}: shrink accepted");
        assert!(err.contains("shrinking"), "{subformat}: {err}");
        assert_eq!(
            folder_bytes(dir.path())
                .into_iter()
                .map(|(n, b)| (n, b.len()))
                .collect::<Vec<_>>(),
            before
                .iter()
                .map(|(n, b)| (n.clone(), b.len()))
                .collect::<Vec<_>>()
        );
        assert!(folder_bytes(dir.path()) == before, "{subformat}: changed");
    }
}

#[test]
fn vmdk_resize_moves_a_grown_grain_directory_and_adds_split_pieces() {
    // Past 4 GiB a monolithicSparse grain directory needs a second sector: it moves to the
    // end of the file. A twoGbMaxExtentFlat disk fills its last piece, then gets new ones.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sparse = d.join("big.vmdk");
    let raw = d.join("big.raw");
    run_ok(
        qemu_img()
            .args([
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=monolithicSparse",
            ])
            .arg(&sparse)
            .arg("1G"),
    );
    let writes = [(0, MIB, 0x61), ((1 << 30) - MIB, MIB, 0x62)];
    qemu_write(&sparse, "vmdk", &writes);
    fs::File::create(&raw).unwrap().set_len(1 << 30).unwrap();
    qemu_write(&raw, "raw", &writes);
    run_ok(vmedia().args(["disk", "resize"]).arg(&sparse).arg("5G"));
    grow_raw(&raw, 5 << 30);
    assert_eq!(qemu_virtual_size(&sparse), 5 << 30);
    let late = [((5u64 << 30) - MIB, MIB, 0x63)];
    qemu_write(&sparse, "vmdk", &late);
    qemu_write(&raw, "raw", &late);
    assert_qemu_check_clean(&sparse, "relocated directory");
    assert_qemu_identical(&sparse, &raw, "relocated directory");
    // Small on disk: the new grain tables are holes until written.
    assert!(fs::metadata(&sparse).unwrap().blocks() * 512 < 8 * MIB);

    let split = d.join("split.vmdk");
    let split_raw = d.join("split.raw");
    run_ok(
        qemu_img()
            .args([
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=twoGbMaxExtentFlat",
            ])
            .arg(&split)
            .arg("16M"),
    );
    qemu_write(&split, "vmdk", &[(15 * MIB, MIB, 0x71)]);
    run_ok(
        qemu_img()
            .args(["convert", "-O", "raw"])
            .arg(&split)
            .arg(&split_raw),
    );
    let new_size = (2u64 << 30) + 16 * MIB;
    run_ok(
        vmedia()
            .args(["disk", "resize"])
            .arg(&split)
            .arg(new_size.to_string()),
    );
    grow_raw(&split_raw, new_size);
    let descriptor = fs::read_to_string(&split).unwrap();
    assert!(descriptor.contains("\"split-f002.vmdk\" 0"), "{descriptor}");
    assert!(d.join("split-f002.vmdk").exists());
    let late = [(new_size - MIB, MIB, 0x72)];
    qemu_write(&split, "vmdk", &late);
    qemu_write(&split_raw, "raw", &late);
    assert_eq!(qemu_virtual_size(&split), new_size);
    assert_qemu_check_clean(&split, "split pieces");
    assert_qemu_identical(&split, &split_raw, "split pieces");
}

#[test]
fn vmdk_resize_refuses_stream_optimized_and_delta_disks_as_qemu_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stream = d.join("s.vmdk");
    run_ok(
        qemu_img()
            .args([
                "create",
                "-q",
                "-f",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(&stream)
            .arg("8M"),
    );
    let (code, _, qemu_err) = run_any(qemu_img().arg("resize").arg(&stream).arg("+1M"));
    assert_ne!(code, 0);
    assert!(qemu_err.contains("does not support resize"), "{qemu_err}");
    let before = fs::read(&stream).unwrap();
    let (code, _, err) = run_any(vmedia().args(["disk", "resize"]).arg(&stream).arg("+1M"));
    assert_ne!(code, 0);
    assert!(err.contains("streamOptimized"), "{err}");
    assert_eq!(fs::read(&stream).unwrap(), before);

    let base = d.join("base.vmdk");
    run_ok(
        qemu_img()
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&base)
            .arg("8M"),
    );
    run_ok(qemu_img().current_dir(d).args([
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ]));
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "resize"])
            .arg(d.join("top.vmdk"))
            .arg("+1M"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("delta disk"), "{err}");
}

/// Guest ranges `qemu-img map` reports as data in `image` (qemu does not follow VHD parents,
/// so these are the delta's own allocated blocks).
fn qemu_data_ranges(image: &Path) -> Vec<(u64, u64)> {
    let map = json_of(&run_ok(
        qemu_img().args(["map", "--output", "json"]).arg(image),
    ));
    map.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["data"] == Value::Bool(true))
        .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect()
}

fn vmedia_top_data_ranges(image: &Path) -> Vec<(u64, u64)> {
    let map = json_of(&run_ok(
        vmedia()
            .args(["disk", "map", "--output", "json"])
            .arg(image),
    ));
    map.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["data"] == Value::Bool(true) && r["depth"].as_u64() == Some(0))
        .map(|r| (r["start"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
        .collect()
}

#[test]
fn convert_with_backing_into_vhd_and_vhdx_leaves_what_the_parent_reads_unallocated() {
    // qemu-img convert -B refuses vpc and vhdx outputs ("Backing file not supported"); vmedia
    // writes the delta and, since this fix, allocates only blocks that differ from the parent
    // (before it the BAT was fully allocated: 8 of 8 blocks for this 16 MiB disk).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base_vhd = d.join("base.vhd");
    run_ok(
        qemu_img()
            .args(["create", "-q", "-f", "vpc"])
            .arg(&base_vhd)
            .arg("16M"),
    );
    qemu_write(
        &base_vhd,
        "vpc",
        &[(0, 3 * MIB, 0x11), (8 * MIB, MIB, 0x22)],
    );
    let base_vhdx = d.join("base.vhdx");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "vhdx"])
            .arg(&base_vhd)
            .arg(&base_vhdx),
    );
    let src = d.join("src.raw");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "raw"])
            .arg(&base_vhd)
            .arg(&src),
    );
    // Changes: new data at 4 MiB (over parent zeros), zeros over parent data at 8 MiB, and the
    // same bytes as the parent rewritten at 0 (equal data stays unallocated).
    run_ok(
        qemu_io()
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0x33 4M 64k",
                "-c",
                "write -z 8M 64k",
                "-c",
                "write -P 0x11 0 1M",
            ])
            .arg(&src),
    );
    let (code, _, e) = run_any(
        qemu_img()
            .current_dir(d)
            .args(["convert", "-O", "vpc", "-B", "base.vhd", "src.raw", "q.vhd"]),
    );
    assert_ne!(
        code, 0,
        "qemu-img now writes VHD deltas: compare with it ({e})"
    );

    for (format, base, delta, block) in [
        ("vpc", "base.vhd", "delta.vhd", 2 * MIB),
        ("vhdx", "base.vhdx", "delta.vhdx", MIB),
    ] {
        let mut cmd = vmedia();
        cmd.current_dir(d)
            .args(["disk", "convert", "-O", format, "-B", base])
            .args(["src.raw", delta]);
        if format == "vhdx" {
            cmd.args(["-o", "block_size=1M"]);
        }
        run_ok(&mut cmd);
        let delta_path = d.join(delta);
        let (code, o, e) = run_any(
            vmedia()
                .args(["disk", "compare"])
                .arg(&delta_path)
                .arg(&src),
        );
        assert_eq!(code, 0, "{format}: vmedia compare: {o}{e}");
        // Only the blocks holding the two changes belong to the delta.
        let own = vmedia_top_data_ranges(&delta_path);
        let own_bytes: u64 = own.iter().map(|r| r.1).sum();
        assert_eq!(own_bytes, 2 * block, "{format}: delta's own data {own:?}");
        assert!(own.iter().any(|r| r.0 <= 4 * MIB && 4 * MIB < r.0 + r.1));
        assert!(own.iter().any(|r| r.0 <= 8 * MIB && 8 * MIB < r.0 + r.1));
        assert!(
            fs::metadata(&delta_path).unwrap().blocks() * 512 < 2 * block + 6 * MIB,
            "{format}: delta occupies {} bytes",
            fs::metadata(&delta_path).unwrap().blocks() * 512
        );
        if format == "vpc" {
            // qemu reads the VHD delta's BAT (not its parent): two blocks of data.
            let q = qemu_data_ranges(&delta_path);
            assert_eq!(q.iter().map(|r| r.1).sum::<u64>(), 2 * block, "{q:?}");
        }
        // qemu reads no VHD parent and no VHDX delta: committed into a copy of the parent,
        // the delta gives qemu the source's exact content.
        let copy = d.join(format!("copy-{format}"));
        fs::create_dir_all(&copy).unwrap();
        fs::copy(d.join(base), copy.join(base)).unwrap();
        fs::copy(&delta_path, copy.join(delta)).unwrap();
        run_ok(vmedia().args(["disk", "commit"]).arg(copy.join(delta)));
        assert_qemu_identical(&copy.join(base), &src, format);
        if format == "vhdx" {
            assert_qemu_check_clean(&copy.join(base), format);
        }
    }
}

#[test]
fn vmdk_delta_over_a_raw_parent_is_written_through_a_flat_wrapper_qemu_follows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("base.raw");
    fs::File::create(&raw).unwrap().set_len(8 * MIB).unwrap();
    qemu_write(&raw, "raw", &[(0, 2 * MIB, 0x5a)]);
    run_ok(vmedia().current_dir(d).args([
        "disk",
        "create",
        "-f",
        "vmdk",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "delta.vmdk",
    ]));
    assert!(d.join("delta-parent.vmdk").exists());
    qemu_write(&d.join("delta.vmdk"), "vmdk", &[(MIB, 64 << 10, 0x6b)]);
    let mut want = raw.clone();
    want.set_file_name("want.raw");
    fs::copy(&raw, &want).unwrap();
    qemu_write(&want, "raw", &[(MIB, 64 << 10, 0x6b)]);
    // qemu follows delta -> delta-parent.vmdk -> base.raw and agrees with vmedia.
    assert_qemu_identical(&d.join("delta.vmdk"), &want, "raw parent");
    assert_qemu_check_clean(&d.join("delta.vmdk"), "raw parent");
    let (code, o, e) = run_any(
        vmedia()
            .args(["disk", "compare"])
            .arg(d.join("delta.vmdk"))
            .arg(&want),
    );
    assert_eq!(code, 0, "vmedia compare: {o}{e}");
    let chain = json_of(&run_ok(
        vmedia()
            .args(["disk", "info", "--backing-chain", "--output", "json"])
            .arg(d.join("delta.vmdk")),
    ));
    let names: Vec<&str> = chain
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["format"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vmdk", "vmdk"]);
}

#[test]
fn vmdk_delta_naming_a_qcow2_parent_is_refused_at_create_and_read_for_rescue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        qemu_img()
            .current_dir(d)
            .args(["create", "-q", "-f", "qcow2", "base.qcow2", "8M"]),
    );
    qemu_write(&d.join("base.qcow2"), "qcow2", &[(0, MIB, 0x21)]);
    // qemu-img refuses such a delta; so does vmedia, naming what to do instead.
    let (code, _, qemu_err) = run_any(qemu_img().current_dir(d).args([
        "create",
        "-f",
        "vmdk",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "q.vmdk",
    ]));
    assert_ne!(code, 0);
    assert!(qemu_err.contains("must be a vmdk"), "{qemu_err}");
    let (code, _, err) = run_any(vmedia().current_dir(d).args([
        "disk",
        "create",
        "-f",
        "vmdk",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "v.vmdk",
    ]));
    assert_ne!(code, 0);
    assert!(err.contains("-f qcow2"), "{err}");
    assert!(!d.join("v.vmdk").exists());

    // A delta whose VMDK parent was later converted to qcow2 (the hint renamed): qemu refuses
    // to read through it; vmedia reads it, so convert recovers the data.
    run_ok(
        qemu_img()
            .current_dir(d)
            .args(["convert", "-O", "vmdk", "base.qcow2", "base.vmdk"]),
    );
    run_ok(qemu_img().current_dir(d).args([
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "delta.vmdk",
    ]));
    qemu_write(&d.join("delta.vmdk"), "vmdk", &[(4 * MIB, 64 << 10, 0x22)]);
    let mut bytes = fs::read(d.join("delta.vmdk")).unwrap();
    let from = b"parentFileNameHint=\"base.vmdk\"";
    let to = b"parentFileNameHint=\"base.qcow\"";
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("hint");
    bytes[at..at + from.len()].copy_from_slice(to);
    fs::write(d.join("delta.vmdk"), bytes).unwrap();
    fs::rename(d.join("base.qcow2"), d.join("base.qcow")).unwrap();
    let (code, _, _) = run_any(
        qemu_img()
            .arg("compare")
            .arg(d.join("delta.vmdk"))
            .arg(d.join("base.qcow")),
    );
    assert_ne!(code, 0, "qemu now reads VMDK deltas over qcow2 parents");
    let chain = json_of(&run_ok(
        vmedia()
            .args(["disk", "info", "--backing-chain", "--output", "json"])
            .arg(d.join("delta.vmdk")),
    ));
    assert_eq!(chain[1]["format"], "qcow2", "{chain}");
    run_ok(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(d.join("delta.vmdk"))
            .arg(d.join("out.raw")),
    );
    let want = d.join("want.raw");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "raw"])
            .arg(d.join("base.qcow"))
            .arg(&want),
    );
    qemu_write(&want, "raw", &[(4 * MIB, 64 << 10, 0x22)]);
    assert_qemu_identical(&d.join("out.raw"), &want, "rescued delta");
}
