//! qemu-img interoperability of `vmedia disk`: what vmedia writes passes `qemu-img check` and
//! `qemu-img compare`; what qemu-img writes (and the shared third-party samples) reads back with
//! the same bytes; info/map/check/compare/measure output and exit codes match qemu-img 7.2;
//! commit, rebase and resize give what qemu-img gives; a converted bootable disk boots in QEMU.

#[path = "support/disk.rs"]
mod disk_fixture;
mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{run_any, run_ok, sha256_file, shared_sample, vmedia, Firmware, BOOT_MARKER};

const MIB: u64 = 1 << 20;

fn qemu_img() -> Command {
    Command::new(support::require_tool("qemu-img"))
}

fn qemu_io(file: &Path, fmt: &str, cmd: &str) {
    run_ok(
        Command::new(support::require_tool("qemu-io"))
            .args(["-f", fmt, "-c", cmd])
            .arg(file),
    );
}

/// 12 MiB + 3 KiB of mixed content: random, repetitive text, long-distance repeats, zeros, a
/// short unaligned tail.
fn mixed_raw(path: &Path) {
    let mut data = Vec::with_capacity((12 * MIB + 3072) as usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..(3 * MIB / 8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    let line = b"vmedia disk test line: the quick brown fox jumps over the lazy dog 0123456789\n";
    while data.len() < (5 * MIB) as usize {
        data.extend_from_slice(line);
    }
    data.truncate((5 * MIB) as usize);
    // 16 KiB blocks of random letters, each repeated four times: deflate back-references
    // 16 KiB away, beyond the 4 KiB window qemu declares for inflate.
    while data.len() < (6 * MIB) as usize {
        let start = data.len() - (3 * MIB) as usize;
        let block: Vec<u8> = data[start..start + 16384]
            .iter()
            .map(|b| b'a' + b % 26)
            .collect();
        for _ in 0..4 {
            data.extend_from_slice(&block);
        }
    }
    data.resize((10 * MIB) as usize, 0);
    for i in 0..(2 * MIB + 3072) {
        data.push((i % 251) as u8);
    }
    fs::write(path, data).unwrap();
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn vm_convert(args: &[&str], input: &Path, output: &Path) {
    run_ok(
        vmedia()
            .args(["disk", "convert"])
            .args(args)
            .arg(input)
            .arg(output),
    );
}

fn assert_qemu_identical(a: &Path, b: &Path) {
    let out = run_ok(qemu_img().arg("compare").arg(a).arg(b));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Images are identical."),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn assert_vmedia_identical(a: &Path, b: &Path) {
    let out = run_ok(vmedia().args(["disk", "compare"]).arg(a).arg(b));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().last(), Some("Images are identical."), "{text}");
}

/// sha256 of the raw guest content as qemu-img and as vmedia extract it.
fn raw_hashes(image: &Path, scratch: &Path) -> (String, String) {
    let q = scratch.join("qemu.raw");
    let v = scratch.join("vmedia.raw");
    run_ok(qemu_img().args(["convert", "-O", "raw"]).arg(image).arg(&q));
    run_ok(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(image)
            .arg(&v),
    );
    let r = (sha256_file(&q), sha256_file(&v));
    fs::remove_file(q).unwrap();
    fs::remove_file(v).unwrap();
    r
}

#[test]
fn vmedia_written_images_pass_qemu_img_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let cases: &[(&str, &[&str], bool)] = &[
        ("default.qcow2", &["-O", "qcow2"], true),
        ("zlib.qcow2", &["-c", "-O", "qcow2"], true),
        (
            "zstd.qcow2",
            &["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
            true,
        ),
        (
            "v2-4k.qcow2",
            &["-O", "qcow2", "-o", "compat=0.10,cluster_size=4k"],
            true,
        ),
        (
            "v2-zlib-512.qcow2",
            &["-c", "-O", "qcow2", "-o", "compat=0.10,cluster_size=512"],
            true,
        ),
        (
            "rc1-2m.qcow2",
            &[
                "-O",
                "qcow2",
                "-o",
                "refcount_bits=1,cluster_size=2M,lazy_refcounts=on",
            ],
            true,
        ),
        (
            "rc64.qcow2",
            &["-c", "-O", "qcow2", "-o", "refcount_bits=64"],
            true,
        ),
        ("copy.raw", &["-O", "raw"], false),
        ("dense.raw", &["-O", "raw", "-S", "0"], false),
        ("plain.vmdk", &["-O", "vmdk"], true),
        (
            "stream.vmdk",
            &["-O", "vmdk", "-o", "subformat=streamOptimized"],
            true,
        ),
        ("disk.vhd", &["-O", "vpc"], false),
        ("disk.vhdx", &["-O", "vhdx"], true),
    ];
    // qemu-img check has no VHD checker (exit 63); vmedia's VHD reader and qemu-img compare
    // still prove the content.
    for (name, args, checkable) in cases {
        let out = dir.path().join(name);
        vm_convert(args, &src, &out);
        if *checkable {
            let (code, stdout, stderr) = run_any(qemu_img().args(["check"]).arg(&out));
            assert_eq!(code, 0, "qemu-img check {name}: {stdout}{stderr}");
        }
        // vpc rounds the size up to its CHS geometry; qemu-img compare then checks the tail is zero.
        assert_qemu_identical(&src, &out);
        assert_vmedia_identical(&src, &out);
    }
    // Holes: the sparse raw output must take less space than the dense one.
    let sparse = fs::metadata(dir.path().join("copy.raw")).unwrap();
    let dense = fs::metadata(dir.path().join("dense.raw")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        sparse.blocks() < dense.blocks(),
        "raw output has no holes: {} vs {} blocks",
        sparse.blocks(),
        dense.blocks()
    );
    // qcow2 to qcow2 and back keeps the bytes.
    let again = dir.path().join("again.raw");
    vm_convert(&["-O", "raw"], &dir.path().join("zstd.qcow2"), &again);
    assert_eq!(sha256_file(&again), sha256_file(&src));
}

#[test]
fn qemu_img_made_qcow2_reads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let src_hash = sha256_file(&src);
    let cases: &[(&str, &[&str])] = &[
        ("v3.qcow2", &["-O", "qcow2"]),
        ("v2.qcow2", &["-O", "qcow2", "-o", "compat=0.10"]),
        ("zlib.qcow2", &["-c", "-O", "qcow2"]),
        (
            "zstd.qcow2",
            &["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
        ),
        (
            "small-clusters.qcow2",
            &["-c", "-O", "qcow2", "-o", "cluster_size=1k"],
        ),
        (
            "extl2.qcow2",
            &["-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"],
        ),
    ];
    for (name, args) in cases {
        let img = dir.path().join(name);
        run_ok(qemu_img().arg("convert").args(*args).arg(&src).arg(&img));
        assert_vmedia_identical(&src, &img);
        let back = dir.path().join(format!("{name}.raw"));
        vm_convert(&["-O", "raw"], &img, &back);
        assert_eq!(sha256_file(&back), src_hash, "{name}");
        let (code, stdout, _) = run_any(vmedia().args(["disk", "check"]).arg(&img));
        assert_eq!(code, 0, "vmedia disk check {name}: {stdout}");
    }
    // An overlay with its own writes over a qemu-made base.
    let base = dir.path().join("v3.qcow2");
    let top = dir.path().join("top.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2", "-b", "v3.qcow2", "-F", "qcow2"])
            .arg(&top),
    );
    qemu_io(&top, "qcow2", "write -P 0x5a 1M 200k");
    qemu_io(&top, "qcow2", "write -z 4M 64k");
    let (q, v) = raw_hashes(&top, dir.path());
    assert_eq!(q, v, "overlay content differs from qemu-img's");
    assert_ne!(q, src_hash);
    assert!(base.exists());
}

