//! A sandbox is one VM with its agent connected: what every container runs in.

use crate::agent::AgentClient;
use crate::{Host, RuntimeError};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vessel_proto::{ports, ready};
use vessel_vm::qemu::{QemuBackend, QemuVm};
use vessel_vm::{Accel, Backend, Disk, Nic, Share, Vm, VmConfig, VmExit};

/// How long a guest may take from VM start to a serving agent. Generous: under TCG on a
/// loaded 2-core host a boot can take several times its usual 0.5 s.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a guest may take to power off after being asked.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<Disk>,
    /// Host directories the guest can mount over virtio-fs (`fstype` "virtiofs", the tag as
    /// source).
    pub shares: Vec<Share>,
    /// The guest's `eth0` (a TAP the caller opened); none leaves the guest only `lo`.
    pub nic: Option<Nic>,
    pub accel: Accel,
    /// Copy the guest console to stderr while the sandbox runs (`--debug`).
    pub echo_console: bool,
}

impl SandboxOptions {
    pub fn new(name: impl Into<String>) -> Self {
        SandboxOptions {
            name: name.into(),
            cpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            shares: Vec::new(),
            nic: None,
            accel: Accel::Auto,
            echo_console: false,
        }
    }
}

#[derive(Debug)]
pub struct Sandbox {
    pub(crate) vm: QemuVm,
    pub(crate) agent: AgentClient,
    pub(crate) ports: crate::process::PortAllocator,
    /// When the VMM was started and when the agent said it serves.
    pub started: Instant,
    pub ready_after: Duration,
}

