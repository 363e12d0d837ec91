//! Two sites under cut links (issue 12, "Proof"): each site is a private network namespace with
//! its own folder library and its own `vmedia serve`, joined by one veth pair the test takes
//! down and up. Proven here:
//! - a 1 GiB library of 5 images replicates A to B while B's link is cut at about 30%, 60% and
//!   90%: the sync completes, B verifies clean, no chunk travels twice, a reader of B never sees
//!   a half-arrived version; then a repacked ISO moves less than 10% of the first sync's bytes,
//!   and the dry-run report, B's /metrics and the bytes that landed on B agree;
//! - 20 rounds of concurrent adds, rollbacks and removals on both sites with the link flapping
//!   (seeded) end with identical timelines holding every version and event made;
//! - a rollback on A becomes B's current version within a bound of a few replication intervals.

#[path = "support/netboot.rs"]
mod nb;
#[path = "support/sites.rs"]
mod sites;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sites::{add_file, add_generated, metric_with, pair, view, write_blocks, Rng, Site};
use support::{require_tool, run_ok};

/// Raw images of the 1 GiB library: 3 x 288 MiB, plus two ISOs of 96 MiB of content each.
const RAW_BLOCKS: u64 = 288;
const ISO_BLOCKS: u64 = 96;

/// `library sync --dry-run --json` run on site `to` (inside its namespace), from `from`'s daemon:
/// what a sync would move now.
fn dry_run(from: &Site, to: &Site) -> Value {
    let mut cmd = to.vmedia_in_ns(from);
    cmd.args(["library", "sync", "--from", &from.url(), "--to"])
        .arg(&to.library)
        .args(["--dry-run", "--json"]);
    // Exit 4: something is pending, which is what a plan before a sync shows.
    let out = cmd.output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 4)),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until `done` holds, failing with `what` and both daemons' logs after `limit`.
fn wait_for(what: &str, limit: Duration, sites: [&Site; 2], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n--- site a\n{}\n--- site b\n{}",
            sites[0].log(),
            sites[1].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An ISO made with `vmedia iso create` from a folder holding `blocks` MiB of image `seed`.
fn make_iso(site: &Site, name: &str, seed: u64, blocks: u64) -> std::path::PathBuf {
    let src = site.dir.path().join(format!("{name}-src"));
    std::fs::create_dir_all(src.join("data")).unwrap();
    let mut file = std::fs::File::create(src.join("data/payload.bin")).unwrap();
    write_blocks(&mut file, seed, blocks);
    std::fs::write(src.join("README.TXT"), format!("{name}\n")).unwrap();
    let iso = site.dir.path().join(format!("{name}.iso"));
    run_ok(
        support::vmedia()
            .args(["iso", "create", "-V", name, "-o"])
            .arg(&iso)
            .arg(&src),
    );
    std::fs::remove_dir_all(&src).unwrap();
    iso
}

/// A reader of B's library throughout a sync: every (item, digest) it sees listed is
/// verified at once (`library verify NAME`: every chunk of every version read and hashed).
/// Returns the stop flag and the thread, which yields what it saw.
fn reader_of(site: &Site) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let library = site.library.clone();
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut observations = Vec::new();
        let command = |args: &[&str]| {
            let mut cmd = support::vmedia();
            cmd.env_remove("VMEDIA_LIBRARY_KEY")
                .env("VMEDIA_LIBRARY", &library)
                .arg("library")
                .args(args);
            cmd.output().unwrap()
        };
        loop {
            // One last pass after the stop flag, so the latest version is read too.
            let stopping = flag.load(Ordering::Relaxed);
            let listed = command(&["ls", "--json"]);
            if listed.status.success() {
                let items: Value = serde_json::from_slice(&listed.stdout).unwrap_or(Value::Null);
                for item in items.as_array().into_iter().flatten() {
                    let name = item["name"].as_str().unwrap_or_default().to_string();
                    let digest = item["digest"].as_str().unwrap_or_default().to_string();
                    if !seen.insert((name.clone(), digest.clone())) {
                        continue;
                    }
                    let verified = command(&["verify", &name, "--json"]);
                    observations.push(if verified.status.success() {
                        format!("ok {name} {digest}")
                    } else {
                        format!(
                            "HALF-ARRIVED {name} {digest}: {}",
                            String::from_utf8_lossy(&verified.stdout)
                        )
                    });
                }
            }
            if stopping {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        observations
    });
    (stop, thread)
}

