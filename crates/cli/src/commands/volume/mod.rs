//! `vessel volume …`: named volumes, sparse ext4 disks that outlive containers.

use crate::Context;
use clap::Subcommand;
use std::collections::BTreeMap;
use std::process::ExitCode;
use vessel_runtime::volume::{Volume, VolumeStore, DEFAULT_VOLUME_SIZE};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create(CreateArgs),
    /// List volumes
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show volumes as JSON
    Inspect(NamesArgs),
    /// Remove volumes no container uses
    #[command(alias = "remove")]
    Rm(NamesArgs),
    /// Remove every volume no container uses
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Size of the volume's disk (sparse: only what is written takes space)
    #[arg(long, value_parser = crate::commands::rootfs::parse_size)]
    size: Option<u64>,
    /// Set a label (KEY=VALUE)
    #[arg(short, long = "label", value_name = "KEY=VALUE", value_parser = crate::commands::parse_label)]
    labels: Vec<(String, String)>,
    /// The volume's name (default: a generated one)
    name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only print names
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct NamesArgs {
    /// Volume names
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Also named volumes, not only anonymous ones
    #[arg(short, long)]
    all: bool,
    /// Do not ask for confirmation (accepted for docker's sake; vessel does not ask)
    #[arg(short, long)]
    force: bool,
}

pub fn run(command: VolumeCommand, context: &Context) -> anyhow::Result<ExitCode> {
    let store = VolumeStore::new(&context.host.root);
    match command {
        VolumeCommand::Create(args) => {
            let name = args.name.unwrap_or_else(vessel_runtime::container::new_id);
            let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
            let volume =
                store.create(&name, args.size.unwrap_or(DEFAULT_VOLUME_SIZE), labels, false)?;
            println!("{}", volume.name);
        }
        VolumeCommand::Ls(args) => {
            let volumes = store.list()?;
            if !args.quiet {
                println!("DRIVER   VOLUME NAME");
            }
            for volume in volumes {
                if args.quiet {
                    println!("{}", volume.name);
                } else {
                    println!("{:<8} {}", "local", volume.name);
                }
            }
        }
        VolumeCommand::Inspect(args) => {
            let mut documents = Vec::new();
            for name in &args.names {
                documents.push(json(&store.get(name)?));
            }
            println!("{}", serde_json::to_string_pretty(&documents)?);
        }
        VolumeCommand::Rm(args) => {
            for name in &args.names {
                store.remove(name)?;
                println!("{name}");
            }
        }
        VolumeCommand::Prune(args) => {
            let _ = args.force;
            println!("Deleted Volumes:");
            for volume in store.list()? {
                if (volume.anonymous || args.all) && store.users(&volume.name)?.is_empty() {
                    store.remove(&volume.name)?;
                    println!("{}", volume.name);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json(volume: &Volume) -> serde_json::Value {
    serde_json::json!({
        "Name": volume.name,
        "Driver": "local",
        "Mountpoint": volume.disk(),
        "CreatedAt": vessel_runtime::time::rfc3339(volume.created),
        "Labels": volume.labels,
        "Scope": "local",
        "Options": {"size": volume.size.to_string()},
        "Anonymous": volume.anonymous,
    })
}
