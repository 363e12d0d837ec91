//! Embedded integrity checks against the real isomd5sum tools: our implants pass `checkisomd5`,
//! `implantisomd5`'s implants pass `vmedia iso verify`, both fail after one flipped byte, and
//! signatures verify only with the right key. Implanted images stay readable by isoinfo, 7z,
//! bsdtar and xorriso.
mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use support::{
    cached_fixture, payload, qemu_boot, require_tool, run_any, run_ok, shared_sample, vmedia,
    Firmware, BOOT_MARKER,
};
use vmedia_iso::integrity::{self, ImplantOptions};

/// A small tree with a few MiB of varied content, built once.
fn source_tree() -> PathBuf {
    cached_fixture("integrity-tree", |dir| {
        let root = dir.join("tree");
        fs::create_dir_all(root.join("boot/grub")).unwrap();
        fs::create_dir_all(root.join("data")).unwrap();
        let mut state = 0x1234_5678u32;
        for (name, size) in [
            ("data/one.bin", 1_500_000usize),
            ("data/two.bin", 2_300_000),
            ("boot/grub/grub.cfg", 300),
        ] {
            let bytes: Vec<u8> = (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            fs::write(root.join(name), bytes).unwrap();
        }
        fs::write(root.join("README.TXT"), b"vmedia integrity test\n").unwrap();
    })
    .join("tree")
}

fn genisoimage(out: &Path) {
    require_tool("genisoimage");
    run_ok(
        Command::new("genisoimage")
            .args(["-quiet", "-R", "-J", "-V", "INTEGRITY", "-o"])
            .arg(out)
            .arg(source_tree()),
    );
}

fn xorriso_iso(out: &Path) {
    require_tool("xorriso");
    run_ok(
        Command::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-quiet",
                "-R",
                "-J",
                "-V",
                "INTEGRITY",
                "-o",
            ])
            .arg(out)
            .arg(source_tree()),
    );
}

fn implant(path: &Path, opts: &ImplantOptions) -> integrity::Implant {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    integrity::implant_file(&file, opts, &vmedia_io::NoProgress).unwrap()
}

/// Flips one bit in the middle of the image (file data, inside the MD5-covered range).
fn flip_middle_byte(path: &Path) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let offset = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
}

fn checkisomd5(path: &Path) -> (i32, String) {
    require_tool("checkisomd5");
    let (code, stdout, stderr) = run_any(Command::new("checkisomd5").arg("--verbose").arg(path));
    (code, format!("{stdout}{stderr}"))
}

fn verify(path: &Path, extra: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = run_any(
        vmedia()
            .args(["iso", "verify", "--quiet"])
            .arg(path)
            .args(extra),
    );
    (code, format!("{stdout}{stderr}"))
}

fn verify_json(path: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let (code, stdout, stderr) = run_any(
        vmedia()
            .args(["iso", "verify", "--json"])
            .arg(path)
            .args(extra),
    );
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}\n{stderr}"));
    (code, value)
}

fn openssl_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_tool("openssl");
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
    );
    (private, public)
}

#[test]
fn our_md5_implant_passes_checkisomd5_and_fails_after_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("g.iso");
    genisoimage(&iso);
    let written = implant(&iso, &ImplantOptions::default());
    assert!(written.md5.is_some() && written.sha256.is_some());

    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "checkisomd5 rejected our implant:\n{log}");
    assert!(log.contains("PASS"), "{log}");
    let (code, log) = verify(&iso, &[]);
    assert_eq!(code, 0, "{log}");

    flip_middle_byte(&iso);
    let (code, log) = checkisomd5(&iso);
    assert_ne!(code, 0, "checkisomd5 passed a damaged image:\n{log}");
    assert!(log.contains("FAIL"), "{log}");
    let (code, report) = verify_json(&iso, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["md5"]["status"], "mismatch");
    assert_eq!(report["sha256"]["status"], "mismatch");
    assert_eq!(report["fragments"]["status"], "mismatch");
    assert_eq!(report["ok"], false);
}

#[test]
fn implantisomd5_implant_verifies_and_detects_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("x.iso");
    xorriso_iso(&iso);
    require_tool("implantisomd5");
    run_ok(Command::new("implantisomd5").arg("-f").arg(&iso));

    let (code, report) = verify_json(&iso, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["md5"]["status"], "ok");
    assert_eq!(report["fragments"]["status"], "ok");
    assert_eq!(report["sha256"]["status"], "absent");
    // The MD5 vmedia reads is the one implantisomd5 printed and wrote.
    let (_, stdout, _) = run_any(Command::new("checkisomd5").arg("--md5sumonly").arg(&iso));
    let implanted = report["implant"]["md5"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        stdout.contains(&implanted),
        "checkisomd5 --md5sumonly says {stdout}, vmedia read {implanted}"
    );

    flip_middle_byte(&iso);
    let (code, log) = verify(&iso, &[]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("MISMATCH") && log.contains("expected") && log.contains("actual"),
        "{log}"
    );
    let (code, _) = checkisomd5(&iso);
    assert_ne!(code, 0);
}

