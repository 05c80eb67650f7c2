use crate::Context;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Output format: table or json
    #[arg(long, default_value = "table")]
    format: String,
}

pub fn run(args: CheckArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let items = vessel_runtime::check::run(&context.host);
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&items)?),
        "table" => {
            for item in &items {
                let mark = if item.ok { "ok     " } else { "MISSING" };
                println!("{mark} {:<20} {}", item.name, item.detail);
                if let Some(fix) = &item.fix {
                    println!("        {:<20} fix: {fix}", "");
                }
            }
        }
        other => anyhow::bail!("unknown format {other:?} (use table or json)"),
    }
    let all_ok = items.iter().all(|item| item.ok);
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