/// Expands a qemu-img map JSON into per-cluster (depth, present, zero, data) classes.
fn map_classes(map: &Value, cluster: u64) -> Vec<(u64, bool, bool, bool)> {
    let mut out = Vec::new();
    for e in map.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        let class = (
            e["depth"].as_u64().unwrap(),
            e["present"].as_bool().unwrap(),
            e["zero"].as_bool().unwrap(),
            e["data"].as_bool().unwrap(),
        );
        let mut c = start / cluster * cluster;
        while c < start + len {
            if c >= start {
                out.push(class);
            }
            c += cluster;
        }
    }
    out
}

#[test]
fn map_json_matches_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let zlib = dir.path().join("zlib.qcow2");
    run_ok(
        qemu_img()
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&src)
            .arg(&zlib),
    );
    let plain = dir.path().join("plain.qcow2");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "qcow2"])
            .arg(&src)
            .arg(&plain),
    );
    let top = dir.path().join("top.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2", "-b", "plain.qcow2", "-F", "qcow2"])
            .arg(&top),
    );
    qemu_io(&top, "qcow2", "write -P 1 2M 128k");
    qemu_io(&top, "qcow2", "write -z 0 64k");
    let mine = dir.path().join("mine.qcow2");
    vm_convert(&["-c", "-O", "qcow2"], &src, &mine);
    for img in [&zlib, &plain, &top, &mine, &src] {
        let q = json_of(&run_ok(
            qemu_img().args(["map", "--output", "json"]).arg(img),
        ));
        let v = json_of(&run_ok(
            vmedia().args(["disk", "map", "--output", "json"]).arg(img),
        ));
        assert_eq!(
            map_classes(&q, 65536),
            map_classes(&v, 65536),
            "map of {}",
            img.display()
        );
        if img == &plain || img == &zlib || img == &top {
            assert_eq!(q, v, "exact map of {}", img.display());
        }
    }
}