#[test]
fn tiny_third_party_image_implant_passes_checkisomd5() {
    // 179 sectors: checkisomd5's 32 KiB steps skip fragments, so the sums must sit where the
    // checker looks for them, not merely in order.
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("tiny.iso");
    fs::copy(shared_sample("dfvfs/iso9660.raw.xz"), &iso).unwrap();
    implant(&iso, &ImplantOptions::default());
    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "{log}");
    let (code, log) = verify(&iso, &[]);
    assert_eq!(code, 0, "{log}");
}

#[test]
fn signature_verifies_only_with_the_right_key() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = openssl_keypair(dir.path(), "release");
    let (_, other_public) = openssl_keypair(dir.path(), "other");
    let iso = dir.path().join("signed.iso");
    xorriso_iso(&iso);
    let key = integrity::load_signing_key(&private).unwrap();
    let written = implant(
        &iso,
        &ImplantOptions {
            md5: true,
            sha256: true,
            signing_key: Some(key),
        },
    );
    assert!(written.signed);

    let (code, report) = verify_json(&iso, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["signature"]["status"], "ok");

    let (code, log) = verify(&iso, &["--key", other_public.to_str().unwrap()]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("signature") && log.contains("MISMATCH"),
        "{log}"
    );

    // Without a key the signature is reported, not silently passed as checked.
    let (code, report) = verify_json(&iso, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["signature"]["status"], "unchecked");

    // The signature covers the content: a flipped byte breaks it even with the right key.
    flip_middle_byte(&iso);
    let (code, report) = verify_json(&iso, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["signature"]["status"], "mismatch");
}

#[test]
fn key_demands_a_signature_the_image_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = openssl_keypair(dir.path(), "release");
    let iso = dir.path().join("unsigned.iso");
    genisoimage(&iso);
    implant(&iso, &ImplantOptions::default());
    let (code, report) = verify_json(&iso, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["signature"]["actual"], "no signature");
}

#[test]
fn image_without_checksums_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("plain.iso");
    genisoimage(&iso);
    let (code, log) = verify(&iso, &[]);
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("NOTHING TO VERIFY"), "{log}");
}

#[test]
fn truncated_image_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("cut.iso");
    genisoimage(&iso);
    implant(&iso, &ImplantOptions::default());
    let file = fs::OpenOptions::new().write(true).open(&iso).unwrap();
    file.set_len(file.metadata().unwrap().len() / 2).unwrap();
    let (code, log) = verify(&iso, &[]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("truncated"), "{log}");
}

#[test]
fn signed_implant_keeps_the_image_readable_by_peers() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("peers.iso");
    xorriso_iso(&iso);
    let key = integrity::generate_keypair();
    implant(
        &iso,
        &ImplantOptions {
            md5: true,
            sha256: true,
            signing_key: Some(key),
        },
    );

    require_tool("isoinfo");
    let out = run_ok(Command::new("isoinfo").arg("-d").arg("-i").arg(&iso));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Volume id: INTEGRITY"));
    let out = run_ok(Command::new("isoinfo").args(["-R", "-f", "-i"]).arg(&iso));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/boot/grub/grub.cfg"));

    require_tool("7z");
    let out = run_ok(Command::new("7z").arg("l").arg(&iso));
    assert!(String::from_utf8_lossy(&out.stdout).contains("one.bin"));

    require_tool("bsdtar");
    let extract = dir.path().join("bsdtar-out");
    fs::create_dir_all(&extract).unwrap();
    run_ok(
        Command::new("bsdtar")
            .arg("-xf")
            .arg(&iso)
            .arg("-C")
            .arg(&extract),
    );
    assert_eq!(
        fs::read(extract.join("data/two.bin")).unwrap(),
        fs::read(source_tree().join("data/two.bin")).unwrap()
    );

    let out = run_ok(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .args(["-find", "/", "-type", "f"]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("grub.cfg"));

    // The signed image still passes the isomd5sum check.
    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "{log}");
}

#[test]
fn hex_public_key_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("hex.iso");
    genisoimage(&iso);
    let key = integrity::generate_keypair();
    let hex_key: String = key
        .verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let public = dir.path().join("key.hex");
    fs::write(&public, format!("{hex_key}\n")).unwrap();
    implant(
        &iso,
        &ImplantOptions {
            signing_key: Some(key),
            ..Default::default()
        },
    );
    let (code, log) = verify(&iso, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{log}");
}

/// `vmedia mkisofs` implants MD5 + SHA-256 by default through the same API.
fn vmedia_mkisofs(out: &Path, extra: &[&str]) {
    run_ok(
        vmedia()
            .arg("mkisofs")
            .args(["-quiet", "-R", "-J", "-V", "INTEGRITY"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(source_tree()),
    );
}

#[test]
fn vmedia_mkisofs_image_passes_checkisomd5_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("m.iso");
    vmedia_mkisofs(&iso, &[]);
    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "{log}");
    let (code, report) = verify_json(&iso, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["md5"]["status"], "ok");
    assert_eq!(report["sha256"]["status"], "ok");
    // The SHA-256 covers the whole file as written.
    assert_eq!(
        report["implant"]["sha256"]["covered_bytes"]
            .as_u64()
            .unwrap(),
        fs::metadata(&iso).unwrap().len()
    );

    flip_middle_byte(&iso);
    let (code, log) = checkisomd5(&iso);
    assert_ne!(code, 0, "{log}");
    let (code, report) = verify_json(&iso, &[]);
    assert_eq!(code, 1, "{report}");
}

