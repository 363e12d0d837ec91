//! `vmedia doctor`'s host checks: what this machine can boot with (QEMU and its qemu-img,
//! SeaBIOS, OVMF, KVM, bridge networking, free space) and, for each missing piece, the Debian
//! package or setting that provides it. Nothing here prints or reads the environment: the
//! caller passes the search path and the folders, and renders the typed report.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::kvm;
use crate::store::BootConfig;

/// Below this much free space a state folder cannot hold a decompressed kernel and initrd
/// cache plus a VM's console log and a small overlay.
pub const LOW_SPACE_BYTES: u64 = 1 << 30;

/// Where Debian's seabios package puts the BIOS QEMU loads by default (QEMU's data folder
/// links to it).
const SEABIOS_CANDIDATES: [&str; 2] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/bios-256k.bin",
];
/// QEMU's setuid helper that creates a tap device and adds it to a bridge for `--net bridge=`.
const BRIDGE_HELPERS: [&str; 2] = [
    "/usr/lib/qemu/qemu-bridge-helper",
    "/usr/libexec/qemu-bridge-helper",
];
/// The bridge helper's access list: only bridges named by an `allow` line may be used.
pub const BRIDGE_CONF: &str = "/etc/qemu/bridge.conf";

/// How much a check matters for the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// Without it no VM boots: the exit code says so.
    Required,
    /// A feature (UEFI, KVM speed, bridges, a daemon) is missing without it.
    Recommended,
    /// The peer programs the README compares vmedia with; vmedia does not run them.
    Optional,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Present but not as it should be (a version mismatch, little space, no permission).
    Warning,
    Missing,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `qemu`, `qemu-img`, `seabios`, `ovmf`, `kvm`, `bridge`, ...
    pub name: String,
    pub need: Need,
    pub status: Status,
    /// What was found (a version, a path, the probe's finding).
    pub detail: String,
    /// What to install or set when the status is not ok: a Debian package or a setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, need: Need, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            need,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn not_ok(
        name: &str,
        need: Need,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            need,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, and whether a VM can boot on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// True when every required check is ok.
    pub can_boot: bool,
    pub checks: Vec<Check>,
}

impl DoctorReport {
    pub fn new(checks: Vec<Check>) -> DoctorReport {
        let can_boot = checks
            .iter()
            .filter(|c| c.need == Need::Required)
            .all(|c| c.status == Status::Ok);
        DoctorReport { can_boot, checks }
    }

    /// Adds checks made elsewhere (the library, the daemon) and recomputes the verdict.
    pub fn extend(&mut self, more: impl IntoIterator<Item = Check>) {
        self.checks.extend(more);
        *self = DoctorReport::new(std::mem::take(&mut self.checks));
    }
}

/// What the host checks look at, as the caller resolved it.
#[derive(Debug, Clone)]
pub struct HostProbe {
    /// The boot configuration (the emulator and the state folder holding the KVM verdict).
    pub boot: BootConfig,
    /// The `PATH` to look programs up in.
    pub search_path: OsString,
    /// Folders whose free space matters, with a label (`state`, `library`, `temp`).
    pub folders: Vec<(String, PathBuf)>,
    /// Whether this process is root (the bridge helper needs no setuid bit then).
    pub is_root: bool,
    /// Whether to boot the KVM probe when no verdict is cached for this host boot (it takes up
    /// to a few seconds); without it an uncached KVM is reported as unprobed.
    pub probe_kvm: bool,
}

/// A peer program the README compares vmedia with, and the Debian package shipping it.
pub const PEERS: [(&str, &str); 9] = [
    ("xorriso", "xorriso"),
    ("genisoimage", "genisoimage"),
    ("isoinfo", "genisoimage"),
    ("7z", "p7zip-full"),
    ("bsdtar", "libarchive-tools"),
    ("checkisomd5", "isomd5sum"),
    ("dnsmasq", "dnsmasq-base"),
    ("in.tftpd", "tftpd-hpa"),
    ("curl", "curl"),
];

