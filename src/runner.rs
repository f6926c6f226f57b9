//! Job runners: a fixed number of loops claim pending jobs from the
//! [`JobStore`](crate::jobs::JobStore), run their search, and record exactly
//! one outcome. `serve` runs them in embedded mode, `dedup2d work` in the
//! distributed mode; the code is the same.
//!
//! A job ends `completed`, `failed` (bad input, or `timeout` past the job
//! timeout) or `canceled` (the API already wrote that; the runner just stops).
//! While it runs, a heartbeat extends its lease every
//! [`HEARTBEAT_EVERY`](crate::jobs::HEARTBEAT_EVERY) and learns of a cancel
//! or of a lost lease (another worker owns the job now): either way the
//! runner stops and writes nothing. Transient errors (Redis, storage) are
//! retried with exponential backoff and jitter; a run that still meets one
//! goes back to the queue as a counted delivery. On shutdown the runners stop
//! claiming, give running jobs the grace period, then hand them back so
//! another worker starts them at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::app::{App, now};
use crate::jobs::{Claim, Claimed, Delivery, HEARTBEAT_EVERY, JobError, Lease, Outcome, Payload, Status};
use crate::library::LibraryError;
use crate::search;
use crate::store::{FileRef, StoreError};
use crate::telemetry as t;
use crate::vision::VisionError;

/// How often an idle runner looks for work it was not woken for: in the
/// distributed mode jobs are admitted by other processes, which cannot wake
/// it, so this bounds how long a job waits on an idle worker.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How many runners, and whether they stop when the queue is empty.
#[derive(Debug, Clone, Copy)]
pub struct Runners {
    pub count: usize,
    /// `dedup2d work --once`: run what is queued, then return.
    pub once: bool,
}

pub async fn run(app: Arc<App>, runners: Runners, shutdown: CancellationToken) {
    metrics::gauge!(t::RUNNERS).increment(runners.count as f64);
    let loops: Vec<_> = (0..runners.count)
        .map(|slot| tokio::spawn(claim_loop(app.clone(), shutdown.clone(), slot, runners.once)))
        .collect();
    for handle in loops {
        let _ = handle.await;
    }
    metrics::gauge!(t::RUNNERS).decrement(runners.count as f64);
}

async fn claim_loop(app: Arc<App>, shutdown: CancellationToken, slot: usize, once: bool) {
    let mut outage = Backoff::new();
    while !shutdown.is_cancelled() {
        match app.jobs.claim(now(), app.config.max_deliveries).await {
            Ok(Claim::Run(job)) => {
                // There may be more: an idle sibling looks now, not at its next poll.
                app.job_admitted.notify_one();
                if run_claimed(&app, job, &shutdown).await == Run::MetAnOutage {
                    // The job went back to the head of the queue: claiming it
                    // again at once would spend its deliveries in seconds.
                    pause(outage.next(), &shutdown).await;
                } else {
                    outage.reset();
                }
            }
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
            Ok(Claim::Empty) if once => return,
            Ok(Claim::Empty) => {
                outage.reset();
                tokio::select! {
                    _ = app.job_admitted.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL.mul_f64(0.75 + 0.5 * unit_random())) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(error) => {
                let wait = outage.next();
                tracing::warn!(message = "cannot claim jobs", slot, %error, retry_in_ms = wait.as_millis() as u64);
                pause(wait, &shutdown).await;
            }
        }
    }
}

async fn pause(wait: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[derive(PartialEq)]
enum Run {
    Done,
    MetAnOutage,
}

enum Ending {
    Finished(Outcome),
    Canceled,
    /// Another attempt owns the job: its result is the one that counts.
    Lost,
    HandedBack(Delivery),
}

async fn run_claimed(app: &App, job: Claimed, shutdown: &CancellationToken) -> Run {
    let started = Instant::now();
    metrics::counter!(t::PAYLOAD_FORMAT_TOTAL, "format" => job.payload.format().as_str()).increment(1);
    let cancel = app.track_running(&job.job_id);
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(app.config.worker_shutdown_grace).await;
    };
    let ending = tokio::select! {
        outcome = tokio::time::timeout(app.config.async_job_timeout, execute_with_retries(app, &job)) => match outcome {
            Ok(Ok(result)) => Ending::Finished(Outcome::Completed(result)),
            Ok(Err(Failure::Permanent(error))) => Ending::Finished(Outcome::Failed(format!("{error:#}"))),
            Ok(Err(Failure::Transient(error))) => {
                tracing::warn!(message = "job put back after an outage outlasted its retries", job_id = %job.job_id, error = %format!("{error:#}"));
                Ending::HandedBack(Delivery::Counted)
            }
            Err(_) => Ending::Finished(Outcome::Failed("timeout".to_string())),
        },
        lease = keep_lease(app, &job) => lease,
        _ = cancel.cancelled() => Ending::Canceled,
        _ = grace_over => Ending::HandedBack(Delivery::Uncounted),
    };
    app.untrack_running(&job.job_id);
    let run = match ending {
        Ending::HandedBack(Delivery::Counted) => Run::MetAnOutage,
        _ => Run::Done,
    };
    match ending {
        Ending::Finished(outcome) => record(app, &job, outcome, started).await,
        Ending::Canceled => tracing::info!(message = "job canceled while running", job_id = %job.job_id),
        Ending::Lost => {
            tracing::warn!(message = "job's lease was lost to another worker; this run writes nothing", job_id = %job.job_id, attempt = job.attempt)
        }
        Ending::HandedBack(delivery) => match app.jobs.hand_back(&job, delivery).await {
            Ok(()) => tracing::info!(message = "job handed back", job_id = %job.job_id, ?delivery),
            Err(error) => {
                tracing::warn!(message = "job not handed back; its lease runs out and another run takes it", job_id = %job.job_id, %error)
            }
        },
    }
    run
}

/// Heartbeats until the job must stop. A heartbeat that fails (Redis down)
/// is not a stop: the lease outlives several missed beats.
async fn keep_lease(app: &App, job: &Claimed) -> Ending {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match app.jobs.heartbeat(job, now()).await {
            Ok(Lease::Held) => {}
            Ok(Lease::Canceled) => return Ending::Canceled,
            Ok(Lease::Lost) => return Ending::Lost,
            Err(error) => tracing::warn!(message = "heartbeat failed", job_id = %job.job_id, %error),
        }
    }
}

