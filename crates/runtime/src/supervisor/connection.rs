//! One client connection to the supervisor: its request, then the frames of its answer.

use super::protocol::{self, ClientMessage, Event, ExecRequest, Request};
use super::{Outgoing, Shared, MAIN_PROCESS};
use crate::process::{ProcessIo, ProcessSpec};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Accepts clients until the supervisor ends.
pub(super) async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %err, "cannot accept a control connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                if let Err(err) = handle(stream, shared).await {
                    tracing::debug!(error = %err, "control connection ended with an error");
                }
            }
        });
        let mut connections = shared.connections.lock().expect("not poisoned");
        connections.retain(|task| !task.is_finished());
        connections.push(task);
    }
}

async fn handle(stream: UnixStream, shared: Arc<Shared>) -> Result<(), protocol::ProtocolError> {
    let (mut reader, mut writer) = stream.into_split();
    let Some(request) = protocol::read_json::<Request>(&mut reader).await? else { return Ok(()) };
    tracing::debug!(?request, "control request");
    match request {
        Request::Attach { stdin } => attach(shared, reader, writer, stdin).await,
        Request::Started => {
            let event = match shared.started().await {
                Ok(pid) => Event::Started { pid },
                Err(failure) => failure,
            };
            protocol::write_json(&mut writer, &event).await
        }
        Request::Exec(exec_request) => exec(shared, reader, writer, exec_request).await,
        Request::Signal { signal } => {
            let event = signal_main(&shared, signal).await;
            protocol::write_json(&mut writer, &event).await
        }
        Request::Stop { signal, timeout_secs } => {
            super::stop(&shared, signal, std::time::Duration::from_secs(timeout_secs.into())).await;
            protocol::write_json(&mut writer, &Event::Done).await
        }
        Request::Wait => {
            let exit = shared.exited().await;
            let event = Event::Exited { code: exit.code, signal: exit.signal };
            protocol::write_json(&mut writer, &event).await
        }
        Request::Stats => {
            let event = stats(&shared).await;
            protocol::write_json(&mut writer, &event).await
        }
        Request::CopyOut { path } => copy_out(shared, writer, path).await,
        Request::CopyIn { path } => copy_in(shared, reader, writer, path).await,
    }
}

async fn signal_main(shared: &Shared, signal: i32) -> Event {
    if let Err(failure) = shared.started().await {
        return failure;
    }
    if shared.exit.borrow().is_some() {
        return Event::Error { message: "the container is not running".into() };
    }
    let Some(mut agent) = shared.agent() else {
        return Event::Error { message: "the container is not running".into() };
    };
    match agent.signal_process(MAIN_PROCESS, signal).await {
        Ok(()) => Event::Done,
        Err(err) => Event::Error { message: crate::error_chain(&err) },
    }
}

/// Streams the main process's output to the client (and its input to the process) until
/// the process ends.
async fn attach(
    shared: Arc<Shared>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    stdin: bool,
) -> Result<(), protocol::ProtocolError> {
    let (frames, outgoing) = mpsc::channel(64);
    if shared.exit.borrow().is_some() {
        let mut writer = writer;
        let exit = shared.exited().await;
        return protocol::write_json(
            &mut writer,
            &Event::Exited { code: exit.code, signal: exit.signal },
        )
        .await;
    }
    shared.attached.lock().expect("not poisoned").push(frames.clone());
    shared.attach_count.send_modify(|count| *count += 1);
    let started = matches!(*shared.main.borrow(), super::MainState::Started(_));
    if let Some(exit) = shared.exit.borrow().filter(|_| started) {
        // The end was published between our check and joining the list: it may have
        // missed us. (A second `Exited` is harmless: clients stop at the first.)
        let exited = Event::Exited { code: exit.code, signal: exit.signal };
        let _ = frames.try_send(Outgoing::Event(exited));
    }
    // The start (or failure) comes first, then output, then the exit (sent by the
    // supervisor after the last output, on the same channel).
    let announce = {
        let shared = shared.clone();
        async move {
            let event = match shared.started().await {
                Ok(pid) => Event::Started { pid },
                Err(failure) => failure,
            };
            let failed = matches!(event, Event::Failed { .. });
            let _ = frames.send(Outgoing::Event(event)).await;
            if failed {
                // No output or exit follows a failed start.
                shared.attached.lock().expect("not poisoned").retain(|c| !c.same_channel(&frames));
            }
        }
    };
    tokio::spawn(announce);
    let input = tokio::spawn({
        let shared = shared.clone();
        let mut reader = reader;
        async move {
            let target = stdin.then_some(InputTarget::Main);
            client_frames(shared, &mut reader, target, MAIN_PROCESS.to_string()).await
        }
    });
    let result = send_frames(writer, outgoing).await;
    input.abort();
    result
}

/// Where a client's stdin frames go.
enum InputTarget {
    Main,
    Exec(tokio::io::DuplexStream),
}

