//! `pull` against a small in-process registry that demands Bearer tokens (the flow of Docker
//! Hub, GHCR and Harbor, which the reference registry cannot show without a token server):
//! the challenge is answered from its realm, the layer streams, and a layer whose bytes do not
//! match the manifest's digest fails before the stream reports its end.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use vmedia_oci::{pull, Reference, RegistryOptions};

const TOKEN: &str = "t0ken";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Serves `routes` (path -> content type, body); every `/v2/` path needs the Bearer token,
/// `/token` gives it when asked for the challenge's scope. Returns the base address and the
/// log of request lines.
fn serve(routes: HashMap<String, (String, Vec<u8>)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (realm, seen) = (format!("http://{addr}/token"), log.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h
                    .strip_prefix("authorization: ")
                    .or(h.strip_prefix("Authorization: "))
                {
                    auth = Some(v.trim().to_string());
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(path.clone());
            let (status, extra, body): (&str, String, Vec<u8>) = if path.starts_with("/token?") {
                if path.contains("scope=repository%3Avm%2Fdisk%3Apull") {
                    (
                        "200 OK",
                        "Content-Type: application/json\r\n".into(),
                        format!(r#"{{"token":"{TOKEN}"}}"#).into_bytes(),
                    )
                } else {
                    ("403 Forbidden", String::new(), Vec::new())
                }
            } else if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
                (
                    "401 Unauthorized",
                    format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:vm/disk:pull\"\r\n"),
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#.to_vec(),
                )
            } else if let Some((content_type, body)) = routes.get(&path) {
                (
                    "200 OK",
                    format!("Content-Type: {content_type}\r\n"),
                    body.clone(),
                )
            } else {
                ("404 Not Found", String::new(), Vec::new())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (addr, log)
}

/// A registry holding `vm/disk:1` whose layer is `layer` but whose manifest names
/// `layer_digest`.
fn registry_with(layer: &[u8], layer_digest: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let mut routes = HashMap::new();
    routes.insert(
        "/v2/vm/disk/manifests/1".to_string(),
        (
            "application/vnd.oci.image.manifest.v1+json".to_string(),
            manifest.into_bytes(),
        ),
    );
    routes.insert(
        format!("/v2/vm/disk/blobs/{layer_digest}"),
        ("application/octet-stream".to_string(), layer.to_vec()),
    );
    serve(routes)
}

fn layer_of(disk: &[u8]) -> Vec<u8> {
    let mut layer = vmedia_oci::tar::layer_head("disk.img", disk.len() as u64).unwrap();
    layer.extend_from_slice(disk);
    layer.extend_from_slice(&vmedia_oci::tar::layer_tail(disk.len() as u64));
    layer
}

fn options() -> RegistryOptions {
    RegistryOptions {
        plain_http: true,
        ..RegistryOptions::default()
    }
}

#[test]
fn a_bearer_challenge_is_answered_from_its_realm_and_the_disk_streams() {
    let disk: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let layer = layer_of(&disk);
    let (addr, log) = registry_with(&layer, &digest(&layer));
    let reference = Reference::parse(&format!("oci://{addr}/vm/disk:1")).unwrap();
    let mut pulled = pull(&reference, &options()).unwrap();
    assert_eq!(pulled.report.disk_path, "disk/disk.img");
    let mut data = Vec::new();
    pulled.read_to_end(&mut data).unwrap();
    assert_eq!(data, disk);
    let log = log.lock().unwrap();
    assert!(log.iter().any(|p| p.starts_with("/token?")), "{log:?}");
    // One token fetch serves the manifest and the blob.
    assert_eq!(
        log.iter().filter(|p| p.starts_with("/token?")).count(),
        1,
        "{log:?}"
    );
}

#[test]
fn a_layer_that_does_not_match_its_digest_fails_before_the_end() {
    let disk = vec![0x5au8; 4096];
    let layer = layer_of(&disk);
    let mut tampered = layer.clone();
    tampered[1024 + 100] ^= 1; // a disk byte: the tar still parses
    let (addr, _) = registry_with(&tampered, &digest(&layer));
    // The blob route is keyed by the manifest's digest, so the registry serves the tampered
    // bytes under the honest digest, as a corrupted store would.
    let reference = Reference::parse(&format!("oci://{addr}/vm/disk:1")).unwrap();
    let mut pulled = pull(&reference, &options()).unwrap();
    let mut data = Vec::new();
    let e = pulled.read_to_end(&mut data).unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
}

#[test]
fn a_registry_without_credentials_for_basic_names_the_flags() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let reference = Reference::parse(&format!("oci://{addr}/vm/disk:1")).unwrap();
    let e = pull(&reference, &options())
        .err()
        .expect("pull without credentials");
    assert!(e.to_string().contains("--username"), "{e}");
}
