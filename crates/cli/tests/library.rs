//! `vmedia library`: round trips, `library:` paths in the iso and disk commands, deduplication,
//! the timeline (rollback, history, prune, gc) and the sources (file, http, stdin), each test
//! against both backends: a folder and SeaweedFS (a real S3 server on loopback).

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::library::{
    add, demo_iso, digest_of, each_backend, json_of, library_json, pseudo_random, same_bytes,
    sparse_disk, zstd_qcow2, Backend, TestLibrary, DEMO_CFG_PATH, DEMO_VOLUME_ID, SPARSE_DISK_SIZE,
};
use support::{run_any, run_ok};

fn init(lib: &TestLibrary, extra: &[&str]) {
    run_ok(lib.library(&["init"]).args(extra));
}

/// `library get SPEC -o OUT`, then the output must equal `expected` byte for byte.
fn assert_get_matches(lib: &TestLibrary, spec: &str, expected: &Path) {
    let out = lib.path(&format!("got-{}", spec.replace(['@', ':'], "_")));
    let report = library_json(lib, &["get", spec, "-o", out.to_str().unwrap()]);
    assert!(
        same_bytes(&out, expected),
        "get {spec} differs from {} (report {report})",
        expected.display()
    );
    // The digest the library checked while writing is sha256sum's.
    assert_eq!(report["digest"], digest_of(expected).as_str());
    fs::remove_file(&out).unwrap();
}