#[test]
fn a_gigabyte_library_replicates_across_a_link_cut_three_times_and_a_repack_moves_little() {
    let started = Instant::now();
    let (a, b) = pair("big");
    run_ok(&mut a.library(&["init"]));
    run_ok(&mut b.library(&["init"]));

    // Five images, at least 1 GiB: two ISOs made with vmedia, three raw images.
    let iso1 = make_iso(&a, "iso-one", 101, ISO_BLOCKS);
    let iso2 = make_iso(&a, "iso-two", 102, ISO_BLOCKS);
    add_file(&a, "iso-one", &iso1);
    add_file(&a, "iso-two", &iso2);
    std::fs::remove_file(&iso2).unwrap();
    for (i, name) in ["raw-a", "raw-b", "raw-c"].iter().enumerate() {
        add_generated(&a, name, 200 + i as u64, RAW_BLOCKS);
    }
    let a_items = a.listed();
    let total: u64 = a
        .json(&["ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["size"].as_u64().unwrap())
        .sum();
    assert_eq!(a_items.len(), 5);
    assert!(total >= 1 << 30, "the library holds {total} bytes");
    let built = started.elapsed();

    a.start(&b, &[]);
    // What the first sync must move, as B's sync engine reports it before anything moved.
    let plan = dry_run(&a, &b);
    let needed = plan["chunks_needed"].as_u64().unwrap();
    let needed_bytes = plan["pending_bytes"].as_u64().unwrap();
    assert!(needed_bytes >= 1 << 30, "{plan}");

    // B pulls from A continuously; the link is cut under it at about 30%, 60% and 90%.
    let (stop_reader, reader) = reader_of(&b);
    let sync_started = Instant::now();
    b.start(
        &a,
        &["--mirror-from", &a.url(), "--replicate-interval", "1s"],
    );
    let mut cuts = Vec::new();
    for percent in [30u64, 60, 90] {
        wait_for(
            &format!("{percent}% of the chunks on B"),
            Duration::from_secs(120),
            [&a, &b],
            || b.chunk_files().0 * 100 >= needed * percent,
        );
        let at = b.chunk_files().0;
        b.cut();
        std::thread::sleep(Duration::from_millis(1500));
        let during = b.chunk_files().0;
        b.restore();
        cuts.push((percent, at, during));
        assert!(at < needed, "the sync finished before the {percent}% cut");
    }
    wait_for(
        "B holding A's five images",
        Duration::from_secs(120),
        [&a, &b],
        || b.listed() == a_items,
    );
    let first_seconds = sync_started.elapsed();
    wait_for(
        "a caught-up replication in B's /metrics",
        Duration::from_secs(60),
        [&a, &b],
        || {
            let m = b.metrics();
            metric_with(
                &m,
                "vmedia_replication_pending_chunks",
                "direction=\"pull\"",
            ) == 0.0
                && metric_with(
                    &m,
                    "vmedia_replication_last_success_timestamp_seconds",
                    "direction=\"pull\"",
                ) > 0.0
        },
    );
    let metrics = b.metrics();
    let sent_chunks = metric_with(&metrics, "vmedia_replication_sent_chunks_total", "pull") as u64;
    let sent_bytes = metric_with(&metrics, "vmedia_replication_sent_bytes_total", "pull") as u64;
    let runs = metric_with(&metrics, "vmedia_replication_runs_total", "pull") as u64;
    let failures = metric_with(&metrics, "vmedia_replication_failures_total", "pull") as u64;
    let (landed_chunks, landed_bytes) = b.chunk_files();
    // No chunk travelled twice: the runs together sent exactly what the plan needed, and
    // that is what landed on B.
    assert_eq!(sent_chunks, needed, "{metrics}");
    assert_eq!(sent_bytes, needed_bytes, "{metrics}");
    assert_eq!((landed_chunks, landed_bytes), (needed, needed_bytes));
    run_ok(&mut b.library(&["verify"]));

    // A repacked version of one ISO (a file added with `vmedia iso repack`).
    let extra = a.dir.path().join("notes.bin");
    let mut file = std::fs::File::create(&extra).unwrap();
    write_blocks(&mut file, 303, 3);
    drop(file);
    let repacked = a.dir.path().join("iso-one-2.iso");
    run_ok(
        support::vmedia()
            .args(["iso", "repack"])
            .arg(&iso1)
            .arg("--add")
            .arg(format!("/extra/notes.bin={}", extra.display()))
            .arg("-o")
            .arg(&repacked),
    );
    b.stop();
    let repack = add_file(&a, "iso-one", &repacked);
    let plan2 = dry_run(&a, &b);
    let before = b.chunk_files();
    let second_started = Instant::now();
    b.start(
        &a,
        &["--mirror-from", &a.url(), "--replicate-interval", "1s"],
    );
    let a_items = a.listed();
    wait_for(
        "the repacked version on B",
        Duration::from_secs(60),
        [&a, &b],
        || b.listed() == a_items,
    );
    let second_seconds = second_started.elapsed();
    // The version is visible once its timeline merged; the round's counters land when the
    // round ends (its first success since the restart).
    wait_for(
        "the restarted daemon's first successful round",
        Duration::from_secs(60),
        [&a, &b],
        || {
            metric_with(
                &b.metrics(),
                "vmedia_replication_last_success_timestamp_seconds",
                "direction=\"pull\"",
            ) > 0.0
        },
    );
    let metrics = b.metrics();
    let second_bytes = metric_with(&metrics, "vmedia_replication_sent_bytes_total", "pull") as u64;
    let second_chunks =
        metric_with(&metrics, "vmedia_replication_sent_chunks_total", "pull") as u64;
    let after = b.chunk_files();
    assert_eq!(
        second_chunks,
        plan2["chunks_needed"].as_u64().unwrap(),
        "{plan2}"
    );
    assert_eq!(
        second_bytes,
        plan2["pending_bytes"].as_u64().unwrap(),
        "{plan2}"
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (second_chunks, second_bytes)
    );
    assert!(
        second_bytes * 10 <= sent_bytes,
        "the repacked version moved {second_bytes} bytes, more than 10% of {sent_bytes}"
    );
    assert!(second_chunks > 0, "{repack}");
    stop_reader.store(true, Ordering::Relaxed);
    let observations = reader.join().unwrap();
    for seen in &observations {
        assert!(seen.starts_with("ok "), "a reader of B saw: {seen}");
    }
    assert!(
        observations.len() >= 6,
        "the reader verified only {observations:?}"
    );
    for name in ["iso-one", "iso-two", "raw-a", "raw-b", "raw-c"] {
        assert_eq!(view(&a, name), view(&b, name), "{name}");
    }
    eprintln!(
        "sites: library {total} bytes built in {built:?}; first sync {needed} chunks, \
         {sent_bytes} bytes in {first_seconds:?} ({runs} runs, {failures} failed) with cuts \
         (percent, chunks at the cut, chunks after 1.5 s down) {cuts:?}; repacked version \
         {second_chunks} chunks, {second_bytes} bytes ({:.2}% of the first) in \
         {second_seconds:?}; reader verified {} versions; total {:?}",
        second_bytes as f64 * 100.0 / sent_bytes as f64,
        observations.len(),
        started.elapsed()
    );
    a.stop();
    b.stop();
}

/// Item names the dual-active rounds work on.
const DUAL_ITEMS: [&str; 3] = ["alpha", "beta", "gamma"];

/// What one site's operation made: the item, and the digest of a version it added.
struct Made {
    item: &'static str,
    added: Option<String>,
}

/// One random operation on `site`: add a new version, roll back to another version (a
/// restore when removed), or remove. Returns what it made, or the refusal (a race with a
/// merge that changed the item meanwhile).
fn operate(site: &Site, rng: &mut Rng, seed: u64) -> Result<Made, String> {
    let item = DUAL_ITEMS[rng.below(DUAL_ITEMS.len() as u64) as usize];
    let history = site.library(&["history", item, "--json"]).output().unwrap();
    let history: Option<Value> = history
        .status
        .success()
        .then(|| serde_json::from_slice(&history.stdout).unwrap());
    let choice = rng.below(3);
    let add = || -> Result<Made, String> {
        let report = add_generated(site, item, seed, 1);
        Ok(Made {
            item,
            added: Some(report["digest"].as_str().unwrap().to_string()),
        })
    };
    let Some(history) = history else {
        return add();
    };
    let removed = history["removed"].as_bool().unwrap_or(false);
    let current = history["current"].as_u64();
    let targets: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["pruned"].is_null())
        .filter_map(|v| v["version"].as_u64())
        .filter(|n| removed || Some(*n) != current)
        .collect();
    let args: Vec<String> = match choice {
        1 if !targets.is_empty() => {
            let to = targets[rng.below(targets.len() as u64) as usize];
            vec![
                "rollback".into(),
                item.into(),
                "--to".into(),
                to.to_string(),
            ]
        }
        2 if !removed => vec!["rm".into(), item.into()],
        _ => return add(),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = support::run_any(&mut site.library(&args));
    if code == 0 {
        Ok(Made { item, added: None })
    } else {
        Err(format!("{args:?}: {stderr}"))
    }
}

#[test]
fn twenty_rounds_on_both_sites_with_a_flapping_link_end_in_identical_timelines() {
    let (a, b) = pair("dual");
    run_ok(&mut a.library(&["init"]));
    // B starts as a replica of A (the same library.json), made over the host's folders.
    run_ok(a.library(&["sync", "--to"]).arg(&b.library));
    a.start(
        &b,
        &["--replicate-to", &b.url(), "--replicate-interval", "1s"],
    );
    b.start(
        &a,
        &["--replicate-to", &a.url(), "--replicate-interval", "1s"],
    );

    let stop = AtomicBool::new(false);
    let made: Mutex<Vec<Made>> = Mutex::new(Vec::new());
    let refused: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let flaps = std::thread::scope(|scope| {
        let flapper = scope.spawn(|| {
            let mut rng = Rng::new(7);
            let mut flaps = 0u32;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
                let site = if rng.below(2) == 0 { &a } else { &b };
                site.cut();
                std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
                site.restore();
                flaps += 1;
            }
            flaps
        });
        let mut rng_a = Rng::new(11);
        let mut rng_b = Rng::new(13);
        for round in 0..20u64 {
            // Both sites act at once, each on its own library (its daemon syncs meanwhile).
            std::thread::scope(|inner| {
                for (index, (site, rng)) in
                    [(&a, &mut rng_a), (&b, &mut rng_b)].into_iter().enumerate()
                {
                    let (made, refused) = (&made, &refused);
                    inner.spawn(move || {
                        for step in 0..2u64 {
                            let seed = 1_000 + (index as u64) * 10_000 + round * 10 + step;
                            match operate(site, rng, seed) {
                                Ok(m) => made.lock().unwrap().push(m),
                                Err(e) => refused.lock().unwrap().push(e),
                            }
                        }
                    });
                }
            });
        }
        stop.store(true, Ordering::Relaxed);
        flapper.join().unwrap()
    });
    a.restore();
    b.restore();
    let rounds_done = Instant::now();

    // Converged: both views identical, twice in a row 2.5 s apart (replication settled).
    let views = |site: &Site| -> Vec<Option<sites::View>> {
        DUAL_ITEMS.iter().map(|name| view(site, name)).collect()
    };
    let mut last: Option<Vec<Option<sites::View>>> = None;
    let mut converged_after = None;
    wait_for(
        "identical timelines on both sites",
        Duration::from_secs(90),
        [&a, &b],
        || {
            let (va, vb) = (views(&a), views(&b));
            if va != vb {
                last = None;
                return false;
            }
            converged_after.get_or_insert_with(|| rounds_done.elapsed());
            let settled = last.as_ref() == Some(&va);
            last = Some(va);
            if !settled {
                std::thread::sleep(Duration::from_millis(2500));
            }
            settled
        },
    );
    let final_views = last.unwrap();
    let made = made.into_inner().unwrap();
    let refused = refused.into_inner().unwrap();
    let mut events_made: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &made {
        *events_made.entry(m.item).or_default() += 1;
        if let Some(digest) = &m.added {
            let view = final_views[DUAL_ITEMS.iter().position(|n| *n == m.item).unwrap()]
                .as_ref()
                .unwrap();
            assert!(
                view.versions.contains(digest),
                "{}: version {digest} made during the rounds is missing",
                m.item
            );
        }
    }
    for (name, view) in DUAL_ITEMS.iter().zip(&final_views) {
        let events = view.as_ref().map_or(0, |v| v.events.len());
        assert_eq!(
            events,
            events_made.get(name).copied().unwrap_or(0),
            "{name}: every event made on either site, once: {view:?}"
        );
    }
    run_ok(&mut a.library(&["verify"]));
    run_ok(&mut b.library(&["verify"]));
    eprintln!(
        "sites: dual-active: {} operations ({} versions added), {} refused by a race, {flaps} \
         link flaps; identical timelines {:?} after the last round",
        made.len(),
        made.iter().filter(|m| m.added.is_some()).count(),
        refused.len(),
        converged_after.unwrap()
    );
    assert!(
        refused.len() * 4 <= made.len(),
        "too many operations refused: {refused:?}"
    );
    a.stop();
    b.stop();
}

#[test]
fn a_rollback_on_a_becomes_current_on_b_within_a_few_replication_intervals() {
    const INTERVAL: Duration = Duration::from_secs(2);
    let (a, b) = pair("lag");
    run_ok(&mut a.library(&["init"]));
    let v1 = add_generated(&a, "rb", 401, 1)["digest"]
        .as_str()
        .unwrap()
        .to_string();
    add_generated(&a, "rb", 402, 1);
    run_ok(a.library(&["sync", "--to"]).arg(&b.library));
    b.start(&a, &[]);
    a.start(
        &b,
        &["--replicate-to", &b.url(), "--replicate-interval", "2s"],
    );
    wait_for(
        "A's first push to B",
        Duration::from_secs(60),
        [&a, &b],
        || {
            metric_with(
                &a.metrics(),
                "vmedia_replication_last_success_timestamp_seconds",
                "push",
            ) > 0.0
        },
    );
    let t = Instant::now();
    run_ok(&mut a.library(&["rollback", "rb", "--to", "1"]));
    let mut lag = None;
    while t.elapsed() < INTERVAL * 10 {
        if view(&b, "rb").and_then(|v| v.current) == Some(v1.clone()) {
            lag = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lag = lag.unwrap_or_else(|| panic!("B never followed the rollback:\n{}", a.log()));
    eprintln!("sites: rollback on A current on B after {lag:?} (interval {INTERVAL:?})");
    assert!(
        lag <= INTERVAL * 3,
        "B followed A's rollback after {lag:?}, more than 3 intervals of {INTERVAL:?}"
    );
    let (va, vb) = (view(&a, "rb").unwrap(), view(&b, "rb").unwrap());
    assert_eq!(va, vb);
    assert!(
        va.events.last().unwrap().contains("\"rollback\""),
        "{:?}",
        va.events
    );
    a.stop();
    b.stop();
}