/// Runs every host check.
pub fn check_host(probe: &HostProbe) -> DoctorReport {
    let mut checks = Vec::new();
    let qemu = resolve_program(&probe.boot.qemu, &probe.search_path);
    let qemu_version = qemu
        .as_deref()
        .and_then(|q| program_version(q, "--version"));
    checks.push(match (&qemu, &qemu_version) {
        (Some(path), Some(version)) => Check::ok(
            "qemu",
            Need::Required,
            format!("QEMU {version} ({})", path.display()),
        ),
        (Some(path), None) => Check::not_ok(
            "qemu",
            Need::Required,
            Status::Warning,
            format!("{} does not answer --version", path.display()),
            "reinstall qemu-system-x86, or point VMEDIA_QEMU at a working emulator",
        ),
        (None, _) => Check::not_ok(
            "qemu",
            Need::Required,
            Status::Missing,
            format!("{} not found in PATH", probe.boot.qemu.display()),
            "apt-get install qemu-system-x86 (or set VMEDIA_QEMU to the emulator)",
        ),
    });
    checks.push(check_qemu_img(&probe.search_path, qemu_version.as_deref()));
    checks.push(match first_file(&SEABIOS_CANDIDATES) {
        Some(path) => Check::ok(
            "seabios",
            Need::Required,
            format!("BIOS firmware {}", path.display()),
        ),
        None => Check::not_ok(
            "seabios",
            Need::Required,
            Status::Missing,
            "no bios-256k.bin: QEMU cannot start a PC",
            "apt-get install seabios",
        ),
    });
    checks.push(match crate::qemu::find_ovmf() {
        Ok((code, _)) => Check::ok(
            "ovmf",
            Need::Recommended,
            format!("UEFI firmware {}", code.display()),
        ),
        Err(_) => Check::not_ok(
            "ovmf",
            Need::Recommended,
            Status::Missing,
            "no OVMF: --firmware uefi is unavailable",
            "apt-get install ovmf",
        ),
    });
    checks.push(check_kvm(probe, qemu.is_some()));
    checks.push(check_bridge(probe.is_root));
    for (label, folder) in &probe.folders {
        checks.push(check_space(label, folder));
    }
    for (program, package) in PEERS {
        let name = format!("peer {program}");
        checks.push(
            match find_in_path(OsStr::new(program), &probe.search_path) {
                Some(path) => Check::ok(&name, Need::Optional, path.display().to_string()),
                None => Check::not_ok(
                    &name,
                    Need::Optional,
                    Status::Missing,
                    "not installed (only needed to compare vmedia with it)",
                    format!("apt-get install {package}"),
                ),
            },
        );
    }
    DoctorReport::new(checks)
}

fn check_qemu_img(search_path: &OsStr, qemu_version: Option<&str>) -> Check {
    let Some(path) = find_in_path(OsStr::new("qemu-img"), search_path) else {
        return Check::not_ok(
            "qemu-img",
            Need::Recommended,
            Status::Missing,
            "not installed (vmedia disk needs none; scripts and comparisons use it)",
            "apt-get install qemu-utils",
        );
    };
    let Some(version) = program_version(&path, "--version") else {
        return Check::not_ok(
            "qemu-img",
            Need::Recommended,
            Status::Warning,
            format!("{} does not answer --version", path.display()),
            "apt-get install --reinstall qemu-utils",
        );
    };
    match qemu_version {
        Some(qemu) if qemu != version => Check::not_ok(
            "qemu-img",
            Need::Recommended,
            Status::Warning,
            format!("qemu-img {version} but QEMU {qemu}"),
            "install qemu-utils and qemu-system-x86 of the same release",
        ),
        _ => Check::ok(
            "qemu-img",
            Need::Recommended,
            format!("qemu-img {version} ({})", path.display()),
        ),
    }
}

