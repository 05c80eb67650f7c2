use crate::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Names or ids of images
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: SaveArgs, context: &Context) -> anyhow::Result<()> {
    let store = super::store(context)?;
    let mut entries = Vec::new();
    for query in &args.images {
        let image = store.find(query)?;
        entries.push(image.entry);
    }
    match &args.output {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile::Builder::new().prefix(".vessel-save.").tempfile_in(dir)?;
            vessel_oci::archive::save(&store, &entries, tmp.as_file_mut())?;
            tmp.persist(path)?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                anyhow::bail!("refusing to write an archive to a terminal: use -o FILE or redirect the output");
            }
            vessel_oci::archive::save(&store, &entries, &mut std::io::stdout().lock())?;
        }
    }
    Ok(())
}
