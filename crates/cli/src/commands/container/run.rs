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
    /// Give the container a terminal (with -i, this terminal is put in raw mode)
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
    /// CPUs for the container, fractions allowed (its VM gets the next whole number)
    #[arg(long, default_value_t = 1.0, value_parser = parse_cpus)]
    cpus: f64,
    /// Memory limit of the container (e.g. 512m, 1g); its VM gets 64 MiB more
    #[arg(short, long, default_value = "256m", value_parser = super::super::rootfs::parse_size)]
    memory: u64,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Accelerator: auto, kvm or tcg
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Pull the image: missing (default), always or never
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pull: String,
    #[command(flatten)]
    registry: super::super::image::RegistryArgs,
    /// The image (name or id)
    image: String,
    /// The command and its arguments (default: the image's)
    command: Vec<String>,
}

pub fn run(args: RunArgs, context: &Context) -> anyhow::Result<ExitCode> {
    if args.tty && args.interactive && !rustix::termios::isatty(std::io::stdin()) {
        anyhow::bail!("the input device is not a TTY (drop -t, or run from a terminal)");
    }
    pull_if_needed(&args, context)?;
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
        terminal: None,
        accel: args.accel,
        echo_console: context.debug,
    };
    let io = ProcessIo {
        stdin: args.interactive.then(|| Box::new(tokio::io::stdin()) as _),
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: Some(Box::new(tokio::io::stderr())),
    };
    // Raw mode lasts as long as the guard: keystrokes (Ctrl-C too) go to the container.
    let _raw = (args.tty && args.interactive).then(terminal::RawMode::enter).transpose()?;
    let result = super::super::block_on(async {
        let mut options = options;
        if args.tty {
            options.terminal = Some(terminal::watch_size()?);
        }
        Ok::<_, anyhow::Error>(vessel_runtime::run::run(&context.host, options, io).await)
    })??;
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

fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus <= 64.0 => Ok(cpus),
        _ => Err(format!("invalid --cpus {value:?} (a number from 0.01 to 64)")),
    }
}

/// Pulls the image when `--pull` asks for it, or when it is missing (as docker run does).
fn pull_if_needed(args: &RunArgs, context: &Context) -> anyhow::Result<()> {
    let missing = match super::super::image::store(context)?.find(&args.image) {
        Ok(_) => false,
        Err(vessel_oci::image::ImageError::NotFound(_)) => true,
        Err(err) => return Err(err.into()),
    };
    let pull = match args.pull.as_str() {
        "always" => true,
        "never" => false,
        _ => missing,
    };
    if !pull {
        return Ok(());
    }
    if missing {
        eprintln!("Unable to find image '{}' locally", args.image);
    }
    let pull_args = super::super::image::PullArgs {
        name: args.image.clone(),
        platform: None,
        max_concurrent_downloads: 3,
        quiet: false,
        no_snapshot: false,
        registry: args.registry.clone(),
    };
    super::super::image::pull::pull(pull_args, context).map(drop)
}

/// The local terminal: raw mode and its window size.
mod terminal {
    use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};
    use tokio::signal::unix::{signal, SignalKind};
    use tokio::sync::watch;

    /// Puts stdin's terminal in raw mode until dropped.
    #[derive(Debug)]
    pub struct RawMode {
        saved: Termios,
    }

    impl RawMode {
        pub fn enter() -> anyhow::Result<RawMode> {
            let stdin = std::io::stdin();
            let saved = tcgetattr(&stdin)?;
            let mut raw = saved.clone();
            raw.make_raw();
            tcsetattr(&stdin, OptionalActions::Now, &raw)?;
            Ok(RawMode { saved })
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
        }
    }

    /// The window size of our terminal (24x80 without one), and each change (SIGWINCH).
    pub fn watch_size() -> anyhow::Result<watch::Receiver<(u16, u16)>> {
        let (sender, receiver) = watch::channel(size());
        let mut winch = signal(SignalKind::window_change())?;
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if sender.send(size()).is_err() {
                    return;
                }
            }
        });
        Ok(receiver)
    }

    fn size() -> (u16, u16) {
        [tcgetwinsize(std::io::stdout()), tcgetwinsize(std::io::stdin())]
            .into_iter()
            .flatten()
            .find(|size| size.ws_row > 0 && size.ws_col > 0)
            .map_or((24, 80), |size| (size.ws_row, size.ws_col))
    }
}
