//! Starting a supervisor: `vessel container supervise`, detached from the caller.

use super::SupervisorError;
use crate::container::Container;
use crate::Host;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// What a supervisor prints on stdout once its control socket accepts clients.
pub const READY_LINE: &str = "ready";

/// Starts the supervisor of `container` (the `vessel` binary at `program`) and returns once
/// its control socket accepts clients. The supervisor puts itself in a session of its own,
/// so the caller's terminal and signals never reach it; its logs go to the container's
/// `supervisor.log` (with `debug`, the guest's console too). The caller may wait for the
/// child or just leave it.
pub fn launch(
    program: &Path,
    host: &Host,
    container: &Container,
    wait_for_attach: bool,
    debug: bool,
) -> Result<Child, SupervisorError> {
    let log_path = container.supervisor_log();
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(
            |source| SupervisorError::Io { action: "open", path: log_path.clone(), source },
        )?;
    let mut command = Command::new(program);
    if debug {
        // Its debug log, with the guest's console, goes to supervisor.log.
        command.arg("--debug");
    }
    command
        .arg("--root")
        .arg(&host.root)
        .args(["container", "supervise", "--run"])
        .arg(&host.run)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if wait_for_attach {
        command.arg("--wait-for-attach");
    }
    command.arg(container.id());
    let mut child = command.spawn().map_err(|source| SupervisorError::Io {
        action: "start the supervisor",
        path: program.to_path_buf(),
        source,
    })?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    if line.trim_end() == READY_LINE {
        return Ok(child);
    }
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(SupervisorError::LaunchFailed { log: tail.join("\n") })
}
