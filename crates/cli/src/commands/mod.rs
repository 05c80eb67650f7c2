//! One module per noun, one file per verb: thin adapters over vessel-runtime.

mod system;

use crate::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and test this host
    #[command(subcommand)]
    System(system::SystemCommand),
}

pub fn run(command: Command, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::System(command) => system::run(command, context),
    }
}

/// A runtime for commands that talk to VMs. Single-threaded on purpose: VM processes are
/// tied to the thread that starts them (PR_SET_PDEATHSIG), so that thread must live as long
/// as they do.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(future))
}
