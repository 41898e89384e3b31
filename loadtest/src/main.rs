//! `switchyard-loadtest`: CLI entry point (argument parsing and dispatch only).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard_loadtest::cli::{self, CeilingArgs, MockArgs, RunArgs};

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
    /// Run a load-test scenario (exit code 1 if an SLO fails, 2 on errors).
    Run(RunArgs),
    /// Measure the load generator's own ceiling against the mock.
    Ceiling(CeilingArgs),
    /// Measure config propagation: apply returning → every edge serving it.
    Propagation(switchyard_loadtest::propagation::PropagationArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(a) => a.threads,
        Command::Ceiling(a) => a.threads,
        Command::Mock(_) | Command::Propagation(_) => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = threads {
        builder.worker_threads(t.max(1));
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    let result = match cli.command {
        Command::Mock(args) => rt.block_on(cli::run_mock(args)).map(|()| cli::EXIT_OK),
        Command::Run(args) => rt.block_on(cli::run_run(args)),
        Command::Ceiling(args) => rt.block_on(cli::run_ceiling(args)),
        Command::Propagation(args) => rt.block_on(switchyard_loadtest::propagation::run_cli(args)),
    };
    // Do not wait for stray tasks (e.g. pooled connections) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
