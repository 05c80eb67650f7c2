//! `vessel exec`: another process in a running container.

use super::{block_on, exit_code, find, session, terminal};
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::supervisor::client::{self, SessionEnd};
use vessel_runtime::supervisor::protocol::{Event, ExecRequest, Request};

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process
    #[arg(short, long)]
    interactive: bool,
    /// Give the process a terminal
    #[arg(short, long)]
    tty: bool,
    /// Start the process in the background and return
    #[arg(short, long)]
    detach: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container (default: the container's)
    #[arg(short, long)]
    workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid (default: the container's)
    #[arg(short, long)]
    user: Option<String>,
    /// The container (name or id)
    container: String,
    /// The command and its arguments
    #[arg(required = true)]
    command: Vec<String>,
}

pub fn run(args: ExecArgs, context: &Context) -> anyhow::Result<ExitCode> {
    if args.tty && args.interactive && !args.detach && !rustix::termios::isatty(std::io::stdin()) {
        anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)");
    }
    let container = find(context, &args.container)?;
    // A bare KEY takes our value here: the supervisor's environment is not the caller's.
    let env = args
        .env
        .into_iter()
        .filter_map(|entry| {
            if entry.contains('=') {
                Some(entry)
            } else {
                std::env::var(&entry).ok().map(|value| format!("{entry}={value}"))
            }
        })
        .collect();
    let request = ExecRequest {
        args: args.command,
        env,
        workdir: args.workdir,
        user: args.user,
        terminal: args.tty.then(terminal::size),
        stdin: args.interactive && !args.detach,
        detach: args.detach,
    };
    if args.detach {
        return match block_on(client::request(&context.host, &container, &Request::Exec(request)))??
        {
            Event::Failed { code, message } => Ok(exit_code(&SessionEnd::Failed { code, message })),
            _ => Ok(ExitCode::SUCCESS),
        };
    }
    let stdin = request.stdin;
    let raw = (args.tty && stdin).then(terminal::RawMode::enter).transpose()?;
    let end = block_on(session(context, &container, Request::Exec(request), stdin, args.tty))?;
    drop(raw);
    Ok(exit_code(&end?))
}