impl Sandbox {
    /// Boots a VM and returns once its agent serves.
    pub async fn start(host: &Host, options: SandboxOptions) -> Result<Sandbox, RuntimeError> {
        host.ensure_dirs()?;
        let backend = QemuBackend::discover(host.tsc_cache(), &host.cache)?;
        let kernel = host.kernel()?;
        let init = host.init()?;
        reap_abandoned_vm_dirs(host);
        let run_dir = host.vm_run_dir(&options.name);
        if run_dir.exists() {
            return Err(RuntimeError::Io {
                action: "use the VM directory (a VM of this name runs, or a crashed one left it)",
                path: run_dir,
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
        let initramfs = cached_initramfs(host, &init)?;
        let config = VmConfig {
            name: options.name.clone(),
            kernel,
            initramfs,
            kernel_args: Vec::new(),
            cpus: options.cpus,
            memory_mib: options.memory_mib,
            disks: options.disks,
            shares: options.shares,
            nic: options.nic,
            run_dir,
            accel: options.accel,
            echo_console: options.echo_console,
            templates: warm_start().then(|| host.vm_templates()),
        };
        let started = Instant::now();
        let (mut vm, ready_after) = match boot_until_ready(&backend, config.clone()).await {
            Ok(booted) => booted,
            Err((err, Some(template))) => {
                // A saved VM that does not come up is not used again; this VM boots.
                tracing::warn!(error = %err, template = %template.dir.display(), "a restored VM failed; discarding its template and booting");
                template.discard();
                boot_until_ready(&backend, VmConfig { templates: None, ..config })
                    .await
                    .map_err(|(err, _)| err)?
            }
            Err((err, None)) => return Err(err),
        };
        let agent = match AgentClient::connect(vm.vsock()).await {
            Ok(agent) => agent,
            Err(err) => {
                let _ = vm.kill().await;
                return Err(err);
            }
        };
        Ok(Sandbox { vm, agent, ports: Default::default(), started, ready_after })
    }

    pub fn agent(&mut self) -> &mut AgentClient {
        &mut self.agent
    }

    pub fn vm(&self) -> &QemuVm {
        &self.vm
    }

    /// Starts a process in one of this sandbox's containers.
    pub async fn start_process(
        &mut self,
        spec: crate::process::ProcessSpec,
        io: crate::process::ProcessIo,
    ) -> Result<crate::process::ProcessHandle, RuntimeError> {
        crate::process::start(self.vm.vsock(), &mut self.agent, &mut self.ports, spec, io).await
    }

    /// Ends the VM at once, without letting the guest flush its disks: for a VM whose
    /// writable disk is about to be deleted anyway.
    pub async fn kill(mut self) -> Result<Stopped, RuntimeError> {
        self.vm.kill().await?;
        let exit = self.vm.wait(Duration::ZERO).await?.unwrap_or(VmExit::GuestExit);
        let console = std::fs::read_to_string(self.vm.boot_log()).unwrap_or_default();
        Ok(Stopped { exit, console })
    }

    /// Asks the agent to power off, waits, and kills the VM if it does not end in time.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<Stopped, RuntimeError> {
        if let Err(err) = self.agent.shutdown().await {
            // The agent powers off moments after it replies, so the reply can be lost; the
            // VM's end (or the timeout below) is what counts.
            tracing::debug!(error = %err, "no reply to Shutdown; waiting for the VM to end");
        }
        let exit = match self.vm.wait(timeout).await? {
            Some(exit) => exit,
            None => {
                tracing::warn!(?timeout, "the guest did not power off in time; killing the VM");
                self.vm.kill().await?;
                self.vm.wait(Duration::ZERO).await?.unwrap_or(VmExit::GuestExit)
            }
        };
        // Read before the VM (and its directory) is dropped.
        let console = std::fs::read_to_string(self.vm.boot_log()).unwrap_or_default();
        Ok(Stopped { exit, console })
    }
}

/// Whether VMs restore saved ones (`VESSEL_WARM_START=0` makes every VM boot).
fn warm_start() -> bool {
    std::env::var_os("VESSEL_WARM_START").is_none_or(|value| value != "0")
}

/// Starts the VM of `config` and waits for its agent's ready call; returns the VM and how
/// long that took. A failure names the saved VM it was restored from, if it was.
async fn boot_until_ready(
    backend: &QemuBackend,
    config: VmConfig,
) -> Result<(QemuVm, Duration), (RuntimeError, Option<vessel_vm::qemu::template::Template>)> {
    let run_dir = config.run_dir.clone();
    // Until the VM owns the directory, a failure must remove it here.
    let dir_guard = DirGuard(Some(run_dir.clone()));
    let io =
        |action, path: PathBuf| move |source| (RuntimeError::Io { action, path, source }, None);
    std::fs::create_dir_all(&run_dir).map_err(io("create", run_dir.clone()))?;
    let owner = run_dir.join(OWNER_FILE);
    std::fs::write(&owner, std::process::id().to_string()).map_err(io("write", owner))?;
    let vsock = vessel_vm::qemu::host_vsock(&run_dir);
    let ready_listener = vsock
        .listen(ports::READY)
        .map_err(io("listen for the agent on", vsock.listen_path(ports::READY)))?;
    let name = config.name.clone();
    let started = Instant::now();
    let mut vm = backend.boot(config).await.map_err(|err| match err {
        vessel_vm::VmError::Restore { ref template, .. } => {
            let template = Some(template.clone());
            (err.into(), template)
        }
        err => (err.into(), None),
    })?;
    dir_guard.disarm();
    tracing::debug!(vm = %name, pid = ?vm.pid(), restored = vm.restored_from().is_some(), "VM started");
    match wait_ready(&mut vm, ready_listener).await {
        Ok(()) => Ok((vm, started.elapsed())),
        Err(err) => {
            let template = vm.restored_from().cloned();
            let _ = vm.kill().await;
            // The directory goes with the VM, so a second attempt starts clean.
            drop(vm);
            Err((err, template))
        }
    }
}

/// Removes a VM directory when dropped, until the VM takes it over.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Names the process that owns a VM directory; a directory whose owner is gone was left by
/// a process that was killed outright (SIGKILL), and its VM died with it (PR_SET_PDEATHSIG).
const OWNER_FILE: &str = "owner.pid";

/// Removes VM directories whose owning process no longer exists.
fn reap_abandoned_vm_dirs(host: &Host) {
    let Ok(entries) = std::fs::read_dir(host.run.join("vm")) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok();
        let alive = owner
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            tracing::debug!(dir = %dir.display(), "removing an abandoned VM directory");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A sandbox whose VM has ended.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub exit: VmExit,
    /// Everything the guest printed on its console.
    pub console: String,
}

/// Waits for the agent's "ready" call, or for the VM to end or the deadline to pass.
async fn wait_ready(
    vm: &mut QemuVm,
    listener: tokio::net::UnixListener,
) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let accept = accept_ready(&listener);
    tokio::pin!(accept);
    loop {
        tokio::select! {
            answered = &mut accept => {
                return answered.map_err(RuntimeError::AgentConnect);
            }
            exit = vm.wait(Duration::from_millis(50)) => {
                if let Some(exit) = exit? {
                    let mut boot_log = console_tail(&vm.boot_log());
                    let vmm = vm.vmm_messages();
                    if !vmm.trim().is_empty() {
                        boot_log.push_str("\nthe VMM said:\n");
                        boot_log.push_str(vmm.trim_end());
                    }
                    return Err(RuntimeError::VmEndedEarly { exit: exit.to_string(), boot_log });
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(RuntimeError::AgentTimeout {
                        timeout: READY_TIMEOUT,
                        boot_log: console_tail(&vm.boot_log()),
                    });
                }
            }
        }
    }
}

/// Takes the agent's "ready" call and answers it with the host's clock.
async fn accept_ready(listener: &tokio::net::UnixListener) -> std::io::Result<()> {
    let (mut stream, _) = listener.accept().await?;
    let mut line = [0u8; ready::MESSAGE.len()];
    stream.read_exact(&mut line).await?;
    if line != ready::MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected ready message {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    // The guest sets its clock from this; its RTC only had whole seconds. The agent is
    // ready either way: one too old to read this has gone already.
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    if let Err(err) = stream.write_all(ready::time_reply(now).as_bytes()).await {
        tracing::debug!(error = %err, "the agent did not take the host's time");
    }
    Ok(())
}

/// The initramfs for `init`, built once per build of vessel-init (keyed by its path, size
/// and modification time) and shared by every VM, so a start reads and writes nothing.
/// It lives in the cache, shared by every state root: the saved VMs restores start from
/// are keyed by this file, and one per root (or per host boot) would make each anew.
fn cached_initramfs(host: &Host, init: &std::path::Path) -> Result<PathBuf, RuntimeError> {
    use sha2::Digest;
    let io_err = |action, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { action, path, source }
    };
    let metadata = std::fs::metadata(init).map_err(io_err("read", init))?;
    let modified = metadata.modified().map_err(io_err("read", init))?;
    let stamp = modified.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let key = sha2::Sha256::new()
        .chain_update(init.as_os_str().as_encoded_bytes())
        .chain_update(metadata.len().to_le_bytes())
        .chain_update(stamp.as_nanos().to_le_bytes())
        .finalize();
    let key: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = host.cache.join("initramfs");
    let path = dir.join(format!("{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let binary = std::fs::read(init).map_err(io_err("read", init))?;
    let mut archive = Vec::with_capacity(binary.len() + 4096);
    vessel_vm::initramfs::write(&mut archive, &binary).map_err(io_err("build", &path))?;
    // Written under a unique name and renamed: concurrent starts never see half an archive.
    let partial = dir.join(format!(".{key}.{}.partial", std::process::id()));
    std::fs::write(&partial, archive).map_err(io_err("write", &partial))?;
    std::fs::rename(&partial, &path).map_err(io_err("write", &path))?;
    remove_old_initramfs(&dir);
    Ok(path)
}

/// Initramfs files kept: one per build of vessel-init, so old ones are never used again.
const INITRAMFS_KEPT: usize = 8;

/// Removes all but the newest `INITRAMFS_KEPT` archives in `dir`. A VM that uses a removed
/// one has read it already: QEMU loads it at start.
fn remove_old_initramfs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut archives: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "cpio"))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    archives.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, old) in archives.into_iter().skip(INITRAMFS_KEPT) {
        let _ = std::fs::remove_file(old);
    }
}

