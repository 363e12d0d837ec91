//! The REST API on the HTTPS listener (self-signed certificate made on first start), driven by
//! curl: a resumable upload interrupted halfway and resumed, the OpenAPI document through
//! openapi-spec-validator, readonly refused on every mutating operation of that document,
//! If-Match and Idempotency-Key, sessions, the audit log, and hostile requests.

mod support_http;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support_http::{
    add, curl, free_port, make_iso, new_library, noise, options, post_oversized, Daemon, Reply,
};
use vmedia_server::auth::{Authenticate, Role};

struct Api {
    daemon: Daemon,
    base: String,
    admin: String,
}

fn start(dir: &Path) -> Api {
    let library = new_library(dir);
    let mut opts = options(&dir.join("state"));
    opts.https_port = free_port();
    let daemon = Daemon::start(library, opts);
    let handle = daemon.handle.as_ref().unwrap();
    let base = format!("https://{}", handle.https.unwrap());
    let fingerprint = handle.tls_fingerprint.clone().unwrap();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    let admin = handle
        .users
        .create_token("root", Role::Administrator, None)
        .unwrap()
        .token;
    Api {
        daemon,
        base,
        admin,
    }
}

impl Api {
    /// The library the daemon serves.
    fn library(&self) -> vmedia_library::Library {
        self.daemon
            .handle
            .as_ref()
            .unwrap()
            .exports
            .library()
            .clone()
    }

    fn token(&self, name: &str, role: Role) -> String {
        let handle = self.daemon.handle.as_ref().unwrap();
        handle.users.create_token(name, role, None).unwrap().token
    }

    /// curl -k with a bearer token.
    fn call(&self, token: &str, args: &[&str]) -> Reply {
        let auth = format!("Authorization: Bearer {token}");
        let mut all = vec!["-k", "-H", &auth];
        all.extend_from_slice(args);
        curl(&all)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post_json(&self, token: &str, path: &str, body: &Value, extra: &[&str]) -> Reply {
        let text = body.to_string();
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &text,
        ];
        args.extend_from_slice(extra);
        let url = self.url(path);
        args.push(&url);
        self.call(token, &args)
    }

    fn get_json(&self, token: &str, path: &str) -> (u16, Value) {
        let reply = self.call(token, &[&self.url(path)]);
        (reply.status, json(&reply))
    }

    /// Polls a task until it is no longer running.
    fn wait_task(&self, location: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, task) = self.get_json(&self.admin, location);
            assert_eq!(status, 200, "{task}");
            if task["state"] != "running" {
                return task;
            }
            assert!(Instant::now() < deadline, "task {location} still running");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn json(reply: &Reply) -> Value {
    if reply.body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )
    })
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    )
}

