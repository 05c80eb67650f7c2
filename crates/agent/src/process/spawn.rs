//! Forking a container process. The parent (the agent) is single-threaded, so the child may
//! do anything until exec; what fails there is written to a close-on-exec pipe as one
//! `(step, errno)` record, and an exec that succeeds closes the pipe unread.

use super::security::{self, CapSet, Limit};
use crate::users::Identity;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{
    access, chdir, chroot, execve, fexecve, fork, pipe2, setgid, setgroups, sethostname, setsid,
    setuid, AccessFlags, ForkResult, Gid, Pid, Uid,
};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Everything the child needs, prepared before the fork.
#[derive(Debug)]
pub struct SpawnSpec {
    /// Options of the container's /dev/shm tmpfs (its size).
    pub shm_options: String,
    pub rootfs: PathBuf,
    pub hostname: String,
    /// Candidate executables, tried in order (PATH search done in advance).
    pub programs: Vec<CString>,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: String,
    pub identity: Identity,
    /// The container's first process to join, or None to make its namespaces.
    pub join: Option<Pid>,
    /// The child's stdin, stdout and stderr.
    pub stdio: [OwnedFd; 3],
    pub terminal: bool,
    /// Make the root read-only once the container's mounts are in place.
    pub read_only_root: bool,
    /// The container's cgroup.procs file: the child moves itself in before anything else.
    pub cgroup_procs: CString,
    /// The capabilities the process keeps (bounding set; permitted and effective for root).
    pub capabilities: CapSet,
    /// The highest capability number the kernel knows.
    pub last_capability: u32,
    pub rlimits: Vec<Limit>,
    pub no_new_privileges: bool,
    /// vessel-init's own binary, to run the program under as its init (`--init`).
    pub init: Option<OwnedFd>,
}

/// Which step of the child's set-up failed; sent back with its errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Cgroup = 9,
    Stdio = 1,
    Namespaces = 2,
    Mounts = 3,
    PivotRoot = 4,
    Hostname = 5,
    Credentials = 6,
    WorkingDirectory = 7,
    Exec = 8,
    Limits = 10,
    Privileges = 11,
}

impl Step {
    pub fn from_byte(byte: u8) -> Option<Step> {
        use Step::*;
        [
            Cgroup,
            Stdio,
            Namespaces,
            Mounts,
            PivotRoot,
            Hostname,
            Credentials,
            WorkingDirectory,
            Exec,
            Limits,
            Privileges,
        ]
        .into_iter()
        .find(|step| *step as u8 == byte)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Cgroup => "joining the container's cgroup",
            Step::Stdio => "setting up stdio",
            Step::Namespaces => "entering the container's namespaces",
            Step::Mounts => "mounting the container's /proc, /sys and /dev",
            Step::PivotRoot => "entering the container's root filesystem",
            Step::Hostname => "setting the hostname",
            Step::Credentials => "switching user",
            Step::WorkingDirectory => "changing to the working directory",
            Step::Exec => "starting the program",
            Step::Limits => "setting resource limits",
            Step::Privileges => "dropping privileges",
        }
    }
}

/// Forks the process. Returns its pid and the read end of the error pipe.
pub fn spawn(spec: SpawnSpec) -> Result<(Pid, OwnedFd), Errno> {
    let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC)?;
    let own_pid_ns = open("/proc/self/ns/pid", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let join_fds = match spec.join {
        Some(pid) => Some(JoinFds::open(pid)?),
        None => None,
    };
    // The PID namespace of a process is fixed at fork: switch the agent's namespace for
    // children, fork, and switch back at once.
    match &join_fds {
        Some(fds) => setns(&fds.pid, CloneFlags::CLONE_NEWPID)?,
        None => unshare(CloneFlags::CLONE_NEWPID)?,
    }
    // SAFETY: the agent runs a single-threaded runtime, so the child is a full copy of the
    // only thread and may allocate; it ends in exec or _exit and never returns here.
    let forked = unsafe { fork() };
    if let Ok(ForkResult::Child) = forked {
        drop(error_read);
        let (step, errno) = child(&spec, join_fds.as_ref());
        let mut record = [step as u8, 0, 0, 0, 0];
        record[1..].copy_from_slice(&(errno as i32).to_le_bytes());
        let _ = nix::unistd::write(&error_write, &record);
        // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
        unsafe { libc::_exit(127) }
    }
    // The agent's own children go back to its own PID namespace, whatever fork did.
    setns(&own_pid_ns, CloneFlags::CLONE_NEWPID)?;
    match forked? {
        ForkResult::Parent { child } => Ok((child, error_read)),
        ForkResult::Child => unreachable!("the child never gets here"),
    }
}

