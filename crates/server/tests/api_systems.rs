//! Systems, attachments, where-used and per-item access in the REST API, on one daemon shared
//! by every test here: one call attaches a library ISO to 500 registered systems (a task with
//! 500 results, p99 per attach printed), "where used" lists the 500, then 500 concurrent
//! clients read their systems' attached media over HTTP and verify the bytes; systems created,
//! patched (If-Match) and their console read through the API; hidden items answer 404 and
//! every refused attempt is audited; hostile inputs get clear 4xx answers.

mod support_http;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support_http::{
    add, curl, free_port, make_iso, new_library, options, post_oversized, Daemon, Reply,
};
use vmedia_boot::managed::VmStore;
use vmedia_boot::spec::{CdromSlot, VmSpec};
use vmedia_boot::store::BootConfig;
use vmedia_server::auth::Role;

/// Systems the batch attaches to, and systems the selector must leave out.
const FLEET: usize = 500;
const OTHERS: usize = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    base: String,
    admin: String,
    iso: Vec<u8>,
    vms: BootConfig,
    state: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let iso = make_iso(dir.path());
        let library = new_library(dir.path());
        add(&library, "deb", &iso);
        add(&library, "secret", &iso);
        let vms = BootConfig::new(dir.path().join("vmstate"));
        let store = VmStore::new(&vms);
        // Registered definitions: none of them runs.
        for n in 0..FLEET + OTHERS {
            let name = format!("node{n:03}");
            let mut spec = VmSpec::new(&name);
            spec.cdroms = vec![CdromSlot::default()];
            store.create(&spec).unwrap();
            let fleet = if n < FLEET { "a" } else { "b" };
            store
                .set_labels(
                    &name,
                    BTreeMap::from([("fleet".to_string(), fleet.to_string())]),
                )
                .unwrap();
        }
        let mut opts = options(&dir.path().join("state"));
        opts.https_port = free_port();
        opts.systems = Some(vms.clone());
        opts.nbd_port = free_port();
        let daemon = Daemon::start(library, opts);
        let handle = daemon.handle.as_ref().unwrap();
        let base = format!("https://{}", handle.https.unwrap());
        let admin = handle
            .users
            .create_token("root", Role::Administrator, None)
            .unwrap()
            .token;
        Fixture {
            iso: std::fs::read(&iso).unwrap(),
            state: dir.path().join("state"),
            _dir: dir,
            daemon,
            base,
            admin,
            vms,
        }
    })
}

impl Fixture {
    fn token(&self, name: &str, role: Role) -> String {
        let handle = self.daemon.handle.as_ref().unwrap();
        handle.users.create_token(name, role, None).unwrap().token
    }

