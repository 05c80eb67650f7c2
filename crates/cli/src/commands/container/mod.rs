//! `vessel container …` and the docker-style shortcuts (`run ps exec logs stop …`): thin
//! adapters over vessel-runtime's container store and supervisor.

/// `println!` that stops quietly when the reader went away (`vessel ps | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod cp;
mod create;
mod exec;
mod inspect;
mod kill;
mod logs;
mod ls;
mod port;
mod prune;
mod rm;
pub mod run;
mod start;
mod stats;
mod stop;
mod supervise;
mod terminal;
mod wait;

use crate::Context;
use clap::Subcommand;
use std::process::ExitCode;
use vessel_runtime::container::{Container, ContainerStore, ProcessRef};
use vessel_runtime::supervisor::client::{self, LocalIo, SessionEnd};
use vessel_runtime::supervisor::protocol::{Event, Request};

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Run a command in a new container, in its own VM
    Run(run::RunArgs),
    /// Create a container without starting it
    Create(create::CreateArgs),
    /// Start stopped containers
    Start(start::StartArgs),
    /// Stop running containers (the stop signal, then SIGKILL after a timeout)
    Stop(stop::StopArgs),
    /// Send a signal to running containers (SIGKILL by default)
    Kill(kill::KillArgs),
    /// Remove containers
    #[command(alias = "remove")]
    Rm(rm::RmArgs),
    /// List containers
    #[command(alias = "list", alias = "ps")]
    Ls(ls::LsArgs),
    /// Show a container's output
    Logs(logs::LogsArgs),
    /// Run a command in a running container
    Exec(exec::ExecArgs),
    /// Show containers (or images) as JSON
    Inspect(inspect::InspectArgs),
    /// Wait for containers to end and print their exit codes
    Wait(wait::WaitArgs),
    /// Show containers' CPU, memory and process counts
    Stats(stats::StatsArgs),
    /// Copy files between a container and the host
    Cp(cp::CpArgs),
    /// List a running container's published ports
    Port(port::PortArgs),
    /// Remove all stopped containers
    Prune(prune::PruneArgs),
    /// (internal) Own a container's VM while it runs
    #[command(hide = true)]
    Supervise(supervise::SuperviseArgs),
}

/// The docker-style shortcuts at the top level: `vessel ps` is `vessel container ls`.
#[derive(Debug, Subcommand)]
pub enum Shortcut {
    /// Run a command in a new container, in its own VM
    Run(run::RunArgs),
    /// Create a container without starting it (`vessel container create`)
    Create(create::CreateArgs),
    /// Start stopped containers (`vessel container start`)
    Start(start::StartArgs),
    /// Stop running containers (`vessel container stop`)
    Stop(stop::StopArgs),
    /// Send a signal to running containers (`vessel container kill`)
    Kill(kill::KillArgs),
    /// Remove containers (`vessel container rm`)
    Rm(rm::RmArgs),
    /// List containers (`vessel container ls`)
    Ps(ls::LsArgs),
    /// Show a container's output (`vessel container logs`)
    Logs(logs::LogsArgs),
    /// Run a command in a running container (`vessel container exec`)
    Exec(exec::ExecArgs),
    /// Show containers or images as JSON
    Inspect(inspect::InspectArgs),
    /// Wait for containers to end (`vessel container wait`)
    Wait(wait::WaitArgs),
    /// Show containers' resource use (`vessel container stats`)
    Stats(stats::StatsArgs),
    /// Copy files between a container and the host (`vessel container cp`)
    Cp(cp::CpArgs),
    /// List a running container's published ports (`vessel container port`)
    Port(port::PortArgs),
}