#[test]
fn info_json_matches_qemu_img_info() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let mut images = vec![src.clone()];
    for (name, opts) in [
        ("v3.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=0.10"),
        (
            "zstd.qcow2",
            "compression_type=zstd,lazy_refcounts=on,cluster_size=128k",
        ),
    ] {
        let p = dir.path().join(name);
        run_ok(
            qemu_img()
                .args(["convert", "-O", "qcow2", "-o", opts])
                .arg(&src)
                .arg(&p),
        );
        images.push(p);
    }
    let top = dir.path().join("top.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2", "-b", "v3.qcow2", "-F", "qcow2"])
            .arg(&top),
    );
    images.push(top.clone());
    let mine = dir.path().join("mine.qcow2");
    run_ok(
        vmedia()
            .args([
                "disk",
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4k",
                "-b",
                "v2.qcow2",
                "-F",
                "qcow2",
            ])
            .arg(&mine),
    );
    images.push(mine);
    images.push(shared_sample("dissect.hypervisor/snapshot.qcow2.gz"));
    for img in &images {
        let q = json_of(&run_ok(
            qemu_img().args(["info", "--output", "json"]).arg(img),
        ));
        let v = json_of(&run_ok(
            vmedia().args(["disk", "info", "--output", "json"]).arg(img),
        ));
        assert_eq!(q, v, "info of {}", img.display());
    }
    let q = json_of(&run_ok(
        qemu_img()
            .args(["info", "--output", "json", "--backing-chain"])
            .arg(&top),
    ));
    let v = json_of(&run_ok(
        vmedia()
            .args(["disk", "info", "--output", "json", "--backing-chain"])
            .arg(&top),
    ));
    assert_eq!(q, v, "backing chain info");
}

/// base (pattern 0x11), mid (0x22 at 1M), top (0x33 at 2M, zeroes at 0..64k) over it.
fn three_level_chain(dir: &Path) -> PathBuf {
    let base = dir.join("base.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2"])
            .arg(&base)
            .arg("8M"),
    );
    qemu_io(&base, "qcow2", "write -P 0x11 0 8M");
    let mid = dir.join("mid.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"])
            .arg(&mid),
    );
    qemu_io(&mid, "qcow2", "write -P 0x22 1M 1M");
    let top = dir.join("top.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2"])
            .arg(&top),
    );
    qemu_io(&top, "qcow2", "write -P 0x33 2M 300k");
    qemu_io(&top, "qcow2", "write -z 0 64k");
    top
}

