//! `vessel stop`: the stop signal, then SIGKILL after a timeout; returns once each
//! container has ended and its supervisor is gone.

use super::find;
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::parse_signal;

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
            super::stop_container(context, &container, signal, timeout_secs)?;
        }
        outln!("{query}");
    }
    Ok(ExitCode::SUCCESS)
}
