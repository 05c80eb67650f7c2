use crate::Context;
use clap::Args;
use serde_json::json;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Names or ids of images
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(args: InspectArgs, context: &Context) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for query in &args.images {
        out.push(inspect_json(context, query)?);
    }
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// One image as `inspect` shows it.
pub fn inspect_json(context: &Context, query: &str) -> anyhow::Result<serde_json::Value> {
    let store = super::store(context)?;
    let snapshots = super::snapshots(context);
    let all = store.entries()?;
    {
        let image = store.find(query)?;
        let names: Vec<_> = all
            .iter()
            .filter(|e| e.digest() == image.manifest_digest)
            .map(|e| e.name.clone())
            .collect();
        let snapshot = snapshots.path(&image);
        Ok(json!({
            "Id": image.id().to_string(),
            "RepoTags": names.iter().filter(|n| n.tag().is_some()).map(|n| n.familiar()).collect::<Vec<_>>(),
            "RepoDigests": names.iter().map(|n| format!("{}@{}", n.name(), image.manifest_digest)).collect::<Vec<_>>(),
            "Created": image.config.created(),
            "Os": image.config.os().to_string(),
            "Architecture": image.config.architecture().to_string(),
            "Variant": image.config.variant(),
            "Config": image.config.config(),
            "RootFS": {"Type": "layers", "Layers": image.diff_ids()},
            "Size": image.size(),
            "Manifest": {
                "Digest": image.manifest_digest.to_string(),
                "MediaType": image.manifest.media_type,
                "Layers": image.manifest.layers.iter().map(|l| json!({
                    "Digest": l.digest.to_string(),
                    "MediaType": l.media_type,
                    "Size": l.size,
                })).collect::<Vec<_>>(),
            },
            "Snapshot": {
                "Key": vessel_image::snapshot::Snapshots::key(&image),
                "Path": snapshot,
                "Exists": snapshot.is_file(),
            },
        }))
    }
}
