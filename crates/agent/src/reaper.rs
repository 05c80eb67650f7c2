//! PID 1 adopts every orphan; it must reap them or they stay zombies forever. Processes the
//! agent started are registered first, and their exit status goes to their waiters.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended, as a shell reports it: `code` is 128 + signal when killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub signal: i32,
}

type Waiters = HashMap<i32, watch::Sender<Option<Exit>>>;
static WAITERS: LazyLock<Mutex<Waiters>> = LazyLock::new(Default::default);

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

/// Watches `pid`'s exit. Call right after fork, before the runtime polls anything else: the
/// reaper runs on the same thread, so it cannot reap the process first.
pub fn register(pid: Pid) -> watch::Receiver<Option<Exit>> {
    let (sender, receiver) = watch::channel(None);
    WAITERS.lock().unwrap_or_else(|poison| poison.into_inner()).insert(pid.as_raw(), sender);
    receiver
}

fn reap_all() {
    loop {
        let exit = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit { code, signal: 0 }),
            Ok(WaitStatus::Signaled(pid, signal, _core)) => {
                (pid, Exit { code: 128 + signal as i32, signal: signal as i32 })
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let (pid, exit) = exit;
        let waiter =
            WAITERS.lock().unwrap_or_else(|poison| poison.into_inner()).remove(&pid.as_raw());
        if let Some(waiter) = waiter {
            let _ = waiter.send(Some(exit));
        }
    }
}
