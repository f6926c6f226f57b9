//! `dedup2d gc`: deletes uploads that no live job needs, and the [`GcLedger`]
//! seam where each run is recorded so that the API and workers (which
//! Prometheus scrapes; a CronJob's process is gone before a scrape) export
//! `dedup2d_gc_*`.
//!
//! An upload is deleted only when it has the upload key shape (anything
//! else under the uploads root is left alone), no pending or running job
//! references it, and it is older than the retention. The live set is read
//! first and the age is measured from that moment, so a file written after
//! the read is never old enough, however long the sweep takes; a file
//! written before it belongs to a job already in the set, unless its job
//! was admitted more than the retention after its upload was stored.
//! Dry run unless `execute`.
//!
//! A gc pointed at the wrong job store would see no live jobs, and one
//! with other storage settings than the service's could not tell which
//! files the live jobs mean, so `execute` refuses to delete unless the job
//! store carries the service's uploads location (every `serve` and `work`
//! records it at start-up) and it is gc's own, and unless every live job's
//! `file_ref` lies in gc's uploads area.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Config};
use crate::jobs::JobError;
use crate::store::{FileRef, Files, Found, Listed};
use crate::telemetry as t;

/// Deletes in flight at once: S3 answers each in a round trip.
const PARALLEL_DELETES: usize = 16;

/// Where GC learns what is live and records its runs: the job store.
#[async_trait]
pub trait GcLedger: Send + Sync {
    /// The payloads (JSON) of pending and running jobs (on Redis also of
    /// dead-lettered jobs, which `work --requeue-dead` runs again).
    async fn live_payloads(&self) -> Result<Vec<String>, JobError>;
    /// Where the service stores uploads ([`Files::uploads_location`]).
    async fn storage_location(&self) -> Result<Option<String>, JobError>;
    async fn set_storage_location(&self, location: &str) -> Result<(), JobError>;
    /// Adds a run to the record; recording one run twice counts it once.
    async fn record_gc(&self, run: &Run) -> Result<(), JobError>;
    async fn gc_totals(&self) -> Result<Totals, JobError>;
}

/// What one run found and did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub dry_run: bool,
    pub retention_seconds: u64,
    pub started_at: f64,
    pub finished_at: f64,
    /// Pending and running jobs' files in the uploads area.
    pub live_files: u64,
    /// Objects listed under the uploads root or prefix.
    pub scanned: u64,
    pub kept_live: u64,
    pub kept_young: u64,
    /// Objects without the upload key shape: not ours, never deleted.
    pub left_alone: u64,
    pub deleted: u64,
    pub bytes_freed: u64,
    /// Half-written temporary files and empty job directories (local only).
    pub temp_files_deleted: u64,
    pub empty_dirs_removed: u64,
    /// Deletes the store refused, or a listing that broke off; the first
    /// few reasons are in `errors`.
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What would stop `--execute` (a dry run goes on and says so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Stopped by a signal, or the listing failed, before the sweep ended.
    #[serde(default)]
    pub interrupted: bool,
    /// Why the run could not be recorded in the job store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_error: Option<String>,
}

/// A live payload as gc reads it: only its file reference, so fields that
/// a newer API writes cannot hide one.
#[derive(Deserialize)]
struct Referenced {
    #[serde(default)]
    file_ref: Option<serde_json::Value>,
}

/// The fleet's GC record, as `/metrics` exports it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub runs: u64,
    pub dry_runs: u64,
    pub files_deleted: u64,
    pub bytes_freed: u64,
    /// The last complete executing run ([`Run::complete`]): when it
    /// finished and how long it took.
    pub last_run_at: Option<f64>,
    pub last_duration_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Delete; without it nothing changes and the summary says what would.
    pub execute: bool,
    pub progress: bool,
}

const ERRORS_KEPT: usize = 10;

/// Runs one sweep and records it. `Ok(None)` when retention is off.
pub async fn run(config: Config, options: Options, shutdown: CancellationToken) -> anyhow::Result<Option<Run>> {
    let Some(retention) = config.file_storage_retention else {
        return Ok(None);
    };
    let ledger = open_ledger(&config).await?;
    let files = Files::open(&config).context("cannot open file storage")?;
    files
        .check_uploads()
        .await
        .with_context(|| format!("file storage ({}) is not usable", files.backend()))?;
    let mut run = sweep(&files, ledger.as_ref(), retention, options, shutdown).await?;
    if let Err(error) = ledger.record_gc(&run).await {
        run.record_error = Some(error.to_string());
    }
    Ok(Some(run))
}