#[test]
fn curl_resumes_an_upload_interrupted_halfway_and_the_add_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let api = start(dir.path());
    let library = api.library();
    add(&library, "base", &iso);
    let size = std::fs::metadata(&iso).unwrap().len();
    let operator = api.token("uploader", Role::Operator);

    let created = api.post_json(
        &operator,
        "/api/v1/uploads",
        &serde_json::json!({"item": "uploaded", "length": size, "labels": {"os": "test"}}),
        &[],
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let location = created.header("location").unwrap().to_string();
    assert_eq!(created.header("upload-offset"), Some("0"));

    // The first PATCH is cut off: curl sends at 256 KiB/s and gives up after 2 s.
    let auth = format!("Authorization: Bearer {operator}");
    let status = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-X",
            "PATCH",
            "--limit-rate",
            "256K",
            "--max-time",
            "2",
        ])
        .args([
            "-H",
            &auth,
            "-H",
            "Content-Type: application/offset+octet-stream",
        ])
        .args(["-H", "Upload-Offset: 0", "--data-binary"])
        .arg(format!("@{}", iso.display()))
        .arg(api.url(&location))
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(28),
        "curl was not cut off: {status:?}"
    );

    // HEAD tells where to go on, once the daemon has seen the connection end.
    let mut offset = u64::MAX;
    for _ in 0..50 {
        let head = api.call(&operator, &["-I", &api.url(&location)]);
        assert_eq!(head.status, 200);
        let now: u64 = head.header("upload-offset").unwrap().parse().unwrap();
        if now == offset {
            break;
        }
        offset = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(offset > 0 && offset < size, "offset {offset} of {size}");

    // A resume from the wrong offset is 409 with the right one.
    let rest = dir.path().join("rest");
    std::fs::write(&rest, &std::fs::read(&iso).unwrap()[offset as usize..]).unwrap();
    let data = format!("@{}", rest.display());
    let wrong = api.call(
        &operator,
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/offset+octet-stream",
            "-H",
            "Upload-Offset: 1",
            "--data-binary",
            &data,
            &api.url(&location),
        ],
    );
    assert_eq!(wrong.status, 409);
    assert_eq!(wrong.header("upload-offset").unwrap(), offset.to_string());
    assert_eq!(
        wrong.header("content-type"),
        Some("application/problem+json")
    );

    // The resume, with Content-Range as a browser's slice upload would send it.
    let range = format!("Content-Range: bytes {offset}-{}/{size}", size - 1);
    let resumed = api.call(
        &operator,
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/offset+octet-stream",
            "-H",
            &range,
            "--data-binary",
            &data,
            &api.url(&location),
        ],
    );
    assert_eq!(
        resumed.status,
        204,
        "{}",
        String::from_utf8_lossy(&resumed.body)
    );
    assert_eq!(resumed.header("upload-offset").unwrap(), size.to_string());

    let done = api.post_json(
        &operator,
        &format!("{location}/complete"),
        &Value::Null,
        &[],
    );
    assert_eq!(done.status, 202, "{}", String::from_utf8_lossy(&done.body));
    let task = api.wait_task(done.header("location").unwrap());
    assert_eq!(task["state"], "succeeded", "{task}");
    let report = &task["result"];
    assert_eq!(report["name"], "uploaded");
    assert_eq!(report["digest"], sha256_file(&iso));
    assert_eq!(report["size"], size);
    // The same bytes as `base`: the library's dedup stored nothing new.
    assert_eq!(report["new_bytes"], 0, "{report}");
    assert_eq!(task["progress"]["total"], size);
    // The upload is gone; its parts with it.
    assert_eq!(
        api.call(&operator, &["-I", &api.url(&location)]).status,
        404
    );
    let parts: Vec<_> = std::fs::read_dir(dir.path().join("state/uploads"))
        .unwrap()
        .collect();
    assert!(parts.is_empty());

    // Download with a range, through the images code.
    let bytes = std::fs::read(&iso).unwrap();
    let part = api.call(
        &operator,
        &[
            "-r",
            "1000-1999",
            &api.url("/api/v1/library/items/uploaded/versions/1/content"),
        ],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &bytes[1000..2000]);
    let (status, version) =
        api.get_json(&operator, "/api/v1/library/items/uploaded/versions/current");
    assert_eq!(status, 200);
    assert_eq!(version["labels"]["os"], "test");
    let (_, found) = api.get_json(&operator, "/api/v1/library/items?label=os=test");
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
}

/// Where openapi-spec-validator is: $VMEDIA_OPENAPI_VALIDATOR, else the setup's venv.
fn validator() -> PathBuf {
    match std::env::var_os("VMEDIA_OPENAPI_VALIDATOR") {
        Some(path) => PathBuf::from(path),
        None => Path::new(&std::env::var_os("VMEDIA_VENV").unwrap_or("/opt/vmedia-venv".into()))
            .join("bin/openapi-spec-validator"),
    }
}

