//! VM backends behind one trait: boot a kernel with an initramfs and devices, wait for the VM
//! to end, kill it. QEMU's `microvm` machine is the first backend.
//!
//! This crate knows nothing of containers or of the agent inside the guest: it boots a kernel,
//! wires devices, and owns every host process and file that a VM needs until it is gone.

pub mod accel;
pub mod initramfs;
pub mod qemu;
pub mod tsc;
pub mod virtiofs;
pub mod vsock;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use accel::Accel;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} not found at {path} ({hint})")]
    Missing { what: &'static str, path: PathBuf, hint: &'static str },
    #[error("{program} not found in PATH ({hint})")]
    ProgramNotFound { program: String, hint: &'static str },
    #[error("cannot create the VM's runtime directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited during start-up ({status}); see {log}")]
    EarlyExit { program: String, status: std::process::ExitStatus, log: PathBuf },
    #[error("{program} did not create {path} within {timeout:?}")]
    SocketTimeout { program: String, path: PathBuf, timeout: Duration },
    #[error("cannot write the initramfs {path}")]
    Initramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the VM failed")]
    Wait(#[source] std::io::Error),
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error(
        "{devices} need {needed} virtio-mmio transports, a microvm has {available} \
         (at most {spare} disks and shares together)"
    )]
    TooManyDevices { devices: String, needed: usize, available: usize, spare: usize },
    #[error("cannot share {path} as {tag:?}: {reason}")]
    InvalidShare { tag: String, path: PathBuf, reason: String },
    #[error("cannot make a saved VM to start from: {0}")]
    Template(String),
    #[error("cannot restore the saved VM {}: {message}", template.dir.display())]
    Restore { template: qemu::template::Template, message: String },
    #[error("cannot {action} {path}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtiofsd not found at {cached} or in PATH ({hint})", hint = virtiofs::VIRTIOFSD_HINT)]
    VirtiofsdNotFound { cached: PathBuf },
}

/// A disk the guest sees as `/dev/vdX`, in the order given.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A host directory the guest can mount over virtio-fs: `mount -t virtiofs TAG /target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The name the guest mounts it by: 1 to 36 letters, digits, `.`, `_`, `-`, unique in
    /// the VM.
    pub tag: String,
    /// An existing directory; the guest sees it and nothing outside it.
    pub host_path: PathBuf,
    /// Refused writes on the host side (virtiofsd), whatever the guest mount says.
    pub read_only: bool,
    /// Map ownership to one host user (uid, gid): whatever the guest creates belongs to it
    /// on the host, and its files appear in the guest as root's (`-v …:U`).
    pub owner: Option<(u32, u32)>,
}

/// A network card: a TAP device the caller opened (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`) and
/// keeps, and the MAC the guest's `eth0` gets. Only the VMM receives the fd, never the
/// device processes.
#[derive(Debug, Clone)]
pub struct Nic {
    /// Shared, so a config stays `Clone`; the TAP lives while any holder keeps it open.
    fd: Arc<OwnedFd>,
    pub mac: [u8; 6],
}

impl Nic {
    /// `fd` should be close-on-exec (a `try_clone_to_owned` of the TAP's fd is): the backend
    /// hands the VMM a copy of its own.
    pub fn new(fd: OwnedFd, mac: [u8; 6]) -> Self {
        Nic { fd: Arc::new(fd), mac }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The same TAP with another address.
    pub fn with_mac(&self, mac: [u8; 6]) -> Nic {
        Nic { fd: self.fd.clone(), mac }
    }

    /// `02:76:0a:d5:fa:02`, as QEMU's `mac=` takes it.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// A MAC address as `02:76:0a:d5:fa:02`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Names the VM in logs and process titles.
    pub name: String,
    /// An uncompressed `vmlinux`, booted through PVH.
    pub kernel: PathBuf,
    /// A newc cpio archive (see [`initramfs`]).
    pub initramfs: PathBuf,
    /// Extra kernel command-line arguments; the backend adds console, timing and device ones.
    pub kernel_args: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// Host directories shared over virtio-fs, one virtiofsd each.
    pub shares: Vec<Share>,
    /// The guest's `eth0`; none gives a guest with only `lo`.
    pub nic: Option<Nic>,
    /// Directory for this VM's sockets and logs; the VM owns it and removes it when gone.
    pub run_dir: PathBuf,
    pub accel: Accel,
    /// Copy the guest console to our stderr as well as to the boot log.
    pub echo_console: bool,
    /// Where saved VMs are kept, one per shape, made on first use: a VM restores one instead
    /// of booting (a warm start). None, or a VM with shares: a boot.
    pub templates: Option<PathBuf>,
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off or rebooted (both end the VM).
    GuestExit,
    /// The VMM exited with an error status or a signal (ours or someone else's).
    Failed(std::process::ExitStatus),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        match self {
            VmExit::GuestExit => f.write_str("the guest powered off"),
            VmExit::Failed(status) => match (status.code(), status.signal()) {
                (Some(code), _) => write!(f, "the VMM exited with status {code}"),
                (_, Some(signal)) => write!(f, "the VMM was killed by signal {signal}"),
                _ => write!(f, "the VMM ended ({status})"),
            },
        }
    }
}

/// A running VM. Dropping it kills whatever is left of it and removes its runtime directory.
pub trait Vm: Send + std::fmt::Debug {
    /// The host side of the guest's vsock (hybrid model).
    fn vsock(&self) -> &vsock::HostVsock;
    /// The guest console log.
    fn boot_log(&self) -> PathBuf;
    /// The VMM's process id, for the state files of later callers.
    fn pid(&self) -> Option<u32>;
    /// What the VMM and its device processes printed (errors, warnings), for diagnostics.
    fn vmm_messages(&self) -> String;
    /// Waits up to `timeout` for the VM to end by itself.
    fn wait(
        &mut self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Option<VmExit>, VmError>> + Send;
    /// Ends the VM at once and waits until every process of it is gone.
    fn kill(&mut self) -> impl std::future::Future<Output = Result<(), VmError>> + Send;
}

/// A way to run VMs.
pub trait Backend: std::fmt::Debug {
    type Vm: Vm;
    fn name(&self) -> &'static str;
    /// Starts the VM and returns once its VMM runs; the guest may still be booting.
    fn boot(
        &self,
        config: VmConfig,
    ) -> impl std::future::Future<Output = Result<Self::Vm, VmError>> + Send;
}
