//! The QEMU `microvm` backend: a real, maintained VMM from the distribution that runs on
//! every host we have, with KVM where the host allows and TCG elsewhere.
//!
//! Each VM is a few host processes: `vessel-vsock` (the host end of the agent channel, vsock
//! packets over a virtio-serial port; see docs/vsock.md), one `virtiofsd` per shared
//! directory (see [`crate::virtiofs`]) and QEMU itself. All die with
//! the process that started them, and the VM's runtime directory goes with the VM.

mod cmdline;
mod process;
mod qmp;
pub mod template;

pub use cmdline::{guest_cmdline, qemu_args, Start, TimingHints};

use crate::virtiofs;
use crate::vsock::HostVsock;
use crate::{Backend, Vm, VmConfig, VmError, VmExit};
use process::Child;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a device process (vsock, virtiofsd) may take to create its socket.
const DEVICE_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long device processes may take to end by themselves once QEMU is gone (they exit
/// when their connection to it closes) before they are killed.
const DEVICE_EXIT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub qemu: PathBuf,
    pub vsock_device: PathBuf,
    /// Serves shared directories; only VMs with shares need it.
    pub virtiofsd: Option<PathBuf>,
    /// Where [`virtiofs::find_virtiofsd`] looked, for the error when a VM needs it.
    pub tool_cache: PathBuf,
    /// Where the measured TSC frequency is cached (see [`crate::tsc`]).
    pub tsc_cache: PathBuf,
}

impl QemuBackend {
    /// Finds the programs: `VESSEL_QEMU` / `VESSEL_VSOCK` when set, else beside the
    /// running binary (vessel-vsock is built and installed with vessel), else in `PATH`;
    /// virtiofsd as [`virtiofs::find_virtiofsd`] does in `tool_cache` (`$VESSEL_CACHE`), and
    /// a missing one fails only the VMs that share directories.
    pub fn discover(tsc_cache: PathBuf, tool_cache: &Path) -> Result<Self, VmError> {
        let virtiofsd = match virtiofs::find_virtiofsd(tool_cache) {
            Ok(path) => Some(path),
            Err(VmError::VirtiofsdNotFound { .. }) => None,
            // VESSEL_VIRTIOFSD names a missing file: a mistake worth hearing about at once.
            Err(err) => return Err(err),
        };
        Ok(QemuBackend {
            qemu: find_program(
                "VESSEL_QEMU",
                "qemu-system-x86_64",
                "apt-get install qemu-system-x86",
            )?,
            vsock_device: find_program(
                "VESSEL_VSOCK",
                VSOCK_DEVICE,
                "build it with scripts/build (it installs beside vessel)",
            )?,
            virtiofsd,
            tool_cache: tool_cache.to_path_buf(),
            tsc_cache,
        })
    }
}

/// The agent channel's host end (crates/vsock).
pub const VSOCK_DEVICE: &str = "vessel-vsock";

/// Where `relative` would be beside the running binary, or in the cargo target dir it was
/// built in (target/debug/vessel and test binaries in target/debug/deps both reach target/).
pub fn beside_running_binary(relative: &str) -> Vec<PathBuf> {
    let Some(exe_dir) =
        std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    exe_dir.ancestors().take(3).map(|dir| dir.join(relative)).collect()
}

/// A program named by `env_var`, else beside the running binary (or in the cargo target dir
/// above a test binary), else found in `PATH`.
pub fn find_program(env_var: &str, name: &str, hint: &'static str) -> Result<PathBuf, VmError> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(VmError::Missing { what: "program", path, hint })
        };
    }
    let beside_exe = beside_running_binary(name);
    let in_path: Vec<PathBuf> = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .collect();
    beside_exe
        .into_iter()
        .chain(in_path)
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| VmError::ProgramNotFound { program: name.to_string(), hint })
}

impl Backend for QemuBackend {
    type Vm = QemuVm;