#[test]
fn three_level_chain_reads_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let top = three_level_chain(dir.path());
    let (q, v) = raw_hashes(&top, dir.path());
    assert_eq!(q, v);
    let q = json_of(&run_ok(
        qemu_img().args(["map", "--output", "json"]).arg(&top),
    ));
    let v = json_of(&run_ok(
        vmedia().args(["disk", "map", "--output", "json"]).arg(&top),
    ));
    assert_eq!(map_classes(&q, 65536), map_classes(&v, 65536));
    // The shared dissect chain, decompressed into one folder by the sample cache.
    let one = shared_sample("dissect.hypervisor/backing-chain-1.qcow2.gz");
    let two = shared_sample("dissect.hypervisor/backing-chain-2.qcow2.gz");
    let three = shared_sample("dissect.hypervisor/backing-chain-3.qcow2.gz");
    let chain = dir.path().join("dissect");
    fs::create_dir(&chain).unwrap();
    for p in [&one, &two, &three] {
        fs::copy(p, chain.join(p.file_name().unwrap())).unwrap();
    }
    let (q, v) = raw_hashes(&chain.join("backing-chain-1.qcow2"), dir.path());
    assert_eq!(q, v, "dissect backing chain");
}

#[test]
fn commit_matches_qemu_img_commit() {
    for (args, label) in [
        (vec![], "default"),
        (vec!["-d"], "keep"),
        (vec!["-b", "base.qcow2"], "to-base"),
    ] {
        let qdir = tempfile::tempdir().unwrap();
        let vdir = tempfile::tempdir().unwrap();
        let qtop = three_level_chain(qdir.path());
        let vtop = three_level_chain(vdir.path());
        let fix = |a: &Vec<&str>, d: &Path| -> Vec<String> {
            a.iter()
                .map(|s| {
                    if s.ends_with(".qcow2") {
                        d.join(s).display().to_string()
                    } else {
                        s.to_string()
                    }
                })
                .collect()
        };
        run_ok(
            qemu_img()
                .arg("commit")
                .args(fix(&args, qdir.path()))
                .arg(&qtop),
        );
        run_ok(
            vmedia()
                .args(["disk", "commit"])
                .args(fix(&args, vdir.path()))
                .arg(&vtop),
        );
        for name in ["base.qcow2", "mid.qcow2", "top.qcow2"] {
            let (q, v) = (qdir.path().join(name), vdir.path().join(name));
            let (code, out, err) = run_any(qemu_img().arg("check").arg(&v));
            assert_eq!(
                code, 0,
                "{label}: qemu-img check {name} after vmedia commit: {out}{err}"
            );
            // Same guest content layer by layer (each read alone, without its backing).
            let qr = json_of(&run_ok(qemu_img().args(["map", "--output", "json"]).arg(format!("json:{{\"driver\":\"qcow2\",\"backing\":null,\"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}}}}", q.display()))));
            let vr = json_of(&run_ok(qemu_img().args(["map", "--output", "json"]).arg(format!("json:{{\"driver\":\"qcow2\",\"backing\":null,\"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}}}}", v.display()))));
            assert_eq!(
                map_classes(&qr, 65536),
                map_classes(&vr, 65536),
                "{label}: allocation of {name}"
            );
        }
        let (qb, _) = raw_hashes(&qdir.path().join("base.qcow2"), qdir.path());
        let (vb, _) = raw_hashes(&vdir.path().join("base.qcow2"), vdir.path());
        assert_eq!(qb, vb, "{label}: base content after commit");
        let (qm, _) = raw_hashes(&qdir.path().join("mid.qcow2"), qdir.path());
        let (vm, _) = raw_hashes(&vdir.path().join("mid.qcow2"), vdir.path());
        assert_eq!(qm, vm, "{label}: mid content after commit");
    }
}

