use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dedup2d::cli::Cli::parse();
    match dedup2d::cli::run(cli, std::env::vars().collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dedup2d: {error:#}");
            ExitCode::FAILURE
        }
    }
}
