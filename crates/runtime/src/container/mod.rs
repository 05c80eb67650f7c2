//! Containers as the host keeps them: what each was created with (`config.json`, never
//! changed), where it is in its life (`state.json`, rewritten atomically), its writable
//! disk and its log, all in `<root>/containers/<id>/`.
//!
//! A running container has a supervisor process (see `supervisor`); the state names it,
//! so a supervisor that died without recording the end (kill -9) is noticed by the next
//! reader, which records the container as exited with the reason.

pub mod create;
pub mod logfile;
pub mod mounts;
mod names;
mod store;

pub use store::{ContainerStore, StoreError, EXIT_LOST};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a container was created with: docker's `Config` and `HostConfig`, reduced to what
/// vessel honours.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    /// 64 hex digits.
    pub id: String,
    /// Unique among the root's containers.
    pub name: String,
    pub created: u64,
    /// The image as the user named it, and the id it resolved to.
    pub image: String,
    pub image_id: String,
    /// ENTRYPOINT then CMD, as run.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// CPUs (fractions allowed) and the memory limit, for the VM and the container's cgroup.
    pub cpus: f64,
    pub memory_mib: u32,
    pub read_only: bool,
    pub tty: bool,
    /// `-i`: the container's stdin stays open for whoever attaches.
    pub open_stdin: bool,
    /// The signal `stop` sends first (`SIGTERM`), and how long it waits before SIGKILL.
    pub stop_signal: String,
    pub stop_timeout: u32,
    /// A minimal init as PID 1 that reaps zombies and forwards signals (`--init`).
    pub init: bool,
    /// Remove the container when it exits (`--rm`).
    pub auto_remove: bool,
    /// The accelerator asked for: auto, kvm or tcg.
    pub accel: String,
    /// Resource limits (`--ulimit`): name, soft, hard (`u64::MAX` unlimited).
    #[serde(default)]
    pub ulimits: Vec<(String, u64, u64)>,
    /// The capabilities every process keeps; None: docker's default set.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Volumes, bind mounts and tmpfs (`-v`, `--mount`, `--tmpfs`).
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Bytes of /dev/shm (`--shm-size`); None: docker's 64 MiB.
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// The container's network and address; None: `--network none` (only loopback).
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// Nameservers for the container's resolv.conf (`--dns`); empty: the network's own.
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Extra `/etc/hosts` entries (`--add-host NAME:IP`).
    #[serde(default)]
    pub extra_hosts: Vec<(String, std::net::Ipv4Addr)>,
    /// Ports published on the host (`-p`, `-P`); a host port of 0: any free one.
    #[serde(default)]
    pub publish: Vec<vessel_net::ports::PortMapping>,
}

/// Something mounted in the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    #[serde(flatten)]
    pub source: MountSource,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSource {
    /// A named volume (`anonymous`: made for this container, by `-v /path`).
    Volume { name: String, anonymous: bool },
    /// A host directory (or file), shared with the VM over virtio-fs; with `owner` (`:U`),
    /// what the container creates belongs to that host user, whose files the container
    /// sees as root's.
    Bind {
        path: PathBuf,
        #[serde(default)]
        owner: Option<(u32, u32)>,
    },
    /// Memory, with tmpfs options (`size=64m,mode=1777`).
    Tmpfs { options: String },
}