/// Reads a client's frames after its request: stdin data for `target`, and window sizes
/// for the terminal of `process_id`.
async fn client_frames(
    shared: Arc<Shared>,
    reader: &mut OwnedReadHalf,
    mut target: Option<InputTarget>,
    process_id: String,
) {
    while let Ok(Some((kind, payload))) = protocol::read_frame(reader).await {
        match kind {
            protocol::STDIN => {
                let ended = payload.is_empty();
                match &mut target {
                    Some(InputTarget::Main) => {
                        let mut stdin = shared.stdin.lock().await;
                        if ended {
                            // The client's input ended: so does the container's (docker's
                            // StdinOnce for an attached `run -i`).
                            if let Some(mut pipe) = stdin.take() {
                                let _ = pipe.shutdown().await;
                            }
                        } else if let Some(pipe) = stdin.as_mut() {
                            let _ = pipe.write_all(&payload).await;
                        }
                    }
                    Some(InputTarget::Exec(pipe)) => {
                        if ended {
                            let _ = pipe.shutdown().await;
                            target = None;
                        } else {
                            let _ = pipe.write_all(&payload).await;
                        }
                    }
                    None => {}
                }
            }
            protocol::JSON => {
                let Ok(ClientMessage::Resize { rows, columns }) = serde_json::from_slice(&payload)
                else {
                    continue;
                };
                if process_id == MAIN_PROCESS {
                    // Used if the main process has yet to start.
                    *shared.terminal_size.lock().expect("not poisoned") = (rows, columns);
                }
                if let Some(mut agent) = shared.agent() {
                    let _ = agent.resize_terminal(&process_id, rows.into(), columns.into()).await;
                }
            }
            _ => {}
        }
    }
}

/// Writes frames from the channel to the client until the channel closes.
async fn send_frames(
    mut writer: OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<Outgoing>,
) -> Result<(), protocol::ProtocolError> {
    while let Some(frame) = outgoing.recv().await {
        match frame {
            Outgoing::Data(kind, bytes) => protocol::write_frame(&mut writer, kind, &bytes).await?,
            Outgoing::Event(event) => {
                let last = matches!(event, Event::Exited { .. } | Event::Failed { .. });
                protocol::write_json(&mut writer, &event).await?;
                if last {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown().await;
    Ok(())
}

/// Runs another process in the container, its stdio on this connection.
async fn exec(
    shared: Arc<Shared>,
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    request: ExecRequest,
) -> Result<(), protocol::ProtocolError> {
    if let Err(failure) = shared.started().await {
        return protocol::write_json(&mut writer, &failure).await;
    }
    if shared.exit.borrow().is_some() {
        let message = "the container is not running".to_string();
        return protocol::write_json(&mut writer, &Event::Failed { code: 125, message }).await;
    }
    let config = &shared.container.config;
    let process_id = format!("exec-{}", shared.next_exec.fetch_add(1, Ordering::Relaxed) + 1);
    let spec = ProcessSpec {
        container_id: shared.short_id().to_string(),
        process_id: process_id.clone(),
        args: request.args,
        env: crate::container::create::merge_env(&config.env, &request.env),
        cwd: request.workdir.unwrap_or_else(|| config.workdir.clone()),
        user: request.user.unwrap_or_else(|| config.user.clone()),
        terminal: request.terminal,
        ..super::security(config)
    };
    let (frames, outgoing) = mpsc::channel(64);
    let mut relays = Vec::new();
    let mut input = None;
    let io = if request.detach {
        ProcessIo::default()
    } else {
        let mut output = |kind: u8| {
            let (process_end, mut our_end) = tokio::io::duplex(64 * 1024);
            let frames = frames.clone();
            relays.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 32 * 1024];
                while let Ok(read @ 1..) = our_end.read(&mut buffer).await {
                    if frames.send(Outgoing::Data(kind, buffer[..read].to_vec())).await.is_err() {
                        break;
                    }
                }
            }));
            Some(Box::new(process_end) as _)
        };
        let stdout = output(protocol::STDOUT);
        let stderr = if request.terminal.is_some() { None } else { output(protocol::STDERR) };
        let stdin = request.stdin.then(|| {
            let (process_end, our_end) = tokio::io::duplex(64 * 1024);
            input = Some(our_end);
            Box::new(process_end) as _
        });
        ProcessIo { stdin, stdout, stderr }
    };
    let started = {
        let mut sandbox = shared.sandbox.lock().await;
        match sandbox.as_mut() {
            Some(sandbox) => sandbox.start_process(spec, io).await,
            None => {
                let message = "the container is not running".to_string();
                return protocol::write_json(&mut writer, &Event::Failed { code: 125, message })
                    .await;
            }
        }
    };
    let process = match started {
        Ok(process) => process,
        Err(err) => {
            let (code, message) = super::start_failure(&err);
            return protocol::write_json(&mut writer, &Event::Failed { code, message }).await;
        }
    };
    protocol::write_json(&mut writer, &Event::Started { pid: process.pid }).await?;
    let Some(mut agent) = shared.agent() else { return Ok(()) };
    if request.detach {
        // Reap it in the background so the agent forgets it.
        tokio::spawn(async move { process.wait(&mut agent).await });
        return Ok(());
    }
    let input_task = tokio::spawn({
        let shared = shared.clone();
        let process_id = process_id.clone();
        async move { client_frames(shared, &mut reader, input.map(InputTarget::Exec), process_id).await }
    });
    let waiter = tokio::spawn(async move {
        let exit = process.wait(&mut agent).await;
        for relay in relays {
            let _ = relay.await;
        }
        let event = match exit {
            Ok(exit) => Event::Exited { code: exit.code, signal: exit.signal },
            Err(err) => Event::Error { message: crate::error_chain(&err) },
        };
        let _ = frames.send(Outgoing::Event(event)).await;
    });
    let result = send_frames(writer, outgoing).await;
    input_task.abort();
    let _ = waiter.await;
    result
}

