use crate::commands::block_on;
use crate::commands::image::RegistryArgs;
use crate::Context;
use anyhow::Context as _;
use clap::Args;
use std::io::BufRead;
use vessel_oci::auth::Credentials;
use vessel_oci::registry::Client;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry (`host[:port]`; default docker.io)
    pub server: Option<String>,
    #[arg(short, long)]
    pub username: String,
    /// Password (prefer --password-stdin: this one shows in the process list)
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: LoginArgs, context: &Context) -> anyhow::Result<()> {
    let server = super::normalize(args.server.as_deref().unwrap_or("docker.io"));
    let password = match (&args.password, args.password_stdin) {
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("cannot read the password")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        _ => anyhow::bail!("give the password with --password-stdin (or --password)"),
    };
    // Check the credentials before saving them: a throwaway file holds them meanwhile.
    let dir = tempfile::tempdir()?;
    let probe = Credentials { file: dir.path().join("auth.json"), docker: None };
    probe.store(&server, &args.username, &password)?;
    let opts = args.registry.options(context, &server);
    let report = crate::commands::image::quiet_reporter();
    block_on(async {
        let client = Client::connect(&server, &opts, &probe, &report).await?;
        client.check_login().await
    })??;
    super::super::image::credentials(context).store(&server, &args.username, &password)?;
    println!("Login succeeded: {server}");
    Ok(())
}