impl MountSpec {
    pub fn volume_name(&self) -> Option<&str> {
        match &self.source {
            MountSource::Volume { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// docker's container states, as `ps` and `inspect` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Exited,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub status: Status,
    /// The supervisor of a running container, with its start time (in clock ticks after
    /// boot, from /proc) so that a recycled pid is never mistaken for it.
    pub supervisor: Option<ProcessRef>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The main process's exit code (128 + signal when killed by one).
    pub exit_code: Option<i32>,
    /// Why the container could not start or ended abnormally.
    pub error: Option<String>,
    /// The published ports as bound while it runs (the host ports the kernel picked).
    #[serde(default)]
    pub ports: Vec<vessel_net::ports::PortMapping>,
}

/// A process, identified beyond its pid.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcessRef {
    /// This process.
    pub fn current() -> Option<ProcessRef> {
        let pid = std::process::id();
        Some(ProcessRef { pid, start_ticks: start_ticks(pid)? })
    }

    /// True while the process lives (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Field 22 of /proc/<pid>/stat (start time), None for a missing or zombie process.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// One container: its directory, config and state.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
    pub config: ContainerConfig,
    pub state: ContainerState,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn short_id(&self) -> &str {
        short_id(&self.config.id)
    }

    pub fn writable_disk(&self) -> PathBuf {
        self.dir.join(WRITABLE_DISK)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join(SUPERVISOR_LOG)
    }

    pub fn is_running(&self) -> bool {
        self.state.status == Status::Running
    }

    /// docker's STATUS column: "Up 5 seconds", "Exited (0) 3 minutes ago", "Created".
    pub fn status_text(&self) -> String {
        use crate::time::{human_duration, since};
        match self.state.status {
            Status::Created => "Created".to_string(),
            Status::Running => {
                format!("Up {}", human_duration(since(self.state.started_at.unwrap_or_default())))
            }
            Status::Exited => format!(
                "Exited ({}) {} ago",
                self.state.exit_code.unwrap_or(-1),
                human_duration(since(self.state.finished_at.unwrap_or_default()))
            ),
        }
    }
}

pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "state.json";
pub const WRITABLE_DISK: &str = "writable.ext4";
pub const LOG_FILE: &str = "container.log";
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// Writes `value` as JSON to `path` through a temporary file, synced and renamed, so a
/// reader (or a crash) sees the old file or the new one, never half of one.
pub fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut temporary, value)?;
    temporary.write_all(b"\n")?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|err| err.error)?;
    Ok(())
}

/// A 64-hex-digit container id, from the kernel's random UUIDs and the clock.
pub fn new_id() -> String {
    use sha2::Digest;
    let random = std::fs::read("/proc/sys/kernel/random/uuid").unwrap_or_default();
    let digest = sha2::Sha256::new()
        .chain_update(random)
        .chain_update(crate::time::now_nanos().to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// docker's rule for container and volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most
/// 128 bytes (so a name is always a safe file name).
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name.len() <= 128
}

/// Removes what a crash left in a store directory: `.removing-*` entries, and `.creating-*`
/// ones older than a minute (a younger one may be a creation in progress).
pub(crate) fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() > 60)
        };
        if name.starts_with(".removing-") || (name.starts_with(".creating-") && old()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes a container that is not running and, with `volumes`, its anonymous volumes;
/// then what a killed supervisor may have left on the host (its control socket, VM
/// directory and staged files). A container removed meanwhile (`--rm`) is `NotFound`. A
/// supervisor that has recorded the end may still hold the container for its last steps:
/// it gets a few seconds.
pub fn remove(host: &crate::Host, container: &Container, volumes: bool) -> Result<(), StoreError> {
    let store = ContainerStore::new(&host.root);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut removed = store.remove(container);
    while matches!(removed, Err(StoreError::Running(_)))
        && store.load(container.id()).is_ok_and(|current| !current.is_running())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        removed = store.remove(container);
    }
    removed?;
    release_held(&host.root, container, volumes);
    let _ = std::fs::remove_file(host.control_socket(container.id()));
    let _ = std::fs::remove_dir_all(host.vm_run_dir(container.short_id()));
    crate::supervisor::remove_staged_files(host, container.id());
    Ok(())
}

/// What a removed container held beyond its directory: its address, and with `volumes`
/// its anonymous volumes. (A crash before this leaves a lease the next allocation
/// reclaims.)
pub(crate) fn release_held(root: &Path, container: &Container, volumes: bool) {
    if let Some(attachment) = &container.config.network {
        let store = crate::network::NetworkStore::new(root);
        if let Err(err) = store.release(&attachment.network, attachment.ip, container.id()) {
            tracing::warn!(error = %err, "cannot free the container's address");
        }
    }
    if volumes {
        crate::volume::remove_anonymous(root, container);
    }
}

/// True for the ids `new_id` makes.
pub fn is_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert!(is_id(&a) && is_id(&b));
        assert_ne!(a, b);
        assert!(!is_id("names"));
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = ProcessRef::current().unwrap();
        assert!(me.is_alive());
        assert!(!ProcessRef { start_ticks: me.start_ticks + 1, ..me }.is_alive());
    }

    #[test]
    fn json_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_json_atomically(&path, &ContainerState::default()).unwrap();
        let state = ContainerState { status: Status::Running, ..Default::default() };
        write_json_atomically(&path, &state).unwrap();
        let read: ContainerState = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read, state);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary left");
    }
}
