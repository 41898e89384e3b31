//! `switchyard-control`: the control-plane server. See `switchyard_controlplane::server`.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = switchyard_controlplane::server::ServerArgs::parse();
    match switchyard_controlplane::server::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
