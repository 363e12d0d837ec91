//! VMDK, VHD and VHDX interoperability with qemu-img and the shared third-party samples,
//! delta chains, the streamOptimized layout, boot tests and `vmedia disk wrap-iso`.

#[path = "support/disk.rs"]
mod disk_fixture;
#[path = "support/disk_formats.rs"]
mod formats;
mod support;

use std::path::Path;

use formats::*;
use support::*;

/// (stored sample, qemu-img format, extra files that must sit beside it)
const READABLE_SAMPLES: &[(&str, &str, &[&str])] = &[
    ("qemu-iotests/d2v-zerofilled.vhd.bz2", "vpc", &[]),
    ("qemu-iotests/hyperv2012r2-dynamic.vhd.bz2", "vpc", &[]),
    ("qemu-iotests/virtualpc-dynamic.vhd.bz2", "vpc", &[]),
    ("qemu-iotests/iotest-dynamic-1G.vhdx.bz2", "vhdx", &[]),
    ("qemu-iotests/test-disk2vhd.vhdx.bz2", "vhdx", &[]),
    ("qemu-iotests/iotest-version3.vmdk.bz2", "vmdk", &[]),
    (
        "qemu-iotests/iotest-version3-2013orig.vmdk.bz2",
        "vmdk",
        &[],
    ),
    ("vmdk-rs/monolithicSparse.vmdk.xz", "vmdk", &[]),
    ("vmdk-rs/streamOptimized.vmdk.xz", "vmdk", &[]),
    ("vmdk-rs/streamOptimizedWithMarkers.vmdk.xz", "vmdk", &[]),
    ("go-vmdk-parser/vmdk-monolith.img.xz", "vmdk", &[]),
    ("go-vmdk-parser/vmdk-streamoptimized.img.xz", "vmdk", &[]),
    ("dissect.hypervisor/dynamic.vhd.gz", "vpc", &[]),
    ("dissect.hypervisor/fixed.vhd.gz", "vpc", &[]),
    ("dissect.hypervisor/dynamic.vhdx.gz", "vhdx", &[]),
    ("dissect.hypervisor/fixed.vhdx.gz", "vhdx", &[]),
    ("dfvfs/ext2.vhd.xz", "vpc", &[]),
    ("dfvfs/ext2.vmdk.xz", "vmdk", &[]),
    ("plaso/image.vhd.xz", "vpc", &[]),
    ("plaso/image.vmdk.xz", "vmdk", &[]),
];

fn check_sample_matches_qemu(name: &str, format: &str) {
    let sample = shared_sample(name);
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.raw");
    let img = open_default(&sample);
    let qemu_size = qemu_info_json(&sample, format)["virtual-size"]
        .as_u64()
        .unwrap();
    assert_eq!(
        img.virtual_size(),
        qemu_size,
        "{name}: virtual size differs from qemu-img info"
    );
    dump_raw(img.as_ref(), &ours);
    let (code, text) = qemu_compare(&ours, "raw", &sample, format);
    assert_eq!(
        code, 0,
        "{name}: vmedia's guest view differs from qemu-img's: {text}"
    );
}

#[test]
fn shared_samples_read_like_qemu() {
    for (name, format, _) in READABLE_SAMPLES {
        eprintln!("checking {name}");
        check_sample_matches_qemu(name, format);
    }
}

/// Every subformat vmedia writes: (format, options, qemu-img format name, qemu supports check).
type Written = (
    vmedia_disk::Format,
    &'static [(&'static str, &'static str)],
    &'static str,
    bool,
);
const WRITTEN: &[Written] = &[
    (vmedia_disk::Format::Vmdk, &[], "vmdk", true),
    (
        vmedia_disk::Format::Vmdk,
        &[("subformat", "monolithicFlat")],
        "vmdk",
        true,
    ),
    (
        vmedia_disk::Format::Vmdk,
        &[("subformat", "twoGbMaxExtentSparse")],
        "vmdk",
        true,
    ),
    (
        vmedia_disk::Format::Vmdk,
        &[("subformat", "twoGbMaxExtentFlat")],
        "vmdk",
        true,
    ),
    (
        vmedia_disk::Format::Vmdk,
        &[("subformat", "streamOptimized")],
        "vmdk",
        true,
    ),
    (
        vmedia_disk::Format::Vmdk,
        &[
            ("subformat", "streamOptimized"),
            ("adapter_type", "lsilogic"),
            ("hwversion", "7"),
        ],
        "vmdk",
        true,
    ),
    (vmedia_disk::Format::Vhd, &[], "vpc", false),
    (
        vmedia_disk::Format::Vhd,
        &[("subformat", "fixed")],
        "vpc",
        false,
    ),
    (
        vmedia_disk::Format::Vhd,
        &[("subformat", "fixed"), ("force_size", "on")],
        "vpc",
        false,
    ),
    (
        vmedia_disk::Format::Vhd,
        &[("force_size", "on")],
        "vpc",
        false,
    ),
    (vmedia_disk::Format::Vhdx, &[], "vhdx", true),
    (
        vmedia_disk::Format::Vhdx,
        &[("subformat", "fixed")],
        "vhdx",
        true,
    ),
    (
        vmedia_disk::Format::Vhdx,
        &[("block_size", "1M")],
        "vhdx",
        true,
    ),
];

#[test]
fn every_written_subformat_passes_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    // 37 MiB + 5 sectors: not a whole number of grains, blocks or CHS cylinders.
    patterned_raw(&raw, (37 << 20) + 5 * 512, 3);
    let src = open_default(&raw);
    for (i, (format, options, qemu_name, checkable)) in WRITTEN.iter().enumerate() {
        let ext = match format {
            vmedia_disk::Format::Vmdk => "vmdk",
            vmedia_disk::Format::Vhd => "vhd",
            _ => "vhdx",
        };
        let out = dir.path().join(format!("out{i}.{ext}"));
        lib_convert(src.as_ref(), &out, *format, options, None);
        if *checkable {
            assert_qemu_check(&out, qemu_name);
        }
        assert_qemu_identical(&raw, "raw", &out, qemu_name);
        // And vmedia reads back what it wrote.
        let back = open_default(&out);
        let ours = dir.path().join(format!("back{i}.raw"));
        dump_raw(back.as_ref(), &ours);
        assert_qemu_identical(&raw, "raw", &ours, "raw");
        let info = qemu_info_json(&out, qemu_name);
        assert_eq!(
            info["virtual-size"].as_u64().unwrap(),
            back.virtual_size(),
            "{options:?}: virtual size disagrees with qemu-img"
        );
    }
}

/// What qemu-img writes: (qemu-img -O format, -o options).
const QEMU_WRITTEN: &[(&str, &str)] = &[
    ("vmdk", "subformat=monolithicSparse"),
    ("vmdk", "subformat=monolithicFlat"),
    ("vmdk", "subformat=twoGbMaxExtentSparse"),
    ("vmdk", "subformat=twoGbMaxExtentFlat"),
    ("vmdk", "subformat=streamOptimized"),
    ("vmdk", "subformat=monolithicSparse,zeroed_grain=on"),
    ("vpc", "subformat=dynamic"),
    ("vpc", "subformat=fixed"),
    ("vpc", "subformat=dynamic,force_size=on"),
    ("vhdx", "subformat=dynamic"),
    ("vhdx", "subformat=fixed"),
    ("vhdx", "subformat=dynamic,block_size=1M"),
];

