//! LUKS-encrypted qcow2 against qemu-img 7.2, both ways: what qemu-img and qemu-io write reads
//! back with the same bytes; what vmedia writes, qemu-img compare (with the secret) calls
//! identical, qemu-img check finds clean and qemu-img info describes as vmedia does. Wrong or
//! missing passphrases and hostile headers give clean errors. PBKDF2 runs with
//! encrypt.iter-time=10 everywhere so the binary stays quick.

mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use support::{run_any, run_ok, sha256_file, vmedia};

const MIB: u64 = 1 << 20;
const PASS: &str = "correct horse";

fn qemu_img() -> Command {
    Command::new(support::require_tool("qemu-img"))
}

/// qemu's `--image-opts` spelling of an encrypted qcow2 with secret `id`.
/// `qemu-img info` and `vmedia disk info` of one image, both as JSON.
fn info_json_both(path: &Path) -> (Value, Value) {
    let json = |cmd: &mut Command| -> Value {
        serde_json::from_slice(&run_ok(cmd.args(["--output", "json"]).arg(path)).stdout).unwrap()
    };
    (
        json(qemu_img().arg("info")),
        json(vmedia().args(["disk", "info"])),
    )
}

fn image_opts(path: &Path, id: &str) -> String {
    format!(
        "driver=qcow2,file.filename={},encrypt.key-secret={id}",
        path.display()
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    pass_file: PathBuf,
    /// 6 MiB + 512 of random, text and zero runs.
    raw: PathBuf,
    /// What qemu-img convert made of `raw`, encrypted with PASS.
    qemu_enc: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pass_file = dir.path().join("pass");
        fs::write(&pass_file, PASS).unwrap();
        let raw = dir.path().join("disk.raw");
        let mut data = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..(2 * MIB / 8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        data.resize((3 * MIB) as usize, 0);
        while data.len() < (6 * MIB) as usize {
            data.extend_from_slice(b"luks test line 0123456789\n");
        }
        // Sector-aligned, as qemu-img rounds virtual sizes up to 512.
        data.truncate((6 * MIB) as usize);
        data.extend_from_slice(&[b'z'; 512]);
        fs::write(&raw, &data).unwrap();
        let qemu_enc = dir.path().join("qemu-enc.qcow2");
        run_ok(
            qemu_img()
                .args(["convert", "-O", "qcow2", "--object"])
                .arg(format!("secret,id=s0,file={}", pass_file.display()))
                .args([
                    "-o",
                    "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
                ])
                .arg(&raw)
                .arg(&qemu_enc),
        );
        Fixture {
            dir,
            pass_file,
            raw,
            qemu_enc,
        }
    })
}

fn secret_arg(f: &Fixture, id: &str) -> String {
    format!("secret,id={id},file={}", f.pass_file.display())
}

#[test]
fn qemu_encrypted_image_reads_identically() {
    let f = fixture();
    let out = f.dir.path().join("from-qemu.raw");
    run_ok(
        vmedia()
            .args([
                "disk",
                "convert",
                "-O",
                "raw",
                "--object",
                &secret_arg(f, "s0"),
            ])
            .arg(&f.qemu_enc)
            .arg(&out),
    );
    assert_eq!(sha256_file(&out), sha256_file(&f.raw));
    // --secret-file spelling, and compare against the plain image.
    let (code, stdout, stderr) = run_any(
        vmedia()
            .args(["disk", "compare", "--secret-file"])
            .arg(&f.pass_file)
            .arg(&f.qemu_enc)
            .arg(&f.raw),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Images are identical."), "{stdout}");
}

#[test]
fn qemu_io_writes_into_a_vmedia_created_image_read_back() {
    let f = fixture();
    let img = f.dir.path().join("created.qcow2");
    run_ok(
        vmedia()
            .args([
                "disk",
                "create",
                "-q",
                "-f",
                "qcow2",
                "--object",
                &secret_arg(f, "k"),
            ])
            .args([
                "-o",
                "encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10",
            ])
            .arg(&img)
            .arg("4M"),
    );
    run_ok(
        Command::new(support::require_tool("qemu-io"))
            .args(["--object", &secret_arg(f, "k"), "--image-opts"])
            .arg(image_opts(&img, "k"))
            .args([
                "-c",
                "write -P 0xab 4096 70000",
                "-c",
                "write -P 0x11 3M 512",
            ]),
    );
    let out = f.dir.path().join("created.raw");
    run_ok(
        vmedia()
            .args([
                "disk",
                "convert",
                "-O",
                "raw",
                "--object",
                &secret_arg(f, "k"),
            ])
            .arg(&img)
            .arg(&out),
    );
    let data = fs::read(&out).unwrap();
    assert_eq!(data.len() as u64, 4 * MIB);
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..4096 + 70000].iter().all(|&b| b == 0xab));
    assert!(data[4096 + 70000..(3 * MIB) as usize]
        .iter()
        .all(|&b| b == 0));
    assert!(data[(3 * MIB) as usize..(3 * MIB + 512) as usize]
        .iter()
        .all(|&b| b == 0x11));
}

