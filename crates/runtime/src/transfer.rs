//! Bulk transfer through the guest's echo port: proof that large streams cross vsock intact
//! in both directions at once, and how fast.

use crate::RuntimeError;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vessel_proto::ports;
use vessel_vm::vsock::HostVsock;

const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct TransferReport {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl TransferReport {
    /// Bytes per second in each direction (both run at once).
    pub fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `bytes` of a deterministic pattern to the echo port while reading them back, and
/// checks every byte.
pub async fn echo(vsock: &HostVsock, bytes: u64) -> Result<TransferReport, RuntimeError> {
    let stream = vsock.connect(ports::ECHO).await.map_err(RuntimeError::AgentConnect)?;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let send = async move {
        let mut pattern = Pattern::default();
        let mut buffer = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let len = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            pattern.fill(&mut buffer[..len]);
            writer.write_all(&buffer[..len]).await?;
            left -= len as u64;
        }
        // Keep the write half open: closing it may end the whole vsock connection before
        // the echo is back.
        Ok::<_, std::io::Error>(writer)
    };
    let receive = async move {
        let mut pattern = Pattern::default();
        let mut buffer = vec![0u8; CHUNK];
        let mut expected = vec![0u8; CHUNK];
        let mut received = 0u64;
        while received < bytes {
            let want = usize::try_from((bytes - received).min(CHUNK as u64)).unwrap_or(CHUNK);
            let got = reader.read(&mut buffer[..want]).await?;
            if got == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("echo ended after {received} of {bytes} bytes"),
                ));
            }
            pattern.fill(&mut expected[..got]);
            if buffer[..got] != expected[..got] {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("echo corrupted data near byte {received}"),
                ));
            }
            received += got as u64;
        }
        Ok(())
    };
    // A stalled stream must fail the check, not hang it: allow 1 MB/s at the very least.
    let limit = Duration::from_secs(10 + bytes / 1_000_000);
    let Ok((sent, received)) =
        tokio::time::timeout(limit, async { tokio::join!(send, receive) }).await
    else {
        return Err(RuntimeError::AgentConnect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the echo of {bytes} bytes stalled (no end after {limit:?})"),
        )));
    };
    received.map_err(RuntimeError::AgentConnect)?;
    drop(sent.map_err(RuntimeError::AgentConnect)?);
    Ok(TransferReport { bytes, elapsed: started.elapsed() })
}

/// xorshift64: cheap, deterministic, and no two nearby chunks alike.
#[derive(Debug)]
struct Pattern(u64);

impl Default for Pattern {
    fn default() -> Self {
        Pattern(0x9e37_79b9_7f4a_7c15)
    }
}

impl Pattern {
    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *byte = self.0 as u8;
        }
    }
}
