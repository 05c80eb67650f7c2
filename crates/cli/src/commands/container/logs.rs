//! `vessel logs`: a container's output from its log, optionally following it.

use super::{find, store};
use crate::Context;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use vessel_runtime::container::logfile::{read_from, LogEntry};

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new output until the container ends
    #[arg(short, long)]
    follow: bool,
    /// Prefix each line with its time
    #[arg(short, long)]
    timestamps: bool,
    /// Only the last N lines ("all" for everything)
    #[arg(short = 'n', long, default_value = "all")]
    tail: String,
    /// The container (name or id)
    container: String,
}

pub fn run(args: LogsArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let tail = match args.tail.as_str() {
        "all" => None,
        n => Some(n.parse::<usize>().map_err(|_| {
            anyhow::anyhow!("invalid --tail {n:?} (a number of lines, or \"all\")")
        })?),
    };
    let container = find(context, &args.container)?;
    let path = container.log_path();
    let (mut entries, mut offset) = read_from(&path, 0)?;
    if let Some(tail) = tail {
        entries.drain(..entries.len().saturating_sub(tail));
    }
    print(&entries, args.timestamps);
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        // Read the state before the log: output written before the end is never missed.
        let running = store(context).load(container.id()).is_ok_and(|c| c.is_running());
        let (entries, next) = read_from(&path, offset)?;
        print(&entries, args.timestamps);
        offset = next;
        if !running {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print(entries: &[LogEntry], timestamps: bool) {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (mut stdout, mut stderr) = (stdout.lock(), stderr.lock());
    for entry in entries {
        let out: &mut dyn Write = if entry.stream == "stderr" { &mut stderr } else { &mut stdout };
        let _ = if timestamps {
            write!(out, "{} {}", entry.time, entry.log)
        } else {
            out.write_all(entry.log.as_bytes())
        };
    }
    let _ = stdout.flush();
    let _ = stderr.flush();
}