#[test]
fn rebase_safe_and_unsafe_match_qemu_img_rebase() {
    for unsafe_mode in [false, true] {
        let qdir = tempfile::tempdir().unwrap();
        let vdir = tempfile::tempdir().unwrap();
        let qtop = three_level_chain(qdir.path());
        let vtop = three_level_chain(vdir.path());
        let mut args = vec!["-b", "base.qcow2", "-F", "qcow2"];
        if unsafe_mode {
            args.push("-u");
        }
        run_ok(qemu_img().arg("rebase").args(&args).arg(&qtop));
        run_ok(vmedia().args(["disk", "rebase"]).args(&args).arg(&vtop));
        let (code, out, err) = run_any(qemu_img().arg("check").arg(&vtop));
        assert_eq!(code, 0, "qemu-img check after vmedia rebase: {out}{err}");
        let qi = json_of(&run_ok(
            qemu_img().args(["info", "--output", "json"]).arg(&qtop),
        ));
        let vi = json_of(&run_ok(
            qemu_img().args(["info", "--output", "json"]).arg(&vtop),
        ));
        assert_eq!(qi["backing-filename"], vi["backing-filename"]);
        assert_eq!(qi["backing-filename-format"], vi["backing-filename-format"]);
        let (q, _) = raw_hashes(&qtop, qdir.path());
        let (v, v_by_vmedia) = raw_hashes(&vtop, vdir.path());
        assert_eq!(
            q, v,
            "rebase (unsafe={unsafe_mode}): guest content differs from qemu-img's"
        );
        assert_eq!(v, v_by_vmedia);
    }
    // Rebasing onto nothing makes a standalone image with the same content.
    let dir = tempfile::tempdir().unwrap();
    let top = three_level_chain(dir.path());
    let (before, _) = raw_hashes(&top, dir.path());
    run_ok(vmedia().args(["disk", "rebase", "-b", ""]).arg(&top));
    let info = json_of(&run_ok(
        qemu_img().args(["info", "--output", "json"]).arg(&top),
    ));
    assert!(info.get("backing-filename").is_none());
    let (after, _) = raw_hashes(&top, dir.path());
    assert_eq!(before, after);
}

#[test]
fn shared_qcow2_samples_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for sample in [
        "dfvfs/ext2.qcow2.xz",
        "dfvfs/windows_volume.qcow2.xz",
        "plaso/image.qcow2.xz",
        "plaso/vsstest.qcow2.xz",
        "dissect.hypervisor/basic.qcow2.gz",
        "dissect.hypervisor/basic-zstd.qcow2.gz",
        "dissect.hypervisor/snapshot.qcow2.gz",
    ] {
        let img = shared_sample(sample);
        let (q, v) = raw_hashes(&img, dir.path());
        assert_eq!(q, v, "{sample}");
        let (qc, _, _) = run_any(qemu_img().arg("check").arg(&img));
        let (vc, out, err) = run_any(vmedia().args(["disk", "check"]).arg(&img));
        assert_eq!(qc, vc, "check exit code of {sample}: {out}{err}");
    }
}

