//! The client side of the control socket, for the commands that reach a running container.

use super::protocol::{self, ClientMessage, Event, Request};
use crate::container::Container;
use crate::Host;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("cannot reach the supervisor of container {container}")]
    Connect {
        container: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    #[error("the supervisor ended the connection without an answer")]
    NoAnswer,
    #[error("{0}")]
    Supervisor(String),
}

/// Connects to a running container's supervisor. (The socket is the truth: the state the
/// caller read may predate the supervisor's start.)
pub async fn connect(host: &Host, container: &Container) -> Result<UnixStream, ClientError> {
    let path = host.control_socket(container.id());
    UnixStream::connect(&path).await.map_err(|source| match source.kind() {
        // The supervisor ended between the state read and now.
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(container.config.name.clone())
        }
        _ => ClientError::Connect { container: container.config.name.clone(), source },
    })
}

/// Sends one request and returns the supervisor's one answer.
pub async fn request(
    host: &Host,
    container: &Container,
    request: &Request,
) -> Result<Event, ClientError> {
    let mut stream = connect(host, container).await?;
    protocol::write_json(&mut stream, request).await?;
    match protocol::read_json::<Event>(&mut stream).await? {
        Some(Event::Error { message }) => Err(ClientError::Supervisor(message)),
        Some(event) => Ok(event),
        None => Err(ClientError::NoAnswer),
    }
}

/// The local end of an attached process: where its output goes, where its input comes
/// from, and our terminal's size (with `-t`).
pub struct LocalIo<I, O, E> {
    pub stdin: Option<I>,
    pub stdout: O,
    pub stderr: E,
    pub resize: Option<tokio::sync::watch::Receiver<(u16, u16)>>,
}

impl<I, O, E> std::fmt::Debug for LocalIo<I, O, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIo").field("stdin", &self.stdin.is_some()).finish_non_exhaustive()
    }
}

/// How an attached session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    Exited {
        code: i32,
        signal: Option<i32>,
    },
    /// The process never started; `code` is docker's (125, 126 or 127).
    Failed {
        code: i32,
        message: String,
    },
}

/// Sends `request` (Attach or Exec) on `stream` and relays stdio until the process ends.
pub async fn session<I, O, E>(
    stream: UnixStream,
    request: &Request,
    io: LocalIo<I, O, E>,
) -> Result<SessionEnd, ClientError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = stream.into_split();
    protocol::write_json(&mut writer, request).await?;
    let LocalIo { stdin, mut stdout, mut stderr, resize } = io;
    // Input and window sizes go out on a task of their own; it ends with the session.
    let (chunks, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let reader_task = stdin.map(|mut stdin| {
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                let read = stdin.read(&mut buffer).await.unwrap_or(0);
                // An empty chunk says the input ended.
                if chunks.send(buffer[..read].to_vec()).await.is_err() || read == 0 {
                    return;
                }
            }
        })
    });
    let sender = tokio::spawn(async move {
        let mut resize = resize;
        if let Some(size) = resize.as_mut() {
            let (rows, columns) = *size.borrow_and_update();
            protocol::write_json(&mut writer, &ClientMessage::Resize { rows, columns }).await?;
        }
        loop {
            let changed = async {
                match resize.as_mut() {
                    Some(size) => size.changed().await.map(|()| *size.borrow_and_update()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(chunk) = input.recv() => {
                    protocol::write_frame(&mut writer, protocol::STDIN, &chunk).await?;
                }
                size = changed => match size {
                    Ok((rows, columns)) => {
                        let message = ClientMessage::Resize { rows, columns };
                        protocol::write_json(&mut writer, &message).await?;
                    }
                    Err(_) => resize = None,
                },
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), protocol::ProtocolError>(())
    });
    let end = async {
        loop {
            match protocol::read_frame(&mut reader).await? {
                None => return Err(ClientError::NoAnswer),
                Some((protocol::STDOUT, data)) => {
                    stdout.write_all(&data).await.map_err(protocol::ProtocolError::Io)?;
                    stdout.flush().await.map_err(protocol::ProtocolError::Io)?;
                }
                Some((protocol::STDERR, data)) => {
                    stderr.write_all(&data).await.map_err(protocol::ProtocolError::Io)?;
                    stderr.flush().await.map_err(protocol::ProtocolError::Io)?;
                }
                Some((protocol::JSON, payload)) => {
                    match serde_json::from_slice(&payload).map_err(protocol::ProtocolError::Json)? {
                        Event::Exited { code, signal } => {
                            return Ok(SessionEnd::Exited { code, signal })
                        }
                        Event::Failed { code, message } => {
                            return Ok(SessionEnd::Failed { code, message })
                        }
                        Event::Error { message } => return Err(ClientError::Supervisor(message)),
                        _ => {}
                    }
                }
                Some((kind, _)) => return Err(protocol::ProtocolError::UnexpectedKind(kind).into()),
            }
        }
    }
    .await;
    sender.abort();
    if let Some(task) = reader_task {
        task.abort();
    }
    end
}
