//! Decides whether `--accel auto` may use KVM. `/dev/kvm` existing is not enough: on nested
//! hosts a trivial real-mode or long-mode guest runs under KVM while a Linux kernel hangs in
//! its decompressor. So the probe boots what users boot, a Linux kernel, under KVM with a
//! short limit, and remembers the verdict until the host reboots.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::process::Guarded;
use crate::qemu::ResolvedAccel;
use crate::spec::Accel;
use crate::store::BootConfig;

/// KVM guest start-up alone takes about 1.7 s on nested hosts; a working KVM prints the
/// kernel banner well before this.
const PROBE_LIMIT: Duration = Duration::from_secs(4);
/// Probe output read before giving up on finding the banner.
const MAX_PROBE_OUTPUT: usize = 256 * 1024;
/// What the probe waits for from a Linux kernel (printed by earlyprintk before anything else).
const KERNEL_BANNER: &[u8] = b"Linux version";
/// What the fallback probe writes to the serial port from 64-bit mode.
const LONG_MODE_MARK: u8 = b'L';

/// A multiboot image (loaded by QEMU's `-kernel` at 1 MiB, entered in 32-bit protected mode)
/// that builds identity page tables, enters long mode, writes `L` to COM1 and exits through
/// isa-debug-exit with code 0x31 (QEMU exit status 99). Used when no host kernel is readable.
const LONG_MODE_PROBE: [u8; 182] = [
    0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x10, 0x00,
    0xbf, 0x00, 0x10, 0x00, 0x00, 0x31, 0xc0, 0xb9, 0x00, 0x0c, 0x00, 0x00, 0xf3, 0xab, 0xc7, 0x05,
    0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30,
    0x00, 0x00, 0xc7, 0x05, 0x00, 0x30, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x08, 0x30,
    0x00, 0x00, 0x83, 0x00, 0x20, 0x00, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb8,
    0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00,
    0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d, 0x01, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0,
    0x0f, 0x01, 0x15, 0xb0, 0x00, 0x10, 0x00, 0xea, 0x8e, 0x00, 0x10, 0x00, 0x08, 0x00, 0x66, 0xba,
    0xf8, 0x03, 0xb0, 0x4c, 0xee, 0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x8d, 0x74, 0x26, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00,
    0x0f, 0x00, 0xa0, 0x00, 0x10, 0x00,
];

/// The probe's finding, cached per host boot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvmVerdict {
    pub boot_id: String,
    pub works: bool,
    pub detail: String,
}

/// Picks the accelerator. Returns it and, when `auto` fell back to TCG, a one-line note.
pub fn resolve_accel(requested: Accel, config: &BootConfig) -> (ResolvedAccel, Option<String>) {
    match requested {
        Accel::Tcg => (ResolvedAccel::Tcg, None),
        Accel::Kvm => (ResolvedAccel::Kvm, None),
        Accel::Auto => {
            let verdict = cached_verdict(config);
            if verdict.works {
                (ResolvedAccel::Kvm, None)
            } else {
                let note = format!("KVM not used ({}); running under TCG", verdict.detail);
                (ResolvedAccel::Tcg, Some(note))
            }
        }
    }
}

/// This host boot's identity: a cached verdict is valid until the host reboots.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The verdict cached for this host boot, without probing (`vmedia doctor --no-probe`).
pub fn stored_verdict(config: &BootConfig) -> Option<KvmVerdict> {
    let boot_id = boot_id();
    let text = std::fs::read_to_string(config.state_dir().join("kvm-probe.json")).ok()?;
    let verdict = serde_json::from_str::<KvmVerdict>(&text).ok()?;
    (!boot_id.is_empty() && verdict.boot_id == boot_id).then_some(verdict)
}

/// The verdict for this host boot, probing when there is none yet.
pub fn cached_verdict(config: &BootConfig) -> KvmVerdict {
    let state_dir = config.state_dir();
    if let Some(verdict) = stored_verdict(config) {
        return verdict;
    }
    let boot_id = boot_id();
    let cache = state_dir.join("kvm-probe.json");
    let (works, detail) = probe(&config.qemu);
    let verdict = KvmVerdict {
        boot_id,
        works,
        detail,
    };
    if std::fs::create_dir_all(state_dir).is_ok() {
        if let Ok(text) = serde_json::to_string_pretty(&verdict) {
            // A temp name + rename so concurrent probes never leave half a file.
            let temp = state_dir.join(format!(".kvm-probe.json.{}", std::process::id()));
            if std::fs::write(&temp, text).is_ok() {
                let _ = std::fs::rename(&temp, &cache);
            }
        }
    }
    verdict
}