impl From<Shortcut> for ContainerCommand {
    fn from(shortcut: Shortcut) -> ContainerCommand {
        match shortcut {
            Shortcut::Run(args) => ContainerCommand::Run(args),
            Shortcut::Create(args) => ContainerCommand::Create(args),
            Shortcut::Start(args) => ContainerCommand::Start(args),
            Shortcut::Stop(args) => ContainerCommand::Stop(args),
            Shortcut::Kill(args) => ContainerCommand::Kill(args),
            Shortcut::Rm(args) => ContainerCommand::Rm(args),
            Shortcut::Ps(args) => ContainerCommand::Ls(args),
            Shortcut::Logs(args) => ContainerCommand::Logs(args),
            Shortcut::Exec(args) => ContainerCommand::Exec(args),
            Shortcut::Inspect(args) => ContainerCommand::Inspect(args),
            Shortcut::Wait(args) => ContainerCommand::Wait(args),
            Shortcut::Stats(args) => ContainerCommand::Stats(args),
            Shortcut::Cp(args) => ContainerCommand::Cp(args),
            Shortcut::Port(args) => ContainerCommand::Port(args),
        }
    }
}

pub fn run(command: ContainerCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        ContainerCommand::Run(args) => run::run(args, context),
        ContainerCommand::Create(args) => create::run(args, context),
        ContainerCommand::Start(args) => start::run(args, context),
        ContainerCommand::Stop(args) => stop::run(args, context),
        ContainerCommand::Kill(args) => kill::run(args, context),
        ContainerCommand::Rm(args) => rm::run(args, context),
        ContainerCommand::Ls(args) => ls::run(args, context),
        ContainerCommand::Logs(args) => logs::run(args, context),
        ContainerCommand::Exec(args) => exec::run(args, context),
        ContainerCommand::Inspect(args) => inspect::run(args, context),
        ContainerCommand::Wait(args) => wait::run(args, context),
        ContainerCommand::Stats(args) => stats::run(args, context),
        ContainerCommand::Cp(args) => cp::run(args, context),
        ContainerCommand::Port(args) => port::run(args, context),
        ContainerCommand::Prune(args) => prune::run(args, context),
        ContainerCommand::Supervise(args) => supervise::run(args, context),
    }
}

fn store(context: &Context) -> ContainerStore {
    ContainerStore::new(&context.host.root)
}

fn find(context: &Context, query: &str) -> anyhow::Result<Container> {
    Ok(store(context).find(query)?)
}

/// A single-threaded runtime without vessel's own signal handling: the commands that talk
/// to supervisors handle (or forward) signals themselves.
fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let output = runtime.block_on(future);
    // A read of our stdin may still block in a runtime thread: leave it behind.
    runtime.shutdown_background();
    Ok(output)
}

/// Starts a container's supervisor (returns once it accepts clients).
fn launch(
    context: &Context,
    container: &Container,
    wait_for_attach: bool,
) -> anyhow::Result<std::process::Child> {
    let program = std::env::current_exe()?;
    Ok(vessel_runtime::supervisor::launch(
        &program,
        &context.host,
        container,
        wait_for_attach,
        context.debug,
    )?)
}

/// Attaches our stdio to a process of a running container (its main process, or one
/// `exec` starts) until it ends. Without a terminal, SIGINT and SIGTERM sent to us are
/// forwarded to the container (docker's sig-proxy); with one, keystrokes carry them.
async fn session(
    context: &Context,
    container: &Container,
    request: Request,
    stdin: bool,
    tty: bool,
) -> anyhow::Result<SessionEnd> {
    let stream = client::connect(&context.host, container).await?;
    let io = LocalIo {
        stdin: stdin.then(tokio::io::stdin),
        stdout: tokio::io::stdout(),
        stderr: tokio::io::stderr(),
        resize: if tty { Some(terminal::watch_size()?) } else { None },
    };
    let forward = !tty && matches!(request, Request::Attach { .. });
    let session = client::session(stream, &request, io);
    tokio::pin!(session);
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let signal = tokio::select! {
            end = &mut session => return Ok(end?),
            _ = interrupt.recv() => 2,
            _ = terminate.recv() => 15,
        };
        if !forward {
            anyhow::bail!("interrupted");
        }
        let _ = client::request(&context.host, container, &Request::Signal { signal }).await;
    }
}

