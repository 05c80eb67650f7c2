//! `vessel rm`: remove containers (running ones only with `-f`, which kills them first).

use super::find;
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::container::{self, StoreError};

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Kill and remove running containers
    #[arg(short, long)]
    force: bool,
    /// Remove the container's anonymous volumes too
    #[arg(short, long)]
    volumes: bool,
    /// Containers (names or ids)
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(args: RmArgs, context: &Context) -> anyhow::Result<ExitCode> {
    for query in &args.containers {
        let container = find(context, query)?;
        if container.is_running() {
            if !args.force {
                anyhow::bail!(
                    "cannot remove container {query}: it is running (stop it first, or use -f)"
                );
            }
            super::stop_container(context, &container, 9, 0)?;
        }
        match container::remove(&context.host, &container, args.volumes) {
            // Removed by its own supervisor (`--rm`) meanwhile.
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        outln!("{query}");
    }
    Ok(ExitCode::SUCCESS)
}
