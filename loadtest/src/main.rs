//! `switchyard-loadtest`: CLI entry point (argument parsing and dispatch only).

use clap::{Parser, Subcommand};
use switchyard_loadtest::cli::{self, MockArgs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard load-test harness.
#[derive(Parser, Debug)]
#[command(name = "switchyard-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the mock OpenAI/Anthropic provider (with fault injection).
    Mock(MockArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Mock(args) => rt.block_on(cli::run_mock(args)),
    }
}
