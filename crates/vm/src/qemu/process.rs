//! Host processes of a VM: started so that they die with us, logged to files, reaped.

use crate::VmError;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

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
        Self::start(program, args, log, false)
    }

    /// As [`Child::spawn`], in a new process group that [`Child::kill`] kills whole: for
    /// programs that fork helpers of their own (virtiofsd's sandbox).
    pub fn spawn_group(program: &Path, args: &[String], log: &Path) -> Result<Child, VmError> {
        Self::start(program, args, log, true)
    }

    fn start(program: &Path, args: &[String], log: &Path, group: bool) -> Result<Child, VmError> {
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
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
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
