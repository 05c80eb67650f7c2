//! `vessel ps` / `vessel container ls`.

use super::store;
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::container::Container;
use vessel_runtime::time::rfc3339;

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Show all containers (default: running ones)
    #[arg(short, long)]
    all: bool,
    /// Only print ids
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate ids and commands
    #[arg(long)]
    no_trunc: bool,
    /// Output format: table (default) or json (one object per line, as docker's)
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

pub fn run(args: LsArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let containers: Vec<Container> =
        store(context).list()?.into_iter().filter(|c| args.all || c.is_running()).collect();
    if args.quiet {
        for container in &containers {
            outln!("{}", if args.no_trunc { container.id() } else { container.short_id() });
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.format == "json" {
        for container in &containers {
            outln!("{}", serde_json::to_string(&json(container))?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows =
        vec![["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
            .map(String::from)];
    for container in &containers {
        let command = quoted_command(container);
        rows.push([
            if args.no_trunc { container.id() } else { container.short_id() }.to_string(),
            container.config.image.clone(),
            if args.no_trunc { command } else { truncate(&command, 20) },
            format!(
                "{} ago",
                vessel_runtime::time::human_duration(vessel_runtime::time::since(
                    container.config.created
                ),)
            ),
            container.status_text(),
            ports_text(container),
            container.config.name.clone(),
        ]);
    }
    super::print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// docker's PORTS column: `0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp`.
fn ports_text(container: &Container) -> String {
    if !container.is_running() {
        return String::new();
    }
    ports_column(&container.state.ports)
}

/// Consecutive mappings (host and container ports both one up, same address and protocol)
/// are shown as one range, as docker does: `0.0.0.0:8000-8002->80-82/tcp`.
fn ports_column(ports: &[vessel_net::ports::PortMapping]) -> String {
    let mut runs: Vec<(vessel_net::ports::PortMapping, u16)> = Vec::new();
    for port in ports {
        match runs.last_mut() {
            Some((first, length))
                if first.host_ip == port.host_ip
                    && first.protocol == port.protocol
                    && u32::from(first.host_port) + u32::from(*length)
                        == u32::from(port.host_port)
                    && u32::from(first.container_port) + u32::from(*length)
                        == u32::from(port.container_port) =>
            {
                *length += 1
            }
            _ => runs.push((*port, 1)),
        }
    }
    let range = |first: u16, length: u16| match length {
        1 => first.to_string(),
        _ => format!("{first}-{}", first + length - 1),
    };
    let texts: Vec<String> = runs
        .iter()
        .map(|(first, length)| {
            let host = range(first.host_port, *length);
            let container = range(first.container_port, *length);
            format!("{}:{host}->{container}/{}", first.host_ip, first.protocol)
        })
        .collect();
    texts.join(", ")
}

/// `"sh -c 'echo hi'"`, as docker shows a command.
fn quoted_command(container: &Container) -> String {
    format!("\"{}\"", container.config.args.join(" "))
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max - 1).collect();
    format!("{kept}…")
}

/// docker's `ps --format json` fields.
fn json(container: &Container) -> serde_json::Value {
    let labels: Vec<String> =
        container.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    serde_json::json!({
        "ID": container.short_id(),
        "Names": container.config.name,
        "Image": container.config.image,
        "Command": quoted_command(container),
        "CreatedAt": rfc3339(container.config.created),
        "RunningFor": vessel_runtime::time::human_duration(
            vessel_runtime::time::since(container.config.created),
        ),
        "State": container.state.status.to_string(),
        "Status": container.status_text(),
        "Labels": labels.join(","),
        "Ports": ports_text(container),
        "Mounts": "",
        "Networks": container.config.network.as_ref().map(|a| a.network.clone()).unwrap_or_default(),
        "Size": "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ports_show_as_one_range() {
        let mut ports = vessel_net::ports::parse_publish("8000-8002:80-82").unwrap();
        ports.extend(vessel_net::ports::parse_publish("127.0.0.1:5353:53/udp").unwrap());
        ports.extend(vessel_net::ports::parse_publish("9000:90").unwrap());
        assert_eq!(
            ports_column(&ports),
            "0.0.0.0:8000-8002->80-82/tcp, 127.0.0.1:5353->53/udp, 0.0.0.0:9000->90/tcp"
        );
    }
}
