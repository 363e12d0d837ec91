//! The CLI through a remote daemon (`--server https://... --token T`): library add (resumable
//! upload), ls, history, show, rollback, get (a partial download resumed with Range), and user
//! and token management, all against one `vmedia serve --https-port` with its self-signed
//! certificate, which is trusted only when asked (`--ca-cert` or `--insecure`).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::library::{pseudo_random, Backend, TestLibrary};
use support::serve::{free_port, Daemon, ServeOptions};
use support::{run_any, run_ok, sha256_file};

/// How long the HTTPS listener may take to appear after the HTTP one.
const HTTPS_WAIT: Duration = Duration::from_secs(60);

/// `vmedia ARGS` with no local library and no daemon in the environment: whatever works, works
/// through the flags given.
fn cli(args: &[&str]) -> Command {
    let mut cmd = support::vmedia();
    cmd.args(args)
        .env_remove("VMEDIA_LIBRARY")
        .env_remove("VMEDIA_SERVER")
        .env_remove("VMEDIA_TOKEN")
        .env("XDG_DATA_HOME", "/nonexistent/vmedia-api-cli")
        .env("XDG_CONFIG_HOME", "/nonexistent/vmedia-api-cli");
    cmd
}

fn json(cmd: &mut Command) -> serde_json::Value {
    let out = run_ok(cmd);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn failure(cmd: &mut Command) -> String {
    let (code, out, err) = run_any(cmd);
    assert_eq!(code, 1, "expected a failure: {out}{err}");
    err
}

#[test]
fn library_users_and_tokens_work_through_a_remote_daemon() {
    let lib = TestLibrary::new(Backend::Folder, "api-cli");
    run_ok(&mut lib.library(&["init"]));
    let https_port = free_port();
    let daemon = Daemon::start(
        lib.vmedia(),
        &ServeOptions {
            nbd: false,
            extra: vec!["--https-port".into(), https_port.to_string()],
            ..ServeOptions::default()
        },
    );
    let deadline = Instant::now() + HTTPS_WAIT;
    while !daemon.log().contains("listening for https") {
        assert!(Instant::now() < deadline, "no HTTPS:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = daemon.state.path().to_str().unwrap().to_string();
    let server = format!("https://127.0.0.1:{https_port}");
    let ca = daemon.state.path().join("tls/cert.pem");
    let ca = ca.to_str().unwrap();
    let token = String::from_utf8(
        run_ok(&mut cli(&[
            "token",
            "create",
            "admin",
            "--role",
            "administrator",
            "--state",
            &state,
        ]))
        .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let remote = |args: &[&str]| {
        let mut cmd = cli(args);
        cmd.args(["--server", &server, "--token", &token, "--ca-cert", ca]);
        cmd
    };

    // The self-signed certificate is not trusted silently; plain http is refused outright.
    let err = failure(&mut cli(&[
        "library", "ls", "--server", &server, "--token", &token,
    ]));
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
    let http = format!("http://127.0.0.1:{}", daemon.http_port);
    let err = failure(&mut cli(&["library", "ls", "--server", &http]));
    assert!(err.contains("--https-port"), "{err}");
    let err = failure(&mut remote(&["library", "gc"]));
    assert!(err.contains("through --server"), "{err}");

    // add (upload), twice; ls; history; show.
    let first = lib.path("one.img");
    let second = lib.path("two.img");
    std::fs::write(&first, pseudo_random(3 << 20, 1)).unwrap();
    std::fs::write(&second, pseudo_random((5 << 20) + 123, 2)).unwrap();
    let added = json(&mut remote(&[
        "library",
        "add",
        "demo",
        first.to_str().unwrap(),
        "--label",
        "os=test",
        "--json",
    ]));
    assert_eq!(added["version"], 1);
    assert_eq!(added["digest"], format!("sha256:{}", sha256_file(&first)));
    let added = json(&mut remote(&[
        "library",
        "add",
        "demo",
        second.to_str().unwrap(),
        "--note",
        "second",
        "--json",
    ]));
    assert_eq!(added["version"], 2);
    // The environment names the daemon and the token as well as the flags do.
    let items = json(
        cli(&["library", "ls", "--json", "--ca-cert", ca])
            .env("VMEDIA_SERVER", &server)
            .env("VMEDIA_TOKEN", &token),
    );
    assert_eq!(items[0]["name"], "demo");
    assert_eq!(items[0]["current"], 2);
    let text =
        String::from_utf8(run_ok(&mut remote(&["library", "history", "demo"])).stdout).unwrap();
    assert!(
        text.contains("@1") && text.contains("@2") && text.contains("second"),
        "{text}"
    );
    let shown = json(&mut remote(&["library", "show", "demo@1", "--json"]));
    assert_eq!(shown["labels"]["os"], "test");

    // rollback, then the item's current version is 1.
    let event = json(&mut remote(&[
        "library", "rollback", "demo", "--to", "1", "--json",
    ]));
    assert_eq!(event["version"], 1);
    let history = json(&mut remote(&["library", "history", "demo", "--json"]));
    assert_eq!(history["current"], 1);

    // get: an interrupted download (half of the bytes in the partial file) is resumed with a
    // Range request; the file appears once its digest matched.
    let out = lib.path("out.img");
    let partial = lib.path(".out.img.vmedia-part");
    let bytes = std::fs::read(&second).unwrap();
    let half = bytes.len() / 2;
    std::fs::write(&partial, &bytes[..half]).unwrap();
    let mut get = cli(&[
        "library",
        "get",
        "demo@2",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    get.args(["--server", &server, "--token", &token, "--insecure"]);
    let got = json(&mut get);
    assert_eq!(got["written_bytes"], (bytes.len() - half) as u64, "{got}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(!partial.exists());
    let err = failure(&mut remote(&[
        "library",
        "get",
        "demo",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(err.contains("--force"), "{err}");

    // Users and tokens through the daemon; a read-only token changes nothing.
    let password = lib.path("bob.pw");
    std::fs::write(&password, "bob-secret\n").unwrap();
    let text = String::from_utf8(
        run_ok(&mut remote(&[
            "user",
            "add",
            "bob",
            "--role",
            "operator",
            "--password-file",
            password.to_str().unwrap(),
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(text.trim(), "added bob (operator)");
    let users = json(&mut remote(&["user", "ls", "--json"]));
    assert!(
        users.as_array().unwrap().iter().any(|u| u["name"] == "bob"),
        "{users}"
    );
    let viewer = json(&mut remote(&[
        "token", "create", "viewer", "--role", "readonly", "--json",
    ]));
    let viewer_token = viewer["token"].as_str().unwrap();
    let mut denied = cli(&["library", "rollback", "demo", "--to", "2"]);
    denied.args([
        "--server",
        &server,
        "--token",
        viewer_token,
        "--ca-cert",
        ca,
    ]);
    let err = failure(&mut denied);
    assert!(err.contains("403"), "{err}");
    let tokens = json(&mut remote(&["token", "ls", "--json"]));
    assert!(tokens
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "viewer"));
    run_ok(&mut remote(&["user", "rm", "bob"]));
    let users = json(&mut remote(&["user", "ls", "--json"]));
    assert!(!users.as_array().unwrap().iter().any(|u| u["name"] == "bob"));

    // The daemon's audit log names the API changes and their actor.
    let audit = std::fs::read_to_string(Path::new(&state).join("audit.jsonl")).unwrap();
    for action in [
        "POST /api/v1/uploads",
        "POST /api/v1/users",
        "DELETE /api/v1/users/bob",
    ] {
        assert!(
            audit.contains(action),
            "{action} not in the audit log:\n{audit}"
        );
    }
    daemon.stop();
}
