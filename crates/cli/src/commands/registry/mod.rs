//! `vessel registry login|logout`: credentials for registries, kept in `<root>/auth.json`
//! (mode 0600). docker's `~/.docker/config.json` (and its credential helpers) is read too.

mod login;
mod logout;

pub use login::LoginArgs;
pub use logout::LogoutArgs;

use crate::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Save credentials for a registry (checked against it first)
    Login(LoginArgs),
    /// Forget the credentials for a registry
    Logout(LogoutArgs),
}

pub fn run(command: RegistryCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::Login(args) => login::run(args, context)?,
        RegistryCommand::Logout(args) => logout::run(args, context)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `docker.io` for Docker Hub's many names; the server as given otherwise.
pub fn normalize(server: &str) -> String {
    let server = server.trim_start_matches("https://").trim_start_matches("http://");
    let server = server.split('/').next().unwrap_or(server);
    match server {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" | "" => "docker.io".into(),
        other => other.into(),
    }
}
