//! `vessel kill`: a signal to each container's main process (SIGKILL by default).

use super::{block_on, find};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::protocol::Request;
use vessel_runtime::supervisor::{client, parse_signal};

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// The signal (name or number)
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    /// Containers (names or ids)
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(args: KillArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(&args.signal)
        .ok_or_else(|| anyhow::anyhow!("invalid signal {:?} (try KILL, TERM or 9)", args.signal))?;
    for query in &args.containers {
        let container = find(context, query)?;
        block_on(client::request(&context.host, &container, &Request::Signal { signal }))??;
        outln!("{query}");
    }
    Ok(ExitCode::SUCCESS)
}
