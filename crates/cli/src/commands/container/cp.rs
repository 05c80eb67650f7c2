//! `vessel cp`: copy files between a running container and the host, as tar streams
//! through the container's supervisor; `-` for a tar stream on stdin or stdout.

use super::{block_on, find};
use crate::Context;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use vessel_runtime::supervisor::client::{self, ClientError};
use vessel_runtime::supervisor::protocol::{self, Event, Request};

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// CONTAINER:PATH, a host path, or - (a tar stream on stdin)
    source: String,
    /// CONTAINER:PATH, a host path, or - (a tar stream on stdout)
    destination: String,
}

/// One side of a copy.
enum Location {
    Container { container: String, path: String },
    Host(PathBuf),
    Stream,
}

/// docker's rule: `NAME:PATH` names a container unless the argument starts like a path
/// (`/`, `.`), so `./a:b` is a host file.
fn location(argument: &str) -> Location {
    if argument == "-" {
        return Location::Stream;
    }
    if !argument.starts_with('/') && !argument.starts_with('.') {
        if let Some((container, path)) = argument.split_once(':') {
            if !container.is_empty() {
                // Container paths are relative to its root, as docker's.
                let path =
                    if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
                return Location::Container { container: container.into(), path };
            }
        }
    }
    Location::Host(PathBuf::from(argument))
}

pub fn run(args: CpArgs, context: &Context) -> anyhow::Result<ExitCode> {
    match (location(&args.source), location(&args.destination)) {
        (Location::Container { container, path }, destination) => {
            let destination = match destination {
                Location::Container { .. } => {
                    anyhow::bail!("copying between containers is not supported: copy through the host")
                }
                Location::Host(path) => Some(path),
                Location::Stream => None,
            };
            copy_out(context, &container, &path, destination)
        }
        (source, Location::Container { container, path }) => {
            let source = match source {
                Location::Host(path) => Some(path),
                _ => None,
            };
            copy_in(context, &container, source, &path)
        }
        _ => anyhow::bail!(
            "one of source and destination must be CONTAINER:PATH (e.g. `vessel cp web:/etc/hosts .`)"
        ),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Container → host (or our stdout, with `-`). The archive comes from the guest and is
/// extracted by a function that never writes outside the destination.
fn copy_out(
    context: &Context,
    container: &str,
    path: &str,
    destination: Option<PathBuf>,
) -> anyhow::Result<()> {
    let container = find(context, container)?;
    let (reader, mut writer) = std::io::pipe()?;
    let extractor = destination.map(|destination| {
        std::thread::spawn(move || vessel_runtime::copy::extract_to_host(reader, &destination))
    });
    let mut sink: Box<dyn Write> = match extractor {
        Some(_) => Box::new(&mut writer),
        None => Box::new(std::io::stdout().lock()),
    };
    let answer = block_on(async {
        let mut stream = client::connect(&context.host, &container).await?;
        protocol::write_json(&mut stream, &Request::CopyOut { path: path.to_string() }).await?;
        loop {
            match protocol::read_frame(&mut stream).await? {
                Some((protocol::STDOUT, data)) => {
                    // The extractor failed and stopped reading: its error is reported below.
                    let _ = sink.write_all(&data);
                }
                Some((protocol::JSON, payload)) => {
                    return Ok::<Event, ClientError>(
                        serde_json::from_slice(&payload).map_err(protocol::ProtocolError::Json)?,
                    );
                }
                Some((kind, _)) => {
                    return Err(protocol::ProtocolError::UnexpectedKind(kind).into());
                }
                None => return Err(ClientError::NoAnswer),
            }
        }
    })?;
    drop(sink);
    drop(writer);
    let extracted = extractor.map(|thread| thread.join());
    match answer? {
        Event::Done => {}
        Event::Error { message } | Event::Failed { message, .. } => {
            anyhow::bail!("cannot copy {path} from container {}: {message}", container.config.name)
        }
        other => anyhow::bail!("unexpected answer from the supervisor: {other:?}"),
    }
    match extracted {
        None => Ok(()),
        Some(Ok(result)) => Ok(result?),
        Some(Err(_)) => anyhow::bail!("the extraction thread panicked"),
    }
}

/// Host (or our stdin, with `-`) → container.
fn copy_in(
    context: &Context,
    container: &str,
    source: Option<PathBuf>,
    path: &str,
) -> anyhow::Result<()> {
    let container = find(context, container)?;
    if let Some(source) = &source {
        // Checked here so the error names the host path.
        std::fs::symlink_metadata(source)
            .map_err(|err| anyhow::anyhow!("cannot copy {}: {err}", source.display()))?;
    }
    let (mut reader, writer) = std::io::pipe()?;
    let archiver = std::thread::spawn(move || match source {
        Some(source) => {
            vessel_runtime::copy::archive_host_path(&source, writer).map_err(anyhow::Error::from)
        }
        None => {
            let mut writer = writer;
            std::io::copy(&mut std::io::stdin().lock(), &mut writer)
                .map(drop)
                .map_err(anyhow::Error::from)
        }
    });
    let answer = block_on(async {
        let mut stream = client::connect(&context.host, &container).await?;
        protocol::write_json(&mut stream, &Request::CopyIn { path: path.to_string() }).await?;
        let (chunks, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        // The archive is read from the pipe on a blocking thread, a chunk at a time.
        tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = std::io::Read::read(&mut reader, &mut buffer).unwrap_or(0);
                if chunks.blocking_send(buffer[..read].to_vec()).is_err() || read == 0 {
                    return;
                }
            }
        });
        while let Some(chunk) = receiver.recv().await {
            let end = chunk.is_empty();
            protocol::write_frame(&mut stream, protocol::STDIN, &chunk).await?;
            if end {
                break;
            }
        }
        match protocol::read_json::<Event>(&mut stream).await? {
            Some(event) => Ok::<Event, ClientError>(event),
            None => Err(ClientError::NoAnswer),
        }
    })?;
    let archived = archiver.join().map_err(|_| anyhow::anyhow!("the archiving thread panicked"))?;
    match answer? {
        Event::Done => {}
        Event::Error { message } | Event::Failed { message, .. } => {
            anyhow::bail!("cannot copy to {path} in container {}: {message}", container.config.name)
        }
        other => anyhow::bail!("unexpected answer from the supervisor: {other:?}"),
    }
    archived
}
