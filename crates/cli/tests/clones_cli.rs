//! `vmedia clone create/ls/rm/commit` against the clone API router served in-process on a
//! loopback port (the same router `vmedia serve` nests at /api/v1/clones), over a temporary
//! library: outputs, `--json`, `VMEDIA_SERVER`, and the daemon's error messages with exit 1.

use std::io::Cursor;
use std::process::{Command, Output};
use std::sync::Arc;

use vmedia_io::{NoProgress, ReadAt};
use vmedia_library::{AddOptions, AddSource, InitOptions, Library, OpenConfig, VersionSpec};
use vmedia_server::clones::{CloneInfo, CloneStore, LibraryBases};

// The clone API test server the server crate's own clone tests use.
#[path = "../../server/tests/support_clones.rs"]
mod support_clones;

/// The in-process daemon's base URL (the CLI adds /api/v1/clones itself).
fn serve(store: Arc<CloneStore>) -> String {
    let api = support_clones::serve_api(store);
    api.trim_end_matches("/api/v1/clones").to_string()
}

fn vmedia(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmedia"))
        .args(args)
        .env("VMEDIA_SERVER", server)
        .env_remove("VMEDIA_LIBRARY")
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failed(output: Output) -> String {
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn clone_commands_drive_the_daemon_api() {
    let dir = tempfile::tempdir().unwrap();
    let library = Library::init(
        &OpenConfig::folder(dir.path().join("library"), "tester@host"),
        &InitOptions::default(),
    )
    .unwrap();
    let image: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    library
        .add(
            "disk.img",
            AddSource::Reader(Box::new(Cursor::new(image.clone()))),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let store = Arc::new(
        CloneStore::open(
            &dir.path().join("state"),
            Arc::new(LibraryBases::new(library.clone())),
        )
        .unwrap(),
    );
    let server = serve(Arc::clone(&store));

    let created = ok(vmedia(&server, &["clone", "create", "disk.img", "vm1"]));
    assert!(created.contains("clone vm1 of disk.img@1"), "{created}");
    assert!(created.contains("clone/vm1"), "{created}");
    // --server beats VMEDIA_SERVER (which points nowhere here).
    let json = ok(vmedia(
        "http://127.0.0.1:9",
        &[
            "clone",
            "create",
            "disk.img@1",
            "vm2",
            "--ephemeral",
            "--json",
            "--server",
            &server,
        ],
    ));
    let info: CloneInfo = serde_json::from_str(&json).unwrap();
    assert!(info.ephemeral);

    store
        .open_export("vm1")
        .unwrap()
        .write_at(&[0xAB; 5000], 100, true)
        .unwrap();
    let listed: Vec<CloneInfo> =
        serde_json::from_str(&ok(vmedia(&server, &["clone", "ls", "--json"]))).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].bytes_written, 64 << 10);
    let text = ok(vmedia(&server, &["clone", "ls"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(
        lines[1].starts_with("vm1") && lines[1].contains("64.0 KiB"),
        "{text}"
    );
    assert!(lines[2].contains(" yes "), "{text}");

    let taken = failed(vmedia(&server, &["clone", "create", "disk.img", "vm1"]));
    assert!(taken.contains("already exists"), "{taken}");
    let missing = failed(vmedia(&server, &["clone", "rm", "nope"]));
    assert!(missing.contains("no such clone: nope"), "{missing}");
    let unreachable = failed(vmedia("http://127.0.0.1:9", &["clone", "ls"]));
    assert!(unreachable.contains("cannot reach"), "{unreachable}");

    let committed = ok(vmedia(
        &server,
        &["clone", "commit", "vm1", "--as", "disk.img"],
    ));
    assert!(committed.contains("as disk.img@2"), "{committed}");
    let v2 = library
        .open_version(&VersionSpec::parse("disk.img@2").unwrap())
        .unwrap();
    let mut head = vec![0u8; 5100];
    v2.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head[..100], image[..100]);
    assert!(head[100..5100].iter().all(|&b| b == 0xAB));

    let removed = ok(vmedia(&server, &["clone", "rm", "vm2"]));
    assert!(removed.contains("removed clone vm2"));
    assert_eq!(store.list().len(), 1);
}
