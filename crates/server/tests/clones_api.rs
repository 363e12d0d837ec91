//! The clone control API (`clones::api::router`) served by axum on a loopback port, driven
//! with ureq as the CLI drives it: statuses, JSON bodies, `{"error": ...}` errors.

#[path = "support_clones.rs"]
mod support_clones;

use std::sync::Arc;

use support_clones::{agent, bases_with, serve_api as serve};
use vmedia_server::clones::api::ErrorBody;
use vmedia_server::clones::{CloneInfo, CloneStore};

type Response = ureq::http::Response<ureq::Body>;

/// POSTs a JSON body (the workspace's ureq is built without its json feature).
fn post(agent: &ureq::Agent, url: &str, body: serde_json::Value) -> Response {
    agent
        .post(url)
        .content_type("application/json")
        .send(serde_json::to_vec(&body).unwrap())
        .unwrap()
}

fn json<T: serde::de::DeserializeOwned>(response: Response) -> T {
    let text = response.into_body().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn error_of(response: Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: ErrorBody = json(response);
    (status, body.error)
}

#[test]
fn the_api_creates_lists_commits_and_removes_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), 1 << 20);
    let store = Arc::new(CloneStore::open(&dir.path().join("state"), bases as _).unwrap());
    let url = serve(Arc::clone(&store));
    let agent = agent();

    let created = post(
        &agent,
        &url,
        serde_json::json!({"base": "base", "name": "vm1"}),
    );
    assert_eq!(created.status(), 201);
    let info: CloneInfo = json(created);
    assert_eq!((info.name.as_str(), info.base.as_str()), ("vm1", "base@1"));
    assert!(!info.ephemeral);

    let eph = post(
        &agent,
        &url,
        serde_json::json!({"base": "base@1", "name": "vm2", "ephemeral": true}),
    );
    assert_eq!(eph.status(), 201);

    // Writes through the export show in the listing's bytes written.
    store
        .open_export("vm1")
        .unwrap()
        .write_at(b"hello", 10, true)
        .unwrap();
    let listed: Vec<CloneInfo> = json(agent.get(&url).call().unwrap());
    let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["vm1", "vm2"]);
    assert_eq!(listed[0].bytes_written, 64 * 1024);
    assert!(listed[1].ephemeral);
    let one: CloneInfo = json(agent.get(&format!("{url}/vm1")).call().unwrap());
    assert_eq!(one, listed[0]);

    // 409: the name is taken; 400: a bad name, a malformed body; 404: no such base or clone.
    let taken = post(
        &agent,
        &url,
        serde_json::json!({"base": "base", "name": "vm1"}),
    );
    let (status, message) = error_of(taken);
    assert_eq!(status, 409);
    assert!(message.contains("vm1"), "{message}");
    let bad = post(
        &agent,
        &url,
        serde_json::json!({"base": "base", "name": "../x"}),
    );
    assert_eq!(error_of(bad).0, 400);
    let malformed = agent
        .post(&url)
        .content_type("application/json")
        .send("{\"base\": 1")
        .unwrap();
    assert_eq!(error_of(malformed).0, 400);
    let unknown_field = post(
        &agent,
        &url,
        serde_json::json!({"base": "base", "name": "vm3", "size": 5}),
    );
    assert_eq!(error_of(unknown_field).0, 400);
    let no_base = post(
        &agent,
        &url,
        serde_json::json!({"base": "missing", "name": "vm3"}),
    );
    assert_eq!(error_of(no_base).0, 404);
    let gone = agent.delete(&format!("{url}/nope")).call().unwrap();
    assert_eq!(error_of(gone).0, 404);
    let no_clone = agent.get(&format!("{url}/nope")).call().unwrap();
    assert_eq!(error_of(no_clone).0, 404);

    // The file-backed test bases have no library: commit reaches them and reports a 500.
    let commit = post(
        &agent,
        &format!("{url}/vm1/commit"),
        serde_json::json!({"as": "saved"}),
    );
    let (status, message) = error_of(commit);
    assert_eq!(status, 500);
    assert!(message.contains("no library"), "{message}");
    let commit_missing = post(
        &agent,
        &format!("{url}/nope/commit"),
        serde_json::json!({"as": "saved"}),
    );
    assert_eq!(error_of(commit_missing).0, 404);

    let removed = agent.delete(&format!("{url}/vm2")).call().unwrap();
    assert_eq!(removed.status(), 204);
    assert_eq!(store.list().len(), 1);
}
