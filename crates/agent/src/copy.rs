//! `vessel cp`: tar archives between a container's filesystem and a host vsock port.
//!
//! The archive is written or unpacked by a child process that first enters the container's
//! mount namespace (or, with no process running, chroots into its root directory). Every
//! path, symlinks included, then resolves as the container sees it, its own mounts
//! (volumes) included, and none can lead out of it: the agent's files are not in reach.
//! The agent relays between the child's pipe and the host, as it does for process stdio.

use crate::container::Containers;
use crate::process::stdio::{self, FdStream};
use crate::process::Processes;
use crate::reaper::{self, Exit};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, fork, pipe2, ForkResult, Pid};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;
use tonic::Status;
use vessel_archive::{ArchiveError, ErrorKind, ExtractOptions};

/// Where a container's paths resolve.
#[derive(Debug)]
pub enum Root {
    /// The mount namespace of its running first process.
    Namespace(OwnedFd),
    /// Its root directory, when no process runs (none yet, or the first one has ended).
    Directory(PathBuf),
}

impl Root {
    /// Where `id`'s paths resolve now. `write`: for a copy into it, which a read-only
    /// container with no process running refuses (its root is read-only only in its
    /// namespace, which then does not exist).
    pub fn of(
        containers: &Containers,
        processes: &Processes,
        id: &str,
        write: bool,
    ) -> Result<Root, Status> {
        let container = containers.get(id)?;
        if let Some(pid) = container.init_pid.filter(|pid| processes.is_running(*pid)) {
            let path = format!("/proc/{pid}/ns/mnt");
            // The descriptor keeps the namespace even if the process ends meanwhile.
            if let Ok(fd) = open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
                return Ok(Root::Namespace(fd));
            }
        }
        if write && container.read_only {
            return Err(Status::failed_precondition(format!(
                "container {id}'s root filesystem is read-only"
            )));
        }
        Ok(Root::Directory(container.rootfs.clone()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Archive `path` to the host.
    Out,
    /// Unpack the host's archive at `path`.
    In,
}

pub async fn copy_out(root: Root, path: &str, port: u32) -> Result<(), Status> {
    transfer(root, path, port, Direction::Out).await
}

pub async fn copy_in(root: Root, path: &str, port: u32) -> Result<(), Status> {
    transfer(root, path, port, Direction::In).await
}

async fn transfer(root: Root, path: &str, port: u32, direction: Direction) -> Result<(), Status> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Status::invalid_argument(format!("path {path:?} must be absolute")));
    }
    let stream = stdio::connect_host(port).await.map_err(|err| {
        Status::unavailable(format!("cannot connect to host port {port} for the archive: {err}"))
    })?;
    let (data_read, data_write) = pipe()?;
    let (result_read, result_write) = pipe()?;
    let (child_data, agent_data) = match direction {
        Direction::Out => (data_write, data_read),
        Direction::In => (data_read, data_write),
    };
    let agent_data = FdStream::new(agent_data).map_err(io_status)?;
    let mut result = FdStream::new(result_read).map_err(io_status)?;
    let pid = fork_worker(&root, Path::new(path), direction, child_data, result_write)?;
    // Registered before the next await, so the reaper cannot miss this exit.
    let mut exit = reaper::register(pid);
    let relay = match direction {
        Direction::Out => tokio::spawn(stdio::relay_output(agent_data, stream)),
        Direction::In => tokio::spawn(stdio::relay_input(stream, agent_data)),
    };

    // The child's verdict; bounded, since it is only a message.
    let mut verdict = Vec::new();
    let read = (&mut result).take(64 * 1024).read_to_end(&mut verdict).await;
    let exit = *exit
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Status::internal("the copy's exit was lost"))?;
    match direction {
        // The reply waits until the host has the whole archive.
        Direction::Out => drop(relay.await),
        // The child read the archive to its end, or failed and wants no more of it.
        Direction::In => relay.abort(),
    }
    read.map_err(io_status)?;
    verdict_status(&verdict, exit.expect("wait_for returns a Some"))
}

fn verdict_status(verdict: &[u8], exit: Exit) -> Result<(), Status> {
    let Some((&kind, message)) = verdict.split_first() else {
        return match exit {
            Exit { code: 0, signal: 0 } => Ok(()),
            Exit { code, .. } => {
                Err(Status::internal(format!("the copy ended unexpectedly (status {code})")))
            }
        };
    };
    let message = String::from_utf8_lossy(message).into_owned();
    Err(match kind {
        b'N' => Status::not_found(message),
        b'I' => Status::invalid_argument(message),
        _ => Status::internal(message),
    })
}

