//! Shared test support: the vmedia binary, peer-tool checks, bootable payload fixtures built
//! once per machine (cached under CARGO_TARGET_TMPDIR), and a QEMU runner that waits for a
//! serial-console marker.
//!
//! Every integration test file does `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod library;
pub mod serve;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the test initramfs prints on the serial console once userspace runs.
pub const BOOT_MARKER: &str = "VMEDIA-BOOT-OK";

/// The vmedia binary under test.
pub fn vmedia() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmedia"))
}

/// SIGKILLs a child (if it still runs) and reaps it, so no zombie or stray process outlives
/// the test that started it.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `cmd` (stdout and stderr captured), SIGKILLs it after `delay` if it still runs:
/// `Some(output)` when it finished first, `None` when it was killed.
pub fn run_and_kill(mut cmd: Command, delay: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + delay;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs a command, panicking with its full output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command and returns (exit code, stdout, stderr) without judging it.
pub fn run_any(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails loudly when a peer program is missing: `make test` installs them (scripts/setup.sh).
pub fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("required tool {name} is not installed; run `bash scripts/setup.sh` (make test does)");
}

/// A folder for cached fixtures shared by all tests of this build.
pub fn fixture_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmedia-fixtures");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Packs the folder `dir/tree` as a gzip-compressed newc cpio archive `dir/out`, the form Linux
/// unpacks as an initramfs (concatenated archives unpack in order, so a later one's files win).
/// `init`, when given, is written to the tree first as an executable `/init`.
pub fn pack_initramfs(dir: &Path, tree: &str, init: Option<&str>, out: &str) -> PathBuf {
    if let Some(init) = init {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(tree).join("init");
        fs::write(&path, init).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{tree}' && find . | cpio -o -H newc --quiet | gzip -1 > '../{out}'"
        ))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "packing {tree} as an initramfs failed (need cpio and gzip)"
    );
    dir.join(out)
}

/// The newest kernel release under /lib/modules that has its modules.dep.
pub fn newest_module_release() -> Option<String> {
    fs::read_dir("/lib/modules")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("modules.dep").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
}

/// The module files `modules` need under kernel `release`, each after what it depends on and
/// each once (`modprobe --show-depends`; built-in modules need no file).
pub fn module_closure(release: &str, modules: &[&str]) -> Vec<String> {
    let mut ordered: Vec<String> = Vec::new();
    for module in modules {
        let out = run_ok(Command::new(require_tool("modprobe")).args([
            "-S",
            release,
            "--show-depends",
            module,
        ]));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = path.split_whitespace().next().unwrap().to_string();
                if !ordered.contains(&path) {
                    ordered.push(path);
                }
            }
        }
    }
    ordered
}

