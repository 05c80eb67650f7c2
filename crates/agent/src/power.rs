//! Ending the VM. QEMU runs with `-no-reboot` and the kernel with `reboot=t`, so a reboot
//! request ends the VM at once; a plain power-off only halts the CPU on microvm.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub fn power_off() -> ! {
    crate::log::info(format_args!("syncing filesystems and powering off"));
    stop_all_processes();
    nix::unistd::sync();
    unmount_all();
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    crate::log::error(format_args!("reboot failed: {err}"));
    // PID 1 exiting panics the kernel, and `panic=-1` turns that into a reboot too.
    std::process::exit(1);
}

/// Kills every other process and reaps them (briefly), so no container's mount namespace
/// keeps a disk busy.
fn stop_all_processes() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(_) => return, // ECHILD: none left
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(2)),
            Ok(_) => {}
        }
    }
}

/// Unmounts everything mounted after boot, newest first, so read-write ext4 disks end with a
/// clean journal (a later read-only mount of a dirty one fails). What is busy is remounted
/// read-only instead, which also settles its journal.
fn unmount_all() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    let targets: Vec<&str> = mounts.lines().filter_map(|line| line.split(' ').nth(1)).collect();
    for target in targets.iter().rev() {
        if KERNEL_MOUNT_POINTS.contains(target) || target.starts_with("/sys/") {
            continue;
        }
        if umount2(*target, MntFlags::empty()).is_err() {
            let _ = mount(
                None::<&str>,
                *target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
}

/// Mounts that hold no disk data; unmounting them would only break what still runs.
const KERNEL_MOUNT_POINTS: &[&str] = &["/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"];