    fn call(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = format!("Authorization: Bearer {token}");
        let url = format!("{}{path}", self.base);
        // The body goes through a file: a hostile 70 KB body is too long for one argument
        // where the environment is large.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body.json");
        let data = format!("@{}", file.display());
        let mut args = vec!["-k", "-H", &auth, "-X", method];
        if let Some(body) = body {
            std::fs::write(&file, body.to_string()).unwrap();
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
            ]);
        }
        args.push(&url);
        curl(&args)
    }

    fn json(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let reply = self.call(token, method, path, body);
        let value = if reply.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
                panic!(
                    "{e}: {} {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                )
            })
        };
        (reply.status, value)
    }

    fn wait_task(&self, location: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (status, task) = self.json(&self.admin, "GET", location, None);
            assert_eq!(status, 200, "{task}");
            if task["state"] != "running" {
                return task;
            }
            assert!(Instant::now() < deadline, "task {location} still running");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn p99(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = (values.len() * 99).div_ceil(100).saturating_sub(1);
    values[at.min(values.len() - 1)]
}

#[test]
fn one_call_attaches_an_iso_to_500_systems_and_500_clients_read_it() {
    let f = fixture();
    let started = Instant::now();
    let reply = f.call(
        &f.admin,
        "POST",
        "/api/v1/attachments",
        Some(&json!({"image": "deb", "selector": "fleet=a"})),
    );
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let location = reply.header("location").unwrap().to_string();
    let task = f.wait_task(&location);
    let wall = started.elapsed();
    assert_eq!(task["state"], "succeeded", "{task}");
    let result = &task["result"];
    assert_eq!(result["total"], FLEET, "{result}");
    assert_eq!(result["succeeded"], FLEET, "{result}");
    assert_eq!(result["failed"], 0);
    assert_eq!(result["image"], "deb@1");
    let results = result["results"].as_array().unwrap();
    assert_eq!(results.len(), FLEET);
    assert!(results.iter().all(|r| r["ok"] == true));
    assert_eq!(task["progress"]["done"], FLEET);
    let times: Vec<f64> = results.iter().map(|r| r["ms"].as_f64().unwrap()).collect();
    println!(
        "batch attach: {FLEET} systems in {:.2} s, p99 per attach {:.2} ms",
        wall.as_secs_f64(),
        p99(times)
    );

    // Where used: all 500, none of the others.
    let (status, usage) = f.json(&f.admin, "GET", "/api/v1/library/items/deb/usage", None);
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["systems"], FLEET, "{usage}");
    let listed = usage["versions"][0]["systems"].as_array().unwrap();
    assert_eq!(listed.len(), FLEET);
    assert!(!listed
        .iter()
        .any(|s| s == &json!(format!("node{FLEET:03}"))));
    let (status, mine) = f.json(&f.admin, "GET", "/api/v1/systems/node007/usage", None);
    assert_eq!(status, 200);
    assert_eq!(mine["attachment"]["item"], "deb");
    // The attachment survives in the state folder and the VM's CD points at the daemon.
    let store = VmStore::new(&f.vms);
    let medium = store.load("node007").unwrap().spec.cdroms[0]
        .medium
        .clone()
        .unwrap()
        .to_string();
    assert!(medium.ends_with("/images/deb@1"), "{medium}");

    // Each client finds its system's attachment and reads a piece of it over plain HTTP.
    let (status, page) = f.json(&f.admin, "GET", "/api/v1/attachments?limit=1000", None);
    assert_eq!(status, 200);
    // Only the fleet's: other tests of this binary attach to systems of the shared daemon too.
    let attachments: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["item"] == "deb")
        .cloned()
        .collect();
    assert_eq!(attachments.len(), FLEET);
    let http = f.daemon.url.clone();
    let iso = &f.iso;
    let started = Instant::now();
    let verified: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = attachments
            .iter()
            .enumerate()
            .map(|(n, a)| {
                let url = format!("{http}{}", a["http_path"].as_str().unwrap());
                scope.spawn(move || {
                    let len = iso.len();
                    let start = (n * 7919 * 512) % (len - 4096);
                    let end = start + 4095;
                    let mut response = ureq::get(&url)
                        .header("Range", &format!("bytes={start}-{end}"))
                        .call()
                        .unwrap();
                    assert_eq!(response.status(), 206);
                    let body = response.body_mut().read_to_vec().unwrap();
                    assert_eq!(body, iso[start..=end], "client {n}");
                    1
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(verified, FLEET);
    println!(
        "{FLEET} concurrent clients verified their media in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // The authenticated route serves the same bytes.
    let auth = format!("Authorization: Bearer {}", f.admin);
    let url = format!("{}/api/v1/systems/node042/media/content", f.base);
    let reply = curl(&["-k", "-H", &auth, "-H", "Range: bytes=100-199", &url]);
    assert_eq!(reply.status, 206);
    assert_eq!(reply.body, f.iso[100..200]);
}

#[test]
fn a_system_is_created_patched_with_if_match_and_its_console_read() {
    let f = fixture();
    let (status, system) = f.json(
        &f.admin,
        "POST",
        "/api/v1/systems",
        Some(&json!({"id": "web1", "labels": {"role": "web"}, "memory_mib": 256, "firmware": "uefi"})),
    );
    assert_eq!(status, 201, "{system}");
    assert_eq!(system["power"], "off");
    assert_eq!(system["firmware"], "uefi");
    assert_eq!(system["cdrom_slots"], 1);
    let (status, _) = f.json(
        &f.admin,
        "POST",
        "/api/v1/systems",
        Some(&json!({"id": "web1"})),
    );
    assert_eq!(status, 409);
    let (_, page) = f.json(&f.admin, "GET", "/api/v1/systems?label=role=web", None);
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web1"]);

    let show = f.call(&f.admin, "GET", "/api/v1/systems/web1", None);
    let etag = show.header("etag").unwrap().to_string();
    let auth = format!("Authorization: Bearer {}", f.admin);
    let patch = |tag: &str, body: &Value| {
        let text = body.to_string();
        let url = format!("{}/api/v1/systems/web1", f.base);
        let if_match = format!("If-Match: {tag}");
        curl(&[
            "-k",
            "-H",
            &auth,
            "-H",
            &if_match,
            "-H",
            "Content-Type: application/json",
            "-X",
            "PATCH",
            "--data-binary",
            &text,
            &url,
        ])
    };
    let body =
        json!({"boot_override": {"mode": "once", "target": "uefihttp"}, "labels": {"role": "db"}});
    let reply = patch(&etag, &body);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let patched: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(patched["boot_override"]["mode"], "once");
    assert_eq!(patched["labels"]["role"], "db");
    // The old ETag is stale now.
    assert_eq!(patch(&etag, &body).status, 412);

    // Media by URL, then eject; the console of a VM that never ran is empty.
    let (status, system) = f.json(
        &f.admin,
        "POST",
        "/api/v1/systems/web1/media",
        Some(&json!({"url": "http://127.0.0.1:9/x.iso"})),
    );
    assert_eq!(status, 200, "{system}");
    assert_eq!(system["media"][0]["image"], "http://127.0.0.1:9/x.iso");
    let (status, system) = f.json(&f.admin, "DELETE", "/api/v1/systems/web1/media", None);
    assert_eq!(status, 200);
    assert_eq!(system["media"][0]["image"], Value::Null);
    let store = VmStore::new(&f.vms);
    std::fs::write(
        store.serial_log("web1"),
        b"SeaBIOS\nBooting from DVD/CD...\nmarker\n",
    )
    .unwrap();
    let (status, chunk) = f.json(
        &f.admin,
        "GET",
        "/api/v1/systems/web1/console?offset=8&limit=5",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(chunk["text"], "Booti");
    assert_eq!(chunk["next"], 13);
    let (status, timeline) = f.json(&f.admin, "GET", "/api/v1/systems/web1/boot", None);
    assert_eq!(status, 200, "{timeline}");
    assert_eq!(
        timeline["console"]["phases"][1]["phase"],
        "firmware_handover"
    );
    let (status, _) = f.json(&f.admin, "DELETE", "/api/v1/systems/web1", None);
    assert_eq!(status, 204);
    assert_eq!(f.json(&f.admin, "GET", "/api/v1/systems/web1", None).0, 404);
}

#[test]
fn hidden_items_are_404_to_users_without_access_and_every_attempt_is_audited() {
    let f = fixture();
    let (status, doc) = f.json(
        &f.admin,
        "PUT",
        "/api/v1/access",
        Some(&json!({"groups": {"ops": ["alice"]}, "rules": [{"pattern": "secr*", "groups": ["ops"]}]})),
    );
    assert_eq!(status, 200, "{doc}");
    let alice = f.token("alice", Role::Operator);
    let bob = f.token("bob", Role::Operator);
    let names = |token: &str| -> Vec<String> {
        let (_, page) = f.json(token, "GET", "/api/v1/library/items", None);
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&alice), ["deb", "secret"]);
    assert_eq!(names(&bob), ["deb"]);
    // Each try with what Alice (who has access) gets.
    let tries = [
        ("GET", "/api/v1/library/items/secret", None, 200),
        (
            "GET",
            "/api/v1/library/items/secret/versions/1/content",
            None,
            200,
        ),
        ("GET", "/api/v1/library/items/secret/usage", None, 200),
        (
            "POST",
            "/api/v1/attachments",
            Some(json!({"image": "secret", "systems": ["node500"]})),
            202,
        ),
        (
            "POST",
            "/api/v1/systems/node501/media",
            Some(json!({"image": "secret@1"})),
            200,
        ),
        // No new version through an upload, no verify of the hidden item.
        (
            "POST",
            "/api/v1/uploads",
            Some(json!({"item": "secret", "length": 1})),
            201,
        ),
        (
            "POST",
            "/api/v1/library/verify",
            Some(json!({"item": "secret"})),
            202,
        ),
    ];
    for (method, path, body, expected) in &tries {
        let (status, problem) = f.json(&bob, method, path, body.as_ref());
        assert_eq!(status, 404, "{method} {path}: {problem}");
        // Alice may (the content route answers bytes, not JSON).
        let reply = f.call(&alice, method, path, body.as_ref());
        assert_eq!(
            reply.status,
            *expected,
            "{method} {path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let (status, audit) = f.json(
        &f.admin,
        "GET",
        "/api/v1/audit?user=bob&item=secret&outcome=denied&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        audit["items"].as_array().unwrap().len(),
        tries.len(),
        "{audit}"
    );
    // Only administrators read or change the rules.
    assert_eq!(f.json(&alice, "GET", "/api/v1/access", None).0, 403);
}

#[test]
fn hostile_inputs_get_clear_4xx_answers() {
    let f = fixture();
    let cases = [
        (
            "POST",
            "/api/v1/attachments",
            json!({"image": "deb", "selector": "fleet"}),
        ),
        (
            "POST",
            "/api/v1/attachments",
            json!({"image": "deb", "selector": "a=b,,c=d"}),
        ),
        (
            "POST",
            "/api/v1/attachments",
            json!({"image": "deb", "selector": "a=b", "systems": ["node001"]}),
        ),
        (
            "POST",
            "/api/v1/attachments",
            json!({"image": "deb", "systems": []}),
        ),
        (
            "POST",
            "/api/v1/attachments",
            json!({"image": "../../etc/passwd", "systems": ["node001"]}),
        ),
        (
            "POST",
            "/api/v1/attachments",
            json!({"image": "deb", "systems": ["../node001"]}),
        ),
        ("POST", "/api/v1/systems", json!({"id": "../escape"})),
        (
            "POST",
            "/api/v1/systems",
            json!({"id": "ok1", "disks": ["/etc/passwd"]}),
        ),
        (
            "POST",
            "/api/v1/systems",
            json!({"id": "ok2", "disks": ["../../../etc/passwd"]}),
        ),
        (
            "POST",
            "/api/v1/systems",
            json!({"id": "ok3", "labels": {"k": "a,b"}}),
        ),
        (
            "POST",
            "/api/v1/systems/node001/media",
            json!({"url": "file:///etc/passwd"}),
        ),
        (
            "POST",
            "/api/v1/systems/node001/media",
            json!({"image": "deb", "url": "http://h/x"}),
        ),
        (
            "PATCH",
            "/api/v1/systems/node001",
            json!({"boot_override": {"mode": "once", "target": "floppy"}}),
        ),
        (
            "PUT",
            "/api/v1/access",
            json!({"rules": [{"pattern": "../*"}]}),
        ),
    ];
    for (method, path, body) in &cases {
        let (status, problem) = f.json(&f.admin, method, path, Some(body));
        assert_eq!(status, 400, "{method} {path} {body}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    for path in [
        "/api/v1/systems/..%2F..%2Fetc",
        "/api/v1/systems/%2e%2e/console",
        "/api/v1/systems?label=%3D%3D",
    ] {
        let status = f.json(&f.admin, "GET", path, None).0;
        assert!(matches!(status, 400 | 404), "{path}: {status}");
    }
    // Oversized and malformed bodies.
    // Answered 413 (never a reset: the daemon reads and discards the rest), and audited.
    let big = json!({"image": "deb", "systems": vec!["node001"; 20_000]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    std::fs::write(&file, big.to_string()).unwrap();
    post_oversized(&format!("{}/api/v1/attachments", f.base), &f.admin, &file);
    let (status, audit) = f.json(
        &f.admin,
        "GET",
        "/api/v1/audit?target=/api/v1/attachments&outcome=failed&limit=1000",
        None,
    );
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "POST /api/v1/attachments" && r["detail"] == "413"),
        "the daemon recorded no 413 for the oversized body: {audit}"
    );
    let auth = format!("Authorization: Bearer {}", f.admin);
    let url = format!("{}/api/v1/systems", f.base);
    let reply = curl(&[
        "-k",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "{\"id\":",
        &url,
    ]);
    assert_eq!(reply.status, 400);
    // Nothing leaked out of the VM store, and the daemon still answers.
    assert!(!f.vms.state_dir.join("escape").exists());
    assert_eq!(
        f.json(&f.admin, "GET", "/api/v1/systems/node001", None).0,
        200
    );
}

/// The access document the per-item tests share: `secr*` is limited to the group `ops`, whose
/// one member is alice (bob is in no group). Every test puts the same one, so their order
/// does not matter.
fn limit_secret(f: &Fixture) {
    let (status, doc) = f.json(
        &f.admin,
        "PUT",
        "/api/v1/access",
        Some(&json!({"groups": {"ops": ["alice"]}, "rules": [{"pattern": "secr*", "groups": ["ops"]}]})),
    );
    assert_eq!(status, 200, "{doc}");
}

/// The exports named in the `stats` events `token` receives for about two seconds.
fn streamed_exports(f: &Fixture, token: &str) -> std::collections::BTreeSet<String> {
    let output = std::process::Command::new("curl")
        .args(["-sS", "-k", "-N", "--max-time", "2", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{}/api/v1/stats/stream?interval_ms=250", f.base))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let mut events = 0;
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        events += 1;
        let event: Value = serde_json::from_str(data.trim()).unwrap();
        for export in event["exports"].as_array().unwrap() {
            names.insert(export["export"].as_str().unwrap().to_string());
        }
    }
    assert!(events >= 2, "no stats events: {text}");
    names
}

#[test]
fn the_stats_stream_names_a_restricted_items_exports_to_members_only() {
    let f = fixture();
    limit_secret(f);
    let alice = f.token("alice", Role::Operator);
    let bob = f.token("bob", Role::Readonly);
    // Reads of both items, so both have rows in the daemon's metrics.
    for item in ["deb", "secret"] {
        let reply = f.call(
            &alice,
            "GET",
            &format!("/api/v1/library/items/{item}/versions/1/content"),
            None,
        );
        assert_eq!(reply.status, 200);
    }
    let is_secret = |name: &String| name.starts_with("secret");
    let seen_by_bob = streamed_exports(f, &bob);
    assert!(
        seen_by_bob.iter().any(|n| n.starts_with("deb")),
        "{seen_by_bob:?}"
    );
    assert!(!seen_by_bob.iter().any(is_secret), "{seen_by_bob:?}");
    let seen_by_alice = streamed_exports(f, &alice);
    assert!(seen_by_alice.iter().any(is_secret), "{seen_by_alice:?}");
    assert!(streamed_exports(f, &f.admin).iter().any(is_secret));
}

/// `/images/PATH?exp=EXP&sig=...` signed with the daemon's key as the docs say.
fn signed(f: &Fixture, path: &str, exp: u64) -> String {
    use hmac::Mac;
    let key = std::fs::read_to_string(f.state.join("media.key")).unwrap();
    let key = hex::decode(key.trim()).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("GET\n{path}\n{exp}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!("{path}?exp={exp}&sig={sig}")
}

#[test]
fn restricted_items_need_a_signed_url_on_http_and_a_capability_name_on_nbd() {
    let f = fixture();
    limit_secret(f);
    let handle = f.daemon.handle.as_ref().unwrap();
    let http = format!("http://{}", handle.http.unwrap());
    let nbd = handle.nbd.unwrap();
    let get = |path: &str| curl(&[&format!("{http}{path}")]);
    // Anonymous: the restricted item is missing, the unrestricted one unchanged.
    assert_eq!(get("/images/secret@1").status, 404);
    assert_eq!(get("/images/%73ecret@1").status, 404);
    assert_eq!(get("/images/secret@1/disk").status, 404);
    let open = get("/images/deb@1");
    assert_eq!(open.status, 200);
    assert_eq!(open.body, f.iso);
    let nbdinfo = |name: &str| {
        std::process::Command::new("nbdinfo")
            .args(["--size", &format!("nbd://{nbd}/{name}")])
            .output()
            .unwrap()
    };
    assert!(!nbdinfo("secret@1").status.success());
    let deb = nbdinfo("deb@1");
    assert!(
        deb.status.success(),
        "{}",
        String::from_utf8_lossy(&deb.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&deb.stdout).trim(),
        f.iso.len().to_string()
    );

    // A member's attachment hands the VM a signed URL and a capability export name.
    let alice = f.token("alice", Role::Operator);
    let (status, body) = f.json(
        &alice,
        "POST",
        "/api/v1/systems/node502/media",
        Some(&json!({"image": "secret@1"})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, page) = f.json(&alice, "GET", "/api/v1/attachments?limit=1000", None);
    assert_eq!(status, 200);
    let attachment = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["system"] == "node502")
        .unwrap_or_else(|| panic!("no attachment of node502: {page}"))
        .clone();
    let http_path = attachment["http_path"].as_str().unwrap();
    assert!(
        http_path.starts_with("/images/secret@1?exp="),
        "{http_path}"
    );
    let reply = get(http_path);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, f.iso);
    // The VM's definition holds that URL; readers of the system see it without the signature.
    let (_, system) = f.json(
        &f.token("bob", Role::Readonly),
        "GET",
        "/api/v1/systems/node502",
        None,
    );
    assert_eq!(
        system["media"][0]["image"],
        format!("{http}/images/secret@1")
    );
    let export = attachment["nbd_export"].as_str().unwrap();
    assert!(export.starts_with("secret@1/cap/node502/"), "{export}");
    let by_capability = nbdinfo(export);
    assert!(
        by_capability.status.success(),
        "{}",
        String::from_utf8_lossy(&by_capability.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&by_capability.stdout).trim(),
        f.iso.len().to_string()
    );
    let forged = export.replace("/cap/node502/", "/cap/node501/");
    assert!(!nbdinfo(&forged).status.success());

    // Altered, expired, and a fresh signature made with the key as docs/serve.md says.
    let altered = http_path.replace("secret@1?", "secret@sha256:00?");
    assert_eq!(get(&altered).status, 404);
    let mut flipped = http_path.to_string();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    assert_eq!(get(&flipped).status, 404);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(get(&signed(f, "/images/secret@1", now - 10)).status, 404);
    let fresh = get(&signed(f, "/images/secret@1", now + 600));
    assert_eq!(fresh.status, 200);
    let later = signed(f, "/images/secret@1", now + 600).replace(
        &format!("exp={}", now + 600),
        &format!("exp={}", now + 6000),
    );
    assert_eq!(get(&later).status, 404);

    // Every refusal is in the audit log, and no record carries a signature or a token.
    let audit = denied_records(f, "secret");
    let count = |prefix: &str| actions(&audit).filter(|a| a.starts_with(prefix)).count();
    assert!(count("GET /images/secret@1") >= 6, "{audit}");
    assert!(count("nbd open") >= 2, "{audit}");
    assert!(!audit.to_string().contains("sig="), "{audit}");
}

/// The audit log's refusals concerning `item`, as the administrator reads them.
fn denied_records(f: &Fixture, item: &str) -> Value {
    let query = format!("/api/v1/audit?item={item}&outcome=denied&limit=1000");
    let (status, audit) = f.json(&f.admin, "GET", &query, None);
    assert_eq!(status, 200, "{audit}");
    audit
}

/// The actions of the records of an audit answer.
fn actions(audit: &Value) -> impl Iterator<Item = &str> {
    audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["action"].as_str().unwrap_or(""))
}

/// A Redfish session for `user` (created with `password` and `role`), as Ironic opens one:
/// `POST SessionService/Sessions`, then `X-Auth-Token` on every call.
fn redfish_session(f: &Fixture, user: &str, role: Role) -> String {
    let handle = f.daemon.handle.as_ref().unwrap();
    let password = format!("{user} pass phrase");
    handle.users.add_user(user, role, &password).unwrap();
    let body = json!({"UserName": user, "Password": password}).to_string();
    let reply = curl(&[
        "-k",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &format!("{}/redfish/v1/SessionService/Sessions", f.base),
    ]);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.header("x-auth-token").unwrap().to_string()
}

/// A Redfish call with a session token and an optional JSON body.
fn redfish(f: &Fixture, token: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let auth = format!("X-Auth-Token: {token}");
    curl_json(
        &["-k", "-H", &auth],
        method,
        &format!("{}{path}", f.base),
        body,
    )
}

/// curl with `first` arguments, `method` on `url`, and `body` sent as JSON when given.
fn curl_json(first: &[&str], method: &str, url: &str, body: Option<&Value>) -> Reply {
    let text = body.map(Value::to_string);
    let mut args = first.to_vec();
    args.extend(["-X", method]);
    if let Some(text) = &text {
        args.extend([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            text,
        ]);
    }
    args.push(url);
    curl(&args)
}

#[test]
fn redfish_insert_media_of_a_restricted_item_stores_a_signed_url_that_alone_serves_it() {
    let f = fixture();
    limit_secret(f);
    let handle = f.daemon.handle.as_ref().unwrap();
    let http = format!("http://{}", handle.http.unwrap());
    let port = handle.http.unwrap().port();
    let cd = "/redfish/v1/Managers/node501/VirtualMedia/Cd";
    let insert = format!("{cd}/Actions/VirtualMedia.InsertMedia");
    let eject = format!("{cd}/Actions/VirtualMedia.EjectMedia");
    // Ironic's InsertMedia body for the daemon's own unsigned URL of the restricted item.
    let body = json!({
        "Image": format!("http://127.0.0.1:{port}/images/secret@1"),
        "Inserted": true,
        "WriteProtected": true,
    });
    let stored = || {
        let config = VmStore::new(&f.vms).load("node501").unwrap();
        config.spec.cdroms[0].medium.as_ref().map(|m| m.to_string())
    };

    // A user the access rule does not name: ResourceNotFound, nothing stored, audited.
    let carol = redfish_session(f, "carol-rf", Role::Operator);
    assert_eq!(
        redfish(f, &carol, "POST", &eject, Some(&json!({}))).status,
        204
    );
    let refused = redfish(f, &carol, "POST", &insert, Some(&body));
    assert_eq!(
        refused.status,
        404,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(String::from_utf8_lossy(&refused.body).contains("ResourceNotFound"));
    assert_eq!(stored(), None);

    // A member (alice is in `ops`): Ironic's calls in its order, then the stored URL.
    let alice = redfish_session(f, "alice", Role::Operator);
    assert_eq!(
        redfish(f, &alice, "POST", &eject, Some(&json!({}))).status,
        204
    );
    let done = redfish(f, &alice, "POST", &insert, Some(&body));
    assert_eq!(done.status, 204, "{}", String::from_utf8_lossy(&done.body));
    let url = stored().expect("InsertMedia stored no medium");
    let signed = url
        .strip_prefix(&format!("http://127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("not the daemon's own URL: {url}"));
    assert!(
        signed.starts_with("/images/secret@1?exp=") && signed.contains("&sig="),
        "{signed}"
    );
    // What QEMU reads: the signed URL serves the image, the unsigned one is missing.
    let reply = curl(&[&format!("{http}{signed}")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, f.iso);
    assert_eq!(curl(&[&format!("{http}/images/secret@1")]).status, 404);
    // Readers of the VirtualMedia resource see the URL without its signature.
    let shown = redfish(f, &alice, "GET", cd, None);
    assert_eq!(shown.status, 200);
    let shown: Value = serde_json::from_slice(&shown.body).unwrap();
    assert_eq!(shown["Inserted"], true);
    assert_eq!(
        shown["Image"],
        format!("http://127.0.0.1:{port}/images/secret@1")
    );
    assert!(!shown.to_string().contains("sig="), "{shown}");

    // The refusal is in the audit log under carol's name.
    let audit = denied_records(f, "secret");
    assert!(
        audit["items"].as_array().unwrap().iter().any(|r| {
            r["user"] == "carol-rf" && r["action"].as_str().unwrap_or("").contains("InsertMedia")
        }),
        "{audit}"
    );
    assert_eq!(
        redfish(f, &alice, "POST", &eject, Some(&json!({}))).status,
        204
    );
}

#[test]
fn clones_of_a_restricted_item_open_only_by_the_capability_their_create_answer_gives() {
    let f = fixture();
    limit_secret(f);
    let handle = f.daemon.handle.as_ref().unwrap();
    let http = format!("http://{}", handle.http.unwrap());
    let nbd = handle.nbd.unwrap();
    let nbdinfo = |name: &str| {
        std::process::Command::new("nbdinfo")
            .args(["--size", &format!("nbd://{nbd}/{name}")])
            .output()
            .unwrap()
    };
    let size_of = |name: &str| {
        let out = nbdinfo(name);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let alice = f.token("alice", Role::Operator);
    let dave = f.token("dave", Role::Operator);

    // Creating needs access to the base item: dave is not in `ops`, anonymous has no one.
    let create = |token: &str, base: &str, name: &str| {
        f.json(
            token,
            "POST",
            "/api/v1/clones",
            Some(&json!({"base": base, "name": name})),
        )
    };
    let (status, body) = create(&dave, "secret@1", "sc-dave");
    assert_eq!(status, 404, "{body}");
    let anonymous = |method: &str, path: &str, body: Option<&Value>| {
        curl_json(&[], method, &format!("{http}{path}"), body)
    };
    let plain = anonymous(
        "POST",
        "/api/v1/clones",
        Some(&json!({"base": "secret@1", "name": "sc-anon"})),
    );
    assert_eq!(plain.status, 404);

    // alice may: the answer's export is a capability name.
    let (status, info) = create(&alice, "secret@1", "sc1");
    assert_eq!(status, 201, "{info}");
    let capability = info["nbd_export"].as_str().unwrap().to_string();
    assert!(capability.starts_with("clone/sc1/cap/sc1/"), "{capability}");
    let (status, shown) = f.json(&alice, "GET", "/api/v1/clones/sc1", None);
    assert_eq!(status, 200);
    assert_eq!(shown["nbd_export"], capability.as_str());

    // NBD: the plain name is missing and unlisted, the capability opens it, a forged one not.
    assert!(!nbdinfo("clone/sc1").status.success());
    assert_eq!(size_of(&capability), f.iso.len().to_string());
    let mut forged = capability.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    assert!(!nbdinfo(&forged).status.success());
    let listing = std::process::Command::new("nbdinfo")
        .args(["--list", &format!("nbd://{nbd}")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("clone/sc1"));
    // No HTTP path serves a clone.
    assert_eq!(anonymous("GET", "/images/clone/sc1", None).status, 404);

    // Anyone without access sees no such clone, by any route of either port.
    let (_, listed) = f.json(&dave, "GET", "/api/v1/clones", None);
    assert!(!listed.to_string().contains("sc1"), "{listed}");
    assert_eq!(f.json(&dave, "GET", "/api/v1/clones/sc1", None).0, 404);
    assert_eq!(f.json(&dave, "DELETE", "/api/v1/clones/sc1", None).0, 404);
    let stolen = json!({"as": "stolen"});
    let commit = f.json(&dave, "POST", "/api/v1/clones/sc1/commit", Some(&stolen));
    assert_eq!(commit.0, 404);
    let listed = anonymous("GET", "/api/v1/clones", None);
    assert_eq!(listed.status, 200);
    assert!(!String::from_utf8_lossy(&listed.body).contains("sc1"));
    assert_eq!(anonymous("GET", "/api/v1/clones/sc1", None).status, 404);
    assert_eq!(anonymous("DELETE", "/api/v1/clones/sc1", None).status, 404);
    assert_eq!(
        anonymous("POST", "/api/v1/clones/sc1/commit", Some(&stolen)).status,
        404
    );
    // alice still has it (nothing above removed it).
    assert_eq!(f.json(&alice, "GET", "/api/v1/clones/sc1", None).0, 200);

    // A clone of an unrestricted item stays as it was: its plain name, open to anyone.
    let (status, open) = create(&dave, "deb@1", "dc1");
    assert_eq!(status, 201, "{open}");
    assert_eq!(open["nbd_export"], "clone/dc1");
    assert_eq!(size_of("clone/dc1"), f.iso.len().to_string());

    // Every refusal is audited under the base item.
    let audit = denied_records(f, "secret");
    let count = |needle: &str| actions(&audit).filter(|a| a.contains(needle)).count();
    assert!(count("/api/v1/clones") >= 8, "{audit}");
    assert!(count("nbd open") >= 2, "{audit}");
    assert!(!audit.to_string().contains(&capability[18..]), "{audit}");

    for (token, name) in [(&alice, "sc1"), (&dave, "dc1")] {
        let path = format!("/api/v1/clones/{name}");
        assert_eq!(f.json(token, "DELETE", &path, None).0, 204);
    }
}