    fn name(&self) -> &'static str {
        "qemu-microvm"
    }

    async fn boot(&self, config: VmConfig) -> Result<QemuVm, VmError> {
        for (what, path, hint) in [
            ("guest kernel", &config.kernel, "run kernel/build"),
            ("initramfs", &config.initramfs, "the caller must write it first"),
        ] {
            if !path.is_file() {
                return Err(VmError::Missing { what, path: path.clone(), hint });
            }
        }
        if config.cpus == 0 || config.memory_mib < 64 {
            return Err(VmError::Config(format!(
                "{} CPUs and {} MiB: a VM needs at least 1 CPU and 64 MiB",
                config.cpus, config.memory_mib
            )));
        }
        cmdline::check_transports(&config)?;
        virtiofs::validate(&config.shares)?;
        let virtiofsd = match (&self.virtiofsd, config.shares.is_empty()) {
            (_, true) => None,
            (Some(path), false) => Some(path.clone()),
            (None, false) => {
                return Err(VmError::VirtiofsdNotFound {
                    cached: virtiofs::cached_virtiofsd(&self.tool_cache),
                })
            }
        };
        std::fs::create_dir_all(&config.run_dir)
            .map_err(|source| VmError::RunDir { path: config.run_dir.clone(), source })?;
        let paths = RunPaths::new(&config.run_dir, config.shares.len());
        let accel = config.accel.resolve();
        let khz = crate::tsc::host_khz(&self.tsc_cache);

        let mut devices = match self.start_devices(&config, &paths, virtiofsd.as_deref()).await {
            Ok(devices) => devices,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&config.run_dir);
                return Err(err);
            }
        };
        let template = match template::templates_for(&config) {
            Some(templates) => {
                match template::for_config(&self.qemu, &config, templates, accel, khz).await {
                    Ok(template) => Some(template),
                    Err(err) => {
                        tracing::warn!(error = %err, "booting instead of restoring a saved VM");
                        None
                    }
                }
            }
            None => None,
        };
        // A restore that fails here has used up vessel-vsock's one connection: the caller
        // starts over (and boots), with the error naming the template.
        let qemu = match self.spawn_qemu(&config, &paths, accel, khz, template.as_ref()).await {
            Ok(qemu) => qemu,
            Err(err) => {
                devices.kill_all().await;
                let _ = std::fs::remove_dir_all(&config.run_dir);
                return Err(err);
            }
        };
        let echo = config.echo_console.then(|| process::echo_file(paths.console.clone()));
        let mut vmm_logs = vec![paths.log("qemu")];
        vmm_logs.extend(devices.logs.iter().cloned());
        Ok(QemuVm {
            qemu,
            devices,
            vsock: HostVsock::new(paths.vsock),
            vmm_logs,
            console: paths.console,
            run_dir: config.run_dir,
            echo,
            exited: None,
            template,
        })
    }
}

