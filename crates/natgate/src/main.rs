//! The `natgate` program. Subcommands come later; for now it only answers
//! `--help` and `--version`.

use clap::Parser;

/// natgate: a user-space NAT gateway.
#[derive(Debug, Parser)]
#[command(name = "natgate", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