fn check_kvm(probe: &HostProbe, have_qemu: bool) -> Check {
    let fix_device = "load kvm_intel or kvm_amd (enable virtualization in the firmware), and \
                      add the user to the kvm group: adduser $USER kvm";
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Check::not_ok(
            "kvm",
            Need::Recommended,
            Status::Missing,
            format!("/dev/kvm: {e}; VMs run under TCG (slower)"),
            fix_device,
        );
    }
    if !have_qemu {
        return Check::not_ok(
            "kvm",
            Need::Recommended,
            Status::Warning,
            "/dev/kvm opens, but there is no QEMU to probe it with",
            "apt-get install qemu-system-x86",
        );
    }
    let verdict = if probe.probe_kvm {
        Some(kvm::cached_verdict(&probe.boot))
    } else {
        kvm::stored_verdict(&probe.boot)
    };
    match verdict {
        Some(v) if v.works => Check::ok("kvm", Need::Recommended, format!("boots Linux: {}", v.detail)),
        Some(v) => Check::not_ok(
            "kvm",
            Need::Recommended,
            Status::Warning,
            format!("/dev/kvm opens but a Linux kernel does not boot under it ({}); --accel auto uses TCG", v.detail),
            "on a nested host, enable nested virtualization in the outer hypervisor",
        ),
        None => Check::not_ok(
            "kvm",
            Need::Recommended,
            Status::Warning,
            "/dev/kvm opens; not yet probed on this host boot",
            "run vmedia doctor without --no-probe (or any boot) to probe it",
        ),
    }
}

fn check_bridge(is_root: bool) -> Check {
    let Some(helper) = first_file(&BRIDGE_HELPERS) else {
        return Check::not_ok(
            "bridge",
            Need::Recommended,
            Status::Missing,
            "no qemu-bridge-helper: --net bridge=BR is unavailable",
            "apt-get install qemu-system-common",
        );
    };
    let setuid = std::fs::metadata(&helper)
        .map(|m| m.permissions().mode() & 0o4000 != 0)
        .unwrap_or(false);
    if !is_root && !setuid {
        return Check::not_ok(
            "bridge",
            Need::Recommended,
            Status::Warning,
            format!(
                "{} is not setuid: only root can use --net bridge=BR",
                helper.display()
            ),
            format!("chmod u+s {}", helper.display()),
        );
    }
    let allowed = std::fs::read_to_string(BRIDGE_CONF)
        .map(|text| allowed_bridges(&text))
        .unwrap_or_default();
    if allowed.is_empty() {
        return Check::not_ok(
            "bridge",
            Need::Recommended,
            Status::Warning,
            format!("{BRIDGE_CONF} allows no bridge"),
            format!("echo 'allow br0' >> {BRIDGE_CONF} (one line per bridge, or 'allow all')"),
        );
    }
    Check::ok(
        "bridge",
        Need::Recommended,
        format!("{} may attach to {}", helper.display(), allowed.join(", ")),
    )
}

/// The bridge names `allow` lines of a bridge.conf grant (`include` files are not followed).
pub fn allowed_bridges(conf: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("allow"), Some(bridge)) => Some(bridge.to_string()),
                _ => None,
            }
        })
        .collect()
}

fn check_space(label: &str, folder: &Path) -> Check {
    let name = format!("space {label}");
    // A folder not created yet gets the space of the file system it would be created on.
    let existing = folder.ancestors().find(|p| p.exists()).unwrap_or(folder);
    match free_bytes(existing) {
        Ok(free) if free < LOW_SPACE_BYTES => Check::not_ok(
            &name,
            Need::Recommended,
            Status::Warning,
            format!("{}: {} free", folder.display(), human_bytes(free)),
            format!(
                "free space under {} or move it (VMEDIA_HOME, --library)",
                existing.display()
            ),
        ),
        Ok(free) => Check::ok(
            &name,
            Need::Recommended,
            format!("{}: {} free", folder.display(), human_bytes(free)),
        ),
        Err(e) => Check::not_ok(
            &name,
            Need::Recommended,
            Status::Warning,
            format!("{}: cannot measure free space: {e}", existing.display()),
            format!("check the permissions of {}", existing.display()),
        ),
    }
}

