//! A process's stdio: pipes or a terminal on the process side, streams to the host on the
//! agent channel on the other, and the agent relaying between them (the process never
//! sees the channel).

use crate::channel::Stream;
use crate::vsock::MAX_GUEST_WRITE;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A non-blocking pipe end or terminal master, driven by tokio.
#[derive(Debug)]
pub struct FdStream(AsyncFd<OwnedFd>);

impl FdStream {
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        // SAFETY: the AsyncFd owns the descriptor, so it stays open while it is registered.
        let registered = unsafe { AsyncFd::register(fd) };
        registered.map(FdStream).map_err(|err| io::Error::other(err.to_string()))
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A terminal whose last writer closed reads EIO: that is its end of file.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Connects to a host port for one stdio stream.
pub async fn connect_host(port: u32) -> io::Result<Stream> {
    crate::vsock::connect_host(port).await
}

/// Copies process output to the host, a packet's payload at most at a time, then closes the
/// host's stream so it sees the end.
pub async fn relay_output(mut from: FdStream, mut to: Stream) {
    let mut buffer = vec![0u8; MAX_GUEST_WRITE];
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut from, &mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    to.shutdown_write();
}

/// Copies the host's input to the process; the process sees end of file when the host
/// closes its stream.
pub async fn relay_input(mut from: Stream, mut to: FdStream) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    drop(to);
}
