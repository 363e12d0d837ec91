//! A small QMP client: one JSON object per line over the VM's unix socket; asynchronous events
//! are skipped while a command waits for its answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{BootError, Result};

/// Longest QMP line accepted: answers we use are small; a runaway peer must not exhaust memory.
const MAX_QMP_LINE: usize = 4 * 1024 * 1024;
/// How long one command may take before QEMU is considered hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A connected, capability-negotiated QMP session.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Qmp {
    /// Connects, retrying until `wait` passes (QEMU creates the socket while it starts).
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(BootError::QmpIo {
                        path: path.into(),
                        source: e,
                    })
                }
            }
        };
        let io = |e| BootError::QmpIo {
            path: path.into(),
            source: e,
        };
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            writer,
            reader: BufReader::new(stream),
            path: path.into(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(BootError::Qmp {
                command: "greeting".into(),
                message: format!("{} did not greet like QMP: {greeting}", path.display()),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value; a QMP error becomes `BootError::Qmp`
    /// with QEMU's own description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| BootError::QmpIo {
                path: self.path.clone(),
                source: e,
            })?;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let description = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(BootError::Qmp {
                    command: command.into(),
                    message: description.into(),
                });
            }
            // Anything else is an event ({"event": ...}); it does not answer us.
        }
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_QMP_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| BootError::QmpIo {
                path: self.path.clone(),
                source: e,
            })?;
        if read == 0 {
            return Err(BootError::QmpIo {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the QMP connection (the VM has exited)",
                ),
            });
        }
        if !line.ends_with(b"\n") {
            return Err(BootError::Qmp {
                command: "read".into(),
                message: format!("a QMP message over {MAX_QMP_LINE} bytes"),
            });
        }
        serde_json::from_slice(&line).map_err(|e| BootError::Qmp {
            command: "read".into(),
            message: format!("QEMU sent invalid JSON: {e}"),
        })
    }
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU that greets, accepts capabilities, sends an event, then answers.
    fn fake_qemu(answer: &'static str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            out.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            out.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            reader.read_line(&mut line).unwrap();
            out.write_all(b"{\"event\": \"RESET\", \"timestamp\": {}}\n")
                .unwrap();
            out.write_all(answer.as_bytes()).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn events_are_skipped_while_waiting_for_the_answer() {
        let (_dir, path) = fake_qemu("{\"return\": {\"status\": \"running\"}}\n");
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let answer = qmp.execute("query-status", None).unwrap();
        assert_eq!(answer["status"], "running");
    }

    #[test]
    fn qmp_errors_carry_qemus_description() {
        let (_dir, path) = fake_qemu(
            "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Device 'cdrom0' is locked\"}}\n",
        );
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let err = qmp.execute("eject", None).unwrap_err().to_string();
        assert!(err.contains("is locked"), "{err}");
    }
}
