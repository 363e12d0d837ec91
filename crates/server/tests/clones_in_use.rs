//! `clone rm` of a clone that client connections hold open: the store and the API refuse it
//! (409, with an error that says to disconnect or use `--force`) until the connections let go,
//! and a forced removal goes through while every request on those connections fails.
//! Connections are opened the way the NBD front end opens them: `ExportResolver::open`.

#[path = "support_clones.rs"]
mod support_clones;

use std::sync::Arc;

use support_clones::{agent, bases_with, serve_api as serve};
use vmedia_server::clones::api::ErrorBody;
use vmedia_server::clones::{CloneError, CloneStore};
use vmedia_server::export::ExportResolver;

fn delete(url: &str) -> (u16, String) {
    let response = agent().delete(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().read_to_string().unwrap())
}

#[test]
fn a_clone_with_open_connections_is_refused_until_they_close_or_the_removal_is_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (bases, _) = bases_with(dir.path(), 1 << 20);
    let store = Arc::new(CloneStore::open(&dir.path().join("state"), bases as _).unwrap());
    store.create("base", "busy", false).unwrap();
    store.create("base", "forced", false).unwrap();
    let url = serve(Arc::clone(&store));

    let first = store.open("clone/busy").unwrap();
    let second = store.open("clone/busy").unwrap();
    first.write_at(b"data", 0, true).unwrap();
    assert_eq!(store.connections("busy").unwrap(), 2);
    match store.remove_with("busy", false) {
        Err(CloneError::InUse { connections, .. }) => assert_eq!(connections, 2),
        other => panic!("removed a clone in use: {other:?}"),
    }
    let (status, body) = delete(&format!("{url}/busy"));
    assert_eq!(status, 409, "{body}");
    let error: ErrorBody = serde_json::from_str(&body).unwrap();
    assert!(
        error.error.contains("2 open connection") && error.error.contains("--force"),
        "{}",
        error.error
    );
    // The refused clone is intact and still served.
    let mut back = [0u8; 4];
    second.read_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"data");
    assert!(dir.path().join("state/clones/busy").exists());

    // Once its connections close, a plain removal goes through.
    drop(first);
    drop(second);
    assert_eq!(store.connections("busy").unwrap(), 0);
    let (status, body) = delete(&format!("{url}/busy"));
    assert_eq!(status, 204, "{body}");
    assert!(!dir.path().join("state/clones/busy").exists());

    // Forced: removed while connected; the connection's requests fail from then on.
    let held = store.open("clone/forced").unwrap();
    let (status, body) = delete(&format!("{url}/forced"));
    assert_eq!(status, 409, "{body}");
    let (status, body) = delete(&format!("{url}/forced?force=true"));
    assert_eq!(status, 204, "{body}");
    assert!(held.write_at(b"late", 0, false).is_err());
    assert!(held.read_at(&mut back, 0).is_err());
    assert!(matches!(
        store.connections("forced"),
        Err(CloneError::NotFound(_))
    ));
    // An unknown query parameter is the request's mistake.
    store.create("base", "other", false).unwrap();
    let (status, body) = delete(&format!("{url}/other?forse=1"));
    assert_eq!(status, 400, "{body}");
}