/// Runs `build` once per machine for fixture `name` (a directory under `fixture_root`), holding
/// an exclusive lock so parallel tests and test binaries wait for one builder. The directory
/// appears under its final name only when `build` succeeded.
pub fn cached_fixture(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let root = fixture_root();
    let final_dir = root.join(name);
    let lock_path = root.join(format!("{name}.lock"));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if !final_dir.exists() {
        let tmp = root.join(format!("{name}.building"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        build(&tmp);
        fs::rename(&tmp, &final_dir).unwrap();
    }
    drop(lock);
    final_dir
}

/// A Debian kernel and a busybox initramfs whose /init prints `BOOT_MARKER` and powers off.
pub struct Payload {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds (once) the kernel + initramfs payload from the linux-image-amd64 and busybox-static
/// packages.
pub fn payload() -> Payload {
    let dir = cached_fixture("payload", |dir| {
        let kernel = newest_kernel();
        fs::copy(&kernel, dir.join("vmlinuz")).unwrap();
        let root = dir.join("initramfs-root");
        for sub in ["bin", "sbin", "proc", "sys", "dev", "mnt", "cdrom"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::copy(require_tool("busybox"), root.join("bin/busybox")).unwrap();
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev 2>/dev/null\n\
             echo\n\
             echo {BOOT_MARKER}\n\
             for f in /sys/block/sr*/size /sys/block/vd*/size /sys/block/sd*/size; do [ -e \"$f\" ] && echo \"BLOCKDEV $f $(cat $f)\"; done\n\
             if grep -q vmedia.shell /proc/cmdline; then exec sh; fi\n\
             poweroff -f\n"
        );
        pack_initramfs(dir, "initramfs-root", Some(init.as_str()), "initrd.gz");
        fs::remove_dir_all(&root).unwrap();
    });
    Payload {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    }
}

/// The payload kernel as an uncompressed PVH `vmlinux`, which QEMU's `-kernel` starts at its
/// PVH entry: under TCG the xz bzImage spends about 5 of its 8 CPU seconds to the marker
/// decompressing itself. For direct kernel boots whose proof is not the bzImage (extracted
/// once, by the same code `boot --direct` uses).
pub fn payload_vmlinux() -> PathBuf {
    let dir = cached_fixture("payload-vmlinux", |dir| {
        let kernel = payload().kernel;
        let cache = dir.join("cache");
        match vmedia_boot::kernel::pvh_kernel(&kernel, &cache).unwrap() {
            vmedia_boot::kernel::PvhKernel::Ready(path) => {
                fs::rename(path, dir.join("vmlinux")).unwrap();
                fs::remove_dir_all(&cache).unwrap();
            }
            vmedia_boot::kernel::PvhKernel::NotApplicable(why) => {
                panic!("{} has no usable PVH vmlinux: {why}", kernel.display())
            }
        }
    });
    dir.join("vmlinux")
}

fn newest_kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("/boot missing: install linux-image-amd64 (scripts/setup.sh)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .expect("no /boot/vmlinuz-*: install linux-image-amd64 (scripts/setup.sh)")
}

/// OVMF firmware files (code, vars template) from Debian's ovmf package.
pub fn ovmf() -> (PathBuf, PathBuf) {
    for (code, vars) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(code).exists() && Path::new(vars).exists() {
            return (code.into(), vars.into());
        }
    }
    panic!("OVMF not installed: run scripts/setup.sh");
}

/// Firmware for a test VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// Boots QEMU (TCG, no display) with `args`, waits up to `timeout` for `marker` on the serial
/// console, then kills the VM. Returns the console output; panics with the console tail on
/// time-out or if QEMU exits first.
pub fn qemu_boot(firmware: Firmware, args: &[&str], marker: &str, timeout: Duration) -> String {
    let qemu = require_tool("qemu-system-x86_64");
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
    ]);
    cmd.args(["-serial", "stdio"]);
    if firmware == Firmware::Uefi {
        let (code, vars) = ovmf();
        let vars_copy = scratch.path().join("vars.fd");
        fs::copy(vars, &vars_copy).unwrap();
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ));
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars_copy.display()
        ));
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("cannot start qemu-system-x86_64");
    let result = wait_for_marker(&mut child, marker, timeout);
    // The guest has said what the test waits for: whatever it would print next is not looked
    // at, so it is killed at once rather than left to power off.
    kill_and_reap(&mut child);
    match result {
        Ok(log) => {
            eprintln!(
                "qemu_boot: {marker:?} after {:.1} s ({firmware:?})",
                started.elapsed().as_secs_f64()
            );
            log
        }
        Err(log) => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let tail: String = log
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!("QEMU {cmd:?} did not print {marker:?} within {timeout:?}\n--- console tail\n{tail}\n--- qemu stderr\n{stderr}");
        }
    }
}

fn wait_for_marker(child: &mut Child, marker: &str, timeout: Duration) -> Result<String, String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let started = Instant::now();
    let deadline = started + timeout;
    // VMEDIA_TEST_TIMELINE=1 prints every console line with the seconds since QEMU started,
    // to see where a boot spends its time (firmware, loader, kernel, /init).
    let timeline = std::env::var_os("VMEDIA_TEST_TIMELINE").is_some();
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(log);
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                if timeline {
                    eprint!(
                        "[{:7.2}] {}",
                        started.elapsed().as_secs_f64(),
                        String::from_utf8_lossy(&line)
                    );
                }
                log.push_str(&String::from_utf8_lossy(&line));
                if log.contains(marker) {
                    return Ok(log);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(log),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(log),
        }
    }
}

/// SHA-256 of a file via sha256sum (keeps the tests free of extra crates).
pub fn sha256_file(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A shared sample image from ../shared/testdata/images, decompressed (once) into the fixture
/// cache. `name` is the stored path, e.g. "dfvfs/ext2.vmdk.xz"; the result has the extension
/// stripped.
pub fn shared_sample(name: &str) -> PathBuf {
    let src = shared_images_dir().join(name);
    assert!(src.exists(), "shared sample {} is missing", src.display());
    let (stem, tool) = if let Some(s) = name.strip_suffix(".xz") {
        (s, Some("xz"))
    } else if let Some(s) = name.strip_suffix(".bz2") {
        (s, Some("bzip2"))
    } else if let Some(s) = name.strip_suffix(".gz") {
        (s, Some("gzip"))
    } else {
        (name, None)
    };
    let key = stem.replace('/', "__");
    let dir = cached_fixture(&format!("sample-{key}"), |dir| {
        let out = dir.join(Path::new(stem).file_name().unwrap());
        match tool {
            Some(t) => {
                let data = run_ok(Command::new(t).arg("-dc").arg(&src)).stdout;
                fs::write(&out, data).unwrap();
            }
            None => {
                fs::copy(&src, &out).unwrap();
            }
        }
    });
    dir.join(Path::new(stem).file_name().unwrap())
}

/// ../shared/testdata/images, found from the workspace root.
pub fn shared_images_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap().parent().unwrap();
    let dir = root.parent().unwrap().join("shared/testdata/images");
    assert!(
        dir.exists(),
        "{} not found: CI clones the project beside ../shared",
        dir.display()
    );
    dir
}
