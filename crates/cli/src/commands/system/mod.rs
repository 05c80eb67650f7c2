mod check;
mod selftest;

use crate::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Say what this host has and lacks to run vessel, and how to fix each
    Check(check::CheckArgs),
    /// Boot a VM, talk to its agent, power it off, and print the timings
    Selftest(selftest::SelftestArgs),
}

pub fn run(command: SystemCommand, context: &Context) -> anyhow::Result<ExitCode> {
    match command {
        SystemCommand::Check(args) => check::run(args, context),
        SystemCommand::Selftest(args) => selftest::run(args, context),
    }
}
