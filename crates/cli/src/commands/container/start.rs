//! `vessel start`: boot stopped containers again (same writable disk, same log).

use super::{block_on, exit_code, find, launch, session, terminal};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::client;
use vessel_runtime::supervisor::protocol::{Event, Request};

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Attach stdout and stderr, and exit with the container's code
    #[arg(short, long)]
    attach: bool,
    /// Attach stdin too
    #[arg(short, long)]
    interactive: bool,
    /// Containers (names or ids)
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(args: StartArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let attach = args.attach || args.interactive;
    if attach && args.containers.len() > 1 {
        anyhow::bail!("you cannot attach to several containers at once: start them one by one");
    }
    let mut failed = false;
    for query in &args.containers {
        let container = find(context, query)?;
        if container.is_running() {
            if !attach {
                outln!("{query}");
            }
            continue;
        }
        if attach {
            let tty = container.config.tty;
            let mut supervisor = launch(context, &container, true)?;
            let stdin = args.interactive && container.config.open_stdin;
            let raw = (tty && stdin && rustix::termios::isatty(std::io::stdin()))
                .then(terminal::RawMode::enter)
                .transpose()?;
            let end =
                block_on(session(context, &container, Request::Attach { stdin }, stdin, tty))?;
            drop(raw);
            let end = end?;
            let _ = supervisor.wait();
            return Ok(exit_code(&end));
        }
        drop(launch(context, &container, false)?);
        match block_on(client::request(&context.host, &container, &Request::Started))?? {
            Event::Failed { message, .. } => {
                eprintln!("vessel: cannot start container {query}: {message}");
                failed = true;
            }
            _ => outln!("{query}"),
        }
    }
    Ok(if failed { ExitCode::from(crate::EXIT_VESSEL_FAILED) } else { ExitCode::SUCCESS })
}
