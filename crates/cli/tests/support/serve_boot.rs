//! A `vmedia serve` daemon for boot tests: started on a library with its own state folder and
//! free loopback ports, ready once it has logged that it listens for HTTP and NBD, stopped by
//! SIGTERM (and restarted on the same state), killed when dropped. Plus small NBD readers
//! (python3-libnbd) the tests check guest writes with.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a daemon may take to open the library and bind its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM's drain may take (the daemon bounds its own wait well below this).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `vmedia serve`.
pub struct Daemon {
    child: Option<Child>,
    /// Everything the daemon printed on stderr (its log), for failure messages.
    log: Arc<Mutex<String>>,
    pub http: String,
    pub nbd_port: u16,
    state: PathBuf,
    /// The library's environment (VMEDIA_LIBRARY and, for S3, its settings).
    envs: Vec<(&'static str, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Starts `vmedia serve` with `envs` (VMEDIA_LIBRARY and friends) and `state` as its state
    /// folder; returns once both listeners are up.
    pub fn start(envs: Vec<(&'static str, String)>, state: &Path) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            http: String::new(),
            nbd_port: 0,
            state: state.to_path_buf(),
            envs,
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let http_port = free_port();
        let nbd_port = free_port();
        let mut cmd = crate::support::vmedia();
        cmd.env_remove("VMEDIA_LIBRARY")
            .env_remove("VMEDIA_LIBRARY_KEY")
            .envs(self.envs.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["serve", "--listen", "127.0.0.1"])
            .args(["--http-port", &http_port.to_string()])
            .args(["--nbd-port", &nbd_port.to_string()])
            .arg("--state")
            .arg(&self.state)
            .args(["--cache-size", "128M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start vmedia serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // The reader keeps draining the log for the daemon's whole life (a full pipe would
        // block it).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut http, mut nbd) = (false, false);
        while !(http && nbd) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    http |= line.contains("listening for http on");
                    nbd |= line.contains("listening for nbd on");
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "vmedia serve did not report both listeners within {START_TIMEOUT:?}:\n{}",
                        self.log()
                    );
                }
            }
        }
        self.http = format!("http://127.0.0.1:{http_port}");
        self.nbd_port = nbd_port;
        self.child = Some(child);
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn nbd_url(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.nbd_port)
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        crate::support::serve::terminate_cleanly(&mut child, STOP_TIMEOUT, &|| self.log());
    }

    /// SIGTERM and start again on the same library and state folder (new ports).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Debian python3 (the default `python3` may be a build without the `nbd` module).
pub const PYTHON: &str = "/usr/bin/python3";

/// Runs `script` (Python with libnbd) with `args`; returns its stdout, panicking on failure.
pub fn python_nbd(script: &str, args: &[String]) -> String {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("cannot run /usr/bin/python3 (python3-libnbd)");
    assert!(
        out.status.success(),
        "the libnbd script failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