#[test]
fn the_openapi_document_validates_and_readonly_is_refused_every_mutating_operation() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let api = start(dir.path());
    let library = api.library();
    add(&library, "deb", &iso);

    // The document needs no credentials.
    let reply = curl(&["-k", &api.url("/api/v1/openapi.json")]);
    assert_eq!(reply.status, 200);
    let document = dir.path().join("openapi.json");
    std::fs::write(&document, &reply.body).unwrap();
    let validator = validator();
    let checked = Command::new(&validator)
        .arg(&document)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", validator.display()));
    assert!(
        checked.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let doc: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let readonly = api.token("viewer", Role::Readonly);
    let mut tried = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            // Logging in needs no credentials; logging out of one's own session is allowed.
            if path.starts_with("/api/v1/sessions") {
                continue;
            }
            let concrete = path
                .replace("{name}", "deb")
                .replace("{id}", "0123456789abcdef0123456789abcdef")
                .replace("{version}", "1");
            let reply = api.call(
                &readonly,
                &[
                    "-X",
                    &method.to_uppercase(),
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    "{}",
                    &api.url(&concrete),
                ],
            );
            assert_eq!(reply.status, 403, "{method} {concrete}");
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            );
            tried += 1;
        }
    }
    assert!(tried >= 12, "only {tried} mutating operations");
    // Reads are fine, and nothing changed.
    let (status, items) = api.get_json(&readonly, "/api/v1/library/items");
    assert_eq!(status, 200);
    assert_eq!(items["items"][0]["name"], "deb");
    assert_eq!(items["items"][0]["current"], 1);
    // Every refusal is in the audit log, which the readonly token may not read.
    assert_eq!(api.get_json(&readonly, "/api/v1/audit").0, 403);
    let (status, audit) = api.get_json(
        &api.admin,
        "/api/v1/audit?user=viewer&outcome=denied&limit=1000",
    );
    assert_eq!(status, 200);
    assert!(audit["items"].as_array().unwrap().len() >= tried, "{audit}");
}

#[test]
fn rollback_needs_if_match_and_creates_replay_their_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path());
    let library = api.library();
    for seed in [1, 2] {
        let file = dir.path().join(format!("v{seed}.img"));
        std::fs::write(&file, noise(seed, 1 << 20)).unwrap();
        add(&library, "disk", &file);
    }
    let other = dir.path().join("zeta.img");
    std::fs::write(&other, noise(3, 1 << 16)).unwrap();
    add(&library, "zeta", &other);
    let op = api.token("op", Role::Operator);
    let item = api.call(&op, &[&api.url("/api/v1/library/items/disk")]);
    assert_eq!(item.status, 200);
    let etag = item.header("etag").unwrap().to_string();
    let body = serde_json::json!({"to": 1});
    let missing = api.post_json(&op, "/api/v1/library/items/disk/rollback", &body, &[]);
    assert_eq!(missing.status, 428);
    let stale = api.post_json(
        &op,
        "/api/v1/library/items/disk/rollback",
        &body,
        &["-H", "If-Match: \"0000000000000000\""],
    );
    assert_eq!(stale.status, 412);
    let if_match = format!("If-Match: {etag}");
    let done = api.post_json(
        &op,
        "/api/v1/library/items/disk/rollback",
        &body,
        &["-H", &if_match],
    );
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    assert_eq!(json(&done)["version"], 1);
    assert_ne!(done.header("etag").unwrap(), etag);
    // The same ETag again is stale now.
    let again = api.post_json(
        &op,
        "/api/v1/library/items/disk/rollback",
        &body,
        &["-H", &if_match],
    );
    assert_eq!(again.status, 412);
    let (_, history) = api.get_json(&op, "/api/v1/library/items/disk/history");
    assert_eq!(history["current"], 1);
    assert_eq!(history["events"].as_array().unwrap().len(), 3);

    // Idempotency-Key: the second identical create answers the first answer.
    let create = serde_json::json!({"item": "new", "length": 10});
    let key = ["-H", "Idempotency-Key: 7d0b2c1e-create-1"];
    let first = api.post_json(&op, "/api/v1/uploads", &create, &key);
    let second = api.post_json(&op, "/api/v1/uploads", &create, &key);
    assert_eq!(first.status, 201);
    assert_eq!(second.status, 201);
    assert_eq!(json(&first)["id"], json(&second)["id"]);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("location"), second.header("location"));
    let other = api.post_json(
        &op,
        "/api/v1/uploads",
        &serde_json::json!({"item": "other"}),
        &key,
    );
    assert_eq!(other.status, 422);
    // One upload was made, not two.
    let count = std::fs::read_dir(dir.path().join("state/uploads"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(count, 1);

    // Pagination: two items, one per page, following `next`.
    let (_, page) = api.get_json(&op, "/api/v1/library/items?limit=1");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_string();
    let (_, rest) = api.get_json(&op, &next);
    assert_eq!(rest["items"][0]["name"], "zeta");
    assert!(rest["next"].is_null());

    // Tasks: a user sees only their own (another's is 404, as a missing one); an
    // administrator sees all.
    let started = api.post_json(
        &op,
        "/api/v1/library/verify",
        &serde_json::json!({"item": "zeta"}),
        &[],
    );
    assert_eq!(started.status, 202);
    let location = started.header("location").unwrap().to_string();
    let id = json(&started)["id"].as_str().unwrap().to_string();
    let finished = api.wait_task(&location);
    assert_eq!(finished["owner"], "op");
    let ids = |token: &str| -> Vec<String> {
        let (status, tasks) = api.get_json(token, "/api/v1/tasks");
        assert_eq!(status, 200, "{tasks}");
        tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&op), vec![id.clone()]);
    assert!(ids(&api.admin).contains(&id));
    let stranger = api.token("stranger", Role::Operator);
    assert!(ids(&stranger).is_empty());
    let reader = api.token("reader", Role::Readonly);
    assert!(ids(&reader).is_empty());
    let (status, body) = api.get_json(&stranger, &location);
    assert_eq!(status, 404, "{body}");
    assert_eq!(api.get_json(&reader, &location).0, 404);
    assert_eq!(api.get_json(&op, &location).0, 200);
}

