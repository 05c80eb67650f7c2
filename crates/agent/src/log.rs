//! Console logging. The kernel hands PID 1 `/dev/console` as stdio; the host records it.

use std::fmt::Arguments;
use std::io::Write;

pub fn info(message: Arguments<'_>) {
    write_line("", message);
}

pub fn error(message: Arguments<'_>) {
    write_line("error: ", message);
}

fn write_line(level: &str, message: Arguments<'_>) {
    // One write per line so lines from different tasks never interleave.
    let line = format!("vessel-init: {level}{message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
