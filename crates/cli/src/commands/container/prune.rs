//! `vessel container prune`: remove every container that is not running.

use super::store;
use crate::Context;
use std::io::BufRead;
use std::process::ExitCode;
use vessel_runtime::container::StoreError;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation
    #[arg(short, long)]
    force: bool,
}

pub fn run(args: PruneArgs, context: &Context) -> anyhow::Result<ExitCode> {
    if !args.force {
        eprint!("This removes all stopped containers. Are you sure? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let store = store(context);
    let mut reclaimed = 0u64;
    outln!("Deleted Containers:");
    for container in store.list()?.into_iter().filter(|c| !c.is_running()) {
        // Allocated blocks, not the sparse size.
        use std::os::unix::fs::MetadataExt;
        let size = std::fs::metadata(container.writable_disk()).map_or(0, |m| m.blocks() * 512);
        match vessel_runtime::container::remove(&context.host, &container, false) {
            Ok(()) => {}
            // Gone meanwhile (`--rm`), or started again: not ours to remove.
            Err(StoreError::NotFound(_) | StoreError::Running(_)) => continue,
            Err(err) => return Err(err.into()),
        }
        reclaimed += size;
        outln!("{}", container.id());
    }
    outln!("\nTotal reclaimed space: {}", crate::commands::image::human_size(reclaimed));
    Ok(ExitCode::SUCCESS)
}