struct JoinFds {
    pid: OwnedFd,
    mnt: OwnedFd,
    uts: OwnedFd,
    ipc: OwnedFd,
    cgroup: OwnedFd,
}

impl JoinFds {
    fn open(pid: Pid) -> Result<JoinFds, Errno> {
        let ns = |name: &str| {
            open(
                format!("/proc/{pid}/ns/{name}").as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        Ok(JoinFds {
            pid: ns("pid")?,
            mnt: ns("mnt")?,
            uts: ns("uts")?,
            ipc: ns("ipc")?,
            cgroup: ns("cgroup")?,
        })
    }
}

/// The child's side: returns only on failure.
fn child(spec: &SpawnSpec, join: Option<&JoinFds>) -> (Step, Errno) {
    macro_rules! step {
        ($step:expr, $result:expr) => {
            if let Err(errno) = $result {
                return ($step, errno);
            }
        };
    }
    // Join the container's cgroup first, so its limits cover everything that follows; a
    // new container also gets its own cgroup namespace, so it sees its cgroup as the root.
    step!(Step::Cgroup, join_cgroup(&spec.cgroup_procs));
    step!(Step::Stdio, setsid());
    for (target, fd) in spec.stdio.iter().enumerate() {
        // SAFETY: dup2 onto 0..=2 replaces the child's stdio; nothing else owns those numbers.
        step!(Step::Stdio, Errno::result(unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) }));
    }
    if spec.terminal {
        // SAFETY: TIOCSCTTY on fd 0 (a terminal slave) takes no pointer argument.
        step!(Step::Stdio, Errno::result(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }));
    }
    match join {
        Some(fds) => {
            step!(Step::Namespaces, setns(&fds.mnt, CloneFlags::CLONE_NEWNS));
            step!(Step::Namespaces, setns(&fds.uts, CloneFlags::CLONE_NEWUTS));
            step!(Step::Namespaces, setns(&fds.ipc, CloneFlags::CLONE_NEWIPC));
            step!(Step::Namespaces, setns(&fds.cgroup, CloneFlags::CLONE_NEWCGROUP));
        }
        None => {
            let flags = CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWCGROUP;
            step!(Step::Namespaces, unshare(flags));
            // Device nodes get exactly the modes asked for; processes get docker's umask.
            nix::sys::stat::umask(Mode::empty());
            step!(Step::Mounts, container_mounts(&spec.rootfs, &spec.shm_options));
            nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
            step!(Step::PivotRoot, enter_root(&spec.rootfs));
            if spec.read_only_root {
                let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
                step!(Step::Mounts, mount(None::<&str>, "/", None::<&str>, flags, None::<&str>));
            }
            step!(Step::Hostname, sethostname(&spec.hostname));
        }
    }
    // Limits and the bounding set first: both need capabilities the switch of user drops.
    step!(Step::Limits, security::apply_rlimits(&spec.rlimits));
    step!(Step::Privileges, security::limit_bounding_set(spec.capabilities, spec.last_capability));
    let identity = &spec.identity;
    let groups: Vec<Gid> = identity.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    step!(Step::Credentials, setgroups(&groups));
    step!(Step::Credentials, setgid(Gid::from_raw(identity.gid)));
    step!(Step::Credentials, setuid(Uid::from_raw(identity.uid)));
    // Root keeps the set; other users keep none (their exec would drop them anyway).
    let keep = if identity.uid == 0 { spec.capabilities } else { CapSet(0) };
    step!(Step::Privileges, security::set_capabilities(keep));
    step!(Step::WorkingDirectory, chdir(spec.cwd.as_str()));
    if spec.no_new_privileges {
        step!(Step::Privileges, nix::sys::prctl::set_no_new_privs());
    }
    if let Some(init) = &spec.init {
        // The init starts the program itself: find it now, so a missing one is still this
        // call's error rather than the init's exit status.
        let program = match find_program(&spec.programs) {
            Ok(program) => program,
            Err(errno) => return (Step::Exec, errno),
        };
        let mut args = vec![c"vessel-init", crate::container_init::FLAG, program, c"--"];
        args.extend(spec.args.iter().map(CString::as_c_str));
        let Err(errno) = fexecve(init, &args, &spec.env);
        return (Step::Exec, errno);
    }
    // Try every PATH candidate; a permission problem is more telling than "not found".
    let mut failure = Errno::ENOENT;
    for program in &spec.programs {
        let Err(errno) = execve(program, &spec.args, &spec.env);
        if failure == Errno::ENOENT || errno == Errno::EACCES {
            failure = errno;
        }
    }
    (Step::Exec, failure)
}

