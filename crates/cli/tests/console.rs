//! The web console in a real browser: `vmedia serve` with HTTPS on free ports, a folder library
//! holding one ISO version, an administrator and a readonly user, and
//! tests/console/console_test.py driving headless Debian Chromium through Selenium: log in,
//! upload an ISO by the file input, roll back from the timeline (checked through the API too),
//! an upload interrupted by a page reload resumed at the daemon's offset, live I/O while a load generator reads, audit and replication pages (the daemon replicating to a second
//! folder library), batch attach to 50
//! systems (when the daemon has the systems API), the readonly user's view and refusals, dark
//! theme and phone width; axe-core on every page. Screenshots go to
//! target/console-screenshots/ and docs/console/.

#[path = "support/boot.rs"]
mod boot_fixtures;
#[path = "support/redfish.rs"]
mod redfish_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use boot_fixtures::hybrid_iso;
use redfish_support::venv_python;
use support::serve::{Daemon, ServeOptions};
use support::{require_tool, run_ok, vmedia, BOOT_MARKER};

/// The item the test library holds.
const ITEM: &str = "console-demo";
/// The bootable ISO's item, which a managed VM boots once from CD.
const BOOT_ITEM: &str = "live";

/// A small ISO of `files` (name, content) made by vmedia itself.
fn iso(dir: &Path, name: &str, files: &[(&str, String)]) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(&root).unwrap();
    for (file, content) in files {
        std::fs::write(root.join(file), content).unwrap();
    }
    let out = dir.join(format!("{name}.iso"));
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet", "-R", "-J", "-V", name, "-o"])
            .arg(&out)
            .arg(&root),
    );
    out
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_console_works_in_a_real_browser() {
    let started = Instant::now();
    require_tool("chromium");
    require_tool("chromedriver");
    let python = venv_python("selenium");
    venv_python("axe_selenium_python");

    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    let replica = dir.path().join("replica");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let with_env = |mut cmd: Command| {
        cmd.env("VMEDIA_LIBRARY", &library)
            .env("VMEDIA_HOME", &home)
            .env_remove("VMEDIA_LIBRARY_KEY");
        cmd
    };
    run_ok(with_env(vmedia()).args(["library", "init"]));
    // Version 1, and the ISO the browser uploads as version 2 (different content, mostly
    // shared chunks).
    let body = "vmedia console test\n".repeat(20_000);
    let v1 = iso(
        dir.path(),
        "v1",
        &[("readme.txt", body.clone()), ("version", "1\n".into())],
    );
    let v2 = iso(
        dir.path(),
        "v2",
        &[("readme.txt", body), ("version", "2\n".into())],
    );
    run_ok(with_env(vmedia()).args(["library", "add", ITEM]).arg(&v1));
    run_ok(
        with_env(vmedia())
            .args(["library", "add", BOOT_ITEM])
            .arg(hybrid_iso("cdrom")),
    );

    let https_port = support::serve::free_port();
    let daemon = Daemon::start(
        with_env(vmedia()),
        &ServeOptions {
            cache_size: "64M".into(),
            nbd: false,
            // A second folder library as the replica, synced every 2 s: the replication
            // page shows it from both sources and the item's dual-active state.
            extra: vec![
                "--https-port".into(),
                https_port.to_string(),
                "--replicate-to".into(),
                replica.display().to_string(),
                "--replicate-interval".into(),
                "2s".into(),
            ],
        },
    );
    let state = daemon.state.path().to_path_buf();
    for (name, role, password) in [
        ("admin", "administrator", "admin-password-1"),
        ("viewer", "readonly", "viewer-password-1"),
    ] {
        let file = dir.path().join(format!("{name}.pw"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        run_ok(
            with_env(vmedia())
                .args(["user", "add", name, "--role", role, "--password-file"])
                .arg(&file)
                .arg("--state")
                .arg(&state),
        );
    }

    let root = workspace_root();
    let shots = root.join("target/console-screenshots");
    let mut script = Command::new(&python);
    // The docs' copies are refreshed only when asked (VMEDIA_UPDATE_CONSOLE_DOCS=1): a test run
    // leaves the source tree as it was.
    if std::env::var_os("VMEDIA_UPDATE_CONSOLE_DOCS").is_some() {
        script.env("CONSOLE_DOCS", root.join("docs/console"));
    }
    let out = script
        .arg(root.join("tests/console/console_test.py"))
        .env("CONSOLE_URL", format!("https://127.0.0.1:{https_port}"))
        .env("CONSOLE_HTTP", daemon.http_url())
        .env("CONSOLE_ADMIN", "admin:admin-password-1")
        .env("CONSOLE_VIEWER", "viewer:viewer-password-1")
        .env("CONSOLE_ITEM", ITEM)
        .env("CONSOLE_ISO", &v2)
        .env("CONSOLE_ISO_V1", &v1)
        .env("CONSOLE_BOOT_ITEM", BOOT_ITEM)
        .env("CONSOLE_MARKER", BOOT_MARKER)
        .env("CONSOLE_SHOTS", &shots)
        .output()
        .expect("cannot run the browser test script");
    // The script stops the VM it boots when it gets that far; after a failure midway the
    // QEMU it started would outlive the test, so kill it in any case (not running is fine).
    let _ = with_env(vmedia())
        .args(["vm", "kill", "console-vm"])
        .output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{text}\n--- daemon log ---\n{}",
        shots.display(),
        daemon.log()
    );
    for case in [
        "login",
        "upload",
        "rollback",
        "resume",
        "live_io",
        "audit_replication",
        "batch",
        "boot",
        "readonly",
        "layouts",
    ] {
        assert!(
            text.contains(&format!("PASS {case} ")),
            "case {case} did not pass:\n{text}"
        );
    }
    assert!(
        text.contains("axe: no serious or critical violation"),
        "{text}"
    );
    assert!(daemon.alive(), "the daemon died:\n{}", daemon.log());
    daemon.stop();
    println!(
        "console test wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
