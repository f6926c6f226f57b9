//! `dedup2d serve`: the HTTP API. On the embedded backend it also runs the
//! jobs, in one process; on Redis it admits and enqueues, and `dedup2d work`
//! processes run them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::app::{App, Backing, now};
use crate::config::Config;
use crate::runner::{self, Runners};

/// How often finished jobs past their TTL are removed and gauges refreshed.
const UPKEEP_EVERY: Duration = Duration::from_secs(15);

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    refuse_open_on_network(&config, config.listen)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    run_on(listener, config, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 first).
pub async fn run_on(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    refuse_open_on_network(&config, address)?;
    let grace = config.worker_shutdown_grace;
    let app = App::open(config).await?;
    let embedded = matches!(app.backing(), Backing::Embedded(_));
    tracing::info!(
        message = "dedup2d serving",
        %address,
        backend = if embedded { "embedded" } else { "redis" },
        data_dir = %app.config.data_dir.display(),
        tenants = if app.config.api_keys.is_empty() { "local (no API keys)".to_string() } else { app.config.api_keys.len().to_string() },
    );
    let mut tasks = vec![
        tokio::spawn(upkeep(app.clone(), UPKEEP_EVERY, shutdown.clone())),
        tokio::spawn(follow_library(app.clone(), shutdown.clone())),
    ];
    if embedded {
        let runners = Runners {
            count: app.config.async_max_concurrency,
            once: false,
        };
        tasks.push(tokio::spawn(runner::run(app.clone(), runners, shutdown.clone())));
        tasks.push(tokio::spawn(deliver_callbacks(app.clone(), shutdown.clone())));
    }
    api::serve(listener, app.clone(), shutdown.clone(), grace).await;
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!(message = "dedup2d stopped");
    Ok(())
}

/// Without keys every request is the one local tenant, which is only safe
/// where nobody else can connect.
fn refuse_open_on_network(config: &Config, address: std::net::SocketAddr) -> anyhow::Result<()> {
    if config.api_keys.is_empty() && !address.ip().is_loopback() {
        bail!(
            "refusing to serve {address} without API keys: anyone who can reach it would read and write the library. \
             Set DEDUP2D_API_KEYS=key1,key2 (or api_keys in config/dedup2d.toml), or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// Sends ended jobs' callbacks; runs wherever runners run.
pub(crate) async fn deliver_callbacks(app: Arc<App>, shutdown: CancellationToken) {
    crate::callback::deliver(app.outbox.clone(), app.callbacks.clone(), shutdown).await;
}

/// Keeps this process's library indexes in step with other processes'
/// writes (a no-op on the embedded backend, where there are none).
pub(crate) async fn follow_library(app: Arc<App>, shutdown: CancellationToken) {
    app.library.follow(shutdown).await;
}

/// Expires finished jobs (embedded) and refreshes the gauges that no event
/// updates: queue depth and Redis round-trip time.
pub(crate) async fn upkeep(app: Arc<App>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match app.jobs.expire(now()).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(message = "expired finished jobs", expired),
            Err(error) => tracing::warn!(message = "cannot expire jobs", %error),
        }
        if let Backing::Redis { redis, .. } = app.backing()
            && let Err(error) = redis.ping().await
        {
            tracing::warn!(message = "redis does not answer", %error);
        }
        api::update_store_gauges(&app).await;
        crate::telemetry::metrics_handle().run_upkeep();
    }
}
