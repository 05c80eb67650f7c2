//! The host's client for the guest agent (vessel-init), over the VM's vsock.

use crate::process::ProcessExit;
use crate::RuntimeError;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use vessel_proto::agent::agent_client::AgentClient as GrpcClient;
use vessel_proto::agent::{
    CopyInRequest, CopyOutRequest, CreateContainerRequest, DirEntry, InfoRequest, InfoResponse,
    MountRequest, ReadDirRequest, ResizeTerminalRequest, ShutdownRequest, SignalProcessRequest,
    StartProcessRequest, StatsRequest, StatsResponse, WaitProcessRequest,
};
use vessel_proto::ports;
use vessel_vm::vsock::HostVsock;

/// A connected agent. Cheap to clone: clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct AgentClient {
    grpc: GrpcClient<Channel>,
}

impl AgentClient {
    /// Connects to the agent's gRPC port through the VM's vsock.
    pub async fn connect(vsock: &HostVsock) -> Result<AgentClient, RuntimeError> {
        let stream = vsock.connect(ports::AGENT).await.map_err(RuntimeError::AgentConnect)?;
        // The URI is never dialled: the connector hands over the stream we already have.
        let mut stream = Some(stream);
        let channel = Endpoint::from_static("http://vessel-agent")
            .connect_with_connector(tower::service_fn(move |_uri| {
                let stream = stream.take();
                async move {
                    stream.map(TokioIo::new).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "the agent connection was lost",
                        )
                    })
                }
            }))
            .await?;
        Ok(AgentClient { grpc: GrpcClient::new(channel) })
    }

    pub async fn info(&mut self) -> Result<InfoResponse, RuntimeError> {
        let response = self
            .grpc
            .info(InfoRequest {})
            .await
            .map_err(|status| RuntimeError::AgentCall { call: "Info", status: Box::new(status) })?;
        Ok(response.into_inner())
    }

    /// Mounts `request.source` on `request.target` in the guest.
    pub async fn mount(&mut self, request: MountRequest) -> Result<(), RuntimeError> {
        self.grpc.mount(request).await.map_err(|status| RuntimeError::AgentCall {
            call: "Mount",
            status: Box::new(status),
        })?;
        Ok(())
    }

    /// Lists a guest directory (symlinks not followed), sorted by name.
    pub async fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, RuntimeError> {
        let response =
            self.grpc.read_dir(ReadDirRequest { path: path.to_string() }).await.map_err(
                |status| RuntimeError::AgentCall { call: "ReadDir", status: Box::new(status) },
            )?;
        Ok(response.into_inner().entries)
    }

    pub async fn create_container(
        &mut self,
        request: CreateContainerRequest,
    ) -> Result<(), RuntimeError> {
        self.grpc.create_container(request).await.map_err(call_error("CreateContainer"))?;
        Ok(())
    }

    /// Starts a process; see [`crate::process::start`] for the stdio side.
    pub async fn start_process(
        &mut self,
        request: StartProcessRequest,
    ) -> Result<u32, RuntimeError> {
        let response =
            self.grpc.start_process(request).await.map_err(call_error("StartProcess"))?;
        Ok(response.into_inner().pid)
    }

    pub async fn wait_process(&mut self, process_id: &str) -> Result<ProcessExit, RuntimeError> {
        let request = WaitProcessRequest { process_id: process_id.to_string() };
        let exit = self.grpc.wait_process(request).await.map_err(call_error("WaitProcess"))?;
        let exit = exit.into_inner();
        Ok(ProcessExit { code: exit.exit_code, signal: (exit.signal != 0).then_some(exit.signal) })
    }

    pub async fn signal_process(
        &mut self,
        process_id: &str,
        signal: i32,
    ) -> Result<(), RuntimeError> {
        let request = SignalProcessRequest { process_id: process_id.to_string(), signal };
        self.grpc.signal_process(request).await.map_err(call_error("SignalProcess"))?;
        Ok(())
    }

    pub async fn resize_terminal(
        &mut self,
        process_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), RuntimeError> {
        let request = ResizeTerminalRequest { process_id: process_id.to_string(), rows, columns };
        self.grpc.resize_terminal(request).await.map_err(call_error("ResizeTerminal"))?;
        Ok(())
    }

    /// Resource use of a container, from its cgroup.
    pub async fn stats(&mut self, container_id: &str) -> Result<StatsResponse, RuntimeError> {
        let request = StatsRequest { container_id: container_id.to_string() };
        let response = self.grpc.stats(request).await.map_err(call_error("Stats"))?;
        Ok(response.into_inner())
    }

    /// Has the agent write an archive of a container path to host vsock `port`; see
    /// [`crate::copy::copy_out`], which listens there.
    pub async fn copy_out(&mut self, request: CopyOutRequest) -> Result<(), RuntimeError> {
        self.grpc.copy_out(request).await.map_err(call_error("CopyOut"))?;
        Ok(())
    }

    /// Has the agent unpack the archive it reads from host vsock `port`; see
    /// [`crate::copy::copy_in`], which serves it there.
    pub async fn copy_in(&mut self, request: CopyInRequest) -> Result<(), RuntimeError> {
        self.grpc.copy_in(request).await.map_err(call_error("CopyIn"))?;
        Ok(())
    }

    /// Asks the guest to sync and power off. The VM ends shortly after the reply.
    pub async fn shutdown(&mut self) -> Result<(), RuntimeError> {
        self.grpc.shutdown(ShutdownRequest { force: false }).await.map_err(|status| {
            RuntimeError::AgentCall { call: "Shutdown", status: Box::new(status) }
        })?;
        Ok(())
    }
}

fn call_error(call: &'static str) -> impl Fn(tonic::Status) -> RuntimeError {
    move |status| RuntimeError::AgentCall { call, status: Box::new(status) }
}
