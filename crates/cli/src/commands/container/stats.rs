//! `vessel stats`: CPU, memory, block I/O and process counts of running containers.

use super::{block_on, find, store};
use crate::commands::image::human_size;
use crate::Context;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vessel_runtime::container::Container;
use vessel_runtime::supervisor::client;
use vessel_runtime::supervisor::protocol::{Event, Request, Stats};

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print one sample and exit
    #[arg(long)]
    no_stream: bool,
    /// Output format: table (default) or json (one object per line)
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
    /// Containers (default: every running one)
    containers: Vec<String>,
}

/// Time between the two samples a CPU percentage is computed from.
const INTERVAL: Duration = Duration::from_millis(500);

pub fn run(args: StatsArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let containers: Vec<Container> = if args.containers.is_empty() {
        store(context).list()?.into_iter().filter(Container::is_running).collect()
    } else {
        args.containers.iter().map(|query| find(context, query)).collect::<Result<_, _>>()?
    };
    let mut previous = sample(context, &containers);
    loop {
        std::thread::sleep(INTERVAL);
        let current = sample(context, &containers);
        if !args.no_stream && args.format == "table" {
            // Clear the screen and print from the top, as docker does.
            print!("\x1b[2J\x1b[H");
        }
        print_rows(&containers, &previous, &current, &args.format);
        if args.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
        previous = current;
    }
}

type Sample = Option<(Instant, Stats)>;

fn sample(context: &Context, containers: &[Container]) -> Vec<Sample> {
    containers
        .iter()
        .map(|container| {
            match block_on(client::request(&context.host, container, &Request::Stats)) {
                Ok(Ok(Event::Stats(stats))) => Some((Instant::now(), stats)),
                _ => None,
            }
        })
        .collect()
}

fn print_rows(containers: &[Container], before: &[Sample], after: &[Sample], format: &str) {
    let mut rows =
        vec![["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "BLOCK I/O", "PIDS"]
            .map(String::from)];
    for ((container, before), after) in containers.iter().zip(before).zip(after) {
        let (cpu, memory, limit, io, pids) = match (before, after) {
            (Some((t0, s0)), Some((t1, s1))) => {
                let wall = t1.duration_since(*t0).as_micros().max(1) as f64;
                let cpu = s1.cpu_usage_usec.saturating_sub(s0.cpu_usage_usec) as f64 / wall * 100.0;
                let limit = if s1.memory_limit_bytes > 0 {
                    s1.memory_limit_bytes
                } else {
                    u64::from(container.config.memory_mib) << 20
                };
                (
                    cpu,
                    s1.memory_usage_bytes,
                    limit,
                    (s1.block_read_bytes, s1.block_write_bytes),
                    s1.pids,
                )
            }
            _ => (0.0, 0, 0, (0, 0), 0),
        };
        let memory_percent = if limit > 0 { memory as f64 / limit as f64 * 100.0 } else { 0.0 };
        let row = [
            container.short_id().to_string(),
            container.config.name.clone(),
            format!("{cpu:.2}%"),
            format!("{} / {}", binary_size(memory), binary_size(limit)),
            format!("{memory_percent:.2}%"),
            format!("{} / {}", human_size(io.0), human_size(io.1)),
            pids.to_string(),
        ];
        if format == "json" {
            let keys = ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "BlockIO", "PIDs"];
            let object: serde_json::Map<String, serde_json::Value> =
                keys.iter().zip(&row).map(|(k, v)| (k.to_string(), v.clone().into())).collect();
            outln!("{}", serde_json::Value::Object(object));
        } else {
            rows.push(row);
        }
    }
    if format == "table" {
        super::print_table(&rows);
    }
}

/// Memory as docker's stats shows it: `1.5MiB`, `256MiB`.
fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[unit])
}