/// The first candidate that is an executable file, with execve's choice of error.
fn find_program(candidates: &[CString]) -> Result<&std::ffi::CStr, Errno> {
    let mut failure = Errno::ENOENT;
    for program in candidates {
        let is_file = nix::sys::stat::stat(program.as_c_str())
            .map(|stat| SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG);
        let errno = match (is_file, access(program.as_c_str(), AccessFlags::X_OK)) {
            (Ok(true), Ok(())) => return Ok(program),
            (Ok(false), _) => Errno::EACCES,
            (Err(errno), _) | (_, Err(errno)) => errno,
        };
        if failure == Errno::ENOENT || errno == Errno::EACCES {
            failure = errno;
        }
    }
    Err(failure)
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`.
fn join_cgroup(procs: &CString) -> Result<(), Errno> {
    let fd = open(procs.as_c_str(), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    nix::unistd::write(&fd, b"0").map(drop)
}

/// The guest's devpts (see `crate::mounts`), where the agent opens terminals.
const GUEST_PTS: &str = "/dev/pts";

/// /proc, /sys and a minimal /dev inside the container's root, as docker provides them.
fn container_mounts(rootfs: &Path, shm_options: &str) -> Result<(), Errno> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    let at = |path: &str| rootfs.join(path);
    let dir = |path: &Path| match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) => Err(Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))),
    };
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (fstype, path, flags, data) in [
        ("proc", "proc", secure, None),
        ("sysfs", "sys", secure | MsFlags::MS_RDONLY, None),
        ("cgroup2", "sys/fs/cgroup", secure, None),
        (
            "tmpfs",
            "dev",
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
        ("tmpfs", "dev/shm", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(shm_options)),
    ] {
        let target = at(path);
        dir(&target)?;
        mount(Some(fstype), &target, Some(fstype), flags, data)?;
    }
    // The agent opens every process's terminal in the guest's devpts, so the container gets
    // that one rather than a new instance, or ttyname() could not find the terminal in its
    // /dev/pts. One VM serves one container: it holds no other container's terminals.
    let pts = at("dev/pts");
    dir(&pts)?;
    mount(Some(GUEST_PTS), &pts, none, MsFlags::MS_BIND, none)?;
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(none, &pts, none, flags, none)?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        mknod(
            &at("dev").join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )?;
    }
    for (link, target) in [
        ("dev/ptmx", "pts/ptmx"),
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, at(link))
            .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))?;
    }
    Ok(())
}

/// Makes `rootfs` the root. pivot_root cannot leave the initramfs (the agent's root), so,
/// as switch_root does, the container's root is moved over `/` and chrooted into; the
/// initramfs beneath holds only vessel-init, and the VM is the security boundary.
fn enter_root(rootfs: &Path) -> Result<(), Errno> {
    chdir(rootfs)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    chroot(".")?;
    chdir("/")
}
