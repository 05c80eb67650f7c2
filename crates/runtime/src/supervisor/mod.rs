//! The supervisor: one detached process per running container (`vessel container
//! supervise`, started by `run` and `start`). It owns the container's VM, writes its log,
//! relays the stdio of its processes and serves a control socket for the commands that
//! reach a running container (attach, exec, kill, stop, wait, stats, cp). It records the
//! container's end in its state, then exits; with no containers running, no vessel process
//! runs. The VM is its child with PR_SET_PDEATHSIG, so if the supervisor dies the VM dies
//! with it, and the next reader of the state records why (`ContainerStore::load`).

pub mod client;
mod connection;
pub mod launch;
pub mod protocol;

pub use launch::launch;

use crate::container::logfile::{LogWriter, Stream};
use crate::container::{Container, ContainerStore, ProcessRef, Status, StoreError};
use crate::network::ContainerNetwork;
use crate::process::{ProcessExit, ProcessIo, ProcessSpec};
use crate::sandbox::{Sandbox, SandboxOptions, SHUTDOWN_TIMEOUT};
use crate::{Host, RuntimeError};
use protocol::Event;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Mutex};
use vessel_proto::agent::{ContainerMount, CreateContainerRequest};
use vessel_proto::writable_disk;

/// Size of a container's writable disk: sparse, so only what is written takes space.
pub const WRITABLE_DISK_SIZE: u64 = 8 << 30;
/// Guest memory beyond the container's limit: the kernel, vessel-init and page cache.
pub const VM_MEMORY_OVERHEAD_MIB: u32 = 64;
/// How long a supervisor started for an attaching client waits for it before it starts
/// the container anyway.
const ATTACH_WAIT: Duration = Duration::from_secs(30);

/// Exit codes docker gives a process that could not start.
pub const EXIT_START_FAILED: i32 = 125;
pub const EXIT_CANNOT_INVOKE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container {0} is already running")]
    AlreadyRunning(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the container's supervisor failed to start; its log ends with:\n{log}")]
    LaunchFailed { log: String },
}

/// How the main process fared, as the clients learn it.
#[derive(Debug, Clone)]
enum MainState {
    Booting,
    Started(u32),
    Failed { code: i32, message: String },
}

/// What the supervisor's tasks share.
struct Shared {
    container: Container,
    /// The main process: booting, started or failed; then its exit.
    main: watch::Sender<MainState>,
    exit: watch::Sender<Option<ProcessExit>>,
    /// The VM with its agent, once booted.
    sandbox: Mutex<Option<Sandbox>>,
    agent: std::sync::OnceLock<crate::agent::AgentClient>,
    /// Attached clients: each gets every frame of the main process's output.
    attached: std::sync::Mutex<Vec<mpsc::Sender<Outgoing>>>,
    /// How many clients have attached (the main process may wait for the first).
    attach_count: watch::Sender<usize>,
    /// The writing end of the main process's stdin (with `-i`), until someone closes it.
    /// It exists from the start, so input that arrives while the VM boots waits in it.
    stdin: Mutex<Option<tokio::io::DuplexStream>>,
    /// Its reading end, until the main process takes it.
    main_stdin: Mutex<Option<tokio::io::DuplexStream>>,
    /// The VMM's pid once booted: the last resort when the guest stops answering.
    vm_pid: std::sync::OnceLock<u32>,
    /// Connection tasks, awaited (bounded) before the supervisor exits so that attached
    /// clients get all their output and the exit.
    connections: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The container's volumes, locked while it runs.
    volume_locks: std::sync::Mutex<Vec<std::fs::File>>,
    /// The main process's terminal size, as the last attached client asked for it.
    terminal_size: std::sync::Mutex<(u16, u16)>,
    next_exec: std::sync::atomic::AtomicU32,
    /// The DNS responder and the port proxy (holding the TAP), while the VM runs.
    network: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A frame on its way to a client.
#[derive(Debug, Clone)]
enum Outgoing {
    Data(u8, Vec<u8>),
    Event(Event),
}

impl Shared {
    fn short_id(&self) -> &str {
        self.container.short_id()
    }

    fn agent(&self) -> Option<crate::agent::AgentClient> {
        self.agent.get().cloned()
    }

    /// Sends a frame to every attached client (waiting for slow ones: output is never
    /// dropped).
    async fn broadcast(&self, frame: Outgoing) {
        let clients: Vec<_> = self.attached.lock().expect("not poisoned").clone();
        for client in clients {
            let _ = client.send(frame.clone()).await;
        }
    }

