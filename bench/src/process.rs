//! Child processes of a run (backend, proxies): started pinned, stopped with
//! their whole tree so no nginx worker outlives the run.

use crate::procfs;
use crate::BenchError;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A started process; stopped (tree and all) when dropped.
#[derive(Debug)]
pub struct RunningProcess {
    name: String,
    child: Child,
    /// Set once stopped, so that a later drop never signals a reused pid.
    stopped: bool,
}

impl RunningProcess {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, BenchError> {
        let out = std::fs::File::create(log).map_err(BenchError::io(log.display().to_string()))?;
        let err = out
            .try_clone()
            .map_err(BenchError::io(log.display().to_string()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(BenchError::io(format!("starting {name}")))?;
        Ok(RunningProcess {
            name: name.to_owned(),
            child,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU ticks of the process and its descendants so far.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::tree_cpu_ticks(self.pid())
    }

    /// Fails if the process has already exited (a bad config, a port taken).
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Tool {
                tool: self.name.clone(),
                why: format!("exited early with {status}"),
            }),
            Err(e) => Err(BenchError::io(format!("waiting for {}", self.name))(e)),
        }
    }

    /// SIGTERM to the process, SIGKILL to whatever of its tree is left after
    /// the grace period.
    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let tree = procfs::process_tree(self.pid());
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in tree.into_iter().rev() {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() && pid != self.pid() {
                signal(pid, libc::SIGKILL);
            }
        }
        // Kill and reap; errors mean it is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a
    // stale pid only yields ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Clock ticks per second of the /proc CPU times (USER_HZ).
#[allow(unsafe_code)]
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf(3) reads a constant of the C library; no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}
