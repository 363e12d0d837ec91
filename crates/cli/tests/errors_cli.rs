//! The error text of the most common mistakes, command group by command group: a missing
//! file, a file of the wrong format, no space left, permission denied, QEMU missing, a port in
//! use. Each error names what the user asked for, the file, the cause once, and a next step
//! where there is one.

mod support;

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{run_and_kill, vmedia};

/// OS texts that must appear at most once in an error line.
const OS_TEXTS: [&str; 5] = [
    "No such file or directory",
    "Permission denied",
    "No space left on device",
    "Address already in use",
    "(os error",
];

/// Runs `command` expecting failure; returns the `vmedia: error:` line after checking that
/// it holds every `wanted` text and each OS text at most once.
fn error_line(mut command: Command, wanted: &[&str]) -> String {
    // A daemon that unexpectedly starts must not hang the test.
    let out = run_and_kill(
        {
            command.stdin(std::process::Stdio::null());
            command
        },
        Duration::from_secs(60),
    )
    .expect("the command failed within a minute");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("vmedia: error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
        .to_string();
    for text in wanted {
        assert!(line.contains(text), "{text:?} missing from: {line}");
    }
    for text in OS_TEXTS {
        assert!(
            line.matches(text).count() <= 1,
            "{text:?} repeated in: {line}"
        );
    }
    line
}

fn args(command: &mut Command, words: &[&dyn AsRef<std::ffi::OsStr>]) {
    for word in words {
        command.arg(word.as_ref());
    }
}

fn cmd(words: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut command = vmedia();
    args(&mut command, words);
    command
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_missing_file_is_named_with_its_cause_once_in_every_group() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let gone = dir.path().join("nonexistent");
    let out = dir.path().join("x.iso");
    let iso = gone.join("a.iso");
    // The example: mkisofs of a missing tree names making the image and the tree.
    let line = error_line(
        cmd(&[&"mkisofs", &"-o", &out, &gone]),
        &[
            &format!("cannot make {}", text(&out)),
            &text(&gone),
            "No such file",
        ],
    );
    assert!(!line.contains("cannot write"), "{line}");
    error_line(
        cmd(&[&"iso", &"create", &gone, &"-o", &out]),
        &[&text(&out), &text(&gone), "No such file"],
    );
    error_line(cmd(&[&"iso", &"ls", &iso]), &[&text(&iso), "No such file"]);
    let disk = gone.join("d.qcow2");
    error_line(
        cmd(&[&"disk", &"info", &disk]),
        &[&text(&disk), "No such file"],
    );
    error_line(
        cmd(&[
            &"disk",
            &"convert",
            &"-O",
            &"qcow2",
            &disk,
            &dir.path().join("o.qcow2"),
        ]),
        &[&text(&disk), "No such file"],
    );
    error_line(
        cmd(&[&"boot", &"--cdrom", &iso, &"--expect", &"x"]),
        &[&text(&iso), "No such file"],
    );
    let mut vm = cmd(&[&"vm", &"create", &"web", &"--cdrom", &iso]);
    vm.env("VMEDIA_HOME", &state);
    error_line(vm, &[&text(&iso), "No such file"]);
    let mut vm = cmd(&[&"vm", &"start", &"nosuch"]);
    vm.env("VMEDIA_HOME", &state);
    error_line(vm, &["nosuch", "vmedia vm create"]);
    let rules = gone.join("rules.toml");
    error_line(
        cmd(&[&"netboot", &"serve", &"--no-dhcp", &"--config", &rules]),
        &[&text(&rules), "No such file"],
    );
    let serve_config = gone.join("serve.toml");
    error_line(
        cmd(&[&"serve", &"--config", &serve_config]),
        &[&text(&serve_config), "No such file"],
    );
    let library = gone.join("library");
    error_line(
        cmd(&[&"library", &"--library", &library, &"ls"]),
        &[&text(&library), "vmedia library init"],
    );
}

#[test]
fn a_file_of_the_wrong_format_says_what_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    fs::write(&notes, "just text, not an image\n".repeat(200)).unwrap();
    error_line(cmd(&[&"iso", &"ls", &notes]), &[&text(&notes), "ISO"]);
    error_line(
        cmd(&[&"disk", &"info", &"-f", &"qcow2", &notes]),
        &[&text(&notes), "qcow2"],
    );
    error_line(
        cmd(&[&"boot", &"--cdrom", &notes, &"--expect", &"x"]),
        &[&text(&notes), "not an ISO", "--disk"],
    );
    let config = dir.path().join("config");
    fs::create_dir_all(config.join("vmedia")).unwrap();
    let file = config.join("vmedia/config.toml");
    fs::write(&file, "firmware = \"uefi\"\nmemory = 2G\n").unwrap();
    let mut show = cmd(&[&"config", &"show"]);
    show.env("XDG_CONFIG_HOME", &config);
    error_line(show, &[&text(&file), "line 2"]);
}

