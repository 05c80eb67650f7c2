#![forbid(unsafe_code)]
//! `vessel`: run each container in its own lightweight VM.

mod commands;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for vessel's own failures, as docker uses.
pub const EXIT_VESSEL_FAILED: u8 = 125;

#[derive(Debug, Parser)]
#[command(name = "vessel", version, about = "Run each container in its own lightweight VM")]
pub struct Cli {
    /// State directory (default /var/lib/vessel, runtime files in /run/vessel)
    #[arg(long, global = true, env = "VESSEL_ROOT")]
    root: Option<PathBuf>,
    /// Show debug logs, and guest consoles live
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: commands::Command,
}

/// What every command gets besides its own flags.
#[derive(Debug)]
pub struct Context {
    pub host: vessel_runtime::Host,
    pub debug: bool,
}

fn main() -> ExitCode {
    // Usage errors exit 125 like vessel's other failures (as docker's do); help and
    // version go to stdout and exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_VESSEL_FAILED)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = if cli.debug {
        "warn,vessel=debug,vessel_runtime=debug,vessel_vm=debug"
    } else if cli.command.is_supervisor() {
        "warn,vessel_runtime::supervisor=info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VESSEL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let context = Context { host: vessel_runtime::Host::new(cli.root), debug: cli.debug };
    match commands::run(cli.command, &context) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vessel: {}", vessel_runtime::error_chain(err.as_ref()));
            ExitCode::from(EXIT_VESSEL_FAILED)
        }
    }
}