#[test]
fn images_qemu_img_writes_read_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    patterned_raw(&raw, (21 << 20) + 3 * 512, 9);
    for (i, (fmt, opts)) in QEMU_WRITTEN.iter().enumerate() {
        let out = dir.path().join(format!("q{i}.{fmt}"));
        run_ok(
            std::process::Command::new(qemu_img())
                .args(["convert", "-f", "raw", "-O", fmt, "-o", opts])
                .arg(&raw)
                .arg(&out),
        );
        let img = open_default(&out);
        let qemu_size = qemu_info_json(&out, fmt)["virtual-size"].as_u64().unwrap();
        assert_eq!(img.virtual_size(), qemu_size, "{fmt} {opts}: virtual size");
        let ours = dir.path().join(format!("ours{i}.raw"));
        dump_raw(img.as_ref(), &ours);
        assert_qemu_identical(&ours, "raw", &out, fmt);
        let theirs = dir.path().join(format!("theirs{i}.raw"));
        qemu_to_raw(&out, Some(fmt), &theirs);
        assert!(
            files_equal(&ours, &theirs),
            "{fmt} {opts}: raw conversions differ"
        );
    }
}

/// Three raw states of a disk: base, base with changes, and with more changes (some zeroing
/// data the base had, some at unaligned sector offsets).
fn three_states(dir: &Path) -> [std::path::PathBuf; 3] {
    let base = dir.join("state0.raw");
    patterned_raw(&base, 12 << 20, 1);
    let mid = dir.join("state1.raw");
    std::fs::copy(&base, &mid).unwrap();
    poke(&mid, 3 * 512, 1024, 0xa1);
    poke(&mid, (5 << 20) + 7 * 512, 70_000 / 512 * 512, 0xa2);
    poke(&mid, 0, 512, 0);
    let top = dir.join("state2.raw");
    std::fs::copy(&mid, &top).unwrap();
    poke(&top, (5 << 20) + 20 * 512, 4096, 0xb3);
    poke(&top, (9 << 20) + 512, 300_032, 0xb4);
    poke(&top, 655_360 + 4096, 8192, 0);
    [base, mid, top]
}

fn chain_test(format: vmedia_disk::Format, ext: &str, qemu_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let states = three_states(dir.path());
    let names = [
        format!("base.{ext}"),
        format!("mid.{ext}"),
        format!("top.{ext}"),
    ];
    let paths: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    lib_convert(
        open_default(&states[0]).as_ref(),
        &paths[0],
        format,
        &[],
        None,
    );
    for level in 1..3 {
        let wanted = open_default(&states[level]);
        let below = open_default(&paths[level - 1]);
        lib_delta(
            wanted.as_ref(),
            below.as_ref(),
            &paths[level],
            format,
            &names[level - 1],
        );
    }
    for level in 0..3 {
        let img = open_default(&paths[level]);
        let ours = dir.path().join(format!("read{level}.raw"));
        dump_raw(img.as_ref(), &ours);
        assert_qemu_identical(&ours, "raw", &states[level], "raw");
        if level > 0 {
            assert!(
                img.backing().is_some(),
                "{} has no parent opened",
                names[level]
            );
        }
    }
    // The top layer stores only what changed: much smaller than the base.
    use std::os::unix::fs::MetadataExt;
    let top_len = std::fs::metadata(&paths[2]).unwrap().blocks() * 512;
    let base_len = std::fs::metadata(&paths[0]).unwrap().blocks() * 512;
    assert!(
        top_len < base_len,
        "the top delta ({top_len} bytes) is not smaller than the base ({base_len})"
    );
    // qemu-img 7.2 reads no VHD or VHDX parent (it reads a differencing VHD as if it had no
    // parent and refuses differencing VHDX), so it can only vouch for the base there.
    assert_qemu_identical(&paths[0], qemu_name, &states[0], "raw");
    if qemu_name == "vmdk" {
        for level in 0..3 {
            assert_qemu_check(&paths[level], qemu_name);
            assert_qemu_identical(&paths[level], qemu_name, &states[level], "raw");
        }
    }
}

#[test]
fn vmdk_three_level_delta_chain() {
    chain_test(vmedia_disk::Format::Vmdk, "vmdk", "vmdk");
}

#[test]
fn vhd_three_level_differencing_chain() {
    chain_test(vmedia_disk::Format::Vhd, "vhd", "vpc");
}

#[test]
fn vhdx_three_level_differencing_chain() {
    chain_test(vmedia_disk::Format::Vhdx, "vhdx", "vhdx");
}

#[test]
fn qemu_written_vmdk_delta_chain_reads_equal() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    let raw = dir.path().join("seed.raw");
    patterned_raw(&raw, 8 << 20, 5);
    run_ok(
        std::process::Command::new(qemu_img())
            .args(["convert", "-f", "raw", "-O", "vmdk"])
            .arg(&raw)
            .arg(&base),
    );
    let qemu_io = require_tool("qemu-io");
    let mut below = "base.vmdk".to_string();
    for (level, writes) in [
        (1, ["write -P 0xaa 512 4096", "write -z 1M 128k"]),
        (2, ["write -P 0xbb 600k 70k", "write -P 0xcc 7M 1M"]),
    ] {
        let name = format!("delta{level}.vmdk");
        let path = dir.path().join(&name);
        run_ok(
            std::process::Command::new(qemu_img())
                .current_dir(dir.path())
                .args(["create", "-f", "vmdk", "-b", &below, "-F", "vmdk", &name]),
        );
        for w in writes {
            run_ok(
                std::process::Command::new(&qemu_io)
                    .args(["-f", "vmdk", "-c", w])
                    .arg(&path),
            );
        }
        below = name;
    }
    let top = dir.path().join("delta2.vmdk");
    let img = open_default(&top);
    assert_eq!(
        img.backing()
            .and_then(|b| b.backing())
            .map(|b| b.path().file_name().unwrap().to_owned()),
        Some("base.vmdk".into())
    );
    let ours = dir.path().join("ours.raw");
    dump_raw(img.as_ref(), &ours);
    let theirs = dir.path().join("theirs.raw");
    qemu_to_raw(&top, Some("vmdk"), &theirs);
    assert!(
        files_equal(&ours, &theirs),
        "vmedia reads qemu's delta chain differently"
    );
    let report = img.check(&vmedia_io::NoProgress).unwrap();
    assert_eq!(
        report.check_errors + report.corruptions,
        0,
        "{:?}",
        report.messages
    );
}

#[test]
fn dirty_log_vhdx_is_replayed_in_memory_like_qemu_check_repairs_it() {
    let sample = shared_sample("qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2");
    let before = sha256_file(&sample);
    let dir = tempfile::tempdir().unwrap();
    let img = open_default(&sample);
    let info = img.info().unwrap();
    assert!(
        info.format_specific.as_ref().unwrap()["data"]["log-replayed-entries"]
            .as_u64()
            .unwrap()
            > 0,
        "the log was not replayed"
    );
    let ours = dir.path().join("ours.raw");
    dump_raw(img.as_ref(), &ours);
    assert_eq!(
        sha256_file(&sample),
        before,
        "opening the dirty image modified it"
    );
    // qemu replays the log only on a writable open (check -r all): do that on a copy.
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&sample, &copy).unwrap();
    run_ok(
        std::process::Command::new(qemu_img())
            .args(["check", "-r", "all", "-f", "vhdx"])
            .arg(&copy),
    );
    assert_qemu_identical(&ours, "raw", &copy, "vhdx");
}

