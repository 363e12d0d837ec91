//! Registries as a distribution channel: `vmedia library push` to Debian's `docker-registry`
//! (the reference registry, on loopback, with htpasswd auth) read back by `skopeo inspect` and
//! `skopeo copy ... dir:` (the disk bytes, owner 107:107 under disk/); containerDisks that
//! skopeo pushed (Docker schema 2 with a gzip layer, a multi-platform OCI index) pulled by
//! `library add NAME oci://...` with the disk's SHA-256; hostile layers (two disks, path
//! traversal, a link, no disk) refused with no version left behind.
//! One registry serves every test of this binary.

mod support;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::library::{digest_of, json_of, pseudo_random, Backend, TestLibrary};
use support::{require_tool, run_any, run_ok};

const USER: &str = "vmedia";
const PASSWORD: &str = "registry-secret";
/// `htpasswd -Bbn vmedia registry-secret` (bcrypt, as docker-registry requires).
const HTPASSWD: &str = "vmedia:$2y$05$S3VGpxIJ8RQKcNFz6Jsc1OVNtsMgWtimYzjGLW49FhjRUq2ScyVJW\n";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry every test of this binary talks to.
struct Registry {
    _child: Mutex<Child>,
    dir: tempfile::TempDir,
    /// 127.0.0.1:PORT
    host: String,
}

/// Starts `cmd` from a thread that lives as long as the test process, with PDEATHSIG set, so
/// the registry dies with the test binary (a test thread's exit would kill it too early).
fn spawn_tied_to_process(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    sender.lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv().unwrap()
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let binary = require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("vmedia-registry")
            .tempdir()
            .unwrap();
        fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
        fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: vmedia-test\n    path: {}\n",
                dir.path().join("data").display(),
                dir.path().join("htpasswd").display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = spawn_tied_to_process(cmd).expect("cannot start docker-registry");
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(&host).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "docker-registry exited with {status}:\n{}",
                    fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            _child: Mutex::new(child),
            dir,
            host,
        }
    })
}

/// The password file vmedia reads (written once with the registry).
fn password_file() -> PathBuf {
    registry().dir.path().join("password")
}

/// The registry flags vmedia needs for the test registry.
fn registry_flags() -> Vec<String> {
    vec![
        "--plain-http".into(),
        "--username".into(),
        USER.into(),
        "--password-file".into(),
        password_file().display().to_string(),
    ]
}

fn oci(repo_tag: &str) -> String {
    format!("oci://{}/{repo_tag}", registry().host)
}

fn skopeo() -> Command {
    let mut cmd = Command::new(require_tool("skopeo"));
    cmd.arg("--insecure-policy");
    cmd
}

fn new_library(tag: &str) -> TestLibrary {
    let lib = TestLibrary::new(Backend::Folder, tag);
    run_ok(&mut lib.library(&["init"]));
    lib
}

/// A small qcow2 with pseudo-random content (qemu-img converts it from raw).
fn qcow2_disk(lib: &TestLibrary, name: &str, bytes: usize, seed: u64) -> PathBuf {
    let raw = lib.path(&format!("{name}.raw"));
    fs::write(&raw, pseudo_random(bytes, seed)).unwrap();
    let qcow2 = lib.path(&format!("{name}.qcow2"));
    run_ok(
        Command::new(require_tool("qemu-img"))
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    );
    qcow2
}

fn vmedia_json(cmd: &mut Command) -> Value {
    cmd.arg("--json");
    json_of(&run_ok(cmd))
}

