//! Ending the VM. QEMU runs with `-no-reboot` and the kernel with `reboot=t`, so a reboot
//! request ends the VM at once; a plain power-off only halts the CPU on microvm.

use nix::sys::reboot::{reboot, RebootMode};

pub fn power_off() -> ! {
    crate::log::info(format_args!("syncing filesystems and powering off"));
    nix::unistd::sync();
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    crate::log::error(format_args!("reboot failed: {err}"));
    // PID 1 exiting panics the kernel, and `panic=-1` turns that into a reboot too.
    std::process::exit(1);
}