/// A 1 MiB tmpfs, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "vmedia-test-full"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (make test runs as root)"
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn no_space_left_names_the_output_and_the_cause_once() {
    let full = SmallFs::mount();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    // Incompressible-looking data, bigger than the file system.
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(tree.join("big.bin"), &data).unwrap();
    let iso = full.dir.path().join("x.iso");
    error_line(
        cmd(&[&"iso", &"create", &tree, &"-o", &iso]),
        &[&text(&iso), "No space left on device", "free space"],
    );
    let raw = src.path().join("d.raw");
    fs::write(&raw, &data).unwrap();
    let out = full.dir.path().join("d.qcow2");
    error_line(
        cmd(&[
            &"disk", &"convert", &"-f", &"raw", &"-O", &"qcow2", &raw, &out,
        ]),
        &[&text(&out), "No space left on device", "free space"],
    );
    assert!(
        !iso.exists() && !out.exists(),
        "a partial output was left behind"
    );
}

#[test]
fn permission_denied_names_the_file_for_an_unprivileged_user() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let secret = dir.path().join("secret.iso");
    fs::write(&secret, vec![0u8; 64 << 10]).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let as_nobody = |words: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_vmedia"))
            .env("HOME", dir.path())
            .env("VMEDIA_HOME", dir.path().join("state"));
        args(&mut command, words);
        command
    };
    for group in [
        &["iso", "ls"][..],
        &["disk", "info"][..],
        &["iso", "verify"][..],
    ] {
        let mut words: Vec<&dyn AsRef<std::ffi::OsStr>> = group
            .iter()
            .map(|w| w as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        words.push(&secret);
        error_line(as_nobody(&words), &[&text(&secret), "Permission denied"]);
    }
    let out = dir.path().join("out.iso");
    error_line(
        as_nobody(&[
            &"iso",
            &"create",
            &dir.path().join("state-none"),
            &"-o",
            &out,
        ]),
        &[&text(&out)],
    );
}

#[test]
fn qemu_missing_says_which_package_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    fs::write(&kernel, b"MZ not really a kernel").unwrap();
    let empty = dir.path().join("empty-path");
    fs::create_dir_all(&empty).unwrap();
    let mut boot = cmd(&[
        &"boot",
        &"--kernel",
        &kernel,
        &"--accel",
        &"tcg",
        &"--expect",
        &"x",
    ]);
    boot.env("PATH", &empty).env_remove("VMEDIA_QEMU");
    error_line(
        boot,
        &[
            "qemu-system-x86_64",
            "No such file",
            "apt-get install qemu-system-x86",
            "vmedia doctor",
        ],
    );
    let state = dir.path().join("state");
    let mut create = cmd(&[
        &"vm",
        &"create",
        &"web",
        &"--kernel",
        &kernel,
        &"--accel",
        &"tcg",
    ]);
    create.env("VMEDIA_HOME", &state);
    assert!(create.status().unwrap().success());
    let mut start = cmd(&[&"vm", &"start", &"web"]);
    start
        .env("VMEDIA_HOME", &state)
        .env("PATH", &empty)
        .env_remove("VMEDIA_QEMU");
    error_line(start, &["web", "apt-get install qemu-system-x86"]);
}

#[test]
fn a_port_in_use_names_the_port_and_the_flag_to_change() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    assert!(vmedia()
        .args(["library", "--library"])
        .arg(&library)
        .arg("init")
        .status()
        .unwrap()
        .success());
    let state: PathBuf = dir.path().join("serve-state");
    error_line(
        cmd(&[
            &"serve",
            &"--library",
            &library,
            &"--listen",
            &"127.0.0.1",
            &"--http-port",
            &port,
            &"--nbd-port",
            &"0",
            &"--state",
            &state,
        ]),
        &[&port, "Address already in use", "--http-port"],
    );
    let root = dir.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let words: Vec<OsString> = vec![
        "netboot".into(),
        "serve".into(),
        "--no-dhcp".into(),
        "--listen".into(),
        "127.0.0.1".into(),
        "--tftp-port".into(),
        "0".into(),
        "--http-port".into(),
        port.clone().into(),
        "--root".into(),
        root.into_os_string(),
    ];
    let mut netboot = vmedia();
    netboot.args(&words);
    error_line(netboot, &[&port, "Address already in use", "--http-port"]);
    drop(holder);
}

#[test]
fn a_daemon_that_is_not_running_is_named_with_what_to_start() {
    // A port nothing listens on: bind one, note it, let it go.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let wanted = [server.as_str(), "Connection refused", "vmedia serve"];
    error_line(cmd(&[&"clone", &"ls", &"--server", &server]), &wanted);
    error_line(
        cmd(&[&"clone", &"create", &"img", &"c1", &"--server", &server]),
        &wanted,
    );
    error_line(cmd(&[&"top", &"--batch", &"--server", &server]), &wanted);
}