/// Decompresses shared samples into one folder (multi-file images need their pieces together).
fn samples_together(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        let p = shared_sample(n);
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn multi_file_vmdk_samples_read_like_qemu() {
    for (names, top) in [
        (
            &[
                "vmdk-rs/twoGbMaxExtentSparse.vmdk.xz",
                "vmdk-rs/twoGbMaxExtentSparse-s001.vmdk.xz",
            ][..],
            "twoGbMaxExtentSparse.vmdk",
        ),
        (
            &[
                "vmdk-rs/vmfs_thick.vmdk.xz",
                "vmdk-rs/vmfs_thick-flat.vmdk.xz",
            ][..],
            "vmfs_thick.vmdk",
        ),
    ] {
        let dir = samples_together(names);
        let path = dir.path().join(top);
        let img = open_default(&path);
        let ours = dir.path().join("ours.raw");
        dump_raw(img.as_ref(), &ours);
        let theirs = dir.path().join("theirs.raw");
        qemu_to_raw(&path, Some("vmdk"), &theirs);
        assert!(files_equal(&ours, &theirs), "{top}: differs from qemu-img");
    }
    // The same data in four VMware subformats (vmdk-rs commit "same data in 4 vmdk types").
    let dir = samples_together(&[
        "vmdk-rs/twoGbMaxExtentSparse.vmdk.xz",
        "vmdk-rs/twoGbMaxExtentSparse-s001.vmdk.xz",
    ]);
    let a = dir.path().join("a.raw");
    dump_raw(
        open_default(&dir.path().join("twoGbMaxExtentSparse.vmdk")).as_ref(),
        &a,
    );
    let b = dir.path().join("b.raw");
    dump_raw(
        open_default(&shared_sample("vmdk-rs/streamOptimized.vmdk.xz")).as_ref(),
        &b,
    );
    assert!(files_equal(&a, &b));
}

fn open_error(path: &Path) -> String {
    match open_any(path, &vmedia_disk::OpenOptions::default()) {
        Ok(img) => {
            // Some damage only shows when reading: read everything the image maps.
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("x.raw");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                dump_raw(img.as_ref(), &out)
            }));
            match result {
                Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
                Ok(()) => panic!("{} opened and read without an error", path.display()),
            }
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn negative_samples_give_clear_errors() {
    for (name, expect) in [
        ("qemu-iotests/afl5.img.bz2", "max table entries"),
        ("qemu-iotests/afl9.vmdk.bz2", "vmdk"),
        ("qemu-iotests/afl9-2015orig.vmdk.bz2", "vmdk"),
        ("go-vmdk-parser/vmdk-invalid.img.xz", "descriptor"),
        ("dfvfs/image.vhd.xz", "checksum"),
        ("dfvfs/image-differential.vhd.xz", "checksum"),
        ("dissect.hypervisor/sesparse.vmdk.gz", "seSparse"),
    ] {
        let path = shared_sample(name);
        let err = open_error(&path);
        assert!(
            err.contains(expect),
            "{name}: error {err:?} does not mention {expect:?}"
        );
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{name}: error {err:?} does not name the file"
        );
    }
}

#[test]
fn images_with_absent_parents_or_extents_name_what_is_missing() {
    for (name, missing) in [
        ("dfvfs/fat-differential.vhd.xz", "fat-parent.vhd"),
        ("dissect.hypervisor/differencing.avhdx.gz", "Generation 1_"),
        (
            "vmdk-rs/descriptor-only/monolithicFlat.vmdk.xz",
            "monolithicFlat-flat.vmdk",
        ),
        (
            "vmdk-rs/descriptor-only/twoGbMaxExtentFlat.vmdk.xz",
            "twoGbMaxExtentFlat-f001.vmdk",
        ),
        (
            "SecurityRonin-vmdk/descriptor-only/ms3-win.vmdk.xz",
            "disk-s001.vmdk",
        ),
    ] {
        let path = shared_sample(name);
        let err = match open_any(&path, &vmedia_disk::OpenOptions::default()) {
            Ok(_) => panic!("{name} opened although {missing} is absent"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(missing),
            "{name}: {err:?} does not name {missing}"
        );
    }
    // With the chain not followed, the differencing images still describe themselves.
    let opts = vmedia_disk::OpenOptions {
        skip_backing: true,
        ..Default::default()
    };
    let vhd = open_any(&shared_sample("dfvfs/fat-differential.vhd.xz"), &opts).unwrap();
    assert_eq!(vhd.virtual_size(), 4 << 20);
    assert_eq!(vhd.backing_ref().unwrap().name, "fat-parent.vhd");
    let avhdx = open_any(
        &shared_sample("dissect.hypervisor/differencing.avhdx.gz"),
        &opts,
    )
    .unwrap();
    assert_eq!(avhdx.virtual_size(), 8 << 30);
    assert!(avhdx.backing_ref().unwrap().name.ends_with(".avhdx"));
    // An ESXi snapshot descriptor: its VMFSSPARSE extent format is named.
    let err = open_any(
        &shared_sample("vmdk-rs/descriptor-only/vmfs_thick-000001.vmdk.xz"),
        &vmedia_disk::OpenOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("VMFSSPARSE"), "{err}");
}

#[test]
fn hand_edited_vhd_reads_when_checksums_are_ignored() {
    // dfvfs/image.vhd is plaso/image.vhd with a hand-set UUID (footer checksum not updated).
    let edited = shared_sample("dfvfs/image.vhd.xz");
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.raw");
    qemu_to_raw(&shared_sample("plaso/image.vhd.xz"), Some("vpc"), &clean);
    // Refused by default, with the way out named.
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "convert", "-f", "vpc", "-O", "raw"])
            .arg(&edited)
            .arg(dir.path().join("refused.raw")),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("checksum") && err.contains("--ignore-checksums"),
        "{err}"
    );
    // The flag, the environment variable and the library option all read it.
    let by_flag = dir.path().join("flag.raw");
    run_ok(
        vmedia()
            .args([
                "disk",
                "convert",
                "--ignore-checksums",
                "-f",
                "vpc",
                "-O",
                "raw",
            ])
            .arg(&edited)
            .arg(&by_flag),
    );
    assert!(files_equal(&by_flag, &clean));
    let by_env = dir.path().join("env.raw");
    run_ok(
        vmedia()
            .env("VMEDIA_IGNORE_CHECKSUMS", "1")
            .args(["disk", "convert", "-f", "vpc", "-O", "raw"])
            .arg(&edited)
            .arg(&by_env),
    );
    assert!(files_equal(&by_env, &clean));
    let opts = vmedia_disk::OpenOptions {
        ignore_checksums: true,
        ..Default::default()
    };
    let img = open_any(&edited, &opts).unwrap();
    let by_lib = dir.path().join("lib.raw");
    dump_raw(img.as_ref(), &by_lib);
    assert!(files_equal(&by_lib, &clean));
    let report = img.check(&vmedia_io::NoProgress).unwrap();
    assert!(
        report.messages.iter().any(|m| m.contains("checksum")),
        "check does not list the ignored mismatch: {:?}",
        report.messages
    );
    assert!(open_any(&edited, &vmedia_disk::OpenOptions::default()).is_err());
}

