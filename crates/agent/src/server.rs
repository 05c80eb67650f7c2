//! The agent's gRPC service.

use crate::container::Containers;
use crate::process::Processes;
use crate::{log, vsock};
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use vessel_proto::agent::agent_server::{Agent, AgentServer};
use vessel_proto::agent::{
    CopyInRequest, CopyInResponse, CopyOutRequest, CopyOutResponse, CreateContainerRequest,
    CreateContainerResponse, InfoRequest, InfoResponse, MountRequest, MountResponse,
    ReadDirRequest, ReadDirResponse, ResizeTerminalRequest, ResizeTerminalResponse,
    ShutdownRequest, ShutdownResponse, SignalProcessRequest, SignalProcessResponse,
    StartProcessRequest, StartProcessResponse, StatsRequest, StatsResponse, WaitProcessRequest,
    WaitProcessResponse,
};
use vessel_proto::ports;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on vsock port {port}")]
    Listen {
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the agent channel to the host")]
    Channel(#[source] std::io::Error),
    #[error("cannot tell the host the agent is ready")]
    Ready(#[source] std::io::Error),
    #[error("cannot set the clock from the host's")]
    Clock(#[source] std::io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[from] std::io::Error),
    #[error("gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
}

#[derive(Debug)]
struct AgentService {
    ready_uptime_ms: u64,
    shutdown: watch::Sender<bool>,
    /// One lock for both: starting a process reads and updates its container.
    state: tokio::sync::Mutex<(Containers, Processes)>,
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let uname = nix::sys::utsname::uname().map_err(internal)?;
        let sysinfo = nix::sys::sysinfo::sysinfo().map_err(internal)?;
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .map_err(internal)?
            .unwrap_or(1);
        Ok(Response::new(InfoResponse {
            kernel_release: uname.release().to_string_lossy().into_owned(),
            kernel_version: uname.version().to_string_lossy().into_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: uptime().as_secs_f64(),
            memory_total_bytes: sysinfo.ram_total(),
            memory_available_bytes: available_memory().unwrap_or(sysinfo.ram_unused()),
            cpus_online: u32::try_from(cpus).unwrap_or(1),
            agent_ready_uptime_ms: self.ready_uptime_ms,
            filesystems: filesystems(),
            cgroup_controllers: words("/sys/fs/cgroup/cgroup.controllers"),
            namespaces: namespaces(),
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        log::info(format_args!("shutdown requested by the host"));
        let _ = self.shutdown.send(true);
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        crate::fs::mount_request(request.get_ref())?;
        Ok(Response::new(MountResponse {}))
    }

    async fn read_dir(
        &self,
        request: Request<ReadDirRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let entries = crate::fs::read_dir(&request.get_ref().path)?;
        Ok(Response::new(ReadDirResponse { entries }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.state.lock().await.0.create(request.get_ref())?;
        Ok(Response::new(CreateContainerResponse {}))
    }

    async fn start_process(
        &self,
        request: Request<StartProcessRequest>,
    ) -> Result<Response<StartProcessResponse>, Status> {
        let mut state = self.state.lock().await;
        let (containers, processes) = &mut *state;
        let pid = processes.start(containers, request.into_inner()).await?;
        Ok(Response::new(StartProcessResponse { pid }))
    }

    async fn wait_process(
        &self,
        request: Request<WaitProcessRequest>,
    ) -> Result<Response<WaitProcessResponse>, Status> {
        let mut exit = self.state.lock().await.1.exit_watch(&request.get_ref().process_id)?;
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::internal("the process's exit was lost"))?
            .expect("wait_for returns a Some");
        Ok(Response::new(crate::process::wait_response(exit)))
    }

    async fn signal_process(
        &self,
        request: Request<SignalProcessRequest>,
    ) -> Result<Response<SignalProcessResponse>, Status> {
        let request = request.get_ref();
        self.state.lock().await.1.signal(&request.process_id, request.signal)?;
        Ok(Response::new(SignalProcessResponse {}))
    }

    async fn resize_terminal(
        &self,
        request: Request<ResizeTerminalRequest>,
    ) -> Result<Response<ResizeTerminalResponse>, Status> {
        let request = request.get_ref();
        self.state.lock().await.1.resize(&request.process_id, request.rows, request.columns)?;
        Ok(Response::new(ResizeTerminalResponse {}))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let cgroup = self.state.lock().await.0.get(&request.get_ref().container_id)?.cgroup.clone();
        Ok(Response::new(crate::stats::read(&cgroup)?))
    }

    async fn copy_out(
        &self,
        request: Request<CopyOutRequest>,
    ) -> Result<Response<CopyOutResponse>, Status> {
        let request = request.into_inner();
        // The lock is held only to find the container's root, not for the whole copy.
        let root = {
            let state = self.state.lock().await;
            crate::copy::Root::of(&state.0, &state.1, &request.container_id, false)?
        };
        crate::copy::copy_out(root, &request.path, request.port).await?;
        Ok(Response::new(CopyOutResponse {}))
    }

    async fn copy_in(
        &self,
        request: Request<CopyInRequest>,
    ) -> Result<Response<CopyInResponse>, Status> {
        let request = request.into_inner();
        let root = {
            let state = self.state.lock().await;
            crate::copy::Root::of(&state.0, &state.1, &request.container_id, true)?
        };
        crate::copy::copy_in(root, &request.path, request.port).await?;
        Ok(Response::new(CopyInResponse {}))
    }
}

/// Serves until the host asks for a shutdown; returns once the reply had time to leave.
pub async fn run() -> Result<(), ServeError> {
    vsock::open().await.map_err(ServeError::Channel)?;
    let listener = vsock::listen(ports::AGENT)
        .map_err(|source| ServeError::Listen { port: ports::AGENT, source })?;
    let echo = vsock::listen(ports::ECHO)
        .map_err(|source| ServeError::Listen { port: ports::ECHO, source })?;
    tokio::spawn(vsock::serve_echo(echo));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready_uptime_ms = u64::try_from(uptime().as_millis()).unwrap_or(u64::MAX);
    let service = AgentService {
        ready_uptime_ms,
        shutdown: shutdown_tx,
        state: tokio::sync::Mutex::new(Default::default()),
    };

    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let connection = vsock::accept(&listener).await;
        Some((connection, listener))
    });
    let server = tonic::transport::Server::builder()
        .add_service(AgentServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown_requested(shutdown_rx.clone()));
    // Ready is announced and the clock set before any request is served (the listener holds
    // the host's connection meanwhile), so no container process starts on the RTC's time.
    // Without the host's time a restored VM would keep the time it was saved at, maybe
    // days old: no container runs on that.
    let (stream, asked) = vsock::announce_ready().await.map_err(ServeError::Ready)?;
    vsock::set_clock_from_host(stream, asked).await.map_err(ServeError::Clock)?;
    log::info(format_args!("serving on vsock port {} at {ready_uptime_ms} ms", ports::AGENT));

    // A graceful shutdown waits for every connection to close, and the host may keep its
    // own open: in-flight replies get a short, bounded time instead.
    tokio::select! {
        result = server => result?,
        () = async {
            shutdown_requested(shutdown_rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
    Ok(())
}

/// Enough for the reply to leave on an idle connection; a host that misses it sees the VM
/// end anyway. Every millisecond here is on the critical path of `vessel run --rm`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(10);

async fn shutdown_requested(mut requested: watch::Receiver<bool>) {
    let _ = requested.wait_for(|requested| *requested).await;
}

pub fn uptime() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// `MemAvailable` from /proc/meminfo: what a new process can get without swapping.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The filesystem types in /proc/filesystems (`nodev\ttmpfs` or `\text4`).
fn filesystems() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    text.lines().filter_map(|line| line.split_whitespace().last()).map(String::from).collect()
}

fn words(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace().map(String::from).collect()
}

fn namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/ns") else { return Vec::new() };
    let mut names: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn internal(err: impl std::fmt::Display) -> Status {
    Status::internal(err.to_string())
}
