//! `vessel run`: a command in a new container, in its own VM.

use crate::Context;
use std::process::ExitCode;
use vessel_runtime::process::ProcessIo;
use vessel_runtime::run::{RunError, RunOptions};
use vessel_runtime::RuntimeError;
use vessel_vm::Accel;

/// docker's codes for a command that could not be invoked, or was not found.
const EXIT_CANNOT_INVOKE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Keep stdin open and pass it to the container
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal (not yet: use -i without -t)
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits (foreground containers always are, for now)
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this shell's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments)
    #[arg(long, value_name = "FILE")]
    env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    workdir: Option<String>,
    /// User: name, uid, name:group or uid:gid
    #[arg(short, long)]
    user: Option<String>,
    /// Override the image's ENTRYPOINT
    #[arg(long)]
    entrypoint: Option<String>,
    /// The container's hostname
    #[arg(long)]
    hostname: Option<String>,
    /// Virtual CPUs of the container's VM
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory of the container's VM (e.g. 512m, 1g)
    #[arg(short, long, default_value = "256m", value_parser = super::super::rootfs::parse_size)]
    memory: u64,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Accelerator: auto, kvm or tcg
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// The image (name or id)
    image: String,
    /// The command and its arguments (default: the image's)
    command: Vec<String>,
}

pub fn run(args: RunArgs, context: &Context) -> anyhow::Result<ExitCode> {
    if args.tty {
        anyhow::bail!("-t is not supported yet (run without it; -i passes stdin)");
    }
    let mut env = Vec::new();
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .map_err(|err| anyhow::anyhow!("cannot read env file {}: {err}", file.display()))?;
        env.extend(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(String::from),
        );
    }
    env.extend(args.env);
    let options = RunOptions {
        image: args.image,
        command: args.command,
        entrypoint: args.entrypoint.map(|entrypoint| vec![entrypoint]),
        env,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname,
        cpus: args.cpus,
        memory_mib: u32::try_from(args.memory >> 20).unwrap_or(u32::MAX),
        read_only: args.read_only,
        accel: args.accel,
        echo_console: context.debug,
    };
    let io = ProcessIo {
        stdin: args.interactive.then(|| Box::new(tokio::io::stdin()) as _),
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: Some(Box::new(tokio::io::stderr())),
    };
    let result = super::super::block_on(vessel_runtime::run::run(&context.host, options, io))?;
    match result {
        Ok(exit) => Ok(ExitCode::from(u8::try_from(exit.code).unwrap_or(u8::MAX))),
        Err(RunError::Runtime(RuntimeError::AgentCall { call: "StartProcess", status })) => {
            eprintln!("vessel: {}", status.message());
            Ok(ExitCode::from(match status.code() {
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                tonic::Code::PermissionDenied => EXIT_CANNOT_INVOKE,
                _ => crate::EXIT_VESSEL_FAILED,
            }))
        }
        Err(err) => Err(err.into()),
    }
}
