//! The embedded backend: jobs, libraries and stats in one SQLite database
//! under the data dir, for `serve` with nothing else installed.
//!
//! One process owns a data dir (an exclusive lock file says so), which is what
//! makes the in-memory capacity count exact and lets start-up treat every
//! `in_progress` row as orphaned by a previous run. Commits use WAL with
//! `synchronous=NORMAL`: a killed process loses nothing it committed.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::callback::{Attempt, Due, Event, Outbox};
use crate::engine::{Details, Features};
use crate::gc::{GcLedger, Run as GcRun, Totals as GcTotals};
use crate::jobs::{
    CancelOutcome, Claim, Claimed, Counts, Delivery, Job, JobError, JobStore, Lease, NewJob, Outcome, Payload, Status,
};
use crate::library::{Drawing, LibraryError, LibraryStore};
use crate::stats::{StatsError, StatsStore, TenantStats};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("another dedup2d process is using data dir {0}; stop it or choose another --data-dir")]
    Locked(String),
    #[error("cannot open the database at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

/// Puts an ended job's callback in the outbox (a no-op without one).
/// Params: job id, now.
const CALLBACK_DUE: &str = "UPDATE jobs SET callback_due_at = ?2 WHERE job_id = ?1 AND callback_status = 'pending'";

/// What `dedup2d gc` keeps, also when it opens the database beside `serve`.
const GC_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gc_runs (
    run_id TEXT PRIMARY KEY,
    dry_run INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    deleted INTEGER NOT NULL,
    bytes_freed INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    payload TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    callback_status TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_http_status INTEGER,
    callback_finished_at REAL,
    callback_last_error TEXT,
    callback_url TEXT,
    callback_due_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs(tenant_id, created_at);
CREATE TABLE IF NOT EXISTS drawings (
    tenant_id TEXT NOT NULL,
    drawing_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    file_ref TEXT NOT NULL,
    features TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, drawing_id)
);
CREATE INDEX IF NOT EXISTS drawings_by_age ON drawings(tenant_id, created_at);
CREATE TABLE IF NOT EXISTS tenant_stats (
    tenant_id TEXT PRIMARY KEY,
    processed INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    dup_skipped INTEGER NOT NULL DEFAULT 0
);
";

struct Inner {
    conn: Connection,
    /// Pending plus running jobs. Kept beside the connection, under its lock,
    /// so the capacity check and the insert are one step.
    live_jobs: u64,
    ttl_seconds: f64,
}

/// The embedded database. Clones share one connection.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Mutex<Inner>>,
    /// `None` for a handle opened beside the owner ([`Db::open_beside`]).
    _lock: Option<Arc<File>>,
}