async fn stats(shared: &Shared) -> Event {
    if let Err(failure) = shared.started().await {
        return failure;
    }
    let Some(mut agent) = shared.agent() else {
        return Event::Error { message: "the container is not running".into() };
    };
    match agent.stats(shared.short_id()).await {
        Ok(stats) => Event::Stats(protocol::Stats {
            cpu_usage_usec: stats.cpu_usage_usec,
            // docker leaves reclaimable page cache out of a container's memory use.
            memory_usage_bytes: stats
                .memory_usage_bytes
                .saturating_sub(stats.memory_inactive_file_bytes),
            memory_limit_bytes: stats.memory_limit_bytes,
            pids: stats.pids_current,
            block_read_bytes: stats.block_read_bytes,
            block_write_bytes: stats.block_write_bytes,
        }),
        Err(err) => Event::Error { message: crate::error_chain(&err) },
    }
}

/// Sends a tar archive of a path in the container as STDOUT frames, an empty one at its
/// end, then `Done` (or `Error`).
async fn copy_out(
    shared: Arc<Shared>,
    mut writer: OwnedWriteHalf,
    path: String,
) -> Result<(), protocol::ProtocolError> {
    if let Err(failure) = shared.started().await {
        return protocol::write_json(&mut writer, &failure).await;
    }
    let (archive_end, our_end) = tokio::io::duplex(64 * 1024);
    let copy = async {
        let mut sandbox = shared.sandbox.lock().await;
        match sandbox.as_mut() {
            Some(sandbox) => sandbox.copy_out(shared.short_id(), &path, archive_end).await,
            None => Err(crate::RuntimeError::AgentConnect(std::io::ErrorKind::NotConnected.into())),
        }
    };
    // It owns the reading end: if the client goes, dropping it fails the agent's copy
    // instead of leaving it blocked (holding the sandbox) on a full pipe.
    let forward = {
        let writer = &mut writer;
        async move {
            let mut our_end = our_end;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = our_end.read(&mut buffer).await?;
                protocol::write_frame(writer, protocol::STDOUT, &buffer[..read]).await?;
                if read == 0 {
                    return Ok::<_, protocol::ProtocolError>(());
                }
            }
        }
    };
    let (copied, forwarded) = tokio::join!(copy, forward);
    forwarded?;
    let event = match copied {
        Ok(()) => Event::Done,
        Err(err) => Event::Error { message: copy_error(&err) },
    };
    protocol::write_json(&mut writer, &event).await
}

/// Unpacks the tar archive the client sends as STDIN frames (an empty one ends it) at a
/// path in the container; replies `Done` or `Error`.
async fn copy_in(
    shared: Arc<Shared>,
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    path: String,
) -> Result<(), protocol::ProtocolError> {
    if let Err(failure) = shared.started().await {
        return protocol::write_json(&mut writer, &failure).await;
    }
    let (archive_end, mut our_end) = tokio::io::duplex(64 * 1024);
    let copy = async {
        let mut sandbox = shared.sandbox.lock().await;
        match sandbox.as_mut() {
            Some(sandbox) => sandbox.copy_in(shared.short_id(), &path, archive_end).await,
            None => Err(crate::RuntimeError::AgentConnect(std::io::ErrorKind::NotConnected.into())),
        }
    };
    let forward = async move {
        while let Some((kind, payload)) = protocol::read_frame(&mut reader).await? {
            if kind != protocol::STDIN {
                return Err(protocol::ProtocolError::UnexpectedKind(kind));
            }
            if payload.is_empty() {
                break;
            }
            // The agent stopped reading (it failed): keep draining the client's frames, so
            // it can finish sending and read the answer that says why.
            let _ = our_end.write_all(&payload).await;
        }
        let _ = our_end.shutdown().await;
        Ok(())
    };
    let (copied, forwarded) = tokio::join!(copy, forward);
    let event = match (copied, forwarded) {
        (Err(err), _) => Event::Error { message: copy_error(&err) },
        (Ok(()), Err(err)) => Event::Error { message: err.to_string() },
        (Ok(()), Ok(())) => Event::Done,
    };
    protocol::write_json(&mut writer, &event).await
}

/// The agent's own words for a failed copy ("no such file …"), else the whole chain.
fn copy_error(err: &crate::RuntimeError) -> String {
    match err {
        crate::RuntimeError::AgentCall { status, .. } => status.message().to_string(),
        other => crate::error_chain(other),
    }
}
