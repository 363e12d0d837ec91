//! A new user's first contact: `--version` with the commit, completions and man pages,
//! `--json` on every reporting command, `vmedia doctor`, `vmedia config show` and the
//! configuration files, and an interactive `vmedia boot` on a pseudo-terminal.

#[path = "support/boot.rs"]
mod boot_fixtures;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use support::{require_tool, run_any, run_ok, vmedia};

/// The commands below the top level, as `--help` lists them under "Commands:".
fn subcommands(path: &[&str]) -> Vec<String> {
    let (code, out, err) = run_any(vmedia().args(path).arg("--help"));
    assert_eq!(code, 0, "vmedia {path:?} --help failed: {err}");
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in out.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            // Entries are indented two spaces; the list ends at the first other line.
            let Some(entry) = line.strip_prefix("  ") else {
                break;
            };
            if entry.starts_with(' ') {
                continue; // a wrapped description
            }
            let name = entry.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() && name != "help" {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// Every leaf command (`iso ls`, `boot`, ...), found by walking `--help`.
fn leaf_commands() -> Vec<Vec<String>> {
    let mut leaves = Vec::new();
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = pending.pop() {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        // mkisofs parses its own options and prints its own help.
        let subs = if refs == ["mkisofs"] {
            vec![]
        } else {
            subcommands(&refs)
        };
        if subs.is_empty() {
            leaves.push(path);
        } else {
            for sub in subs {
                let mut next = path.clone();
                next.push(sub);
                pending.push(next);
            }
        }
    }
    leaves.sort();
    leaves
}

/// Commands that act (write, start, stop, serve) and report nothing a script would parse.
/// A new command must be added here or take --json: the walk below fails otherwise.
const ACTING_COMMANDS: &[&str] = &[
    "mkisofs",
    "iso extract",
    "iso cat",
    "disk create",
    "disk convert",
    "disk commit",
    "disk rebase",
    "disk resize",
    "disk compare",
    "vm create",
    "vm stop",
    "vm kill",
    "vm console",
    "vm log",
    "vm rm",
    "vm boot-once",
    "vm insert",
    "vm eject",
    "netboot serve",
    "multiboot default",
    "serve",
    "top",
    "completions",
    "library init",
    "library get",
    "library cat",
    "library rm",
    "library gc",
    "library rollback",
    "library export-manifest",
    "clone rm",
    "user add",
    "user rm",
    "token rm",
];

#[test]
fn every_reporting_command_accepts_json() {
    let leaves = leaf_commands();
    assert!(
        leaves.len() > 30,
        "the --help walk found too few commands: {leaves:?}"
    );
    let acting: BTreeSet<&str> = ACTING_COMMANDS.iter().copied().collect();
    let names: BTreeSet<String> = leaves.iter().map(|l| l.join(" ")).collect();
    let stale: Vec<&&str> = acting.iter().filter(|a| !names.contains(**a)).collect();
    assert!(
        stale.is_empty(),
        "ACTING_COMMANDS names commands that do not exist: {stale:?}"
    );
    let mut missing = Vec::new();
    for leaf in &leaves {
        let name = leaf.join(" ");
        if acting.contains(name.as_str()) {
            continue;
        }
        let (code, out, err) = run_any(vmedia().args(leaf).arg("--help"));
        assert_eq!(code, 0, "vmedia {name} --help: {err}");
        if !out.lines().any(|l| l.trim_start().starts_with("--json")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "these commands report but take no --json (add it, or list them in ACTING_COMMANDS \
         when they only act): {missing:?}"
    );
}

#[test]
fn disk_info_json_is_output_json() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.qcow2");
    run_ok(
        vmedia()
            .args(["disk", "create", "-f", "qcow2"])
            .arg(&img)
            .arg("1M"),
    );
    for command in ["info", "check", "map"] {
        let by_json = run_ok(vmedia().args(["disk", command, "--json"]).arg(&img));
        let by_output = run_ok(
            vmedia()
                .args(["disk", command, "--output", "json"])
                .arg(&img),
        );
        assert_eq!(by_json.stdout, by_output.stdout, "disk {command}");
        let text = String::from_utf8(by_json.stdout).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("disk {command} --json is not JSON ({e}): {text}"));
    }
    let (code, _, err) = run_any(
        vmedia()
            .args(["disk", "info", "--json", "--output", "human"])
            .arg(&img),
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let (code, out, _) = run_any(vmedia().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(hash) => assert!(out.contains(&format!("commit {hash}")), "{out}"),
        None => assert!(out.contains("unknown commit"), "{out}"),
    }
}

#[test]
fn completions_are_printed_for_every_shell_and_bash_parses_them() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_ok(vmedia().args(["completions", shell]));
        let text = String::from_utf8(out.stdout).unwrap();
        for word in ["vmedia", "doctor", "wrap-iso"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vmedia.bash");
    fs::write(
        &script,
        run_ok(vmedia().args(["completions", "bash"])).stdout,
    )
    .unwrap();
    run_ok(Command::new("bash").arg("-n").arg(&script));
    let (code, _, err) = run_any(vmedia().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn man_pages_are_one_per_command_group_and_render() {
    let dir = tempfile::tempdir().unwrap();
    run_ok(vmedia().args(["man", "--out"]).arg(dir.path()));
    for page in [
        "vmedia.1",
        "vmedia-iso.1",
        "vmedia-disk.1",
        "vmedia-boot.1",
        "vmedia-vm.1",
        "vmedia-netboot.1",
        "vmedia-library.1",
        "vmedia-doctor.1",
        "vmedia-iso-create.1",
        "vmedia-disk-convert.1",
    ] {
        let path = dir.path().join(page);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is no man page"
        );
    }
    let iso = fs::read_to_string(dir.path().join("vmedia-iso.1")).unwrap();
    assert!(iso.contains(".TH VMEDIA-ISO"), "{iso}");
    assert!(iso.contains("create") && iso.contains("verify"), "{iso}");
    assert!(
        !dir.path().join("vmedia-man.1").exists(),
        "the hidden man command has a page"
    );
    // man itself renders the page (groff is in the man-db dependency chain).
    if Path::new("/usr/bin/man").exists() {
        let out = run_ok(
            Command::new("man")
                .args(["-l", "-P", "cat"])
                .arg(dir.path().join("vmedia-iso.1"))
                .env("MANWIDTH", "100"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("vmedia-iso"), "{text}");
    }
    let (_, help, _) = run_any(vmedia().arg("--help"));
    assert!(
        !help.contains("  man "),
        "man is a maintainer command, hidden from --help"
    );
}

#[test]
fn doctor_reports_every_host_check_and_its_exit_code_follows_the_verdict() {
    let state = tempfile::tempdir().unwrap();
    let out = vmedia()
        .args(["doctor", "--json", "--no-probe"])
        .env("VMEDIA_HOME", state.path())
        .env_remove("VMEDIA_SERVER")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "qemu",
        "qemu-img",
        "seabios",
        "ovmf",
        "kvm",
        "bridge",
        "space state",
        "peer xorriso",
        "library",
        "daemon",
    ] {
        assert!(names.contains(&name), "no {name} check in {names:?}");
    }
    for check in report["checks"].as_array().unwrap() {
        if check["status"] != "ok" {
            let fix = check["fix"].as_str().unwrap_or_default();
            assert!(
                fix.contains("apt-get install") || fix.contains(' '),
                "{check} names no package or setting"
            );
        }
    }
    let can_boot = report["can_boot"].as_bool().unwrap();
    assert_eq!(out.status.code(), Some(if can_boot { 0 } else { 1 }));
    // `make test` machines have QEMU and SeaBIOS (scripts/setup.sh installs them).
    require_tool("qemu-system-x86_64");
    assert!(can_boot, "{report:#}");
}

#[test]
fn doctor_without_qemu_fails_and_names_the_package() {
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = run_any(
        vmedia()
            .args(["doctor", "--no-probe"])
            .env("VMEDIA_HOME", state.path())
            .env("PATH", empty.path())
            .env_remove("VMEDIA_QEMU"),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("MISSING  qemu"), "{out}");
    assert!(out.contains("apt-get install qemu-system-x86"), "{out}");
    assert!(out.contains("verdict: VMs cannot boot"), "{out}");
}

/// A vmedia command with a private configuration folder and state folder.
fn configured(config: &Path, state: &Path) -> Command {
    let mut command = vmedia();
    command
        .env("XDG_CONFIG_HOME", config)
        .env("VMEDIA_HOME", state)
        .env_remove("VMEDIA_LIBRARY")
        .env_remove("VMEDIA_SERVER")
        .env_remove("VMEDIA_TOKEN");
    command
}

#[test]
fn config_show_names_where_each_value_came_from() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = config.path().join("vmedia/config.toml");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(
        &file,
        "memory = \"2G\"\nserver = \"http://images.lan:8080\"\ntoken = \"s3cret\"\nlibrary = \"/srv/from-file\"\n",
    )
    .unwrap();
    let out = run_ok(
        configured(config.path(), state.path())
            .env("VMEDIA_LIBRARY", "/srv/from-env")
            .args(["config", "show", "--json"]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let setting = |key: &str| {
        report["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {report:#}"))
            .clone()
    };
    assert_eq!(setting("library")["value"], "/srv/from-env");
    assert_eq!(setting("library")["origin"]["kind"], "env");
    assert_eq!(setting("memory")["value"], "2G");
    assert_eq!(
        setting("memory")["origin"]["detail"],
        file.display().to_string()
    );
    assert_eq!(setting("server")["value"], "http://images.lan:8080");
    assert_eq!(setting("accel")["origin"]["kind"], "default");
    assert_eq!(setting("token")["value"], "(set, hidden)");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    let text = run_ok(configured(config.path(), state.path()).args(["config", "show"]));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("2G") && text.contains(&file.display().to_string()),
        "{text}"
    );
}

#[test]
fn config_file_defaults_apply_and_flags_override_them() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = config.path().join("vmedia/config.toml");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(
        &file,
        "memory = \"2G\"\nfirmware = \"uefi\"\naccel = \"tcg\"\n",
    )
    .unwrap();
    let show = |name: &str| -> serde_json::Value {
        let out =
            run_ok(configured(config.path(), state.path()).args(["vm", "show", name, "--json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    run_ok(configured(config.path(), state.path()).args(["vm", "create", "from-file"]));
    let vm = show("from-file");
    let text = vm.to_string();
    assert!(text.contains("2048"), "{vm:#}");
    assert!(text.to_lowercase().contains("uefi"), "{vm:#}");
    run_ok(configured(config.path(), state.path()).args([
        "vm",
        "create",
        "by-flag",
        "--memory",
        "512",
        "--firmware",
        "bios",
    ]));
    let text = show("by-flag").to_string();
    assert!(text.contains("512") && !text.contains("2048"), "{text}");
    assert!(!text.to_lowercase().contains("uefi"), "{text}");
    // A typo in the file is an error naming the file, not a silently ignored key.
    fs::write(&file, "memroy = \"2G\"\n").unwrap();
    let (code, _, err) = run_any(configured(config.path(), state.path()).args(["vm", "list"]));
    assert_eq!(code, 1);
    assert!(
        err.contains(&file.display().to_string()) && err.contains("memroy"),
        "{err}"
    );
}

/// Runs argv on a pseudo-terminal as a person would: waits for the boot marker, types a
/// command into the guest's shell, waits for its answer, presses Ctrl-], then collects the
/// rest. Exit status: the program's, or 3 when an expected text did not appear in time.
const PTY_DRIVER: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
def read(limit, until=None):
    global seen
    deadline = time.time() + limit
    while until is None or until not in seen:
        left = deadline - time.time()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            return until is None
        if not data:
            return until is None
        seen += data
    return True
ok = read(300, b"VMEDIA-BOOT-OK")
if ok:
    time.sleep(1)
    os.write(fd, b"echo TYPED-$((6*7))\r")
    ok = read(60, b"TYPED-42")
os.write(fd, b"\x1d")
read(60)
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status) if ok else 3)
"#;

#[test]
fn interactive_boot_shows_the_console_takes_keys_and_ctrl_bracket_stops_the_vm() {
    let iso = boot_fixtures::hybrid_iso("cdrom");
    let log_dir = tempfile::tempdir().unwrap();
    let console_log = log_dir.path().join("console.log");
    let state = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .arg(env!("CARGO_BIN_EXE_vmedia"))
        .args([
            "boot",
            "--accel",
            "tcg",
            "--direct",
            "--append",
            "vmedia.shell",
            "--cdrom",
        ])
        .arg(iso)
        .arg("--console-log")
        .arg(&console_log)
        .env("VMEDIA_HOME", state.path())
        .output()
        .expect("python3 runs the pty driver");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Ctrl-] stops the VM"), "{text}");
    assert!(
        text.contains("TYPED-42"),
        "keys did not reach the guest:\n{text}"
    );
    assert!(text.contains("boot timeline"), "{text}");
    assert!(text.contains("first kernel output"), "{text}");
    assert!(text.contains("VM stopped"), "{text}");
    assert!(fs::read_to_string(&console_log)
        .unwrap()
        .contains("TYPED-42"));
    assert!(
        // The lean machine's kernel is cached under the private state folder QEMU is given.
        boot_fixtures::qemu_processes(&state.path().display().to_string()).is_empty(),
        "QEMU outlived the interactive boot"
    );
}

#[test]
fn boot_without_expect_and_without_a_terminal_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    fs::write(&kernel, b"not a kernel").unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .args(["boot", "--kernel"])
            .arg(&kernel)
            .stdin(std::process::Stdio::null()),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("needs a terminal") && err.contains("--expect"),
        "{err}"
    );
}