#[test]
fn check_exit_codes_match_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let img = dir.path().join("x.qcow2");
    vm_convert(&["-O", "qcow2"], &src, &img);
    let both = |p: &Path| -> (i32, i32) {
        (
            run_any(qemu_img().arg("check").arg(p)).0,
            run_any(vmedia().args(["disk", "check"]).arg(p)).0,
        )
    };
    assert_eq!(both(&img), (0, 0));
    assert_eq!(both(&src), (63, 63));
    // Locate refcount block 0 from the header.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut b8 = [0u8; 8];
    f.read_exact_at(&mut b8, 48).unwrap();
    let reftable = u64::from_be_bytes(b8);
    f.read_exact_at(&mut b8, reftable).unwrap();
    let block = u64::from_be_bytes(b8);
    f.read_exact_at(&mut b8, 40).unwrap();
    let l1 = u64::from_be_bytes(b8);
    // Leak: the header cluster counted twice.
    f.write_all_at(&2u16.to_be_bytes(), block).unwrap();
    assert_eq!(both(&img), (3, 3));
    let v = json_of(&run_any_output(
        vmedia()
            .args(["disk", "check", "--output", "json"])
            .arg(&img),
    ));
    let q = json_of(&run_any_output(
        qemu_img().args(["check", "--output", "json"]).arg(&img),
    ));
    assert_eq!(v["leaks"], q["leaks"]);
    let repaired = dir.path().join("leak-repaired.qcow2");
    fs::copy(&img, &repaired).unwrap();
    run_ok(
        vmedia()
            .args(["disk", "check", "-r", "leaks"])
            .arg(&repaired),
    );
    assert_eq!(both(&repaired), (0, 0));
    // Corruption: the L1 table's cluster has refcount 0.
    f.write_all_at(&1u16.to_be_bytes(), block).unwrap();
    f.write_all_at(&0u16.to_be_bytes(), block + 2 * (l1 / 65536))
        .unwrap();
    assert_eq!(both(&img), (2, 2));
    // -r all rebuilds the refcounts; the data is untouched.
    run_ok(vmedia().args(["disk", "check", "-r", "all"]).arg(&img));
    assert_eq!(both(&img), (0, 0));
    assert_qemu_identical(&src, &img);
}

fn run_any_output(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap()
}

#[test]
fn compare_reports_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    mixed_raw(&a);
    let b = dir.path().join("b.qcow2");
    vm_convert(&["-O", "qcow2"], &a, &b);
    let changed = dir.path().join("changed.raw");
    fs::copy(&a, &changed).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&changed)
        .unwrap()
        .write_all_at(b"!", 7 * MIB + 1001)
        .unwrap();
    let longer = dir.path().join("longer.raw");
    fs::copy(&a, &longer).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&longer).unwrap();
    f.set_len(fs::metadata(&a).unwrap().len() + MIB).unwrap();
    let dirty_tail = dir.path().join("dirty-tail.raw");
    fs::copy(&longer, &dirty_tail).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&dirty_tail)
        .unwrap()
        .write_all_at(b"x", fs::metadata(&a).unwrap().len() + 70000)
        .unwrap();
    for (x, y, strict) in [
        (&a, &b, false),
        (&a, &changed, false),
        (&b, &changed, false),
        (&a, &longer, false),
        (&a, &longer, true),
        (&a, &dirty_tail, false),
        (&b, &b, true),
    ] {
        let mut q = qemu_img();
        q.arg("compare");
        let mut v = vmedia();
        v.args(["disk", "compare"]);
        if strict {
            q.arg("-s");
            v.arg("-s");
        }
        let (qc, qo, _) = run_any(q.arg(x).arg(y));
        let (vc, vo, ve) = run_any(v.arg(x).arg(y));
        assert_eq!(
            (qc, qo.trim()),
            (vc, vo.trim()),
            "compare {} {} strict={strict}: {ve}",
            x.display(),
            y.display()
        );
    }
}

#[test]
fn measure_matches_qemu_img_measure() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let qcow = dir.path().join("src.qcow2");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "qcow2"])
            .arg(&src)
            .arg(&qcow),
    );
    let cases: Vec<Vec<String>> = vec![
        vec!["-O".into(), "qcow2".into(), "--size".into(), "100G".into()],
        vec![
            "-O".into(),
            "qcow2".into(),
            "-o".into(),
            "cluster_size=4k".into(),
            "--size".into(),
            "3G".into(),
        ],
        vec!["-O".into(), "raw".into(), "--size".into(), "1G".into()],
        vec!["-O".into(), "qcow2".into(), src.display().to_string()],
        vec![
            "-O".into(),
            "qcow2".into(),
            "-o".into(),
            "refcount_bits=1".into(),
            qcow.display().to_string(),
        ],
    ];
    for args in cases {
        let q = json_of(&run_ok(
            qemu_img()
                .arg("measure")
                .args(["--output", "json"])
                .args(&args),
        ));
        let v = json_of(&run_ok(
            vmedia()
                .args(["disk", "measure", "--output", "json"])
                .args(&args),
        ));
        assert_eq!(q, v, "measure {args:?}");
    }
}

