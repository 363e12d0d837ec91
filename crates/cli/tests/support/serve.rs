//! Daemon test support: a SeaweedFS that a test may stop and start again on the same ports and
//! data (to take an S3 library away under load), an S3 library on it, and `vmedia serve` on free
//! ports with its own state folder, waited for through its "listening" lines and stopped with
//! SIGTERM. Children die with the test process (PR_SET_PDEATHSIG from one long-lived thread).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::library::{weed_binary, S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY};

/// How long SeaweedFS may take to store an object after a (re)start on a busy 2-core machine.
const WEED_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `vmedia serve` may take to print its listening lines.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM drain may take before the daemon is killed (and the test fails).
const SERVE_STOP_TIMEOUT: Duration = Duration::from_secs(30);

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` with PR_SET_PDEATHSIG = SIGKILL from one thread that lives as long as the test
/// process: the signal fires when the forking *thread* exits, and a server restarted by one test
/// must outlive that test's thread.
pub fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("serve-spawner".into())
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
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// SeaweedFS that can be stopped and started again

/// `weed server -s3` on fixed loopback ports with its data in a temporary folder, so `stop` and
/// `start` bring back the same endpoint with the same objects.
pub struct Weed {
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
    ports: [u16; 8],
    /// http://127.0.0.1:PORT of the S3 gateway.
    pub endpoint: String,
}

/// The bucket the daemon tests keep their libraries in.
pub const SERVE_BUCKET: &str = "vmedia-serve";

impl Weed {
    /// A new server, ready to store objects in `SERVE_BUCKET`. A port taken between our probe
    /// and the server's bind makes it exit; that is retried with new ports.
    pub fn new() -> Weed {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("vmedia-serve-weed")
                .tempdir()
                .unwrap();
            fs::create_dir_all(dir.path().join("data")).unwrap();
            fs::write(
                dir.path().join("s3.json"),
                format!(
                    r#"{{"identities":[{{"name":"vmedia","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
                ),
            )
            .unwrap();
            let ports = std::array::from_fn(|_| free_port());
            let weed = Weed {
                child: Mutex::new(None),
                endpoint: format!("http://127.0.0.1:{}", ports[6]),
                dir,
                ports,
            };
            match weed.try_start() {
                Ok(()) => return weed,
                Err(error) => last_error = error,
            }
        }
        panic!("SeaweedFS did not start (3 attempts); last:\n{last_error}");
    }

    /// Starts the server again (same ports and data) and waits until it stores an object.
    pub fn start(&self) {
        if let Err(error) = self.try_start() {
            panic!("SeaweedFS did not start again: {error}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        assert!(slot.is_none(), "SeaweedFS is already running");
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = self.ports;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("weed.log"))
            .unwrap();
        let mut cmd = Command::new(weed_binary());
        cmd.arg("server")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", self.dir.path().join("data").display()))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .arg("-master.volumeSizeLimitMB=256")
            .arg("-volume.max=0")
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg(format!(
                "-filer.localSocket={}",
                self.dir.path().join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .arg(format!(
                "-s3.localSocket={}",
                self.dir.path().join("s3.sock").display()
            ))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg(format!(
                "-s3.config={}",
                self.dir.path().join("s3.json").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        *slot = Some(spawn_tied(cmd).map_err(|e| format!("cannot start weed: {e}"))?);
        drop(slot);
        let deadline = Instant::now() + WEED_READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.stop();
                return Err(format!("weed exited with {status}:\n{}", self.log()));
            }
            // The bucket may not exist yet on the first start; a probe object needs it.
            let _ = self.s3_status("PUT", &format!("/{SERVE_BUCKET}"));
            if self.s3_status("PUT", &format!("/{SERVE_BUCKET}/probe")) == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "not ready after {WEED_READY_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the server (its data stays for `start`).
    pub fn stop(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_sockets();
    }

    /// One signed request with an empty body; returns the HTTP status (0 when unreachable).
    pub fn s3_status(&self, method: &str, path: &str) -> u32 {
        let out = Command::new("curl")
            .args(["-s", "-g", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "10", "-X", method])
            .args(["--aws-sigv4", &format!("aws:amz:{S3_REGION}:s3")])
            .args(["--user", &format!("{S3_ACCESS_KEY}:{S3_SECRET_KEY}")])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(if method == "PUT" {
                &["--data-binary", "ok"][..]
            } else {
                &[][..]
            })
            .arg(format!("{}{path}", self.endpoint))
            .output()
            .expect("cannot run curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// The environment a vmedia process needs to reach a library on this server.
    pub fn env(&self, location: &str) -> Vec<(&'static str, String)> {
        vec![
            ("VMEDIA_LIBRARY", location.to_string()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
            ("AWS_REGION", S3_REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// `vmedia` with the library at `location` on this server (a developer's own settings
    /// removed).
    pub fn vmedia(&self, location: &str) -> Command {
        let mut cmd = super::vmedia();
        for var in [
            "VMEDIA_LIBRARY",
            "VMEDIA_LIBRARY_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env(location));
        cmd
    }

    fn remove_sockets(&self) {
        // SeaweedFS leaves one unix socket per gRPC port in /tmp when killed.
        for port in [self.ports[1], self.ports[3], self.ports[5], self.ports[7]] {
            for role in ["master", "volume", "filer", "s3"] {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{role}-grpc-{port}.sock"));
            }
        }
    }
}

impl Default for Weed {
    fn default() -> Self {
        Weed::new()
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// vmedia serve

/// What a daemon is started with.
pub struct ServeOptions {
    /// `--cache-size`.
    pub cache_size: String,
    /// Whether NBD listens (else `--nbd-port 0` and `nbd_port` is 0).
    pub nbd: bool,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            cache_size: "256M".into(),
            nbd: true,
            extra: Vec::new(),
        }
    }
}

/// A running `vmedia serve` on loopback with its own state folder.
pub struct Daemon {
    child: Mutex<Option<Child>>,
    log: Arc<Mutex<String>>,
    pub state: tempfile::TempDir,
    pub http_port: u16,
    pub nbd_port: u16,
}

impl Daemon {
    /// Starts `cmd` (a `vmedia` command with the library's environment) as `vmedia serve` and
    /// waits for its HTTP and NBD listening lines.
    pub fn start(mut cmd: Command, options: &ServeOptions) -> Daemon {
        let state = tempfile::Builder::new()
            .prefix("vmedia-serve-state")
            .tempdir()
            .unwrap();
        let (http_port, nbd_port) = (free_port(), if options.nbd { free_port() } else { 0 });
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1"])
            .args(["--http-port", &http_port.to_string()])
            .args(["--nbd-port", &nbd_port.to_string()])
            .arg("--state")
            .arg(state.path())
            .args(["--cache-size", &options.cache_size])
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).expect("cannot start vmedia serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    let _ = ready_tx.send(line);
                }
            });
        }
        let daemon = Daemon {
            child: Mutex::new(Some(child)),
            log,
            state,
            http_port,
            nbd_port,
        };
        let deadline = Instant::now() + SERVE_READY_TIMEOUT;
        let (mut http, mut nbd) = (false, !options.nbd);
        while !(http && nbd) {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(line) => {
                    http |= line.contains(&format!("listening for http on 127.0.0.1:{http_port}"));
                    nbd |= line.contains(&format!("listening for nbd on 127.0.0.1:{nbd_port}"));
                }
                Err(_) => panic!(
                    "vmedia serve did not listen for http and nbd within {SERVE_READY_TIMEOUT:?} \
                     (http {http}, nbd {nbd}):\n{}",
                    daemon.log()
                ),
            }
        }
        daemon
    }

    /// http://127.0.0.1:PORT
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Whether the process still runs.
    pub fn alive(&self) -> bool {
        match self.child.lock().unwrap().as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Everything the daemon wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
    }

    /// The sum of every series of metric `name` (any labels) in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name)
    }

    /// SIGTERM, then waits for the drain; panics when the daemon does not exit 0 in time.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        terminate_cleanly(&mut child, SERVE_STOP_TIMEOUT, &|| self.log());
    }
}

/// Sends SIGTERM to a `vmedia serve` child and waits for its drain; panics (with `log()`) when
/// it does not exit 0 within `timeout`, after killing it.
pub fn terminate_cleanly(child: &mut Child, timeout: Duration, log: &dyn Fn() -> String) {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "vmedia serve exited with {status} after SIGTERM:\n{}",
                log()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vmedia serve did not drain within {timeout:?} of SIGTERM:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The sum of every sample of `name` (exactly that name, any labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.0 GET on loopback; returns the body (panics on a status other than 200).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("daemon HTTP port closed");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET {path}: {head}"
    );
    body.to_string()
}

/// The Python with libnbd (the default python3 may be a build without `nbd`).
pub fn python() -> PathBuf {
    let p = Path::new("/usr/bin/python3");
    assert!(
        p.exists(),
        "/usr/bin/python3 is missing (python3-libnbd needs it)"
    );
    p.to_path_buf()
}

/// A client program of tests/load.
pub fn load_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/load")
        .join(name)
}
