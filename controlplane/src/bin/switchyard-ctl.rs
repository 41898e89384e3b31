//! `switchyard-ctl`: the operator CLI. See `switchyard_controlplane::cli`.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = switchyard_controlplane::cli::CtlArgs::parse();
    switchyard_controlplane::cli::run(args).await
}
