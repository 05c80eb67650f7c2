//! `vessel image …` and the docker-style shortcuts (`pull push images rmi tag`): thin
//! adapters over vessel-oci (store, registry) and vessel-image (snapshots).

/// `println!` that stops quietly when the reader went away (`vessel images | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod import;
mod inspect;
mod load;
mod ls;
mod progress;
mod prune;
pub mod pull;
mod push;
mod rm;
mod save;
mod tag;

pub use import::ImportArgs;
pub use inspect::{inspect_json, InspectArgs};
pub use load::LoadArgs;
pub use ls::LsArgs;
pub use prune::PruneArgs;
pub use pull::PullArgs;
pub use push::PushArgs;
pub use rm::RmArgs;
pub use save::SaveArgs;
pub use tag::TagArgs;

use crate::Context;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vessel_image::snapshot::Snapshots;
use vessel_oci::auth::Credentials;
use vessel_oci::image::Platform;
use vessel_oci::registry::Options;
use vessel_oci::Store;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove images
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Give an image another name
    Tag(TagArgs),
    /// Show an image's config, layers, size and root filesystem snapshot as JSON
    Inspect(InspectArgs),
    /// Remove blobs and snapshots no image needs
    Prune(PruneArgs),
    /// Write images to an archive (OCI layout and docker-archive in one tarball)
    Save(SaveArgs),
    /// Read images from an OCI archive or a docker-archive (`docker save`) tarball
    Load(LoadArgs),
    /// Make a one-layer image from a root filesystem tarball
    Import(ImportArgs),
}

pub fn run(command: ImageCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Pull(args) => pull::run(args, context),
        ImageCommand::Push(args) => push::run(args, context),
        ImageCommand::Ls(args) => ls::run(args, context),
        ImageCommand::Rm(args) => rm::run(args, context),
        ImageCommand::Tag(args) => tag::run(args, context),
        ImageCommand::Inspect(args) => inspect::run(args, context),
        ImageCommand::Prune(args) => prune::run(args, context),
        ImageCommand::Save(args) => save::run(args, context),
        ImageCommand::Load(args) => load::run(args, context),
        ImageCommand::Import(args) => import::run(args, context),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Flags of every command that talks to a registry.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP for this registry (loopback registries always may)
    #[arg(long)]
    pub insecure: bool,
    /// Directory of `<registry>/*.crt` CA certificates (besides <root>/certs.d and /etc/docker/certs.d)
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn options(&self, context: &Context, registry: &str) -> Options {
        let mut opts = Options::default();
        if self.insecure {
            opts.insecure.push(registry.to_string());
        }
        opts.certs_dirs.insert(0, context.host.root.join("certs.d"));
        if let Some(dir) = &self.certs_dir {
            opts.certs_dirs.insert(0, dir.clone());
        }
        opts
    }
}

pub fn store(context: &Context) -> anyhow::Result<Store> {
    let dir = context.host.root.join("images");
    Store::open(&dir).with_context(|| format!("cannot open the image store in {}", dir.display()))
}

pub fn snapshots(context: &Context) -> Snapshots {
    Snapshots::new(&context.host.root)
}

pub fn credentials(context: &Context) -> Credentials {
    Credentials::new(&context.host.root)
}

pub fn platform(value: Option<&str>) -> anyhow::Result<Platform> {
    Ok(match value {
        Some(p) => p.parse()?,
        None => Platform::host(),
    })
}

/// Writes the snapshot of the image named `name`, reporting on stderr.
pub fn snapshot(
    context: &Context,
    store: &Store,
    query: &str,
    quiet: bool,
) -> anyhow::Result<PathBuf> {
    let image = store.find(query)?;
    let started = std::time::Instant::now();
    let (path, written) = snapshots(context).ensure(store, &image, &mut |_| {})?;
    if written && !quiet {
        eprintln!(
            "snapshot {} written in {:.2}s",
            vessel_image::snapshot::Snapshots::key(&image).get(..12).unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(path)
}

/// `1.2MB`, as docker prints sizes (decimal units).
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}{}", units[unit]).replace(".000", "")
    }
}

/// A reporter that only warns about plain HTTP.
pub fn quiet_reporter() -> vessel_oci::registry::Reporter {
    progress::reporter(true, "")
}
