use crate::Context;
use clap::Args;
use vessel_oci::Reference;

#[derive(Debug, Args)]
pub struct TagArgs {
    /// An image's name or id
    pub source: String,
    /// The new name
    pub target: String,
}

pub fn run(args: TagArgs, context: &Context) -> anyhow::Result<()> {
    let target: Reference = args.target.parse()?;
    if target.digest().is_some() {
        anyhow::bail!("a tag cannot hold a digest: {} (give name:tag)", args.target);
    }
    let store = super::store(context)?;
    let _lease = store.lease()?;
    let entry = store.lookup(&args.source)?.remove(0);
    store.set(&target, entry.descriptor)?;
    Ok(())
}