#[test]
fn vmedia_mkisofs_sign_key_signature_verifies_with_openssl_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = openssl_keypair(dir.path(), "release");
    let (_, other_public) = openssl_keypair(dir.path(), "other");
    let iso = dir.path().join("signed.iso");
    vmedia_mkisofs(&iso, &["--sign-key", private.to_str().unwrap()]);
    let (code, report) = verify_json(&iso, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["signature"]["status"], "ok");
    let (code, log) = verify(&iso, &["--key", other_public.to_str().unwrap()]);
    assert_eq!(code, 1, "{log}");
    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "{log}");
}

#[test]
fn signed_uefi_cd_with_a_vmedia_esp_boots_under_ovmf() {
    // Checksums and signature must not disturb booting: a UEFI El Torito CD whose boot image is
    // an ESP made by `vmedia iso esp` (GRUB as BOOTX64.EFI), written by `vmedia mkisofs` with
    // MD5, SHA-256 and a signature, boots the test kernel from the CD under OVMF.
    require_tool("grub-mkstandalone");
    let payload = payload();
    let dir = tempfile::tempdir().unwrap();
    let esp_tree = dir.path().join("esp");
    fs::create_dir_all(esp_tree.join("EFI/BOOT")).unwrap();
    let cfg = dir.path().join("grub.cfg");
    fs::write(&cfg, "set timeout=0\nsearch --no-floppy --file --set=root /vmlinuz\nlinux /vmlinuz console=ttyS0 no_timer_check panic=-1\ninitrd /initrd.gz\nboot\n").unwrap();
    run_ok(
        Command::new("grub-mkstandalone")
            .args([
                "-O",
                "x86_64-efi",
                "--modules=iso9660 fat part_msdos part_gpt search linux normal",
                "--locales=",
                "--themes=",
                "--fonts=",
            ])
            .arg("-o")
            .arg(esp_tree.join("EFI/BOOT/BOOTX64.EFI"))
            .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
    );
    let cd_tree = dir.path().join("cd");
    fs::create_dir_all(cd_tree.join("boot")).unwrap();
    fs::copy(&payload.kernel, cd_tree.join("vmlinuz")).unwrap();
    fs::copy(&payload.initrd, cd_tree.join("initrd.gz")).unwrap();
    run_ok(
        vmedia()
            .args(["iso", "esp", "--quiet"])
            .arg(&esp_tree)
            .arg("-o")
            .arg(cd_tree.join("boot/efi.img")),
    );

    let (private, public) = openssl_keypair(dir.path(), "release");
    let iso = dir.path().join("uefi.iso");
    run_ok(
        vmedia()
            .args([
                "mkisofs",
                "-quiet",
                "-R",
                "-J",
                "-V",
                "UEFITEST",
                "-e",
                "boot/efi.img",
                "-no-emul-boot",
            ])
            .args(["--sign-key", private.to_str().unwrap()])
            .arg("-o")
            .arg(&iso)
            .arg(&cd_tree),
    );
    let (code, report) = verify_json(&iso, &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["signature"]["status"], "ok");
    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "{log}");
    let cdrom = iso.to_str().unwrap().to_string();
    qemu_boot(
        Firmware::Uefi,
        &["-cdrom", &cdrom],
        BOOT_MARKER,
        Duration::from_secs(300),
    );
}

#[test]
fn grub_mkrescue_hybrid_keeps_its_boot_setup_after_a_signed_implant() {
    // A hybrid image (MBR + GPT + APM, El Torito BIOS and UEFI) from grub-mkrescue: after our
    // implant xorriso reports the same system area and boot catalog, and checkisomd5 passes.
    require_tool("grub-mkrescue");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("hello.txt"), b"hello\n").unwrap();
    let iso = dir.path().join("rescue.iso");
    run_ok(Command::new("grub-mkrescue").arg("-o").arg(&iso).arg(&tree));
    let report = |iso: &Path| {
        let out = run_ok(Command::new("xorriso").arg("-indev").arg(iso).args([
            "-report_system_area",
            "plain",
            "-report_el_torito",
            "plain",
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = report(&iso);
    assert!(
        before.contains("GPT") && before.contains("UEFI"),
        "{before}"
    );
    implant(
        &iso,
        &ImplantOptions {
            signing_key: Some(integrity::generate_keypair()),
            ..Default::default()
        },
    );
    assert_eq!(report(&iso), before);
    let (code, log) = checkisomd5(&iso);
    assert_eq!(code, 0, "{log}");
    let (code, log) = verify(&iso, &[]);
    assert_eq!(code, 0, "{log}");
}