#[test]
fn a_pushed_version_is_read_by_skopeo_and_pulled_back_with_its_digest() {
    let lib = new_library("oci-push");
    let disk = qcow2_disk(&lib, "disk", 3 << 20, 7);
    let added = vmedia_json(lib.library(&["add", "web"]).arg(&disk));
    let digest = added["digest"].as_str().unwrap().to_string();
    assert_eq!(digest, digest_of(&disk));

    let target = oci("vm/web:1");
    let pushed = vmedia_json(
        lib.library(&["push", "web", &target])
            .args(registry_flags()),
    );
    assert_eq!(pushed["layer_uploaded"], true, "{pushed}");
    assert_eq!(pushed["disk_path"], "disk/disk.qcow2");
    assert_eq!(pushed["disk_digest"].as_str(), Some(digest.as_str()));

    // skopeo reads the manifest vmedia wrote: one layer, linux/amd64, the annotations.
    let creds = format!("{USER}:{PASSWORD}");
    let docker_ref = format!("docker://{}/vm/web:1", registry().host);
    let inspect = json_of(&run_ok(skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &docker_ref,
    ])));
    assert_eq!(inspect["Architecture"], "amd64", "{inspect}");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"][0], pushed["layer_digest"]);
    assert_eq!(inspect["Digest"], pushed["manifest_digest"]);
    let raw = json_of(&run_ok(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &docker_ref,
    ])));
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        raw["annotations"]["io.vmedia.image.digest"].as_str(),
        Some(digest.as_str())
    );
    assert_eq!(raw["annotations"]["io.vmedia.image.name"], "web@1");

    // skopeo copies it out; the layer is a tar with disk/disk.qcow2 owned 107:107.
    let out = lib.path("skopeo-dir");
    run_ok(
        skopeo()
            .args([
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                &creds,
                &docker_ref,
            ])
            .arg(format!("dir:{}", out.display())),
    );
    let manifest: Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let layer_hex = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let layer = out.join(&layer_hex);
    assert_eq!(support::sha256_file(&layer), layer_hex);
    let listing = run_ok(
        Command::new("tar")
            .arg("-tvf")
            .arg(&layer)
            .arg("--numeric-owner"),
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    let disk_line = listing
        .lines()
        .find(|l| l.ends_with("disk/disk.qcow2"))
        .unwrap_or_else(|| panic!("no disk/disk.qcow2 in\n{listing}"));
    assert!(disk_line.contains("107/107"), "{disk_line}");
    let extracted = lib.path("extracted");
    fs::create_dir_all(&extracted).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&layer)
            .arg("-C")
            .arg(&extracted),
    );
    assert_eq!(
        fs::read(extracted.join("disk/disk.qcow2")).unwrap(),
        fs::read(&disk).unwrap(),
        "the disk skopeo copied differs from the version"
    );

    // The same version under another tag: the layer is already there and not sent again.
    let again = vmedia_json(
        lib.library(&["push", "web@1", &oci("vm/web:again")])
            .args(registry_flags()),
    );
    assert_eq!(again["layer_uploaded"], false, "{again}");
    assert_eq!(again["manifest_digest"], pushed["manifest_digest"]);

    // Pulled into another library: the same image digest.
    let other = new_library("oci-pull-back");
    let pulled = vmedia_json(
        other
            .library(&["add", "web-copy", &target])
            .args(registry_flags()),
    );
    assert_eq!(pulled["digest"].as_str(), Some(digest.as_str()), "{pulled}");
    assert_eq!(pulled["registry"]["disk_path"], "disk/disk.qcow2");
    assert_eq!(
        pulled["registry"]["manifest_digest"],
        pushed["manifest_digest"]
    );
}

/// Builds an OCI image layout with python3's tarfile (which writes any name, so hostile
/// layers too): one image per entry of `images`, an index when there are several.
fn oci_layout(dir: &Path, spec: &Value) -> PathBuf {
    const SCRIPT: &str = r#"
import gzip, hashlib, io, json, os, sys, tarfile
spec = json.load(open(sys.argv[1])); out = sys.argv[2]
os.makedirs(out + "/blobs/sha256", exist_ok=True)
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    open(out + "/blobs/sha256/" + d, "wb").write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
def layer(files, compress):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for f in files:
            info = tarfile.TarInfo(f["name"]); info.uid = info.gid = 107; info.mode = 0o440
            if f.get("dir"):
                info.type = tarfile.DIRTYPE; info.mode = 0o755; t.addfile(info)
            elif f.get("symlink"):
                info.type = tarfile.SYMTYPE; info.linkname = f["symlink"]; t.addfile(info)
            else:
                data = open(f["source"], "rb").read(); info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    diff = "sha256:" + hashlib.sha256(raw).hexdigest()
    return (gzip.compress(raw, mtime=0) if compress else raw), diff
manifests = []
for img in spec["images"]:
    raw, diff = layer(img["files"], img["gzip"])
    l = blob(raw); l["mediaType"] = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if img["gzip"] else "")
    cfg = json.dumps({"architecture": img["arch"], "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff]}, "config": {}}).encode()
    c = blob(cfg); c["mediaType"] = "application/vnd.oci.image.config.v1+json"
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": c, "layers": [l]}).encode()
    d = blob(m); d["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    d["platform"] = {"architecture": img["arch"], "os": "linux"}
    manifests.append(d)
if len(manifests) > 1:
    idx = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}).encode()
    top = blob(idx); top["mediaType"] = "application/vnd.oci.image.index.v1+json"
else:
    top = manifests[0]; del top["platform"]
top["annotations"] = {"org.opencontainers.image.ref.name": "t"}
json.dump({"schemaVersion": 2, "manifests": [top]}, open(out + "/index.json", "w"))
open(out + "/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')
"#;
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let spec_path = dir.join(format!("spec-{n}.json"));
    fs::write(&spec_path, spec.to_string()).unwrap();
    let layout = dir.join(format!("layout-{n}"));
    run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&spec_path)
            .arg(&layout),
    );
    layout
}

