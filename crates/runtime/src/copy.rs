//! `vessel cp`: tar archives into and out of a container, each over one vsock connection
//! the agent opens to a port the host listens on (as process stdio does), and the host's
//! end of the copy: archiving a host path, and extracting an archive that came from a guest,
//! which is never trusted.

use crate::agent::AgentClient;
use crate::process::PortAllocator;
use crate::sandbox::Sandbox;
use crate::RuntimeError;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use vessel_archive::ExtractOptions;
use vessel_proto::agent::{CopyInRequest, CopyOutRequest};
use vessel_vm::vsock::HostVsock;
use vessel_vm::Vm;

/// Why archiving a host path or extracting at one failed. [`CopyError::kind`] tells a
/// missing path from a refused archive.
pub use vessel_archive::ArchiveError as CopyError;
pub use vessel_archive::ErrorKind as CopyErrorKind;

/// Writes a tar archive of `path` in the container, as the container sees it, to `writer`:
/// one top-level entry named after the path's last component (`dir/.`: the directory's
/// contents), symlinks kept. A missing path fails with the agent's NotFound status.
pub async fn copy_out(
    vsock: &HostVsock,
    agent: &mut AgentClient,
    ports: &mut PortAllocator,
    container_id: &str,
    path: &str,
    mut writer: impl AsyncWrite + Unpin + Send,
) -> Result<(), RuntimeError> {
    let stream = Listening::new(vsock, ports)?;
    let request = CopyOutRequest {
        container_id: container_id.to_string(),
        path: path.to_string(),
        port: stream.port,
    };
    let call = agent.copy_out(request);
    let receive = async {
        let (mut connection, _) = stream.listener.accept().await?;
        tokio::io::copy(&mut connection, &mut writer).await?;
        writer.flush().await
    };
    tokio::pin!(call, receive);
    // A call that fails may never have connected: its error is the one to report. One that
    // succeeds has sent everything: the rest is only to be read.
    let mut received = None;
    loop {
        tokio::select! {
            result = &mut call => {
                result?;
                let received = match received {
                    Some(received) => received,
                    None => receive.await,
                };
                return received.map_err(|source| stream.error(source));
            }
            result = &mut receive, if received.is_none() => received = Some(result),
        }
    }
}

/// Unpacks the tar archive read from `reader` at `path` in the container, with docker cp's
/// rules: an existing directory receives it; a missing path whose parent is a directory
/// becomes its single top-level entry; an existing file is replaced by a single file.
/// Otherwise the agent's NotFound or InvalidArgument status says why not.
pub async fn copy_in(
    vsock: &HostVsock,
    agent: &mut AgentClient,
    ports: &mut PortAllocator,
    container_id: &str,
    path: &str,
    mut reader: impl AsyncRead + Unpin + Send + 'static,
) -> Result<(), RuntimeError> {
    let stream = Listening::new(vsock, ports)?;
    let request = CopyInRequest {
        container_id: container_id.to_string(),
        path: path.to_string(),
        port: stream.port,
    };
    let call = agent.copy_in(request);
    let send = async {
        let (mut connection, _) = stream.listener.accept().await?;
        tokio::io::copy(&mut reader, &mut connection).await?;
        // Closing our end is the archive's end for the agent.
        connection.shutdown().await
    };
    tokio::pin!(call, send);
    // The agent replies once it has unpacked everything, or as soon as it fails (it then
    // stops reading, and our sending fails too): its answer comes first.
    let mut sent = None;
    loop {
        tokio::select! {
            result = &mut call => {
                result?;
                return match sent {
                    Some(Err(source)) => Err(stream.error(source)),
                    _ => Ok(()),
                };
            }
            result = &mut send, if sent.is_none() => sent = Some(result),
        }
    }
}

impl Sandbox {
    /// [`copy_out`] from one of this sandbox's containers.
    pub async fn copy_out(
        &mut self,
        container_id: &str,
        path: &str,
        writer: impl AsyncWrite + Unpin + Send,
    ) -> Result<(), RuntimeError> {
        let vsock = self.vm.vsock();
        copy_out(vsock, &mut self.agent, &mut self.ports, container_id, path, writer).await
    }

    /// [`copy_in`] to one of this sandbox's containers.
    pub async fn copy_in(
        &mut self,
        container_id: &str,
        path: &str,
        reader: impl AsyncRead + Unpin + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let vsock = self.vm.vsock();
        copy_in(vsock, &mut self.agent, &mut self.ports, container_id, path, reader).await
    }
}

/// Writes a tar archive of the host path `path` (not followed if it is a symlink): one
/// top-level entry named after its last component, symlinks kept as symlinks, modes, owners
/// and times as they are. What [`copy_in`] takes.
pub fn archive_host_path(path: &Path, writer: impl std::io::Write) -> Result<(), CopyError> {
    vessel_archive::write_path(path, writer)
}

/// Extracts an archive from a container (what [`copy_out`] gives) at the host path `dest`,
/// with the same rules as [`copy_in`]. The archive is treated as hostile: nothing is
/// written outside `dest` (absolute names, `..`, entries through symlinks and hard links
/// to files outside are refused), device nodes are refused, setuid and setgid bits are
/// dropped, and entries belong to the caller rather than to the guest's owners.
pub fn extract_to_host(reader: impl std::io::Read, dest: &Path) -> Result<(), CopyError> {
    let options = ExtractOptions { preserve_owner: false, keep_setid: false };
    vessel_archive::extract(reader, dest, &options)
}

/// A host port the agent connects to for one archive; its socket goes when this does.
struct Listening {
    port: u32,
    listener: UnixListener,
    path: std::path::PathBuf,
}

impl Listening {
    fn new(vsock: &HostVsock, ports: &mut PortAllocator) -> Result<Listening, RuntimeError> {
        let port = ports.take();
        let path = vsock.listen_path(port);
        let listener = vsock.listen(port).map_err(|source| RuntimeError::Io {
            action: "listen for the archive on",
            path: path.clone(),
            source,
        })?;
        Ok(Listening { port, listener, path })
    }

    fn error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io { action: "stream the archive through", path: self.path.clone(), source }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