impl Db {
    /// Opens (creating) `dedup2d.db` in `data_dir`, takes the data-dir lock and
    /// returns jobs orphaned by a previous run to pending.
    pub fn open(data_dir: &Path, ttl: std::time::Duration) -> Result<Db, DbError> {
        let open_error = |reason: String| DbError::Open {
            path: data_dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_error(e.to_string()))?;
        let lock = File::create(data_dir.join("dedup2d.lock")).map_err(|e| open_error(e.to_string()))?;
        if lock.try_lock().is_err() {
            return Err(DbError::Locked(data_dir.display().to_string()));
        }
        let conn = Connection::open(data_dir.join("dedup2d.db")).map_err(|e| open_error(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(None, "synchronous", "normal")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(GC_SCHEMA)?;
        add_column(&conn, "drawings", "thumbnail", "BLOB")?;
        add_column(&conn, "jobs", "callback_url", "TEXT")?;
        add_column(&conn, "jobs", "callback_due_at", "REAL")?;
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS jobs_callbacks_due ON jobs(callback_due_at) WHERE callback_due_at IS NOT NULL",
        )?;
        let recovered = conn.execute(
            "UPDATE jobs SET status = 'pending', started_at = NULL WHERE status = 'in_progress'",
            [],
        )?;
        if recovered > 0 {
            tracing::info!(
                message = "jobs left running by the previous run go back to pending",
                recovered
            );
        }
        // Databases of earlier versions could end a job without queueing
        // its callback; send those now rather than never.
        conn.execute(
            "UPDATE jobs SET callback_due_at = finished_at WHERE callback_status = 'pending' \
             AND callback_due_at IS NULL AND status IN ('completed', 'failed', 'canceled')",
            [],
        )?;
        let live_jobs: u64 = conn.query_row(
            "SELECT count(*) FROM jobs WHERE status IN ('pending', 'in_progress')",
            [],
            |r| r.get(0),
        )?;
        Ok(Db {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                live_jobs,
                ttl_seconds: ttl.as_secs_f64(),
            })),
            _lock: Some(Arc::new(lock)),
        })
    }

    /// Opens an existing database without the data-dir lock, for a tool
    /// that runs while `serve` owns it and only reads jobs and records GC
    /// runs (`dedup2d gc`); SQLite's own locking orders the writes. A
    /// missing database, or one without jobs table, is an error, not a new
    /// empty one: a wrong data dir must not look like a store without live
    /// jobs.
    pub fn open_beside(data_dir: &Path) -> Result<Db, DbError> {
        let path = data_dir.join("dedup2d.db");
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| {
            DbError::Open {
                path: path.display().to_string(),
                reason: format!("{e} (is DEDUP2D_DATA_DIR the data dir `serve` uses?)"),
            }
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let has_jobs = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'")?
            .exists([])?;
        if !has_jobs {
            return Err(DbError::Open {
                path: path.display().to_string(),
                reason: "it holds no jobs table (is DEDUP2D_DATA_DIR the data dir `serve` uses?)".into(),
            });
        }
        conn.execute_batch(GC_SCHEMA)?;
        Ok(Db {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                live_jobs: 0,
                ttl_seconds: 0.0,
            })),
            _lock: None,
        })
    }

    async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> Result<T, DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Readiness: the database answers a query.
    pub async fn check(&self) -> Result<(), DbError> {
        self.call(|inner| Ok(inner.conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

impl From<DbError> for JobError {
    fn from(e: DbError) -> Self {
        JobError::Unavailable(e.to_string())
    }
}

impl From<DbError> for LibraryError {
    fn from(e: DbError) -> Self {
        LibraryError::Unavailable(e.to_string())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Task(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, column: usize) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e)))
}

const JOB_COLUMNS: &str = "job_id, tenant_id, status, created_at, started_at, finished_at, result, error, \
     callback_status, callback_attempts, callback_http_status, callback_finished_at, callback_last_error";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let status: String = row.get(2)?;
    let result: Option<String> = row.get(6)?;
    Ok(Job {
        job_id: row.get(0)?,
        tenant_id: row.get(1)?,
        status: Status::parse(&status).unwrap_or(Status::Failed),
        created_at: row.get(3)?,
        started_at: row.get(4)?,
        finished_at: row.get(5)?,
        result: result.map(|r| from_json(&r, 6)).transpose()?,
        error: row.get(7)?,
        callback_status: row.get(8)?,
        callback_attempts: row.get(9)?,
        callback_http_status: row.get(10)?,
        callback_finished_at: row.get(11)?,
        callback_last_error: row.get(12)?,
    })
}