/// skopeo pushes a layout to the test registry (as Docker schema 2 with `v2s2`).
fn skopeo_push(layout: &Path, repo_tag: &str, extra: &[&str]) {
    let creds = format!("{USER}:{PASSWORD}");
    run_ok(
        skopeo()
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
            .args(extra)
            .arg(format!("oci:{}:t", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", registry().host)),
    );
}

#[test]
fn container_disks_skopeo_pushed_are_pulled_with_the_disk_digest() {
    let lib = new_library("oci-skopeo");
    let amd = qcow2_disk(&lib, "amd", 2 << 20, 11);
    let arm = qcow2_disk(&lib, "arm", 2 << 20, 12);
    let one = |arch: &str, path: &Path| {
        serde_json::json!({"arch": arch, "gzip": true, "files": [
            {"name": "disk", "dir": true},
            {"name": "disk/fedora.qcow2", "source": path.display().to_string()},
        ]})
    };

    // Docker schema 2, gzip layer: how `docker build` + `docker push` ship a containerDisk.
    let layout = oci_layout(
        lib.scratch.path(),
        &serde_json::json!({"images": [one("amd64", &amd)]}),
    );
    skopeo_push(&layout, "others/fedora:v2s2", &["--format", "v2s2"]);
    let added = vmedia_json(
        lib.library(&["add", "fedora", &oci("others/fedora:v2s2")])
            .args(registry_flags()),
    );
    assert_eq!(
        added["digest"].as_str(),
        Some(digest_of(&amd).as_str()),
        "{added}"
    );
    assert_eq!(
        added["registry"]["manifest_media_type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(added["registry"]["compression"], "gzip");

    // A multi-platform index: linux/amd64 is chosen.
    let layout = oci_layout(
        lib.scratch.path(),
        &serde_json::json!({"images": [one("arm64", &arm), one("amd64", &amd)]}),
    );
    skopeo_push(&layout, "others/multi:1", &["--all"]);
    let added = vmedia_json(
        lib.library(&["add", "multi", &oci("others/multi:1")])
            .args(registry_flags()),
    );
    assert_eq!(
        added["digest"].as_str(),
        Some(digest_of(&amd).as_str()),
        "{added}"
    );
    assert_eq!(added["registry"]["platform"], "linux/amd64");
}

#[test]
fn hostile_layers_are_refused_and_leave_no_version() {
    let lib = new_library("oci-hostile");
    let disk = qcow2_disk(&lib, "d", 1 << 20, 21);
    let source = disk.display().to_string();
    let cases = [
        (
            "two",
            serde_json::json!([
                {"name": "disk/a.qcow2", "source": source},
                {"name": "disk/b.qcow2", "source": source},
            ]),
            "more than one entry",
        ),
        (
            "traversal",
            serde_json::json!([{"name": "disk/../../etc/cron.d/x", "source": source}]),
            "path traversal",
        ),
        (
            "link",
            serde_json::json!([{"name": "disk/d.qcow2", "symlink": "/etc/shadow"}]),
            "is a link",
        ),
        (
            "nodisk",
            serde_json::json!([{"name": "etc/hostname", "source": source}]),
            "no layer holds a file under disk/",
        ),
    ];
    for (name, files, expected) in cases {
        let layout = oci_layout(
            lib.scratch.path(),
            &serde_json::json!({"images": [{"arch": "amd64", "gzip": false, "files": files}]}),
        );
        skopeo_push(&layout, &format!("hostile/{name}:1"), &[]);
        let (code, _out, err) = run_any(
            lib.library(&["add", name, &oci(&format!("hostile/{name}:1"))])
                .args(registry_flags()),
        );
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        let (code, _, _) = run_any(&mut lib.library(&["show", name]));
        assert_ne!(code, 0, "{name}: a version was left behind");
    }

    // Without credentials the registry's Basic challenge is named.
    let (code, _, err) =
        run_any(&mut lib.library(&["add", "anon", &oci("hostile/two:1"), "--plain-http"]));
    assert_eq!(code, 1);
    assert!(err.contains("--username"), "{err}");
}