enum Failure {
    /// Redis or storage did not answer: the same run may work later.
    Transient(anyhow::Error),
    /// The job itself cannot succeed (bad input, upload gone).
    Permanent(anyhow::Error),
}

/// Retries of a job step that met an outage, within one run.
const STEP_RETRIES: u32 = 4;

async fn execute_with_retries(app: &App, job: &Claimed) -> Result<serde_json::Value, Failure> {
    let mut backoff = Backoff::new();
    let mut tries = 0;
    loop {
        match execute(app, job).await {
            Ok(result) => return Ok(result),
            Err(error) if !is_transient(&error) => return Err(Failure::Permanent(error)),
            Err(error) if tries >= STEP_RETRIES => return Err(Failure::Transient(error)),
            Err(error) => {
                tries += 1;
                let wait = backoff.next();
                metrics::counter!(t::JOB_RETRIES_TOTAL).increment(1);
                tracing::info!(message = "job step retried", job_id = %job.job_id, error = %format!("{error:#}"), retry_in_ms = wait.as_millis() as u64);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(cause.downcast_ref(), Some(StoreError::Unavailable(_)))
            || matches!(
                cause.downcast_ref(),
                Some(LibraryError::Unavailable(_) | LibraryError::Store(StoreError::Unavailable(_)))
            )
            || matches!(cause.downcast_ref(), Some(JobError::Unavailable(_)))
            || matches!(
                cause.downcast_ref(),
                Some(VisionError::Unavailable(_) | VisionError::Open { .. })
            )
    })
}

/// Exponential backoff with full jitter, 100 ms doubling to 5 s: workers
/// that met one outage together do not all come back in the same instant.
struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff { ceiling: Self::FIRST }
    }

    fn reset(&mut self) {
        self.ceiling = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let wait = self.ceiling.mul_f64(0.5 + 0.5 * unit_random());
        self.ceiling = (self.ceiling * 2).min(Self::MAX);
        wait
    }
}

/// Uniform in [0, 1): jitter does not need a cryptographic generator, and
/// a fresh v4 uuid is random enough without another dependency.
pub(crate) fn unit_random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