#[test]
fn bootable_disk_converted_by_vmedia_boots_in_qemu() {
    let raw = disk_fixture::bootable_raw_disk();
    let dir = tempfile::tempdir().unwrap();
    for (fmt, opts, ext) in [
        ("vmdk", "subformat=monolithicSparse", "vmdk"),
        ("vmdk", "subformat=streamOptimized", "vmdk"),
        ("vpc", "subformat=dynamic", "vhd"),
        ("vhdx", "subformat=dynamic", "vhdx"),
    ] {
        let out = dir
            .path()
            .join(format!("boot-{}.{ext}", opts.replace('=', "-")));
        run_ok(
            vmedia()
                .args(["disk", "convert", "-q", "-O", fmt, "-o", opts])
                .arg(&raw)
                .arg(&out),
        );
        assert_qemu_identical(&raw, "raw", &out, fmt);
        let drive = format!("file={},format={fmt},if=ide,snapshot=on", out.display());
        let log = qemu_boot(
            Firmware::Bios,
            &["-drive", &drive],
            BOOT_MARKER,
            std::time::Duration::from_secs(300),
        );
        assert!(log.contains(BOOT_MARKER), "{fmt} {opts}: no boot marker");
    }
}

fn small_iso(dir: &Path, name: &str) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("hello.txt"),
        "hello from an ISO wrapped as a disk\n",
    )
    .unwrap();
    let iso = dir.join(name);
    run_ok(
        std::process::Command::new(require_tool("xorriso"))
            .args(["-as", "mkisofs", "-quiet", "-R", "-V", "WRAPME", "-o"])
            .arg(&iso)
            .arg(&tree),
    );
    iso
}

#[test]
fn wrap_iso_makes_a_vmdk_qemu_img_accepts_without_copying() {
    let dir = tempfile::tempdir().unwrap();
    let iso = small_iso(dir.path(), "x.iso");
    let vmdk = dir.path().join("x.vmdk");
    let out = run_ok(
        vmedia()
            .args(["disk", "wrap-iso"])
            .arg(&iso)
            .arg("-o")
            .arg(&vmdk)
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["extent"], "x.iso");
    assert_eq!(v["access"], "RW");
    let iso_len = std::fs::metadata(&iso).unwrap().len();
    assert!(
        std::fs::metadata(&vmdk).unwrap().len() < 4096,
        "the descriptor must not contain the data"
    );
    let info = qemu_info_json(&vmdk, "vmdk");
    assert_eq!(info["format"], "vmdk");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), iso_len);
    assert_eq!(
        info["format-specific"]["data"]["create-type"],
        "monolithicFlat"
    );
    assert_qemu_identical(&vmdk, "vmdk", &iso, "raw");
    // vmedia reads it back through its own VMDK driver too.
    let img = open_default(&vmdk);
    let ours = dir.path().join("back.raw");
    dump_raw(img.as_ref(), &ours);
    assert_qemu_identical(&ours, "raw", &iso, "raw");
    let text = std::fs::read_to_string(&vmdk).unwrap();
    assert!(
        text.contains("RW ")
            && text.contains("FLAT \"x.iso\" 0")
            && text.contains("ddb.adapterType = \"ide\""),
        "{text}"
    );
    // Native command: an existing output is refused without --force.
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "wrap-iso"])
            .arg(&iso)
            .arg("-o")
            .arg(&vmdk),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    run_ok(
        vmedia()
            .args([
                "disk",
                "wrap-iso",
                "--force",
                "--read-only",
                "--adapter",
                "lsilogic",
            ])
            .arg(&iso)
            .arg("-o")
            .arg(&vmdk),
    );
    let text = std::fs::read_to_string(&vmdk).unwrap();
    assert!(
        text.contains("RDONLY ") && text.contains("lsilogic"),
        "{text}"
    );
    assert_eq!(open_default(&vmdk).virtual_size(), iso_len);
}

#[test]
fn wrap_iso_pads_a_file_that_is_not_whole_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.iso");
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 255) as u8 + 1).collect();
    std::fs::write(&odd, &data).unwrap();
    let vmdk = dir.path().join("odd.vmdk");
    let out = run_ok(
        vmedia()
            .args(["disk", "wrap-iso"])
            .arg(&odd)
            .arg("-o")
            .arg(&vmdk),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("padded"),
        "the padding is not reported"
    );
    let info = qemu_info_json(&vmdk, "vmdk");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), 5120);
    let img = open_default(&vmdk);
    let mut buf = vec![0u8; 5120];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..5000], &data[..]);
    assert!(buf[5000..].iter().all(|b| *b == 0));
    let theirs = dir.path().join("theirs.raw");
    qemu_to_raw(&vmdk, Some("vmdk"), &theirs);
    assert_eq!(std::fs::read(&theirs).unwrap(), buf);
}

