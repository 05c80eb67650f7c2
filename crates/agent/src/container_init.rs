//! docker's `--init`: vessel-init as a container's PID 1. It starts the command as its only
//! child, forwards the signals it gets to it, reaps every zombie (orphans come to PID 1) and
//! exits with the command's status. The agent starts it from its own binary through a file
//! descriptor, so it never appears in the container's filesystem.

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{execv, fork, getpid, isatty, setpgid, tcsetpgrp, ForkResult, Pid};
use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;

/// argv[1] of vessel-init in this mode: `vessel-init --container-init PROGRAM -- ARGV...`.
pub const FLAG: &CStr = c"--container-init";

/// Signals the init keeps: those the kernel raises for a fault of its own, the terminal
/// stops, and the two no process can catch.
const NOT_FORWARDED: [Signal; 11] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGKILL,
    Signal::SIGSTOP,
];

/// Runs the init with vessel-init's arguments; never returns.
pub fn main(args: &[OsString]) -> ! {
    let code = match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("vessel-init: {message}");
            127
        }
    };
    std::process::exit(code)
}

fn run(args: &[OsString]) -> Result<i32, String> {
    let (program, argv) = parse(args)?;
    let mut forwarded = SigSet::all();
    for signal in NOT_FORWARDED {
        forwarded.remove(signal);
    }
    // Blocked before the fork, so no signal is lost in between: sigwait takes them. A
    // PID 1 drops signals it has no handler for, but never blocked ones.
    let previous = forwarded
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|errno| format!("cannot block signals: {errno}"))?;
    if std::process::id() != 1 {
        // Not the container's first process: its orphans still come here to be reaped.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    // SAFETY: the init is single-threaded; the child only sets itself up and execs.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Its own process group, in the terminal's foreground: terminal signals (^C)
            // reach the command once, not through the init as well. tcsetpgrp from a
            // background group works while SIGTTOU is blocked, as it still is here.
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            if isatty(std::io::stdin()).unwrap_or(false) {
                let _ = tcsetpgrp(std::io::stdin(), getpid());
            }
            let _ = previous.thread_set_mask();
            let Err(errno) = execv(&program, &argv);
            eprintln!("vessel-init: cannot run {}: {}", program.to_string_lossy(), errno.desc());
            std::process::exit(if errno == Errno::ENOENT { 127 } else { 126 });
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = setpgid(child, child);
            loop {
                let signal = forwarded
                    .wait()
                    .map_err(|errno| format!("cannot wait for signals: {errno}"))?;
                if signal == Signal::SIGCHLD {
                    if let Some(code) = reap(child) {
                        return Ok(code);
                    }
                } else {
                    let _ = kill(child, signal);
                }
            }
        }
        Err(errno) => Err(format!("cannot fork: {errno}")),
    }
}

/// `PROGRAM -- ARGV...` after the flag.
fn parse(args: &[OsString]) -> Result<(CString, Vec<CString>), String> {
    let cstring = |arg: &OsString| {
        CString::new(arg.as_bytes()).map_err(|_| "an argument holds a NUL byte".to_string())
    };
    match args {
        [_, _, program, separator, argv @ ..] if separator == "--" && !argv.is_empty() => {
            Ok((cstring(program)?, argv.iter().map(cstring).collect::<Result<_, _>>()?))
        }
        _ => Err(format!("usage: vessel-init {} PROGRAM -- ARGV...", FLAG.to_string_lossy())),
    }
}

/// Reaps every child that has ended; returns the command's status once it is among them,
/// as a shell reports it (128 + signal when killed).
fn reap(command: Pid) -> Option<i32> {
    let mut status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => status = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                status = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return status,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use std::ffi::OsString;

    #[test]
    fn arguments_follow_the_separator() {
        let args: Vec<OsString> =
            ["vessel-init", "--container-init", "/bin/sh", "--", "sh", "-c", "true"]
                .into_iter()
                .map(OsString::from)
                .collect();
        let (program, argv) = parse(&args).unwrap();
        assert_eq!(program.to_str().unwrap(), "/bin/sh");
        assert_eq!(argv.len(), 3);
        assert!(parse(&args[..4]).is_err());
    }
}
