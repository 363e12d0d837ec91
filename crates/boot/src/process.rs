//! QEMU child processes that cannot outlive vmedia: their own process group (a terminal's
//! Ctrl-C reaches vmedia, which then stops the VM in order), a parent-death signal (even a
//! SIGKILLed vmedia takes QEMU with it) and a kill on drop (every error path).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{BootError, Result};

/// How often a stopping QEMU is checked for its exit: it usually takes 5-15 ms after SIGTERM,
/// and every millisecond of the wait counts in `vmedia boot`'s total time.
const EXIT_POLL: Duration = Duration::from_millis(2);

/// A running child that is killed and reaped when dropped.
pub struct Guarded {
    child: Option<Child>,
}

impl Guarded {
    /// Spawns `command` tied to this process.
    pub fn spawn(command: &mut Command) -> Result<Guarded> {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid, _exit) run in the child
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    // The parent died before prctl took effect.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .map_err(|source| BootError::Spawn { program, source })?;
        Ok(Guarded { child: Some(child) })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Asks the process to stop (SIGTERM: QEMU flushes its disks and exits), then kills it if
    /// it is still there after `grace`. Returns its exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(EXIT_POLL);
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits up to `limit` for the process to end on its own.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Describes how a process ended, in words.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown status".into(),
    }
}
