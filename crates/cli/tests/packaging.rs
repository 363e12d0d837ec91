//! The Debian package: built by packaging/build-deb.sh from the binary these tests run (no
//! second build), installed with apt-get as an administrator would, checked (the binary, a man
//! page, the systemd unit), and removed with --purge leaving nothing behind. Needs root and
//! cargo-deb, as `make test` has (scripts/setup.sh installs cargo-deb).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{run_any, run_ok};

const UNIT: &str = "/usr/lib/systemd/system/vmedia.service";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn debian_package_installs_runs_and_purges_cleanly() {
    assert!(
        Command::new("cargo")
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb is not installed; run `bash scripts/setup.sh` (make test does)"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "the packaging test installs a package: run it as root (make test does)"
    );
    let out_dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("bash")
            .arg(workspace_root().join("packaging/build-deb.sh"))
            .arg(env!("CARGO_BIN_EXE_vmedia"))
            .arg("--output")
            .arg(format!("{}/", out_dir.path().display()))
            .current_dir(workspace_root()),
    );
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("build-deb.sh made no .deb");
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("vmedia_{}", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );
    // The package's own dependencies must be satisfiable from the archive.
    let info = run_ok(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Depends"),
    );
    let depends = String::from_utf8_lossy(&info.stdout);
    for package in ["qemu-system-x86", "ovmf", "seabios"] {
        assert!(
            depends.contains(package),
            "Depends lacks {package}: {depends}"
        );
    }

    let install = run_any(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    // Whatever happens next, the package is purged again.
    let _purge = Purge;
    assert_eq!(
        install.0, 0,
        "apt-get install failed:\n{}\n{}",
        install.1, install.2
    );

    let version = run_ok(Command::new("/usr/bin/vmedia").arg("--version"));
    let version = String::from_utf8_lossy(&version.stdout);
    let ours = run_ok(Command::new(env!("CARGO_BIN_EXE_vmedia")).arg("--version"));
    assert_eq!(version, String::from_utf8_lossy(&ours.stdout));
    assert!(version.contains("commit"), "{version}");

    let man = run_ok(
        Command::new("man")
            .args(["-P", "cat", "vmedia-iso"])
            .env("MANWIDTH", "100"),
    );
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.contains("vmedia-iso") && man.contains("create"),
        "{man}"
    );
    for file in [
        "/usr/share/bash-completion/completions/vmedia",
        "/usr/share/zsh/vendor-completions/_vmedia",
        "/usr/share/fish/vendor_completions.d/vmedia.fish",
        "/usr/share/man/man1/vmedia-disk-convert.1.gz",
        "/etc/default/vmedia",
    ] {
        assert!(Path::new(file).is_file(), "{file} not installed");
    }

    let unit = if Path::new("/run/systemd/system").exists() {
        let out = run_ok(Command::new("systemctl").args(["cat", "vmedia"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        std::fs::read_to_string(UNIT).expect("vmedia.service is installed")
    };
    for line in [
        "ExecStart=/usr/bin/vmedia serve",
        "DynamicUser=yes",
        "StateDirectory=vmedia",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}:\n{unit}");
    }
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // The unit's syntax, as systemd reads it (works without systemd running).
        let (code, out, err) = run_any(Command::new("systemd-analyze").args(["verify", UNIT]));
        assert!(
            !err.contains("Unknown key")
                && !err.contains("Failed to parse")
                && !out.contains("Unknown key"),
            "systemd-analyze verify ({code}):\n{out}\n{err}"
        );
    }

    drop(_purge);
    for path in [
        "/usr/bin/vmedia",
        UNIT,
        "/etc/default/vmedia",
        "/usr/share/man/man1/vmedia-iso.1.gz",
    ] {
        assert!(
            !Path::new(path).exists(),
            "{path} is left after apt-get remove --purge"
        );
    }
    let status = run_any(Command::new("dpkg-query").args(["-W", "-f=${Status}", "vmedia"]));
    assert!(
        !status.1.contains("installed") || status.1.contains("not-installed"),
        "{status:?}"
    );
}

/// Purges the package when dropped (also when an assertion failed first).
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["remove", "--purge", "-y", "-qq", "vmedia"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}
