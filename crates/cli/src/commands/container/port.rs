//! `vessel port`: a running container's published ports, as bound.

use crate::Context;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PortArgs {
    /// The container (name or id)
    container: String,
    /// Only this container port: PORT[/tcp|udp]
    port: Option<String>,
}

pub fn run(args: PortArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let container = super::find(context, &args.container)?;
    let wanted = match &args.port {
        Some(spec) => {
            let (port, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
            let port: u16 = port.parse().map_err(|_| {
                anyhow::anyhow!("{spec:?} is not a port (give PORT or PORT/tcp|udp, e.g. 80/tcp)")
            })?;
            Some((port, protocol.parse::<vessel_net::ports::Protocol>()?))
        }
        None => None,
    };
    if !container.is_running() {
        anyhow::bail!("container {} is not running", container.config.name);
    }
    let mut found = false;
    for port in &container.state.ports {
        if wanted.is_some_and(|wanted| wanted != (port.container_port, port.protocol)) {
            continue;
        }
        found = true;
        let host = format!("{}:{}", port.host_ip, port.host_port);
        match wanted {
            Some(_) => outln!("{host}"),
            None => outln!("{}/{} -> {host}", port.container_port, port.protocol),
        }
    }
    if let (Some(spec), false) = (&args.port, found) {
        anyhow::bail!("no public port {spec} published for {}", container.config.name);
    }
    Ok(ExitCode::SUCCESS)
}
