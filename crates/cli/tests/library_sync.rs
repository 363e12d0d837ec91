//! `vmedia library sync` between two library locations: folder to folder, S3 to S3 and folder
//! to S3 (SeaweedFS), incremental transfer of a repacked version, a SIGKILLed sync that
//! resumes without showing a half-arrived version, dual-active changes on both sites that
//! converge, an encrypted library synced without its key, and `sync-status`.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::library::{
    add, digest_of, each_backend, json_of, library_json, pseudo_random, Backend, TestLibrary,
};
use support::{run_and_kill, run_any, run_ok};

fn init(lib: &TestLibrary, extra: &[&str]) {
    run_ok(lib.library(&["init"]).args(extra));
}

/// `library sync --to DEST --json` run with `src`'s settings (its location is the source).
fn sync(src: &TestLibrary, dest: &TestLibrary, extra: &[&str]) -> Value {
    let mut cmd = dest.vmedia();
    cmd.args([
        "library",
        "sync",
        "--from",
        &src.location,
        "--to",
        &dest.location,
        "--json",
    ])
    .args(extra);
    json_of(&run_ok(&mut cmd))
}

fn image(lib: &TestLibrary, name: &str, data: &[u8]) -> PathBuf {
    let path = lib.path(name);
    fs::write(&path, data).unwrap();
    path
}

/// `data` with `insert` bytes of new content spliced in at `at`: a "repacked" image.
fn repacked(data: &[u8], at: usize, insert: usize, seed: u64) -> Vec<u8> {
    let mut out = data[..at].to_vec();
    out.extend_from_slice(&pseudo_random(insert, seed));
    out.extend_from_slice(&data[at..]);
    out
}

