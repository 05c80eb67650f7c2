//! `vessel rm`: remove containers (running ones only with `-f`, which kills them first).

use super::{block_on, find, store, wait_for_exit};
use crate::Context;
use std::process::ExitCode;
use std::time::Duration;
use vessel_runtime::container::StoreError;
use vessel_runtime::supervisor::client;
use vessel_runtime::supervisor::protocol::Request;

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Kill and remove running containers
    #[arg(short, long)]
    force: bool,
    /// Remove the container's anonymous volumes too
    #[arg(short, long)]
    volumes: bool,
    /// Containers (names or ids)
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(args: RmArgs, context: &Context) -> anyhow::Result<ExitCode> {
    for query in &args.containers {
        let container = find(context, query)?;
        if container.is_running() {
            if !args.force {
                anyhow::bail!(
                    "cannot remove container {query}: it is running (stop it first, or use -f)"
                );
            }
            kill(context, &container)?;
        }
        // Whatever a killed supervisor left: its socket and VM directory.
        let _ = std::fs::remove_file(context.host.control_socket(container.id()));
        let _ = std::fs::remove_dir_all(context.host.vm_run_dir(container.short_id()));
        vessel_runtime::supervisor::remove_staged_files(&context.host, container.id());
        match store(context).remove(&container) {
            Ok(()) if args.volumes => {
                vessel_runtime::volume::remove_anonymous(&context.host.root, &container)
            }
            // Removed by its own supervisor (`--rm`) meanwhile.
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        outln!("{query}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Kills a running container and waits for its supervisor to be gone: through the
/// supervisor when it answers (it powers the VM off and records the end), else by killing
/// the supervisor, whose VM dies with it.
fn kill(context: &Context, container: &vessel_runtime::container::Container) -> anyhow::Result<()> {
    let request = Request::Stop { signal: 9, timeout_secs: 0 };
    let answered = block_on(client::request(&context.host, container, &request))?.is_ok();
    let supervisor = container.state.supervisor;
    if answered && wait_for_exit(supervisor, Duration::from_secs(30)) {
        return Ok(());
    }
    if let Some(supervisor) = supervisor.filter(|s| s.is_alive()) {
        let pid = rustix::process::Pid::from_raw(supervisor.pid as i32)
            .ok_or_else(|| anyhow::anyhow!("invalid supervisor pid {}", supervisor.pid))?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    if !wait_for_exit(supervisor, Duration::from_secs(10)) {
        anyhow::bail!("the supervisor of container {} does not end", container.config.name);
    }
    Ok(())
}