#[test]
fn sessions_users_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path());
    let added = api.post_json(
        &api.admin,
        "/api/v1/users",
        &serde_json::json!({"name": "alice", "role": "operator", "password": "s3cret pass"}),
        &[],
    );
    assert_eq!(
        added.status,
        201,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    // HTTP Basic works.
    let basic = curl(&["-k", "-u", "alice:s3cret pass", &api.url("/api/v1/whoami")]);
    assert_eq!(basic.status, 200);
    assert_eq!(json(&basic)["role"], "operator");
    // A session login gives a bearer token; logout ends it.
    let login = curl(&[
        "-k",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"name":"alice","password":"s3cret pass"}"#,
        &api.url("/api/v1/sessions"),
    ]);
    assert_eq!(login.status, 201);
    let session = json(&login);
    let token = session["token"].as_str().unwrap();
    assert_eq!(api.get_json(token, "/api/v1/whoami").1["name"], "alice");
    // An operator cannot manage users.
    assert_eq!(api.get_json(token, "/api/v1/users").0, 403);
    let id = session["id"].as_str().unwrap();
    let out = api.call(
        token,
        &["-X", "DELETE", &api.url(&format!("/api/v1/sessions/{id}"))],
    );
    assert_eq!(out.status, 204);
    assert_eq!(api.get_json(token, "/api/v1/whoami").0, 401);

    // The audit log names who did what from where; no secret is in it.
    let (status, audit) = api.get_json(&api.admin, "/api/v1/audit");
    assert_eq!(status, 200);
    let text = audit.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    let records = audit["items"].as_array().unwrap();
    let add = records
        .iter()
        .find(|r| r["action"] == "POST /api/v1/users")
        .unwrap();
    assert_eq!(add["user"], "root");
    assert_eq!(add["outcome"], "success");
    assert!(add["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(records
        .iter()
        .any(|r| r["action"] == "session.login" && r["user"] == "alice"));
    let raw = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    assert!(!raw.contains("s3cret") && !raw.contains(&api.admin[20..]));
}