fn verify_clean(lib: &TestLibrary, extra: &[&str]) {
    let out = lib
        .library(&["verify", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify is not clean: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The facts two synced sites must agree on for an item: version digests (numbers are per
/// site), events as (time, kind, digest, actor) in order, and the current digest.
fn converged_view(lib: &TestLibrary, name: &str) -> (BTreeSet<String>, Vec<String>, Value) {
    let history = library_json(lib, &["history", name]);
    let versions = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["digest"].as_str().unwrap().to_string())
        .collect();
    let events = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {} {} {}", e["time"], e["kind"], e["digest"], e["actor"]))
        .collect();
    let current = history["current"].as_u64().map_or(Value::Null, |n| {
        history["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"].as_u64() == Some(n))
            .map(|v| v["digest"].clone())
            .unwrap()
    });
    (versions, events, current)
}

fn got_digest(lib: &TestLibrary, spec: &str) -> String {
    let out = lib.path(&format!("got-{}", spec.replace('@', "-")));
    let _ = fs::remove_file(&out);
    run_ok(lib.library(&["get", spec, "-o"]).arg(&out));
    digest_of(&out)
}

fn first_then_repacked(src: &TestLibrary, dest: &TestLibrary) {
    init(src, &[]);
    let data = pseudo_random(24 << 20, 11);
    let first = image(src, "v1.img", &data);
    add(src, "disk", &first, &[]);
    add(
        src,
        "other",
        &image(src, "o.img", &pseudo_random(3 << 20, 12)),
        &[],
    );
    let one = sync(src, dest, &[]);
    assert_eq!(one["created_destination"], true, "{one}");
    assert_eq!(one["mode"], "full");
    let sent_first = one["bytes_sent"].as_u64().unwrap();
    assert!(sent_first > 26 << 20, "{one}");
    assert_eq!(one["chunks_sent"], one["chunks_verified"]);
    assert_eq!(one["pending_chunks"], 0);
    verify_clean(dest, &[]);
    assert_eq!(got_digest(dest, "disk"), digest_of(&first));

    let second = image(src, "v2.img", &repacked(&data, 9 << 20, 1 << 20, 13));
    add(src, "disk", &second, &[]);
    let two = sync(src, dest, &[]);
    let sent_second = two["bytes_sent"].as_u64().unwrap();
    assert!(
        sent_second * 10 <= sent_first,
        "second sync sent {sent_second} bytes, more than 10% of the first's {sent_first}: {two}"
    );
    assert_eq!(two["versions_copied"], 1, "{two}");
    assert!(two["chunks_skipped"].as_u64().unwrap() > 0);
    verify_clean(dest, &[]);
    assert_eq!(got_digest(dest, "disk"), digest_of(&second));
    assert_eq!(got_digest(dest, "disk@1"), digest_of(&first));
    assert_eq!(converged_view(src, "disk"), converged_view(dest, "disk"));

    // Nothing new: nothing travels.
    let three = sync(src, dest, &[]);
    assert_eq!(three["chunks_sent"], 0, "{three}");
    assert_eq!(three["items"].as_array().unwrap().len(), 0, "{three}");
}

#[test]
fn sync_copies_a_library_and_a_repacked_version_moves_at_most_ten_percent() {
    each_backend("sync-incremental", |lib| {
        let dest = lib.sibling("replica");
        first_then_repacked(lib, &dest);
    });
}

#[test]
fn sync_from_a_folder_to_s3_and_back() {
    let folder = TestLibrary::new(Backend::Folder, "sync-f2s");
    let s3 = TestLibrary::new(Backend::S3, "sync-f2s");
    first_then_repacked(&folder, &s3);
    // And back into a fresh folder from S3.
    let back = TestLibrary::new(Backend::Folder, "sync-s2f");
    let mut cmd = s3.vmedia();
    cmd.args(["library", "sync", "--to", &back.location, "--json"]);
    let report = json_of(&run_ok(&mut cmd));
    assert_eq!(report["pending_chunks"], 0, "{report}");
    assert_eq!(converged_view(&s3, "disk"), converged_view(&back, "disk"));
}

#[test]
fn an_interrupted_sync_resumes_without_resending_and_never_shows_a_half_arrived_version() {
    each_backend("sync-resume", |lib| {
        let dest = lib.sibling("replica");
        init(lib, &[]);
        let source = image(lib, "big.img", &pseudo_random(40 << 20, 21));
        let digest = digest_of(&source);
        add(lib, "big", &source, &[]);

        // A reader polls the destination throughout: whenever the item is listed, the whole
        // version must read back.
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let poller = {
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            let dest_location = dest.location.clone();
            let env = dest.env();
            let out = dest.path("polled.img");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut ls = support::vmedia();
                    ls.envs(env.clone()).args([
                        "--library",
                        &dest_location,
                        "library",
                        "ls",
                        "--json",
                    ]);
                    let listed = ls.output().unwrap();
                    let text = String::from_utf8_lossy(&listed.stdout).to_string();
                    if listed.status.success() && text.contains("\"big\"") {
                        let _ = fs::remove_file(&out);
                        let mut get = support::vmedia();
                        get.envs(env.clone()).args([
                            "--library",
                            &dest_location,
                            "library",
                            "get",
                            "big",
                            "-o",
                        ]);
                        get.arg(&out);
                        let got = get.output().unwrap();
                        seen.lock().unwrap().push(if got.status.success() {
                            format!("ok {}", digest_of(&out))
                        } else {
                            format!("FAILED {}", String::from_utf8_lossy(&got.stderr))
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };

        // Throttled so the kill lands mid-way (40 MiB at 8 MiB/s: ~5 s).
        let mut killed_runs = 0;
        for delay in [1500u64, 1500] {
            let mut cmd = dest.vmedia();
            cmd.args([
                "library",
                "sync",
                "--from",
                &lib.location,
                "--to",
                &dest.location,
                "--json",
                "--bwlimit",
                "8M",
            ]);
            if run_and_kill(cmd, Duration::from_millis(delay)).is_none() {
                killed_runs += 1;
            }
        }
        assert!(killed_runs > 0, "the sync finished before any kill");
        // An S3 server can still finish a PUT whose body arrived before the kill, so the
        // destination's chunks are listed once the listing has settled.
        let chunks = || -> BTreeSet<String> {
            dest.objects()
                .into_iter()
                .filter(|k| k.starts_with("chunks/"))
                .collect()
        };
        let mut before = chunks();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let again = chunks();
            if again == before {
                break;
            }
            before = again;
        }
        assert!(!before.is_empty(), "no chunk arrived before the kill");
        let resumed = sync(lib, &dest, &[]);
        stop.store(true, Ordering::Relaxed);
        poller.join().unwrap();

        let total = library_json(lib, &["show", "big"])["chunks"]
            .as_u64()
            .unwrap();
        let skipped = resumed["chunks_skipped"].as_u64().unwrap();
        let sent = resumed["chunks_sent"].as_u64().unwrap();
        // Every chunk verified on the destination before the kill is skipped, never re-sent.
        assert_eq!(skipped, before.len() as u64, "{resumed}");
        assert_eq!(skipped + sent, total, "{resumed}");
        verify_clean(&dest, &[]);
        assert_eq!(got_digest(&dest, "big"), digest);
        for observation in seen.lock().unwrap().iter() {
            assert_eq!(
                observation,
                &format!("ok {digest}"),
                "a reader saw a half-arrived version"
            );
        }
    });
}

#[test]
fn dual_active_adds_and_rollbacks_on_both_sites_converge() {
    let a = TestLibrary::new(Backend::Folder, "sync-dual");
    let b = a.sibling("site-b");
    init(&a, &[]);
    let v1 = image(&a, "v1", &pseudo_random(2 << 20, 31));
    add(&a, "item", &v1, &[]);
    sync(&a, &b, &[]);

    // Apart: both sites add, roll back and remove.
    let on_a = image(&a, "a2", &pseudo_random(2 << 20, 32));
    let on_b = image(&b, "b2", &pseudo_random(2 << 20, 33));
    let on_b3 = image(&b, "b3", &pseudo_random(2 << 20, 34));
    add(&a, "item", &on_a, &[]);
    add(&b, "item", &on_b, &[]);
    add(&b, "item", &on_b3, &[]);
    run_ok(&mut b.library(&["rollback", "item", "--to", "1"]));
    add(
        &a,
        "only-a",
        &image(&a, "x", &pseudo_random(1 << 20, 35)),
        &[],
    );
    add(
        &b,
        "only-b",
        &image(&b, "y", &pseudo_random(1 << 20, 36)),
        &[],
    );
    run_ok(&mut a.library(&["rm", "only-a"]));
    // The last change of "item" anywhere: a rollback on A to its own version 2.
    std::thread::sleep(Duration::from_millis(20));
    run_ok(&mut a.library(&["rollback", "item", "--to", "2"]));

    let history_a_before = library_json(&a, &["history", "item"]);
    sync(&a, &b, &[]);
    sync(&b, &a, &[]);
    for name in ["item", "only-a", "only-b"] {
        assert_eq!(converged_view(&a, name), converged_view(&b, name), "{name}");
    }
    let (versions, events, current) = converged_view(&a, "item");
    assert_eq!(
        versions.len(),
        4,
        "every version made on either side: {versions:?}"
    );
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(current, Value::String(digest_of(&on_a)));
    // A number once given at a site keeps its meaning there.
    assert_eq!(got_digest(&a, "item@2"), digest_of(&on_a));
    assert_eq!(got_digest(&b, "item@2"), digest_of(&on_b));
    let history_a = library_json(&a, &["history", "item"]);
    for (before, after) in history_a_before["versions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(history_a["versions"].as_array().unwrap())
    {
        assert_eq!(before["digest"], after["digest"]);
    }
    assert_eq!(library_json(&b, &["history", "only-a"])["removed"], true);
    verify_clean(&a, &[]);
    verify_clean(&b, &[]);

    // Converged: another round both ways changes nothing.
    let again = sync(&a, &b, &[]);
    assert_eq!(again["items"].as_array().unwrap().len(), 0, "{again}");
    let again = sync(&b, &a, &[]);
    assert_eq!(again["items"].as_array().unwrap().len(), 0, "{again}");

    // Status: A's record of B has a success and no lag; a new change here shows as lag.
    let status = library_json(&a, &["sync-status"]);
    let peer = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["direction"] == "to")
        .cloned()
        .unwrap_or_else(|| panic!("no outgoing peer: {status}"));
    assert!(peer["last_success"].is_string(), "{peer}");
    assert_eq!(peer["last_error"], Value::Null);
    assert_eq!(peer["lag_seconds"], 0, "{peer}");
    std::thread::sleep(Duration::from_millis(1100));
    run_ok(&mut a.library(&["rollback", "item", "--to", "1"]));
    std::thread::sleep(Duration::from_millis(1100));
    let status = library_json(&a, &["sync-status"]);
    let peer = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["direction"] == "to")
        .cloned()
        .unwrap();
    assert_eq!(peer["pending_events"], 1, "{peer}");
    assert!(peer["lag_seconds"].as_u64().unwrap() >= 1, "{peer}");
}

#[test]
fn an_encrypted_library_syncs_without_its_key() {
    let a = TestLibrary::new(Backend::Folder, "sync-sealed");
    let b = a.sibling("replica");
    let key = a.path("lib.key");
    fs::write(&key, pseudo_random(32, 41)).unwrap();
    let key_text = key.display().to_string();
    run_ok(&mut a.library(&["--key", &key_text, "init", "--encrypt", &key_text]));
    let data = image(&a, "img", &pseudo_random(4 << 20, 42));
    run_ok(&mut a.library(&["--key", &key_text, "add", "sealed", data.to_str().unwrap()]));

    let report = sync(&a, &b, &[]);
    assert_eq!(report["mode"], "opaque", "{report}");
    assert_eq!(report["created_destination"], true);
    assert!(report["chunks_sent"].as_u64().unwrap() > 0);
    verify_clean(&b, &["--key", &key_text]);
    let out = b.path("got");
    run_ok(
        b.library(&["--key", &key_text, "get", "sealed", "-o"])
            .arg(&out),
    );
    assert_eq!(digest_of(&out), digest_of(&data));

    // A second add on A reaches B key-less too (B's timeline is the one this sync wrote).
    let more = image(&a, "img2", &pseudo_random(4 << 20, 43));
    run_ok(&mut a.library(&["--key", &key_text, "add", "sealed", more.to_str().unwrap()]));
    let report = sync(&a, &b, &[]);
    assert_eq!(report["conflicts"].as_array().unwrap().len(), 0, "{report}");
    let out2 = b.path("got2");
    run_ok(
        b.library(&["--key", &key_text, "get", "sealed", "-o"])
            .arg(&out2),
    );
    assert_eq!(digest_of(&out2), digest_of(&more));

    // A library encrypted under another key is refused, with the reason.
    let c = a.sibling("other");
    let other_key = a.path("other.key");
    fs::write(&other_key, pseudo_random(32, 44)).unwrap();
    let other_text = other_key.display().to_string();
    run_ok(&mut c.library(&["--key", &other_text, "init", "--encrypt", &other_text]));
    let mut cmd = c.vmedia();
    cmd.args([
        "library",
        "sync",
        "--from",
        &a.location,
        "--to",
        &c.location,
    ]);
    let (code, _, stderr) = run_any(&mut cmd);
    assert_eq!(code, 1);
    assert!(stderr.contains("different keys"), "{stderr}");
}

/// Whether `lib` lists an item called `name` (`library ls --json`).
fn lists(lib: &TestLibrary, name: &str) -> bool {
    let out = lib.library(&["ls", "--json"]).output().unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("\"{name}\""))
}

/// `vmedia token create NAME --role ROLE` on a daemon's state folder; the token.
fn token(lib: &TestLibrary, state: &std::path::Path, name: &str, role: &str) -> String {
    let out = run_ok(
        lib.vmedia()
            .args(["token", "create", name, "--role", role, "--state"])
            .arg(state),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_daemon_is_a_sync_peer_and_serve_replicates_both_ways() {
    use support::serve::{free_port, Daemon, ServeOptions};
    let a = TestLibrary::new(Backend::Folder, "site-a");
    init(&a, &[]);
    let alpha = image(&a, "alpha.img", &pseudo_random(3 << 20, 71));
    add(&a, "alpha", &alpha, &[]);
    let b = a.sibling("site-b");
    init(&b, &[]);

    // Site B's daemon: its library is a sync location at https://127.0.0.1:PORT.
    let b_https = free_port();
    let daemon_b = Daemon::start(
        b.vmedia(),
        &ServeOptions {
            nbd: false,
            extra: vec!["--https-port".into(), b_https.to_string()],
            ..ServeOptions::default()
        },
    );
    let b_url = format!("https://127.0.0.1:{b_https}");
    let admin = token(&b, daemon_b.state.path(), "replicator", "administrator");
    let reader = token(&b, daemon_b.state.path(), "watcher", "readonly");
    let cert = daemon_b.state.path().join("tls/cert.pem");

    // One-off sync to the daemon, its self-signed certificate trusted by file.
    let mut cmd = a.vmedia();
    cmd.args(["library", "sync", "--from", &a.location, "--to", &b_url])
        .args(["--peer-token", &admin, "--json", "--peer-ca-cert"])
        .arg(&cert);
    let report = json_of(&run_ok(&mut cmd));
    assert_eq!(report["versions_copied"], 1, "{report}");
    assert!(report["chunks_sent"].as_u64().unwrap() > 0, "{report}");
    assert!(lists(&b, "alpha"));
    assert_eq!(got_digest(&b, "alpha"), digest_of(&alpha));
    // Again: nothing travels.
    let again = json_of(&run_ok(&mut cmd));
    assert_eq!(again["chunks_sent"], 0, "{again}");

    // A readonly token may not write the store: a clear refusal, nothing changed.
    let mut refused = a.vmedia();
    refused
        .args(["library", "sync", "--from", &a.location, "--to", &b_url])
        .args(["--peer-token", &reader, "--peer-insecure"]);
    let (code, _, stderr) = run_any(&mut refused);
    assert_ne!(code, 0);
    assert!(stderr.contains("403"), "{stderr}");
    // Without trusting the certificate, TLS refuses the self-signed peer.
    let mut untrusted = a.vmedia();
    untrusted
        .args(["library", "sync", "--from", &a.location, "--to", &b_url])
        .args(["--peer-token", &admin]);
    let (code, _, stderr) = run_any(&mut untrusted);
    assert_ne!(code, 0, "{stderr}");

    // Site A's daemon pushes to B and pulls from C, every second.
    let c = a.sibling("site-c");
    init(&c, &[]);
    let gamma = image(&c, "gamma.img", &pseudo_random(1 << 20, 73));
    add(&c, "gamma", &gamma, &[]);
    let daemon_a = Daemon::start(
        a.vmedia(),
        &ServeOptions {
            nbd: false,
            extra: vec![
                "--replicate-to".into(),
                b_url.clone(),
                "--mirror-from".into(),
                c.location.clone(),
                "--replicate-interval".into(),
                "1s".into(),
                "--peer-token".into(),
                admin.clone(),
                "--peer-ca-cert".into(),
                cert.display().to_string(),
            ],
            ..ServeOptions::default()
        },
    );
    let beta = image(&a, "beta.img", &pseudo_random(2 << 20, 72));
    add(&a, "beta", &beta, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(lists(&b, "beta") && lists(&a, "gamma") && lists(&b, "gamma")) {
        assert!(
            std::time::Instant::now() < deadline,
            "replication did not catch up in 60 s:\n{}",
            daemon_a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(got_digest(&b, "beta"), digest_of(&beta));
    assert_eq!(got_digest(&a, "gamma"), digest_of(&gamma));
    // The daemon's metrics show both peers, their last success and a caught-up lag.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = daemon_a.metrics();
        let successes = metrics
            .lines()
            .filter(|l| l.starts_with("vmedia_replication_last_success_timestamp_seconds{"))
            .count();
        let lag_zero = metrics
            .lines()
            .any(|l| l.starts_with("vmedia_replication_lag_seconds{") && l.ends_with(" 0"));
        if successes == 2 && lag_zero {
            assert!(metrics.contains("direction=\"push\""), "{metrics}");
            assert!(metrics.contains("direction=\"pull\""), "{metrics}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no caught-up replication in /metrics:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon_a.stop();
    daemon_b.stop();
}