#[test]
fn wrap_iso_in_another_folder_needs_references_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let iso_dir = dir.path().join("isos");
    std::fs::create_dir_all(&iso_dir).unwrap();
    let iso = small_iso(&iso_dir, "far.iso");
    let vmdk = dir.path().join("far.vmdk");
    run_ok(
        vmedia()
            .args(["disk", "wrap-iso"])
            .arg(&iso)
            .arg("-o")
            .arg(&vmdk),
    );
    assert!(std::fs::read_to_string(&vmdk)
        .unwrap()
        .contains(&std::fs::canonicalize(&iso).unwrap().display().to_string()));
    let err = open_any(&vmdk, &vmedia_disk::OpenOptions::default())
        .err()
        .expect("an extent outside the folder was opened by default")
        .to_string();
    assert!(err.contains("allow-references"), "{err}");
    assert!(open_any(&vmdk, &allow_any()).is_ok());
    assert_qemu_identical(&vmdk, "vmdk", &iso, "raw");
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Walks a streamOptimized file independently of vmedia's parser and checks VMware's layout.
#[test]
fn stream_optimized_output_follows_vmware_layout_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    patterned_raw(&raw, (45 << 20) + 512 * 3, 7);
    let out = dir.path().join("s.vmdk");
    run_ok(
        vmedia()
            .args([
                "disk",
                "convert",
                "-q",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized,adapter_type=lsilogic",
            ])
            .arg(&raw)
            .arg(&out),
    );
    let f = std::fs::read(&out).unwrap();
    let source = std::fs::read(&raw).unwrap();
    assert_eq!(f.len() % 512, 0, "the file is not whole sectors");
    // Header.
    assert_eq!(&f[0..4], b"KDMV");
    assert_eq!(le32(&f, 4), 3, "version");
    assert_eq!(
        le32(&f, 8),
        0x0003_0001,
        "flags: newline test | compressed grains | markers"
    );
    let capacity = le64(&f, 12);
    assert_eq!(capacity, (source.len() as u64).div_ceil(512), "capacity");
    assert_eq!(le64(&f, 20), 128, "grainSize");
    assert_eq!(le64(&f, 28), 1, "descriptorOffset");
    let desc_sectors = le64(&f, 36);
    assert!(desc_sectors >= 1);
    assert_eq!(le32(&f, 44), 512, "numGTEsPerGT");
    assert_eq!(le64(&f, 48), 0, "rgdOffset");
    assert_eq!(
        le64(&f, 56),
        u64::MAX,
        "gdOffset must be GD_AT_END in the first header"
    );
    let overhead = le64(&f, 64);
    assert_eq!(&f[73..77], b"\n \r\n", "newline detection characters");
    assert_eq!(
        u16::from_le_bytes([f[77], f[78]]),
        1,
        "compressAlgorithm deflate"
    );
    let desc = String::from_utf8_lossy(&f[512..512 + desc_sectors as usize * 512])
        .trim_end_matches('\0')
        .to_string();
    assert!(desc.starts_with("# Disk DescriptorFile"), "{desc}");
    assert!(desc.contains("createType=\"streamOptimized\""), "{desc}");
    assert!(
        desc.contains(&format!("RW {capacity} SPARSE \"s.vmdk\"")),
        "{desc}"
    );
    for key in [
        "ddb.adapterType = \"lsilogic\"",
        "ddb.virtualHWVersion",
        "ddb.geometry.cylinders",
        "ddb.geometry.heads = \"255\"",
        "ddb.geometry.sectors = \"63\"",
        "ddb.toolsVersion",
        "ddb.uuid",
        "ddb.longContentID",
    ] {
        assert!(desc.contains(key), "descriptor lacks {key}: {desc}");
    }
    // The stream body.
    let mut at = overhead as usize * 512;
    let mut grains = std::collections::BTreeMap::new();
    let mut tables: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut last_lba = None;
    let (mut gd_at, mut footer_seen, mut eos_at) = (None, false, None);
    while at < f.len() {
        assert_eq!(at % 512, 0, "structure at {at:#x} is not sector aligned");
        let val = le64(&f, at);
        let size = le32(&f, at + 8);
        if size != 0 {
            assert!(gd_at.is_none(), "grain after the grain directory");
            assert_eq!(val % 128, 0, "grain LBA {val} is not grain aligned");
            assert!(
                last_lba.is_none_or(|l| val > l),
                "grains not in ascending order"
            );
            last_lba = Some(val);
            let data = &f[at + 12..at + 12 + size as usize];
            // A zlib stream (RFC 1950) as VMware writes: deflate method, valid check bits.
            // Its content is proven below by qemu-img compare, which inflates every grain.
            assert_eq!(
                data[0] & 0x0f,
                8,
                "grain at LBA {val} is not a zlib deflate stream"
            );
            assert_eq!(
                (u16::from(data[0]) << 8 | u16::from(data[1])) % 31,
                0,
                "grain at LBA {val}: bad zlib header"
            );
            assert!(val * 512 < source.len() as u64, "grain beyond the disk");
            grains.insert(at / 512, val);
            at = (at + 12 + size as usize).div_ceil(512) * 512;
            continue;
        }
        let kind = le32(&f, at + 12);
        assert!(
            f[at + 16..at + 512].iter().all(|b| *b == 0),
            "marker padding at {at:#x} is not zero"
        );
        match kind {
            1 => {
                assert_eq!(val, 4, "GT marker size");
                let t = (0..512).map(|i| le32(&f, at + 512 + i * 4)).collect();
                tables.push(((at + 512) / 512, t));
                at += 512 + 2048;
            }
            2 => {
                gd_at = Some((at + 512) / 512);
                at += 512 + val as usize * 512;
            }
            3 => {
                assert_eq!(val, 1, "footer marker size");
                let footer = &f[at + 512..at + 1024];
                assert_eq!(&footer[0..4], b"KDMV");
                assert_eq!(
                    le64(footer, 56) as usize,
                    gd_at.expect("footer before the grain directory"),
                    "footer gdOffset"
                );
                assert_eq!(
                    &footer[..56],
                    &f[..56],
                    "footer differs from the header before gdOffset"
                );
                assert_eq!(
                    &footer[64..512],
                    &f[64..512],
                    "footer differs from the header after gdOffset"
                );
                footer_seen = true;
                at += 1024;
            }
            0 => {
                assert_eq!(val, 0);
                eos_at = Some(at);
                at += 512;
            }
            other => panic!("unknown marker type {other} at {at:#x}"),
        }
    }
    assert!(footer_seen, "no footer");
    assert_eq!(
        eos_at,
        Some(f.len() - 512),
        "the end-of-stream marker must be the last sector"
    );
    // The directory points at the tables, the tables at the grain markers.
    let gd_sector = gd_at.unwrap();
    let gd_entries = capacity.div_ceil(128).div_ceil(512) as usize;
    let mut mapped = 0;
    for i in 0..gd_entries {
        let gt = le32(&f, gd_sector * 512 + i * 4) as usize;
        if gt == 0 {
            continue;
        }
        let (_, table) = tables
            .iter()
            .find(|(s, _)| *s == gt)
            .expect("GD entry points at no grain table");
        for (j, e) in table.iter().enumerate() {
            if *e != 0 {
                assert_eq!(
                    grains.get(&(*e as usize)),
                    Some(&(((i * 512 + j) * 128) as u64)),
                    "GT entry does not point at its grain marker"
                );
                mapped += 1;
            }
        }
    }
    assert_eq!(
        mapped,
        grains.len(),
        "grains not reachable from the directory"
    );
    assert!(vmedia_disk::profile::check_target(
        open_default(&out).as_ref(),
        vmedia_disk::profile::Target::Esxi
    )
    .is_empty());
    assert_qemu_check(&out, "vmdk");
    assert_qemu_identical(&raw, "raw", &out, "vmdk");
}

#[test]
fn target_checks_accept_vmedia_profiles_and_name_what_peers_get_wrong() {
    use vmedia_disk::profile::{apply, check_target, Target};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    patterned_raw(&raw, (10 << 20) + 12345, 2);
    let src = open_default(&raw);
    for (target, ext) in [
        (Target::Esxi, "vmdk"),
        (Target::Azure, "vhd"),
        (Target::HyperV, "vhdx"),
    ] {
        let mut opts =
            vmedia_disk::CreateOptions::new(vmedia_disk::Format::Raw, src.virtual_size());
        apply(target, &mut opts).unwrap();
        let out = dir.path().join(format!("t.{ext}"));
        let options: Vec<(String, String)> = opts.options.clone().into_iter().collect();
        let borrowed: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let sized = formats::SizedSource {
            inner: src.as_ref(),
            size: opts.virtual_size,
        };
        lib_convert(&sized, &out, opts.format, &borrowed, None);
        let img = open_default(&out);
        let problems = check_target(img.as_ref(), target);
        assert!(problems.is_empty(), "{target}: {problems:?}");
        assert_qemu_identical(&raw, "raw", &out, opts.format.qemu_name());
        if target == Target::Azure {
            assert_eq!(
                img.virtual_size(),
                11 << 20,
                "Azure sizes round up to whole MiB"
            );
            assert_eq!(std::fs::metadata(&out).unwrap().len(), (11 << 20) + 512);
            assert_eq!(
                qemu_info_json(&out, "vpc")["virtual-size"]
                    .as_u64()
                    .unwrap(),
                11 << 20
            );
        }
    }
    // qemu-img's streamOptimized: vSphere refuses it; the check says why.
    let q = dir.path().join("q.vmdk");
    run_ok(
        std::process::Command::new(qemu_img())
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(&raw)
            .arg(&q),
    );
    let problems = check_target(open_default(&q).as_ref(), Target::Esxi);
    assert!(
        problems.iter().any(|p| p.field == "gdOffset"),
        "{problems:?}"
    );
    // qemu-img's default fixed VHD is CHS-sized: Azure refuses it.
    let v = dir.path().join("q.vhd");
    run_ok(
        std::process::Command::new(qemu_img())
            .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed"])
            .arg(&raw)
            .arg(&v),
    );
    let problems = check_target(
        open_any(
            &v,
            &vmedia_disk::OpenOptions {
                format: Some(vmedia_disk::Format::Vhd),
                ..Default::default()
            },
        )
        .unwrap()
        .as_ref(),
        Target::Azure,
    );
    assert!(
        problems.iter().any(|p| p.field == "footer current size"),
        "{problems:?}"
    );
    // A dynamic VHD is not for Azure, a VMDK not for Hyper-V.
    assert!(!check_target(src.as_ref(), Target::HyperV).is_empty());
}