/// Starts a container attached to our stdio (`run`, `start -a`): its supervisor waits for
/// us before starting the main process, so no output is missed. Returns the container's
/// exit code once the supervisor has finished (recorded the end, removed a `--rm` one).
fn start_attached(
    context: &Context,
    container: &Container,
    stdin: bool,
) -> anyhow::Result<ExitCode> {
    let tty = container.config.tty;
    let mut supervisor = launch(context, container, true)?;
    // Raw mode lasts as long as the guard: keystrokes (Ctrl-C too) go to the container.
    let raw = (tty && stdin && rustix::termios::isatty(std::io::stdin()))
        .then(terminal::RawMode::enter)
        .transpose()?;
    let end = block_on(session(context, container, Request::Attach { stdin }, stdin, tty))?;
    drop(raw);
    let end = end?;
    let _ = supervisor.wait();
    Ok(exit_code(&end))
}

/// Starts a container in the background (`run -d`, `start`) and returns once its main
/// process has started: `Started`, or `Failed` with docker's code and the reason.
fn start_detached(context: &Context, container: &Container) -> anyhow::Result<Event> {
    // The supervisor outlives us; it is not our child to wait for.
    drop(launch(context, container, false)?);
    Ok(block_on(client::request(&context.host, container, &Request::Started))??)
}

/// The exit code of a session: the process's, or docker's code for a failed start.
fn exit_code(end: &SessionEnd) -> ExitCode {
    match end {
        SessionEnd::Exited { code, .. } => ExitCode::from(u8::try_from(*code).unwrap_or(u8::MAX)),
        SessionEnd::Failed { code, message } => {
            eprintln!("vessel: {message}");
            ExitCode::from(u8::try_from(*code).unwrap_or(crate::EXIT_VESSEL_FAILED))
        }
    }
}

/// Stops a running container and waits for its supervisor to be gone: through the
/// supervisor when it answers in time (it signals, kills after `timeout_secs`, powers the
/// VM off and records the end), else by killing the supervisor, whose VM dies with it.
fn stop_container(
    context: &Context,
    container: &Container,
    signal: i32,
    timeout_secs: u32,
) -> anyhow::Result<()> {
    use std::time::Duration;
    // The supervisor's own deadline, then some: past it, it is not answering.
    let patience = Duration::from_secs(u64::from(timeout_secs) + 20);
    let request = Request::Stop { signal, timeout_secs };
    let answered = block_on(async {
        tokio::time::timeout(patience, client::request(&context.host, container, &request)).await
    })?;
    let supervisor = container.state.supervisor;
    if matches!(answered, Ok(Ok(_)) | Ok(Err(client::ClientError::NotRunning(_))))
        && wait_for_exit(supervisor, Duration::from_secs(30))
    {
        return Ok(());
    }
    if let Some(supervisor) = supervisor.filter(|s| s.is_alive()) {
        eprintln!(
            "vessel: the supervisor of {} does not answer; killing it",
            container.config.name
        );
        let pid = rustix::process::Pid::from_raw(supervisor.pid as i32)
            .ok_or_else(|| anyhow::anyhow!("invalid supervisor pid {}", supervisor.pid))?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    if !wait_for_exit(supervisor, Duration::from_secs(10)) {
        anyhow::bail!("the supervisor of container {} does not end", container.config.name);
    }
    Ok(())
}

/// Waits (up to `timeout`) for a supervisor process to be gone, so that what follows
/// (`rm`, a new `start`, the caller's next command) never races its last steps.
fn wait_for_exit(supervisor: Option<ProcessRef>, timeout: std::time::Duration) -> bool {
    let Some(supervisor) = supervisor else { return true };
    let deadline = std::time::Instant::now() + timeout;
    while supervisor.is_alive() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Columns padded to their widest cell and three spaces apart, as docker prints tables.
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let widths: Vec<usize> =
        (0..N).map(|i| rows.iter().map(|row| row[i].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.push_str(cell);
            if i + 1 < N {
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        outln!("{}", line.trim_end());
    }
}
