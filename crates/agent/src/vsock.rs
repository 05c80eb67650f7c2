//! The agent's streams to the host: the listener tonic serves on, connections out for
//! stdio and copies, and the one-shot "ready" call (which sets the guest's clock). They
//! travel on the agent channel (see [`crate::channel`]), opened once per boot.

use crate::channel::{Channel, Listener, Stream};
use std::io;
use std::sync::OnceLock;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vessel_proto::{ports, ready};

static CHANNEL: OnceLock<Channel> = OnceLock::new();

/// Opens the agent channel; waits for the host's hello.
pub async fn open() -> io::Result<()> {
    let channel = Channel::open().await?;
    CHANNEL.set(channel).map_err(|_| io::Error::other("the agent channel is open already"))
}

fn channel() -> io::Result<&'static Channel> {
    CHANNEL.get().ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no agent channel"))
}

/// Connects to a host port.
pub async fn connect_host(port: u32) -> io::Result<Stream> {
    channel()?.connect(port).await
}

/// Accepted host connections are what tonic's server serves.
impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// The most a stream takes in one write: one packet's payload. It sizes the relay buffers.
pub const MAX_GUEST_WRITE: usize = vessel_proto::vsock_packet::MAX_PAYLOAD as usize;

pub fn listen(port: u32) -> io::Result<Listener> {
    channel()?.listen(port)
}

pub async fn accept(listener: &Listener) -> io::Result<Stream> {
    listener.accept().await
}

/// Serves the echo port: every connection gets its own bytes back until it closes.
pub async fn serve_echo(listener: Listener) {
    loop {
        let Ok(stream) = listener.accept().await else { return };
        tokio::spawn(async move {
            let (reader, mut writer) = tokio::io::split(stream);
            // The host closes the connection once it has its bytes back: an error here is
            // the normal end.
            // Large reads make large writes, which the stream cuts into packets.
            let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, reader);
            let _ = tokio::io::copy_buf(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        });
    }
}

/// Tells the host the agent serves, so the host never polls for it. The host answers on
/// the same connection (see [`set_clock_from_host`]); `Instant` is when it was asked.
pub async fn announce_ready() -> io::Result<(Stream, Instant)> {
    let mut stream = connect_host(ports::READY).await?;
    let asked = Instant::now();
    stream.write_all(ready::MESSAGE).await?;
    stream.shutdown_write();
    Ok((stream, asked))
}

/// Sets the guest's clock from the host's answer to the ready call: the RTC gave it whole
/// seconds only, so until then it runs up to a second behind the host's.
pub async fn set_clock_from_host(mut stream: Stream, asked: Instant) -> io::Result<()> {
    let mut reply = Vec::with_capacity(32);
    let mut limited = (&mut stream).take(64);
    tokio::time::timeout(ANSWER_TIMEOUT, limited.read_to_end(&mut reply))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the host sent no time"))??;
    if reply.is_empty() {
        return Err(io::Error::other("the host closed the ready call without sending its time"));
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
