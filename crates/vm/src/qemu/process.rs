//! Host processes of a VM: started so that they die with us, logged to files, reaped.

use crate::VmError;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// At most this many fds go to one child.
const MAX_PASSED_FDS: usize = 4;

#[derive(Debug)]
pub struct Child {
    program: String,
    child: tokio::process::Child,
    status: Option<ExitStatus>,
    /// The child leads a process group of its own, with whatever it forks: killed as one.
    group: bool,
}

impl Child {
    /// Starts `program` with stdout and stderr appended to `log`. The child gets SIGKILL when
    /// the thread that started it exits, so a crashed or killed caller leaves nothing behind.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Child, VmError> {
        Self::start(program, args, log, false, &[])
    }

    /// As [`Child::spawn`], with each `(fd, target)` of `fds` open in the child as `target`
    /// (and in no other child: the fds themselves should be close-on-exec).
    pub fn spawn_with_fds(
        program: &Path,
        args: &[String],
        log: &Path,
        fds: &[(BorrowedFd<'_>, RawFd)],
    ) -> Result<Child, VmError> {
        Self::start(program, args, log, false, fds)
    }

    /// As [`Child::spawn`], in a new process group that [`Child::kill`] kills whole: for
    /// programs that fork helpers of their own (virtiofsd's sandbox).
    pub fn spawn_group(program: &Path, args: &[String], log: &Path) -> Result<Child, VmError> {
        Self::start(program, args, log, true, &[])
    }

    fn start(
        program: &Path,
        args: &[String],
        log: &Path,
        group: bool,
        pass_fds: &[(BorrowedFd<'_>, RawFd)],
    ) -> Result<Child, VmError> {
        if pass_fds.len() > MAX_PASSED_FDS {
            return Err(VmError::Config(format!(
                "{} fds to pass, at most {MAX_PASSED_FDS}",
                pass_fds.len()
            )));
        }
        let name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
        let program_name = name.into_owned();
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| VmError::RunDir { path: log.to_path_buf(), source })
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            .kill_on_drop(true);
        if group {
            command.process_group(0);
        }
        // Only the numbers go into the closure, in a fixed array (no allocation after fork);
        // the fds stay open until spawn returns, by which time the child has exec'd.
        let mut passed = [(-1, -1); MAX_PASSED_FDS];
        for (slot, (fd, target)) in passed.iter_mut().zip(pass_fds) {
            *slot = (fd.as_raw_fd(), *target);
        }
        let count = pass_fds.len();
        // Above every target, so moving the sources there frees the targets.
        let above_targets = pass_fds.iter().map(|(_, target)| target + 1).max().unwrap_or(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // fcntl and dup2, which are async-signal-safe; the fds it names are open in the
        // child, which inherited them.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // First out of the way of every target (a source may sit on another's
                // target number), then onto the targets; dup2's copies survive exec.
                let mut high = [-1; MAX_PASSED_FDS];
                for i in 0..count {
                    high[i] = libc::fcntl(passed[i].0, libc::F_DUPFD_CLOEXEC, above_targets);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for i in 0..count {
                    if libc::dup2(high[i], passed[i].1) != passed[i].1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|source| VmError::Spawn { program: program_name.clone(), source })?;
        Ok(Child { program: program_name, child, status: None, group })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until `socket` exists, failing early if the process exits first.
    pub async fn wait_for_socket(
        &mut self,
        socket: &Path,
        timeout: Duration,
        log: &Path,
    ) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                return Err(VmError::EarlyExit {
                    program: self.program.clone(),
                    status,
                    log: log.to_path_buf(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::SocketTimeout {
                    program: self.program.clone(),
                    path: socket.to_path_buf(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub async fn wait_timeout(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.status = Some(status);
                Ok(Some(status))
            }
            Err(_elapsed) => Ok(None),
        }
    }

    /// Kills the process (if still running) and reaps it; a group leader's whole group goes
    /// with it.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.kill_group();
            let _ = self.child.start_kill();
            self.status = self.child.wait().await.ok();
        }
        self.status
    }

    fn kill_group(&self) {
        if !self.group {
            return;
        }
        let Some(pid) = self.child.id() else { return };
        // Not yet reaped, so the group id is still ours alone (it is the leader's pid).
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // kill_on_drop ends the leader; what it forked goes too.
        if self.status.is_none() {
            self.kill_group();
        }
    }
}

/// Copies what is appended to `path` to our stderr until aborted (`--debug` boot logs).
pub fn echo_file(path: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut offset = 0usize;
        let mut stderr = tokio::io::stderr();
        loop {
            if let Ok(bytes) = tokio::fs::read(&path).await {
                if bytes.len() > offset {
                    let _ = stderr.write_all(&bytes[offset..]).await;
                    offset = bytes.len();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_passed_fd_reaches_that_child_alone() {
        let dir = tempfile::tempdir().unwrap();
        let passed = dir.path().join("passed");
        // Rust opens files close-on-exec, as the TAP's fd is.
        let file = std::fs::File::create(&passed).unwrap();
        let script = ["-c".to_string(), "readlink /proc/self/fd/3 || echo none".to_string()];
        let (with, without) = (dir.path().join("with.log"), dir.path().join("without.log"));
        let sh = Path::new("/bin/sh");
        let mut child = Child::spawn_with_fds(sh, &script, &with, &[(file.as_fd(), 3)]).unwrap();
        let mut other = Child::spawn(sh, &script, &without).unwrap();
        for child in [&mut child, &mut other] {
            let status = child.wait_timeout(Duration::from_secs(10)).await.unwrap();
            assert!(status.is_some_and(|status| status.success()));
        }
        let with = std::fs::read_to_string(with).unwrap();
        assert_eq!(with.trim(), passed.display().to_string());
        let without = std::fs::read_to_string(without).unwrap();
        assert_ne!(without.trim(), passed.display().to_string());
    }

    /// Each fd lands on its own target, whatever numbers the sources have: here each
    /// source is moved onto the other's target number first, so a naive dup2 in order
    /// would pass the same file twice.
    #[tokio::test]
    async fn passed_fds_never_overwrite_one_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let file_a = std::fs::File::create(&a).unwrap();
        let file_b = std::fs::File::create(&b).unwrap();
        let (a_fd, b_fd) = (file_a.as_fd(), file_b.as_fd());
        // b goes onto a's number, and comes first: a dup2 straight onto the targets, in
        // order, would replace a before passing it.
        let (a_target, b_target) = (b_fd.as_raw_fd().max(3) + 1, a_fd.as_raw_fd());
        let script = [
            "-c".to_string(),
            format!("readlink /proc/self/fd/{a_target}; readlink /proc/self/fd/{b_target}"),
        ];
        let log = dir.path().join("out.log");
        let sh = Path::new("/bin/sh");
        let mut child =
            Child::spawn_with_fds(sh, &script, &log, &[(b_fd, b_target), (a_fd, a_target)])
                .unwrap();
        let status = child.wait_timeout(Duration::from_secs(10)).await.unwrap();
        assert!(status.is_some_and(|status| status.success()));
        let out = std::fs::read_to_string(log).unwrap();
        assert_eq!(out, format!("{}\n{}\n", a.display(), b.display()));
    }
}