/// Regression: zero runs the converter reports through write_zeroes allocated grains in a
/// VMDK without a parent (outputs a third larger than qemu-img's).
#[test]
fn zero_runs_stay_unallocated_without_a_parent() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("zeros.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(16 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
    for (fmt, opts) in [
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=twoGbMaxExtentSparse"),
        ("vpc", "subformat=dynamic"),
        ("vhdx", "block_size=1M"),
    ] {
        let out = dir.path().join(format!("z.{fmt}"));
        run_ok(
            vmedia()
                .args(["disk", "convert", "-q", "-O", fmt, "-o", opts])
                .arg(&raw)
                .arg(&out),
        );
        // qemu-img map for VMDK and VHD; qemu has no block status for VHDX (it calls all of
        // it data), so vmedia's own map counts there.
        let data: u64 = if fmt == "vhdx" {
            let img = open_default(&out);
            let (mut at, mut sum) = (0u64, 0u64);
            while at < img.virtual_size() {
                let s = img.block_status(at, img.virtual_size() - at).unwrap();
                if s.kind == vmedia_disk::BlockKind::Data {
                    sum += s.len;
                }
                at += s.len;
            }
            sum
        } else {
            let map = run_ok(
                std::process::Command::new(qemu_img())
                    .args(["map", "--output", "json", "-f", fmt])
                    .arg(&out),
            );
            let entries: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
            entries
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["data"] == true)
                .map(|e| e["length"].as_u64().unwrap())
                .sum()
        };
        assert!(
            data <= 2 << 20,
            "{fmt} {opts}: {data} bytes allocated for 4 KiB of data"
        );
        assert_qemu_identical(&raw, "raw", &out, fmt);
    }
}

/// `convert --target` writes what each platform imports (checked by qemu-img and by the target
/// rules), and `check --target` names what a platform would refuse in a qemu-img image.
#[test]
fn convert_target_writes_importable_images_and_check_target_names_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    patterned_raw(&raw, (10 << 20) + 12345, 3);
    for (target, ext, qfmt) in [
        ("esxi", "vmdk", "vmdk"),
        ("vsphere", "vmdk", "vmdk"),
        ("azure", "vhd", "vpc"),
        ("hyperv", "vhdx", "vhdx"),
        ("hyper-v", "vhdx", "vhdx"),
    ] {
        let out = dir.path().join(format!("{target}.{ext}"));
        run_ok(
            vmedia()
                .args(["disk", "convert", "-q", "--target", target])
                .arg(&raw)
                .arg(&out),
        );
        let info = qemu_info_json(&out, qfmt);
        assert_eq!(info["format"], qfmt, "{target}: {info}");
        if qfmt != "vpc" {
            // qemu-img has no check for VHD.
            run_ok(
                std::process::Command::new(qemu_img())
                    .args(["check", "-f", qfmt])
                    .arg(&out),
            );
        }
        assert_qemu_identical(&raw, "raw", &out, qfmt);
        match target {
            "esxi" | "vsphere" => assert_eq!(
                info["format-specific"]["data"]["create-type"], "streamOptimized",
                "{info}"
            ),
            "azure" => {
                assert_eq!(
                    info["virtual-size"].as_u64().unwrap(),
                    11 << 20,
                    "whole MiB"
                );
                assert_eq!(
                    std::fs::metadata(&out).unwrap().len(),
                    (11 << 20) + 512,
                    "fixed VHD"
                );
            }
            _ => assert_eq!(
                info["virtual-size"].as_u64().unwrap(),
                11 << 20,
                "whole MiB"
            ),
        }
        let check = run_ok(
            vmedia()
                .args(["disk", "check", "--target", target])
                .arg(&out),
        );
        assert!(
            String::from_utf8_lossy(&check.stdout).contains("No problems"),
            "{target}"
        );
    }
    // A target of another format is refused before anything is written.
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "convert", "-q", "-O", "qcow2", "--target", "azure"])
            .arg(&raw)
            .arg(dir.path().join("x.qcow2")),
    );
    assert_ne!(code, 0, "{err}");
    // qemu-img's streamOptimized VMDK: vSphere refuses it, and the CLI says why (exit 2).
    let q = dir.path().join("q.vmdk");
    run_ok(
        std::process::Command::new(qemu_img())
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(&raw)
            .arg(&q),
    );
    let (code, out, _) = run_any(
        vmedia()
            .args(["disk", "check", "--target", "esxi", "--output", "json"])
            .arg(&q),
    );
    assert_eq!(code, 2);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["accepted"], false);
    assert!(
        json["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["field"] == "gdOffset"),
        "{json}"
    );
    let (code, out, _) = run_any(
        vmedia()
            .args(["disk", "check", "--target", "vsphere"])
            .arg(&q),
    );
    assert_eq!(code, 2);
    assert!(out.contains("gdOffset"), "{out}");
}

/// The span reader (uncompressed conversions read up to 4 MiB at once and write from the read
/// buffer): zero clusters inside a data run, a hole, data across span boundaries and a short
/// last cluster come out identical in every format, with and without the flush (-t), and the
/// zero cluster inside the run stays unallocated.
#[test]
fn span_reads_keep_zero_clusters_sparse_and_outputs_identical() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("mix.raw");
    let size: u64 = (13 << 20) + 4608;
    patterned_raw(&raw, size, 9);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    // A zeroed 64 KiB cluster inside the first span, and a 1 MiB hole across the 8 MiB mark.
    f.write_all_at(&vec![0u8; 64 << 10], 1 << 20).unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], (8 << 20) - (512 << 10))
        .unwrap();
    drop(f);
    for (fmt, ext) in [
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vpc", "vhd"),
        ("vhdx", "vhdx"),
        ("raw", "img"),
    ] {
        for cache in ["unsafe", "writeback"] {
            let out = dir.path().join(format!("{cache}.{ext}"));
            run_ok(
                vmedia()
                    .args(["disk", "convert", "-q", "-t", cache, "-O", fmt])
                    .arg(&raw)
                    .arg(&out),
            );
            assert_qemu_identical(&raw, "raw", &out, fmt);
        }
    }
    let out = dir.path().join("unsafe.qcow2");
    let map = run_ok(
        std::process::Command::new(qemu_img())
            .args(["map", "--output", "json", "-f", "qcow2"])
            .arg(&out),
    );
    let entries: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let zero_cluster_is_data = entries.as_array().unwrap().iter().any(|e| {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        e["data"] == true && start <= (1 << 20) && start + len > (1 << 20)
    });
    assert!(
        !zero_cluster_is_data,
        "the zeroed cluster inside a span was allocated: {entries}"
    );
}

