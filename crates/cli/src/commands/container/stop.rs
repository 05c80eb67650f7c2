//! `vessel stop`: the stop signal, then SIGKILL after a timeout; returns once each
//! container has ended and its supervisor is gone.

use super::{block_on, find, wait_for_exit};
use crate::Context;
use std::process::ExitCode;
use std::time::Duration;
use vessel_runtime::supervisor::protocol::Request;
use vessel_runtime::supervisor::{client, parse_signal};

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait before killing (default: the container's stop timeout, 10)
    #[arg(short = 't', long = "time", visible_alias = "timeout")]
    time: Option<u32>,
    /// The signal to send first (default: the container's stop signal)
    #[arg(short, long)]
    signal: Option<String>,
    /// Containers (names or ids)
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(args: StopArgs, context: &Context) -> anyhow::Result<ExitCode> {
    for query in &args.containers {
        let container = find(context, query)?;
        if container.is_running() {
            let config = &container.config;
            let name = args.signal.as_deref().unwrap_or(&config.stop_signal);
            let signal = parse_signal(name)
                .ok_or_else(|| anyhow::anyhow!("invalid signal {name:?} (try SIGTERM or 15)"))?;
            let timeout_secs = args.time.unwrap_or(config.stop_timeout);
            let request = Request::Stop { signal, timeout_secs };
            match block_on(client::request(&context.host, &container, &request))? {
                Ok(_) | Err(client::ClientError::NotRunning(_)) => {}
                Err(err) => return Err(err.into()),
            }
            wait_for_exit(container.state.supervisor, Duration::from_secs(30));
        }
        outln!("{query}");
    }
    Ok(ExitCode::SUCCESS)
}