#[test]
fn vmedia_encrypted_image_is_identical_for_qemu() {
    let f = fixture();
    let ours = f.dir.path().join("vmedia-enc.qcow2");
    run_ok(
        vmedia()
            .args([
                "disk",
                "convert",
                "-O",
                "qcow2",
                "--object",
                &secret_arg(f, "s1"),
            ])
            .args([
                "-o",
                "encrypt.format=luks,encrypt.key-secret=s1,encrypt.iter-time=10",
            ])
            .arg(&f.raw)
            .arg(&ours),
    );
    // Not a byte of the plain text is stored.
    let stored = fs::read(&ours).unwrap();
    assert!(!stored
        .windows(26)
        .any(|w| w == b"luks test line 0123456789\n"));
    let (code, stdout, stderr) = run_any(
        qemu_img()
            .args(["compare", "--object", &secret_arg(f, "s1"), "--image-opts"])
            .arg(image_opts(&ours, "s1"))
            .arg(format!("driver=raw,file.filename={}", f.raw.display())),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Images are identical."), "{stdout}");
    // qemu-img 7.2 opens an encrypted image for check only with its secret.
    let (code, stdout, stderr) = run_any(
        qemu_img()
            .args(["check", "--object", &secret_arg(f, "s1"), "--image-opts"])
            .arg(image_opts(&ours, "s1")),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("No errors were found"), "{stdout}");
    // info agrees: the encryption block and the encrypted flag.
    let (qemu, mine) = info_json_both(&ours);
    assert_eq!(qemu["encrypted"], Value::Bool(true));
    assert_eq!(mine["encrypted"], qemu["encrypted"]);
    assert_eq!(
        mine["format-specific"]["data"]["encrypt"],
        qemu["format-specific"]["data"]["encrypt"]
    );
    // The same for qemu's image, and our check finds it clean.
    let qemu: Value = serde_json::from_slice(
        &run_ok(
            qemu_img()
                .args(["info", "--output", "json"])
                .arg(&f.qemu_enc),
        )
        .stdout,
    )
    .unwrap();
    let mine: Value = serde_json::from_slice(
        &run_ok(
            vmedia()
                .args(["disk", "info", "--output", "json"])
                .arg(&f.qemu_enc),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        mine["format-specific"]["data"]["encrypt"],
        qemu["format-specific"]["data"]["encrypt"]
    );
    let human = run_ok(vmedia().args(["disk", "info"]).arg(&f.qemu_enc)).stdout;
    let human = String::from_utf8_lossy(&human);
    assert!(human.contains("encrypted: yes"), "{human}");
    assert!(human.contains("        cipher alg: aes-256"), "{human}");
    assert!(human.contains("                stripes: 4000"), "{human}");
    let (code, stdout, stderr) = run_any(vmedia().args(["disk", "check"]).arg(&f.qemu_enc));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("No errors were found"), "{stdout}");
    // Back to raw with qemu-img: the same bytes.
    let back = f.dir.path().join("vmedia-enc.raw");
    run_ok(
        qemu_img()
            .args([
                "convert",
                "-O",
                "raw",
                "--object",
                &secret_arg(f, "s1"),
                "--image-opts",
            ])
            .arg(image_opts(&ours, "s1"))
            .arg(&back),
    );
    assert_eq!(sha256_file(&back), sha256_file(&f.raw));
}

#[test]
fn compare_takes_a_secret_for_each_side() {
    let f = fixture();
    let other_pass = f.dir.path().join("other-pass");
    fs::write(&other_pass, "another passphrase").unwrap();
    let other = f.dir.path().join("other.qcow2");
    run_ok(
        vmedia()
            .args(["disk", "convert", "-O", "qcow2", "--object"])
            .arg(format!("secret,id=b,file={}", other_pass.display()))
            .args(["-o", "encrypt.format=luks,encrypt.key-secret=b,encrypt.iter-time=10,encrypt.cipher-alg=aes-128,encrypt.hash-alg=sha1"])
            .arg(&f.raw)
            .arg(&other),
    );
    let (code, stdout, stderr) = run_any(
        vmedia()
            .args([
                "disk",
                "compare",
                "--object",
                &secret_arg(f, "a"),
                "--object",
            ])
            .arg(format!("secret,id=b,file={}", other_pass.display()))
            .arg(&f.qemu_enc)
            .arg(&other),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Images are identical."), "{stdout}");
    // qemu-img reads the aes-128/sha1 image too.
    let (code, stdout, stderr) = run_any(
        qemu_img()
            .args(["compare", "--object"])
            .arg(format!("secret,id=b,file={}", other_pass.display()))
            .arg("--image-opts")
            .arg(image_opts(&other, "b"))
            .arg(format!("driver=raw,file.filename={}", f.raw.display())),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn wrong_or_missing_secret_is_a_clear_error() {
    let f = fixture();
    let out = f.dir.path().join("never.raw");
    let (code, _, stderr) = run_any(
        vmedia()
            .args([
                "disk",
                "convert",
                "-O",
                "raw",
                "--object",
                "secret,id=x,data=nope",
            ])
            .arg(&f.qemu_enc)
            .arg(&out),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert!(!out.exists());
    // No secret and no terminal: the data is refused, naming how to give the passphrase.
    let (code, _, stderr) = run_any(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(&f.qemu_enc)
            .arg(&out)
            .stdin(std::process::Stdio::null()),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("passphrase"), "{stderr}");
    // info works without it, as qemu-img info does.
    run_ok(vmedia().args(["disk", "info"]).arg(&f.qemu_enc));
    // create names a secret that was not given.
    let (code, _, stderr) = run_any(
        vmedia()
            .args([
                "disk",
                "create",
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=zz",
            ])
            .arg(f.dir.path().join("nosecret.qcow2"))
            .arg("1M"),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("No secret with id 'zz'"), "{stderr}");
}

#[test]
fn luks_hostile_headers_are_clean_errors() {
    let f = fixture();
    let original = fs::read(&f.qemu_enc).unwrap();
    let crypt_offset = {
        // The header extension list starts after the 112-byte v3 header; qemu writes the
        // encryption extension first.
        let ext = &original[112..128];
        assert_eq!(&ext[..4], &0x0537_be77u32.to_be_bytes());
        u64::from_be_bytes(ext[8..16].try_into().unwrap())
    };
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        (
            "bad LUKS magic",
            crypt_offset,
            b"NOTLUK".to_vec(),
            "LUKS magic",
        ),
        (
            "huge stripes",
            crypt_offset + 208 + 44,
            u32::MAX.to_be_bytes().to_vec(),
            "stripes",
        ),
        (
            "huge iterations",
            crypt_offset + 208 + 4,
            u32::MAX.to_be_bytes().to_vec(),
            "iterations",
        ),
        (
            "bad slot state",
            crypt_offset + 208,
            [1, 2, 3, 4].to_vec(),
            "key slot state",
        ),
        (
            "region past the end",
            120,
            u64::MAX.to_be_bytes().to_vec(),
            "encryption header",
        ),
        (
            "crypt method 7",
            32,
            7u32.to_be_bytes().to_vec(),
            "crypt_method",
        ),
    ];
    for (name, at, bytes, expect) in cases {
        let path = f.dir.path().join("hostile.qcow2");
        fs::write(&path, &original).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&bytes, at)
            .unwrap();
        let (code, stdout, stderr) = run_any(
            vmedia()
                .args(["disk", "info", "--object", &secret_arg(f, "s0")])
                .arg(&path),
        );
        assert_eq!(code, 1, "{name}: {stdout}{stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

/// The stored ESXi sample (a bare seSparse extent, no descriptor) reads as its source
/// documents: the first 16 MiB are b"a".
#[test]
fn sesparse_sample_reads_as_its_source_documents() {
    let f = fixture();
    let sample = support::shared_sample("dissect.hypervisor/sesparse.vmdk.gz");
    let out = f.dir.path().join("sesparse.raw");
    run_ok(
        vmedia()
            .args([
                "disk", "convert", "-f", "sesparse", "--size", "16M", "-O", "raw",
            ])
            .arg(&sample)
            .arg(&out),
    );
    let data = fs::read(&out).unwrap();
    assert_eq!(data.len() as u64, 16 * MIB);
    assert!(data.iter().all(|&b| b == b'a'));
    // Without the format named it is refused, saying how to name it.
    let (code, _, stderr) = run_any(vmedia().args(["disk", "info"]).arg(&sample));
    assert_ne!(code, 0);
    assert!(stderr.contains("-f sesparse"), "{stderr}");
}

/// A seSparse delta with its descriptor and a parent reads as qemu-img reads it.
#[test]
fn sesparse_delta_with_parent_agrees_with_qemu() {
    let f = fixture();
    let dir = f.dir.path().join("esxi");
    fs::create_dir_all(&dir).unwrap();
    let sample = support::shared_sample("dissect.hypervisor/sesparse.vmdk.gz");
    fs::copy(&sample, dir.join("vm-000001-sesparse.vmdk")).unwrap();
    // The parent: 512 MiB (the extent's capacity) with data below and beyond the delta's grains.
    let parent = dir.join("vm.vmdk");
    run_ok(
        qemu_img()
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&parent)
            .arg("512M"),
    );
    run_ok(
        Command::new(support::require_tool("qemu-io"))
            .args([
                "-f",
                "vmdk",
                "-c",
                "write -P 0x5a 15M 2M",
                "-c",
                "write -P 0x33 100M 64k",
            ])
            .arg(&parent),
    );
    let info: Value = serde_json::from_slice(
        &run_ok(qemu_img().args(["info", "--output", "json"]).arg(&parent)).stdout,
    )
    .unwrap();
    let cid = info["format-specific"]["data"]["cid"].as_u64().unwrap();
    let delta = dir.join("vm-000001.vmdk");
    fs::write(
        &delta,
        format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=1234abcd\nparentCID={cid:08x}\ncreateType=\"seSparse\"\nparentFileNameHint=\"vm.vmdk\"\n\n# Extent description\nRW 1048576 SESPARSE \"vm-000001-sesparse.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"14\"\n"
        ),
    )
    .unwrap();
    let theirs = dir.join("qemu.raw");
    run_ok(
        qemu_img()
            .args(["convert", "-O", "raw"])
            .arg(&delta)
            .arg(&theirs),
    );
    let ours = dir.join("vmedia.raw");
    run_ok(
        vmedia()
            .args(["disk", "convert", "-O", "raw"])
            .arg(&delta)
            .arg(&ours),
    );
    assert_eq!(sha256_file(&ours), sha256_file(&theirs));
    let (code, stdout, stderr) =
        run_any(vmedia().args(["disk", "compare"]).arg(&delta).arg(&theirs));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (qemu, mine) = info_json_both(&delta);
    assert_eq!(mine["virtual-size"], qemu["virtual-size"]);
    assert_eq!(mine["backing-filename"], qemu["backing-filename"]);
    assert_eq!(
        mine["format-specific"]["data"]["create-type"],
        qemu["format-specific"]["data"]["create-type"]
    );
}

/// Hostile seSparse extents behind a descriptor are clean errors.
#[test]
fn sesparse_hostile_extents_are_clean_errors() {
    let f = fixture();
    let dir = f.dir.path().join("esxi-hostile");
    fs::create_dir_all(&dir).unwrap();
    let good = fs::read(support::shared_sample(
        "dissect.hypervisor/sesparse.vmdk.gz",
    ))
    .unwrap();
    let cases: [(&str, usize, u64, &str); 4] = [
        ("magic", 0, 7, "magic"),
        ("grain directory", 128, u64::MAX / 4, "grain directory"),
        (
            "grain entry",
            6144 * 512,
            0x7000_0000_0000_0000,
            "unknown type",
        ),
        ("journal", 512 + 24, 1, "journal"),
    ];
    for (name, at, value, expect) in cases {
        let mut bytes = good.clone();
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let path = dir.join("bad-sesparse.vmdk");
        fs::write(&path, &bytes).unwrap();
        let (code, _, stderr) = run_any(
            vmedia()
                .args([
                    "disk", "convert", "-f", "sesparse", "--size", "1M", "-O", "raw",
                ])
                .arg(&path)
                .arg(dir.join("out.raw")),
        );
        assert_ne!(code, 0, "{name}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}