/// The edits both in-place tests make: partial-block writes, a write across a block boundary,
/// the last sector, and zeroed clusters over data and over a hole.
fn in_place_edits(size: u64) -> Vec<Edit> {
    vec![
        Edit::Write(512, 4096, 0xa1),
        Edit::Write((2 << 20) - 8192, 16384, 0xb2),
        Edit::Write(5 << 20, 65536, 0xc3),
        Edit::Write(size - 512, 512, 0xd4),
        Edit::ZeroCluster(0),
        Edit::ZeroCluster(3 << 20),
        Edit::Write(7 << 20, 1536, 0xe5),
    ]
}

#[test]
fn in_place_writes_into_dynamic_vhd_and_vhdx_pass_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12u64 << 20;
    let seed = dir.path().join("seed.raw");
    patterned_raw(&seed, size, 9);
    let seed_img = open_default(&seed);
    // (format, qemu name, who writes the image first)
    for (format, qemu_name, writer) in [
        (vmedia_disk::Format::Vhd, "vpc", "vmedia"),
        (vmedia_disk::Format::Vhdx, "vhdx", "vmedia"),
        (vmedia_disk::Format::Vhd, "vpc", "qemu-img"),
        (vmedia_disk::Format::Vhdx, "vhdx", "qemu-img"),
    ] {
        let img = dir.path().join(format!("{writer}.{qemu_name}"));
        match writer {
            "vmedia" => {
                let opts: &[(&str, &str)] = if format == vmedia_disk::Format::Vhd {
                    &[("force_size", "on"), ("block_size", "524288")]
                } else {
                    &[("block_size", "1M")]
                };
                lib_convert(seed_img.as_ref(), &img, format, opts, None);
            }
            _ => {
                let o = if format == vmedia_disk::Format::Vhd {
                    "subformat=dynamic,force_size=on"
                } else {
                    "subformat=dynamic,block_size=1M"
                };
                run_ok(
                    std::process::Command::new(qemu_img())
                        .args(["convert", "-f", "raw", "-O", qemu_name, "-o", o])
                        .arg(&seed)
                        .arg(&img),
                );
            }
        }
        let expected = dir
            .path()
            .join(format!("{writer}-{qemu_name}.expected.raw"));
        std::fs::copy(&seed, &expected).unwrap();
        edit_both(&img, format, &expected, &in_place_edits(size));
        let what = format!("{writer}-made {qemu_name} edited in place");
        if format == vmedia_disk::Format::Vhdx {
            assert_qemu_check(&img, qemu_name);
        }
        assert_qemu_identical(&img, qemu_name, &expected, "raw");
        assert_eq!(
            qemu_info_json(&img, qemu_name)["virtual-size"].as_u64(),
            Some(size),
            "{what}"
        );
        let ours = dir.path().join(format!("{writer}-{qemu_name}.ours.raw"));
        let back = open_default(&img);
        dump_raw(back.as_ref(), &ours);
        assert!(
            files_equal(&ours, &expected),
            "{what} reads back differently"
        );
        let report = back.check(&vmedia_io::NoProgress).unwrap();
        assert_eq!(
            report.corruptions + report.check_errors,
            0,
            "{what}: {:?}",
            report.messages
        );
    }
}

#[test]
fn in_place_writes_into_windows_made_vhd_and_vhdx_read_back_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (sample, qemu_name, format) in [
        (
            "dissect.hypervisor/dynamic.vhd.gz",
            "vpc",
            vmedia_disk::Format::Vhd,
        ),
        (
            "dissect.hypervisor/dynamic.vhdx.gz",
            "vhdx",
            vmedia_disk::Format::Vhdx,
        ),
    ] {
        let original = shared_sample(sample);
        let img = dir.path().join(original.file_name().unwrap());
        std::fs::copy(&original, &img).unwrap();
        let expected = dir.path().join(format!("{qemu_name}.expected.raw"));
        qemu_to_raw(&original, Some(qemu_name), &expected);
        let size = std::fs::metadata(&expected).unwrap().len();
        let edits = [
            Edit::Write(0, 8192, 0x11),
            Edit::Write(size / 2 + 512, 3072, 0x22),
            Edit::ZeroCluster(1 << 20),
            Edit::Write(size - 4096, 4096, 0x33),
        ];
        edit_both(&img, format, &expected, &edits);
        if format == vmedia_disk::Format::Vhdx {
            assert_qemu_check(&img, qemu_name);
        }
        assert_qemu_identical(&img, qemu_name, &expected, "raw");
        let ours = dir.path().join(format!("{qemu_name}.ours.raw"));
        dump_raw(open_default(&img).as_ref(), &ours);
        assert!(
            files_equal(&ours, &expected),
            "{sample} edited reads back differently"
        );
    }
}

