use crate::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub fn run(args: LsArgs, context: &Context) -> anyhow::Result<()> {
    let store = super::store(context)?;
    let images = store.images()?;
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for image in &images {
            if seen.insert(image.id().clone()) {
                outln!("{}", image.id().short());
            }
        }
        return Ok(());
    }
    match args.format {
        Format::Json => {
            let list: Vec<_> = images
                .iter()
                .map(|i| {
                    json!({
                        "Name": i.entry.name.to_string(),
                        "Repository": i.entry.name.name(),
                        "Tag": i.entry.name.tag(),
                        "Id": i.id().to_string(),
                        "Digest": i.manifest_digest.to_string(),
                        "Created": i.config.created(),
                        "Size": i.size(),
                        "Platform": format!("{}/{}", i.config.os(), i.config.architecture()),
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Table => {
            let rows: Vec<[String; 5]> = images
                .iter()
                .map(|i| {
                    [
                        i.entry.name.name(),
                        i.entry.name.tag().unwrap_or("<none>").to_string(),
                        i.id().short().to_string(),
                        i.config.created().clone().unwrap_or_default(),
                        super::human_size(i.size()),
                    ]
                })
                .collect();
            let header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"];
            let mut widths = header.map(str::len);
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.len());
                }
            }
            let line = |cells: [&str; 5]| {
                let mut out = String::new();
                for (i, cell) in cells.iter().enumerate() {
                    if i == 4 {
                        out.push_str(cell);
                    } else {
                        out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
                    }
                }
                out
            };
            outln!("{}", line(header));
            for row in &rows {
                outln!("{}", line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
            }
        }
    }
    Ok(())
}