#[test]
fn resize_grow_and_shrink_pass_qemu_img_check() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    mixed_raw(&src);
    let img = dir.path().join("r.qcow2");
    vm_convert(&["-O", "qcow2", "-o", "cluster_size=4k"], &src, &img);
    // Growing past what one L1 cluster maps (4k clusters: 2 MiB per L2) moves the L1 table.
    run_ok(vmedia().args(["disk", "resize"]).arg(&img).arg("+20G"));
    assert_eq!(run_any(qemu_img().arg("check").arg(&img)).0, 0);
    let info = json_of(&run_ok(
        qemu_img().args(["info", "--output", "json"]).arg(&img),
    ));
    assert_eq!(
        info["virtual-size"].as_u64().unwrap(),
        fs::metadata(&src).unwrap().len() + (20u64 << 30)
    );
    let (code, _, err) = run_any(vmedia().args(["disk", "resize"]).arg(&img).arg("4M"));
    assert_ne!(code, 0);
    assert!(err.contains("--shrink"), "{err}");
    run_ok(
        vmedia()
            .args(["disk", "resize", "--shrink"])
            .arg(&img)
            .arg("4M"),
    );
    assert_eq!(run_any(qemu_img().arg("check").arg(&img)).0, 0);
    let head = dir.path().join("head.raw");
    fs::write(&head, &fs::read(&src).unwrap()[..(4 * MIB) as usize]).unwrap();
    assert_qemu_identical(&head, &img);
    let raw = dir.path().join("r.raw");
    fs::copy(&src, &raw).unwrap();
    run_ok(vmedia().args(["disk", "resize"]).arg(&raw).arg("64M"));
    assert_eq!(fs::metadata(&raw).unwrap().len(), 64 * MIB);
}

#[test]
fn backing_outside_the_folder_needs_allow_references() {
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("bases");
    let top_dir = dir.path().join("overlays");
    fs::create_dir_all(&base_dir).unwrap();
    fs::create_dir_all(&top_dir).unwrap();
    let base = base_dir.join("base.qcow2");
    run_ok(
        qemu_img()
            .args(["create", "-f", "qcow2"])
            .arg(&base)
            .arg("4M"),
    );
    qemu_io(&base, "qcow2", "write -P 7 0 1M");
    let top = top_dir.join("top.qcow2");
    run_ok(
        qemu_img()
            .args([
                "create",
                "-f",
                "qcow2",
                "-b",
                "../bases/base.qcow2",
                "-F",
                "qcow2",
            ])
            .arg(&top),
    );
    // info reports the reference without following it.
    let info = json_of(&run_ok(
        vmedia()
            .args(["disk", "info", "--output", "json"])
            .arg(&top),
    ));
    assert_eq!(info["backing-filename"], "../bases/base.qcow2");
    let out = dir.path().join("out.raw");
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(&top)
            .arg(&out),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--allow-references"), "{err}");
    assert!(!out.exists());
    run_ok(
        vmedia()
            .args(["disk", "convert", "--allow-references", "any", "-O", "raw"])
            .arg(&top)
            .arg(&out),
    );
    let q = dir.path().join("qemu.raw");
    run_ok(qemu_img().args(["convert", "-O", "raw"]).arg(&top).arg(&q));
    assert_eq!(sha256_file(&out), sha256_file(&q));
    // A backing loop is an error, not a hang.
    let a = dir.path().join("a.qcow2");
    run_ok(
        qemu_img()
            .args([
                "create", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2",
            ])
            .arg(&a)
            .arg("1M"),
    );
    let b = dir.path().join("b.qcow2");
    run_ok(
        qemu_img()
            .args([
                "create", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2",
            ])
            .arg(&b)
            .arg("1M"),
    );
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(&a)
            .arg(dir.path().join("loop.raw")),
    );
    assert_ne!(code, 0);
    assert!(err.contains("loop"), "{err}");
}

