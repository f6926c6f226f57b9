//! The in-process job runner of embedded mode: a fixed number of loops claim
//! pending jobs from the [`JobStore`](crate::jobs::JobStore), run their
//! search, and record exactly one outcome.
//!
//! A job ends `completed`, `failed` (bad input, or `timeout` past the job
//! timeout) or `canceled` (the API already wrote that; the runner just stops).
//! On shutdown the runners stop claiming, give running jobs the grace period,
//! then hand them back to pending so the next start runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::{App, now};
use crate::jobs::{Claim, Claimed, Outcome, Status};
use crate::search;
use crate::store::FileRef;
use crate::telemetry as t;

/// How often an idle runner looks for work it was not woken for.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let loops: Vec<_> = (0..app.config.async_max_concurrency)
        .map(|slot| tokio::spawn(claim_loop(app.clone(), shutdown.clone(), slot)))
        .collect();
    for handle in loops {
        let _ = handle.await;
    }
}

async fn claim_loop(app: Arc<App>, shutdown: CancellationToken, slot: usize) {
    while !shutdown.is_cancelled() {
        match app.jobs.claim(now(), app.config.max_deliveries).await {
            Ok(Claim::Run(job)) => run_claimed(&app, job, &shutdown).await,
            Ok(Claim::Failed {
                job_id,
                file_ref,
                error,
            }) => {
                tracing::warn!(message = "job failed before it ran", %job_id, %error);
                metrics::counter!(t::JOBS_TOTAL, "status" => Status::Failed.as_str()).increment(1);
                if let Some(file_ref) = file_ref {
                    remove_upload(&app, &job_id, &file_ref).await;
                }
            }
            Ok(Claim::Empty) => {
                tokio::select! {
                    _ = app.job_admitted.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(error) => {
                tracing::warn!(message = "cannot claim jobs", slot, %error);
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }
}

enum Ending {
    Finished(Outcome),
    Canceled,
    HandedBack,
}

async fn run_claimed(app: &App, job: Claimed, shutdown: &CancellationToken) {
    let started = Instant::now();
    let cancel = app.track_running(&job.job_id);
    // A cancel that landed between the claim and the line above found no
    // signal to fire; the store has it.
    if let Ok(Some(current)) = app.jobs.get(&job.job_id).await
        && current.status != Status::InProgress
    {
        cancel.cancel();
    }
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(app.config.worker_shutdown_grace).await;
    };
    let ending = tokio::select! {
        outcome = tokio::time::timeout(app.config.async_job_timeout, execute(app, &job)) => Ending::Finished(match outcome {
            Ok(Ok(result)) => Outcome::Completed(result),
            Ok(Err(error)) => Outcome::Failed(format!("{error:#}")),
            Err(_) => Outcome::Failed("timeout".to_string()),
        }),
        _ = cancel.cancelled() => Ending::Canceled,
        _ = grace_over => Ending::HandedBack,
    };
    app.untrack_running(&job.job_id);
    match ending {
        Ending::Finished(outcome) => record(app, &job, outcome, started).await,
        Ending::Canceled => tracing::info!(message = "job canceled while running", job_id = %job.job_id),
        Ending::HandedBack => match app.jobs.hand_back(&job).await {
            Ok(()) => tracing::info!(message = "job handed back at shutdown", job_id = %job.job_id),
            Err(error) => {
                tracing::warn!(message = "job not handed back; the next start recovers it", job_id = %job.job_id, %error)
            }
        },
    }
}

async fn execute(app: &App, job: &Claimed) -> anyhow::Result<serde_json::Value> {
    if !app.config.job_delay.is_zero() {
        tokio::time::sleep(app.config.job_delay).await;
    }
    let payload = &job.payload;
    let bytes = app
        .files
        .get(&payload.file_ref)
        .await
        .context("cannot read the uploaded file")?;
    let (query, fingerprint_ms) = search::query(app, bytes.clone()).await?;
    let result = search::run(
        app,
        &payload.tenant_id,
        &query,
        search::Source {
            bytes: &bytes,
            geom_json: payload.geom_json.as_ref(),
        },
        &payload.request_params,
        fingerprint_ms,
    )
    .await?;
    Ok(serde_json::to_value(result)?)
}

/// Retries, because an outcome not recorded leaves the job `in_progress`
/// until the next start.
const FINISH_ATTEMPTS: u32 = 3;

async fn record(app: &App, job: &Claimed, outcome: Outcome, started: Instant) {
    let status = match &outcome {
        Outcome::Completed(_) => Status::Completed,
        Outcome::Failed(_) => Status::Failed,
    };
    if let Outcome::Failed(error) = &outcome {
        tracing::warn!(message = "job failed", job_id = %job.job_id, %error);
    }
    for attempt in 1..=FINISH_ATTEMPTS {
        match app.jobs.finish(job, outcome.clone(), now()).await {
            Ok(true) => {
                metrics::counter!(t::JOBS_TOTAL, "status" => status.as_str()).increment(1);
                metrics::histogram!(t::JOB_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
                if status == Status::Completed {
                    metrics::counter!(t::JOBS_COMPLETED_TOTAL).increment(1);
                }
                remove_upload(app, &job.job_id, &job.payload.file_ref).await;
                return;
            }
            Ok(false) => {
                tracing::info!(message = "job was canceled before its outcome was recorded", job_id = %job.job_id);
                return;
            }
            Err(error) => {
                tracing::warn!(message = "outcome not recorded", job_id = %job.job_id, attempt, %error);
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(message = "outcome lost; the job runs again after the next start", job_id = %job.job_id);
}

async fn remove_upload(app: &App, job_id: &str, file_ref: &FileRef) {
    if !app.config.file_storage_cleanup_on_finish {
        return;
    }
    if let Err(error) = app.files.delete(file_ref).await {
        tracing::warn!(message = "finished job's upload stays behind", job_id, %error);
    }
}