/// Forks the worker; the descriptors given are closed here once the child has them.
fn fork_worker(
    root: &Root,
    path: &Path,
    direction: Direction,
    data: OwnedFd,
    result: OwnedFd,
) -> Result<Pid, Status> {
    // SAFETY: the agent runs a single-threaded runtime, so the child is a full copy of the
    // only thread and may allocate; it ends in _exit and never returns here.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let namespace = match root {
                Root::Namespace(fd) => Some(fd.as_raw_fd()),
                Root::Directory(_) => None,
            };
            // Nothing of the agent's stays open here: a copy of another stream's descriptor
            // would keep that stream from ending while the copy runs.
            let kept = [Some(data.as_raw_fd()), Some(result.as_raw_fd()), namespace];
            let verdict = match keep_only(&kept) {
                Ok([Some(data), Some(result), namespace]) => {
                    let verdict = verdict(worker(root, path, direction, data, namespace));
                    let _ = nix::unistd::write(&result, &verdict);
                    0
                }
                Ok(_) | Err(_) => {
                    let _ = nix::unistd::write(&result, b"Ecannot close the agent's descriptors");
                    1
                }
            };
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
            unsafe { libc::_exit(verdict) }
        }
        Ok(ForkResult::Parent { child }) => Ok(child),
        Err(errno) => Err(Status::internal(format!("cannot start the copy: {errno}"))),
    }
}

enum Failure {
    Setup(&'static str, Errno),
    Archive(ArchiveError),
}

/// The record the child sends back: empty for success, else a kind byte and a message.
fn verdict(outcome: Result<(), Failure>) -> Vec<u8> {
    match outcome {
        Ok(()) => Vec::new(),
        Err(Failure::Setup(step, errno)) => {
            format!("E{step} failed: {}", errno.desc().to_lowercase()).into_bytes()
        }
        Err(Failure::Archive(err)) => {
            let kind = match err.kind() {
                ErrorKind::NotFound => 'N',
                ErrorKind::Invalid => 'I',
                ErrorKind::Io => 'E',
            };
            format!("{kind}{}", crate::log::error_chain(&err)).into_bytes()
        }
    }
}

/// The child's side: enter the container's view of the filesystem, then archive or unpack.
fn worker(
    root: &Root,
    path: &Path,
    direction: Direction,
    data: OwnedFd,
    namespace: Option<OwnedFd>,
) -> Result<(), Failure> {
    let enter = |errno| Failure::Setup("entering the container's filesystem", errno);
    match (root, namespace) {
        (Root::Namespace(_), Some(fd)) => setns(&fd, CloneFlags::CLONE_NEWNS).map_err(enter)?,
        (Root::Directory(dir), _) => chroot(dir).map_err(enter)?,
        (Root::Namespace(_), None) => return Err(enter(Errno::EBADF)),
    }
    chdir("/").map_err(enter)?;
    let data = File::from(data);
    match direction {
        Direction::Out => {
            let mut writer = BufWriter::with_capacity(64 * 1024, data);
            vessel_archive::write_path(path, &mut writer).map_err(Failure::Archive)?;
            writer.flush().map_err(|err| Failure::Archive(ArchiveError::Finish(err)))
        }
        Direction::In => {
            // The host is trusted: its setuid programs stay so. Entries belong to root, as
            // with docker cp (without -a).
            let options = ExtractOptions { preserve_owner: false, keep_setid: true };
            let reader = BufReader::with_capacity(64 * 1024, data);
            vessel_archive::extract(reader, path, &options).map_err(Failure::Archive)
        }
    }
}

/// Moves the descriptors given to 3, 4, 5… and closes every other one from 3 up. Returns
/// them at their new numbers.
fn keep_only<const N: usize>(fds: &[Option<RawFd>; N]) -> Result<[Option<OwnedFd>; N], Errno> {
    // Copies above the targets first, so the moves clobber none of them.
    let first_free = 3 + N as RawFd;
    let mut high = [None; N];
    for (copy, fd) in high.iter_mut().zip(fds) {
        if let Some(fd) = fd {
            // SAFETY: F_DUPFD only reads the descriptor number.
            *copy = Some(Errno::result(unsafe { libc::fcntl(*fd, libc::F_DUPFD, first_free) })?);
        }
    }
    let mut moved = Vec::with_capacity(N);
    for (index, fd) in high.iter().enumerate() {
        let target = 3 + index as RawFd;
        match fd {
            Some(fd) => {
                // SAFETY: dup2 onto a number the child no longer needs; whatever was there
                // was the agent's.
                Errno::result(unsafe { libc::dup2(*fd, target) })?;
                // SAFETY: dup2 made `target` a new descriptor that nothing else owns.
                moved.push(Some(unsafe { OwnedFd::from_raw_fd(target) }));
            }
            None => moved.push(None),
        }
    }
    // SAFETY: close_range takes numbers only; what it closes was the agent's, unused here
    // (the copies above among it).
    Errno::result(unsafe {
        libc::syscall(libc::SYS_close_range, first_free as libc::c_uint, libc::c_uint::MAX, 0)
    })?;
    moved.try_into().map_err(|_| Errno::EINVAL)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    pipe2(OFlag::O_CLOEXEC)
        .map_err(|errno| Status::internal(format!("cannot create a pipe: {errno}")))
}

fn io_status(err: std::io::Error) -> Status {
    Status::internal(format!("copy relay failed: {err}"))
}
