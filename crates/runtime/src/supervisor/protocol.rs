//! The supervisor's control protocol, on a Unix socket per container: one request per
//! connection, then frames both ways.
//!
//! A frame is a kind byte, a big-endian u32 length and that many bytes. JSON frames carry
//! requests, events and control messages (`Resize`); data frames carry a process's stdio
//! or a `cp` archive, and an empty data frame ends its stream.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame kinds.
pub const JSON: u8 = 1;
pub const STDIN: u8 = 2;
pub const STDOUT: u8 = 3;
pub const STDERR: u8 = 4;

/// The largest frame either side accepts: stdio travels in chunks far below it.
pub const MAX_FRAME: usize = 1 << 20;

/// What a client asks for, in the first frame of its connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Receive the main process's output (and feed its stdin) until it ends.
    Attach { stdin: bool },
    /// Reply once the main process has started (or failed to).
    Started,
    /// Run another process in the container.
    Exec(ExecRequest),
    /// Send a signal to the main process.
    Signal { signal: i32 },
    /// The stop signal, then SIGKILL after `timeout_secs`; replies once the container ended.
    Stop { signal: i32, timeout_secs: u32 },
    /// Reply with the main process's exit once it ends.
    Wait,
    /// Resource usage of the container.
    Stats,
    /// A tar archive of a path in the container, sent as STDOUT frames.
    CopyOut { path: String },
    /// A tar archive (STDIN frames) unpacked at a path in the container.
    CopyIn { path: String },
}

/// A process to run in a running container (`exec`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// Added to the container's environment.
    pub env: Vec<String>,
    /// Default: the container's.
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// A terminal of this size (rows, columns) instead of pipes.
    pub terminal: Option<(u16, u16)>,
    pub stdin: bool,
    /// Start it and reply at once; its output is discarded.
    pub detach: bool,
}

/// Control messages a client sends after its request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum ClientMessage {
    Resize { rows: u16, columns: u16 },
}

/// What the supervisor says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        pid: u32,
    },
    /// The process could not start; `code` is docker's (125, 126 cannot invoke, 127 not
    /// found).
    Failed {
        code: i32,
        message: String,
    },
    Exited {
        code: i32,
        signal: Option<i32>,
    },
    Stats(Stats),
    Done,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub cpu_usage_usec: u64,
    pub memory_usage_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("control connection failed")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("malformed control message")]
    Json(#[from] serde_json::Error),
    #[error("unexpected frame kind {0}")]
    UnexpectedKind(u8),
}

pub async fn write_frame(
    writer: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    payload: &[u8],
) -> Result<(), ProtocolError> {
    if payload.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    let mut header = [0u8; 5];
    header[0] = kind;
    header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    writer.write_all(&header).await?;
    writer.write_all(payload).await?;
    writer.flush().await?;
    Ok(())
}

pub async fn write_json<T: Serialize>(
    writer: &mut (impl AsyncWrite + Unpin),
    value: &T,
) -> Result<(), ProtocolError> {
    write_frame(writer, JSON, &serde_json::to_vec(value)?).await
}

/// The next frame, or None at a clean end of the connection.
pub async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<Option<(u8, Vec<u8>)>, ProtocolError> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some((header[0], payload)))
}

/// Reads a JSON frame of type `T`.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>, ProtocolError> {
    match read_frame(reader).await? {
        None => Ok(None),
        Some((JSON, payload)) => Ok(Some(serde_json::from_slice(&payload)?)),
        Some((kind, _)) => Err(ProtocolError::UnexpectedKind(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_json(&mut a, &Request::Stop { signal: 15, timeout_secs: 10 }).await.unwrap();
        write_frame(&mut a, STDIN, b"abc").await.unwrap();
        drop(a);
        let request: Request = read_json(&mut b).await.unwrap().unwrap();
        assert_eq!(request, Request::Stop { signal: 15, timeout_secs: 10 });
        assert_eq!(read_frame(&mut b).await.unwrap(), Some((STDIN, b"abc".to_vec())));
        assert_eq!(read_frame(&mut b).await.unwrap(), None);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[STDIN, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(ProtocolError::TooLarge(_))));
    }
}