    /// Waits until the main process has started; Err with the failure otherwise.
    async fn started(&self) -> Result<u32, Event> {
        let mut main = self.main.subscribe();
        let state = main
            .wait_for(|state| !matches!(state, MainState::Booting))
            .await
            .map(|state| state.clone())
            .unwrap_or(MainState::Failed {
                code: EXIT_START_FAILED,
                message: "supervisor ending".into(),
            });
        match state {
            MainState::Started(pid) => Ok(pid),
            MainState::Failed { code, message } => Err(Event::Failed { code, message }),
            MainState::Booting => unreachable!("waited past booting"),
        }
    }

    async fn exited(&self) -> ProcessExit {
        let mut exit = self.exit.subscribe();
        let exit = exit.wait_for(Option::is_some).await.map(|exit| *exit);
        exit.ok()
            .flatten()
            .unwrap_or(ProcessExit { code: crate::container::EXIT_LOST, signal: None })
    }
}

/// Runs a container's supervisor until the container ends. `ready` is called once the
/// control socket accepts clients. With `wait_for_attach`, the main process starts only
/// once a client attached (so that it sees all output).
pub async fn run(
    host: &Host,
    id: &str,
    wait_for_attach: bool,
    ready: impl FnOnce(),
) -> Result<(), SupervisorError> {
    let store = ContainerStore::new(&host.root);
    let found = store.find(id)?;
    // Held for the supervisor's life: two `start`s of one container never both run it.
    let lock_path = found.dir.join(SUPERVISOR_LOCK);
    let lock = std::fs::File::create(&lock_path).map_err(|source| SupervisorError::Io {
        action: "create",
        path: lock_path,
        source,
    })?;
    if lock.try_lock().is_err() {
        return Err(SupervisorError::AlreadyRunning(found.config.name.clone()));
    }
    // Read again under the lock.
    let mut container = store.load(found.id())?;
    if container.is_running() {
        return Err(SupervisorError::AlreadyRunning(container.config.name.clone()));
    }
    let socket_path = host.control_socket(container.id());
    let listener = bind(&socket_path)?;
    container.state = crate::container::ContainerState {
        status: Status::Running,
        supervisor: ProcessRef::current(),
        started_at: Some(crate::time::now_nanos()),
        ..Default::default()
    };
    store.save_state(&container)?;
    let _socket_guard = RemoveOnDrop(socket_path);
    ready();

    let (stdin_writer, stdin_reader) = match container.config.open_stdin {
        true => {
            let (writer, reader) = tokio::io::duplex(64 * 1024);
            (Some(writer), Some(reader))
        }
        false => (None, None),
    };
    let shared = Arc::new(Shared {
        container: container.clone(),
        main: watch::channel(MainState::Booting).0,
        exit: watch::channel(None).0,
        sandbox: Mutex::new(None),
        agent: Default::default(),
        attached: Default::default(),
        attach_count: watch::channel(0).0,
        stdin: Mutex::new(stdin_writer),
        main_stdin: Mutex::new(stdin_reader),
        vm_pid: Default::default(),
        connections: Default::default(),
        volume_locks: Default::default(),
        terminal_size: std::sync::Mutex::new((24, 80)),
        next_exec: Default::default(),
        network: Default::default(),
    });
    let server = tokio::spawn(connection::serve(listener, shared.clone()));
    let stop_on_signal = tokio::spawn(stop_on_signal(shared.clone()));

    // A killed supervisor's staging directories (its mounts died with it).
    remove_staged_files(host, container.id());
    if wait_for_attach {
        let mut count = shared.attach_count.subscribe();
        let _ = tokio::time::timeout(ATTACH_WAIT, count.wait_for(|n| *n > 0)).await;
    }
    let (exit, error) = match run_main(host, &shared).await {
        Ok(exit) => (exit, None),
        Err(failure) => failure,
    };
    // Power off (the guest flushes its disks), then record the end. A `--rm` container's
    // disk is about to go, so its VM is simply ended (that is on `run --rm`'s critical
    // path) unless it mounts volumes or host directories, whose writes must land.
    let sandbox = match tokio::time::timeout(SANDBOX_WAIT, shared.sandbox.lock()).await {
        Ok(mut sandbox) => sandbox.take(),
        // A connection (a stalled `cp`) holds it: end the VM under it, which fails that
        // connection's work and frees the sandbox.
        Err(_) => {
            kill_vm(&shared);
            shared.sandbox.lock().await.take()
        }
    };
    let vm_exit = match sandbox {
        Some(sandbox) if container.config.auto_remove && container.config.mounts.is_empty() => {
            sandbox.kill().await.map(|s| s.exit)
        }
        Some(sandbox) => sandbox.shutdown(SHUTDOWN_TIMEOUT).await.map(|stopped| stopped.exit),
        None => Ok(vessel_vm::VmExit::GuestExit),
    };
    match vm_exit {
        Ok(vm_exit) => tracing::info!(%vm_exit, "VM stopped"),
        Err(err) => tracing::warn!(error = %err, "the VM did not stop cleanly"),
    }
    remove_staged_files(host, container.id());
    let network = shared.network.lock().expect("not poisoned").take();
    if let Some(network) = network {
        // Awaited, so its TAP and sockets are closed before the end is recorded: whoever
        // sees the container stopped can take its ports again.
        network.abort();
        let _ = network.await;
    }
    // The disks are free: the next container may take the volumes at once.
    shared.volume_locks.lock().expect("not poisoned").clear();
    container.state.status = Status::Exited;
    container.state.supervisor = None;
    container.state.finished_at = Some(crate::time::now_nanos());
    container.state.exit_code = Some(exit.code);
    container.state.error = error;
    store.save_state(&container)?;
    shared.exit.send_replace(Some(exit));
    // Attached clients of a process that never started hear `Failed` (and only that) from
    // their own connection's task.
    if matches!(*shared.main.borrow(), MainState::Started(_)) {
        let exited = Event::Exited { code: exit.code, signal: exit.signal };
        shared.broadcast(Outgoing::Event(exited)).await;
    }
    shared.attached.lock().expect("not poisoned").clear();
    stop_on_signal.abort();
    // No new clients; those connected get their last output, replies and the exit (a slow
    // reader of a long output included, within reason).
    server.abort();
    let connections = std::mem::take(&mut *shared.connections.lock().expect("not poisoned"));
    let finish = futures_join_all(connections);
    if tokio::time::timeout(CONNECTIONS_WAIT, finish).await.is_err() {
        tracing::warn!("connections still open after {CONNECTIONS_WAIT:?}; leaving them");
    }
    if container.config.auto_remove {
        store.remove_held(&container)?;
        crate::container::release_held(&host.root, &container, true);
    }
    Ok(())
}

/// Boots the VM, starts the main process and waits for its end. On failure: the exit to
/// record and the reason.
async fn run_main(
    host: &Host,
    shared: &Arc<Shared>,
) -> Result<ProcessExit, (ProcessExit, Option<String>)> {
    let fail = |code: i32, message: String| {
        shared.main.send_replace(MainState::Failed { code, message: message.clone() });
        (ProcessExit { code, signal: None }, Some(message))
    };
    let config = &shared.container.config;
    let (mut sandbox, volume_locks, network) = boot(host, &shared.container)
        .await
        .map_err(|err| fail(EXIT_START_FAILED, crate::error_chain(&err)))?;
    *shared.volume_locks.lock().expect("not poisoned") = volume_locks;
    *shared.network.lock().expect("not poisoned") = Some(network.serve(host));
    let _ = shared.agent.set(sandbox.agent().clone());
    if let Some(pid) = vessel_vm::Vm::pid(sandbox.vm()) {
        let _ = shared.vm_pid.set(pid);
    }
    tracing::info!(after = ?sandbox.started.elapsed(), "VM booted, container set up");

    let mut relays = Vec::new();
    let stdin = shared.main_stdin.lock().await.take().map(|reader| Box::new(reader) as _);
    let log = Arc::new(std::sync::Mutex::new(
        LogWriter::open(&shared.container.log_path())
            .map_err(|err| fail(EXIT_START_FAILED, format!("cannot open the log: {err}")))?,
    ));
    let mut output = |stream: Stream| {
        let (writer, reader) = tokio::io::duplex(64 * 1024);
        relays.push(tokio::spawn(log_and_broadcast(shared.clone(), log.clone(), stream, reader)));
        Some(Box::new(writer) as _)
    };
    let io = ProcessIo {
        stdin,
        stdout: output(Stream::Stdout),
        stderr: if config.tty { None } else { output(Stream::Stderr) },
    };
    let spec = ProcessSpec {
        container_id: shared.short_id().to_string(),
        process_id: MAIN_PROCESS.to_string(),
        args: config.args.clone(),
        env: config.env.clone(),
        cwd: config.workdir.clone(),
        user: config.user.clone(),
        terminal: config.tty.then(|| *shared.terminal_size.lock().expect("not poisoned")),
        init: config.init,
        ..security(config)
    };
    let process = match sandbox.start_process(spec, io).await {
        Ok(process) => process,
        Err(err) => {
            *shared.sandbox.lock().await = Some(sandbox);
            let (code, message) = start_failure(&err);
            return Err(fail(code, message));
        }
    };
    let mut agent = sandbox.agent().clone();
    *shared.sandbox.lock().await = Some(sandbox);
    shared.main.send_replace(MainState::Started(process.pid));
    tracing::info!(pid = process.pid, "main process started");

    let exit = process.wait(&mut agent).await;
    tracing::info!(?exit, "main process ended");
    for relay in relays {
        let _ = relay.await;
    }
    exit.map_err(|err| {
        (
            ProcessExit { code: crate::container::EXIT_LOST, signal: None },
            Some(format!("lost the container's main process: {}", crate::error_chain(&err))),
        )
    })
}

pub const MAIN_PROCESS: &str = "main";

/// The limits and privileges every process of the container gets (the main one and
/// each exec).
fn security(config: &crate::container::ContainerConfig) -> ProcessSpec {
    ProcessSpec {
        rlimits: config
            .ulimits
            .iter()
            .map(|(name, soft, hard)| crate::process::Rlimit {
                name: name.clone(),
                soft: *soft,
                hard: *hard,
            })
            .collect(),
        capabilities: config.capabilities.clone(),
        no_new_privileges: config.no_new_privileges,
        ..Default::default()
    }
}

/// How long the end waits for a connection that holds the VM (a `cp`) before ending the
/// VM under it.
const SANDBOX_WAIT: Duration = Duration::from_secs(10);
/// How long clients get to read what is left for them once the container has ended.
const CONNECTIONS_WAIT: Duration = Duration::from_secs(60);

/// Awaits every task (their results do not matter here).
async fn futures_join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// Ends the VM at once (SIGKILL to the VMM): for a guest that no longer answers. The main
/// process's wait then fails, and the container is recorded as lost, with the reason.
fn kill_vm(shared: &Shared) {
    if let Some(pid) = shared.vm_pid.get() {
        tracing::warn!(pid, "killing the VM");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A file in the container's directory the supervisor keeps locked while it runs.
pub(crate) const SUPERVISOR_LOCK: &str = "supervisor.lock";

/// The VM with the container's disks, and the container set up in it.
async fn boot(
    host: &Host,
    container: &Container,
) -> Result<(Sandbox, Vec<std::fs::File>, ContainerNetwork), RuntimeError> {
    let config = &container.config;
    let mut network = ContainerNetwork::open(host, config)?;
    let prepared = vessel_image::snapshot::prepare(&host.root, &config.image_id)?;
    let mut disks = vec![vessel_vm::Disk { path: prepared.snapshot, read_only: true }];
    if !config.read_only {
        let writable = container.writable_disk();
        if !writable.exists() {
            let overlay_dirs = [writable_disk::UPPER, writable_disk::WORK];
            vessel_image::create_with_dirs(
                &writable,
                WRITABLE_DISK_SIZE,
                &Default::default(),
                &overlay_dirs,
            )?;
        }
        disks.push(vessel_vm::Disk { path: writable, read_only: false });
    }
    let mut shares = Vec::new();
    let (mounts, volume_locks) = container_mounts(host, config, &mut disks, &mut shares)?;
    let mut options = SandboxOptions::new(container.short_id());
    options.cpus = (config.cpus.ceil() as u32).max(1);
    options.memory_mib = config.memory_mib.max(64).saturating_add(VM_MEMORY_OVERHEAD_MIB);
    options.disks = disks;
    options.shares = shares;
    options.accel = config.accel.parse().unwrap_or_default();
    options.echo_console = tracing::enabled!(tracing::Level::DEBUG);
    if let Some(attachment) = &config.network {
        options.nic = network.nic(attachment.mac)?;
    }
    // The host's side of the network is set up while the VM boots; if that fails (a
    // port in use), the boot is abandoned at once, which ends the VM.
    let mut sandbox = {
        let boot = Sandbox::start(host, options);
        let connect = network.connect(host, &config.publish);
        tokio::pin!(boot, connect);
        tokio::select! {
            connected = &mut connect => {
                connected?;
                boot.await?
            }
            booted = &mut boot => {
                let sandbox = booted?;
                if let Err(err) = connect.await {
                    let _ = sandbox.kill().await;
                    return Err(err.into());
                }
                sandbox
            }
        }
    };
    if let Err(err) = record_ports(host, container, network.ports()) {
        let _ = sandbox.kill().await;
        return Err(err);
    }
    let request = CreateContainerRequest {
        container_id: container.short_id().to_string(),
        image_device: "/dev/vda".into(),
        writable_device: if config.read_only { String::new() } else { "/dev/vdb".into() },
        hostname: config.hostname.clone(),
        memory_limit_bytes: u64::from(config.memory_mib.max(64)) << 20,
        cpu_millis: (config.cpus * 1000.0).round() as u32,
        mounts,
        shm_size_bytes: config.shm_size.unwrap_or(0),
        network: Some(network.agent_config()),
    };
    if let Err(err) = sandbox.agent().create_container(request).await {
        let _ = sandbox.shutdown(SHUTDOWN_TIMEOUT).await;
        return Err(err);
    }
    Ok((sandbox, volume_locks, network))
}

/// Records the published ports as bound (`port`, `ps` and `inspect` read them) while the
/// container runs.
fn record_ports(
    host: &Host,
    container: &Container,
    ports: Vec<vessel_net::ports::PortMapping>,
) -> Result<(), RuntimeError> {
    if ports.is_empty() {
        return Ok(());
    }
    let store = ContainerStore::new(&host.root);
    let mut running = store.load(container.id())?;
    running.state.ports = ports;
    Ok(store.save_state(&running)?)
}

/// The container's mounts as the agent takes them, adding each volume's disk to `disks`
/// (after the image's and the writable one: /dev/vdc, …) and each bind mount's host
/// directory to `shares`. Each volume is locked for the
/// supervisor's life: a volume is a disk, and two VMs writing one ext4 would corrupt it.
fn container_mounts(
    host: &Host,
    config: &crate::container::ContainerConfig,
    disks: &mut Vec<vessel_vm::Disk>,
    shares: &mut Vec<vessel_vm::Share>,
) -> Result<(Vec<ContainerMount>, Vec<std::fs::File>), RuntimeError> {
    use crate::container::MountSource;
    let volumes = crate::volume::VolumeStore::new(&host.root);
    let mut mounts = Vec::new();
    let mut locks = Vec::new();
    for mount in &config.mounts {
        let mut file = String::new();
        let (kind, source, options, populate) = match &mount.source {
            MountSource::Volume { name, .. } => {
                let volume =
                    volumes.get(name).map_err(|err| RuntimeError::Mount(err.to_string()))?;
                let lock_path = volume.dir.join("in-use.lock");
                let lock = std::fs::File::create(&lock_path).map_err(|source| {
                    RuntimeError::Io { action: "create", path: lock_path, source }
                })?;
                if lock.try_lock().is_err() {
                    return Err(RuntimeError::Mount(format!(
                        "volume {name} is in use by another running container (a volume is a \
                         disk: one running container at a time)"
                    )));
                }
                locks.push(lock);
                // Read-only volumes are attached writable and bound read-only into the
                // container, so the guest's ext4 can still replay its journal.
                disks.push(vessel_vm::Disk { path: volume.disk(), read_only: false });
                let device = format!("/dev/vd{}", char::from(b'a' + (disks.len() - 1) as u8));
                ("volume", device, String::new(), true)
            }
            MountSource::Bind { path, owner } => {
                // One virtio-fs share per bind mount; virtiofsd enforces read-only too. A
                // single file is shared through a directory of its own holding only it.
                let tag = format!("share{}", shares.len());
                let (host_path, name) = if path.is_dir() {
                    (path.clone(), String::new())
                } else {
                    stage_file(host, &config.id, shares.len(), path)?
                };
                shares.push(vessel_vm::Share {
                    tag: tag.clone(),
                    host_path,
                    read_only: mount.read_only,
                    owner: *owner,
                });
                file = name;
                ("bind", tag, String::new(), false)
            }
            MountSource::Tmpfs { options } => ("tmpfs", String::new(), options.clone(), false),
        };
        mounts.push(ContainerMount {
            kind: kind.to_string(),
            source,
            target: mount.target.clone(),
            read_only: mount.read_only,
            options,
            populate,
            file,
        });
    }
    Ok((mounts, locks))
}

/// Shares a single host file: bind-mounted onto an empty file in a directory of its own
/// (`<run>/files/<id>/<n>/<name>`), which virtiofsd then serves, so the file's siblings
/// stay out of the guest. The mount lives in the supervisor's private mount namespace
/// (see `vessel container supervise`), so it goes with the supervisor.
fn stage_file(
    host: &Host,
    container_id: &str,
    index: usize,
    path: &std::path::Path,
) -> Result<(PathBuf, String), RuntimeError> {
    let io = |action, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { action, path, source }
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| RuntimeError::Mount(format!("cannot share {}", path.display())))?;
    let dir = staged_files(host, container_id).join(index.to_string());
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let placeholder = dir.join(&name);
    std::fs::write(&placeholder, b"").map_err(io("create", &placeholder))?;
    nix::mount::mount(
        Some(path),
        &placeholder,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|errno| {
        RuntimeError::Mount(format!("cannot bind {} for sharing: {errno}", path.display()))
    })?;
    Ok((dir, name))
}

/// Unmounts and removes a container's staged files (what a killed supervisor left is only
/// directories and empty files: its mounts died with its namespace).
pub fn remove_staged_files(host: &Host, container_id: &str) {
    let dir = staged_files(host, container_id);
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for entry in entries.flatten() {
        for file in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            let _ = nix::mount::umount2(&file.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where a container's single shared files are staged.
pub fn staged_files(host: &Host, container_id: &str) -> PathBuf {
    host.run.join("files").join(crate::container::short_id(container_id))
}

/// docker's exit code and message for a process that could not start.
fn start_failure(err: &RuntimeError) -> (i32, String) {
    match err {
        RuntimeError::AgentCall { call: "StartProcess", status } => (
            match status.code() {
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                tonic::Code::PermissionDenied => EXIT_CANNOT_INVOKE,
                _ => EXIT_START_FAILED,
            },
            status.message().to_string(),
        ),
        other => (EXIT_START_FAILED, crate::error_chain(other)),
    }
}

/// Copies one output stream of the main process to the log and the attached clients.
async fn log_and_broadcast(
    shared: Arc<Shared>,
    log: Arc<std::sync::Mutex<LogWriter>>,
    stream: Stream,
    mut reader: tokio::io::DuplexStream,
) {
    let kind = match stream {
        Stream::Stdout => protocol::STDOUT,
        Stream::Stderr => protocol::STDERR,
    };
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if let Err(err) = log.lock().expect("not poisoned").write(stream, &buffer[..read]) {
            tracing::warn!(error = %err, "cannot write the container log");
        }
        shared.broadcast(Outgoing::Data(kind, buffer[..read].to_vec())).await;
    }
    let _ = log.lock().expect("not poisoned").flush_stream(stream);
}

/// SIGTERM or SIGINT to the supervisor stops the container as `vessel stop` would.
async fn stop_on_signal(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    let config = &shared.container.config;
    let signal = parse_signal(&config.stop_signal).unwrap_or(15);
    stop(&shared, signal, Duration::from_secs(config.stop_timeout.into())).await;
}

/// Sends `signal` to the main process, then SIGKILL if it has not ended after `timeout`.
async fn stop(shared: &Shared, signal: i32, timeout: Duration) {
    if shared.started().await.is_err() {
        return;
    }
    let Some(mut agent) = shared.agent() else { return };
    if shared.exit.borrow().is_some() {
        return;
    }
    let _ = tokio::time::timeout(KILL_WAIT, agent.signal_process(MAIN_PROCESS, signal)).await;
    if tokio::time::timeout(timeout, shared.exited()).await.is_err() {
        tracing::info!(?timeout, "the container did not stop in time; killing it");
        let kill = agent.signal_process(MAIN_PROCESS, SIGKILL);
        let _ = tokio::time::timeout(KILL_WAIT, kill).await;
        if tokio::time::timeout(KILL_WAIT, shared.exited()).await.is_err() {
            // The guest does not answer (thrashing at its memory limit, say).
            kill_vm(shared);
        }
    }
    shared.exited().await;
}

const SIGKILL: i32 = 9;
/// How long a SIGKILL may take to end the container before its VM is ended instead.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number.
pub fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(number) = text.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    NAMES.iter().position(|known| *known == name).map(|index| index as i32 + 1)
}

fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, SupervisorError> {
    let io = |action| {
        let path = path.to_path_buf();
        move |source| SupervisorError::Io { action, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
    }
    // Left by a supervisor that was killed: nobody listens on it any more.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(io("listen on"))?;
    // The socket controls the container: root only.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set the mode of"))?;
    Ok(listener)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("kill"), Some(9));
        assert_eq!(parse_signal("HUP"), Some(1));
        assert_eq!(parse_signal("SIGSYS"), Some(31));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