async fn execute(app: &App, job: &Claimed) -> anyhow::Result<serde_json::Value> {
    if !app.config.job_delay.is_zero() {
        tokio::time::sleep(app.config.job_delay).await;
    }
    let payload = &job.payload;
    let bytes = read_upload(app, payload).await?;
    if let Some(vision) = &app.vision {
        let params = &payload.request_params;
        return Ok(search::by_vision(vision, &payload.file_name, &payload.content_type, bytes, params).await?);
    }
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

/// The query's bytes: `file_ref` first, then the inline `file_bytes_b64`
/// of payloads written for (or by) workers that predate file storage
/// (seed 003's order).
async fn read_upload(app: &App, payload: &Payload) -> anyhow::Result<Bytes> {
    if let Some(file_ref) = &payload.file_ref {
        match app.files.get(file_ref).await {
            Ok(bytes) => return Ok(bytes),
            Err(StoreError::NotFound(path)) if payload.file_bytes_b64.is_some() => {
                tracing::warn!(message = "uploaded file is gone; reading the payload's inline copy", %path);
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the uploaded file")),
        }
    }
    let Some(inline) = &payload.file_bytes_b64 else {
        anyhow::bail!("the job payload carries neither file_ref nor file_bytes_b64");
    };
    let limit = app.config.max_upload_bytes;
    if inline.len() as u64 / 4 * 3 > limit {
        anyhow::bail!("the payload's file_bytes_b64 holds more than the {limit}-byte upload limit");
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inline)
        .context("the payload's file_bytes_b64 is not base64")?;
    metrics::counter!(t::LEGACY_B64_FALLBACK_TOTAL).increment(1);
    Ok(Bytes::from(bytes))
}

/// Retries, because an outcome not recorded leaves the job `in_progress`
/// until its lease runs out and it runs again.
const FINISH_ATTEMPTS: u32 = 8;

async fn record(app: &App, job: &Claimed, outcome: Outcome, started: Instant) {
    let status = match &outcome {
        Outcome::Completed(_) => Status::Completed,
        Outcome::Failed(_) => Status::Failed,
    };
    if let Outcome::Failed(error) = &outcome {
        tracing::warn!(message = "job failed", job_id = %job.job_id, %error);
    }
    let mut backoff = Backoff::new();
    for attempt in 1..=FINISH_ATTEMPTS {
        match app.jobs.finish(job, outcome.clone(), now()).await {
            Ok(true) => {
                metrics::counter!(t::JOBS_TOTAL, "status" => status.as_str()).increment(1);
                metrics::histogram!(t::JOB_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
                if status == Status::Completed {
                    metrics::counter!(t::JOBS_COMPLETED_TOTAL).increment(1);
                }
                if let Some(file_ref) = &job.payload.file_ref {
                    remove_upload(app, &job.job_id, file_ref).await;
                }
                return;
            }
            Ok(false) => {
                tracing::info!(message = "job was canceled or re-claimed before its outcome was recorded", job_id = %job.job_id);
                return;
            }
            Err(error) => {
                tracing::warn!(message = "outcome not recorded", job_id = %job.job_id, attempt, %error);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
    tracing::error!(message = "outcome not recorded; the job runs again when its lease runs out", job_id = %job.job_id);
}

async fn remove_upload(app: &App, job_id: &str, file_ref: &FileRef) {
    if !app.config.file_storage_cleanup_on_finish {
        return;
    }
    if let Err(error) = app.files.delete(file_ref).await {
        tracing::warn!(message = "finished job's upload stays behind", job_id, %error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_with_jitter_below_each_step() {
        let mut backoff = Backoff::new();
        let mut ceiling = Backoff::FIRST;
        for _ in 0..10 {
            let wait = backoff.next();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{wait:?} outside {ceiling:?}");
            ceiling = (ceiling * 2).min(Backoff::MAX);
        }
        backoff.reset();
        assert!(backoff.next() <= Backoff::FIRST);
    }

    #[test]
    fn outages_retry_and_bad_input_does_not() {
        let outage = anyhow::Error::new(StoreError::Unavailable("connection refused".into()))
            .context("cannot read the uploaded file");
        assert!(is_transient(&outage));
        assert!(is_transient(&anyhow::Error::new(LibraryError::Unavailable(
            "redis".into()
        ))));
        let library_storage = LibraryError::Store(StoreError::Unavailable("disk gone".into()));
        assert!(is_transient(&anyhow::Error::new(library_storage)));
        let gone = anyhow::Error::new(StoreError::NotFound("x".into())).context("cannot read the uploaded file");
        assert!(!is_transient(&gone));
        let unreadable = anyhow::Error::new(crate::engine::EngineError::Unreadable("not a PNG".into()));
        assert!(!is_transient(&unreadable));
    }
}