#[test]
fn differencing_chains_edited_in_place_read_back_the_expected_bytes() {
    for (format, ext, qemu_name) in [
        (vmedia_disk::Format::Vhd, "vhd", "vpc"),
        (vmedia_disk::Format::Vhdx, "vhdx", "vhdx"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let size = 12u64 << 20;
        let seed = dir.path().join("seed.raw");
        patterned_raw(&seed, size, 3);
        let base = dir.path().join(format!("base.{ext}"));
        let opts: &[(&str, &str)] = if format == vmedia_disk::Format::Vhd {
            &[("force_size", "on")]
        } else {
            &[("block_size", "1M")]
        };
        lib_convert(open_default(&seed).as_ref(), &base, format, opts, None);
        // Three levels, each changed in place: base <- mid <- top.
        let mut below = format!("base.{ext}");
        for level in ["mid", "top"] {
            let path = dir.path().join(format!("{level}.{ext}"));
            let mut o = vmedia_disk::CreateOptions::new(format, size);
            for (k, v) in opts {
                o.options.insert((*k).into(), (*v).into());
            }
            o.backing = Some((below.clone(), Some(format)));
            let create = if format == vmedia_disk::Format::Vhd {
                vmedia_disk::vhd::create
            } else {
                vmedia_disk::vhdx::create
            };
            create(&path, &o).unwrap().finish().unwrap();
            below = format!("{level}.{ext}");
        }
        let expected = dir.path().join("expected.raw");
        std::fs::copy(&seed, &expected).unwrap();
        // The base changes first (what a commit into it does), then each child, sector-
        // granular, with zeros that must hide the data below.
        edit_both(
            &base,
            format,
            &expected,
            &[Edit::Write(9 << 20, 4096, 0x77)],
        );
        if format == vmedia_disk::Format::Vhdx {
            // The base's DataWriteGuid changed: the child no longer matches until relinked.
            let mid = open_default(&dir.path().join(format!("mid.{ext}")));
            let report = mid.check(&vmedia_io::NoProgress).unwrap();
            assert_eq!(report.check_errors, 1, "{:?}", report.messages);
        }
        relink(
            &dir.path().join(format!("mid.{ext}")),
            &format!("base.{ext}"),
            format,
        );
        edit_both(
            &dir.path().join(format!("mid.{ext}")),
            format,
            &expected,
            &[
                Edit::Write(512 * 7, 512 * 3, 0x88),
                Edit::ZeroCluster(1 << 20),
                Edit::Write((4 << 20) + 65536, 65536, 0x99),
            ],
        );
        relink(
            &dir.path().join(format!("top.{ext}")),
            &format!("mid.{ext}"),
            format,
        );
        edit_both(
            &dir.path().join(format!("top.{ext}")),
            format,
            &expected,
            &[
                Edit::Write(512 * 8, 512, 0xaa),
                Edit::Write((4 << 20) + 65536 + 1024, 2048, 0xbb),
                Edit::ZeroCluster(9 << 20),
                Edit::Write(size - 1024, 1024, 0xcc),
            ],
        );
        let top = dir.path().join(format!("top.{ext}"));
        let img = open_default(&top);
        let ours = dir.path().join("ours.raw");
        dump_raw(img.as_ref(), &ours);
        assert!(
            files_equal(&ours, &expected),
            "{ext} chain reads back differently"
        );
        for layer in ["base", "mid", "top"] {
            let p = dir.path().join(format!("{layer}.{ext}"));
            let report = open_default(&p).check(&vmedia_io::NoProgress).unwrap();
            assert_eq!(
                report.corruptions + report.check_errors,
                0,
                "{layer}.{ext}: {:?}",
                report.messages
            );
        }
        // qemu 7.2 follows no VHD/VHDX parent: it vouches for the edited base.
        if format == vmedia_disk::Format::Vhdx {
            assert_qemu_check(&base, qemu_name);
        }
        let base_raw = dir.path().join("base.raw");
        let mut want = std::fs::read(&seed).unwrap();
        want[9 << 20..(9 << 20) + 4096].fill(0x77);
        std::fs::write(&base_raw, &want).unwrap();
        assert_qemu_identical(&base, qemu_name, &base_raw, "raw");
    }
}

/// The metadata table of a VHDX: (item GUID bytes, offset, length, item bytes).
fn vhdx_metadata_items(path: &Path) -> Vec<([u8; 16], u32, u32, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let rt = &b[192 * 1024..256 * 1024];
    let count = le32(rt, 8) as usize;
    let meta_guid = [
        0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88,
        0x6e,
    ];
    let (at, len) = (0..count)
        .map(|i| &rt[16 + i * 32..48 + i * 32])
        .find(|e| e[..16] == meta_guid)
        .map(|e| (le64(e, 16) as usize, le32(e, 24) as usize))
        .unwrap();
    let m = &b[at..at + len];
    let n = u16::from_le_bytes([m[10], m[11]]) as usize;
    (0..n)
        .map(|i| {
            let e = &m[32 + i * 32..64 + i * 32];
            let (off, l) = (le32(e, 16), le32(e, 20));
            let guid: [u8; 16] = e[..16].try_into().unwrap();
            (guid, off, l, m[off as usize..(off + l) as usize].to_vec())
        })
        .collect()
}

#[test]
fn hyper_v_checkpoint_is_relinked_keeping_its_other_metadata() {
    // A Hyper-V AVHDX (Windows Server 2019) whose parent is absent: point it at a new parent
    // made by vmedia. qemu 7.2 opens no differencing VHDX, so vmedia reads the result.
    let dir = tempfile::tempdir().unwrap();
    let original = shared_sample("dissect.hypervisor/differencing.avhdx.gz");
    let child = dir.path().join("checkpoint.avhdx");
    std::fs::copy(&original, &child).unwrap();
    let parent = dir.path().join("parent.vhdx");
    run_ok(
        vmedia()
            .args(["disk", "create", "-f", "vhdx", "-o", "block_size=2M"])
            .arg(&parent)
            .arg("8G"),
    );
    let before = vhdx_metadata_items(&child);
    relink(&child, "parent.vhdx", vmedia_disk::Format::Vhdx);
    let after = vhdx_metadata_items(&child);
    // Every item but the parent locator is byte-identical and where it was.
    let locator = [
        0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab,
        0x0c,
    ];
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.0, b.0);
        if b.0 != locator {
            assert_eq!(a, b, "a Hyper-V metadata item changed");
        }
    }
    let img = open_default(&child);
    assert_eq!(img.backing_ref().unwrap().name, "parent.vhdx");
    assert_eq!(img.backing().unwrap().path(), parent.as_path());
    let report = img.check(&vmedia_io::NoProgress).unwrap();
    assert_eq!(
        report.check_errors + report.corruptions,
        0,
        "{:?}",
        report.messages
    );
    // The checkpoint's own sectors are unchanged; everything else now reads the new parent.
    let alone = open_any(
        &original,
        &vmedia_disk::OpenOptions {
            skip_backing: true,
            ..Default::default()
        },
    )
    .unwrap();
    for (at, len) in [(1048576u64, 4096usize), (537919488, 16384)] {
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        alone.read_at(&mut a, at).unwrap();
        img.read_at(&mut b, at).unwrap();
        assert_eq!(a, b, "checkpoint data at {at:#x} changed");
        assert!(a.iter().any(|x| *x != 0));
    }
    let mut gap = vec![1u8; 65536];
    img.read_at(&mut gap, 0).unwrap();
    assert!(
        gap.iter().all(|x| *x == 0),
        "unallocated ranges read the (empty) parent"
    );
    let out = run_ok(
        vmedia()
            .args(["disk", "info", "--output", "json"])
            .arg(&child),
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["backing-filename"], "parent.vhdx");
}

#[test]
fn vhdx_log_entries_vmedia_writes_are_replayed_by_qemu_img() {
    // vmedia writes BAT changes through the VHDX log. Stop an edit right after the log entry
    // is durable (what a crash leaves): qemu-img check -r all must replay it to the new view.
    let dir = tempfile::tempdir().unwrap();
    let size = 12u64 << 20;
    let img = dir.path().join("crashed.vhdx");
    run_ok(
        std::process::Command::new(qemu_img())
            .args(["create", "-q", "-f", "vhdx", "-o", "block_size=1M"])
            .arg(&img)
            .arg(size.to_string()),
    );
    let expected = dir.path().join("expected.raw");
    std::fs::File::create(&expected)
        .unwrap()
        .set_len(size)
        .unwrap();
    let mut e = vmedia_disk::vhdx::edit::VhdxEditor::open(&img).unwrap();
    for (at, len, fill) in [
        (0u64, 4096usize, 0x31u8),
        (5 << 20, 65536, 0x32),
        (size - 512, 512, 0x33),
    ] {
        e.write_at(at, &vec![fill; len]).unwrap();
        poke(&expected, at, len, fill);
    }
    e.simulate_crash_after_log_write();
    e.finish().unwrap();
    // qemu refuses to read it as is (a log to replay) ...
    let (code, _, _) = run_any(
        std::process::Command::new(qemu_img())
            .args(["compare", "-f", "vhdx", "-F", "raw"])
            .arg(&img)
            .arg(&expected),
    );
    assert_ne!(code, 0, "qemu read a VHDX whose log was not replayed");
    // ... vmedia replays it in memory ...
    let ours = dir.path().join("ours.raw");
    dump_raw(open_default(&img).as_ref(), &ours);
    assert!(files_equal(&ours, &expected), "in-memory replay differs");
    // ... and qemu-img check -r all replays it in place to the same view.
    run_ok(
        std::process::Command::new(qemu_img())
            .args(["check", "-q", "-r", "all", "-f", "vhdx"])
            .arg(&img),
    );
    assert_qemu_check(&img, "vhdx");
    assert_qemu_identical(&img, "vhdx", &expected, "raw");
    // Replayed, the image can be edited again.
    vmedia_disk::vhdx::edit::VhdxEditor::open(&img)
        .unwrap()
        .finish()
        .unwrap();
}
