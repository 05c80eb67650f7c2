//! `vessel container supervise` (hidden): the process that owns a running container's VM.
//! Started by `run` and `start`; see vessel_runtime::supervisor.

use crate::Context;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use vessel_runtime::supervisor::launch::READY_LINE;

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// The runtime directory (sockets, VM directories)
    #[arg(long)]
    run: PathBuf,
    /// Start the main process only once a client has attached
    #[arg(long)]
    wait_for_attach: bool,
    /// The container's full id
    id: String,
}

pub fn run(args: SuperviseArgs, context: &Context) -> anyhow::Result<ExitCode> {
    // A session of our own: the terminal and process group of whoever started us (and
    // their Ctrl-C) are not ours.
    rustix::process::setsid()?;
    // A mount namespace of our own, private: what we mount for the VM (a single file to be
    // shared) is seen by our children only, never leaks to the host, and goes when we do.
    // Before the runtime starts any thread: unshare refuses a multithreaded caller.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    raise_open_files_limit();
    let host = vessel_runtime::Host { run: args.run, ..context.host.clone() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ready = || {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{READY_LINE}");
        let _ = stdout.flush();
    };
    let result = runtime.block_on(vessel_runtime::supervisor::run(
        &host,
        &args.id,
        args.wait_for_attach,
        ready,
    ));
    runtime.shutdown_background();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files to the hard one: the published ports' proxy holds two
/// descriptors per connection, and the usual soft limit (1024) would run out under load and
/// take the DNS relays and the control socket down with it. The hard limit is left alone
/// (raising it needs CAP_SYS_RESOURCE); the proxy sizes its own limits from what this gives.
/// A failure is only logged: the supervisor works with the limit it has.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // None is unlimited, which Linux never allows for open files (fs.nr_open caps it).
    let Some(hard) = limit.maximum else { return };
    if limit.current.is_some_and(|soft| soft >= hard) {
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
        Ok(()) => tracing::debug!(soft = ?limit.current, hard, "raised the open files limit"),
        Err(error) => {
            tracing::warn!(soft = ?limit.current, hard, %error, "cannot raise the open files limit")
        }
    }
}
