//! `vmedia user add/ls/rm` and `vmedia token create/ls/rm` offline on a state folder, and
//! `vmedia serve --https-port` without a certificate: it makes a self-signed one, prints its
//! fingerprint, and answers the REST API with a token the offline command created.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmedia_library::{InitOptions, Library, OpenConfig};
use vmedia_server::auth::{Authenticate, Role, UserStore};

fn vmedia(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmedia"))
        .args(args)
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn users_and_tokens_are_managed_offline_and_the_daemon_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let password = dir.path().join("alice.pw");
    std::fs::write(&password, "horse battery staple\n").unwrap();
    let pw = password.to_str().unwrap();

    let added = ok(vmedia(&[
        "user",
        "add",
        "alice",
        "--role",
        "operator",
        "--password-file",
        pw,
        "--state",
        state_arg,
    ]));
    assert_eq!(added.trim(), "added alice (operator)");
    let again = failed(vmedia(&[
        "user",
        "add",
        "alice",
        "--role",
        "operator",
        "--password-file",
        pw,
        "--state",
        state_arg,
    ]));
    assert!(again.contains("already exists"), "{again}");
    let wizard = failed(vmedia(&[
        "user",
        "add",
        "bob",
        "--role",
        "wizard",
        "--password-file",
        pw,
        "--state",
        state_arg,
    ]));
    assert!(wizard.contains("unknown role"), "{wizard}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(vmedia(&["user", "ls", "--json", "--state", state_arg]))).unwrap();
    assert_eq!(listed[0]["name"], "alice");
    assert_eq!(listed[0]["role"], "operator");

    let token = ok(vmedia(&[
        "token", "create", "ci", "--role", "readonly", "--state", state_arg,
    ]));
    let token = token.trim().to_string();
    let store = UserStore::open(&state).unwrap();
    let who = store.token(&token).unwrap();
    assert_eq!((who.name.as_str(), who.role), ("ci", Role::Readonly));
    assert_eq!(
        store
            .password("alice", "horse battery staple")
            .unwrap()
            .role,
        Role::Operator
    );
    drop(store);

    // The audit log has the offline changes, from `cli`, without the password or token.
    let audit = std::fs::read_to_string(state.join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"user.add\""), "{audit}");
    assert!(audit.contains("\"peer\":\"cli\""));
    assert!(!audit.contains("horse") && !audit.contains(&token[20..]));

    serve_accepts(dir.path(), &state, &token);

    ok(vmedia(&["user", "rm", "alice", "--state", state_arg]));
    assert_eq!(ok(vmedia(&["user", "ls", "--state", state_arg])).trim(), "");
    let missing = failed(vmedia(&["user", "rm", "alice", "--state", state_arg]));
    assert!(missing.contains("no such user"), "{missing}");
}

/// Runs `vmedia serve --https-port` (no certificate given) and calls the API with `token`.
fn serve_accepts(dir: &Path, state: &Path, token: &str) {
    let library = dir.join("library");
    Library::init(
        &OpenConfig::folder(&library, "tester@host"),
        &InitOptions::default(),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmedia"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1",
            "--http-port",
            "0",
            "--nbd-port",
            "0",
        ])
        .args(["--https-port", &port.to_string()])
        .arg("--state")
        .arg(state)
        .env("VMEDIA_LIBRARY", &library)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut fingerprint = None;
    let mut listening = false;
    while !(listening && fingerprint.is_some()) && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("listening for https") {
            listening = true;
        }
        if let Some(rest) = line.split("SHA-256 ").nth(1) {
            fingerprint = Some(rest.trim().to_string());
        }
    }
    let fingerprint = fingerprint.expect("no fingerprint line");
    assert!(listening);
    assert_eq!(fingerprint.split(':').count(), 32, "{fingerprint}");
    assert!(state.join("tls/cert.pem").exists());
    let out = Command::new("curl")
        .args(["-sS", "-k", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://127.0.0.1:{port}/api/v1/whoami"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(body["name"], "ci");
    assert_eq!(body["role"], "readonly");
}
