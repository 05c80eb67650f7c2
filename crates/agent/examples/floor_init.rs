//! The boot floor for benchmarks: a static init that prints its start time and powers the
//! VM off at once. `bench/boot/run` compares vessel-init's readiness against it.

use nix::sys::reboot::{reboot, RebootMode};
use nix::time::{clock_gettime, ClockId};
use std::io::Write;
use std::time::Duration;

fn main() {
    let uptime = clock_gettime(ClockId::CLOCK_BOOTTIME).map(Duration::from).unwrap_or_default();
    let _ = writeln!(std::io::stderr(), "floor-init: started at {} ms", uptime.as_millis());
    let _ = reboot(RebootMode::RB_AUTOBOOT);
}
