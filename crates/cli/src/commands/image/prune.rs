use crate::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct PruneArgs {}

pub fn run(_args: PruneArgs, context: &Context) -> anyhow::Result<()> {
    let store = super::store(context)?;
    let report = store.gc(true)?.unwrap_or_default();
    let snapshots = super::snapshots(context).gc(&store)?;
    outln!(
        "Deleted {} blobs and {snapshots} snapshots, reclaimed {}",
        report.blobs,
        super::human_size(report.bytes)
    );
    Ok(())
}