/// The last lines of a console log, for error messages.
pub fn console_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{UnixListener, UnixStream};

    fn listener() -> (tempfile::TempDir, UnixListener, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, listener, path)
    }

    #[tokio::test]
    async fn the_ready_call_is_answered_with_the_hosts_time() {
        let (_dir, listener, path) = listener();
        let guest = tokio::spawn(async move {
            let mut stream = UnixStream::connect(path).await.unwrap();
            stream.write_all(ready::MESSAGE).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        accept_ready(&listener).await.unwrap();
        let time = ready::parse_time_reply(&guest.await.unwrap()).expect("a time");
        assert!(time >= before && time < before + Duration::from_secs(5), "{time:?}");
    }

    #[tokio::test]
    async fn an_agent_that_hangs_up_after_ready_is_still_ready() {
        // vessel-init from before the clock was set this way: it says ready and goes.
        let (_dir, listener, path) = listener();
        let guest = tokio::spawn(async move {
            let mut stream = UnixStream::connect(path).await.unwrap();
            stream.write_all(ready::MESSAGE).await.unwrap();
        });
        guest.await.unwrap();
        accept_ready(&listener).await.unwrap();
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (_dir, listener, path) = listener();
        tokio::spawn(async move {
            let mut stream = UnixStream::connect(path).await.unwrap();
            stream.write_all(b"hello\n").await.unwrap();
        });
        let err = accept_ready(&listener).await.unwrap_err();
        assert!(err.to_string().contains("unexpected ready message"), "{err}");
    }
}
