//! The command line: the argument grammar, and dispatch of each subcommand to
//! its `run`. Values become config overrides here; defaults live in `config`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "dedup2d",
    version,
    about = "Finds duplicate and near-duplicate 2D drawings in each tenant's library"
)]
pub struct Cli {
    /// Config file (default: config/dedup2d.toml when present; env DEDUP2D_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (embedded mode: queue, files and database in-process).
    Serve(ServeArgs),
    /// Run queue workers for the distributed mode (Redis).
    Work(PendingArgs),
    /// Remove uploads that no live job needs.
    Gc(PendingArgs),
    /// Rewrite queued job payloads during a rolling upgrade.
    MigratePayloads(PendingArgs),
    /// Print the effective configuration, each value with its source.
    Config(ServeArgs),
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on (env DEDUP2D_LISTEN; default 127.0.0.1:8000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the database, library and uploads (env DEDUP2D_DATA_DIR; default ./data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
}

/// Subcommands whose issue has not landed take any arguments and say so.
#[derive(Debug, Args)]
pub struct PendingArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

impl ServeArgs {
    fn overrides(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some(listen) = &self.listen {
            out.push(("listen", "--listen", listen.clone()));
        }
        if let Some(dir) = &self.data_dir {
            out.push(("data_dir", "--data-dir", dir.clone()));
        }
        out
    }
}

fn load_config(cli_config: Option<PathBuf>, env: HashMap<String, String>, args: &ServeArgs) -> anyhow::Result<Config> {
    let file = cli_config.or_else(|| env.get("DEDUP2D_CONFIG").map(PathBuf::from));
    let config = Config::load(&Sources {
        file,
        env,
        cli: args.overrides(),
    })?;
    Ok(config)
}

/// Runs one command to completion; the binary's whole life.
pub fn run(cli: Cli, env: HashMap<String, String>) -> anyhow::Result<()> {
    let (args, serve) = match cli.command {
        Command::Serve(args) => (args, true),
        Command::Config(args) => (args, false),
        Command::Work(_) => bail!(
            "`dedup2d work` is not built yet: the Redis workers arrive with issue #4; `dedup2d serve` runs jobs in-process"
        ),
        Command::Gc(_) => bail!("`dedup2d gc` is not built yet: it arrives with issue #5"),
        Command::MigratePayloads(_) => bail!("`dedup2d migrate-payloads` is not built yet: it arrives with issue #5"),
    };
    let config = load_config(cli.config, env, &args)?;
    if !serve {
        print!("{}", config.describe());
        return Ok(());
    }
    crate::telemetry::init_logging(&config);
    crate::telemetry::metrics_handle();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::shutdown::on_signal(shutdown.clone()));
        crate::serve::run(config, shutdown).await
    })
}