#[test]
fn hostile_requests_get_clear_4xx_and_the_daemon_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let api = start(dir.path());
    let op = api.token("op", Role::Operator);
    let post = |body: &str, content_type: &str, path: &str| {
        api.call(
            &op,
            &[
                "-X",
                "POST",
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                body,
                &api.url(path),
            ],
        )
    };
    let big = dir.path().join("big.json");
    // 8 MiB: far past the 64 KiB limit, so curl is still sending when the 413 comes; the
    // daemon's lingering close lets it read that answer (a reset here is the regression).
    std::fs::write(&big, format!("{{\"item\":\"{}\"}}", "a".repeat(8 << 20))).unwrap();
    post_oversized(&api.url("/api/v1/uploads"), &op, &big);
    let audit = std::fs::read_to_string(dir.path().join("state/audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            r["action"] == "POST /api/v1/uploads" && r["detail"] == "413"
        }),
        "the daemon recorded no 413 for the oversized body: {audit}"
    );
    let bad = post("{\"item\": ", "application/json", "/api/v1/uploads");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("content-type"), Some("application/problem+json"));
    assert_eq!(json(&bad)["status"], 400);
    assert_eq!(
        post("{\"item\":\"x\"}", "text/plain", "/api/v1/uploads").status,
        415
    );
    assert_eq!(
        post(
            "{\"item\":\"x\",\"evil\":1}",
            "application/json",
            "/api/v1/uploads"
        )
        .status,
        422
    );
    // Traversal in item names, upload ids and paths.
    assert_eq!(
        post(
            "{\"item\":\"../../etc\"}",
            "application/json",
            "/api/v1/uploads"
        )
        .status,
        400
    );
    let traversal = api.call(
        &op,
        &[&api.url("/api/v1/library/items/..%2F..%2Fetc/versions/1/content")],
    );
    assert_eq!(traversal.status, 400);
    let upload = api.call(
        &op,
        &[
            "-I",
            &api.url("/api/v1/uploads/..%2F..%2Fauth%2Faccounts.json"),
        ],
    );
    assert_eq!(upload.status, 404);
    let as_is = api.call(&op, &["--path-as-is", &api.url("/api/v1/../../etc/passwd")]);
    assert_eq!(as_is.status, 404);
    // A PATCH with a hostile offset header.
    let patch = api.call(
        &op,
        &[
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/offset+octet-stream",
            "-H",
            "Upload-Offset: -5",
            "--data-binary",
            "x",
            &api.url("/api/v1/uploads/0123456789abcdef0123456789abcdef"),
        ],
    );
    assert_eq!(patch.status, 400);
    // Forged, expired and missing credentials.
    let mut forged = op.clone();
    forged.replace_range(op.len() - 4.., "0000");
    assert_eq!(api.get_json(&forged, "/api/v1/whoami").0, 401);
    let handle = api.daemon.handle.as_ref().unwrap();
    let expired = handle
        .users
        .create_token("old", Role::Operator, Some(Duration::from_secs(3)))
        .unwrap()
        .token;
    assert_eq!(api.get_json(&expired, "/api/v1/whoami").0, 200);
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(api.get_json(&expired, "/api/v1/whoami").0, 401);
    let anonymous = curl(&["-k", &api.url("/api/v1/whoami")]);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous
        .header("www-authenticate")
        .unwrap()
        .contains("Bearer"));
    assert_eq!(api.get_json("not a token", "/api/v1/whoami").0, 401);
    // Password guessing from one address is cut off; tokens still work.
    handle
        .users
        .add_user("bob", Role::Readonly, "right")
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(curl(&["-k", "-u", "bob:wrong", &api.url("/api/v1/whoami")]).status);
    }
    assert_eq!(statuses[0], 401);
    assert_eq!(*statuses.last().unwrap(), 429, "{statuses:?}");
    assert_eq!(
        curl(&["-k", "-u", "bob:right", &api.url("/api/v1/whoami")]).status,
        429
    );
    assert!(
        handle.users.password("bob", "right").is_none(),
        "the name is limited too"
    );
    // The daemon is unaffected.
    assert_eq!(api.get_json(&op, "/api/v1/whoami").0, 200);
    // And the plain HTTP port serves no API under auth: only images, metrics and the old routes.
    let plain = curl(&[&format!("{}/api/v1/whoami", api.daemon.url)]);
    assert_eq!(plain.status, 404);
}
