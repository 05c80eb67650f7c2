//! The host side of guest vsock in the hybrid model (Firecracker's, served by vessel-vsock):
//! a Unix socket stands for the guest. The host connects to it and writes `CONNECT <port>\n`
//! to reach a guest port; a guest connecting to host port P reaches `<socket>_P`.

use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Clone)]
pub struct HostVsock {
    socket: PathBuf,
}

impl HostVsock {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        HostVsock { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a stream to `port` in the guest.
    pub async fn connect(&self, port: u32) -> io::Result<UnixStream> {
        let mut stream = UnixStream::connect(&self.socket).await?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
        // Read the reply a byte at a time: whatever follows the line is the guest's.
        let mut reply = Vec::with_capacity(16);
        loop {
            let byte = stream.read_u8().await.map_err(|err| {
                if err.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("nothing listens on guest vsock port {port}"),
                    )
                } else {
                    err
                }
            })?;
            if byte == b'\n' {
                break;
            }
            if reply.len() > 64 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "vsock reply too long"));
            }
            reply.push(byte);
        }
        if !reply.starts_with(b"OK ") {
            let reply = String::from_utf8_lossy(&reply);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("guest vsock port {port} refused: {reply}"),
            ));
        }
        Ok(stream)
    }

    /// Listens for guest connections to host `port`.
    pub fn listen(&self, port: u32) -> io::Result<UnixListener> {
        let path = self.listen_path(port);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        UnixListener::bind(path)
    }

    pub fn listen_path(&self, port: u32) -> PathBuf {
        let mut path = self.socket.clone().into_os_string();
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }
}
