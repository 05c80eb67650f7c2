//! `vessel wait`: block until containers end, and print their exit codes.

use super::{block_on, find, store};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::container::Status;
use vessel_runtime::supervisor::client;
use vessel_runtime::supervisor::protocol::{Event, Request};

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Containers (names or ids)
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(args: WaitArgs, context: &Context) -> anyhow::Result<ExitCode> {
    for query in &args.containers {
        let mut container = find(context, query)?;
        // A created container is waited for until someone starts it and it ends.
        while container.state.status == Status::Created {
            std::thread::sleep(std::time::Duration::from_millis(200));
            container = store(context).load(container.id())?;
        }
        let code = if container.is_running() {
            match block_on(client::request(&context.host, &container, &Request::Wait))? {
                Ok(Event::Exited { code, .. }) => code,
                // It ended between our read and the request: the state has the code.
                _ => store(context).load(container.id())?.state.exit_code.unwrap_or(0),
            }
        } else {
            container.state.exit_code.unwrap_or(0)
        };
        outln!("{code}");
    }
    Ok(ExitCode::SUCCESS)
}
