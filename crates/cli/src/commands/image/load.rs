use crate::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this file instead of standard input
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// No snapshot messages
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: LoadArgs, context: &Context) -> anyhow::Result<()> {
    let store = super::store(context)?;
    let names = match &args.input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            vessel_oci::archive::load(&store, file)?
        }
        None => vessel_oci::archive::load(&store, std::io::stdin().lock())?,
    };
    for name in &names {
        super::snapshot(context, &store, &name.to_string(), args.quiet)?;
        outln!("Loaded image: {}", name.familiar());
    }
    Ok(())
}
