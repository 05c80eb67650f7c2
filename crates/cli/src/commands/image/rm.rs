use crate::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names or ids of the images to remove
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove every name of an image given by id
    #[arg(short, long)]
    pub force: bool,
}

pub fn run(args: RmArgs, context: &Context) -> anyhow::Result<()> {
    let store = super::store(context)?;
    for query in &args.images {
        let entries = store.lookup(query)?;
        let by_name = query
            .parse::<vessel_oci::Reference>()
            .is_ok_and(|r| entries.iter().any(|e| e.name == r));
        // An image a container was created from stays while the container does (its next
        // start needs the image's snapshot), unless forced.
        if !args.force {
            let image = store.find(query)?;
            let containers = vessel_runtime::container::ContainerStore::new(&context.host.root);
            if let Some(user) =
                containers.list()?.into_iter().find(|c| c.config.image_id == image.id().to_string())
            {
                anyhow::bail!(
                    "image {query} is used by container {} ({}): remove the container first, or use --force",
                    user.short_id(),
                    user.config.name
                );
            }
        }
        if entries.len() > 1 && !by_name && !args.force {
            anyhow::bail!(
                "image {query} has several names ({}): remove them by name, or use --force",
                entries.iter().map(|e| e.name.familiar()).collect::<Vec<_>>().join(", ")
            );
        }
        for entry in &entries {
            if store.remove(&entry.name)?.is_some() {
                outln!("Untagged: {}", entry.name.familiar());
            }
        }
    }
    // Blobs and snapshots nothing needs any more; a concurrent pull defers this to prune.
    if let Some(report) = store.gc(false)? {
        if report.blobs > 0 {
            outln!("Deleted: {} blobs ({})", report.blobs, super::human_size(report.bytes));
        }
    }
    super::snapshots(context).gc(&store)?;
    Ok(())
}
