//! The command line: the argument grammar, and dispatch of each subcommand to
//! its `run`. Values become config overrides here; defaults live in `config`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Sources};
use crate::engine::{Mode, SearchParams};

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
    /// Run queue workers for the distributed mode (DEDUP2D_ASYNC_BACKEND=redis).
    Work(WorkArgs),
    /// Remove uploads that no live job needs; dry run unless --execute.
    #[command(long_about = GC_ABOUT)]
    Gc(GcArgs),
    /// Give queued inline-only job payloads a file_ref (seed 003's upgrade); dry run unless --execute.
    MigratePayloads(MigrateArgs),
    /// Print the effective configuration, each value with its source.
    Config(ServeArgs),
    /// Measure the precision and recall of the engine's verdicts, per transform and threshold.
    #[command(long_about = CALIBRATE_ABOUT)]
    Calibrate(CalibrateArgs),
    /// Add a folder of drawings to a tenant's library through a running server's API.
    #[command(long_about = IMPORT_ABOUT)]
    Import(ImportArgs),
}

const IMPORT_ABOUT: &str = "\
Add a folder of drawings to a tenant's library through a running server's API, several uploads at
a time, with a progress bar on a terminal.

Files with a drawing extension (dxf, png, jpg, jpeg, tif, tiff, bmp, webp, gif; any case) are
considered; other files are counted as skipped, hidden files and folders are ignored. A drawing whose
bytes (sha256) are already in the library, or earlier in the folder, is skipped, so running the
same import again adds nothing. Uploads the server asks to repeat later (408, 429, 503, honouring
Retry-After) and refused connections are tried up to 5 times.

The summary (added / skipped / failed, each failure with its reason) goes to stdout. The exit code
is non-zero when a file failed, the server could not be reached or refused the key, or Ctrl-C
stopped the run (uploads in flight finish; a second Ctrl-C quits at once).";

