use crate::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A root filesystem tarball (plain, gzip or zstd), or - for standard input
    pub file: PathBuf,
    /// Name of the new image
    pub name: String,
    /// No snapshot messages
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: ImportArgs, context: &Context) -> anyhow::Result<()> {
    let name: vessel_oci::Reference = args.name.parse()?;
    let store = super::store(context)?;
    let id = if args.file.as_os_str() == "-" {
        vessel_oci::archive::import(&store, std::io::stdin().lock(), &name)?
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", args.file.display()))?;
        vessel_oci::archive::import(&store, file, &name)?
    };
    super::snapshot(context, &store, &name.to_string(), args.quiet)?;
    outln!("{id}");
    Ok(())
}