/// The job store, opened beside a `serve` or workers that may be running.
async fn open_ledger(config: &Config) -> anyhow::Result<Arc<dyn GcLedger>> {
    Ok(match config.async_backend {
        Backend::InProcess => Arc::new(crate::embedded::Db::open_beside(&config.data_dir)?),
        Backend::Redis => crate::app::connect_redis(config).await?.1,
    })
}

/// One pass over the uploads area; public so tests can run it on any store.
pub async fn sweep(
    files: &Files,
    ledger: &dyn GcLedger,
    retention: Duration,
    options: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let now = SystemTime::now();
    let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut warnings = vec![];
    warnings.extend(wrong_store(files, ledger).await?);
    let (live, unplaced) = live_keys(files, ledger).await?;
    warnings.extend(unplaced);
    if options.execute && !warnings.is_empty() {
        anyhow::bail!("nothing was deleted: {}", warnings.join("; "));
    }
    let mut run = Run {
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        dry_run: !options.execute,
        retention_seconds: retention.as_secs(),
        started_at: crate::app::now(),
        live_files: live.len() as u64,
        warnings,
        ..Run::default()
    };
    let bar = progress(options.progress);
    let mut listing = files.list_uploads();
    let mut deletes = FuturesUnordered::new();
    loop {
        let listed = tokio::select! {
            next = listing.next() => next,
            _ = shutdown.cancelled() => {
                run.interrupted = true;
                None
            }
        };
        let listed = match listed {
            None => break,
            Some(Ok(listed)) => listed,
            // What was deleted so far is still reported and recorded.
            Some(Err(error)) => {
                run.failed += 1;
                run.errors.push(format!("listing the uploads broke off: {error}"));
                run.interrupted = true;
                break;
            }
        };
        run.scanned += 1;
        match verdict(&listed, &live, cutoff) {
            Verdict::Live => run.kept_live += 1,
            Verdict::Young => run.kept_young += 1,
            Verdict::NotOurs => run.left_alone += 1,
            Verdict::Delete if !options.execute => count_deleted(&mut run, listed.size),
            Verdict::Delete => {
                deletes.push(async move { (files.delete_upload(&listed.key).await, listed) });
                if deletes.len() >= PARALLEL_DELETES
                    && let Some(done) = deletes.next().await
                {
                    settle(&mut run, done);
                }
            }
        }
        if run.scanned.is_multiple_of(256) {
            bar.set_message(line(&run));
        }
    }
    while let Some(done) = deletes.next().await {
        settle(&mut run, done);
    }
    if !run.interrupted {
        let tidied = files.tidy_uploads(cutoff, options.execute).await?;
        run.temp_files_deleted = tidied.temp_files;
        run.bytes_freed += tidied.temp_bytes;
        run.empty_dirs_removed = tidied.empty_dirs;
    }
    bar.finish_and_clear();
    run.finished_at = run.started_at + started.elapsed().as_secs_f64();
    Ok(run)
}

/// Why the job store does not describe this gc's uploads, if it does not.
async fn wrong_store(files: &Files, ledger: &dyn GcLedger) -> anyhow::Result<Option<String>> {
    let mine = files.uploads_location();
    let service = ledger.storage_location().await.context("cannot read the job store")?;
    Ok(match service {
        Some(service) if service == mine => None,
        Some(service) => Some(format!(
            "the service stores uploads at {service}, this gc would sweep {mine}: give it the same storage settings"
        )),
        None => Some(
            "no dedup2d serve or work has recorded its uploads location in this job store: is it the \
             service's (DEDUP2D_DATA_DIR, or DEDUP2D_REDIS_URL and DEDUP2D_REDIS_KEY_PREFIX)?"
                .to_string(),
        ),
    })
}

/// The upload keys live jobs reference, and a warning when some live
/// references cannot be placed in this gc's uploads area.
async fn live_keys(files: &Files, ledger: &dyn GcLedger) -> anyhow::Result<(HashSet<String>, Option<String>)> {
    let payloads = ledger
        .live_payloads()
        .await
        .context("cannot read the live jobs from the job store")?;
    let mut live = HashSet::new();
    let mut unplaced = Vec::new();
    for payload in &payloads {
        let reference = match serde_json::from_str::<Referenced>(payload) {
            Ok(Referenced { file_ref: None }) => continue,
            Ok(Referenced { file_ref: Some(value) }) => serde_json::from_value::<FileRef>(value.clone())
                .ok()
                .and_then(|file| files.upload_key(&file))
                .ok_or_else(|| value.to_string()),
            Err(e) => Err(format!("a payload that does not read ({e})")),
        };
        match reference {
            Ok(key) => drop(live.insert(key)),
            Err(what) => unplaced.push(what),
        }
    }
    let warning = unplaced.first().map(|first| {
        format!(
            "{} live jobs reference files outside {} (first: {first}): give gc the service's storage settings",
            unplaced.len(),
            files.uploads_location()
        )
    });
    Ok((live, warning))
}