impl QemuBackend {
    /// Starts QEMU, handing it the TAP; a restore also gets the saved state and is told to
    /// load it.
    async fn spawn_qemu(
        &self,
        config: &VmConfig,
        paths: &RunPaths,
        accel: crate::Accel,
        tsc_khz: u64,
        template: Option<&template::Template>,
    ) -> Result<Child, VmError> {
        let start = if template.is_some() { Start::Restore } else { Start::Cold };
        let args = qemu_args(
            config,
            accel,
            start,
            &paths.agent_socket,
            &paths.shares,
            &paths.console,
            tsc_khz,
        );
        tracing::debug!(vm = %config.name, ?args, "starting qemu");
        let args = args.as_slice();
        let log = paths.log("qemu");
        let mut fds = Vec::new();
        if let Some(nic) = &config.nic {
            fds.push((nic.fd(), cmdline::NIC_FD));
        }
        let Some(template) = template else {
            return Child::spawn_with_fds(&self.qemu, args, &log, &fds);
        };
        let failed = |message: String| VmError::Restore { template: template.clone(), message };
        let open = |path: PathBuf| {
            std::fs::File::open(&path)
                .map_err(|err| failed(format!("open {}: {err}", path.display())))
        };
        // The RAM file is opened here with the state, and QEMU maps it from RAM_FD: a
        // template replaced meanwhile cannot pair one's state with another's RAM.
        let (state, ram) = (open(template.state())?, open(template.ram())?);
        let (qmp_ours, qmp_theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|err| failed(format!("a socket pair for QEMU's monitor: {err}")))?;
        fds.push((state.as_fd(), cmdline::STATE_FD));
        fds.push((qmp_theirs.as_fd(), cmdline::QMP_FD));
        fds.push((ram.as_fd(), cmdline::RAM_FD));
        let mut qemu = Child::spawn_with_fds(&self.qemu, args, &log, &fds)?;
        drop(qmp_theirs);
        if let Err(err) = template::load(qmp_ours).await {
            qemu.kill().await;
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(failed(format!("{err}; QEMU said: {}", said.trim())));
        }
        Ok(qemu)
    }

    /// Starts vessel-vsock and a virtiofsd per share, all at once, and waits until each
    /// serves its socket; on failure none is left running.
    async fn start_devices(
        &self,
        config: &VmConfig,
        paths: &RunPaths,
        virtiofsd: Option<&Path>,
    ) -> Result<DeviceProcesses, VmError> {
        let vsock_args = [
            "--serial".to_string(),
            paths.agent_socket.display().to_string(),
            "--uds-path".to_string(),
            paths.vsock.display().to_string(),
        ];
        let vsock_log = paths.log(VSOCK_DEVICE);
        let mut devices = DeviceProcesses {
            channel: Child::spawn(&self.vsock_device, &vsock_args, &vsock_log)?,
            virtiofsd: Vec::new(),
            logs: vec![vsock_log.clone()],
        };
        if let Some(virtiofsd) = virtiofsd {
            let nofile = virtiofs::nofile_hard_limit();
            for (index, (share, socket)) in config.shares.iter().zip(&paths.shares).enumerate() {
                let log = paths.virtiofsd_log(index);
                let args = virtiofs::virtiofsd_args(share, socket, nofile);
                tracing::debug!(vm = %config.name, tag = %share.tag, ?args, "starting virtiofsd");
                // Its sandbox forks: the group is killed whole.
                match Child::spawn_group(virtiofsd, &args, &log) {
                    Ok(child) => devices.virtiofsd.push(child),
                    Err(err) => {
                        devices.kill_all().await;
                        return Err(err);
                    }
                }
                devices.logs.push(log);
            }
        }
        // They all started above and come up side by side; wait for each in turn.
        let mut ready = devices
            .channel
            .wait_for_socket(&paths.agent_socket, DEVICE_SOCKET_TIMEOUT, &vsock_log)
            .await;
        for (index, child) in devices.virtiofsd.iter_mut().enumerate() {
            if ready.is_err() {
                break;
            }
            let log = paths.virtiofsd_log(index);
            ready = child.wait_for_socket(&paths.shares[index], DEVICE_SOCKET_TIMEOUT, &log).await;
        }
        if let Err(err) = ready {
            devices.kill_all().await;
            return Err(err);
        }
        Ok(devices)
    }
}

