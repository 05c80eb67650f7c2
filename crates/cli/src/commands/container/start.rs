//! `vessel start`: boot stopped containers again (same writable disk, same log).

use super::{find, start_attached, start_detached};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::protocol::Event;

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
            let stdin = args.interactive && container.config.open_stdin;
            return start_attached(context, &container, stdin);
        }
        match start_detached(context, &container)? {
            Event::Failed { message, .. } => {
                eprintln!("vessel: cannot start container {query}: {message}");
                failed = true;
            }
            _ => outln!("{query}"),
        }
    }
    Ok(if failed { ExitCode::from(crate::EXIT_VESSEL_FAILED) } else { ExitCode::SUCCESS })
}
