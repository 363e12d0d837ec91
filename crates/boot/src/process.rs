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
    #[allow(unsafe_code)]
    pub fn spawn(command: &mut Command) -> Result<Guarded> {
        use rustix::process::{getpid, getppid, set_parent_process_death_signal, setpgid};
        let parent = getpid();
        // SAFETY: `pre_exec` is unsafe because the closure runs between fork and exec, where
        // only async-signal-safe work is allowed: these are single raw system calls (setpgid,
        // prctl, getppid), no allocation and no locks.
        unsafe {
            command.pre_exec(move || {
                // Best effort, as before: QEMU still runs if either is refused.
                let _ = setpgid(None, None);
                let _ = set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
                if getppid() != Some(parent) {
                    // The parent died before prctl took effect: fail the spawn (the child
                    // exits without running QEMU).
                    // (An OS error: nothing may allocate between fork and exec.)
                    return Err(rustix::io::Errno::SRCH.into());
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
        if let Some(pid) = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            // Our own child, not yet reaped: the pid cannot have been reused.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
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
