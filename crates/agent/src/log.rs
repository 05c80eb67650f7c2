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

/// `err` and its causes, "outer: inner: …", for a message that crosses to the host whole.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