/// `dedup2d import`: see [`crate::import`].
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Folder of drawings.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Base URL of a running dedup2d, e.g. http://127.0.0.1:8000 (plain HTTP; the API prefix is added).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// API key of the tenant whose library receives the drawings (env DEDUP2D_API_KEY; none for a keyless server).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Also import the folder's subfolders (symlinked folders are not followed).
    #[arg(long)]
    pub recursive: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Show what would be uploaded; upload nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl ImportArgs {
    /// The key comes from the flag, else from the environment map, so the
    /// process environment is read in `main` only.
    pub fn options(&self, env: &HashMap<String, String>) -> crate::import::Options {
        let from_env = env.get("DEDUP2D_API_KEY").filter(|k| !k.is_empty());
        crate::import::Options {
            dir: self.dir.clone(),
            url: self.url.clone(),
            api_key: self.api_key.clone().or_else(|| from_env.cloned()),
            parallel: usize::from(self.parallel),
            recursive: self.recursive,
            dry_run: self.dry_run,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

const CALIBRATE_ABOUT: &str = "\
Measure how often the engine's verdicts are right, so thresholds can be chosen from data.

The library folder is read and indexed as the service does. Each query runs a real search (mode
--mode, default balanced) and every match is judged: right when it is the query's source, a file
whose render is pixel-identical to it, or the source turned or mirrored (unless --twins-distinct).
Prints duplicate and similar precision and recall, per transform and per threshold, and the
lowest thresholds that reach --target-precision (duplicates) and --target-similar-precision.

Queries: --generate turns each library drawing's render into resize 1/2 and 1/4, JPEG q75 and
q30, lines x3, 20% padding, rotation 90/180/270 and mirror (must stay duplicates), plus an added
text label and a 3% crop (must stay duplicate or similar); --queries DIR --truth FILE.csv (rows
`query,expected`, names relative to the two folders; an empty `expected` must match nothing)
measures given files. Progress goes to stderr.";

/// `dedup2d calibrate`: see [`crate::calibrate`].
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Folder of library drawings (DXF, PNG, JPEG, TIFF, BMP, WebP, GIF; not recursive).
    #[arg(long, value_name = "DIR")]
    pub library: PathBuf,
    /// Make the transformed queries of every library drawing.
    #[arg(long)]
    pub generate: bool,
    /// Folder of query files, with --truth.
    #[arg(long, value_name = "DIR", requires = "truth")]
    pub queries: Option<PathBuf>,
    /// CSV of `query,expected` rows for --queries.
    #[arg(long, value_name = "FILE.csv", requires = "queries")]
    pub truth: Option<PathBuf>,
    /// Use only the first N library files, by name.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Search mode of the queries.
    #[arg(long, default_value = "balanced", value_parser = ["fast", "balanced", "precise"])]
    pub mode: String,
    /// Similarity at or above which a match is a duplicate.
    #[arg(long, default_value_t = 0.95, value_name = "T")]
    pub duplicate_threshold: f64,
    /// Similarity at or above which a match is similar.
    #[arg(long, default_value_t = 0.80, value_name = "T")]
    pub similar_threshold: f64,
    /// Precision the recommended duplicate threshold must reach.
    #[arg(long, default_value_t = 0.99, value_name = "P")]
    pub target_precision: f64,
    /// Precision the recommended similar threshold must reach.
    #[arg(long, default_value_t = 0.90, value_name = "P")]
    pub target_similar_precision: f64,
    /// Worker threads (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Count a match that is the query's source turned or mirrored (another file) as wrong (default: right).
    #[arg(long)]
    pub twins_distinct: bool,
}

impl CalibrateArgs {
    pub fn options(&self) -> crate::calibrate::Options {
        let defaults = crate::calibrate::Options::default();
        crate::calibrate::Options {
            library: self.library.clone(),
            generate: self.generate,
            queries: self.queries.clone().zip(self.truth.clone()),
            limit: self.limit,
            params: SearchParams {
                mode: match self.mode.as_str() {
                    "fast" => Mode::Fast,
                    "precise" => Mode::Precise,
                    _ => Mode::Balanced,
                },
                duplicate_threshold: self.duplicate_threshold,
                similar_threshold: self.similar_threshold,
                ..SearchParams::default()
            },
            target_precision: self.target_precision,
            target_similar_precision: self.target_similar_precision,
            threads: self.threads.unwrap_or(defaults.threads).max(1),
            progress: true,
            twins_distinct: self.twins_distinct,
        }
    }
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

/// `dedup2d work`: see [`crate::work`].
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Address of /metrics, /health and /ready (env DEDUP2D_WORKER_METRICS_LISTEN; default 127.0.0.1:9108).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Run the jobs queued now, then exit (seed 002).
    #[arg(long)]
    pub once: bool,
    /// Put the dead-lettered jobs back in the queue, print their ids, and exit.
    #[arg(long, conflicts_with_all = ["once", "list_dead"])]
    pub requeue_dead: bool,
    /// Print the ids of dead-lettered jobs (failed after DEDUP2D_MAX_DELIVERIES runs) and exit.
    #[arg(long, conflicts_with = "once")]
    pub list_dead: bool,
}

impl WorkArgs {
    fn options(&self) -> crate::work::Options {
        crate::work::Options {
            once: self.once,
            requeue_dead: self.requeue_dead,
            list_dead: self.list_dead,
        }
    }

    fn overrides(&self) -> Vec<(&'static str, &'static str, String)> {
        self.metrics_listen
            .iter()
            .map(|addr| ("worker_metrics_listen", "--metrics-listen", addr.clone()))
            .collect()
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Write the changes (without it, only report what would change).
    #[arg(long)]
    pub execute: bool,
    /// Report only (the default; accepted for scripts that say so).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Also remove the inline file_bytes_b64 of payloads that have a file_ref.
    #[arg(long)]
    pub drop_b64: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

const GC_ABOUT: &str = "\
Remove uploads that no live job needs. Dry run unless --execute.

An upload (`<job_id>/<uuid hex>_<name>` under DEDUP2D_FILE_STORAGE_DIR or the S3 prefix) is deleted
when no pending or running job references it (read from the job store: the embedded database of
DEDUP2D_DATA_DIR, or Redis; on Redis dead-lettered jobs keep theirs for --requeue-dead) and it is
older than the retention. Anything else under the uploads root is left alone. On local storage,
half-written temporary files and empty job directories older than the retention go too.

Safe while `serve` or workers run. Each run is recorded in the job store, so the API and workers
export dedup2d_gc_*. The summary goes to stdout (a progress line to stderr on a terminal). The exit
code is non-zero when storage or the job store cannot be reached, a delete failed, or the run was
interrupted.";

/// `dedup2d gc`: see [`crate::gc`].
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Delete (without it, only report what would be deleted).
    #[arg(long)]
    pub execute: bool,
    /// Report only (the default; accepted for scripts that say so).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    /// Keep unreferenced uploads younger than this (env DEDUP2D_FILE_STORAGE_RETENTION_SECONDS; default 3600; 0 = off).
    #[arg(long, value_name = "N")]
    pub retention_seconds: Option<u64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl GcArgs {
    fn overrides(&self) -> Vec<(&'static str, &'static str, String)> {
        self.retention_seconds
            .iter()
            .map(|n| ("file_storage_retention_seconds", "--retention-seconds", n.to_string()))
            .collect()
    }
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

fn load_config(
    cli_config: Option<PathBuf>,
    env: HashMap<String, String>,
    cli: Vec<(&'static str, &'static str, String)>,
) -> anyhow::Result<Config> {
    let file = cli_config.or_else(|| env.get("DEDUP2D_CONFIG").map(PathBuf::from));
    Ok(Config::load(&Sources { file, env, cli })?)
}

/// Runs one command to completion; the binary's whole life.
pub fn run(cli: Cli, env: HashMap<String, String>) -> anyhow::Result<()> {
    let (args, serve) = match cli.command {
        Command::Serve(args) => (args, true),
        Command::Config(args) => (args, false),
        Command::Work(args) => {
            let config = load_config(cli.config, env, args.overrides())?;
            return service(&config, |shutdown| {
                crate::work::run(config.clone(), args.options(), shutdown)
            });
        }
        Command::Gc(args) => {
            let config = load_config(cli.config, env, args.overrides())?;
            return gc(config, &args);
        }
        Command::MigratePayloads(args) => {
            let config = load_config(cli.config, env, Vec::new())?;
            return migrate_payloads(config, &args);
        }
        Command::Calibrate(args) => return crate::calibrate::run(&args.options(), args.json),
        Command::Import(args) => return import(&args.options(&env), args.json),
    };
    let config = load_config(cli.config, env, args.overrides())?;
    if !serve {
        print!("{}", config.describe());
        return Ok(());
    }
    service(&config, |shutdown| crate::serve::run(config.clone(), shutdown))
}

/// Runs a long-lived command with logs, metrics, and SIGTERM/Ctrl-C wired
/// to its shutdown token.
fn service<F>(config: &Config, command: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::metrics_handle();
    tool(config, command)
}

/// Runs a one-shot maintenance command with logs, stopping it early on
/// SIGTERM/Ctrl-C (it then reports what it did).
fn tool<T, F>(config: &Config, command: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    crate::telemetry::init_logging(config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::shutdown::on_signal(shutdown.clone()));
        command(shutdown).await
    })
}

fn gc(config: Config, args: &GcArgs) -> anyhow::Result<()> {
    let options = crate::gc::Options {
        execute: args.execute,
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let run = tool(&config, |shutdown| crate::gc::run(config.clone(), options, shutdown))?;
    let Some(run) = run else {
        if args.json {
            println!("{{\"off\":true}}");
        }
        eprintln!("dedup2d: file_storage_retention_seconds is 0, which turns gc off; nothing was scanned");
        return Ok(());
    };
    if args.json {
        println!("{}", serde_json::to_string(&run)?);
    } else {
        print!("{}", run.render());
    }
    if run.failed > 0 {
        bail!("{} uploads could not be deleted, or the listing failed", run.failed);
    }
    if run.interrupted {
        bail!("gc was interrupted; the run is recorded as far as it went");
    }
    if let Some(error) = &run.record_error {
        bail!("the run could not be recorded in the job store: {error}");
    }
    Ok(())
}

fn migrate_payloads(config: Config, args: &MigrateArgs) -> anyhow::Result<()> {
    let options = crate::migrate::Options {
        execute: args.execute,
        drop_b64: args.drop_b64,
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let summary = tool(&config, |shutdown| {
        crate::migrate::run(config.clone(), options, shutdown)
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    if !summary.failed.is_empty() {
        bail!("{} payloads could not be migrated", summary.failed.len());
    }
    Ok(())
}

fn import(options: &crate::import::Options, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(quit_on_second_interrupt(shutdown.clone()));
        crate::import::command(options, json, shutdown).await
    })
}

/// The first Ctrl-C lets uploads in flight finish and prints the partial
/// summary; a second one means the user will not wait for that.
async fn quit_on_second_interrupt(shutdown: CancellationToken) {
    crate::shutdown::on_signal(shutdown).await;
    eprintln!("dedup2d: stopping; uploads in flight finish (Ctrl-C again to quit now)");
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("dedup2d: interrupted again; quitting without a summary");
        std::process::exit(130);
    }
}
