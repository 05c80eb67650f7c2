use super::{progress, RegistryArgs};
use crate::commands::block_on;
use crate::Context;
use clap::Args;
use vessel_oci::registry::Client;
use vessel_oci::Reference;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Image to push; it goes to the registry its name says
    pub name: String,
    /// Push under this name instead (as `vessel tag NAME DESTINATION && vessel push DESTINATION`)
    pub destination: Option<String>,
    /// No progress output
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: PushArgs, context: &Context) -> anyhow::Result<()> {
    let store = super::store(context)?;
    let image = store.find(&args.name)?;
    let target: Reference = match &args.destination {
        Some(d) => d.parse()?,
        None => image.entry.name.clone(),
    };
    // Other names of this image on the same registry: its blobs may be mounted from there.
    let mount_from: Vec<Reference> = store
        .entries()?
        .into_iter()
        .filter(|e| e.digest() == image.manifest_digest)
        .map(|e| e.name)
        .collect();
    let opts = args.registry.options(context, target.registry());
    let report = progress::reporter(args.quiet, "upload");
    let credentials = super::credentials(context);
    let digest = block_on(async {
        let client = Client::connect(target.registry(), &opts, &credentials, &report).await?;
        client.push(&store, &image, &target, &mount_from, &report).await
    })??;
    outln!("{}@{digest}", target.name());
    Ok(())
}
