//! Container processes: starting them with their stdio relayed to the host, waiting for
//! them, signalling them, resizing their terminals.

mod security;
mod spawn;
pub mod stdio;

use crate::container::Containers;
use crate::reaper::{self, Exit};
use crate::users;
use nix::pty::openpty;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use spawn::{SpawnSpec, Step};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use stdio::FdStream;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tonic::Status;
use vessel_proto::agent::{StartProcessRequest, WaitProcessResponse};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
struct Process {
    pid: Pid,
    exit: watch::Receiver<Option<Exit>>,
    /// The terminal master, for window-size changes.
    terminal: Option<OwnedFd>,
}

#[derive(Debug, Default)]
pub struct Processes {
    by_id: HashMap<String, Process>,
}

impl Processes {
    pub async fn start(
        &mut self,
        containers: &mut Containers,
        request: StartProcessRequest,
    ) -> Result<u32, Status> {
        if self.by_id.contains_key(&request.process_id) {
            return Err(Status::already_exists(format!("process {} exists", request.process_id)));
        }
        if request.args.is_empty() {
            return Err(Status::invalid_argument("no command given"));
        }
        let container = containers.get(&request.container_id)?.clone();
        if let Some(init) = container.init_pid {
            if !self.is_running(init) {
                return Err(Status::failed_precondition(format!(
                    "container {} is not running (its first process has ended)",
                    request.container_id
                )));
            }
        }
        let identity =
            users::resolve(&container.rootfs, &request.user).map_err(Status::invalid_argument)?;
        let env = environment(&request.env, &identity.home, request.terminal);
        let path = env
            .iter()
            .find_map(|entry| entry.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        let cwd = if request.cwd.is_empty() { "/".to_string() } else { request.cwd.clone() };
        ensure_workdir(&container.rootfs, &cwd)?;
        let last_capability = security::last_capability();
        let capabilities = security::CapSet::from_request(request.capabilities.as_ref())
            .map_err(Status::invalid_argument)?;
        // What the kernel does not know cannot be kept.
        let known = u64::MAX >> 63u32.saturating_sub(last_capability.min(63));
        let capabilities = security::CapSet(capabilities.0 & known);
        let rlimits =
            security::parse_rlimits(&request.rlimits).map_err(Status::invalid_argument)?;
        let init = if request.init {
            // vessel-init's own binary (the initramfs's /init), run from its descriptor.
            let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
            let exe = nix::fcntl::open("/proc/self/exe", flags, nix::sys::stat::Mode::empty())
                .map_err(errno_status("open vessel-init for --init"))?;
            Some(exe)
        } else {
            None
        };

        // Connect stdio before the process exists, so none of its output is lost.
        let connect = |port: u32| async move {
            if port == 0 {
                return Ok(None);
            }
            stdio::connect_host(port).await.map(Some).map_err(|err| {
                Status::unavailable(format!("cannot connect stdio to host port {port}: {err}"))
            })
        };
        let stdin = connect(request.stdin_port).await?;
        let stdout = connect(request.stdout_port).await?;
        let stderr = connect(request.stderr_port).await?;

        let (child_stdio, relays, terminal) = if request.terminal {
            let size = nix::pty::Winsize {
                ws_row: clamp_u16(request.rows),
                ws_col: clamp_u16(request.columns),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let size = (request.rows > 0 && request.columns > 0).then_some(&size);
            let pty = openpty(size, None).map_err(errno_status("open a terminal"))?;
            let slave = pty.slave;
            let stdio = [dup(&slave)?, dup(&slave)?, slave];
            let relays = Relays {
                input: stdin
                    .map(|s| Ok::<_, Status>((s, FdStream::new(dup(&pty.master)?)?)))
                    .transpose()?,
                output: vec![(FdStream::new(dup(&pty.master)?)?, stdout)],
            };
            (stdio, relays, Some(pty.master))
        } else {
            let (stdin_read, stdin_write) = pipe()?;
            let (stdout_read, stdout_write) = pipe()?;
            let (stderr_read, stderr_write) = pipe()?;
            let relays = Relays {
                input: stdin
                    .map(|s| Ok::<_, Status>((s, FdStream::new(stdin_write)?)))
                    .transpose()?,
                output: vec![
                    (FdStream::new(stdout_read)?, stdout),
                    (FdStream::new(stderr_read)?, stderr),
                ],
            };
            ([stdin_read, stdout_write, stderr_write], relays, None)
        };

        let spec = SpawnSpec {
            programs: candidates(&request.args[0], &path)?,
            args: cstrings(&request.args)?,
            env: cstrings(&env)?,
            cwd,
            identity,
            join: container.init_pid.map(Pid::from_raw),
            hostname: container.hostname.clone(),
            shm_options: format!("mode=1777,size={}", container.shm_size),
            rootfs: container.rootfs.clone(),
            stdio: child_stdio,
            terminal: request.terminal,
            read_only_root: container.read_only,
            cgroup_procs: CString::new(
                container.cgroup.join("cgroup.procs").as_os_str().as_encoded_bytes(),
            )
            .map_err(|_| Status::internal("cgroup path holds a NUL byte"))?,
            capabilities,
            last_capability,
            rlimits,
            no_new_privileges: request.no_new_privileges,
            init,
        };
        let (pid, error_pipe) = spawn::spawn(spec).map_err(errno_status("start the process"))?;
        // Registered before the next await, so the reaper cannot miss this exit.
        let exit = reaper::register(pid);
        relays.start();

        if let Some(step_error) = read_spawn_error(error_pipe).await? {
            return Err(step_error);
        }
        if container.init_pid.is_none() {
            containers.get_mut(&request.container_id)?.init_pid = Some(pid.as_raw());
        }
        self.by_id.insert(request.process_id, Process { pid, exit, terminal });
        Ok(pid.as_raw() as u32)
    }

    /// True while the process with this (agent) PID that the agent started has not ended.
    pub fn is_running(&self, pid: i32) -> bool {
        self.by_id
            .values()
            .find(|process| process.pid.as_raw() == pid)
            .is_some_and(|process| process.exit.borrow().is_none())
    }

    /// Waits for the process to end. The entry stays, so every waiter sees the status.
    pub fn exit_watch(&self, process_id: &str) -> Result<watch::Receiver<Option<Exit>>, Status> {
        Ok(self.get(process_id)?.exit.clone())
    }

    pub fn signal(&self, process_id: &str, signal: i32) -> Result<(), Status> {
        let process = self.get(process_id)?;
        if process.exit.borrow().is_some() {
            return Err(Status::failed_precondition(format!("process {process_id} has exited")));
        }
        let signal = Signal::try_from(signal)
            .map_err(|_| Status::invalid_argument(format!("invalid signal {signal}")))?;
        nix::sys::signal::kill(process.pid, signal).map_err(errno_status("signal the process"))
    }

    pub fn resize(&self, process_id: &str, rows: u32, columns: u32) -> Result<(), Status> {
        let process = self.get(process_id)?;
        let Some(master) = &process.terminal else {
            return Err(Status::failed_precondition(format!(
                "process {process_id} has no terminal"
            )));
        };
        let size = libc::winsize {
            ws_row: clamp_u16(rows),
            ws_col: clamp_u16(columns),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize that lives for the whole call.
        let result = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        nix::errno::Errno::result(result).map(drop).map_err(errno_status("resize the terminal"))
    }

    fn get(&self, process_id: &str) -> Result<&Process, Status> {
        self.by_id
            .get(process_id)
            .ok_or_else(|| Status::not_found(format!("no process {process_id:?}")))
    }
}

pub fn wait_response(exit: Exit) -> WaitProcessResponse {
    WaitProcessResponse { exit_code: exit.code, signal: exit.signal }
}

/// The relays between the process's stdio and the host's vsock streams.
struct Relays {
    input: Option<(crate::channel::Stream, FdStream)>,
    output: Vec<(FdStream, Option<crate::channel::Stream>)>,
}

impl Relays {
    fn start(self) {
        if let Some((from, to)) = self.input {
            tokio::spawn(stdio::relay_input(from, to));
        }
        for (from, to) in self.output {
            match to {
                Some(to) => drop(tokio::spawn(stdio::relay_output(from, to))),
                // Nobody listens: drain, so the process never blocks on a full pipe.
                None => drop(tokio::spawn(async move {
                    let mut from = from;
                    let mut sink = [0u8; 4096];
                    while matches!(from.read(&mut sink).await, Ok(n) if n > 0) {}
                })),
            }
        }
    }
}

/// The child's set-up error, if it wrote one before exec.
async fn read_spawn_error(pipe: OwnedFd) -> Result<Option<Status>, Status> {
    let mut pipe = FdStream::new(pipe)?;
    let mut record = [0u8; 5];
    let mut filled = 0;
    while filled < record.len() {
        match pipe.read(&mut record[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) => {
                return Err(Status::internal(format!("cannot read the start result: {err}")))
            }
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    let step = Step::from_byte(record[0]).unwrap_or(Step::Exec);
    let errno = nix::errno::Errno::from_raw(i32::from_le_bytes([
        record[1], record[2], record[3], record[4],
    ]));
    let message = format!("{} failed: {}", step.describe(), errno.desc().to_lowercase());
    Ok(Some(match (step, errno) {
        (Step::Exec, nix::errno::Errno::ENOENT) => Status::not_found(message),
        (Step::Exec, nix::errno::Errno::EACCES) => Status::permission_denied(message),
        _ => Status::failed_precondition(message),
    }))
}

/// The process environment: the request's, with PATH, HOME and TERM filled in when missing.
fn environment(requested: &[String], home: &str, terminal: bool) -> Vec<String> {
    let mut env: Vec<String> = requested.to_vec();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if terminal && !has(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }
    env
}

/// The executables to try for `program`: itself when it names a path, else each PATH entry.
/// Paths are the container's; the child resolves them after entering its root.
fn candidates(program: &str, path: &str) -> Result<Vec<CString>, Status> {
    let list: Vec<String> = if program.contains('/') {
        vec![program.to_string()]
    } else {
        path.split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| format!("{dir}/{program}"))
            .collect()
    };
    cstrings(&list)
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, Status> {
    items
        .iter()
        .map(|item| {
            CString::new(item.as_bytes())
                .map_err(|_| Status::invalid_argument(format!("{item:?} contains a NUL byte")))
        })
        .collect()
}

/// Docker creates a missing working directory; so do we, inside the container's root.
fn ensure_workdir(rootfs: &Path, cwd: &str) -> Result<(), Status> {
    if !cwd.starts_with('/') || cwd.split('/').any(|part| part == "..") {
        return Err(Status::invalid_argument(format!(
            "working directory {cwd:?} must be absolute"
        )));
    }
    let path = rootfs.join(cwd.trim_start_matches('/'));
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(&path).map_err(|err| {
        Status::failed_precondition(format!("cannot create working directory {cwd}: {err}"))
    })
}

fn clamp_u16(value: u32) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(errno_status("create a pipe"))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, Status> {
    let copy = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map_err(errno_status("duplicate a file descriptor"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) })
}

fn errno_status(action: &'static str) -> impl Fn(nix::errno::Errno) -> Status {
    move |errno| Status::internal(format!("cannot {action}: {errno}"))
}
