use super::{progress, RegistryArgs};
use crate::commands::block_on;
use crate::Context;
use clap::Args;
use vessel_oci::registry::Client;
use vessel_oci::Reference;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image to pull (`alpine`, `host:5000/name:tag`, `name@sha256:…`)
    pub name: String,
    /// Platform to pull from a multi-platform image (default: this host's)
    #[arg(long)]
    pub platform: Option<String>,
    /// Layers downloaded at once
    #[arg(long, default_value_t = 3)]
    pub max_concurrent_downloads: usize,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not write the root filesystem snapshot now (it is written on first use)
    #[arg(long)]
    pub no_snapshot: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: PullArgs, context: &Context) -> anyhow::Result<()> {
    let reference = pull(args, context)?;
    outln!("{reference}");
    Ok(())
}

/// Pulls (and snapshots) the image; progress goes to stderr, nothing to stdout.
pub fn pull(args: PullArgs, context: &Context) -> anyhow::Result<Reference> {
    let reference: Reference = args.name.parse()?;
    let store = super::store(context)?;
    let mut opts = args.registry.options(context, reference.registry());
    opts.platform = super::platform(args.platform.as_deref())?;
    opts.max_concurrent_downloads = args.max_concurrent_downloads.max(1);
    let report = progress::reporter(args.quiet, "download");
    let credentials = super::credentials(context);
    let pulled = block_on(async {
        let client = Client::connect(reference.registry(), &opts, &credentials, &report).await?;
        client.pull(&store, &reference, &opts, &report).await
    })??;
    if !args.quiet {
        eprintln!("digest: {}", pulled.digest);
    }
    if !args.no_snapshot {
        // An image whose layers cannot be written is not kept.
        if let Err(err) = super::snapshot(context, &store, &reference.to_string(), args.quiet) {
            pulled.undo(&store)?;
            let _ = store.gc(false);
            return Err(err);
        }
    }
    Ok(pulled.reference)
}