#[async_trait]
impl JobStore for Db {
    async fn admit(&self, job: NewJob, max_jobs: u64) -> Result<(), JobError> {
        let payload = to_json(&job.payload)?;
        self.call(move |inner| {
            if inner.live_jobs >= max_jobs {
                return Ok(Err(JobError::QueueFull {
                    max: max_jobs,
                    current: inner.live_jobs,
                }));
            }
            let callback_url = job.payload.callback_url.as_deref();
            inner.conn.prepare_cached(
                "INSERT INTO jobs (job_id, tenant_id, status, created_at, expires_at, payload, callback_url, callback_status) \
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, CASE WHEN ?6 IS NULL THEN NULL ELSE 'pending' END)",
            )?
            .execute(params![job.job_id, job.payload.tenant_id, job.created_at, job.created_at + inner.ttl_seconds, payload, callback_url])?;
            inner.live_jobs += 1;
            Ok(Ok(()))
        })
        .await?
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>, JobError> {
        let job_id = job_id.to_string();
        Ok(self
            .call(move |inner| {
                let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1");
                Ok(inner
                    .conn
                    .prepare_cached(&sql)?
                    .query_row([job_id], job_from_row)
                    .optional()?)
            })
            .await?)
    }

    async fn list(&self, tenant_id: &str, status: Option<Status>, limit: u32) -> Result<(Vec<Job>, u64), JobError> {
        let tenant_id = tenant_id.to_string();
        let status = status.map(|s| s.as_str().to_string());
        Ok(self
            .call(move |inner| {
                let filter = "tenant_id = ?1 AND (?2 IS NULL OR status = ?2)";
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE {filter} ORDER BY created_at DESC, seq DESC LIMIT ?3"
                );
                let jobs = inner
                    .conn
                    .prepare_cached(&sql)?
                    .query_map(params![tenant_id, status, limit], job_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let total: u64 = inner
                    .conn
                    .prepare_cached(&format!("SELECT count(*) FROM jobs WHERE {filter}"))?
                    .query_row(params![tenant_id, status], |r| r.get(0))?;
                Ok((jobs, total))
            })
            .await?)
    }

    async fn cancel(&self, job_id: &str, tenant_id: &str, now: f64) -> Result<CancelOutcome, JobError> {
        let job_id = job_id.to_string();
        let tenant_id = tenant_id.to_string();
        Ok(self
            .call(move |inner| {
                let tx = inner.conn.transaction()?;
                let row: Option<(String, String, String)> = tx
                    .query_row("SELECT tenant_id, status, payload FROM jobs WHERE job_id = ?1", [&job_id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                let Some((owner, status, payload)) = row else {
                    return Ok(CancelOutcome::NotFound);
                };
                if owner != tenant_id {
                    return Ok(CancelOutcome::Forbidden);
                }
                let status = Status::parse(&status).unwrap_or(Status::Failed);
                if status.is_terminal() {
                    return Ok(CancelOutcome::AlreadyFinished(status));
                }
                tx.execute(
                    "UPDATE jobs SET status = 'canceled', cancel_requested = 1, finished_at = ?2, expires_at = ?3 WHERE job_id = ?1",
                    params![job_id, now, now + inner.ttl_seconds],
                )?;
                // A job canceled before it started has nothing to report.
                let callback = if status == Status::Pending {
                    "UPDATE jobs SET callback_status = 'skipped', callback_last_error = 'canceled_before_start', \
                     callback_finished_at = ?2 WHERE job_id = ?1 AND callback_status = 'pending'"
                } else {
                    CALLBACK_DUE
                };
                tx.execute(callback, params![job_id, now])?;
                tx.commit()?;
                inner.live_jobs = inner.live_jobs.saturating_sub(1);
                let file_ref = serde_json::from_str::<Payload>(&payload).ok().and_then(|p| p.file_ref);
                Ok(CancelOutcome::Canceled { was: status, file_ref })
            })
            .await?)
    }

    async fn claim(&self, now: f64, max_deliveries: u32) -> Result<Claim, JobError> {
        Ok(self
            .call(move |inner| {
                let tx = inner.conn.transaction()?;
                let row: Option<(String, u32, String, f64)> = tx
                    .query_row(
                        "SELECT job_id, attempt, payload, created_at FROM jobs WHERE status = 'pending' ORDER BY seq LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?;
                let Some((job_id, attempt, payload, created_at)) = row else {
                    return Ok(Claim::Empty);
                };
                let payload = serde_json::from_str::<Payload>(&payload);
                let refusal = match &payload {
                    Err(e) => Some(format!("the job's payload does not read: {e}")),
                    // A job that took its process down this often would keep
                    // doing so; end it instead of crash-looping.
                    Ok(_) if attempt >= max_deliveries => {
                        Some(format!("gave up after {attempt} deliveries that did not finish"))
                    }
                    Ok(_) => None,
                };
                if let Some(error) = refusal {
                    tx.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?2, expires_at = ?3, error = ?4 WHERE job_id = ?1",
                        params![job_id, now, now + inner.ttl_seconds, error],
                    )?;
                    tx.execute(CALLBACK_DUE, params![job_id, now])?;
                    tx.commit()?;
                    inner.live_jobs = inner.live_jobs.saturating_sub(1);
                    let file_ref = payload.ok().and_then(|p| p.file_ref);
                    return Ok(Claim::Failed { job_id, file_ref, error });
                }
                tx.execute(
                    "UPDATE jobs SET status = 'in_progress', started_at = ?2, attempt = attempt + 1 WHERE job_id = ?1",
                    params![job_id, now],
                )?;
                tx.commit()?;
                Ok(Claim::Run(Claimed {
                    job_id,
                    attempt: attempt + 1,
                    payload: payload.map_err(|e| DbError::Task(e.to_string()))?,
                    created_at,
                }))
            })
            .await?)
    }

    async fn finish(&self, job: &Claimed, outcome: Outcome, now: f64) -> Result<bool, JobError> {
        let job_id = job.job_id.clone();
        let attempt = job.attempt;
        let (status, result, error) = match outcome {
            Outcome::Completed(result) => (Status::Completed, Some(to_json(&result)?), None),
            Outcome::Failed(error) => (Status::Failed, None, Some(error)),
        };
        Ok(self
            .call(move |inner| {
                let changed = inner
                    .conn
                    .prepare_cached(
                        // The callback enters the outbox in the same statement.
                        "UPDATE jobs SET status = ?3, result = ?4, error = ?5, finished_at = ?6, expires_at = ?7, \
                         callback_due_at = CASE WHEN callback_status = 'pending' THEN ?6 END \
                     WHERE job_id = ?1 AND attempt = ?2 AND status = 'in_progress'",
                    )?
                    .execute(params![
                        job_id,
                        attempt,
                        status.as_str(),
                        result,
                        error,
                        now,
                        now + inner.ttl_seconds
                    ])?;
                if changed > 0 {
                    inner.live_jobs = inner.live_jobs.saturating_sub(1);
                }
                Ok(changed > 0)
            })
            .await?)
    }

    async fn heartbeat(&self, job: &Claimed, _now: f64) -> Result<Lease, JobError> {
        // One process owns the database, so there is no lease to extend;
        // the status says whether the run should go on.
        let job_id = job.job_id.clone();
        let attempt = job.attempt;
        Ok(self
            .call(move |inner| {
                let row: Option<(String, u32)> = inner
                    .conn
                    .prepare_cached("SELECT status, attempt FROM jobs WHERE job_id = ?1")?
                    .query_row([job_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                Ok(match row {
                    Some((status, a)) if status == "in_progress" && a == attempt => Lease::Held,
                    Some((status, _)) if status == "canceled" => Lease::Canceled,
                    _ => Lease::Lost,
                })
            })
            .await?)
    }

    async fn hand_back(&self, job: &Claimed, delivery: Delivery) -> Result<(), JobError> {
        let job_id = job.job_id.clone();
        let attempt = job.attempt;
        let forgiven = u32::from(delivery == Delivery::Uncounted);
        Ok(self
            .call(move |inner| {
                inner.conn.execute(
                    "UPDATE jobs SET status = 'pending', started_at = NULL, attempt = attempt - ?3 \
                     WHERE job_id = ?1 AND attempt = ?2 AND status = 'in_progress'",
                    params![job_id, attempt, forgiven],
                )?;
                Ok(())
            })
            .await?)
    }

    async fn counts(&self) -> Result<Counts, JobError> {
        Ok(self
            .call(|inner| {
                let running: u64 = inner
                    .conn
                    .prepare_cached("SELECT count(*) FROM jobs WHERE status = 'in_progress'")?
                    .query_row([], |r| r.get(0))?;
                Ok(Counts {
                    pending: inner.live_jobs.saturating_sub(running),
                    running,
                    dead: 0,
                })
            })
            .await?)
    }

    async fn expire(&self, now: f64) -> Result<u64, JobError> {
        Ok(self
            .call(move |inner| {
                let removed = inner.conn.execute(
                    "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'canceled') AND expires_at < ?1 \
                     AND callback_due_at IS NULL",
                    [now],
                )?;
                Ok(removed as u64)
            })
            .await?)
    }
}

#[async_trait]
impl Outbox for Db {
    async fn take_due(&self, now: f64, hold: f64) -> Result<Option<Due>, JobError> {
        Ok(self
            .call(move |inner| {
                let tx = inner.conn.transaction()?;
                let due = tx
                    .query_row(
                        "SELECT job_id, tenant_id, status, started_at, finished_at, result, error, callback_url, \
                         callback_attempts FROM jobs WHERE callback_due_at <= ?1 \
                         AND status IN ('completed', 'failed', 'canceled') ORDER BY callback_due_at LIMIT 1",
                        [now],
                        |r| {
                            let result: Option<String> = r.get(5)?;
                            Ok(Due {
                                event: Event {
                                    job_id: r.get(0)?,
                                    tenant_id: r.get(1)?,
                                    status: r.get(2)?,
                                    started_at: r.get(3)?,
                                    finished_at: r.get(4)?,
                                    result: result.and_then(|text| serde_json::from_str(&text).ok()),
                                    error: r.get(6)?,
                                },
                                url: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                                attempts: r.get(8)?,
                            })
                        },
                    )
                    .optional()?;
                if let Some(due) = &due {
                    tx.execute(
                        "UPDATE jobs SET callback_due_at = ?2 WHERE job_id = ?1",
                        params![due.event.job_id, now + hold],
                    )?;
                }
                tx.commit()?;
                Ok(due)
            })
            .await?)
    }

    async fn record_attempt(
        &self,
        job_id: &str,
        attempts_before: u32,
        attempt: &Attempt,
        now: f64,
    ) -> Result<bool, JobError> {
        let job_id = job_id.to_string();
        let (status, http_status, error, due) = attempt.fields();
        let error = error.map(str::to_string);
        let finished = due.is_none().then_some(now);
        Ok(self
            .call(move |inner| {
                let changed = inner.conn.execute(
                    "UPDATE jobs SET callback_status = ?3, callback_attempts = callback_attempts + 1, \
                     callback_http_status = ?4, callback_last_error = ?5, callback_due_at = ?6, \
                     callback_finished_at = ?7 \
                     WHERE job_id = ?1 AND callback_attempts = ?2 AND callback_status = 'pending'",
                    params![job_id, attempts_before, status, http_status, error, due, finished],
                )?;
                Ok(changed > 0)
            })
            .await?)
    }
}

#[async_trait]
impl GcLedger for Db {
    async fn live_payloads(&self) -> Result<Vec<String>, JobError> {
        Ok(self
            .call(|inner| {
                let mut statement = inner
                    .conn
                    .prepare("SELECT payload FROM jobs WHERE status IN ('pending', 'in_progress')")?;
                let payloads = statement.query_map([], |row| row.get::<_, String>(0))?;
                Ok(payloads.collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .await?)
    }

    async fn storage_location(&self) -> Result<Option<String>, JobError> {
        Ok(self
            .call(|inner| {
                Ok(inner
                    .conn
                    .query_row("SELECT value FROM meta WHERE key = 'uploads_location'", [], |r| {
                        r.get(0)
                    })
                    .optional()?)
            })
            .await?)
    }

    async fn set_storage_location(&self, location: &str) -> Result<(), JobError> {
        let location = location.to_string();
        Ok(self
            .call(move |inner| {
                inner.conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('uploads_location', ?1)",
                    [location],
                )?;
                Ok(())
            })
            .await?)
    }

    async fn record_gc(&self, run: &GcRun) -> Result<(), JobError> {
        let summary = to_json(run)?;
        let run = run.clone();
        Ok(self
            .call(move |inner| {
                inner.conn.execute(
                    "INSERT OR IGNORE INTO gc_runs \
                     (run_id, dry_run, started_at, finished_at, deleted, bytes_freed, summary, complete) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        run.run_id,
                        run.dry_run,
                        run.started_at,
                        run.finished_at,
                        run.deleted,
                        run.bytes_freed,
                        summary,
                        run.complete()
                    ],
                )?;
                Ok(())
            })
            .await?)
    }

    async fn gc_totals(&self) -> Result<GcTotals, JobError> {
        Ok(self
            .call(|inner| {
                let mut totals = inner.conn.query_row(
                    "SELECT count(*) FILTER (WHERE NOT dry_run), count(*) FILTER (WHERE dry_run), \
                     coalesce(sum(deleted) FILTER (WHERE NOT dry_run), 0), \
                     coalesce(sum(bytes_freed) FILTER (WHERE NOT dry_run), 0) FROM gc_runs",
                    [],
                    |r| {
                        Ok(GcTotals {
                            runs: r.get(0)?,
                            dry_runs: r.get(1)?,
                            files_deleted: r.get(2)?,
                            bytes_freed: r.get(3)?,
                            ..GcTotals::default()
                        })
                    },
                )?;
                let last: Option<(f64, f64)> = inner
                    .conn
                    .query_row(
                        "SELECT started_at, finished_at FROM gc_runs WHERE complete ORDER BY finished_at DESC LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((started, finished)) = last {
                    totals.last_run_at = Some(finished);
                    totals.last_duration_seconds = Some(finished - started);
                }
                Ok(totals)
            })
            .await?)
    }
}

/// Databases made by earlier versions lack later columns (drawings get
/// thumbnails on the next rebuild; old jobs have no callback).
fn add_column(conn: &Connection, table: &str, column: &str, declaration: &str) -> rusqlite::Result<()> {
    let has = conn
        .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
        .exists([column])?;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {declaration}"))?;
    }
    Ok(())
}

const DRAWING_COLUMNS: &str = "tenant_id, drawing_id, file_name, file_hash, file_ref, features, created_at";

fn drawing_from_row(row: &Row<'_>) -> rusqlite::Result<Drawing> {
    let file_ref: String = row.get(4)?;
    let features: String = row.get(5)?;
    Ok(Drawing {
        tenant_id: row.get(0)?,
        drawing_id: row.get(1)?,
        file_name: row.get(2)?,
        file_hash: row.get(3)?,
        file_ref: from_json(&file_ref, 4)?,
        features: from_json(&features, 5)?,
        created_at: row.get(6)?,
    })
}

#[async_trait]
impl LibraryStore for Db {
    async fn insert(&self, drawing: &Drawing, thumbnail: Option<&[u8]>) -> Result<(), LibraryError> {
        let d = drawing.clone();
        let file_ref = to_json(&d.file_ref)?;
        let features = to_json(&d.features)?;
        let thumbnail = thumbnail.map(<[u8]>::to_vec);
        let inserted = self
            .call(move |inner| {
                let sql = format!(
                    "INSERT OR IGNORE INTO drawings ({DRAWING_COLUMNS}, thumbnail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                );
                Ok(inner.conn.execute(
                    &sql,
                    params![
                        d.tenant_id,
                        d.drawing_id,
                        d.file_name,
                        d.file_hash,
                        file_ref,
                        features,
                        d.created_at,
                        thumbnail
                    ],
                )?)
            })
            .await?;
        match inserted {
            0 => Err(LibraryError::Exists(drawing.drawing_id.clone())),
            _ => Ok(()),
        }
    }

    async fn remove(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<Drawing>, LibraryError> {
        let (tenant_id, drawing_id) = (tenant_id.to_string(), drawing_id.to_string());
        Ok(self
            .call(move |inner| {
                let sql = format!(
                    "DELETE FROM drawings WHERE tenant_id = ?1 AND drawing_id = ?2 RETURNING {DRAWING_COLUMNS}"
                );
                Ok(inner
                    .conn
                    .query_row(&sql, params![tenant_id, drawing_id], drawing_from_row)
                    .optional()?)
            })
            .await?)
    }

    async fn all(&self, tenant_id: &str) -> Result<Vec<Drawing>, LibraryError> {
        Ok(self.page(tenant_id, u32::MAX, 0).await?.0)
    }

    async fn page(&self, tenant_id: &str, limit: u32, offset: u64) -> Result<(Vec<Drawing>, u64), LibraryError> {
        let tenant_id = tenant_id.to_string();
        Ok(self
            .call(move |inner| {
                let sql = format!(
                    "SELECT {DRAWING_COLUMNS} FROM drawings WHERE tenant_id = ?1 ORDER BY created_at, drawing_id LIMIT ?2 OFFSET ?3"
                );
                let drawings = inner
                    .conn
                    .prepare_cached(&sql)?
                    .query_map(params![tenant_id, limit, offset as i64], drawing_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let total: u64 =
                    inner.conn.query_row("SELECT count(*) FROM drawings WHERE tenant_id = ?1", [&tenant_id], |r| r.get(0))?;
                Ok((drawings, total))
            })
            .await?)
    }

    async fn set_features(
        &self,
        tenant_id: &str,
        drawing_id: &str,
        features: &Features,
        thumbnail: Option<&[u8]>,
    ) -> Result<(), LibraryError> {
        let (tenant_id, drawing_id) = (tenant_id.to_string(), drawing_id.to_string());
        let hash = features.file_hash.clone();
        let features = to_json(features)?;
        let thumbnail = thumbnail.map(<[u8]>::to_vec);
        Ok(self
            .call(move |inner| {
                inner.conn.execute(
                    "UPDATE drawings SET features = ?3, file_hash = ?4, thumbnail = ?5 WHERE tenant_id = ?1 AND drawing_id = ?2",
                    params![tenant_id, drawing_id, features, hash, thumbnail],
                )?;
                Ok(())
            })
            .await?)
    }

    async fn drawing(&self, tenant_id: &str, drawing_id: &str) -> Result<Option<Drawing>, LibraryError> {
        let (tenant_id, drawing_id) = (tenant_id.to_string(), drawing_id.to_string());
        Ok(self
            .call(move |inner| {
                let sql = format!("SELECT {DRAWING_COLUMNS} FROM drawings WHERE tenant_id = ?1 AND drawing_id = ?2");
                Ok(inner
                    .conn
                    .prepare_cached(&sql)?
                    .query_row(params![tenant_id, drawing_id], drawing_from_row)
                    .optional()?)
            })
            .await?)
    }

    async fn thumbnails(
        &self,
        tenant_id: &str,
        drawing_ids: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, LibraryError> {
        let tenant_id = tenant_id.to_string();
        let ids = drawing_ids.to_vec();
        Ok(self
            .call(move |inner| {
                let mut statement = inner.conn.prepare_cached(
                    "SELECT thumbnail FROM drawings WHERE tenant_id = ?1 AND drawing_id = ?2 AND thumbnail IS NOT NULL",
                )?;
                let mut found = HashMap::with_capacity(ids.len());
                for id in ids {
                    if let Some(bytes) = statement
                        .query_row(params![tenant_id, id], |r| r.get::<_, Vec<u8>>(0))
                        .optional()?
                    {
                        found.insert(id, bytes);
                    }
                }
                Ok(found)
            })
            .await?)
    }

    async fn tenants(&self) -> Result<Vec<String>, LibraryError> {
        Ok(self
            .call(|inner| {
                let tenants = inner
                    .conn
                    .prepare_cached("SELECT DISTINCT tenant_id FROM drawings")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                Ok(tenants)
            })
            .await?)
    }

    async fn details(&self, tenant_id: &str, drawing_ids: &[String]) -> Result<HashMap<String, Details>, LibraryError> {
        let tenant_id = tenant_id.to_string();
        let ids = drawing_ids.to_vec();
        Ok(self
            .call(move |inner| {
                let mut statement = inner.conn.prepare_cached(
                    "SELECT file_name, file_hash, json_extract(features, '$.geometry_hash') FROM drawings \
                     WHERE tenant_id = ?1 AND drawing_id = ?2",
                )?;
                let mut found = HashMap::with_capacity(ids.len());
                for id in ids {
                    let details = statement
                        .query_row(params![tenant_id, id], |r| {
                            Ok(Details {
                                file_name: r.get(0)?,
                                file_hash: r.get(1)?,
                                geometry_hash: r.get(2)?,
                            })
                        })
                        .optional()?;
                    if let Some(details) = details {
                        found.insert(id, details);
                    }
                }
                Ok(found)
            })
            .await?)
    }
}

#[async_trait]
impl StatsStore for Db {
    async fn increment(&self, tenant_id: &str, delta: TenantStats) -> Result<(), StatsError> {
        let tenant_id = tenant_id.to_string();
        self.call(move |inner| {
            inner.conn.prepare_cached(
                "INSERT INTO tenant_stats (tenant_id, processed, rejected, dup_skipped) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (tenant_id) DO UPDATE SET processed = processed + ?2, rejected = rejected + ?3, dup_skipped = dup_skipped + ?4",
            )?
            .execute(params![tenant_id, delta.processed, delta.rejected, delta.dup_skipped])?;
            Ok(())
        })
        .await
        .map_err(|e| StatsError(e.to_string()))
    }

    async fn read(&self, tenant_id: &str) -> Result<TenantStats, StatsError> {
        let tenant_id = tenant_id.to_string();
        self.call(move |inner| {
            Ok(inner
                .conn
                .query_row(
                    "SELECT processed, rejected, dup_skipped FROM tenant_stats WHERE tenant_id = ?1",
                    [tenant_id],
                    |r| {
                        Ok(TenantStats {
                            processed: r.get(0)?,
                            rejected: r.get(1)?,
                            dup_skipped: r.get(2)?,
                        })
                    },
                )
                .optional()?
                .unwrap_or_default())
        })
        .await
        .map_err(|e| StatsError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SearchParams;
    use crate::store::FileRef;

    fn new_job(id: &str) -> NewJob {
        NewJob {
            job_id: id.into(),
            created_at: 1.0,
            payload: Payload {
                tenant_id: "t".into(),
                file_name: "a.png".into(),
                content_type: "image/png".into(),
                file_ref: Some(FileRef::Local {
                    path: format!("/nowhere/{id}"),
                }),
                file_bytes_b64: None,
                request_params: SearchParams::default(),
                callback_url: None,
                geom_json: None,
            },
        }
    }

    fn open(dir: &Path) -> Db {
        Db::open(dir, std::time::Duration::from_secs(60)).unwrap()
    }

    #[tokio::test]
    async fn admission_is_exact_and_capacity_returns_when_jobs_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.admit(new_job("a"), 2).await.unwrap();
        db.admit(new_job("b"), 2).await.unwrap();
        let full = db.admit(new_job("c"), 2).await.unwrap_err();
        assert!(matches!(full, JobError::QueueFull { max: 2, current: 2 }));
        let Claim::Run(a) = db.claim(2.0, 5).await.unwrap() else {
            panic!("a runs")
        };
        assert!(
            db.finish(&a, Outcome::Completed(serde_json::json!({})), 3.0)
                .await
                .unwrap()
        );
        assert!(matches!(
            db.cancel("b", "t", 3.0).await.unwrap(),
            CancelOutcome::Canceled { .. }
        ));
        assert_eq!(db.counts().await.unwrap(), Counts::default());
        db.admit(new_job("c"), 2).await.unwrap();
    }

    #[tokio::test]
    async fn a_canceled_or_reclaimed_attempt_cannot_record_an_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.admit(new_job("a"), 10).await.unwrap();
        let Claim::Run(first) = db.claim(2.0, 5).await.unwrap() else {
            panic!("runs")
        };
        db.cancel("a", "t", 3.0).await.unwrap();
        assert!(!db.finish(&first, Outcome::Failed("late".into()), 4.0).await.unwrap());
        let job = db.get("a").await.unwrap().unwrap();
        assert_eq!((job.status, job.error), (Status::Canceled, None));
        assert!(matches!(
            db.cancel("a", "other", 5.0).await.unwrap(),
            CancelOutcome::Forbidden
        ));
        assert!(matches!(
            db.cancel("a", "t", 5.0).await.unwrap(),
            CancelOutcome::AlreadyFinished(Status::Canceled)
        ));
    }

    #[tokio::test]
    async fn a_restart_returns_orphans_and_gives_up_on_jobs_that_keep_dying() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        assert!(matches!(
            Db::open(dir.path(), std::time::Duration::from_secs(1)),
            Err(DbError::Locked(_))
        ));
        db.admit(new_job("a"), 10).await.unwrap();
        assert!(matches!(db.claim(2.0, 2).await.unwrap(), Claim::Run(_)));
        drop(db);

        let db = open(dir.path());
        assert_eq!(
            db.counts().await.unwrap(),
            Counts {
                pending: 1,
                running: 0,
                dead: 0
            }
        );
        let Claim::Run(second) = db.claim(3.0, 2).await.unwrap() else {
            panic!("runs again")
        };
        assert_eq!(second.attempt, 2);
        drop((db, second));

        let db = open(dir.path());
        let Claim::Failed {
            job_id,
            file_ref,
            error,
        } = db.claim(4.0, 2).await.unwrap()
        else {
            panic!("given up")
        };
        assert_eq!(job_id, "a");
        assert!(file_ref.is_some(), "the caller can remove the upload");
        assert!(error.contains("2 deliveries"), "{error}");
        assert_eq!(db.get("a").await.unwrap().unwrap().status, Status::Failed);
        assert_eq!(db.counts().await.unwrap(), Counts::default());
        assert!(matches!(db.claim(5.0, 2).await.unwrap(), Claim::Empty));
    }

    #[tokio::test]
    async fn finished_jobs_expire_after_their_ttl_and_live_ones_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.admit(new_job("done"), 10).await.unwrap();
        db.admit(new_job("waiting"), 10).await.unwrap();
        let Claim::Run(done) = db.claim(2.0, 5).await.unwrap() else {
            panic!("runs")
        };
        db.finish(&done, Outcome::Completed(serde_json::json!({})), 10.0)
            .await
            .unwrap();
        assert_eq!(db.expire(10.0 + 59.0).await.unwrap(), 0);
        assert_eq!(db.expire(10.0 + 61.0).await.unwrap(), 1);
        assert!(db.get("done").await.unwrap().is_none());
        assert_eq!(
            db.expire(1e12).await.unwrap(),
            0,
            "a pending job is kept whatever its age"
        );
        assert!(db.get("waiting").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_payload_that_does_not_read_fails_its_job_instead_of_sticking() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.admit(new_job("a"), 10).await.unwrap();
        db.call(|inner| Ok(inner.conn.execute("UPDATE jobs SET payload = '{\"broken\": 1}'", [])?))
            .await
            .unwrap();
        let Claim::Failed { file_ref, .. } = db.claim(2.0, 5).await.unwrap() else {
            panic!("fails")
        };
        assert!(file_ref.is_none());
        assert_eq!(db.counts().await.unwrap(), Counts::default());
    }

    fn drawing(id: &str, geometry_hash: Option<&str>) -> Drawing {
        let features = Features {
            file_hash: format!("{id:0>64}"),
            format: crate::engine::Format::DxfAscii,
            width: None,
            height: None,
            geometry_hash: geometry_hash.map(String::from),
            ink: None,
        };
        Drawing {
            drawing_id: id.into(),
            tenant_id: "t".into(),
            file_name: format!("{id}.dxf"),
            file_hash: features.file_hash.clone(),
            file_ref: FileRef::Local {
                path: format!("/nowhere/{id}"),
            },
            features,
            created_at: 1.0,
        }
    }

    #[tokio::test]
    async fn details_are_those_a_search_reports_of_drawings_still_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let (a, b) = (drawing("a", Some("beef")), drawing("b", None));
        db.insert(&a, None).await.unwrap();
        db.insert(&b, None).await.unwrap();
        let ids = ["a", "b", "gone"].map(String::from);
        let details = db.details("t", &ids).await.unwrap();
        assert_eq!(details.len(), 2);
        assert_eq!(details["a"], Details::new("a.dxf", &a.features));
        assert_eq!(details["b"], Details::new("b.dxf", &b.features));
        assert!(db.details("other", &ids).await.unwrap().is_empty());
    }
}