/// Bytes available to an unprivileged user on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// 1.5 GiB, 300 MiB, 12 KiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn first_file(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A program named by a path (used as is) or a bare name (looked up in `search_path`).
pub fn resolve_program(program: &Path, search_path: &OsStr) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    find_in_path(program.as_os_str(), search_path)
}

/// The first executable file called `name` in the folders of `search_path`.
pub fn find_in_path(name: &OsStr, search_path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The version a QEMU tool prints first (`QEMU emulator version 7.2.15 (Debian ...)`,
/// `qemu-img version 7.2.15 ...`): the word after "version".
fn program_version(program: &Path, flag: &str) -> Option<String> {
    let output = Command::new(program).arg(flag).output().ok()?;
    if !output.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

/// The word after the first "version" on the first line.
pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "version")?;
    words.next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_and_qemu_img_versions_are_the_word_after_version() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)\nCopyright"),
            Some("7.2.15".into())
        );
        assert_eq!(
            parse_version("qemu-img version 8.0.0\n"),
            Some("8.0.0".into())
        );
        assert_eq!(parse_version("no number here"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn bridge_conf_allow_lines_name_the_bridges() {
        let conf = "# comment\nallow br0\n  allow   virbr1 \ndeny all\ninclude /etc/x\nallow\n";
        assert_eq!(allowed_bridges(conf), vec!["br0", "virbr1"]);
        assert!(allowed_bridges("").is_empty());
    }

    #[test]
    fn a_missing_required_piece_means_no_boot_and_optional_ones_do_not() {
        let report = DoctorReport::new(vec![
            Check::ok("qemu", Need::Required, "7.2"),
            Check::not_ok(
                "peer 7z",
                Need::Optional,
                Status::Missing,
                "x",
                "apt-get install p7zip-full",
            ),
        ]);
        assert!(report.can_boot);
        let mut report = report;
        report.extend([Check::not_ok(
            "seabios",
            Need::Required,
            Status::Missing,
            "x",
            "apt-get install seabios",
        )]);
        assert!(!report.can_boot);
        assert_eq!(report.checks.len(), 3);
    }

    #[test]
    fn programs_are_found_in_the_given_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\necho 'tool version 1.2.3'\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not executable").unwrap();
        let path = dir.path().as_os_str();
        assert_eq!(find_in_path(OsStr::new("tool"), path), Some(tool.clone()));
        assert_eq!(find_in_path(OsStr::new("plain"), path), None);
        assert_eq!(
            find_in_path(OsStr::new("tool"), OsStr::new("/nonexistent")),
            None
        );
        assert_eq!(resolve_program(&tool, OsStr::new("")), Some(tool.clone()));
        assert_eq!(program_version(&tool, "--version"), Some("1.2.3".into()));
    }

    #[test]
    fn a_missing_qemu_fails_the_verdict_and_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let probe = HostProbe {
            boot: BootConfig::new(dir.path().join("state")),
            search_path: dir.path().as_os_str().to_owned(),
            folders: vec![("state".into(), dir.path().join("state"))],
            is_root: false,
            probe_kvm: false,
        };
        let report = check_host(&probe);
        assert!(!report.can_boot);
        let qemu = report.checks.iter().find(|c| c.name == "qemu").unwrap();
        assert_eq!(qemu.status, Status::Missing);
        assert!(
            qemu.fix.as_deref().unwrap().contains("qemu-system-x86"),
            "{qemu:?}"
        );
        let space = report
            .checks
            .iter()
            .find(|c| c.name == "space state")
            .unwrap();
        assert!(space.detail.contains("free"), "{space:?}");
        for check in &report.checks {
            if check.status != Status::Ok {
                assert!(check.fix.is_some(), "{check:?} names no fix");
            }
        }
    }

    #[test]
    fn sizes_read_like_df_h() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    }
}