/// `library cat SPEC` into a file, which must equal `expected`.
fn assert_cat_matches(lib: &TestLibrary, spec: &str, expected: &Path) {
    let out = lib.path("cat.out");
    let status = lib
        .library(&["cat", spec])
        .stdout(fs::File::create(&out).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "cat {spec} failed");
    assert!(same_bytes(&out, expected), "cat {spec} differs");
    fs::remove_file(&out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_demo_iso_sparse_disk_and_zstd_qcow2_are_byte_identical() {
    let demo = demo_iso();
    let disk = sparse_disk();
    let qcow2 = zstd_qcow2();
    each_backend("round-trip", |lib| {
        init(lib, &[]);

        let iso_report = add(lib, "demo", &demo.iso, &["--note", "first"]);
        assert_eq!(iso_report["name"], "demo");
        assert_eq!(iso_report["version"], 1);
        assert_eq!(iso_report["digest"], digest_of(&demo.iso).as_str());
        assert_eq!(iso_report["size"], fs::metadata(&demo.iso).unwrap().len());
        let kind = iso_report["kind"].to_string();
        assert!(
            kind.contains(DEMO_VOLUME_ID),
            "add did not record the ISO's volume id: {iso_report}"
        );

        let disk_report = add(lib, "sparse", &disk, &[]);
        assert_eq!(disk_report["digest"], digest_of(&disk).as_str());
        assert_eq!(disk_report["size"], SPARSE_DISK_SIZE);
        // The holes are one zero chunk stored once: far less than the image is stored.
        let stored = disk_report["stored_bytes"].as_u64().unwrap();
        assert!(
            stored < SPARSE_DISK_SIZE / 20,
            "2 GiB mostly-hole disk stored as {stored} bytes: {disk_report}"
        );

        let qcow2_report = add(lib, "qcow", &qcow2, &[]);
        assert_eq!(qcow2_report["digest"], digest_of(&qcow2).as_str());
        let kind = qcow2_report["kind"].to_string();
        assert!(
            kind.contains("qcow2"),
            "add did not record the disk format: {qcow2_report}"
        );

        assert_get_matches(lib, "demo", &demo.iso);
        assert_get_matches(lib, "demo@1", &demo.iso);
        assert_get_matches(lib, "sparse", &disk);
        assert_get_matches(lib, "qcow@1", &qcow2);
        assert_cat_matches(lib, "demo", &demo.iso);
        assert_cat_matches(lib, "qcow", &qcow2);
        // sha256sum of what came back, for the two small images (the 2 GiB one is cmp'd).
        for (spec, original) in [("demo", &demo.iso), ("qcow", &qcow2)] {
            let out = lib.path("sum.out");
            run_ok(&mut lib.library(&["get", spec, "-o", out.to_str().unwrap()]));
            assert_eq!(support::sha256_file(&out), support::sha256_file(original));
            fs::remove_file(&out).unwrap();
        }

        // get refuses to replace a file unless --force, and leaves it alone.
        let existing = lib.path("existing.iso");
        fs::write(&existing, b"keep me").unwrap();
        let (code, _, stderr) =
            run_any(&mut lib.library(&["get", "qcow", "-o", existing.to_str().unwrap()]));
        assert_ne!(code, 0, "get replaced an existing file without --force");
        assert!(!stderr.is_empty());
        assert_eq!(fs::read(&existing).unwrap(), b"keep me");
        run_ok(&mut lib.library(&["get", "qcow", "-o", existing.to_str().unwrap(), "--force"]));
        assert!(same_bytes(&existing, &qcow2));

        // ls lists the three items with their current versions and digests.
        let items = library_json(lib, &["ls"]);
        let text = items.to_string();
        for name in ["demo", "sparse", "qcow"] {
            assert!(
                text.contains(&format!("\"{name}\"")),
                "ls misses {name}: {text}"
            );
        }
        assert!(
            text.contains(&digest_of(&qcow2)),
            "ls lacks digests: {text}"
        );
        let show = library_json(lib, &["show", "demo"]);
        assert_eq!(show["version"], 1);
        assert_eq!(show["digest"], digest_of(&demo.iso).as_str());
    });
}

// ---------------------------------------------------------------------------------------------
// library: paths in the iso and disk commands

/// stdout of a command that must succeed.
fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

/// A JSON document without the keys that name the image argument (they differ by design).
fn without_keys(mut value: Value, keys: &[&str]) -> Value {
    if let Some(map) = value.as_object_mut() {
        for k in keys {
            map.remove(*k);
        }
    }
    value
}

#[test]
fn iso_and_disk_commands_on_library_paths_agree_with_the_files() {
    let demo = demo_iso();
    let qcow2 = zstd_qcow2();
    let disk = sparse_disk();
    each_backend("library-paths", |lib| {
        init(lib, &[]);
        add(lib, "demo", &demo.iso, &[]);
        let qcow_report = add(lib, "qcow", &qcow2, &[]);
        add(lib, "sparse", &disk, &[]);
        let iso = demo.iso.to_str().unwrap();

        // iso ls (recursive, long) and iso cat.
        let file_ls = stdout_of(lib.vmedia().args(["iso", "ls", "-l", "-R", iso]));
        for spec in ["library:demo", "library:demo@1"] {
            let lib_ls = stdout_of(lib.vmedia().args(["iso", "ls", "-l", "-R", spec]));
            assert_eq!(lib_ls, file_ls, "iso ls {spec}");
        }
        assert!(file_ls.contains("isolinux.cfg"));
        let file_cat = run_ok(lib.vmedia().args(["iso", "cat", iso, DEMO_CFG_PATH])).stdout;
        let lib_cat = run_ok(
            lib.vmedia()
                .args(["iso", "cat", "library:demo", DEMO_CFG_PATH]),
        )
        .stdout;
        assert_eq!(lib_cat, file_cat);
        assert!(String::from_utf8_lossy(&lib_cat).contains("KERNEL /live/vmlinuz"));

        // iso info: everything but the image name.
        let file_info: Value = serde_json::from_str(&stdout_of(
            lib.vmedia().args(["iso", "info", "--json", iso]),
        ))
        .unwrap();
        let lib_info: Value = serde_json::from_str(&stdout_of(lib.vmedia().args([
            "iso",
            "info",
            "--json",
            "library:demo",
        ])))
        .unwrap();
        assert_eq!(
            without_keys(lib_info, &["image"]),
            without_keys(file_info, &["image"])
        );

        // A digest prefix names the version too.
        let digest = qcow_report["digest"].as_str().unwrap();
        let prefix = &digest[..digest.len().min("sha256:".len() + 12)];
        let by_digest = format!("library:qcow@{prefix}");

        // disk info: everything but the file name and its allocation on the host.
        let q = qcow2.to_str().unwrap();
        let file_disk: Value = serde_json::from_str(&stdout_of(
            lib.vmedia().args(["disk", "info", "--output", "json", q]),
        ))
        .unwrap();
        for spec in ["library:qcow", by_digest.as_str()] {
            let lib_disk: Value = serde_json::from_str(&stdout_of(
                lib.vmedia()
                    .args(["disk", "info", "--output", "json", spec]),
            ))
            .unwrap();
            assert_eq!(
                without_keys(lib_disk, &["filename", "actual-size"]),
                without_keys(file_disk.clone(), &["filename", "actual-size"]),
                "disk info {spec}"
            );
        }

        // disk compare: a library version against the file it came from, and across formats.
        for (a, b) in [
            ("library:qcow", q.to_string()),
            ("library:sparse@1", disk.display().to_string()),
        ] {
            let (code, stdout, stderr) = run_any(lib.vmedia().args(["disk", "compare", a, &b]));
            assert_eq!(code, 0, "disk compare {a} {b}: {stdout}{stderr}");
            assert!(stdout.contains("Images are identical."), "{stdout}");
        }
        // And a difference is still found through a library path.
        let (code, stdout, _) =
            run_any(lib.vmedia().args(["disk", "compare", "library:qcow", iso]));
        assert_eq!(code, 1, "compare of different images: {stdout}");

        // An unknown item is a clear error naming it.
        let (code, _, stderr) = run_any(lib.vmedia().args(["iso", "ls", "library:nosuch"]));
        assert_eq!(code, 1);
        assert!(stderr.contains("nosuch"), "{stderr}");

        // --s3-endpoint (instead of AWS_ENDPOINT_URL) reaches the same S3 library.
        if lib.backend == Backend::S3 {
            let endpoint = lib.server().unwrap().endpoint.clone();
            let mut cmd = lib.vmedia();
            cmd.env_remove("AWS_ENDPOINT_URL").args([
                "--s3-endpoint",
                &endpoint,
                "iso",
                "cat",
                "library:demo",
                DEMO_CFG_PATH,
            ]);
            assert_eq!(run_ok(&mut cmd).stdout, file_cat);
            // Without any endpoint the library cannot be reached: an error, not a hang.
            let mut cmd = lib.vmedia();
            cmd.env_remove("AWS_ENDPOINT_URL")
                .env("AWS_SECRET_ACCESS_KEY", "wrong-secret")
                .args(["--s3-endpoint", &endpoint, "library", "ls"]);
            let (code, _, stderr) = run_any(&mut cmd);
            assert_eq!(code, 1, "a wrong S3 secret was accepted");
            assert!(!stderr.is_empty());
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Deduplication

#[test]
fn dedup_repack_with_one_added_mib_file_stores_at_most_five_percent_new() {
    let demo = demo_iso();
    each_backend("dedup", |lib| {
        init(lib, &[]);
        let first = add(lib, "demo", &demo.iso, &[]);
        let stored_after_first = lib.stored_bytes();
        let second = add(lib, "demo", &demo.repack, &["--note", "added one file"]);
        assert_eq!(second["version"], 2);
        let size = second["size"].as_u64().unwrap();
        let new_bytes = second["new_bytes"].as_u64().unwrap();
        let reused = second["reused_bytes"].as_u64().unwrap();
        assert_eq!(new_bytes + reused, size, "new + reused != size: {second}");
        assert!(
            new_bytes * 20 <= size,
            "repack with one 1 MiB file added {new_bytes} new bytes of {size} (> 5%): {second}"
        );
        assert!(
            new_bytes >= 1 << 20,
            "the added 1 MiB file must be new: {second}"
        );
        // What the store grew by agrees: no more than 5% of the image plus manifests.
        let growth = lib.stored_bytes() - stored_after_first;
        assert!(
            growth * 20 <= size + (1 << 20),
            "store grew by {growth} bytes for a {size}-byte repack"
        );
        // The first add of the same image into the same library adds nothing new.
        let again = add(lib, "copy", &demo.iso, &[]);
        assert_eq!(again["new_bytes"], 0, "{again} (first: {first})");
        assert_get_matches(lib, "demo@1", &demo.iso);
        assert_get_matches(lib, "demo@2", &demo.repack);
    });
}

// ---------------------------------------------------------------------------------------------
// Timeline

/// The events of `history --json` (whatever the report calls the list, it is the one list of
/// objects carrying an event kind).
fn history_events(history: &Value) -> Vec<Value> {
    let events = history
        .get("events")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("history has no events list: {history}"));
    events.clone()
}

fn current_version(lib: &TestLibrary, name: &str) -> u64 {
    library_json(lib, &["show", name])["version"]
        .as_u64()
        .unwrap()
}

#[test]
fn timeline_three_versions_rollback_by_version_and_time_and_history_shows_every_event() {
    each_backend("timeline", |lib| {
        init(lib, &[]);
        let files: Vec<_> = (1..=3u64)
            .map(|i| {
                let p = lib.path(&format!("v{i}.img"));
                fs::write(&p, pseudo_random(3 << 20, 300 + i)).unwrap();
                p
            })
            .collect();
        // Three adds an hour apart, ten days ago (injected clock), then the real present.
        let t0 = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(240);
        let at = |h: i64| (t0 + jiff::SignedDuration::from_hours(h)).to_string();
        for (i, f) in files.iter().enumerate() {
            let r = add(
                lib,
                "app",
                f,
                &[
                    "--now",
                    &at(i as i64),
                    "--note",
                    &format!("release {}", i + 1),
                ],
            );
            assert_eq!(r["version"], i as u64 + 1);
        }
        assert_eq!(current_version(lib, "app"), 3);

        // Rollback by version.
        library_json(
            lib,
            &["rollback", "app", "--to", "1", "--note", "bad release"],
        );
        assert_eq!(current_version(lib, "app"), 1);
        assert_cat_matches(lib, "app", &files[0]);
        // Rollback by time: at t0+1h30m version 2 was current.
        let middle = (t0 + jiff::SignedDuration::from_mins(90)).to_string();
        library_json(lib, &["rollback", "app", "--at", &middle]);
        assert_eq!(current_version(lib, "app"), 2);
        assert_get_matches(lib, "app", &files[1]);
        // Every version is still there (nothing is deleted by a rollback).
        assert_get_matches(lib, "app@3", &files[2]);
        // A time before the first add names nothing.
        let before = (t0 - jiff::SignedDuration::from_hours(1)).to_string();
        let (code, _, stderr) = run_any(&mut lib.library(&["rollback", "app", "--at", &before]));
        assert_eq!(code, 1, "rollback to before the first version: {stderr}");
        assert_eq!(current_version(lib, "app"), 2);

        // History: 3 adds, 2 rollbacks, in order, each with time, actor, note, version.
        let history = library_json(lib, &["history", "app"]);
        let events = history_events(&history);
        assert_eq!(events.len(), 5, "{history}");
        let versions: Vec<u64> = events
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions, [1, 2, 3, 1, 2], "{history}");
        let text = history.to_string();
        for note in ["release 1", "release 3", "bad release"] {
            assert!(text.contains(note), "history lacks note {note:?}: {text}");
        }
        assert!(
            text.contains('@'),
            "history lacks the actor (user@host): {text}"
        );
        for f in &files {
            assert!(
                text.contains(&digest_of(f)),
                "history lacks a digest: {text}"
            );
        }
        // Text output works too.
        let human =
            String::from_utf8(run_ok(&mut lib.library(&["history", "app"])).stdout).unwrap();
        assert!(human.contains("bad release"), "{human}");

        // rm hides the item; rollback restores it.
        library_json(lib, &["rm", "app", "--note", "retired"]);
        let listed = library_json(lib, &["ls"]).to_string();
        assert!(
            !listed.contains("\"app\""),
            "removed item still listed: {listed}"
        );
        let all = library_json(lib, &["ls", "--all"]).to_string();
        assert!(
            all.contains("\"app\""),
            "ls --all misses the removed item: {all}"
        );
        let (code, _, _) = run_any(&mut lib.library(&["cat", "app"]));
        assert_ne!(code, 0, "a removed item's current version was readable");
        library_json(lib, &["rollback", "app", "--to", "3"]);
        assert_eq!(current_version(lib, "app"), 3);
    });
}

#[test]
fn prune_with_injected_clock_keeps_exactly_the_policy_and_gc_frees_what_prune_released() {
    each_backend("prune", |lib| {
        init(lib, &["--keep-within", "72h"]);
        let files: Vec<_> = (1..=4u64)
            .map(|i| {
                let p = lib.path(&format!("v{i}.img"));
                fs::write(&p, pseudo_random(4 << 20, 400 + i)).unwrap();
                p
            })
            .collect();
        let t0 = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * 30);
        let at = |mins: i64| (t0 + jiff::SignedDuration::from_mins(mins)).to_string();
        // v1 current [t0, t0+1h), v2 [t0+1h, t0+2h), v3 [t0+2h, t0+3h), v4 from t0+3h on.
        for (i, f) in files.iter().enumerate() {
            add(lib, "app", f, &["--now", &at(60 * i as i64)]);
        }
        // Now = t0 + 2h30m + 72h: the window starts at t0+2h30m, when v3 was current.
        let now = at(150 + 72 * 60);
        let dry = library_json(lib, &["prune", "--dry-run", "--now", &now]);
        let after_dry = library_json(lib, &["history", "app"]);
        assert_eq!(
            history_events(&after_dry).len(),
            4,
            "dry run changed the timeline"
        );
        assert_get_matches(lib, "app@1", &files[0]);
        let dry_text = dry.to_string();
        assert!(dry_text.contains("app"), "{dry_text}");

        let pruned = library_json(lib, &["prune", "--now", &now]);
        assert_eq!(pruned["dry_run"], false);
        assert_eq!(dry["dry_run"], true);
        assert_eq!(
            pruned["pruned"], dry["pruned"],
            "prune did other than its dry run said"
        );
        let gone: Vec<String> = pruned["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{}@{}", p["name"].as_str().unwrap(), p["version"]))
            .collect();
        assert_eq!(gone, ["app@1", "app@2"], "{pruned}");
        for kept in pruned["kept"].as_array().unwrap() {
            assert!(!kept["reason"].as_str().unwrap().is_empty(), "{pruned}");
        }
        for gone in ["app@1", "app@2"] {
            let (code, _, stderr) = run_any(&mut lib.library(&["show", gone]));
            assert_eq!(code, 1, "{gone} survived prune: {pruned}");
            assert!(
                stderr.contains("prune") || stderr.contains("no version"),
                "{stderr}"
            );
        }
        assert_get_matches(lib, "app@3", &files[2]);
        assert_get_matches(lib, "app@4", &files[3]);
        // Pruning again changes nothing.
        let again = library_json(lib, &["prune", "--now", &now]);
        assert_eq!(again["pruned"], serde_json::json!([]), "{again}");
        let stored_before = lib.stored_bytes();

        // gc deletes the chunks only v1 and v2 used: 8 MiB of incompressible data.
        let gc = library_json(lib, &["gc"]);
        let freed = gc["freed_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("gc report lacks freed_bytes: {gc}"));
        let stored_after = lib.stored_bytes();
        assert!(
            freed >= 8 << 20,
            "gc freed {freed} bytes, expected the 8 MiB of v1 and v2: {gc}"
        );
        // The store shrank by what gc reported, plus the two small manifests it deleted.
        let shrink = stored_before - stored_after;
        assert!(
            freed <= shrink && shrink <= freed + (256 << 10),
            "gc reported {freed} bytes freed, the store shrank by {shrink}: {gc}"
        );
        let verify = run_any(&mut lib.library(&["verify"]));
        assert_eq!(verify.0, 0, "verify after gc: {}{}", verify.1, verify.2);
        assert_get_matches(lib, "app", &files[3]);
    });
}

// ---------------------------------------------------------------------------------------------
// Sources: http(s) URL (streamed) and stdin

/// A loopback HTTP server (python3 -m http.server) serving `dir`, killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(support::require_tool("python3"))
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn add_streams_an_http_url_and_stdin() {
    let demo = demo_iso();
    each_backend("sources", |lib| {
        init(lib, &[]);
        let served = lib.path("www");
        fs::create_dir_all(&served).unwrap();
        fs::copy(&demo.iso, served.join("demo.iso")).unwrap();
        let http = HttpServer::start(&served);
        let url = format!("http://127.0.0.1:{}/demo.iso", http.port);
        let report = json_of(&run_ok(&mut lib.library(&["add", "web", &url, "--json"])));
        assert_eq!(report["digest"], digest_of(&demo.iso).as_str());
        assert_eq!(report["size"], fs::metadata(&demo.iso).unwrap().len());
        assert_get_matches(lib, "web", &demo.iso);
        // A missing URL is an error that names it, and adds nothing.
        let missing = format!("http://127.0.0.1:{}/nope.iso", http.port);
        let (code, _, stderr) = run_any(&mut lib.library(&["add", "web", &missing]));
        assert_eq!(code, 1);
        assert!(stderr.contains("nope.iso"), "{stderr}");
        drop(http);

        let stdin_report = json_of(&run_ok(
            lib.library(&["add", "piped", "-", "--json"])
                .stdin(fs::File::open(&demo.repack).unwrap()),
        ));
        assert_eq!(stdin_report["digest"], digest_of(&demo.repack).as_str());
        assert_get_matches(lib, "piped", &demo.repack);
        let history = library_json(lib, &["history", "web"]);
        assert_eq!(history_events(&history).len(), 1, "{history}");
    });
}

#[test]
fn commands_without_a_library_say_how_to_make_one() {
    each_backend("no-library", |lib| {
        let (code, _, stderr) = run_any(&mut lib.library(&["ls"]));
        assert_eq!(code, 1);
        assert!(stderr.contains("library init"), "{stderr}");
        init(lib, &[]);
        let (code, _, stderr) = run_any(&mut lib.library(&["init"]));
        assert_eq!(code, 1, "init over an existing library: {stderr}");
        let (code, _, stderr) = run_any(&mut lib.library(&["show", "nothing@1"]));
        assert_eq!(code, 1);
        assert!(stderr.contains("nothing"), "{stderr}");
        // Usage errors exit 2 (clap).
        let (code, _, _) = run_any(&mut lib.library(&["rollback", "x"]));
        assert_eq!(code, 2);
    });
}

#[test]
fn iso_extract_of_a_library_path_equals_the_extract_of_the_file() {
    let demo = demo_iso();
    each_backend("library-extract", |lib| {
        init(lib, &[]);
        add(lib, "demo", &demo.iso, &[]);
        let from_file = lib.path("from-file");
        let from_library = lib.path("from-library");
        run_ok(
            lib.vmedia()
                .args(["iso", "extract", "-q"])
                .arg(&demo.iso)
                .arg(&from_file),
        );
        run_ok(
            lib.vmedia()
                .args(["iso", "extract", "-q", "library:demo@1"])
                .arg(&from_library),
        );
        let listing = |root: &Path| {
            let out = run_ok(
                Command::new("find")
                    .arg(".")
                    .arg("-type")
                    .arg("f")
                    .current_dir(root),
            );
            let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            files.sort();
            files
        };
        let files = listing(&from_file);
        assert!(
            files.iter().any(|f| f.ends_with("isolinux.cfg")),
            "{files:?}"
        );
        assert_eq!(listing(&from_library), files);
        for file in &files {
            assert!(
                same_bytes(&from_file.join(file), &from_library.join(file)),
                "{file} differs"
            );
        }
    });
}

#[test]
fn add_flatten_stores_the_merged_content_of_a_disk_with_a_backing_file() {
    each_backend("library-flatten", |lib| {
        init(lib, &[]);
        // base.raw with content, an overlay qcow2 naming it (same folder) that zeroes 1 MiB.
        let base = lib.path("base.raw");
        fs::write(&base, pseudo_random(4 << 20, 41)).unwrap();
        let overlay = lib.path("overlay.qcow2");
        run_ok(
            lib.vmedia()
                .args([
                    "disk", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
                ])
                .arg(&overlay),
        );
        run_ok(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", "write -P 0 1M 1M"])
                .arg(&overlay),
        );

        // Without --flatten the layered disk is refused, naming its backing file.
        let (code, _, stderr) =
            run_any(&mut lib.library(&["add", "disk", overlay.to_str().unwrap()]));
        assert_ne!(code, 0);
        assert!(stderr.contains("base.raw"), "{stderr}");

        let report = add(lib, "disk", &overlay, &["--flatten"]);
        assert_eq!(report["kind"]["type"], "disk");
        assert_eq!(report["kind"]["format"], "raw");
        assert_eq!(report["kind"]["flattened_from"], "qcow2");
        let got = lib.path("got.raw");
        library_json(lib, &["get", "disk", "-o", got.to_str().unwrap()]);
        let mut want = fs::read(&base).unwrap();
        want[1 << 20..2 << 20].fill(0);
        assert_eq!(
            fs::read(&got).unwrap(),
            want,
            "the flattened version is not base + overlay"
        );
    });
}
