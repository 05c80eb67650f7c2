//! Processes in a sandbox's containers, seen from the host: the stdio streams (one vsock
//! connection each, opened by the agent to ports the host listens on), start, wait, signal.

use crate::agent::AgentClient;
use crate::RuntimeError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use vessel_proto::agent::{Capabilities, StartProcessRequest};
use vessel_vm::vsock::HostVsock;

/// What to run, as the container sees it.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub container_id: String,
    pub process_id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    /// Give the process a terminal of this size (rows, columns) instead of pipes.
    pub terminal: Option<(u16, u16)>,
    /// docker's `--init`: a minimal init (vessel-init) runs the command as its child,
    /// forwards signals to it and reaps zombies. Default: off.
    pub init: bool,
    /// docker's `--security-opt no-new-privileges`. Default: off.
    pub no_new_privileges: bool,
    /// docker's `--ulimit`. Default: none (the guest's own limits).
    pub rlimits: Vec<Rlimit>,
    /// The capabilities the process keeps, by name (`CAP_CHOWN` or `chown`; `ALL`). None,
    /// the default, is docker's default set; `Some(vec![])` keeps none (`--cap-drop ALL`).
    /// Users other than root keep only the bounding set, as with docker.
    pub capabilities: Option<Vec<String>>,
}

/// One resource limit (`--ulimit nofile=1024:2048`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// `nofile` or `RLIMIT_NOFILE` (any case).
    pub name: String,
    /// `u64::MAX` is unlimited.
    pub soft: u64,
    pub hard: u64,
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Where the process's stdio goes on the host. `None`: /dev/null in the guest.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<Reader>,
    pub stdout: Option<Writer>,
    /// Unused with a terminal: its output all comes on stdout.
    pub stderr: Option<Writer>,
}

impl std::fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit code, or 128 + signal when killed by one.
    pub code: i32,
    pub signal: Option<i32>,
}

/// A started process. Its output keeps flowing until it ends; `wait` returns after both.
#[derive(Debug)]
pub struct ProcessHandle {
    pub process_id: String,
    pub pid: u32,
    outputs: Vec<JoinHandle<std::io::Result<()>>>,
}

async fn accept(listener: &Option<UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    let listener = listener.as_ref().expect("listening for this stream");
    listener.accept().await.map(|(stream, _)| stream)
}

/// Host vsock ports for one process's stdio, from a range no agent port uses.
#[derive(Debug)]
pub struct PortAllocator {
    next: u32,
}

impl Default for PortAllocator {
    fn default() -> Self {
        PortAllocator { next: 0x0001_0000 }
    }
}

impl PortAllocator {
    pub(crate) fn take(&mut self) -> u32 {
        let port = self.next;
        self.next = self.next.wrapping_add(1).max(0x0001_0000);
        port
    }
}

pub async fn start(
    vsock: &HostVsock,
    agent: &mut AgentClient,
    ports: &mut PortAllocator,
    spec: ProcessSpec,
    io: ProcessIo,
) -> Result<ProcessHandle, RuntimeError> {
    let stderr = if spec.terminal.is_some() { None } else { io.stderr };
    let listen = |wanted: bool,
                  ports: &mut PortAllocator|
     -> Result<(u32, Option<UnixListener>), RuntimeError> {
        if !wanted {
            return Ok((0, None));
        }
        let port = ports.take();
        let listener = vsock.listen(port).map_err(|source| RuntimeError::Io {
            action: "listen for process stdio on",
            path: vsock.listen_path(port),
            source,
        })?;
        Ok((port, Some(listener)))
    };
    let (stdin_port, stdin_listener) = listen(io.stdin.is_some(), ports)?;
    let (stdout_port, stdout_listener) = listen(io.stdout.is_some(), ports)?;
    let (stderr_port, stderr_listener) = listen(stderr.is_some(), ports)?;
    let listeners = [&stdin_listener, &stdout_listener, &stderr_listener];
    let cleanup = || {
        for port in [stdin_port, stdout_port, stderr_port].into_iter().filter(|p| *p != 0) {
            let _ = std::fs::remove_file(vsock.listen_path(port));
        }
    };

    let request = StartProcessRequest {
        container_id: spec.container_id,
        process_id: spec.process_id.clone(),
        args: spec.args,
        env: spec.env,
        cwd: spec.cwd,
        user: spec.user,
        terminal: spec.terminal.is_some(),
        rows: spec.terminal.map_or(0, |(rows, _)| rows.into()),
        columns: spec.terminal.map_or(0, |(_, columns)| columns.into()),
        stdin_port,
        stdout_port,
        stderr_port,
        init: spec.init,
        no_new_privileges: spec.no_new_privileges,
        rlimits: spec
            .rlimits
            .into_iter()
            .map(|limit| vessel_proto::agent::Rlimit {
                r#type: limit.name,
                soft: limit.soft,
                hard: limit.hard,
            })
            .collect(),
        capabilities: spec.capabilities.map(|names| Capabilities { names }),
    };
    // The agent connects every stdio stream before it starts the process; the connections
    // wait in the listeners' backlogs until accepted below.
    let started = agent.start_process(request).await;
    let pid = match started {
        Ok(pid) => pid,
        Err(err) => {
            cleanup();
            return Err(err);
        }
    };
    let mut outputs = Vec::new();
    let result = async {
        if let Some(mut stdin) = io.stdin {
            let mut stream = accept(listeners[0]).await?;
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut stdin, &mut stream).await;
                // Closing our end tells the process its input ended.
            });
        }
        for (writer, listener) in [(io.stdout, listeners[1]), (stderr, listeners[2])] {
            if let Some(mut writer) = writer {
                let mut stream = accept(listener).await?;
                outputs.push(tokio::spawn(async move {
                    tokio::io::copy(&mut stream, &mut writer).await?;
                    tokio::io::AsyncWriteExt::flush(&mut writer).await
                }));
            }
        }
        Ok::<_, std::io::Error>(())
    }
    .await;
    cleanup();
    result.map_err(RuntimeError::AgentConnect)?;
    Ok(ProcessHandle { process_id: spec.process_id, pid, outputs })
}

impl ProcessHandle {
    /// Waits until the process has ended and all its output has arrived.
    pub async fn wait(self, agent: &mut AgentClient) -> Result<ProcessExit, RuntimeError> {
        let exit = agent.wait_process(&self.process_id).await?;
        for output in self.outputs {
            match output.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(RuntimeError::AgentConnect(err)),
                Err(join) => {
                    return Err(RuntimeError::AgentConnect(std::io::Error::other(join.to_string())))
                }
            }
        }
        Ok(exit)
    }
}
