//! vsock plumbing: the listener tonic serves on, and the one-shot "ready" call to the host
//! (which sets the guest's clock).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};
use vessel_proto::{ports, ready, HOST_CID};

/// One accepted host connection, in the shape tonic's server wants.
#[derive(Debug)]
pub struct HostConnection(VsockStream);

impl tonic::transport::server::Connected for HostConnection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for HostConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// The largest write the agent makes to a vsock stream at once. vessel-vsock takes any size
/// (rust-vmm's vhost-device-vsock stalled on writes over ~32 KiB: docs/vsock.md); this only
/// bounds the relay buffers.
pub const MAX_GUEST_WRITE: usize = 64 * 1024;

impl AsyncWrite for HostConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let len = buf.len().min(MAX_GUEST_WRITE);
        Pin::new(&mut self.0).poll_write(cx, &buf[..len])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub fn listen(port: u32) -> io::Result<VsockListener> {
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
}

pub async fn accept(listener: &VsockListener) -> io::Result<HostConnection> {
    let (stream, _peer) = listener.accept().await?;
    Ok(HostConnection(stream))
}

/// Serves the echo port: every connection gets its own bytes back until it closes.
pub async fn serve_echo(listener: VsockListener) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let (reader, mut writer) = tokio::io::split(HostConnection(stream));
            // The host closes the connection once it has its bytes back: an error here is
            // the normal end.
            // Large reads make large writes, so this exercises MAX_GUEST_WRITE.
            let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
            let _ = tokio::io::copy_buf(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        });
    }
}

/// Tells the host the agent serves, so the host never polls for it. The host answers on
/// the same connection (see [`set_clock_from_host`]); `Instant` is when it was asked.
pub async fn announce_ready() -> io::Result<(VsockStream, Instant)> {
    let mut stream = VsockStream::connect(VsockAddr::new(HOST_CID, ports::READY)).await?;
    let asked = Instant::now();
    stream.write_all(ready::MESSAGE).await?;
    stream.shutdown(std::net::Shutdown::Write)?;
    Ok((stream, asked))
}

/// Sets the guest's clock from the host's answer to the ready call: the RTC gave it whole
/// seconds only, so until then it runs up to a second behind the host's.
pub async fn set_clock_from_host(mut stream: VsockStream, asked: Instant) -> io::Result<()> {
    let mut reply = Vec::with_capacity(32);
    let mut limited = (&mut stream).take(64);
    tokio::time::timeout(ANSWER_TIMEOUT, limited.read_to_end(&mut reply))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the host sent no time"))??;
    if reply.is_empty() {
        return Err(io::Error::other("the host sent no time (a vessel older than this agent?)"));
    }
    let Some(host_time) = ready::parse_time_reply(&reply) else {
        let reply = String::from_utf8_lossy(&reply);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the host's answer {reply:?} is no time"),
        ));
    };
    // The host read its clock somewhere in the round trip: its middle is the best guess.
    crate::clock::set(host_time + asked.elapsed() / 2)
}

/// The host answers at once; one that does not leaves the RTC's time.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
