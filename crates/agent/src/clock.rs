//! The guest's wall clock.

use std::io;
use std::time::Duration;

/// Sets the wall clock to `since_epoch` (Unix time).
pub fn set(since_epoch: Duration) -> io::Result<()> {
    let time = nix::sys::time::TimeSpec::from_duration(since_epoch);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, time).map_err(io::Error::from)
}