/// The device processes of one VM, beside QEMU.
#[derive(Debug)]
struct DeviceProcesses {
    channel: Child,
    virtiofsd: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl DeviceProcesses {
    async fn kill_all(&mut self) {
        self.channel.kill().await;
        for child in &mut self.virtiofsd {
            child.kill().await;
        }
    }

    /// Once QEMU is gone: virtiofsd ends by itself when its connection closes (its sandbox
    /// child first), so give it a moment before killing what is left.
    async fn release(&mut self) {
        self.channel.kill().await;
        let deadline = tokio::time::Instant::now() + DEVICE_EXIT_GRACE;
        for child in &mut self.virtiofsd {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !matches!(child.wait_timeout(left).await, Ok(Some(_))) {
                tracing::debug!("virtiofsd did not end with the VM; killing it");
            }
            child.kill().await;
        }
    }
}

/// The host side of the vsock of the VM whose runtime directory is `run_dir`; known before
/// the VM starts, so callers can listen for the guest first.
pub fn host_vsock(run_dir: &Path) -> HostVsock {
    HostVsock::new(run_dir.join("vsock.sock"))
}

struct RunPaths {
    dir: PathBuf,
    /// Where vessel-vsock takes QEMU's connection for the agent port.
    agent_socket: PathBuf,
    /// The virtiofsd socket of each share.
    shares: Vec<PathBuf>,
    vsock: PathBuf,
    console: PathBuf,
}

impl RunPaths {
    fn new(dir: &Path, shares: usize) -> Self {
        RunPaths {
            dir: dir.to_path_buf(),
            agent_socket: dir.join("agent-port.sock"),
            shares: (0..shares).map(|index| virtiofs::socket_path(dir, index)).collect(),
            vsock: host_vsock(dir).socket().to_path_buf(),
            console: dir.join("console.log"),
        }
    }

    fn log(&self, program: &str) -> PathBuf {
        self.dir.join(format!("{program}.log"))
    }

    fn virtiofsd_log(&self, index: usize) -> PathBuf {
        self.log(&format!("virtiofsd-{index}"))
    }
}

#[derive(Debug)]
pub struct QemuVm {
    qemu: Child,
    devices: DeviceProcesses,
    vsock: HostVsock,
    console: PathBuf,
    vmm_logs: Vec<PathBuf>,
    run_dir: PathBuf,
    echo: Option<tokio::task::JoinHandle<()>>,
    exited: Option<VmExit>,
    /// The saved VM this one was restored from.
    template: Option<template::Template>,
}

impl QemuVm {
    /// The directory holding this VM's sockets and logs.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The saved VM this one was restored from; none for a boot.
    pub fn restored_from(&self) -> Option<&template::Template> {
        self.template.as_ref()
    }

    async fn release(&mut self) {
        self.devices.release().await;
        if let Some(echo) = self.echo.take() {
            // Let the echo print what the guest wrote last, then stop it.
            tokio::time::sleep(Duration::from_millis(60)).await;
            echo.abort();
        }
    }
}

impl Vm for QemuVm {
    fn vsock(&self) -> &HostVsock {
        &self.vsock
    }

    fn boot_log(&self) -> PathBuf {
        self.console.clone()
    }

    fn pid(&self) -> Option<u32> {
        self.qemu.pid()
    }

    fn vmm_messages(&self) -> String {
        let mut messages = String::new();
        for log in &self.vmm_logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                messages.push_str(line);
                messages.push('\n');
            }
        }
        messages
    }

    async fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>, VmError> {
        if let Some(exit) = self.exited {
            return Ok(Some(exit));
        }
        let Some(status) = self.qemu.wait_timeout(timeout).await.map_err(VmError::Wait)? else {
            return Ok(None);
        };
        let exit = if status.success() { VmExit::GuestExit } else { VmExit::Failed(status) };
        self.exited = Some(exit);
        self.release().await;
        Ok(Some(exit))
    }

    async fn kill(&mut self) -> Result<(), VmError> {
        if self.exited.is_none() {
            let status = self.qemu.kill().await;
            self.exited = Some(match status {
                Some(status) if status.success() => VmExit::GuestExit,
                Some(status) => VmExit::Failed(status),
                None => VmExit::GuestExit,
            });
        }
        self.release().await;
        Ok(())
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Children are killed on drop (see process::Child); the directory holds only sockets
        // and logs of this VM.
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
