//! `vessel run`: a new container, started, in its own VM; attached to our stdio unless
//! detached (`-d`).

use super::create::CreateFlags;
use super::{block_on, exit_code, launch, session, terminal};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::client;
use vessel_runtime::supervisor::protocol::{Event, Request};

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
    if args.detach {
        // The supervisor outlives us; it is not our child to wait for.
        drop(launch(context, &container, false)?);
        let started = block_on(client::request(&context.host, &container, &Request::Started))?;
        return match started? {
            Event::Failed { code, message } => {
                eprintln!("vessel: {message}");
                Ok(ExitCode::from(u8::try_from(code).unwrap_or(crate::EXIT_VESSEL_FAILED)))
            }
            _ => {
                outln!("{}", container.id());
                Ok(ExitCode::SUCCESS)
            }
        };
    }
    let mut supervisor = launch(context, &container, true)?;
    // Raw mode lasts as long as the guard: keystrokes (Ctrl-C too) go to the container.
    let raw = (tty && interactive).then(terminal::RawMode::enter).transpose()?;
    let request = Request::Attach { stdin: interactive };
    let end = block_on(session(context, &container, request, interactive, tty))?;
    drop(raw);
    let end = end?;
    // It records the end and removes a `--rm` container before it exits.
    let _ = supervisor.wait();
    Ok(exit_code(&end))
}
