//! `vessel network …`: bridges with a subnet, that containers join for an address of
//! their own, names that resolve and a way out.

use crate::Context;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::process::ExitCode;
use vessel_runtime::container::ContainerStore;
use vessel_runtime::network::{Network, NetworkError, NetworkStore, DEFAULT_NETWORK};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks as JSON, with their containers
    Inspect(NamesArgs),
    /// Remove networks no container is attached to
    #[command(alias = "remove")]
    Rm(NamesArgs),
    /// Remove every network no container is attached to
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The driver: bridge, the only one (each network is a Linux bridge)
    #[arg(short, long, default_value = "bridge", value_parser = ["bridge"])]
    driver: String,
    /// The subnet, in CIDR form (default: the first free /24 of 10.213.0.0/16)
    #[arg(long)]
    subnet: Option<vessel_net::subnet::Subnet>,
    /// No route out of the network: its containers reach each other and its DNS only; the
    /// host still reaches them (by address and -p)
    #[arg(long)]
    internal: bool,
    /// Set a label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = crate::commands::parse_label)]
    labels: Vec<(String, String)>,
    /// The network's name
    name: String,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only print ids
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct NamesArgs {
    /// Network names or ids
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation (accepted for docker's sake; vessel does not ask)
    #[arg(short, long)]
    force: bool,
}

pub fn run(command: NetworkCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let store = NetworkStore::new(&context.host.root);
    match command {
        NetworkCommand::Create(args) => {
            let _ = args.driver;
            let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
            let network = store.create(&args.name, args.subnet, args.internal, labels)?;
            println!("{}", network.id);
        }
        NetworkCommand::Ls(args) => {
            let networks = store.list()?;
            if !args.quiet {
                println!(
                    "{:<14} {:<20} {:<18} {:<10} INTERNAL",
                    "NETWORK ID", "NAME", "SUBNET", "DRIVER"
                );
            }
            for network in networks {
                if args.quiet {
                    println!("{}", &network.id[..12]);
                } else {
                    println!(
                        "{:<14} {:<20} {:<18} {:<10} {}",
                        &network.id[..12],
                        network.name,
                        network.subnet.to_string(),
                        "bridge",
                        network.internal
                    );
                }
            }
        }
        NetworkCommand::Inspect(args) => {
            let mut documents = Vec::new();
            for name in &args.names {
                documents.push(json(&store, &store.find(name)?, context)?);
            }
            println!("{}", serde_json::to_string_pretty(&documents)?);
        }
        NetworkCommand::Rm(args) => {
            // As docker: each one is tried, and any failure makes the exit code 1.
            let mut failed = false;
            for query in &args.names {
                match store.find(query).and_then(|network| store.remove(&network.name)) {
                    Ok(()) => println!("{query}"),
                    Err(err) => {
                        eprintln!("vessel: {}", vessel_runtime::error_chain(&err));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetworkCommand::Prune(args) => {
            let _ = args.force;
            println!("Deleted Networks:");
            // As docker's predefined networks, the default one stays.
            for network in store.list()?.into_iter().filter(|n| n.name != DEFAULT_NETWORK) {
                match store.remove(&network.name) {
                    Ok(()) => println!("{}", network.name),
                    Err(NetworkError::InUse { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json(
    store: &NetworkStore,
    network: &Network,
    context: &Context,
) -> anyhow::Result<serde_json::Value> {
    let containers = ContainerStore::new(&context.host.root);
    let mut attached = serde_json::Map::new();
    for lease in store.leases(network)? {
        let Ok(container) = containers.load(&lease.container) else { continue };
        let mac = container.config.network.as_ref().map(|a| a.mac_string()).unwrap_or_default();
        attached.insert(
            lease.container.clone(),
            serde_json::json!({
                "Name": container.config.name,
                "IPv4Address": format!("{}/{}", lease.ip, network.subnet.prefix_len()),
                "MacAddress": mac,
                "Running": container.is_running(),
            }),
        );
    }
    Ok(serde_json::json!({
        "Name": network.name,
        "Id": network.id,
        "Created": vessel_runtime::time::rfc3339(network.created),
        "Driver": "bridge",
        "Internal": network.internal,
        "IPAM": {"Config": [{"Subnet": network.subnet.to_string(), "Gateway": network.gateway.to_string()}]},
        "Options": {"bridge": network.bridge(), "nftables.table": network.table()},
        "Labels": network.labels,
        "Default": network.name == DEFAULT_NETWORK,
        "Containers": attached,
    }))
}
