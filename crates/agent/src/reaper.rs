//! PID 1 adopts every orphan; it must reap them or they stay zombies forever.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// Starts reaping on every SIGCHLD. Must run inside the runtime.
pub fn start() -> std::io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            reap_all();
        }
    });
    Ok(())
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