/// Runs the probe now with the emulator `qemu`: (works, what was seen).
pub fn probe(qemu: &Path) -> (bool, String) {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (false, format!("/dev/kvm: {e}"));
    }
    match host_kernel() {
        Some(kernel) => probe_with_kernel(qemu, &kernel),
        None => probe_long_mode(qemu),
    }
}

/// The newest readable /boot/vmlinuz-*.
fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .filter(|p| std::fs::File::open(p).is_ok())
        .collect();
    kernels.sort();
    kernels.pop()
}

fn probe_with_kernel(qemu: &Path, kernel: &Path) -> (bool, String) {
    let mut command = Command::new(qemu);
    command
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args([
            "-append",
            "earlyprintk=serial,ttyS0,115200 console=ttyS0 panic=-1 root=/dev/null",
        ]);
    let (output, status) = run_limited(&mut command);
    if contains(&output, KERNEL_BANNER) {
        return (
            true,
            format!("a Linux kernel printed its banner under KVM within {PROBE_LIMIT:?}"),
        );
    }
    let what = status.unwrap_or_else(|| "hung".into());
    (
        false,
        format!("a Linux kernel under KVM {what} without output within {PROBE_LIMIT:?}"),
    )
}

fn probe_long_mode(qemu: &Path) -> (bool, String) {
    let Ok(dir) = tempfile::tempdir() else {
        return (false, "no temporary folder".into());
    };
    let image = dir.path().join("probe.bin");
    if std::fs::write(&image, LONG_MODE_PROBE).is_err() {
        return (false, "cannot write the probe image".into());
    }
    let mut command = Command::new(qemu);
    command
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "16",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-machine", "pc", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
        .arg(&image);
    let (output, status) = run_limited(&mut command);
    if output.contains(&LONG_MODE_MARK) && status.as_deref() == Some("exit code 99") {
        return (true, "a long-mode probe ran under KVM".into());
    }
    (
        false,
        format!(
            "a long-mode probe under KVM {}",
            status.unwrap_or_else(|| "hung".into())
        ),
    )
}

/// Runs a probe VM for at most `PROBE_LIMIT`; returns its console and how it ended (None: it
/// was still running and got killed).
fn run_limited(command: &mut Command) -> (Vec<u8>, Option<String>) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut guarded) = Guarded::spawn(command) else {
        return (Vec::new(), Some("could not start QEMU".into()));
    };
    let Some(mut stdout) = guarded.child_mut().stdout.take() else {
        return (Vec::new(), Some("no console pipe".into()));
    };
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || sender.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PROBE_LIMIT;
    let mut output = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(chunk) => {
                output.extend_from_slice(&chunk);
                if contains(&output, KERNEL_BANNER) || output.len() > MAX_PROBE_OUTPUT {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guarded.wait_for(Duration::from_secs(1));
                return (output, status.map(|s| crate::process::describe_exit(&s)));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    let status = guarded
        .wait_for(Duration::ZERO)
        .map(|s| crate::process::describe_exit(&s));
    drop(guarded);
    (output, status)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_probe_is_a_valid_multiboot_header() {
        let magic = u32::from_le_bytes(LONG_MODE_PROBE[0..4].try_into().unwrap());
        let flags = u32::from_le_bytes(LONG_MODE_PROBE[4..8].try_into().unwrap());
        let checksum = u32::from_le_bytes(LONG_MODE_PROBE[8..12].try_into().unwrap());
        assert_eq!(magic, 0x1BAD_B002);
        assert_eq!(magic.wrapping_add(flags).wrapping_add(checksum), 0);
    }

    #[test]
    fn tcg_request_needs_no_probe() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_accel(Accel::Tcg, &BootConfig::new(dir.path())),
            (ResolvedAccel::Tcg, None)
        );
        assert!(!dir.path().join("kvm-probe.json").exists());
    }

    #[test]
    fn cached_verdict_for_this_boot_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let verdict = KvmVerdict {
            boot_id: boot_id.trim().into(),
            works: false,
            detail: "cached".into(),
        };
        std::fs::write(
            dir.path().join("kvm-probe.json"),
            serde_json::to_string(&verdict).unwrap(),
        )
        .unwrap();
        let (accel, note) = resolve_accel(Accel::Auto, &BootConfig::new(dir.path()));
        assert_eq!(accel, ResolvedAccel::Tcg);
        assert!(note.unwrap().contains("cached"));
    }
}
