//! `vessel run`: a new container, started, in its own VM; attached to our stdio unless
//! detached (`-d`).

use super::create::CreateFlags;
use super::{exit_code, start_attached, start_detached};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::client::SessionEnd;
use vessel_runtime::supervisor::protocol::Event;

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Run in the background and print the container's id
    #[arg(short, long)]
    detach: bool,
    #[command(flatten)]
    flags: CreateFlags,
}

pub fn run(args: RunArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let (interactive, tty) = (args.flags.interactive, args.flags.tty);
    if tty && interactive && !args.detach && !rustix::termios::isatty(std::io::stdin()) {
        anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)");
    }
    let container = super::create::create(args.flags, context)?;
    if !args.detach {
        return start_attached(context, &container, interactive);
    }
    match start_detached(context, &container)? {
        Event::Failed { code, message } => Ok(exit_code(&SessionEnd::Failed { code, message })),
        _ => {
            outln!("{}", container.id());
            Ok(ExitCode::SUCCESS)
        }
    }
}
