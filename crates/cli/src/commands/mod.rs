//! One module per noun, one file per verb: thin adapters over vessel-runtime.

mod container;
pub mod image;
mod network;
pub mod registry;
mod rootfs;
mod system;
mod volume;

use crate::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check and test this host
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Write ext4 root filesystem images from OCI layers
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Pull, push, list, remove, save and load images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Log in to and out of registries
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Download an image from a registry (`vessel image pull`)
    Pull(image::PullArgs),
    /// Upload an image to a registry (`vessel image push`)
    Push(image::PushArgs),
    /// List images (`vessel image ls`)
    Images(image::LsArgs),
    /// Remove images (`vessel image rm`)
    Rmi(image::RmArgs),
    /// Give an image another name (`vessel image tag`)
    Tag(image::TagArgs),
    /// Create, run, list, stop and remove containers
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Create, list and remove named volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Create, list and remove networks
    #[command(subcommand)]
    Network(network::NetworkCommand),
    #[command(flatten)]
    Shortcut(container::Shortcut),
}

#[derive(Debug, Subcommand)]
pub enum RootfsCommand {
    /// Write an ext4 image from layer tarballs (or an empty journaled one)
    Create(rootfs::CreateArgs),
}

impl Command {
    /// The hidden supervisor logs its container's milestones (to its log file).
    pub fn is_supervisor(&self) -> bool {
        matches!(self, Command::Container(container::ContainerCommand::Supervise(_)))
    }
}

pub fn run(command: Command, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::System(command) => system::run(command, context),
        Command::Container(command) => container::run(command, context),
        Command::Shortcut(shortcut) => container::run(shortcut.into(), context),
        Command::Volume(command) => volume::run(command, context),
        Command::Network(command) => network::run(command, context),
        Command::Rootfs(RootfsCommand::Create(args)) => {
            rootfs::create(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(command) => image::run(command, context),
        Command::Registry(command) => registry::run(command, context),
        Command::Pull(args) => image::run(image::ImageCommand::Pull(args), context),
        Command::Push(args) => image::run(image::ImageCommand::Push(args), context),
        Command::Images(args) => image::run(image::ImageCommand::Ls(args), context),
        Command::Rmi(args) => image::run(image::ImageCommand::Rm(args), context),
        Command::Tag(args) => image::run(image::ImageCommand::Tag(args), context),
    }
}

/// `-l KEY=VALUE` (a bare KEY is an empty value, as docker takes it).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    Ok((key.to_string(), value.to_string()))
}

/// A runtime for commands that talk to VMs. Single-threaded on purpose: VM processes are
/// tied to the thread that starts them (PR_SET_PDEATHSIG), so that thread must live as long
/// as they do.
///
/// SIGINT and SIGTERM drop the future, so whatever it owns (VMs, their files) is cleaned up
/// before the process exits.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let output = runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            output = future => Ok(output),
            _ = interrupt.recv() => anyhow::bail!("interrupted"),
            _ = terminate.recv() => anyhow::bail!("terminated"),
        }
    });
    // A read of our stdin may still block in a runtime thread (a terminal never ends):
    // leave it behind rather than wait for it.
    runtime.shutdown_background();
    output
}
