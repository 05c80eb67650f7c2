//! `vessel inspect`: containers (or images) as docker-style JSON, or one field of each
//! with `--format '{{.State.Status}}'`.

use super::store;
use crate::Context;
use std::process::ExitCode;
use vessel_runtime::container::{Container, StoreError};
use vessel_runtime::time::rfc3339;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Print only these fields, as a Go-template path: '{{.State.ExitCode}}'
    #[arg(short, long)]
    format: Option<String>,
    /// Containers or images (names or ids)
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(args: InspectArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let mut documents = Vec::new();
    for query in &args.names {
        match store(context).find(query) {
            Ok(container) => documents.push(json(&container, &context.host.root)),
            Err(StoreError::NotFound(_)) => {
                let image = crate::commands::image::inspect_json(context, query)
                    .map_err(|_| anyhow::anyhow!("no such container or image: {query}"))?;
                documents.push(image);
            }
            Err(err) => return Err(err.into()),
        }
    }
    match args.format {
        Some(format) => {
            for document in &documents {
                outln!("{}", render(&format, document));
            }
        }
        None => outln!("{}", serde_json::to_string_pretty(&documents)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces each `{{.A.B}}` with that field (strings bare, anything else as JSON).
fn render(format: &str, document: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut rest = format;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else { break };
        let path = rest[start + 2..start + end].trim();
        let mut value = document;
        for key in path.trim_start_matches('.').split('.').filter(|k| !k.is_empty()) {
            value = value.get(key).unwrap_or(&serde_json::Value::Null);
        }
        match value {
            serde_json::Value::String(text) => out.push_str(text),
            serde_json::Value::Null => out.push_str("<no value>"),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// docker's `NetworkSettings`: the address on the container's network (kept while it
/// exists) and the ports bound while it runs.
fn network_settings(container: &Container, root: &std::path::Path) -> serde_json::Value {
    let ports =
        if container.is_running() { port_map(&container.state.ports) } else { Default::default() };
    let Some(attachment) = &container.config.network else {
        return serde_json::json!({"IPAddress": "", "Gateway": "", "MacAddress": "", "Ports": ports, "Networks": {}});
    };
    let network = vessel_runtime::network::NetworkStore::new(root).get(&attachment.network).ok();
    let gateway = network.as_ref().map(|n| n.gateway.to_string()).unwrap_or_default();
    let prefix = network.as_ref().map_or(0, |n| n.subnet.prefix_len());
    let endpoint = serde_json::json!({
        "IPAddress": attachment.ip.to_string(),
        "IPPrefixLen": prefix,
        "Gateway": gateway,
        "MacAddress": attachment.mac_string(),
        "Aliases": attachment.aliases,
        "NetworkID": network.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
    });
    serde_json::json!({
        "IPAddress": attachment.ip.to_string(),
        "IPPrefixLen": prefix,
        "Gateway": gateway,
        "MacAddress": attachment.mac_string(),
        "Ports": ports,
        "Networks": { attachment.network.clone(): endpoint },
    })
}

/// `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`.
fn port_map(
    ports: &[vessel_net::ports::PortMapping],
) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    for port in ports {
        let key = format!("{}/{}", port.container_port, port.protocol);
        // docker shows an unset host port (any free one) as "".
        let host_port =
            if port.host_port == 0 { String::new() } else { port.host_port.to_string() };
        let binding =
            serde_json::json!({"HostIp": port.host_ip.to_string(), "HostPort": host_port});
        match map.entry(key).or_insert_with(|| serde_json::Value::Array(Vec::new())) {
            serde_json::Value::Array(list) => list.push(binding),
            _ => unreachable!("inserted as an array"),
        }
    }
    map
}

/// docker's `inspect` document, with the fields vessel has.
fn json(container: &Container, root: &std::path::Path) -> serde_json::Value {
    let config = &container.config;
    let state = &container.state;
    let time = |nanos: Option<u64>| nanos.map_or("0001-01-01T00:00:00Z".to_string(), rfc3339);
    serde_json::json!({
        "Id": config.id,
        "Created": rfc3339(config.created),
        "Path": config.args.first(),
        "Args": config.args.get(1..).unwrap_or_default(),
        "State": {
            "Status": state.status.to_string(),
            "Running": container.is_running(),
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": state.supervisor.map_or(0, |s| s.pid),
            "ExitCode": state.exit_code.unwrap_or(0),
            "Error": state.error.clone().unwrap_or_default(),
            "StartedAt": time(state.started_at),
            "FinishedAt": time(state.finished_at),
        },
        "Image": config.image_id,
        "Name": format!("/{}", config.name),
        "LogPath": container.log_path(),
        "Mounts": config.mounts.iter().map(|mount| {
            use vessel_runtime::container::MountSource;
            let (kind, name, source) = match &mount.source {
                MountSource::Volume { name, .. } => ("volume", name.clone(), String::new()),
                MountSource::Bind { path, .. } => ("bind", String::new(), path.display().to_string()),
                MountSource::Tmpfs { options } => ("tmpfs", String::new(), options.clone()),
            };
            serde_json::json!({
                "Type": kind,
                "Name": name,
                "Source": source,
                "Destination": mount.target,
                "RW": !mount.read_only,
            })
        }).collect::<Vec<_>>(),
        "NetworkSettings": network_settings(container, root),
        "HostConfig": {
            "Memory": u64::from(config.memory_mib) << 20,
            "NetworkMode": config.network.as_ref().map_or("none", |a| a.network.as_str()),
            "Dns": config.dns,
            "ExtraHosts": config.extra_hosts.iter().map(|(name, ip)| format!("{name}:{ip}")).collect::<Vec<_>>(),
            "PortBindings": port_map(&config.publish),
            "NanoCpus": (config.cpus * 1e9).round() as u64,
            "ReadonlyRootfs": config.read_only,
            "AutoRemove": config.auto_remove,
            "Init": config.init,
        },
        "Config": {
            "Hostname": config.hostname,
            "User": config.user,
            "Tty": config.tty,
            "OpenStdin": config.open_stdin,
            "Env": config.env,
            "Cmd": config.args,
            "Image": config.image,
            "WorkingDir": config.workdir,
            "Labels": config.labels,
            "StopSignal": config.stop_signal,
            "StopTimeout": config.stop_timeout,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn templates_pick_fields() {
        let document = serde_json::json!({"State": {"Status": "running", "ExitCode": 3}});
        assert_eq!(super::render("{{.State.Status}}", &document), "running");
        assert_eq!(super::render("code={{ .State.ExitCode }}!", &document), "code=3!");
        assert_eq!(super::render("{{.Nope}}", &document), "<no value>");
    }
}