#[test]
fn create_options_match_qemu_img_info() {
    let dir = tempfile::tempdir().unwrap();
    for (opts, size) in [
        ("", "1G"),
        ("compat=0.10", "10G"),
        ("cluster_size=2M,compression_type=zstd", "100G"),
        ("lazy_refcounts=on,refcount_bits=8", "5G"),
    ] {
        let q = dir.path().join("q.qcow2");
        let v = dir.path().join("v.qcow2");
        let mut qa = qemu_img();
        qa.args(["create", "-q", "-f", "qcow2"]);
        let mut va = vmedia();
        va.args(["disk", "create", "-q", "-f", "qcow2"]);
        if !opts.is_empty() {
            qa.args(["-o", opts]);
            va.args(["-o", opts]);
        }
        run_ok(qa.arg(&q).arg(size));
        run_ok(va.arg(&v).arg(size));
        assert_eq!(run_any(qemu_img().arg("check").arg(&v)).0, 0, "{opts}");
        let qi = json_of(&run_ok(
            qemu_img().args(["info", "--output", "json"]).arg(&q),
        ));
        let vi = json_of(&run_ok(
            qemu_img().args(["info", "--output", "json"]).arg(&v),
        ));
        assert_eq!(qi["format-specific"], vi["format-specific"], "{opts}");
        assert_eq!(qi["virtual-size"], vi["virtual-size"], "{opts}");
        assert_eq!(qi["cluster-size"], vi["cluster-size"], "{opts}");
    }
    // Unknown options are refused, not ignored.
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "create", "-f", "qcow2", "-o", "cluster_sise=64k"])
            .arg(dir.path().join("bad.qcow2"))
            .arg("1G"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("cluster_sise"), "{err}");
}

#[test]
fn bootable_disk_converted_to_qcow2_boots() {
    let raw = disk_fixture::bootable_raw_disk();
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("boot.qcow2", vec!["-O", "qcow2"]),
        ("boot-zlib.qcow2", vec!["-c", "-O", "qcow2"]),
    ] {
        let img = dir.path().join(name);
        vm_convert(&args, &raw, &img);
        assert_eq!(run_any(qemu_img().arg("check").arg(&img)).0, 0);
        assert_qemu_identical(&raw, &img);
        let drive = format!("file={},format=qcow2,if=ide,snapshot=on", img.display());
        let log = support::qemu_boot(
            Firmware::Bios,
            &["-drive", &drive],
            BOOT_MARKER,
            Duration::from_secs(300),
        );
        assert!(log.contains(BOOT_MARKER));
    }
}

#[test]
fn convert_with_backing_writes_only_the_top_layer() {
    let dir = tempfile::tempdir().unwrap();
    let top = three_level_chain(dir.path());
    let q = dir.path().join("q-new.qcow2");
    let v = dir.path().join("v-new.qcow2");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2"])
            .arg(&top)
            .arg(&q),
    );
    run_ok(
        vmedia()
            .args([
                "disk",
                "convert",
                "-t",
                "writeback",
                "-O",
                "qcow2",
                "-B",
                "mid.qcow2",
                "-F",
                "qcow2",
            ])
            .arg(&top)
            .arg(&v),
    );
    assert_eq!(run_any(qemu_img().arg("check").arg(&v)).0, 0);
    assert_qemu_identical(&top, &v);
    let alone = |p: &Path| {
        json_of(&run_ok(qemu_img().args(["map", "--output", "json"]).arg(format!(
            "json:{{\"driver\":\"qcow2\",\"backing\":null,\"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}}}}",
            p.display()
        ))))
    };
    assert_eq!(
        map_classes(&alone(&q), 65536),
        map_classes(&alone(&v), 65536)
    );
}
