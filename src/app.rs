//! The composition root: builds the shared handles a running `serve` needs
//! from its [`Config`]. Holds no request- or job-specific state beyond the
//! cancel signals of jobs running in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::embedded::Db;
use crate::engine::Limits;
use crate::jobs::JobStore;
use crate::library::Library;
use crate::stats::StatsStore;
use crate::store::Files;

pub struct App {
    pub config: Config,
    pub jobs: Arc<dyn JobStore>,
    pub library: Library,
    pub stats: Arc<dyn StatsStore>,
    pub files: Arc<Files>,
    pub limits: Limits,
    db: Db,
    /// Wakes idle runners when a job is admitted, so a new job does not wait
    /// for their polling tick.
    pub job_admitted: Notify,
    /// Cancel signals of the jobs this process is running, by job id.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Bounds the memory that uploads being received can hold.
    pub upload_permits: Arc<Semaphore>,
    shutting_down: AtomicBool,
}

impl App {
    pub fn open(config: Config) -> anyhow::Result<Arc<App>> {
        let db = Db::open(&config.data_dir, config.async_ttl)?;
        let files = Arc::new(
            Files::local(&config.file_storage_dir, &config.data_dir.join("library"))
                .context("cannot open file storage")?,
        );
        Ok(Arc::new(App {
            jobs: Arc::new(db.clone()),
            library: Library::new(Arc::new(db.clone()), files.clone()),
            stats: Arc::new(db.clone()),
            files,
            limits: Limits::default(),
            db,
            job_admitted: Notify::new(),
            running: Mutex::new(HashMap::new()),
            upload_permits: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            shutting_down: AtomicBool::new(false),
            config,
        }))
    }

    /// Per-dependency readiness, as `/ready` reports it.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let accepting = if self.is_shutting_down() {
            Err("shutting down".to_string())
        } else {
            Ok(())
        };
        vec![
            ("database", self.db.check().await.map_err(|e| e.to_string())),
            ("storage", self.files.check().await.map_err(|e| e.to_string())),
            ("accepting", accepting),
        ]
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn track_running(&self, job_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.running_jobs().insert(job_id.to_string(), token.clone());
        token
    }

    pub fn untrack_running(&self, job_id: &str) {
        self.running_jobs().remove(job_id);
    }

    /// Stops a running job of this process; a no-op for any other job.
    pub fn signal_cancel(&self, job_id: &str) {
        if let Some(token) = self.running_jobs().get(job_id) {
            token.cancel();
        }
    }

    fn running_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds since the epoch, as job times are reported.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
