//! `dedup2d migrate-payloads`: the last step of seed 003's rolling upgrade.
//! Queued jobs whose payload carries the file only inline
//! (`file_bytes_b64`, as the original's producers wrote it) get the file
//! stored and a `file_ref` added; with `--drop-b64` the inline copy goes.
//!
//! Safe while API and workers run: each payload is replaced by one script
//! that checks the job is still pending and the payload unchanged, so a job
//! a worker claimed meanwhile runs (once) with the payload it read, and the
//! file stored for it is removed again. Idempotent and resumable: a payload
//! with a `file_ref` is left alone, so a second run, or one after an
//! interruption, only does what is left. Dry run unless `execute`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Backing};
use crate::config::{Backend, Config};
use crate::jobs::Payload;
use crate::queue::RedisJobs;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Write; without it nothing changes and the summary says what would.
    pub execute: bool,
    /// Also remove the inline bytes of payloads that have a `file_ref`.
    pub drop_b64: bool,
    pub progress: bool,
}

/// What a run found and did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    /// Queued jobs looked at.
    pub scanned: u64,
    /// Payloads given a `file_ref` (or that would be).
    pub migrated: u64,
    /// Payloads whose inline bytes were dropped (or would be).
    pub dropped_b64: u64,
    /// Payloads that needed nothing.
    pub unchanged: u64,
    /// Jobs claimed, canceled or rewritten by someone else meanwhile.
    pub moved_on: u64,
    /// Job id and why it was left as it was.
    pub failed: Vec<(String, String)>,
}

pub async fn run(config: Config, options: Options, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    if config.async_backend != Backend::Redis {
        anyhow::bail!(
            "migrate-payloads rewrites the Redis queue (DEDUP2D_ASYNC_BACKEND=redis); the embedded \
             queue never holds the original's inline payloads"
        );
    }
    let app = App::open(config).await?;
    let Backing::Redis { jobs, .. } = app.backing() else {
        unreachable!("the backend was checked above")
    };
    let queued = jobs.queued().await?;
    let bar = crate::import::progress_bar(options.progress, queued.len(), "migrating");
    let mut summary = Summary {
        dry_run: !options.execute,
        ..Summary::default()
    };
    for job_id in queued {
        if shutdown.is_cancelled() {
            break;
        }
        summary.scanned += 1;
        match migrate_one(&app, jobs, &job_id, options).await {
            Ok(Change::Migrated { dropped }) => {
                summary.migrated += 1;
                summary.dropped_b64 += u64::from(dropped);
            }
            Ok(Change::Dropped) => summary.dropped_b64 += 1,
            Ok(Change::None) => summary.unchanged += 1,
            Ok(Change::MovedOn) => summary.moved_on += 1,
            Err(error) => summary.failed.push((job_id, format!("{error:#}"))),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summary)
}

enum Change {
    Migrated { dropped: bool },
    Dropped,
    None,
    MovedOn,
}

async fn migrate_one(app: &Arc<App>, jobs: &RedisJobs, job_id: &str, options: Options) -> anyhow::Result<Change> {
    let Some(read) = jobs.raw_payload(job_id).await? else {
        return Ok(Change::MovedOn);
    };
    let payload: Payload = serde_json::from_str(&read).map_err(|e| anyhow::anyhow!("payload does not read: {e}"))?;
    let (has_ref, inline) = (payload.file_ref.is_some(), payload.file_bytes_b64.clone());
    let change = match (has_ref, inline) {
        (false, None) => anyhow::bail!("payload carries neither file_ref nor file_bytes_b64"),
        (true, Some(_)) if options.drop_b64 => Change::Dropped,
        (true, _) => return Ok(Change::None),
        (false, Some(_)) => Change::Migrated {
            dropped: options.drop_b64,
        },
    };
    if !options.execute {
        return Ok(change);
    }
    let mut updated = payload.clone();
    if let (Change::Migrated { .. }, Some(inline)) = (&change, &payload.file_bytes_b64) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inline)
            .map_err(|e| anyhow::anyhow!("file_bytes_b64 is not base64: {e}"))?;
        let stored = app
            .files
            .put_upload(job_id, &payload.file_name, Bytes::from(bytes))
            .await?;
        updated.file_ref = Some(stored);
    }
    if options.drop_b64 {
        updated.file_bytes_b64 = None;
    }
    if jobs
        .replace_payload(job_id, &read, &serde_json::to_string(&updated)?)
        .await?
    {
        return Ok(change);
    }
    // Claimed, canceled or changed since it was read: the stored copy is
    // nobody's.
    if let (Some(stored), None) = (&updated.file_ref, &payload.file_ref) {
        let _ = app.files.delete(stored).await;
    }
    Ok(Change::MovedOn)
}

impl Summary {
    /// The lines `dedup2d migrate-payloads` prints.
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would be " } else { "" };
        let mut out = format!(
            "{} queued jobs scanned: {} {verb}given a file_ref, {} {verb}stripped of inline bytes, \
             {} unchanged, {} moved on meanwhile, {} failed{}\n",
            self.scanned,
            self.migrated,
            self.dropped_b64,
            self.unchanged,
            self.moved_on,
            self.failed.len(),
            if self.dry_run {
                " (dry run: add --execute to write)"
            } else {
                ""
            },
        );
        for (job_id, reason) in &self.failed {
            out.push_str(&format!("  {job_id}: {reason}\n"));
        }
        out
    }
}
