//! `vmedia library` under stress and attack: concurrent adders with gc running, damaged and
//! missing chunks (verify, get, repair), encryption at rest, signatures, and SIGKILL during add
//! and gc. Each test runs against both backends: a folder and SeaweedFS (a real S3 server).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::library::{
    add, digest_of, each_backend, ed25519_keypair, find_bytes, json_of, library_json,
    pseudo_random, same_bytes, TestLibrary,
};
use support::{run_and_kill, run_any, run_ok};

fn init(lib: &TestLibrary, extra: &[&str]) {
    run_ok(lib.library(&["init"]).args(extra));
}

/// `library verify --json`: (exit code, report).
fn verify(lib: &TestLibrary, extra: &[&str]) -> (i32, Value) {
    let out = lib
        .library(&["verify", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    (code, json_of(&out))
}

fn assert_verify_clean(lib: &TestLibrary, extra: &[&str]) {
    let (code, report) = verify(lib, extra);
    assert_eq!(code, 0, "verify is not clean: {report}");
}

/// Writes `len` bytes of distinct content for test image `i`.
fn image(lib: &TestLibrary, name: &str, len: usize, seed: u64) -> PathBuf {
    let p = lib.path(name);
    fs::write(&p, pseudo_random(len, seed)).unwrap();
    p
}

/// Chunk objects: what the store keeps under `chunks/`.
fn chunk_keys(lib: &TestLibrary) -> BTreeSet<String> {
    lib.objects()
        .into_iter()
        .filter(|k| k.starts_with("chunks/"))
        .collect()
}

/// The last path segment of a key, which names the chunk in reports.
fn chunk_id(key: &str) -> &str {
    let name = key.rsplit('/').next().unwrap();
    name.split('.').next().unwrap()
}

fn get_to(lib: &TestLibrary, spec: &str, out: &Path) -> (i32, String) {
    let (code, stdout, stderr) =
        run_any(&mut lib.library(&["get", spec, "-o", out.to_str().unwrap(), "--force"]));
    (code, format!("{stdout}{stderr}"))
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn eight_processes_adding_to_one_item_at_once_all_land_and_gc_during_adds_keeps_them() {
    each_backend("concurrency", |lib| {
        init(lib, &[]);
        // A shared part (dedup across the adders) and a distinct part per adder.
        let shared = pseudo_random(6 << 20, 1);
        let files: Vec<PathBuf> = (0..8u64)
            .map(|i| {
                let p = lib.path(&format!("adder{i}.img"));
                let mut data = shared.clone();
                data.extend_from_slice(&pseudo_random(2 << 20, 1000 + i));
                fs::write(&p, data).unwrap();
                p
            })
            .collect();
        // Garbage for gc to collect while the adds run: a version current only in 2020.
        let garbage = image(lib, "garbage.img", 4 << 20, 2);
        add(lib, "old", &garbage, &["--now", "2020-01-01T00:00:00Z"]);
        let newer = image(lib, "newer.img", 1 << 20, 3);
        add(lib, "old", &newer, &["--now", "2020-01-02T00:00:00Z"]);
        library_json(lib, &["prune"]);

        let stop = Arc::new(AtomicBool::new(false));
        let gc_thread = {
            let stop = stop.clone();
            let mut cmds = Vec::new();
            for _ in 0..50 {
                let mut c = lib.library(&["gc", "--json"]);
                c.stdout(Stdio::null()).stderr(Stdio::piped());
                cmds.push(c);
            }
            std::thread::spawn(move || {
                let mut runs = 0;
                for mut c in cmds {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let out = c.output().unwrap();
                    assert!(
                        out.status.success(),
                        "gc during adds failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    runs += 1;
                }
                runs
            })
        };
        let children: Vec<_> = files
            .iter()
            .map(|f| {
                lib.library(&["add", "shared", f.to_str().unwrap(), "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let reports: Vec<Value> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "a concurrent add failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                json_of(&out)
            })
            .collect();
        stop.store(true, Ordering::SeqCst);
        let gc_runs = gc_thread.join().unwrap();
        assert!(gc_runs >= 1, "gc never ran during the adds");

        let versions: BTreeSet<u64> = reports
            .iter()
            .map(|r| r["version"].as_u64().unwrap())
            .collect();
        assert_eq!(versions, (1..=8).collect(), "versions: {reports:?}");
        let history = library_json(lib, &["history", "shared"]);
        let events = history["events"].as_array().unwrap();
        assert_eq!(events.len(), 8, "{history}");
        // Each reported version holds exactly its adder's bytes.
        for (file, report) in files.iter().zip(&reports) {
            assert_eq!(report["digest"], digest_of(file).as_str());
            let spec = format!("shared@{}", report["version"]);
            let out = lib.path("check.img");
            let (code, text) = get_to(lib, &spec, &out);
            assert_eq!(code, 0, "{spec}: {text}");
            assert!(same_bytes(&out, file), "{spec} holds other bytes");
        }
        // One more gc after the adds: still nothing needed is gone.
        library_json(lib, &["gc"]);
        assert_verify_clean(lib, &[]);
    });
}

// ---------------------------------------------------------------------------------------------
// Corruption and repair

#[test]
fn flipped_and_deleted_chunks_are_named_with_their_versions_get_fails_and_repair_fixes_both() {
    each_backend("corruption", |lib| {
        init(lib, &[]);
        let other = image(lib, "other.img", 3 << 20, 10);
        let victim = image(lib, "victim.img", 6 << 20, 11);
        add(lib, "other", &other, &[]);
        let before = chunk_keys(lib);
        add(lib, "victim", &victim, &[]);
        let victim_only: Vec<String> = chunk_keys(lib).difference(&before).cloned().collect();
        assert!(
            victim_only.len() >= 2,
            "need two chunks only victim uses: {victim_only:?}"
        );
        let flipped = victim_only[0].clone();
        let deleted = victim_only[victim_only.len() - 1].clone();

        // A second library holding the same image: the source of good copies.
        let mirror = lib.sibling("mirror");
        run_ok(&mut mirror.library(&["init"]));
        add(&mirror, "victim", &victim, &[]);

        let mut bytes = lib.read_object(&flipped);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        lib.write_object(&flipped, &bytes);
        lib.delete_object(&deleted);

        let (code, report) = verify(lib, &[]);
        assert_eq!(code, 3, "verify must exit 3 on damage: {report}");
        let text = report.to_string();
        for key in [&flipped, &deleted] {
            assert!(
                text.contains(chunk_id(key)),
                "verify does not name {key}: {text}"
            );
        }
        assert!(
            text.contains("victim@1"),
            "verify does not name the broken version: {text}"
        );
        assert!(
            !text.contains("other@1"),
            "verify blames an intact version: {text}"
        );
        // verify of the intact item alone is clean.
        assert_verify_clean(lib, &["other"]);

        // Reading the damaged version fails and writes nothing; the intact one reads.
        let out = lib.path("out.img");
        let (code, text) = get_to(lib, "victim", &out);
        assert_eq!(code, 1, "get of a damaged version: {text}");
        assert!(!out.exists(), "get left a file behind");
        let (code, _, _) = run_any(lib.library(&["cat", "victim"]).stdout(Stdio::null()));
        assert_ne!(code, 0, "cat of a damaged version succeeded");
        let (code, text) = get_to(lib, "other", &out);
        assert_eq!(code, 0, "{text}");

        // repair --from the mirror fixes both chunks.
        let repair = library_json(lib, &["repair", "--from", &mirror.location]);
        let repair_text = repair.to_string();
        for key in [&flipped, &deleted] {
            assert!(
                repair_text.contains(chunk_id(key)),
                "repair does not name {key}: {repair_text}"
            );
        }
        assert_verify_clean(lib, &[]);
        let (code, text) = get_to(lib, "victim", &out);
        assert_eq!(code, 0, "{text}");
        assert!(same_bytes(&out, &victim));
    });
}

// ---------------------------------------------------------------------------------------------
// Encryption

#[test]
fn encrypted_library_hides_a_marker_refuses_a_wrong_key_and_detects_a_swapped_chunk() {
    each_backend("encryption", |lib| {
        let key = lib.path("library.key");
        fs::write(&key, pseudo_random(32, 77)).unwrap();
        let wrong = lib.path("wrong.key");
        fs::write(&wrong, pseudo_random(32, 78)).unwrap();
        let key_arg = key.to_str().unwrap();
        run_ok(&mut lib.library(&["init", "--encrypt", key_arg]));

        // An image with a known 64-byte marker at several places, in distinct chunks.
        let marker: Vec<u8> = b"VMEDIA-MARKER-"
            .iter()
            .copied()
            .chain(pseudo_random(50, 79))
            .collect();
        assert_eq!(marker.len(), 64);
        let mut data = pseudo_random(8 << 20, 80);
        for at in [0usize, 1 << 20, 5 << 20, (8 << 20) - 64] {
            data[at..at + 64].copy_from_slice(&marker);
        }
        let img = lib.path("secret.img");
        fs::write(&img, &data).unwrap();
        let report = add(lib, "secret", &img, &["--key", key_arg]);
        let digest = digest_of(&img);
        assert_eq!(report["digest"], digest.as_str());
        let hex_digest = digest.trim_start_matches("sha256:").to_string();

        // Nothing in the store reveals the content, the image digest or the item name's data.
        for (k, _) in lib.objects_with_sizes() {
            let object = lib.read_object(&k);
            assert!(find_bytes(&object, &marker).is_none(), "marker in {k}");
            assert!(
                find_bytes(&object, &marker[..16]).is_none(),
                "marker start in {k}"
            );
            assert!(
                find_bytes(&object, hex_digest.as_bytes()).is_none(),
                "digest in {k}"
            );
            assert!(!k.contains(&hex_digest[..16]), "digest in key {k}");
        }

        // No key and a wrong key are refused with a clear message.
        let (code, _, stderr) = run_any(&mut lib.library(&["ls"]));
        assert_eq!(code, 1);
        assert!(stderr.contains("--key"), "{stderr}");
        let (code, _, stderr) =
            run_any(&mut lib.library(&["ls", "--key", wrong.to_str().unwrap()]));
        assert_eq!(code, 1);
        assert!(stderr.contains("key"), "{stderr}");
        // The key from the environment works, as does library:NAME for the iso/disk commands.
        let out = lib.path("out.img");
        let status = lib
            .library(&["get", "secret", "-o", out.to_str().unwrap()])
            .env("VMEDIA_LIBRARY_KEY", &key)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(same_bytes(&out, &img));
        fs::remove_file(&out).unwrap();
        let (code, stdout, stderr) = run_any(lib.vmedia().env("VMEDIA_LIBRARY_KEY", &key).args([
            "disk",
            "compare",
            "library:secret",
            img.to_str().unwrap(),
        ]));
        assert_eq!(code, 0, "{stdout}{stderr}");

        // Swap two chunk objects: authenticated encryption notices.
        let chunks: Vec<String> = lib
            .objects()
            .into_iter()
            .filter(|k| k.starts_with("chunks/"))
            .collect();
        assert!(chunks.len() >= 2, "{chunks:?}");
        let (a, b) = (&chunks[0], &chunks[chunks.len() - 1]);
        let (bytes_a, bytes_b) = (lib.read_object(a), lib.read_object(b));
        lib.write_object(a, &bytes_b);
        lib.write_object(b, &bytes_a);
        let out = lib
            .library(&["verify", "--json", "--key", key_arg])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "verify missed a swapped chunk");
        let text = json_of(&out).to_string();
        assert!(
            text.contains(chunk_id(a)) && text.contains(chunk_id(b)),
            "{text}"
        );
        let swapped_out = lib.path("swapped.img");
        let (code, _, _) = run_any(&mut lib.library(&[
            "get",
            "secret",
            "-o",
            swapped_out.to_str().unwrap(),
            "--key",
            key_arg,
        ]));
        assert_eq!(code, 1, "get of a version with swapped chunks succeeded");
        assert!(!swapped_out.exists(), "get left a file behind");
    });
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[test]
fn require_signed_refuses_unsigned_and_untrusted_adds_and_a_tampered_manifest_fails() {
    each_backend("signatures", |lib| {
        let keys = lib.path("keys");
        fs::create_dir_all(&keys).unwrap();
        let (signer, signer_pub) = ed25519_keypair(&keys, "release");
        let (stranger, _) = ed25519_keypair(&keys, "stranger");
        run_ok(&mut lib.library(&["init", "--require-signed", signer_pub.to_str().unwrap()]));
        let img = image(lib, "signed.img", 2 << 20, 90);

        let (code, _, stderr) = run_any(&mut lib.library(&["add", "app", img.to_str().unwrap()]));
        assert_eq!(code, 1, "unsigned add accepted");
        assert!(stderr.contains("sign"), "{stderr}");
        let (code, _, stderr) = run_any(&mut lib.library(&[
            "add",
            "app",
            img.to_str().unwrap(),
            "--sign-key",
            stranger.to_str().unwrap(),
        ]));
        assert_eq!(code, 1, "add signed by an untrusted key accepted");
        assert!(!stderr.is_empty());
        let listed = library_json(lib, &["ls", "--all"]).to_string();
        assert!(
            !listed.contains("\"app\""),
            "a refused add left an item: {listed}"
        );

        let report = add(lib, "app", &img, &["--sign-key", signer.to_str().unwrap()]);
        assert_eq!(report["version"], 1);

        // Export and check offline.
        let manifest = lib.path("app.manifest");
        run_ok(&mut lib.library(&["export-manifest", "app", "-o", manifest.to_str().unwrap()]));
        let ok = json_of(&run_ok(lib.vmedia().args([
            "library",
            "verify-signature",
            manifest.to_str().unwrap(),
            "--pubkey",
            signer_pub.to_str().unwrap(),
            "--json",
        ])));
        assert!(ok.to_string().contains(&digest_of(&img)), "{ok}");

        // A tampered manifest fails: change one digit of the recorded size or digest.
        let original = fs::read(&manifest).unwrap();
        let digest_hex = digest_of(&img).trim_start_matches("sha256:").to_string();
        let at = find_bytes(&original, digest_hex.as_bytes())
            .expect("the exported manifest names the image digest");
        let mut tampered = original.clone();
        tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
        let tampered_path = lib.path("tampered.manifest");
        fs::write(&tampered_path, &tampered).unwrap();
        let (code, stdout, stderr) = run_any(lib.vmedia().args([
            "library",
            "verify-signature",
            tampered_path.to_str().unwrap(),
            "--pubkey",
            signer_pub.to_str().unwrap(),
        ]));
        assert_eq!(code, 3, "tampered manifest accepted: {stdout}{stderr}");
        // The right manifest against the wrong key fails too.
        let stranger_pub = keys.join("stranger.pub.pem");
        let (code, _, _) = run_any(lib.vmedia().args([
            "library",
            "verify-signature",
            manifest.to_str().unwrap(),
            "--pubkey",
            stranger_pub.to_str().unwrap(),
        ]));
        assert_eq!(code, 3, "manifest accepted under another key");

        // A manifest tampered inside the store is refused at read.
        let stored: Vec<String> = lib
            .objects()
            .into_iter()
            .filter(|k| k.starts_with("manifests/"))
            .filter(|k| find_bytes(&lib.read_object(k), digest_hex.as_bytes()).is_some())
            .collect();
        assert_eq!(
            stored.len(),
            1,
            "the version's manifest in the store: {stored:?}"
        );
        for key in &stored {
            let mut bytes = lib.read_object(key);
            let at = find_bytes(&bytes, digest_hex.as_bytes()).unwrap();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            lib.write_object(key, &bytes);
        }
        let out = lib.path("read.img");
        let (code, text) = get_to(lib, "app", &out);
        assert_eq!(
            code, 1,
            "a version with a tampered manifest was read: {text}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Crash safety

#[test]
fn sigkill_during_add_and_gc_leaves_a_library_that_verifies_clean_with_every_reported_version() {
    each_backend("sigkill", |lib| {
        init(lib, &[]);
        // 48 MiB, enough that an add takes long enough to be interrupted at several points.
        let big = image(lib, "big.img", 48 << 20, 500);
        let mut reported: Vec<(String, PathBuf)> = Vec::new();
        let first = add(lib, "item", &big, &[]);
        reported.push((format!("item@{}", first["version"]), big.clone()));

        let delays_ms = [20u64, 80, 200, 400, 800, 1500];
        for (round, delay) in delays_ms.iter().enumerate() {
            let img = image(
                lib,
                &format!("round{round}.img"),
                48 << 20,
                600 + round as u64,
            );
            let mut cmd = lib.library(&["add", "item", img.to_str().unwrap(), "--json"]);
            cmd.stdin(Stdio::null());
            if let Some(out) = run_and_kill(cmd, Duration::from_millis(*delay)) {
                assert!(
                    out.status.success(),
                    "add failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let r = json_of(&out);
                reported.push((format!("item@{}", r["version"]), img.clone()));
            }
            assert_verify_clean(lib, &[]);
            for (spec, file) in &reported {
                let out = lib.path("check.img");
                let (code, text) = get_to(lib, spec, &out);
                assert_eq!(
                    code, 0,
                    "reported version {spec} lost after a SIGKILL: {text}"
                );
                assert!(same_bytes(&out, file), "{spec} changed after a SIGKILL");
            }
        }

        // gc: make garbage, then kill gc at several points; every reported version must
        // still read back. Garbage: a version that was current only in 2020 (injected clock),
        // which the 72-hour window no longer keeps once a newer version replaced it.
        for (round, delay) in [10u64, 60, 250, 1000].iter().enumerate() {
            let name = format!("junk{round}");
            let junk = image(
                lib,
                &format!("junk{round}.img"),
                24 << 20,
                700 + round as u64,
            );
            add(lib, &name, &junk, &["--now", "2020-01-01T00:00:00Z"]);
            let newer = image(
                lib,
                &format!("newer{round}.img"),
                1 << 20,
                800 + round as u64,
            );
            add(lib, &name, &newer, &["--now", "2020-01-02T00:00:00Z"]);
            library_json(lib, &["prune"]);
            let mut cmd = lib.library(&["gc", "--json"]);
            cmd.stdin(Stdio::null());
            let _ = run_and_kill(cmd, Duration::from_millis(*delay));
            assert_verify_clean(lib, &[]);
            for (spec, file) in &reported {
                let out = lib.path("check.img");
                let (code, text) = get_to(lib, spec, &out);
                assert_eq!(code, 0, "{spec} lost after a SIGKILL during gc: {text}");
                assert!(
                    same_bytes(&out, file),
                    "{spec} changed after a SIGKILL during gc"
                );
            }
        }
        // A final, uninterrupted gc completes the interrupted ones.
        library_json(lib, &["gc"]);
        assert_verify_clean(lib, &[]);
    });
}

/// The item's history as JSON, with the fields that must never change once written: every
/// version (number, digest, size) and every event (time, kind, version).
fn history_facts(lib: &TestLibrary, name: &str) -> (Value, Vec<String>, Vec<String>) {
    let history = library_json(lib, &["history", name]);
    let versions = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{}|{}|{}", v["version"], v["digest"], v["size"]))
        .collect();
    let events = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}|{}|{}", e["time"], e["kind"], e["version"]))
        .collect();
    (history, versions, events)
}

/// `before` is a prefix of `after`: what was in the history is still there, in order.
fn assert_kept(before: &[String], after: &[String], what: &str) {
    assert!(
        after.len() >= before.len() && after[..before.len()] == *before,
        "{what} lost or changed after a SIGKILL:\nbefore {before:?}\nafter  {after:?}"
    );
}

#[test]
fn sigkill_during_rollback_and_prune_leaves_history_intact_and_nothing_half_done() {
    each_backend("sigkill-timeline", |lib| {
        init(lib, &[]);
        let mut files = Vec::new();
        for v in 0..3u64 {
            let file = image(lib, &format!("v{v}.img"), 3 << 20, 900 + v);
            add(lib, "item", &file, &[]);
            files.push(file);
        }
        // Rollback, killed at several points: afterwards the item is current at the old or the
        // new version (never anything else), and no version or event was lost.
        for (round, delay) in [0u64, 2, 5, 10, 20, 40, 80].iter().enumerate() {
            let (before, versions, events) = history_facts(lib, "item");
            let current = before["current"].as_u64().unwrap();
            let target = if current == 1 { 2 } else { 1 };
            let mut cmd = lib.library(&["rollback", "item", "--to", &target.to_string()]);
            cmd.stdin(Stdio::null());
            let finished = run_and_kill(cmd, Duration::from_millis(*delay));
            let (after, versions_after, events_after) = history_facts(lib, "item");
            assert_kept(&versions, &versions_after, "versions");
            assert_kept(&events, &events_after, "events");
            let now = after["current"].as_u64().unwrap();
            assert!(
                now == current || now == target,
                "round {round}: current is {now}, neither {current} nor {target}"
            );
            if let Some(out) = finished {
                assert!(out.status.success(), "rollback failed: {out:?}");
                assert_eq!(now, target, "a rollback that reported success did not land");
            }
            // An event was added exactly when the current version changed.
            assert_eq!(
                events_after.len(),
                events.len() + usize::from(now != current),
                "round {round}: {events_after:?}"
            );
            assert_verify_clean(lib, &[]);
        }

        // Prune, killed at several points: versions current only in 2020 are released (their
        // records say so once prune lands), every version still kept reads back, and history
        // keeps every event.
        for v in 0..2u64 {
            let old = image(lib, &format!("old{v}.img"), 2 << 20, 950 + v);
            let time = format!("2020-01-0{}T00:00:00Z", v + 1);
            add(lib, "old", &old, &["--now", &time]);
        }
        let newest = image(lib, "newest.img", 1 << 20, 960);
        add(lib, "old", &newest, &["--now", "2020-01-03T00:00:00Z"]);
        for delay in [0u64, 2, 5, 10, 20, 40] {
            let (_, versions, events) = history_facts(lib, "old");
            let mut cmd = lib.library(&["prune", "--json"]);
            cmd.stdin(Stdio::null());
            let _ = run_and_kill(cmd, Duration::from_millis(delay));
            let (after, versions_after, events_after) = history_facts(lib, "old");
            assert_kept(&versions, &versions_after, "versions");
            assert_eq!(events, events_after, "prune changed the item's events");
            assert_eq!(after["current"].as_u64(), Some(3));
            assert_verify_clean(lib, &[]);
            let out = lib.path("newest-check.img");
            let (code, text) = get_to(lib, "old", &out);
            assert_eq!(code, 0, "the current version is unreadable: {text}");
            assert!(same_bytes(&out, &newest));
            for (v, file) in files.iter().enumerate() {
                let spec = format!("item@{}", v + 1);
                let (code, text) = get_to(lib, &spec, &out);
                assert_eq!(code, 0, "{spec} lost: {text}");
                assert!(same_bytes(&out, file), "{spec} changed");
            }
        }
        // A final prune completes: the two 2020 versions are released, nothing else.
        library_json(lib, &["prune"]);
        let (after, _, _) = history_facts(lib, "old");
        let pruned: Vec<bool> = after["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| !v["pruned"].is_null())
            .collect();
        assert_eq!(pruned, [true, true, false]);
        library_json(lib, &["gc"]);
        assert_verify_clean(lib, &[]);
    });
}
