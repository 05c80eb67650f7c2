use crate::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry (default docker.io)
    pub server: Option<String>,
}

pub fn run(args: LogoutArgs, context: &Context) -> anyhow::Result<()> {
    let server = super::normalize(args.server.as_deref().unwrap_or("docker.io"));
    if crate::commands::image::credentials(context).remove(&server)? {
        println!("Removed login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(())
}