enum Verdict {
    Live,
    Young,
    NotOurs,
    Delete,
}

fn verdict(listed: &Listed, live: &HashSet<String>, cutoff: SystemTime) -> Verdict {
    match listed.found {
        Found::Foreign => Verdict::NotOurs,
        Found::Upload if live.contains(&listed.key) => Verdict::Live,
        Found::Upload | Found::Probe if listed.modified >= cutoff => Verdict::Young,
        Found::Upload | Found::Probe => Verdict::Delete,
    }
}

fn count_deleted(run: &mut Run, size: u64) {
    run.deleted += 1;
    run.bytes_freed += size;
}

fn settle(run: &mut Run, (result, listed): (Result<(), crate::store::StoreError>, Listed)) {
    match result {
        Ok(()) => count_deleted(run, listed.size),
        Err(error) => {
            run.failed += 1;
            if run.errors.len() < ERRORS_KEPT {
                run.errors.push(format!("{}: {error}", listed.key));
            }
        }
    }
}

fn progress(shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} gc {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn line(run: &Run) -> String {
    format!(
        "scanned {}, kept live {}, kept young {}, {} {}",
        run.scanned,
        run.kept_live,
        run.kept_young,
        if run.dry_run { "would delete" } else { "deleted" },
        run.deleted
    )
}

impl Run {
    pub fn duration_seconds(&self) -> f64 {
        self.finished_at - self.started_at
    }

    /// A run that swept everything and deleted all it meant to: only
    /// those keep `Dedup2DGCNotRunning` quiet.
    pub fn complete(&self) -> bool {
        !self.dry_run && !self.interrupted && self.failed == 0
    }

    /// The summary a person reads.
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        let mut out = format!(
            "{}scanned {}, kept live {}, kept young {} (retention {} s), left alone {}, {verb} {} ({}), \
             temp files {}, empty dirs {}, failed {} in {:.1} s{}\n",
            if self.dry_run {
                "dry run (--execute deletes): "
            } else {
                ""
            },
            self.scanned,
            self.kept_live,
            self.kept_young,
            self.retention_seconds,
            self.left_alone,
            self.deleted,
            human_bytes(self.bytes_freed),
            self.temp_files_deleted,
            self.empty_dirs_removed,
            self.failed,
            self.duration_seconds(),
            if self.interrupted { "; interrupted" } else { "" },
        );
        for warning in &self.warnings {
            out.push_str(&format!("  warning: {warning}\n"));
        }
        for error in &self.errors {
            out.push_str(&format!("  failed: {error}\n"));
        }
        if let Some(error) = &self.record_error {
            out.push_str(&format!("  not recorded in the job store: {error}\n"));
        }
        out
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Sets `dedup2d_gc_*` from the fleet's record.
pub fn export(totals: &Totals) {
    metrics::counter!(t::GC_RUNS_TOTAL, "mode" => "execute").absolute(totals.runs);
    metrics::counter!(t::GC_RUNS_TOTAL, "mode" => "dry_run").absolute(totals.dry_runs);
    metrics::counter!(t::GC_FILES_DELETED_TOTAL).absolute(totals.files_deleted);
    metrics::counter!(t::GC_BYTES_FREED_TOTAL).absolute(totals.bytes_freed);
    metrics::gauge!(t::GC_LAST_RUN_TIMESTAMP_SECONDS).set(totals.last_run_at.unwrap_or(0.0));
    metrics::gauge!(t::GC_DURATION_SECONDS).set(totals.last_duration_seconds.unwrap_or(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_whether_anything_was_deleted() {
        let run = Run {
            dry_run: true,
            scanned: 3,
            deleted: 1,
            bytes_freed: 2048,
            finished_at: 1.5,
            ..Run::default()
        };
        let text = run.render();
        assert!(
            text.starts_with("dry run") && text.contains("would delete 1 (2.0 KiB)"),
            "{text}"
        );
        let done = Run { dry_run: false, ..run }.render();
        assert!(done.starts_with("scanned 3") && done.contains("deleted 1"), "{done}");
    }
}
