//! `dedup2d work`: the queue workers of the distributed mode. Claims jobs
//! from Redis with [`runner`], serves `/health`, `/ready` and `/metrics` on
//! the metrics address, and on SIGTERM hands back what the grace period
//! could not finish. `--requeue-dead` and `--list-dead` are the operator's
//! tools for the dead-letter list.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::app::{App, Backing};
use crate::config::{Backend, Config};
use crate::runner::{self, Runners};

/// Workers refresh queue gauges more often than `serve`: their `/metrics`
/// is the one alerts on queue depth read.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Run what is queued now, then exit.
    pub once: bool,
    /// Put every dead-lettered job back in the queue, print their ids, exit.
    pub requeue_dead: bool,
    /// Print the dead-lettered job ids, exit.
    pub list_dead: bool,
}

pub async fn run(config: Config, options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.async_backend != Backend::Redis {
        bail!(
            "`dedup2d work` runs jobs from Redis: set DEDUP2D_ASYNC_BACKEND=redis and DEDUP2D_REDIS_URL \
             (with the embedded backend, `dedup2d serve` runs jobs itself)"
        );
    }
    let app = App::open(config).await?;
    let Backing::Redis { jobs, .. } = app.backing() else {
        unreachable!("the backend was checked above")
    };
    if options.list_dead {
        for job_id in jobs.dead_letters().await? {
            println!("{job_id}");
        }
        return Ok(());
    }
    if options.requeue_dead {
        let requeued = jobs.requeue_dead().await?;
        for job_id in &requeued {
            println!("{job_id}");
        }
        eprintln!("dedup2d: {} dead-lettered jobs requeued", requeued.len());
        return Ok(());
    }
    let listen = app.config.worker_metrics_listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (DEDUP2D_WORKER_METRICS_LISTEN, --metrics-listen)"))?;
    work(app, listener, options.once, shutdown).await
}

/// Runs workers until `shutdown` (or, with `once`, until the queue is empty).
pub async fn work(app: Arc<App>, metrics: TcpListener, once: bool, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(
        message = "dedup2d working",
        metrics = %metrics.local_addr()?,
        max_jobs = app.config.worker_max_jobs,
        once,
    );
    // The side tasks stop when the runners have: through a shutdown's grace
    // period running jobs still search an index that follows the library,
    // and /metrics still answers. `once` ends by itself.
    let side = CancellationToken::new();
    let tasks = [
        tokio::spawn(api::serve_operations(metrics, app.clone(), side.clone())),
        tokio::spawn(crate::serve::upkeep(app.clone(), UPKEEP_EVERY, side.clone())),
        tokio::spawn(crate::serve::follow_library(app.clone(), side.clone())),
        tokio::spawn(crate::serve::deliver_callbacks(app.clone(), side.clone())),
    ];
    match app.library.preload().await {
        Ok(loaded) => tracing::info!(
            message = "library indexes built",
            tenants = loaded.tenants,
            drawings = loaded.drawings
        ),
        Err(error) => tracing::warn!(message = "library indexes load at each tenant's first job", %error),
    }
    let runners = Runners {
        count: app.config.worker_max_jobs,
        once,
    };
    runner::run(app.clone(), runners, shutdown).await;
    side.cancel();
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!(message = "dedup2d worker stopped");
    Ok(())
}
